"""Errors that the CLI turns into one clear line instead of a traceback."""


class AelabError(Exception):
    """A problem with the user's input or settings; its message is shown as is."""


class DataError(AelabError, ValueError):
    """Bad or missing image data (the message names the path)."""


class NoUnlabelledImages(DataError):
    """A method that learns from unlabelled images was given none (``aelab run`` skips it with this reason)."""
