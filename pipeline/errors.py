"""The engine's own exceptions.

Every failure a user can cause (a bad file, a bad setting) raises a subclass of
:class:`KsegError` whose message names the culprit and the reason, so callers can
report it in one line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """An invalid segmentation setting (or several).

    Parameters
    ----------
    field : str
        The name of the offending setting (the first one, when there are several).
    message : str
        What is wrong and what would be valid.
    others : sequence of SettingsError, optional
        Further invalid settings found at the same time; the message then lists
        every one of them.

    Attributes
    ----------
    problems : tuple of SettingsError
        Every invalid setting, this one first.
    """

    def __init__(self, field: str, message: str, others: Sequence[SettingsError] = ()) -> None:
        self.field = field
        self.message = message
        self.problems: tuple[SettingsError, ...] = (self, *others)
        if others:
            listed = "; ".join(f"{p.field!r}: {p.message}" for p in self.problems)
            super().__init__(f"{len(self.problems)} invalid settings: {listed}")
        else:
            super().__init__(f"invalid setting {field!r}: {message}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of every invalid setting, in order."""
        return tuple(p.field for p in self.problems)
