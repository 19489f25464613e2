"""A variant registered in one place (here, in the test) flows through train.py, evaluate.py,
the results table and the architecture report, with no edit anywhere else: its FLOP delta,
what it touches, its calibration request, its resolved fields and its telemetry all come
from its registry entry."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from emformer_variants.surgery import registry
from emformer_variants.surgery.registry import Surgery, SurgeryReport, Telemetry
from emformer_variants.surgery.swap import swap_modules_
from emformer_variants.utils.paths import PROJECT_ROOT
from tests.conftest import TINY_ARCH

_LAYER = re.compile(r"emformer_layers\.\d+$")


@dataclass(frozen=True)
class ToyConfig:
    keep: float = 0.5  # fraction of each FFN's hidden neurons kept
    width: int | None = None  # resolved by the surgery: the kept width


class ToyLinear(nn.Linear):
    """A plain linear the toy's telemetry can find."""


def apply_toy_(rec, config: ToyConfig, init: str = "convert", calibration=None) -> SurgeryReport:
    """Keep the first ``keep`` of every Emformer FFN's hidden neurons."""
    ffns = {f"{name}.pos_ff": m.pos_ff for name, m in rec.model.named_modules() if _LAYER.search(name)}
    new, width = {}, None
    for fqn, ff in ffns.items():
        lin1, lin2 = ff[1], ff[4]
        width = config.width or max(1, round(config.keep * lin1.out_features))
        kw = {"device": lin1.weight.device, "dtype": lin1.weight.dtype}
        up, down = ToyLinear(lin1.in_features, width, **kw), ToyLinear(width, lin2.out_features, **kw)
        if init == "convert":
            with torch.no_grad():
                up.weight.copy_(lin1.weight[:width])
                up.bias.copy_(lin1.bias[:width])
                down.weight.copy_(lin2.weight[:, :width])
                down.bias.copy_(lin2.bias)
        new[f"{fqn}.1"], new[f"{fqn}.4"] = up, down
    swap_modules_(rec.model, new)
    resolved = {"name": "toy", "keep": config.keep, "width": width}
    return SurgeryReport(name="toy", replaced=sorted(new),
                         extra={"resolved_spec": resolved, "calibration_batches": len(calibration or [])})


def toy_flops_delta(arch: dict, config: ToyConfig, chunk_index: int | None) -> int:
    stride = arch["time_reduction_stride"]
    rows = (arch["segment_length"] + arch["right_context_length"]) // stride
    d, f = arch["time_reduction_input_dim"] * stride, arch["transformer_ffn_dim"]
    return arch["transformer_num_layers"] * 2 * (2 * rows * d * config.width - 2 * rows * d * f)


class ToyCalls:
    """Evaluation telemetry: forward calls of the toy's linears."""

    def __init__(self, model: nn.Module):
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, ToyLinear)]

    def _hook(self, *args) -> None:
        self.calls += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def summary(self) -> dict:
        return {"toy_calls": self.calls} if self.handles else {}


def toy_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    weights = [m.weight for m in model.modules() if isinstance(m, ToyLinear)]
    return {"toy_l2": 1e-9 * sum(w.pow(2).sum() for w in weights)} if weights else {}


TOY = Surgery(
    name="toy", config=ToyConfig, apply=apply_toy_, flops_delta=toy_flops_delta,
    touches=lambda config: {"ffn"}, calibration=lambda config: 1, resolved_fields=frozenset({"width"}),
    telemetry=Telemetry(losses=toy_losses, evaluation=ToyCalls,
                        train_stats=lambda model: {"toy/kept": 0.5} if toy_losses(model) else {}),
)


@pytest.fixture()
def toy(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "toy", TOY)


def _compose(name: str, overrides: list[str], variant: dict | None):
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    if variant is not None:  # as conf/variant/toy.yaml would give
        OmegaConf.set_struct(cfg, False)
        cfg.variant = variant
    return cfg


def test_a_registered_variant_flows_through_every_tool(toy, mini_corpus, tmp_path, monkeypatch):
    import evaluate
    import train
    from emformer_variants import arch_report, results
    from emformer_variants.models.build import build_random

    data = ["data=manifest", f"data.root={mini_corpus}", "threads=1"]
    variant = {"name": "toy", "keep": 0.5}

    # train.py: surgery (with the calibration audio it asked for), evaluations, fine-tuning, telemetry.
    out = tmp_path / "train"
    cfg = _compose("train", [*data, "init=scratch", *TINY_ARCH, "trainer.max_steps=2",
                             "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
                             "eval.max_utterances=1", "eval.beam=2", "calibration_batches=1",
                             "trainer.enable_progress_bar=false", f"paths.output_dir={out}"], variant)
    summary = train.run(cfg)
    assert summary["variant_name"] == "toy" and summary["steps"] == 2
    assert summary["surgery"][0]["name"] == "toy" and summary["surgery"][0]["replaced"] == 4
    assert summary["surgery"][0]["calibration_batches"] == 1
    for row in ("after_surgery", "fine_tuned"):
        m = summary["results"][row]
        assert m["toy_calls"] > 0
        assert m["gflops_per_audio_s_encoder_analytic"] == pytest.approx(m["gflops_per_audio_s_encoder"],
                                                                         rel=0.01)
    with open(out / "csv" / "metrics.csv") as f:
        logged = set(next(csv.reader(f)))
    assert {"train/toy_l2", "train/toy/kept"} <= logged

    # evaluate.py rebuilds it from the checkpoint alone (resolved width), and checks variant=.
    evals = {}
    for stage in ("surgery", "final"):
        ev = tmp_path / f"{stage}-test"
        cfg = _compose("evaluate", [*data, f"ckpt={out / (stage + '.pt')}", "beam=2",
                                    f"paths.output_dir={ev}"], variant)
        evals[stage] = evaluate.run(cfg)
        assert evals[stage]["variants"] == [{"name": "toy", "keep": 0.5, "width": 32}]
        assert evals[stage]["toy_calls"] > 0
        m = evals[stage]
        assert m["gflops_per_audio_s_encoder_analytic"] == pytest.approx(m["gflops_per_audio_s_encoder"],
                                                                         rel=0.01)
    assert evals["final"]["wer"] == pytest.approx(summary["results"]["fine_tuned"]["wer"])

    # The results table: rows are the recipes in conf/experiment/finetune/; steps already done are reused.
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name in ("dense", "toy"):
        (recipes / f"{name}.yaml").write_text("# @package _global_\n")
    monkeypatch.setattr(results, "RECIPES", recipes)
    assert results.rows() == ["base", "dense", "toy"]
    table_dir = tmp_path / "results"
    shutil.copytree(out, table_dir / "toy" / "train")
    for stage in ("surgery", "final"):
        shutil.copytree(tmp_path / f"{stage}-test", table_dir / "toy" / f"{stage}-test")
    assert results.main(["--rows", "toy", "--sets", "test", "--out", str(table_dir)]) == 0
    table = (table_dir / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| toy |"))
    assert row.startswith(f"| toy | {100 * evals['surgery']['wer']:.1f} [")
    assert f" | {100 * evals['final']['wer']:.1f} [" in row
    assert json.loads((table_dir / "results.json").read_text())["commands"]["toy"]

    # The architecture report: measured FLOPs equal the registered analytic delta's count.
    rows = arch_report.measure_variants(build_random("tiny"), {"dense": {"name": "dense"}, "toy": variant})
    assert rows["toy"]["encoder_flops_chunk"] == rows["toy"]["encoder_flops_chunk_analytic"]
    assert rows["toy"]["encoder_flops_chunk"] < rows["dense"]["encoder_flops_chunk"]
    assert rows["toy"]["params_total"] < rows["dense"]["params_total"]
    assert "| toy |" in arch_report.format_table(rows)
