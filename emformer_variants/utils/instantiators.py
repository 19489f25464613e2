"""Objects built from config groups that hold several entries (lightning-hydra-template's
``instantiators``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


def instantiate_callbacks(cfg: DictConfig | None) -> list:
    """One object per entry of ``cfg`` (``conf/callbacks/``) that has a ``_target_``, in order;
    an entry whose ``enabled`` resolves to false is left out."""
    callbacks = []
    for conf in (cfg or {}).values():
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            continue
        conf = OmegaConf.to_container(conf, resolve=True)
        if conf.pop("enabled", True):
            callbacks.append(hydra.utils.instantiate(conf))
    return callbacks
