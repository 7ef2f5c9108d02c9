"""Errors the library raises on bad input. The CLI turns each into one line and exit 2."""


class PyroVAEError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ConfigError(PyroVAEError, ValueError):
    """An unknown key, a bad value, an unknown registry name or a wrong parameter."""


class DataError(PyroVAEError, ValueError):
    """Missing files, malformed arrays, or data that does not fit the chosen likelihood."""


class TrainingDiverged(PyroVAEError, FloatingPointError):
    """The loss became NaN/inf or diverged; the message names settings that help."""


class Interrupted(PyroVAEError):
    """Training stopped by SIGINT / SIGTERM after saving a checkpoint; exit code 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class SignalReceived(BaseException):
    """SIGINT / SIGTERM outside the training steps (start-up, data loading, evaluation, writing):
    unwinds to the engine, which says what was saved and turns it into :class:`Interrupted`."""

    def __init__(self, signum: int):
        super().__init__(int(signum))
        self.signum = int(signum)
