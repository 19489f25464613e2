"""Check Hydra overrides by composing the entry point's config, before anything runs."""

from __future__ import annotations

import difflib
import re

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from emformer_variants.errors import UserError
from emformer_variants.utils.paths import PROJECT_ROOT

CONF_DIR = PROJECT_ROOT / "conf"
_BAD_KEY = re.compile(r"Could not override '([^']+)'")
_MISSING_GROUP = re.compile(r"Could not find '([^'/]+)/")


def close_keys(cfg: DictConfig, key: str) -> list[str]:
    """Existing keys next to ``key`` that look like it (did-you-mean)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return []
    names = [str(k) for k in node.keys()]
    return [f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(leaf, names, n=2)]


def compose_checked(config_name: str, overrides: list[str], origin: dict[str, str],
                    where: str) -> DictConfig:
    """Compose ``config_name`` with ``overrides``; a bad key or value becomes a one-line
    UserError naming where the override came from (``origin``: override -> "file: field",
    else ``where``)."""
    check_grammar(overrides, origin, where)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides)
            if cfg.get("variant") is not None:  # evaluate.py has variant: null
                OmegaConf.to_container(cfg.variant, resolve=True)  # interpolations resolve
            return cfg
        except (HydraException, OmegaConfBaseException) as e:
            text = str(e)
            m = _BAD_KEY.search(text)
            if m:
                key = m.group(1)
                bad = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key]
                where = origin.get(bad[0], where) if bad else where
                rest = [o for o in overrides if o not in bad]
                hint = ""
                try:
                    hint_keys = close_keys(compose(config_name, overrides=rest), key)
                    hint = f"; did you mean {' or '.join(hint_keys)}?" if hint_keys else ""
                except (HydraException, OmegaConfBaseException):
                    pass
                raise UserError(f"{where}: '{key}' is not a key of the {config_name} config{hint}") \
                    from None
            m = _MISSING_GROUP.search(text)
            if m:
                group = m.group(1)
                bad = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == group]
                where = origin.get(bad[0], where) if bad else where
            text = text.split("Config search path")[0]
            raise UserError(f"{where}: {' '.join(text.split())}") from None


def check_grammar(overrides: list[str], origin: dict[str, str], where: str) -> None:
    """Each override parses with Hydra's override grammar."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except HydraException as e:
            first = str(e).splitlines()[0]
            raise UserError(f"{origin.get(o, where)}: {o!r} is not a valid Hydra override ({first})") \
                from None


def check_run_variant(cfg: DictConfig, where: str) -> None:
    """A run's variant settings (top_k <= num_experts, ...), checked without building a model;
    errors name ``where``."""
    if cfg.get("variant") is None:
        return
    from emformer_variants.surgery.registry import check_variant

    try:
        check_variant(OmegaConf.to_container(cfg.variant, resolve=True))
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
