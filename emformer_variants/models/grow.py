"""Grow a base recognizer (wider FFNs, more layers) without changing what it computes.

python -m emformer_variants.models.grow SRC DST [--ffn-dim N] [--layers L] [--seed S] [--fp32]

Every Emformer layer's feed-forward block ``Linear(d, f) -> act -> Linear(f, d)`` becomes
``Linear(d, N) -> act -> Linear(N, d)``: the first ``f`` hidden units keep their weights, the
``N - f`` new ones get fresh input weights (PyTorch's default ``nn.Linear`` init, seeded) and
**zero output weights**, so the grown model's outputs equal the original's exactly until
training moves those output weights. The result is a plain torchaudio Emformer RNN-T with
``transformer_ffn_dim=N`` stored in its arch (not a surgery variant), so every later command
treats it as a base.

Depth grows by inserting layers between the existing ones, spread evenly. A new layer is a copy
of the layer before it with its attention output projection and its FFN output linear set to
zero, so both residual branches add nothing and the layer reduces to its output LayerNorm. That
LayerNorm takes over the affine (weight, bias) of the layer before it, whose own output LayerNorm
becomes a plain normalisation: normalising an already normalised vector changes it only by the
LayerNorm epsilon, so the grown model computes what the original computes (to about 1e-5) until
training moves the zeroed weights, which receive gradient from the first step.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from emformer_variants.errors import UserError, one_line_errors
from emformer_variants.models.recognizer import CLI_HINT, Recognizer, load_recognizer, save_recognizer


def _ffn_linears(layer: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    linears = [m for m in layer.pos_ff if isinstance(m, torch.nn.Linear)]
    if len(linears) != 2:
        raise UserError(f"expected 2 linears in an Emformer FFN, found {len(linears)}: "
                        "grow a base without surgery (variants: [])")
    return linears[0], linears[1]


def _default_linear_init(out_features: int, in_features: int, gen: torch.Generator
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's reset_parameters (kaiming_uniform a=sqrt(5) -> U(+-1/sqrt(fan_in))), seeded."""
    bound = 1.0 / math.sqrt(in_features)
    weight = (torch.rand(out_features, in_features, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(out_features, generator=gen) * 2 - 1) * bound
    return weight, bias


@torch.no_grad()
def grow_ffn(rec: Recognizer, ffn_dim: int, seed: int = 0) -> tuple[Recognizer, dict]:
    """A new Recognizer with FFN width ``ffn_dim`` computing exactly what ``rec`` computes.

    ``rec`` is left untouched. Returns (grown recognizer, report dict).
    """
    if rec.variants:
        names = [v.get("name") for v in rec.variants]
        raise UserError(f"grow: the checkpoint carries surgery {names}; grow a base without surgery")
    old = int(rec.arch["transformer_ffn_dim"])
    if ffn_dim < old:
        raise UserError(f"--ffn-dim {ffn_dim}: smaller than the current {old}; growing only adds units")
    arch = dict(rec.arch, transformer_ffn_dim=ffn_dim)
    grown = Recognizer(arch, rec.features.cfg, rec.tokenizer)
    # Every tensor whose shape is unchanged is copied; then the FFN linears are widened.
    target = grown.state_dict()
    for key, value in rec.state_dict().items():
        if target[key].shape == value.shape:
            target[key].copy_(value)
    gen = torch.Generator().manual_seed(seed)
    for src_layer, dst_layer in zip(rec.model.transcriber.transformer.emformer_layers,
                                    grown.model.transcriber.transformer.emformer_layers, strict=True):
        (src_in, src_out), (dst_in, dst_out) = _ffn_linears(src_layer), _ffn_linears(dst_layer)
        new_w, new_b = _default_linear_init(ffn_dim - old, src_in.in_features, gen)
        dst_in.weight.copy_(torch.cat([src_in.weight, new_w]))
        dst_in.bias.copy_(torch.cat([src_in.bias, new_b]))
        zeros = src_out.weight.new_zeros(src_out.out_features, ffn_dim - old)
        dst_out.weight.copy_(torch.cat([src_out.weight, zeros], dim=1))
    params_before = sum(p.numel() for p in rec.parameters())
    params_after = sum(p.numel() for p in grown.parameters())
    report = {"ffn_dim": [old, ffn_dim], "layers": len(rec.model.transcriber.transformer.emformer_layers),
              "params": [params_before, params_after], "seed": seed}
    return grown, report


def _insert_after(old: int, new: int) -> list[int]:
    """Indices of the original layers after which the ``new - old`` new layers go, spread evenly."""
    extra = new - old
    return [max(0, min(old - 1, math.floor((m + 1) * old / (extra + 1) + 0.5) - 1)) for m in range(extra)]


@torch.no_grad()
def grow_depth(rec: Recognizer, num_layers: int) -> tuple[Recognizer, dict]:
    """A new Recognizer with ``num_layers`` Emformer layers computing what ``rec`` computes.

    ``rec`` is left untouched. Returns (grown recognizer, report dict).
    """
    if rec.variants:
        names = [v.get("name") for v in rec.variants]
        raise UserError(f"grow: the checkpoint carries surgery {names}; grow a base without surgery")
    old = int(rec.arch["transformer_num_layers"])
    if num_layers < old:
        raise UserError(f"--layers {num_layers}: fewer than the current {old}; growing only adds layers")
    after = _insert_after(old, num_layers)
    # Layout of the grown stack: each entry is (source layer, is_new).
    layout: list[tuple[int, bool]] = []
    for i in range(old):
        layout.append((i, False))
        layout.extend((i, True) for _ in range(after.count(i)))
    grown = Recognizer(dict(rec.arch, transformer_num_layers=num_layers), rec.features.cfg, rec.tokenizer)
    prefix = "model.transcriber.transformer.emformer_layers."
    source = rec.state_dict()
    target = grown.state_dict()
    for key, value in source.items():
        if not key.startswith(prefix):
            target[key].copy_(value)
    for j, (i, _) in enumerate(layout):
        for key, value in source.items():
            if key.startswith(f"{prefix}{i}."):
                target[f"{prefix}{j}." + key[len(f"{prefix}{i}."):]].copy_(value)
    layers = grown.model.transcriber.transformer.emformer_layers
    for j, (_, is_new) in enumerate(layout):
        if not is_new:
            continue
        layer = layers[j]
        layer.attention.out_proj.weight.zero_()
        layer.attention.out_proj.bias.zero_()
        ffn_out = _ffn_linears(layer)[1]
        ffn_out.weight.zero_()
        ffn_out.bias.zero_()
        # The affine of the output normalisation moves to the last layer of the run of new layers.
        if j + 1 == len(layout) or not layout[j + 1][1]:
            first = j
            while layout[first - 1][1]:
                first -= 1
            owner = layers[first - 1].layer_norm_output
            layer.layer_norm_output.weight.copy_(owner.weight)
            layer.layer_norm_output.bias.copy_(owner.bias)
            for k in range(first - 1, j):
                layers[k].layer_norm_output.weight.fill_(1.0)
                layers[k].layer_norm_output.bias.zero_()
    params_before = sum(p.numel() for p in rec.parameters())
    params_after = sum(p.numel() for p in grown.parameters())
    report = {"layers": [old, num_layers], "inserted_after": after, "params": [params_before, params_after]}
    return grown, report


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="a base checkpoint (export or final.pt) without surgery")
    parser.add_argument("dst")
    parser.add_argument("--ffn-dim", type=int, help="new FFN width of every layer")
    parser.add_argument("--layers", type=int, help="new number of Emformer layers (inserted evenly)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new units' input weights")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, as export)")
    args = parser.parse_args(argv)
    if args.ffn_dim is None and args.layers is None:
        parser.error("give --ffn-dim N and/or --layers L")
    rec = load_recognizer(args.src, CLI_HINT)
    params_before = sum(p.numel() for p in rec.parameters())
    report: dict = {}
    if args.ffn_dim is not None:
        rec, report["ffn"] = grow_ffn(rec, args.ffn_dim, args.seed)
        before, after = report["ffn"]["ffn_dim"]
        print(f"grow: ffn {before} -> {after} in {report['ffn']['layers']} layers")
    if args.layers is not None:
        rec, report["depth"] = grow_depth(rec, args.layers)
        (before, after), where = report["depth"]["layers"], report["depth"]["inserted_after"]
        print(f"grow: layers {before} -> {after} (new layers after original layers {where})")
    save_recognizer(rec, args.dst, meta={"source": args.src, "grow": report}, half=not args.fp32)
    print(f"grow: params {params_before:,} -> {sum(p.numel() for p in rec.parameters()):,}; wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
