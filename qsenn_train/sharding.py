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

# BatchNorm in training needs at least two values per channel: a trailing batch that cannot give
# every rank two images is dropped (for one process: a trailing batch of a single image).
MIN_IMAGES_PER_RANK = 2


class GlobalBatches(Sampler[list[int]]):
    """This rank's share of each global batch of one pass over `n` images."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_small_tail: bool = False,
    ):
        if shuffle and generator is None:
            raise ValueError("a shuffled pass needs its generator (the epoch's order comes from the run seed)")
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.rank, self.world_size, self.drop_small_tail = rank, world_size, drop_small_tail

    def global_batches(self) -> Iterator[list[int]]:
        # The permutation is drawn when iteration starts, after the DataLoader drew its worker
        # seed from the same generator: for one process the order is the one DataLoader(shuffle=True) gives.
        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n))
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
        full, tail = divmod(self.n, self.batch_size)
        if self.drop_small_tail:
            return full + int(tail >= MIN_IMAGES_PER_RANK * self.world_size)
        return full + int(tail > self.rank)


def shard_positions(n: int, rank: int, world_size: int) -> range:
    """The positions rank r extracts: r, r+W, r+2W, … (feature extraction, §4)."""
    return range(rank, n, world_size)
