"""logger=wandb: offline unless configured, the resolved config as a plain dict, grouped by
variant. No server, no account."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import emformer_variants.utils.paths  # noqa: F401  (registers the config resolvers)
from emformer_variants.utils.wandb_setup import wandb_offline
from tests.conftest import ROOT

WANDB_ENV = ("WANDB_OFFLINE", "WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_API_KEY", "WANDB_BASE_URL")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in WANDB_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    return monkeypatch


@pytest.mark.parametrize("env,offline", [
    ({}, True),                                   # nothing configured: offline
    ({"WANDB_MODE": "offline"}, False),           # wandb reads WANDB_MODE itself
    ({"WANDB_MODE": "disabled"}, False),
    ({"WANDB_SWEEP_ID": "abc"}, False),           # a run started by `wandb agent`
    ({"WANDB_API_KEY": "x" * 40}, False),
    ({"WANDB_OFFLINE": "true", "WANDB_API_KEY": "x" * 40}, True),
    ({"WANDB_OFFLINE": "false"}, False),
])
def test_offline_unless_configured(clean_env, env, offline):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert wandb_offline() is offline


def test_netrc_login_counts_as_configured(clean_env, tmp_path):
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_offline() is False


def test_logs_resolved_config_grouped_by_variant(clean_env, tmp_path):
    clean_env.setenv("WANDB_MODE", "offline")
    clean_env.setenv("WANDB_DIR", str(tmp_path))
    clean_env.setenv("WANDB_SILENT", "true")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["logger=wandb", "variant=mla_moe", f"paths.output_dir={tmp_path}"])
    logger = instantiate(cfg.logger)
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        logger.log_hyperparams(config)
        run = logger.experiment
        assert run.group == "mla+moe"
        assert run.settings.mode == "offline"
        logged = dict(run.config)
        assert logged["variant"] == config["variant"]  # nested plain dicts, interpolations resolved
        assert logged["model"]["ckpt"] == str(ROOT / "checkpoints" / "tiny_base.pt")
        assert logged["trainer"]["max_steps"] == cfg.trainer.max_steps
    finally:
        import wandb

        wandb.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
