"""The architecture report: measured and analytic encoder FLOPs agree, MLA shrinks the cache."""

from __future__ import annotations

from emformer_variants.arch_report import main


def test_arch_report_tiny(capsys):
    assert main(["--model", "tiny", "--variants", "dense", "mla", "lowrank"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and "variant" not in line}
    for name, cells in rows.items():
        measured, analytic = (float(x) for x in cells[2].split(" / "))
        assert abs(measured - analytic) <= 0.01 * measured, name
    assert rows["mla"][5].startswith("8.0x")
    assert rows["lowrank"][3] != "1.00x"
