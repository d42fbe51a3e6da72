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


class StageSkipped(AelabError):
    """A stage of ``aelab run`` that cannot run for the data given; its message is the reason the report shows.

    ``result``: what later stages may still use although the stage is skipped (e.g. the model to embed).
    """

    def __init__(self, reason: str, result: dict | None = None):
        super().__init__(reason)
        self.result = result or {}
