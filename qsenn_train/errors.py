"""The one exception type the CLI turns into a one-line message (no traceback)."""


class QsennError(Exception):
    """A problem the user can fix: the message names it and says what to do."""
