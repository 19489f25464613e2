"""Configs are validated at compose time: one-line errors naming the field, before any work."""

from __future__ import annotations

import pytest

from emformer_variants.errors import UserError
from emformer_variants.utils.config_checks import check_evaluate_config, check_train_config
from emformer_variants.utils.paths import PROJECT_ROOT
from tests.conftest import compose_config, run_cli

CONF = PROJECT_ROOT / "conf"


@pytest.mark.parametrize("variant", sorted(p.stem for p in (CONF / "variant").glob("*.yaml")))
@pytest.mark.parametrize("model", ["tiny", "emformer_base"])
def test_shipped_configs_pass(variant, model):
    """Every shipped variant fits both architectures (emformer_base: structure only, no weights)."""
    check_train_config(compose_config("train", [f"variant={variant}", f"model={model}"]))


@pytest.mark.parametrize("experiment", sorted(str(p.relative_to(CONF / "experiment").with_suffix(""))
                                              for p in (CONF / "experiment").rglob("*.yaml")))
def test_shipped_experiments_pass(experiment):
    check_train_config(compose_config("train", [f"experiment={experiment}"]))


BAD_TRAIN = [
    # (overrides, the message must contain this)
    (["variant=moe", "variant.top_k=9"], "top_k=9 exceeds num_experts=8"),
    (["variant=moe", "variant.num_experts=-2"], "num_experts=-2 must be an integer >= 1"),
    (["variant=moe", "variant.d_ff=5000"], "variant.d_ff=5000 exceeds the dense FFN width 1024"),
    (["variant=moe", "variant.layers=[7]"], "variant.layers=[7]: [7] out of range"),
    (["variant=mla", "variant.kv_rank=1000"], "variant.kv_rank=1000 is larger than the maximum 256"),
    (["variant=lowrank", "variant.budget=null", "+variant.rank=300"],
     "variant.rank=300 exceeds the full rank"),
    (["variant=lowrank", "variant.targets=[nonsense*]"], "'nonsense*' matches no nn.Linear"),
    (["variant=mla_lowrank", "variant.stack.1.targets=[joiner]"], "budget_metric=flops counts encoder"),
    (["variant.name=nope"], "variant.name='nope' is not a known variant"),
    (["variant=moe", "+variant.topk=2"], "unknown field(s) ['topk']"),
    (["eval.beam=0"], "eval.beam=0: must be an integer >= 1"),
    (["module.val_beam=0"], "module.val_beam=0: must be an integer >= 1"),
    (["module.max_bad_batches=0"], "module.max_bad_batches=0"),
    (["checkpoint_keep_best=0"], "checkpoint_keep_best=0: must be an integer >= 1"),
    (["module.dropout=1.5"], "module.dropout=1.5: must be a probability in [0, 1) or null"),
    (["model.arch.encoding_dim=-3"], "model.arch.encoding_dim=-3: must be an integer >= 1"),
    (["model.arch.transformer_num_layers=0"], "model.arch.transformer_num_layers=0"),
    (["data.batch_seconds=-1"], "data.batch_seconds=-1: must be a number > 0"),
    (["eval.max_utterances=-5"], "eval.max_utterances=-5"),
    (["trainer.max_steps=-7"], "trainer.max_steps=-7"),
    (["model.arch.transformer_num_heads=5"], "transformer_num_heads=5 does not divide the Emformer width"),
    # chunk sizes that do not fit the model
    (["init=scratch", "model.arch.segment_length=15", "model.features.segment_length=15"],
     "model.arch.segment_length=15 must be a multiple of time_reduction_stride=4"),
    (["init=scratch", "model.arch.right_context_length=3", "model.features.right_context_length=3"],
     "right_context_length=3 must be a multiple of time_reduction_stride=4"),
    (["init=scratch", "model.features.segment_length=8"],
     "model.features.segment_length=8 must equal model.arch.segment_length=16"),
    (["init=scratch", "model.features.n_mels=40"],
     "model.features.n_mels=40 must equal model.arch.input_dim=80"),
    (["init=warm"], "init='warm': choose base or scratch"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt: file not found"),
]


@pytest.mark.parametrize("overrides,needle", BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_bad_train_settings(overrides, needle):
    with pytest.raises(UserError) as e:
        check_train_config(compose_config("train", overrides))
    assert needle in str(e.value) and "\n" not in str(e.value)


BAD_EVAL = [
    (["ckpt=base", "beam=0"], "beam=0: must be an integer >= 1"),
    (["ckpt=base", "max_utterances=0"], "max_utterances=0"),
    (["ckpt=/nonexistent.pt"], "ckpt=/nonexistent.pt: checkpoint not found"),
    (["ckpt=base", "variant=moe", "variant.top_k=20"], "top_k=20 exceeds num_experts=8"),
    (["ckpt=base", "threads=0"], "threads=0"),
    (["ckpt=base", "subset=shuffled"], "subset='shuffled': must be one of first, random"),
]


@pytest.mark.parametrize("overrides,needle", BAD_EVAL, ids=[" ".join(o) for o, _ in BAD_EVAL])
def test_bad_evaluate_settings(overrides, needle):
    with pytest.raises(UserError) as e:
        check_evaluate_config(compose_config("evaluate", overrides))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cli_rejects_before_any_work(tmp_path):
    """Through the real CLI: exit 2, one line, and nothing built (the data root does not even
    exist, and no run folder is claimed)."""
    out = tmp_path / "run"
    proc = run_cli("train.py", "variant=mla", "variant.kv_rank=4096", "data=manifest",
                   f"data.root={tmp_path / 'no-such-corpus'}", f"paths.output_dir={out}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("error: variant.kv_rank=4096 is larger than the maximum 256 (the model "
                                   "width D: the rank of the stacked 2D x D key/value weight); use "
                                   "kv_rank <= 256")
    assert not (out / ".run.json").exists()


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_data_config_passes(data):
    extra = {"audiofolder": ["data.path=/x"], "librispeech": ["data.root=/x"], "manifest": ["data.root=/x"]}
    check_train_config(compose_config("train", [f"data={data}", *extra.get(data, [])]))
    check_evaluate_config(compose_config("evaluate", ["ckpt=base", f"data={data}", *extra.get(data, [])]))


def test_unknown_variant_option_lists_the_choices(tmp_path):
    """variant=nope is not a file of conf/variant/: one line listing the options, exit 2,
    before any project code runs."""
    proc = run_cli("train.py", "variant=nope", f"paths.output_dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and "Could not find 'variant/nope'" in err and "mla_moe moe" in err
    assert not (tmp_path / ".run.json").exists()


@pytest.mark.parametrize("script,override,needle", [
    ("train.py", "trainer.max_stepz=3", "'trainer.max_stepz' is not a key of the train config; "
                                        "did you mean trainer.max_steps"),
    ("evaluate.py", "bean=4", "'bean' is not a key of the evaluate config; did you mean beam?"),
    ("evaluate.py", "data=nope",
     "Could not find 'data/nope' Available options in 'data': asterisk audiofolder"),
])
def test_unknown_key_or_config_is_one_line(tmp_path, script, override, needle):
    extra = ["ckpt=base"] if script == "evaluate.py" else []
    proc = run_cli(script, *extra, override, f"paths.output_dir={tmp_path}")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and needle in err, proc.stderr[-2000:]
    assert err.startswith(f"error: {script}: ")
