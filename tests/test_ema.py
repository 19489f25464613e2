"""ema_decay: a moving average of the weights is what validation scores and what the
checkpoints and final.pt hold; a resumed run continues the same average; a bad decay is a
one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emformer_variants.models.recognizer import load_recognizer
from tests.conftest import TINY_ARCH, run_cli

# 8 one-utterance batches per epoch, 6 steps, validation every 3, last.ckpt every 3 steps.
TRAIN = [*TINY_ARCH, "init=scratch", "trainer.max_steps=6", "trainer.val_check_interval=3",
         "checkpoint_every_n_steps=3", "data.batch_seconds=3", "eval.before=false", "eval.after=false",
         "threads=1", "trainer.enable_progress_bar=false", "module.optimizer.lr=3e-3"]


def _train(corpus: Path, out: Path, *extra: str) -> None:
    proc = run_cli("train.py", "data=manifest", f"data.root={corpus}", *TRAIN,
                   f"paths.output_dir={out}", *extra, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_recognizer(path).state_dict()


@pytest.fixture(scope="module")
def runs(mini_corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ema")
    out = {name: root / name for name in ("plain", "ema", "half")}
    _train(mini_corpus, out["plain"])
    _train(mini_corpus, out["ema"], "ema_decay=0.5")
    _train(mini_corpus, out["half"], "ema_decay=0.5", "trainer.max_steps=3")
    _train(mini_corpus, root / "resumed", "ema_decay=0.5",
           f"ckpt_path={out['half'] / 'checkpoints' / 'last.ckpt'}")
    out["resumed"] = root / "resumed"
    return out


def test_the_checkpoint_and_final_hold_the_average(runs):
    ckpt = torch.load(runs["ema"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    key = next(k for k in averaged if k.endswith("pos_ff.1.weight"))
    assert not torch.equal(averaged[key], current[key])  # the average lags the trained weights
    final = _weights(runs["ema"] / "final.pt")
    assert torch.equal(final[key[len("recognizer."):]], averaged[key])
    plain = _weights(runs["plain"] / "final.pt")
    assert not torch.equal(final[key[len("recognizer."):]], plain[key[len("recognizer."):]])


def test_a_resumed_run_continues_the_same_average(runs):
    whole, resumed = _weights(runs["ema"] / "final.pt"), _weights(runs["resumed"] / "final.pt")
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("decay", ["1.0", "-0.1", "fast"])
def test_a_bad_decay_is_a_one_line_error(decay, tmp_path):
    proc = run_cli("train.py", *TINY_ARCH, f"ema_decay={decay}", f"paths.output_dir={tmp_path}")
    assert proc.returncode != 0
    assert "ema_decay=" in proc.stderr and "must be a number in [0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr
