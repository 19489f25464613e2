"""Export a trained recognizer as a compact, self-contained checkpoint (the shipped base).

python -m emformer_variants.models.export SRC DST [--fp32]

SRC: a ``final.pt`` or Lightning ``.ckpt`` from train.py. Floating weights are stored as
fp16 by default (they load back as fp32); training-only parts (the auxiliary CTC head)
are not part of the recognizer and are dropped.
"""

from __future__ import annotations

import argparse
import sys

from emformer_variants.errors import one_line_errors
from emformer_variants.models.recognizer import CLI_HINT, load_recognizer, save_recognizer


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    parser.add_argument("--note", default="", help="free text stored in the checkpoint's meta")
    args = parser.parse_args(argv)
    rec = load_recognizer(args.src, CLI_HINT)
    save_recognizer(rec, args.dst, meta={"source": args.src, "note": args.note}, half=not args.fp32)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
