"""The engine's own exceptions.

Every failure a user can cause (a bad file, a bad setting) raises a subclass of
:class:`KsegError` whose message names the culprit and the reason, so callers can
report it in one line instead of a traceback.
"""

from __future__ import annotations

__all__ = ["ImageError", "KsegError", "SettingsError"]


class KsegError(Exception):
    """Base class of every error the engine raises on purpose."""


class ImageError(KsegError):
    """An input file that cannot be used as an image.

    Parameters
    ----------
    path : str
        The file, as given by the caller.
    reason : str
        Why it cannot be used, in a few words.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SettingsError(KsegError, ValueError):
    """An invalid segmentation setting.

    Parameters
    ----------
    field : str
        The name of the offending setting.
    message : str
        What is wrong and what would be valid.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"invalid setting {field!r}: {message}")
