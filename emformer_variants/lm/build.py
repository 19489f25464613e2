"""Build the English n-gram LM of a recognizer's tokens from the corpus's training texts.

python -m emformer_variants.lm.build [--ckpt base] [--order 7] [--min-count 2] [--out PATH]

The text is every training-pool sentence of the synthetic corpus's sources (the same hash split
as the corpus: no dev or test sentence, and no Harvard sentence, is ever counted), normalised as
the transcripts are and encoded with the recognizer's tokenizer. Deterministic: the same sources
and tokenizer give the same file. ``evaluate.py lm=english`` builds it on first use under the
cache folder (``english_lm_path``) and reuses it after.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.lm.ngram import NgramLM

DEFAULT_ORDER = 7
DEFAULT_MIN_COUNT = 2
VERSION = 1


def training_texts(cache_dir: Path) -> list[str]:
    """Every source's training-pool texts, normalised, in a fixed order."""
    from emformer_variants.data.synthetic import TEXT_SOURCES, load_text_sources, sentence_pool
    from emformer_variants.text_norm import normalize_text

    sources = load_text_sources(cache_dir)
    out = []
    for name in TEXT_SOURCES:
        out += [normalize_text(t) for t in sources[name] if sentence_pool(t) == "train"]
    return [t for t in out if t]


def _tokenizer_id(tokenizer) -> str:
    return hashlib.sha256(tokenizer.model_proto).hexdigest()[:10]


def english_lm_path(cache_dir: Path, tokenizer, order: int = DEFAULT_ORDER,
                    min_count: int = DEFAULT_MIN_COUNT) -> Path:
    return Path(cache_dir) / f"lm-english-v{VERSION}-o{order}-m{min_count}-{_tokenizer_id(tokenizer)}.npz"


def build_english_lm(cache_dir: Path, tokenizer, order: int = DEFAULT_ORDER,
                     min_count: int = DEFAULT_MIN_COUNT, log=print) -> NgramLM:
    start = time.perf_counter()
    texts = training_texts(cache_dir)
    ids = [tokenizer.encode(t) for t in texts]
    meta = {"texts": len(texts), "tokens": sum(map(len, ids)), "tokenizer": _tokenizer_id(tokenizer),
            "min_count": min_count, "source": "synthetic corpus training pools"}
    lm = NgramLM.build(ids, tokenizer.vocab_size, order, min_count, meta=meta)
    sizes = ", ".join(f"{len(t['keys']):,}" for t in lm.tables)
    log(f"[lm] {len(texts):,} sentences, {meta['tokens']:,} tokens, order {order}: n-grams per order "
        f"{sizes} in {time.perf_counter() - start:.0f} s")
    return lm


def english_lm(cache_dir: Path, tokenizer, order: int = DEFAULT_ORDER, min_count: int = DEFAULT_MIN_COUNT,
               log=print) -> NgramLM:
    """The cached English LM for ``tokenizer``, built on first use."""
    path = english_lm_path(cache_dir, tokenizer, order, min_count)
    if path.is_file():
        return NgramLM.load(path)
    lm = build_english_lm(cache_dir, tokenizer, order, min_count, log)
    lm.save(path)
    log(f"[lm] wrote {path}")
    return lm


def load_lm(name: str, tokenizer, cache_dir) -> tuple[NgramLM, dict]:
    """``lm=`` of evaluate.py: ``english`` (the cached English LM of ``tokenizer``, built on first
    use) or the path of a saved model. Returns (model, what metrics.json records about it)."""
    if name == "english":
        path = english_lm_path(Path(cache_dir), tokenizer)
        lm = english_lm(Path(cache_dir), tokenizer)
    else:
        path, lm = Path(name), NgramLM.load(name)
    return lm, {"name": name, "path": str(path), "order": lm.order, "tokens": lm.meta.get("tokens")}


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    from emformer_variants.models.build import load_named_checkpoint
    from emformer_variants.utils.paths import project_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="base", help="whose tokenizer the LM uses (default: base)")
    parser.add_argument("--order", type=int, default=DEFAULT_ORDER)
    parser.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT,
                        help="drop rarer n-grams of order 3 and up")
    parser.add_argument("--cache-dir", type=Path, default=None, help="text caches (default: cache/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: the cache path that evaluate.py lm=english reads")
    args = parser.parse_args(argv)
    if args.min_count < 1:
        raise UserError(f"--min-count {args.min_count}: must be at least 1")
    cache_dir = args.cache_dir or project_cache_dir()
    tokenizer = load_named_checkpoint(args.ckpt).tokenizer
    lm = build_english_lm(cache_dir, tokenizer, args.order, args.min_count)
    out = args.out or english_lm_path(cache_dir, tokenizer, args.order, args.min_count)
    lm.save(out)
    print(f"[lm] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
