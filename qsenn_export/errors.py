"""The export package's error: a problem the user can fix, whose message names it and says what
to do; the CLI prints it as one line."""


class ExportError(Exception):
    """An export, verification or model-loading problem of qsenn_export."""
