"""The benchmark package's error: one line the CLI prints, naming the problem and what to do."""


class BenchError(Exception):
    """A benchmark or validation problem of qsenn_bench."""
