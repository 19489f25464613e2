"""Runs never overwrite each other's outputs: unique run folders, and a claim on each."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from emformer_variants.errors import UserError
from emformer_variants.utils.run_dir import CLAIM, claim_output_dir
from tests.conftest import ROOT, run_cli

# Compose the train config the way train.py does, with Hydra's ${now:} frozen: two processes
# that start in the same microsecond.
_COMPOSE = textwrap.dedent("""
    import sys
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    import emformer_variants.utils.paths  # registers the project's resolvers
    with initialize_config_dir(sys.argv[1], version_base="1.3"):
        OmegaConf.register_new_resolver("now", lambda fmt: "2030-01-01_00-00-00-000000",
                                        replace=True, use_cache=True)
        cfg = compose("train", overrides=["paths.root_dir=/tmp/x"])
        print(cfg.paths.output_dir)
""")


def test_same_microsecond_runs_get_different_folders():
    dirs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _COMPOSE, str(ROOT / "conf")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=True)
        dirs.append(out.stdout.strip().splitlines()[-1])
    assert dirs[0] != dirs[1], dirs
    assert all(d.startswith("/tmp/x/outputs/train/2030-01-01_00-00-00-000000-") for d in dirs)


def test_claim_is_exclusive(tmp_path):
    claim_output_dir(tmp_path / "run")
    assert json.loads((tmp_path / "run" / CLAIM).read_text())["pid"] > 0
    with pytest.raises(UserError, match="already used by another run") as e:
        claim_output_dir(tmp_path / "run")
    assert "ended" not in str(e.value)  # this process holds it


def test_claim_of_a_finished_run_says_so(tmp_path):
    """A folder whose run has ended (e.g. failed early) stays claimed; the error says it ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CLAIM).write_text(json.dumps({"pid": int(done.stdout), "host": socket.gethostname(),
                                                      "argv": ["train.py", "x=1"]}))
    with pytest.raises(UserError, match=r"\(`train.py x=1`, pid \d+ on .*, ended; its files stay\)"):
        claim_output_dir(tmp_path / "run")


_RACE = textwrap.dedent("""
    import sys, time
    from emformer_variants.errors import UserError
    from emformer_variants.utils.run_dir import claim_output_dir
    while time.time() < float(sys.argv[2]):
        pass
    try:
        claim_output_dir(sys.argv[1])
        print("won")
    except UserError:
        print("lost")
""")


def test_racing_runs_exactly_one_wins(tmp_path):
    """Four processes claim one folder at the same instant: exactly one gets it."""
    import time

    start = str(time.time() + 3.0)
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path / "shared"), start], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["lost", "lost", "lost", "won"]


def test_cli_refuses_a_claimed_folder(tmp_path):
    claim_output_dir(tmp_path)
    (tmp_path / "metrics.json").write_text('{"wer": 0.1}')
    proc = run_cli("evaluate.py", "ckpt=base", f"paths.output_dir={tmp_path}", "data=manifest",
                   f"data.root={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "already used by another run" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"wer": 0.1}
