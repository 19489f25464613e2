"""User-facing errors: one line naming the file/field and the fix, never a bare traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, bad setting).

    Entry points catch it, print ``error: <message>`` as one line and exit with code 2.
    The message must name the file or config field at fault and say what to do.
    """
