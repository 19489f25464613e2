"""User-facing errors: one line naming the file/field and the fix, never a bare traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, bad setting).

    Entry points catch it, print ``error: <message>`` as one line and exit with code 2.
    The message must name the file or config field at fault and say what to do.
    """


def one_line_errors(fn):
    """Print a UserError (also one raised in a DataLoader worker) as one line; exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless a UserError is behind it
            e = _user_error_in_chain(exc)
            if e is None:
                raise
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            msg = lines[-1] if lines else "unknown error"
            prefix = "emformer_variants.errors.UserError: "
            msg = msg[len(prefix):] if msg.startswith(prefix) else msg
            print(f"error: {msg}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def _user_error_in_chain(exc: BaseException) -> BaseException | None:
    """The UserError behind ``exc`` (Hydra's InstantiationException wraps it as __cause__)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
