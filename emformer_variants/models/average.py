"""Average the weights of several checkpoints of one model (checkpoint averaging) into one export.

python -m emformer_variants.models.average DST SRC [SRC ...] [--fp32] [--note TEXT]

Every SRC (a ``final.pt``, Lightning ``.ckpt`` or export from the same training run or recipe)
must carry the same architecture, surgery, tokenizer and feature statistics; floating weights
are averaged with equal weight, everything else must be identical. The result is written like
``models.export`` (fp16 unless ``--fp32``), so every command accepts it as ``ckpt=``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.models.recognizer import CLI_HINT, Recognizer, load_recognizer, save_recognizer

_MUST_MATCH = ("features.",)  # feature statistics: averaging two different normalisations is wrong


@torch.no_grad()
def average_recognizers(recs: list[Recognizer], names: list[str]) -> Recognizer:
    """The first recognizer with every floating weight replaced by the mean over ``recs``."""
    if len(recs) < 2:
        raise UserError("average: give at least two checkpoints")
    first, first_state = recs[0], recs[0].state_dict()
    sums = {k: v.clone().double() for k, v in first_state.items() if v.is_floating_point()}
    for rec, name in zip(recs[1:], names[1:], strict=True):
        if rec.config != first.config or rec.tokenizer.model_proto != first.tokenizer.model_proto:
            raise UserError(f"{name}: a different architecture, surgery or tokenizer than {names[0]}; "
                            "average checkpoints of one model only")
        for k, v in rec.state_dict().items():
            same = torch.equal(v, first_state[k])
            if (k.startswith(_MUST_MATCH) or not v.is_floating_point()) and not same:
                raise UserError(f"{name}: {k} differs from {names[0]}; average checkpoints of one "
                                "training run or recipe")
            if v.is_floating_point():
                sums[k] += v.double()
    first.load_state_dict({k: (sums[k] / len(recs)).to(v.dtype) if k in sums else v
                           for k, v in first_state.items()})
    return first


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dst")
    parser.add_argument("srcs", nargs="+", metavar="src")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, as export)")
    parser.add_argument("--note", default="", help="free text stored in the checkpoint's meta")
    args = parser.parse_args(argv)
    if args.dst in args.srcs:
        raise UserError(f"{args.dst}: also a source; write the average to a new file")
    avg = average_recognizers([load_recognizer(s, CLI_HINT) for s in args.srcs], args.srcs)
    save_recognizer(avg, args.dst, meta={"averaged": args.srcs, "note": args.note}, half=not args.fp32)
    print(f"averaged {len(args.srcs)} checkpoints; wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
