"""Progress bars for long work: shown on a terminal, silent in logs and pipes (disable=None).
Without tqdm (a bare machine that only exports or benchmarks) the bars are silent stand-ins, and
under torchrun only rank 0 draws them (RANK is torchrun's variable)."""

import os

try:
    # tqdm.auto's bar opens one extra iterator of what it wraps; for a DataLoader that draws one
    # worker seed (from the global RNG when the loader has no generator) and, with workers, starts
    # an idle worker pool. Kept for now: another bar would change every run's random stream.
    from tqdm.auto import tqdm
except ImportError:
    tqdm = None


class SilentBar:
    """The part of tqdm's interface that qsenn_train uses, doing nothing."""

    def __init__(self, iterable=None, **_):
        self.iterable, self.n = iterable, 0

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **_) -> None:
        return None


def progress(iterable=None, **kwargs):
    if tqdm is None or os.environ.get("RANK", "0") != "0":
        return SilentBar(iterable)
    return tqdm(iterable, leave=False, dynamic_ncols=True, disable=None, **kwargs)
