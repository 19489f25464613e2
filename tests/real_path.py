"""Stand-ins for what a researcher downloads: torchaudio's LibriSpeech Emformer RNN-T bundle
files in torchaudio's hub cache (random weights) and a tiny folder in LibriSpeech's layout.

Each file has the shape and format of the real one, so the package reads them through the
same code as the real files (used by tests/test_rehearsal.py, usable from a shell too:
``python -m tests.real_path DIR`` writes both under DIR and prints the commands to try).
"""

from __future__ import annotations

import io
import json
import random
import string
from pathlib import Path

import torch

# torchaudio.pipelines.EMFORMER_RNNT_BASE_LIBRISPEECH's files, relative to $TORCH_HOME/hub.
BUNDLE_CKPT = "torchaudio/models/emformer_rnnt_base_librispeech.pt"
BUNDLE_STATS = "torchaudio/pipeline-assets/global_stats_rnnt_librispeech.json"
BUNDLE_SPM = "torchaudio/pipeline-assets/spm_bpe_4096_librispeech.model"

# LibriSpeech's own layout: <part>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac and one
# <speaker>-<chapter>.trans.txt per chapter (upper-case transcripts, as in the corpus).
# Real speaker/chapter ids of each part; the sentences are the test suite's own.
LIBRISPEECH_LAYOUT = {
    "train-clean-100": [
        ("103", "1240", ["IT IS A TRUTH UNIVERSALLY ACKNOWLEDGED",
                         "SHE WAS THE YOUNGEST OF THE TWO DAUGHTERS",
                         "EMMA WOODHOUSE HANDSOME CLEVER AND RICH"]),
        ("1034", "121119", ["THE FAMILY OF DASHWOOD HAD LONG BEEN SETTLED IN SUSSEX",
                            "HE HAD NOT BEEN AT HOME LONG",
                            "THEY WALKED TOWARDS THE HOUSE TOGETHER"]),
    ],
    "dev-clean": [("84", "121123", ["NOTHING COULD BE MORE PLEASANT THAN THE EVENING"])],
    "test-clean": [("1089", "134686", ["MY DEAR MISTER BENNET SAID HIS LADY TO HIM ONE DAY",
                                       "SHE DIDN'T KNOW WHAT TO SAY"])],
    "test-other": [("1688", "142285", ["HE HAD NOT BEEN AT HOME LONG",
                                       "THEY WALKED TOWARDS THE HOUSE TOGETHER"])],
}


def write_librispeech(root: Path, layout: dict = LIBRISPEECH_LAYOUT) -> Path:
    """``root/LibriSpeech/<part>/...`` with espeak-ng speech (16 kHz, 16-bit FLAC, as the
    corpus); returns ``root``."""
    import soundfile as sf
    import torchaudio.functional as AF

    from emformer_variants.data.tts import default_voices, synthesize

    voices = [v for v in default_voices() if v.engine == "espeak"]
    n = 0
    for part, chapters in layout.items():
        for speaker, chapter, texts in chapters:
            folder = root / "LibriSpeech" / part / speaker / chapter
            folder.mkdir(parents=True)
            lines = []
            for i, text in enumerate(texts):
                utt_id = f"{speaker}-{chapter}-{i:04d}"
                wave, sr = synthesize(voices[n % len(voices)], text.lower())
                n += 1
                wave = AF.resample(torch.from_numpy(wave), sr, 16000).clamp(-1, 1).numpy()
                sf.write(folder / f"{utt_id}.flac", wave, 16000, subtype="PCM_16")
                lines.append(f"{utt_id} {text}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def train_bundle_spm(texts: list[str], vocab_size: int = 4096, seed: int = 0) -> bytes:
    """A BPE SentencePiece model made the way torchaudio's recipe made the bundle's
    (examples/asr/emformer_rnnt/librispeech/train_spm.py: lower-cased transcripts, bpe,
    character_coverage 1.0, bos/pad/eos/unk = 0/1/2/3), on ``texts`` plus generated words:
    a few sentences cannot supply 4,096 pieces, 3,000 lines of 6,000 random words can
    (~0.2 s). Ids 0-3 are the special pieces, like the real model's."""
    import sentencepiece as spm

    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(6000)]
    lines = [t.lower() for t in texts] + [" ".join(rng.choices(words, k=12)) for _ in range(3000)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2, unk_id=3, num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def write_bundle_cache(torch_home: Path, texts: list[str], waves: list[torch.Tensor],
                       seed: int = 0) -> dict[str, Path]:
    """The three bundle files under ``torch_home/hub`` (set ``TORCH_HOME=torch_home``):
    a random-weight ``emformer_rnnt_base(num_symbols=4097)`` state dict, global stats
    computed from ``waves`` as torchaudio's recipe does (mean and 1/stddev of the log-mel
    frames), and a 4,096-piece SentencePiece model (see ``train_bundle_spm``)."""
    from torchaudio.models import emformer_rnnt_base

    from emformer_variants.models.features import FeatureConfig, FeatureExtractor, compute_global_stats

    hub = torch_home / "hub"
    paths = {"ckpt": hub / BUNDLE_CKPT, "global_stats": hub / BUNDLE_STATS, "sp_model": hub / BUNDLE_SPM}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(emformer_rnnt_base(num_symbols=4097).state_dict(), paths["ckpt"])
    mean, invstd = compute_global_stats(FeatureExtractor(FeatureConfig()), waves)
    paths["global_stats"].write_text(json.dumps({"mean": mean.tolist(), "invstddev": invstd.tolist()}))
    paths["sp_model"].write_bytes(train_bundle_spm(texts, seed=seed))
    return paths


def write_real_path(root: Path) -> tuple[Path, Path]:
    """Both stand-ins under ``root``: (TORCH_HOME, LibriSpeech data.root)."""
    from emformer_variants.data.audio import load_audio

    data = write_librispeech(root / "librispeech")
    train = sorted((data / "LibriSpeech" / "train-clean-100").rglob("*.flac"))
    texts = [t for part in LIBRISPEECH_LAYOUT.values() for _, _, ts in part for t in ts]
    torch_home = root / "torch_home"
    write_bundle_cache(torch_home, texts, [load_audio(p) for p in train])
    return torch_home, data


if __name__ == "__main__":
    import sys

    home, data = write_real_path(Path(sys.argv[1]).resolve())
    print(f"export TORCH_HOME={home}\n"
          f"python train.py model=emformer_base data=librispeech data.root={data} variant=moe "
          "trainer.max_steps=2 data.batch_seconds=8")
