"""The architecture report: measured encoder FLOPs equal the analytic counts, MLA shrinks the
cache, low-rank cuts compute; variants come from conf/variant/."""

from __future__ import annotations

import pytest

from emformer_variants.arch_report import format_table, load_variant, main, measure_variants, shipped_variants
from emformer_variants.models.build import build_random


def test_arch_report_tiny():
    rows = measure_variants(build_random("tiny"), {n: load_variant(n) for n in ("dense", "mla", "lowrank")})
    for name, r in rows.items():
        assert r["encoder_flops_chunk"] == r["encoder_flops_chunk_analytic"], name
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in format_table(rows).splitlines()[2:]}
    assert table["mla"][5].startswith("8.0x")
    assert table["lowrank"][3] != "1.00x"


def test_every_shipped_variant_is_reported_and_unknown_names_fail(capsys):
    names = shipped_variants()
    assert names[0] == "dense" and {"moe", "mla", "lowrank", "mla_moe"} <= set(names)
    with pytest.raises(SystemExit) as e:
        main(["--model", "tiny", "--variants", "nope"])
    assert e.value.code == 2 and "conf/variant/nope.yaml" in capsys.readouterr().err
