"""Config checks at compose time, before any data or model work.

``check_train_config`` / ``check_evaluate_config`` run first in train.py / evaluate.py. Each
bad setting is a one-line UserError naming the field and the fix. Variant settings are
checked by the surgery registry's ``check_variant``: the config dataclasses' own validation,
then each surgery dry-run on a meta-device copy of the architecture (no memory, no weights),
so a rank above a matrix size, ``top_k`` above ``num_experts`` or a layer index out of range
fails here exactly as it would after loading the base, only seconds earlier.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from emformer_variants.errors import UserError
from emformer_variants.surgery.registry import check_variant, requested_specs
from emformer_variants.training.module import TRAIN_ONLY
from emformer_variants.utils import paths  # noqa: F401 - registers the resolvers conf/ uses

ACTIVATIONS = ("relu", "gelu", "silu")
# model.arch keys that are sizes (integers >= 1) and counts that may be 0.
_ARCH_SIZES = ("input_dim", "encoding_dim", "segment_length", "time_reduction_input_dim",
               "time_reduction_stride", "transformer_num_heads", "transformer_ffn_dim",
               "transformer_num_layers", "symbol_embedding_dim", "num_lstm_layers")
_ARCH_COUNTS = ("right_context_length", "transformer_left_context_length", "transformer_max_memory_size")
_ARCH_PROBS = ("transformer_dropout", "lstm_dropout")


# ---------------------------------------------------------------- small checks

def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(cfg, key: str, low: int, optional: bool = False) -> None:
    v = _get(cfg, key)
    if v is None and optional:
        return
    if not _is_int(v) or v < low:
        null = " or null" if optional else ""
        raise UserError(f"{key}={v!r}: must be an integer >= {low}{null}")


def number_above(cfg, key: str, low: float, inclusive: bool = False, optional: bool = False) -> None:
    v = _get(cfg, key)
    if v is None and optional:
        return
    if not _is_num(v) or (v < low if inclusive else v <= low):
        sign = ">=" if inclusive else ">"
        raise UserError(f"{key}={v!r}: must be a number {sign} {low}" + (" or null" if optional else ""))


def number_in(cfg, key: str, low: float, high: float, optional: bool = True) -> None:
    v = _get(cfg, key)
    if v is None and optional:
        return
    if not _is_num(v) or not low <= v <= high:
        raise UserError(f"{key}={v!r}: must be a number in [{low}, {high}]")


# ---------------------------------------------------------------- groups

def check_data(cfg) -> None:
    if _get(cfg, "data") is None:
        return
    # Keys a data config leaves out take the DataModule's defaults.
    number_above(cfg, "data.batch_seconds", 0, optional=True)
    number_above(cfg, "data.eval_batch_seconds", 0, optional=True)
    number_above(cfg, "data.max_train_seconds", 0, optional=True)
    int_at_least(cfg, "data.num_workers", 0, optional=True)
    int_at_least(cfg, "data.max_dev_utterances", 0, optional=True)


def check_arch(arch: dict, where: str = "model.arch") -> None:
    """Sizes positive, width divisible by heads, chunk fits the time reduction."""
    for key in _ARCH_SIZES:
        if key in arch and not (_is_int(arch[key]) and arch[key] >= 1):
            raise UserError(f"{where}.{key}={arch[key]!r}: must be an integer >= 1")
    for key in _ARCH_COUNTS:
        if key in arch and not (_is_int(arch[key]) and arch[key] >= 0):
            raise UserError(f"{where}.{key}={arch[key]!r}: must be an integer >= 0")
    for key in _ARCH_PROBS:
        if key in arch and not (_is_num(arch[key]) and 0 <= arch[key] < 1):
            raise UserError(f"{where}.{key}={arch[key]!r}: must be a number in [0, 1)")
    num_symbols = arch.get("num_symbols")
    if num_symbols is not None and not (_is_int(num_symbols) and num_symbols >= 2):
        raise UserError(f"{where}.num_symbols={num_symbols!r}: must be null (from the "
                        "tokenizer) or an integer >= 2")
    act = arch.get("transformer_activation")
    if act is not None and act not in ACTIVATIONS:
        raise UserError(f"{where}.transformer_activation={act!r}: choose one of {list(ACTIVATIONS)}")
    width = arch.get("time_reduction_input_dim", 1) * arch.get("time_reduction_stride", 1)
    heads = arch.get("transformer_num_heads", 1)
    if width % heads:
        raise UserError(f"{where}.transformer_num_heads={heads} does not divide the Emformer width "
                        f"time_reduction_input_dim x time_reduction_stride = {width}")
    stride = arch.get("time_reduction_stride", 1)
    for key in ("segment_length", "right_context_length"):
        if key in arch and arch[key] % stride:
            raise UserError(f"{where}.{key}={arch[key]} must be a multiple of "
                            f"time_reduction_stride={stride} (feature frames per streaming chunk)")


def check_features(features: dict, arch: dict | None, where: str = "model") -> None:
    for key in ("sample_rate", "n_fft", "hop_length", "n_mels", "segment_length"):
        v = features.get(key)
        if v is not None and not (_is_int(v) and v >= 1):
            raise UserError(f"{where}.features.{key}={v!r}: must be an integer >= 1")
    rc = features.get("right_context_length")
    if rc is not None and not (_is_int(rc) and rc >= 0):
        raise UserError(f"{where}.features.right_context_length={rc!r}: must be an integer >= 0")
    if features.get("sample_rate", 16000) != 16000:
        raise UserError(f"{where}.features.sample_rate={features['sample_rate']}: audio is always "
                        "resampled to 16000 Hz; set 16000")
    if arch is None:
        return
    if "n_mels" in features and "input_dim" in arch and features["n_mels"] != arch["input_dim"]:
        raise UserError(f"{where}.features.n_mels={features['n_mels']} must equal "
                        f"{where}.arch.input_dim={arch['input_dim']} (mel bins are the model's input)")
    for key in ("segment_length", "right_context_length"):
        if key in features and key in arch and features[key] != arch[key]:
            raise UserError(f"{where}.features.{key}={features[key]} must equal {where}.arch.{key}="
                            f"{arch[key]} (the streaming chunk, in feature frames)")


def check_model(cfg) -> None:
    model = _get(cfg, "model")
    if model is None:
        return
    arch = OmegaConf.to_container(model.arch, resolve=True) if "arch" in model else None
    if arch is not None:
        check_arch(arch)
    if "features" in model:
        check_features(OmegaConf.to_container(model.features, resolve=True), arch)


# ---------------------------------------------------------------- what training starts from

def base_architecture(cfg) -> tuple[dict, list[dict]] | None:
    """(arch, variants already applied) of what training starts from, without loading
    weights: the base checkpoint's recorded config, torchaudio's emformer_rnnt_base arch, or
    ``model.arch`` for init=scratch. None when it cannot be known cheaply."""
    model = cfg.model
    if cfg.get("init") == "scratch":
        if "arch" not in model:
            return None
        arch = OmegaConf.to_container(model.arch, resolve=True)
        if arch.get("num_symbols") is None:  # the tokenizer is trained later; a char-sized stand-in
            arch["num_symbols"] = 64
        return arch, []
    base = OmegaConf.to_container(model.base, resolve=True) if "base" in model else {}
    target = str(base.get("_target_", ""))
    if target.endswith("load_recognizer") and base.get("path"):
        from emformer_variants.models.checkpoints import peek

        info = peek(base["path"])
        return dict(info.config["arch"]), list(info.config.get("variants", []))
    if target.endswith("load_emformer_base"):
        from emformer_variants.models.emformer_base import EMFORMER_BASE_ARCH

        return dict(base.get("arch") or EMFORMER_BASE_ARCH), []
    return None


# ---------------------------------------------------------------- entry points

def surgery_args(cfg: DictConfig) -> dict:
    """evaluate.py's ``surgery_args`` as a plain dict ({} when unset)."""
    args = cfg.get("surgery_args")
    if args is None:
        return {}
    if not isinstance(args, DictConfig):
        raise UserError(f"surgery_args={args!r}: give a mapping, e.g. surgery_args=\"{{output_scale: 1}}\"")
    return OmegaConf.to_container(args, resolve=True)


def variant_config(name: str, key: str = "variant", args: dict | None = None) -> dict:
    """conf/variant/NAME.yaml, with the fields of ``args`` replaced, as a checked plain dict;
    ``key`` names the setting in errors."""
    path = paths.PROJECT_ROOT / "conf" / "variant" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"{key}={name}: no conf/variant/{name}.yaml; choose one of {known}")
    variant = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if args:
        unknown = sorted(set(args) - set(variant))
        if unknown:
            raise UserError(f"{key}_args: {unknown} not in conf/variant/{name}.yaml; its fields: "
                            f"{sorted(variant)}")
        variant.update(args)
    check_variant(variant)
    return variant


def check_train_config(cfg: DictConfig) -> None:
    """Everything train.py reads, before it touches data or weights."""
    int_at_least(cfg, "threads", 1)
    int_at_least(cfg, "seed", 0)
    if cfg.get("init") not in ("base", "scratch"):
        raise UserError(f"init={cfg.get('init')!r}: choose base or scratch")
    int_at_least(cfg, "stats_utterances", 1)
    int_at_least(cfg, "calibration_batches", 0)
    int_at_least(cfg, "eval.beam", 1)
    int_at_least(cfg, "eval.threads", 1)
    int_at_least(cfg, "eval.max_utterances", 1, optional=True)
    int_at_least(cfg, "module.val_beam", 1)
    int_at_least(cfg, "module.max_bad_batches", 1)
    number_in(cfg, "module.ctc_weight", 0, 1)
    dropout = _get(cfg, "module.dropout")
    if dropout is not None and not (_is_num(dropout) and 0 <= dropout < 1):
        raise UserError(f"module.dropout={dropout!r}: must be a probability in [0, 1) or null "
                        "(null keeps the architecture's own dropout)")
    number_above(cfg, "module.distill.weight", 0, inclusive=True, optional=True)
    distill = _get(cfg, "module.distill.weight") or 0
    if distill > 0 and cfg.get("init") != "base":
        raise UserError(f"module.distill.weight={distill} needs init=base (the teacher is the base "
                        "checkpoint); set module.distill.weight=0 to train from scratch")
    if cfg.get("export", "last") not in ("best", "last"):
        raise UserError(f"export={cfg.get('export')!r}: choose best or last")
    ema = cfg.get("ema_decay", 0.0)
    if not (_is_num(ema) and 0 <= ema < 1):
        raise UserError(f"ema_decay={ema!r}: must be a number in [0, 1), e.g. 0.99 (0: no weight averaging)")
    train_only = _get(cfg, "module.train_only") or "all"
    if train_only not in TRAIN_ONLY:
        raise UserError(f"module.train_only={train_only!r}: choose one of {', '.join(TRAIN_ONLY)}")
    if train_only == "surgery" and not requested_specs(OmegaConf.to_container(cfg.variant, resolve=True)):
        raise UserError("module.train_only=surgery: the variant replaces no module (variant=dense has no "
                        "surgery), so nothing would train; use module.train_only=all")
    number_above(cfg, "module.optimizer.lr", 0, optional=True)
    int_at_least(cfg, "module.scheduler.warmup_steps", 0, optional=True)
    max_steps = _get(cfg, "trainer.max_steps")
    if max_steps is not None and max_steps != -1 and not (_is_int(max_steps) and max_steps >= 1):
        raise UserError(f"trainer.max_steps={max_steps!r}: must be -1 (no limit) or an integer >= 1")
    vci = _get(cfg, "trainer.val_check_interval")
    if vci is not None and not (_is_num(vci) and vci > 0):
        raise UserError(f"trainer.val_check_interval={vci!r}: must be a number > 0")
    int_at_least(cfg, "checkpoint_every_n_steps", 1, optional=True)
    int_at_least(cfg, "checkpoint_keep_best", 1)
    check_data(cfg)
    check_model(cfg)
    base = base_architecture(cfg)
    variant = OmegaConf.to_container(cfg.variant, resolve=True)
    if base is None:
        check_variant(variant)
    else:
        check_variant(variant, arch=base[0], applied=base[1])
    check_resume(cfg, base)


def check_resume(cfg: DictConfig, base: tuple[dict, list[dict]] | None) -> None:
    """``ckpt_path=``: a readable train.py checkpoint of the same architecture and variant."""
    from emformer_variants.models import checkpoints
    from emformer_variants.training.resume import resolve_resume

    path = resolve_resume(cfg.get("ckpt_path"), cfg.paths.root_dir, cfg.task_name)
    if path is None:
        return
    info = checkpoints.peek(path, verify=True)
    if info.kind != "lightning":
        raise UserError(f"ckpt_path={path}: holds a recognizer but no optimizer, scheduler or loop state; "
                        "resume from a checkpoints/*.ckpt written by train.py (or start from this file "
                        f"with model.ckpt={path})")
    diffs, applied = [], []
    if cfg.get("init") == "scratch" and "arch" in cfg.model:
        arch = OmegaConf.to_container(cfg.model.arch, resolve=True)
        diffs += checkpoints.diff_arch(info.config["arch"], arch)
    elif base is not None:
        diffs += checkpoints.diff_arch(info.config["arch"], base[0])
        applied = base[1]
    variant = OmegaConf.to_container(cfg.variant, resolve=True)
    expected = [*applied, *requested_specs(variant)]
    diffs += checkpoints.diff_variants(info.config["variants"], expected)
    if diffs:
        raise checkpoints.mismatch_error("ckpt_path", path, diffs,
                                         "resume with the model and variant settings the run started with")


def check_evaluate_config(cfg: DictConfig) -> None:
    """Everything evaluate.py reads, before it touches data or weights."""
    int_at_least(cfg, "threads", 1)
    int_at_least(cfg, "seed", 0)
    int_at_least(cfg, "beam", 1)
    int_at_least(cfg, "max_utterances", 1, optional=True)
    from emformer_variants.engine.pipeline import check_decoder
    from emformer_variants.engine.precision import check_precision
    from emformer_variants.evaluation.evaluate import check_subset

    lm = cfg.get("lm")
    check_decoder(cfg.get("decoder", "stock"), cfg.beam, cfg.get("max_symbols"), lm is not None)
    if lm is not None and str(lm) != "english" and not Path(str(lm)).is_file():
        raise UserError(f"lm={lm}: no such file; pass lm=english (built on first use) or the path of a "
                        "model from python -m emformer_variants.lm.build")
    weight = cfg.get("lm_weight", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise UserError(f"lm_weight={weight}: must be a number >= 0 (the LM's scale in shallow fusion)")
    bonus = cfg.get("lm_bonus", 0.0)
    if isinstance(bonus, bool) or not isinstance(bonus, int | float) or not math.isfinite(bonus):
        raise UserError(f"lm_bonus={bonus}: must be a finite number (added per symbol with lm=)")
    check_precision(cfg.get("precision", "fp32"))
    check_subset(cfg.get("subset", "first"))
    if not isinstance(cfg.get("endpoint", False), bool):
        raise UserError(f"endpoint={cfg.get('endpoint')}: must be true or false (segment at endpoints)")
    if not str(cfg.get("split") or "").strip():
        raise UserError("split is empty: name a data split such as test")
    ckpt = str(cfg.ckpt)
    if ckpt != "base" and not Path(ckpt).is_file():
        raise UserError(f"ckpt={ckpt}: checkpoint not found; pass ckpt=PATH to an existing file or ckpt=base")
    int_at_least(cfg, "calibration_batches", 0, optional=True)
    if cfg.get("surgery") is not None:  # surgery=NAME: conf/variant/NAME.yaml, checked before loading
        variant_config(str(cfg.surgery), "surgery", surgery_args(cfg))
    elif cfg.get("surgery_args"):
        raise UserError("surgery_args: set only with surgery=NAME (the fields it replaces)")
    if cfg.get("variant") is not None:  # variant=NAME: the checkpoint must hold this variant
        check_variant(OmegaConf.to_container(cfg.variant, resolve=True))
    check_data(cfg)
    check_model(cfg)
