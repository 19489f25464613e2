"""One run per output folder: a run claims its folder before writing anything into it.

The default folder name (conf/paths/default.yaml) holds a microsecond timestamp and the
process id, so two runs never pick the same one. A folder given explicitly
(``paths.output_dir=DIR``) may already belong to another run: the claim is an exclusive
create of ``DIR/.run.json`` (``O_EXCL``, atomic on POSIX), so of two runs racing for the same
folder exactly one wins and the other stops with a one-line error before doing any work.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from emformer_variants.errors import UserError

CLAIM = ".run.json"


def claim_output_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and mark it as this run's; UserError if already taken."""
    out_dir = Path(out_dir)
    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return out_dir  # DDP workers share rank 0's folder
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / CLAIM
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        owner = _read(marker)
        raise UserError(
            f"paths.output_dir={out_dir}: already used by another run ({owner}); "
            "leave paths.output_dir unset (a fresh folder per run) or choose a new folder"
        ) from None
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                   "argv": sys.argv}, f)
    return out_dir


def release_ended_claim(out_dir: str | Path) -> None:
    """Remove ``out_dir``'s claim when the run that made it has ended on this host, so a
    resumed run (``ckpt_path=``) can claim the folder again; UserError while it still runs."""
    marker = Path(out_dir) / CLAIM
    if not marker.is_file():
        return
    if not _ended(_claim(marker) or {}):
        raise UserError(f"{out_dir}: its run is still going ({_read(marker)}); wait for it or stop it")
    marker.unlink()


def _claim(marker: Path) -> dict | None:
    """The claim's record, or None when it cannot be read."""
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _ended(info: dict) -> bool:
    """Whether the claiming run is known to have ended: it ran on this host and its pid is gone."""
    return info.get("host") == socket.gethostname() and not pid_alive(info.get("pid"))


def _read(marker: Path) -> str:
    info = _claim(marker)
    if info is None:
        return f"see {marker}"
    command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(info.get("argv", [])))
    if len(command) > 80:
        command = command[:79] + "…"
    ended = ", ended; its files stay" if _ended(info) else ""
    return f"`{command}`, pid {info.get('pid')} on {info.get('host')}{ended}"


def pid_alive(pid) -> bool:
    """False only when no process ``pid`` exists on this host; True when it runs, belongs to
    another user, or ``pid`` is not a number (so nothing is deleted on a guess)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, TypeError, ValueError):
        return True
    return True
