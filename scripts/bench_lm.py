"""Time shallow fusion: the modified beam search with and without the n-gram LM, C++ and Python.

    python scripts/bench_lm.py [--ckpt base] [--lm english] [--utterances 40] [--beam 10]
                               [--max-symbols 4] [--lm-weight 0.1] [--threads 1]

The first ``--utterances`` of the default corpus's ``test`` split (built on first use), each
decoded by every mode in turn (the first mode rotating), streaming through the engine:
- ``C++``: the fused modified search without an LM;
- ``C++ + LM``: the fused search with the LM (``kernels/ngram_lm.cpp``);
- ``Python + LM``: the Python loop with the LM (``ModifiedBeamSearch(..., fused=False)``).
Reported per mode: the search's seconds (wall) per audio second (the encoder is the same for
every mode and left out), the ratio to ``C++``, WER on those utterances, and whether the
C++ and Python transcripts with the LM are the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emformer_variants.data.audio import load_audio  # noqa: E402
from emformer_variants.engine.packed import isa_report  # noqa: E402
from emformer_variants.engine.pipeline import build_pipeline  # noqa: E402
from emformer_variants.engine.stream import stream_decode  # noqa: E402
from emformer_variants.lm import LM_WEIGHT  # noqa: E402
from emformer_variants.lm.build import load_lm  # noqa: E402
from emformer_variants.metrics.wer import error_rates  # noqa: E402
from emformer_variants.models.recognizer import load_recognizer  # noqa: E402
from emformer_variants.utils.paths import PROJECT_ROOT, project_cache_dir  # noqa: E402

MODES = ("C++", "C++ + LM", "Python + LM")


def test_utterances(n: int) -> list:
    """The first ``n`` of the default corpus's test split, built on first use (as evaluate.py)."""
    import hydra
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base=None):
        cfg = compose("evaluate")
    return hydra.utils.instantiate(cfg.data).utterances("test")[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="base")
    p.add_argument("--lm", default="english", help="english, or the path of a saved LM")
    p.add_argument("--utterances", type=int, default=40)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--max-symbols", type=int, default=4)
    p.add_argument("--lm-weight", type=float, default=LM_WEIGHT)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = PROJECT_ROOT / "checkpoints" / "tiny_base.pt" if args.ckpt == "base" else Path(args.ckpt)
    rec = load_recognizer(ckpt)
    lm, _ = load_lm(args.lm, rec.tokenizer, project_cache_dir())
    opts = {"C++": {}, "C++ + LM": {"lm": lm, "lm_weight": args.lm_weight},
            "Python + LM": {"lm": lm, "lm_weight": args.lm_weight, "fused": False}}
    pipes = {m: build_pipeline(rec, "modified", args.beam, max_symbols=args.max_symbols, **o)
             for m, o in opts.items()}
    utts = test_utterances(args.utterances)
    search_s = dict.fromkeys(MODES, 0.0)
    hyps: dict[str, list[str]] = {m: [] for m in MODES}
    audio_s = 0.0
    for i, u in enumerate(utts):
        wave = load_audio(u.audio)
        audio_s += wave.numel() / rec.features.cfg.sample_rate
        for m in MODES[i % 3:] + MODES[:i % 3]:
            res = stream_decode(rec, wave, pipeline=pipes[m])
            search_s[m] += sum(res.decoder_s)
            hyps[m].append(res.text)
    refs = [u.text for u in utts]
    print(f"# {ckpt.name}, {len(utts)} test utterances ({audio_s:.0f} s of audio), beam {args.beam}, "
          f"max_symbols {args.max_symbols}, LM weight {args.lm_weight}, threads {args.threads}, modes in "
          f"turn; {isa_report()}")
    print("| mode | search s per audio s | vs C++ | WER % |")
    print("|---|---|---|---|")
    for m in MODES:
        wer = 100 * error_rates(refs, hyps[m])["wer"]
        print(f"| {m} | {search_s[m] / audio_s:.4f} | {search_s[m] / search_s['C++']:.2f}x | {wer:.2f} |")
    same = sum(a == b for a, b in zip(hyps["C++ + LM"], hyps["Python + LM"], strict=True))
    print(f"C++ and Python transcripts with the LM: {same} of {len(utts)} the same")
    return 0


if __name__ == "__main__":
    sys.exit(main())
