"""How the images of an epoch are split over the ranks of a job.

One order for the whole job: the epoch's permutation (drawn from the run seed, the same for
every world size) is cut into global batches of the recipe's batch size, and rank r of W takes
images r, r+W, r+2W, … of each. So every global batch is the one a single process would see,
every rank runs the same number of steps, and nothing is repeated or dropped to even the ranks
out (torch's DistributedSampler pads by repeating images).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .errors import QsennError

# BatchNorm in training needs at least two values per channel: a trailing batch that cannot give
# every rank two images is dropped (for one process: a trailing batch of a single image).
MIN_IMAGES_PER_RANK = 2


def shuffled_order(n: int, generator: torch.Generator) -> list[int]:
    """The seeded order of n images that earlier versions' one-process loader visited (a shuffled
    DataLoader inside tqdm.auto, which opens one extra iterator; each iterator draws a worker seed
    first, so two draws precede the permutation). Kept so that runs keep their results; drawn
    from a copy of the generator, so it does not depend on how many iterators a loader opens."""
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    torch.empty(2, dtype=torch.int64).random_(generator=copy)
    return torch.randperm(n, generator=copy).tolist()


class GlobalBatches(Sampler[list[int]]):
    """This rank's share of each global batch of one pass over `n` images in `order` (default:
    dataset order)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        order: list[int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_small_tail: bool = False,
    ):
        if order is not None and len(order) != n:
            raise ValueError(f"an order of {len(order)} images for a pass over {n}")
        self.n, self.batch_size, self.order = n, batch_size, order
        self.rank, self.world_size, self.drop_small_tail = rank, world_size, drop_small_tail

    def global_batches(self) -> Iterator[list[int]]:
        order = self.order if self.order is not None else list(range(self.n))
        for start in range(0, self.n, self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.drop_small_tail and len(batch) < MIN_IMAGES_PER_RANK * self.world_size:
                return
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            if share := batch[self.rank :: self.world_size]:  # empty only in a short evaluation tail
                yield share

    def global_sizes(self) -> list[int]:
        """The size of each global batch this pass yields (what the loss of a step is averaged over)."""
        sizes = [min(self.batch_size, self.n - start) for start in range(0, self.n, self.batch_size)]
        if self.drop_small_tail and sizes and sizes[-1] < MIN_IMAGES_PER_RANK * self.world_size:
            sizes.pop()
        return sizes

    def __len__(self) -> int:
        if self.drop_small_tail:
            return len(self.global_sizes())
        full, tail = divmod(self.n, self.batch_size)
        return full + int(tail > self.rank)  # a short evaluation tail may leave this rank nothing


def shard_positions(n: int, rank: int, world_size: int) -> range:
    """The positions rank r extracts: r, r+W, r+2W, … (feature extraction, §4)."""
    return range(rank, n, world_size)


def check_global_batches(batch_sizes: dict[str, int], world_size: int) -> None:
    """Every global batch of a recipe must give each rank two images (BatchNorm)."""
    for what, size in batch_sizes.items():
        if size < MIN_IMAGES_PER_RANK * world_size:
            raise QsennError(
                f"the {what} batch of {size} images cannot give each of {world_size} processes "
                f"{MIN_IMAGES_PER_RANK}; use at most {size // MIN_IMAGES_PER_RANK} processes"
            )
