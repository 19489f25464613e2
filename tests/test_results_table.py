"""The README results table: before -> after per evaluation set, cost columns of the final model."""

from __future__ import annotations

import pytest

from emformer_variants.results import main, table


def _m(wer: float, **kw) -> dict:
    base = {"wer": wer, "params_total": 10, "params_active": 5, "gflops_per_audio_s": 1.25,
            "gflops_per_audio_s_encoder": 0.5, "kv_cache_bytes": 2048, "rtf": 0.125}
    return {**base, **kw}


def test_rows_show_before_and_after_and_missing_sets():
    results = {
        "base": {"stages": {"base": {"test": _m(0.30), "test_voice": _m(0.80), "asterisk": _m(0.90)}}},
        "mla": {"stages": {"surgery": {"test": _m(0.40)},
                           "final": {"test": _m(0.25, kv_cache_bytes=512)}}},
        "dense": {"stages": {"final": {"test": _m(0.2), "asterisk": _m(1.5)}}},
    }
    lines = table(results).splitlines()
    assert lines[2] == "| base | 30.0 | 80.0 | 90.0 | 10 / 5 | 1.250 / 0.500 | 2,048 | 0.125 |"
    assert lines[3] == "| mla | 40.0 → 25.0 | - | - | 10 / 5 | 1.250 / 0.500 | 512 | 0.125 |"
    assert lines[4] == "| dense | 20.0 | - | 150.0 | 10 / 5 | 1.250 / 0.500 | 2,048 | 0.125 |"


def test_sets_without_test_are_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--sets", "asterisk"])
    assert e.value.code == 2 and "include test" in capsys.readouterr().err
