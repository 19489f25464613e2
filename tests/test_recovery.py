"""The recovery recipe: joiner distillation on sampled lattice cells equals the full-lattice KL
when every cell is taken and is 0 for the teacher itself; ``module.train_only=surgery``
trains exactly the parameters the surgery created, through a real Lightning fit with the
real RNN-T loss; ``export=best`` writes the best validated weights."""

from __future__ import annotations

import copy
import functools
import json

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from emformer_variants.data.datamodule import ASRDataModule
from emformer_variants.data.sources import ManifestSource
from emformer_variants.errors import UserError
from emformer_variants.results import rows as results_rows
from emformer_variants.surgery.registry import apply_variant_, surgery_parameters
from emformer_variants.training.distill import joiner_kl, joint_at, sample_cells
from emformer_variants.training.module import RNNTModule
from tests.conftest import compose_config, make_tiny_rec, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _lattice(model, feats, lengths, targets, target_lengths, blank):
    enc, enc_len = model.transcribe(feats, lengths)
    start = torch.full((targets.shape[0], 1), blank, dtype=targets.dtype)
    pred, _, _ = model.predict(torch.cat([start, targets], 1), target_lengths + 1, None)
    return enc, enc_len, pred


def test_sampled_joiner_kl_with_every_cell_is_the_full_lattice_kl():
    student, teacher = make_tiny_rec(seed=0), make_tiny_rec(seed=1)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 120, 80, generator=gen)
    lengths = torch.tensor([120, 90, 64])
    v = student.tokenizer.num_symbols
    targets = torch.randint(0, v - 1, (3, 5), generator=gen, dtype=torch.int32)
    target_lengths = torch.tensor([5, 2, 4], dtype=torch.int32)
    with torch.no_grad():
        s_enc, s_len, s_pred = _lattice(student.model, feats, lengths, targets, target_lengths, student.blank)
        t_enc, t_len, t_pred = _lattice(teacher.model, feats, lengths, targets, target_lengths, teacher.blank)
        full_s, _, _ = student.model.join(s_enc, s_len, s_pred, target_lengths + 1)  # (B, T', U+1, V)
        full_t, _, _ = teacher.model.join(t_enc, t_len, t_pred, target_lengths + 1)
        frames = full_s.shape[1]
        mask = ((torch.arange(frames)[None, :, None] < s_len[:, None, None])
                & (torch.arange(full_s.shape[2])[None, None, :] <= target_lengths[:, None, None]))
        tau = 2.0
        ls, lt = (full_s / tau).log_softmax(-1), (full_t / tau).log_softmax(-1)
        reference = ((lt.exp() * (lt - ls)).sum(-1) * mask).sum() / mask.sum() * tau ** 2

        cells = sample_cells(s_len, target_lengths, None, frames)
        assert cells[0].numel() == int(mask.sum())
        kl = joiner_kl(joint_at(student.model, s_enc, s_pred, cells),
                       joint_at(teacher.model, t_enc, t_pred, cells), tau)
        torch.testing.assert_close(kl, reference, rtol=1e-5, atol=1e-6)

        few = sample_cells(s_len, target_lengths, 7, frames, generator=torch.Generator().manual_seed(0))
        assert few[0].tolist() == [0] * 7 + [1] * 7 + [2] * 7
        assert bool((few[1] < s_len.clamp(max=frames)[few[0]]).all())
        assert bool((few[2] <= target_lengths[few[0]]).all())
        assert len(set(zip(*(c.tolist() for c in few), strict=True))) == 21  # without replacement
        same = joint_at(student.model, s_enc, s_pred, few)
        assert joiner_kl(same, same.clone(), tau).item() == 0.0


def _data(mini_corpus, rec):
    dm = ASRDataModule(ManifestSource(str(mini_corpus)), batch_seconds=6, seed=0)
    dm.bind(rec.features, rec.tokenizer)
    return dm


def test_train_only_surgery_trains_exactly_the_parameters_the_surgery_created(mini_corpus):
    base = make_tiny_rec()
    rec = copy.deepcopy(base)
    reports = apply_variant_(rec, {"name": "mla+lowrank", "stack": [
        {"name": "mla", "kv_rank_ratio": 0.5}, {"name": "lowrank", "targets": ["ffn"], "ratio": 0.5}]})
    names = surgery_parameters(reports, rec.model)
    assert names and all(".attention." in n or ".pos_ff." in n for n in names)
    # the MLA layer keeps the base's feed-forward objects: only its new attention is listed
    assert not any("layer_norm_input" in n for n in names)
    module = RNNTModule(rec, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), teacher=base,
                        distill={"kind": "joiner", "weight": 1.0, "positions": 16},
                        train_only="surgery", surgery_parameters=names)
    trainable = {n for n, p in rec.model.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    before = {n: p.detach().clone() for n, p in rec.model.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=_data(mini_corpus, rec))
    after = dict(rec.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(names)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in names)

    with pytest.raises(UserError, match="variant=dense has no surgery"):
        RNNTModule(make_tiny_rec(), optimizer=torch.optim.AdamW, train_only="surgery",
                   surgery_parameters=[])


def test_dense_recipe_starts_at_zero_distillation_and_exports_the_best(mini_corpus, tiny_base_ckpt, tmp_path):
    """The dense row's recipe on tiny sizes: at the first step the student is the teacher, so
    the joiner KL is exactly 0 (no dropout in the recipe); every parameter trains; final.pt
    holds the weights with the lowest validation WER (the untrained start included)."""
    out = tmp_path / "run"
    proc = run_cli("train.py", "experiment=finetune/dense", "data=manifest", f"data.root={mini_corpus}",
                   "augment=none", f"model.ckpt={tiny_base_ckpt}", "trainer.max_steps=2",
                   "trainer.val_check_interval=1", "trainer.log_every_n_steps=1",
                   "module.val_beam=2", f"paths.output_dir={out}",
                   "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    distill = [float(r["train/distill"]) for r in rows if r.get("train/distill")]
    assert distill and distill[0] == 0.0
    val = [float(r["val/wer"]) for r in rows if r.get("val/wer")]
    assert len(val) == 3  # before training, after step 1, after step 2
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["exported"]["val/wer"] == pytest.approx(min(val))
    assert summary["exported"]["export"] in ("start", "best")


def test_train_only_surgery_with_dense_is_rejected_before_work(mini_corpus, tiny_base_ckpt, tmp_path):
    proc = run_cli("train.py", "experiment=finetune/dense", "module.train_only=surgery", "data=manifest",
                   f"data.root={mini_corpus}", f"model.ckpt={tiny_base_ckpt}", f"paths.output_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "module.train_only=surgery" in proc.stderr.strip().splitlines()[-1]


def test_train_only_auto_is_surgery_with_a_surgery_and_all_without():
    from emformer_variants.training.module import freeze_outside_surgery_

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    assert freeze_outside_surgery_(model, "auto", []) == 3 * 3 + 3 + 3 * 2 + 2
    assert all(p.requires_grad for p in model.parameters())
    assert freeze_outside_surgery_(model, "auto", ["1.weight", "1.bias"]) == 3 * 2 + 2
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["1.weight", "1.bias"]


SHIPPED_STAGE = "tiny_base/stage10"   # the stage checkpoints/tiny_base.pt comes from (docs/tiny_base.md)


@pytest.fixture(scope="module")
def shipped_data():
    return OmegaConf.to_container(compose_config("train", [f"experiment={SHIPPED_STAGE}"]).data)


@pytest.mark.parametrize("row", [r for r in results_rows() if r != "base"])
def test_recovery_recipes_read_the_shipped_base_pretraining_data(row, shipped_data):
    """The recovery recipe fine-tunes on the corpus and augmentation the shipped base was last
    pretrained on, not on an earlier stage's (which left voices out and moved the dense control).
    Every recipe of the results table, as ``emformer_variants.results`` finds them."""
    recipe = compose_config("train", [f"experiment=finetune/{row}"])
    assert OmegaConf.to_container(recipe.data) == shipped_data  # augmentation included
