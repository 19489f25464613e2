"""Where things are: the project root, and the OmegaConf resolvers ``conf/`` uses.

Importing this module registers ``${ev_root:}`` (the project root), ``${ev_pid:}`` (run
folder names: timestamp + pid never collide), ``${ev_wandb_offline:}`` (W&B mode) and
``${ev_by_init:${init},A,B}`` (A when training starts from the base, B from scratch), so
anything that composes a config imports it first.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]

if not OmegaConf.has_resolver("ev_root"):
    OmegaConf.register_new_resolver("ev_root", lambda: str(PROJECT_ROOT))
if not OmegaConf.has_resolver("ev_wandb_offline"):
    from emformer_variants.utils.wandb_setup import wandb_offline

    OmegaConf.register_new_resolver("ev_wandb_offline", wandb_offline)
if not OmegaConf.has_resolver("ev_pid"):
    OmegaConf.register_new_resolver("ev_pid", os.getpid)
if not OmegaConf.has_resolver("ev_by_init"):  # ${ev_by_init:${init},FROM_BASE,FROM_SCRATCH}
    OmegaConf.register_new_resolver("ev_by_init", lambda init, base, scratch:
                                    base if init == "base" else scratch)


def project_cache_dir() -> Path:
    """The corpus and text caches: ``$EMFORMER_VARIANTS_CACHE``, else ``cache/`` in the project
    (``paths.cache_dir`` of the configs, for the command-line tools that compose none)."""
    env = os.environ.get("EMFORMER_VARIANTS_CACHE")
    return Path(env) if env else PROJECT_ROOT / "cache"
