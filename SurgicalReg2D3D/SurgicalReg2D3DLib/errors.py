"""Exception types.

Every check of user input raises :class:`InputError` (a ``ValueError``) with a message that
names the offending input and what was expected, e.g.
``"CT volume: spacing must be positive, got (1.0, 0.0, 1.5)"``.
"""


class SurgRegError(Exception):
    """Base class of the errors this project raises on purpose."""


class InputError(SurgRegError, ValueError):
    """Bad input: wrong dimensions, missing geometry, NaN, empty data, absurd parameters."""


class GeometryError(InputError):
    """Input whose geometry is invalid (spacing, direction, non-rigid transform, camera)."""


class FileReadError(InputError, OSError):
    """A file that is missing, unreadable or not of the expected kind."""


class CancelledError(SurgRegError):
    """Raised inside a long loop when the user cancelled it."""
