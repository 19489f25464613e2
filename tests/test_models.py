"""Model building, features, streaming equivalence, checkpoints, emformer_base loading."""

from __future__ import annotations

import json

import pytest
import torch
from torchaudio.models import emformer_rnnt_base

from emformer_variants.errors import UserError
from emformer_variants.models.features import FeatureConfig
from emformer_variants.models.recognizer import Recognizer, load_recognizer, save_recognizer
from emformer_variants.models.tokenizer import train_tokenizer
from tests.conftest import TEXTS, make_tiny_rec, tiny_arch


@pytest.fixture()
def tiny_rec() -> Recognizer:
    return make_tiny_rec()


def test_char_tokenizer_covers_alphabet_and_round_trips():
    tok = train_tokenizer(["abc"])
    text = "quick zebra's jump"
    assert tok.decode(tok.encode(text)) == text
    assert tok.blank == tok.vocab_size and tok.num_symbols == tok.vocab_size + 1


def test_streaming_encoder_equals_full_utterance(tiny_rec):
    """Emformer's chunked infer with carried state reproduces the full-context forward."""
    model = tiny_rec.model
    seg, rc = 16, 4
    frames = seg * 6
    x = torch.randn(1, frames + rc, 80)
    with torch.no_grad():
        full, _ = model.transcribe(x, torch.tensor([frames]))
        outs, state = [], None
        for start in range(0, frames, seg):
            out, _, state = model.transcribe_streaming(x[:, start:start + seg + rc],
                                                       torch.tensor([seg + rc]), state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(tiny_rec, tmp_path):
    path = tmp_path / "rec.pt"
    save_recognizer(tiny_rec, path)
    again = load_recognizer(path).eval()
    x = torch.randn(1, 40, 80)
    with torch.no_grad():
        a, _ = tiny_rec.model.transcribe(x, torch.tensor([36]))
        b, _ = again.model.transcribe(x, torch.tensor([36]))
    torch.testing.assert_close(a, b)
    assert again.tokenizer.model_proto == tiny_rec.tokenizer.model_proto
    torch.testing.assert_close(again.features.mean, tiny_rec.features.mean)


def test_truncated_or_foreign_checkpoint_gives_clear_error(tiny_rec, tmp_path):
    path = tmp_path / "rec.pt"
    save_recognizer(tiny_rec, path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="cut.pt: cannot read checkpoint"):
        load_recognizer(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(UserError, match="not an emformer-variants checkpoint"):
        load_recognizer(other)


def test_arch_must_fit_streaming_features():
    with pytest.raises(UserError, match="segment_length"):
        Recognizer(tiny_arch(), FeatureConfig(segment_length=12), train_tokenizer(TEXTS))


# ------------------------------------------------ emformer_base via torchaudio's cache layout

@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    """torchaudio's bundle files, random contents, in $TORCH_HOME/hub/torchaudio/..."""
    import random
    import string

    home = tmp_path_factory.mktemp("torch_home")
    hub = home / "hub" / "torchaudio"
    (hub / "models").mkdir(parents=True)
    (hub / "pipeline-assets").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(emformer_rnnt_base(num_symbols=4097).state_dict(),
               hub / "models" / "emformer_rnnt_base_librispeech.pt")
    stats = {"mean": torch.randn(80).tolist(), "invstddev": (torch.rand(80) + 0.5).tolist()}
    (hub / "pipeline-assets" / "global_stats_rnnt_librispeech.json").write_text(json.dumps(stats))
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(6000)]
    lines = [" ".join(rng.choices(words, k=12)) for _ in range(3000)]
    tok = train_tokenizer(lines, model_type="bpe", vocab_size=4096)
    assert tok.vocab_size == 4096
    (hub / "pipeline-assets" / "spm_bpe_4096_librispeech.model").write_bytes(tok.model_proto)
    return home


@pytest.fixture()
def torch_home(fake_bundle, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(fake_bundle))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(fake_bundle / "hub"))
    return fake_bundle


def test_emformer_base_loads_from_bundle_cache_and_matches_torchaudio_features(torch_home):
    from torchaudio.pipelines import EMFORMER_RNNT_BASE_LIBRISPEECH as bundle

    from emformer_variants.models.emformer_base import load_emformer_base

    rec = load_emformer_base()
    assert sum(p.numel() for p in rec.model.parameters()) == 76_738_049
    assert rec.tokenizer.num_symbols == 4097
    ref = bundle.get_decoder().model.state_dict()
    for k, v in rec.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    torch.manual_seed(1)
    wave = torch.randn(16000) * 0.1
    full_ref, _ = bundle.get_feature_extractor()(wave)
    torch.testing.assert_close(rec.features.full(wave), full_ref)
    window = wave[: rec.features.cfg.window_samples]
    stream_ref, _ = bundle.get_streaming_feature_extractor()(window)
    torch.testing.assert_close(rec.features.streaming(window), stream_ref)
    # Same token processing as the bundle.
    ids = [4096, 5, 17, 300]
    assert rec.tokenizer.decode(ids[1:]) == bundle.get_token_processor()(ids)


def test_emformer_base_missing_files_names_them(tmp_path, monkeypatch):
    from emformer_variants.models.emformer_base import load_emformer_base

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="emformer_rnnt_base_librispeech.pt"):
        load_emformer_base()


def test_evaluate_resolves_raw_torchaudio_state_dict(torch_home, tmp_path):
    """evaluate.py model=emformer_base ckpt=<raw state dict> uses the bundle's tokenizer/stats."""
    from hydra import compose, initialize_config_dir

    from emformer_variants.models.build import resolve_checkpoint
    from emformer_variants.utils.paths import PROJECT_ROOT

    raw = tmp_path / "my_finetuned_state_dict.pt"
    sd = emformer_rnnt_base(num_symbols=4097).state_dict()
    torch.save(sd, raw)
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=["model=emformer_base", f"ckpt={raw}"])
    rec = resolve_checkpoint(cfg.ckpt, cfg.model)
    key = "transcriber.output_linear.weight"
    assert torch.equal(rec.model.state_dict()[key], sd[key])
