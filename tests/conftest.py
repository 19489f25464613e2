"""Shared fixtures: a few seconds of real TTS audio as a manifest corpus, tiny model sizes."""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def compose_config(name: str, overrides: list[str]):
    """The config of entry point ``name`` (``train``, ``evaluate``) composed from ``conf/`` with
    ``overrides``, as Hydra composes it for the CLI (the project's resolvers registered)."""
    from hydra import compose, initialize_config_dir

    import emformer_variants.utils.paths  # noqa: F401  (the ev_* resolvers)

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=overrides)

SENTENCES = [
    "it is a truth universally acknowledged",
    "she was the youngest of the two daughters",
    "emma woodhouse handsome clever and rich",
    "the family of dashwood had long been settled in sussex",
    "my dear mister bennet said his lady to him one day",
    "he had not been at home long",
    "they walked towards the house together",
    "nothing could be more pleasant than the evening",
]

# Overrides that shrink model=tiny to test size (same code paths).
TINY_ARCH = [
    "model.arch.time_reduction_input_dim=16",
    "model.arch.transformer_num_heads=2",
    "model.arch.transformer_ffn_dim=64",
    "model.arch.transformer_num_layers=2",
    "model.arch.encoding_dim=32",
    "model.arch.symbol_embedding_dim=32",
    "model.arch.num_lstm_layers=1",
]


@pytest.fixture(scope="module")
def one_thread():
    """Latency-bound small ops: one thread is faster and steadier on a busy 2-core box.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    """8 train / 2 dev / 2 test utterances of espeak-ng speech, 16 kHz FLAC + manifests."""
    import soundfile as sf
    import torchaudio.functional as AF

    from emformer_variants.data.manifest import Utterance, write_manifest
    from emformer_variants.data.tts import default_voices, synthesize

    out = tmp_path_factory.mktemp("mini_corpus")
    voices = [v for v in default_voices() if v.engine == "espeak"]
    rows: dict[str, list] = {"train": [], "dev": [], "test": []}
    for i, text in enumerate(SENTENCES + SENTENCES[:4]):
        wave, sr = synthesize(voices[i % len(voices)], text)
        wave = AF.resample(torch.from_numpy(wave), sr, 16000).numpy()
        path = out / f"u{i}.flac"
        sf.write(path, wave, 16000)
        split = "train" if i < 8 else "dev" if i < 10 else "test"
        rows[split].append(Utterance(str(path), text, len(wave) / 16000, "espeak"))
    for split, utts in rows.items():
        write_manifest(out / f"{split}.jsonl", utts)
    return out


@pytest.fixture(scope="session")
def base_rec():
    """The shipped tiny base (checkpoints/tiny_base.pt), in eval mode."""
    from emformer_variants.models.build import load_named_checkpoint

    return load_named_checkpoint("base")


@pytest.fixture(scope="session")
def two_sentences_wav(tmp_path_factory) -> Path:
    """Two espeak sentences, each followed by 2 s of silence: 16 kHz mono WAV (~8 s). Rendered
    in a fresh process: espeak-ng keeps voice state between calls in one process, so the audio
    (and what the base hears in it) would otherwise depend on which tests ran before."""
    import concurrent.futures
    import multiprocessing

    import soundfile as sf

    path = tmp_path_factory.mktemp("speech") / "two_sentences.wav"
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        wave = pool.submit(render_two_sentences).result()
    sf.write(path, wave, 16000)
    return path


def render_two_sentences():
    import torchaudio.functional as AF

    from emformer_variants.data.tts import default_voices, synthesize

    voices = [v for v in default_voices() if v.engine == "espeak"]
    parts = []
    for voice, text in zip(voices[:2], ["she was the youngest of the two daughters",
                                        "nothing could be more pleasant than the evening"], strict=True):
        wave, sr = synthesize(voice, text)
        parts += [AF.resample(torch.from_numpy(wave).float(), sr, 16000), torch.zeros(32000)]
    return torch.cat(parts).numpy()


@pytest.fixture(scope="session")
def two_sentences(two_sentences_wav) -> torch.Tensor:
    from emformer_variants.data.audio import load_audio

    return load_audio(two_sentences_wav)


def kernel_should_build() -> bool:
    """An x86 CPU with AVX2 and g++, and the kernel not switched off: the packed kernel must
    build here, or the engine silently runs its slow fallback."""
    return (platform.machine().lower() in ("x86_64", "amd64")
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            and shutil.which("g++") is not None
            and os.environ.get("EMFORMER_VARIANTS_PACKED", "1") != "0")


def require_kernel():
    """The packed kernel, for the tests that exercise it. Where it should build, a missing
    kernel fails the test; ``EMFORMER_VARIANTS_ALLOW_NO_KERNEL=1`` turns that into a skip
    (for machines where a failed build is expected), and elsewhere it is always a skip."""
    from emformer_variants.engine import packed

    if packed.kernel() is not None:
        return packed.kernel()
    if kernel_should_build() and os.environ.get("EMFORMER_VARIANTS_ALLOW_NO_KERNEL", "0") != "1":
        pytest.fail("the packed kernel did not build on this x86 machine with AVX2 and g++ (the "
                    "warning above says why); fix the build, or set EMFORMER_VARIANTS_ALLOW_NO_KERNEL=1 "
                    "to skip the kernel's tests")
    pytest.skip("packed kernel unavailable here")


def corpus_wer_of(wer: float, refs: list[str]) -> int:
    """The edit count behind a corpus-level ``wer`` over ``refs`` (total edits / total
    reference words, after the text normaliser); fails unless it is a whole number."""
    from emformer_variants.text_norm import normalize_text

    words = sum(len(normalize_text(r).split()) for r in refs)
    edits = wer * words
    assert math.isfinite(wer) and edits >= 0 and abs(edits - round(edits)) < 1e-6, (wer, words)
    return round(edits)


def run_cli(script: str, *overrides: str, cwd: Path = ROOT, timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py / evaluate.py as a user would, in a subprocess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- tiny in-memory models

TEXTS = ["it is a truth universally acknowledged", "she was the youngest of two daughters"]
SEG, RC = 16, 4  # feature frames per streaming chunk (before time reduction)


def feature_chunks(n: int = 5, streams: int = 1, seed: int = 7) -> list:
    """``n`` random streaming chunks of features (streams, SEG + RC, 80), fixed seed."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(streams, SEG + RC, 80, generator=g) for _ in range(n)]


def run_encoder(encoder, feats: list):
    """An engine/stock encoder over ``feats`` chunk by chunk, state carried: (N, frames, D)."""
    import torch

    state = encoder.init(feats[0].shape[0])
    outs = []
    for x in feats:
        out, state = encoder.step(x, state)
        outs.append(out)
    return torch.cat(outs, dim=1)


def tiny_arch(**kw) -> dict:
    """emformer_rnnt_model kwargs for a test-size model: D = 16 x 4 = 64, FFN 64, 2 layers."""
    from emformer_variants.metrics.flops import emformer_base_arch

    arch = dict(emformer_base_arch(None), time_reduction_input_dim=16, transformer_num_layers=2,
                transformer_ffn_dim=64, transformer_num_heads=2, encoding_dim=32,
                symbol_embedding_dim=32, num_lstm_layers=1, transformer_left_context_length=8)
    arch.update(kw)
    return arch


def every_linear_at_(rec, precision: str) -> None:
    """``apply_precision_``, except that ``int4`` puts every linear at int4 (the precision keeps
    the predictor and joiner at int8), so the fused predictor's and searches' int4 paths stay tested."""
    from emformer_variants.engine.precision import Int4DynamicLinear, _swap_linears_, apply_precision_

    if precision != "int4":
        apply_precision_(rec, precision)
        return
    _swap_linears_(rec.model.eval(), lambda m, _: Int4DynamicLinear(m))


def make_tiny_rec(seed: int = 0, **arch_kw):
    """A model the project never saw: random weights (fixed seed), random global stats."""
    from emformer_variants.models.features import FeatureConfig
    from emformer_variants.models.recognizer import Recognizer
    from emformer_variants.models.tokenizer import train_tokenizer

    torch.manual_seed(seed)
    rec = Recognizer(tiny_arch(**arch_kw), FeatureConfig(), train_tokenizer(TEXTS * 5),
                     torch.randn(80), torch.rand(80) + 0.5)
    return rec.eval()


def apply_shipped_variant_(rec, name: str) -> list:
    """conf/variant/NAME.yaml applied to ``rec`` in place, calibrated on random features (the
    activation-aware surgeries, and MoE's default shared init, fit on calibration audio)."""
    from emformer_variants.arch_report import load_variant, random_calibration
    from emformer_variants.surgery.registry import apply_variant_

    calibration = random_calibration(64, generator=torch.Generator().manual_seed(0))
    return apply_variant_(rec, load_variant(name), init="convert", calibration=calibration)


@pytest.fixture(scope="session")
def tiny_base_ckpt(mini_corpus, tmp_path_factory) -> Path:
    """A test-size base trained from scratch for two steps by train.py (its final.pt)."""
    out = tmp_path_factory.mktemp("tiny_base")
    proc = run_cli("train.py", "data=manifest", f"data.root={mini_corpus}", "init=scratch", *TINY_ARCH,
                   "trainer.max_steps=2", "trainer.val_check_interval=2", "eval.after=false",
                   "eval.before=false", "threads=1", f"paths.output_dir={out}",
                   "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "final.pt"
