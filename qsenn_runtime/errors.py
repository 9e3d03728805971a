"""Errors of the runtime. Every message is one line that names the file or input and says what to do."""


class QsennRuntimeError(Exception):
    """A problem the user can fix; the CLI prints the message without a traceback."""


class InputError(QsennRuntimeError):
    """One input image cannot be used (unreadable, too large, wrong array shape or dtype, NaN)."""


class BackendError(QsennRuntimeError):
    """The model cannot run here: unknown/unavailable execution provider, TensorRT or GPU mismatch."""


class IdentityCheckError(QsennRuntimeError):
    """The logits are not the sum of the contributions plus the bias: the model file is broken."""
