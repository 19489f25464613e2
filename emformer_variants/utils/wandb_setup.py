"""When ``logger=wandb`` runs offline: unless the user has configured W&B.

Configured means any of: ``WANDB_MODE`` set (wandb then reads it itself: offline, online,
disabled), ``WANDB_API_KEY`` set, a ``wandb login`` entry in ~/.netrc, or a run started by
``wandb agent`` (``WANDB_SWEEP_ID``). ``WANDB_OFFLINE=true|false`` overrides all of them.
Nothing configured: offline, so the logger never needs a server or an account.
"""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse


def _logged_in() -> bool:
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline() -> bool:
    """Whether WandbLogger must force offline mode (see the module docstring)."""
    flag = os.environ.get("WANDB_OFFLINE")
    if flag is not None:
        return flag.strip().lower() in ("1", "true", "yes", "on")
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_SWEEP_ID") or os.environ.get("WANDB_API_KEY"):
        return False
    return not _logged_in()
