"""Errors that the CLI turns into one clear line instead of a traceback."""


class AelabError(Exception):
    """A problem with the user's input or settings; its message is shown as is."""


class ParameterError(AelabError, ValueError):
    """A setting or an estimator's parameter out of its range (scikit-learn raises ``ValueError`` there;
    the CLI prints it as one line like every `AelabError`)."""


class DataError(AelabError, ValueError):
    """Bad or missing image data (the message names the path)."""


class NoUnlabelledImages(DataError):
    """A method that learns from unlabelled images was given none (``aelab run`` skips it with this reason)."""
