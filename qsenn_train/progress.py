"""Progress bars for long work: shown on a terminal, silent in logs and pipes (disable=None)."""
from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    return tqdm(iterable, leave=False, dynamic_ncols=True, disable=None, **kwargs)
