"""The one exception type the CLI turns into a one-line message (no traceback)."""

# How torch re-raises an exception of a DataLoader worker process: type(exc)(text) where the text
# is "Caught QsennError in DataLoader worker process N.\nOriginal Traceback …\n<module>.QsennError: <message>".
_WORKER_PREFIX = "Caught QsennError in DataLoader worker"
_WORKER_LAST_LINE = "QsennError: "


class QsennError(Exception):
    """A problem the user can fix: the message names it and says what to do."""

    def __init__(self, message: str = "") -> None:
        # Keep the worker's one-line message, not the traceback torch wraps around it.
        if isinstance(message, str) and message.startswith(_WORKER_PREFIX):
            message = message.rstrip().rsplit(_WORKER_LAST_LINE, 1)[-1]
        super().__init__(message)
