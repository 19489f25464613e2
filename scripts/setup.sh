#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine (Python 3.11, root): apt packages + .venv.
# Idempotent: re-running only installs what is missing.
#   --nonfree-voices  also the held-out voices of data=voices_nonfree (SVOX Pico, RHVoice,
#                     MBROLA) and the accented training voices (engine_weights `accents`: 10
#                     more MBROLA diphone sets, festival's rab), which live in Debian's
#                     contrib/non-free sections: adds those sections to apt
#                     (/etc/apt/sources.list.d/emformer-variants-nonfree.sources).
set -euo pipefail
cd "$(dirname "$0")/.."
nonfree=0
for arg in "$@"; do
  case "$arg" in
    --nonfree-voices) nonfree=1 ;;
    *) echo "error: unknown option $arg (use --nonfree-voices or nothing)"; exit 2 ;;
  esac
done

need_apt=()
command -v flite >/dev/null || need_apt+=(flite)          # TTS engines of the synthetic corpus
command -v festival >/dev/null || need_apt+=(festival)
[ -d /usr/share/festival/voices/english/kal_diphone ] || need_apt+=(festvox-kallpc16k)
[ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || need_apt+=(festvox-us-slt-hts)
command -v g++ >/dev/null || need_apt+=(g++)              # builds the engine's packed linear kernel
command -v apt-get >/dev/null || { echo "error: apt-get not found (Debian needed for corpus text/voices)"; exit 2; }
if [ ${#need_apt[@]} -gt 0 ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
  # apt lists are also needed by `apt-get download` (corpus text, Asterisk prompts).
  apt-get update -qq
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ "$nonfree" = 1 ]; then
  nonfree_apt=()
  command -v pico2wave >/dev/null || nonfree_apt+=(libttspico-utils)
  command -v RHVoice-test >/dev/null || nonfree_apt+=(rhvoice rhvoice-english)
  command -v espeak-ng >/dev/null || nonfree_apt+=(espeak-ng)
  for v in us1 us2 us3 en1 de1 de2 de4 de6 fr1 gr2 hu1 ro1 sw1 sw2; do
    [ -e "/usr/share/mbrola/$v" ] || nonfree_apt+=("mbrola-$v")
  done
  [ -d /usr/share/festival/voices/english/rab_diphone ] || nonfree_apt+=(festvox-rablpc16k)
  if [ ${#nonfree_apt[@]} -gt 0 ]; then
    if ! apt-cache policy libttspico-utils 2>/dev/null | grep -q "Candidate: [0-9]"; then
      . /etc/os-release
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$VERSION_CODENAME" "$VERSION_CODENAME" > /etc/apt/sources.list.d/emformer-variants-nonfree.sources
      apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${nonfree_apt[@]}" >/dev/null
  fi
  echo "held-out non-free voices: ready (python evaluate.py ckpt=base data=voices_nonfree)"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch==2.14.1 is pinned in pyproject.toml (its wheel lies on local disk here).
if ! .venv/bin/python -c "import emformer_variants, torch, torchaudio, lightning, kokoro_onnx" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q -e '.[dev,voices]'
  touch .venv/.installed
fi
# Build the engine's packed linear kernel now (about a minute, once per checkout and venv;
# cached under ~/.cache/torch_extensions) rather than inside the first timed run.
.venv/bin/python -c "from emformer_variants.engine.packed import kernel; import sys; sys.exit(kernel() is None)" \
  2>/dev/null && echo "packed linear kernel: ready" || echo "packed linear kernel: not available (engine uses F.linear)"
echo "setup done: $(.venv/bin/python -c 'import torch, torchaudio; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)')"
