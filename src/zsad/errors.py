"""User-facing errors.

Every problem a user can cause (a missing folder, a corrupt image, an unknown method, weights that are
not on disk) is raised as a :class:`ZsadError` whose message is one line naming the file or thing and
the problem. The CLI prints that line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class ZsadError(Exception):
    """A problem with the user's input, reported as one line."""


class DataError(ZsadError):
    """A dataset, image or mask that cannot be used as given."""


class TooLargeError(DataError):
    """An image over a configured size limit (bytes or pixels): valid data, refused by policy."""


class ConfigError(ZsadError):
    """An unknown name, option or value."""


class WeightsNotFoundError(ZsadError):
    """Model weights that are neither on disk nor downloadable right now."""
