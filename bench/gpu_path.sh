#!/usr/bin/env bash
# bench/gpu_path.py on the lent GPU machine (no network): installs the wheels carried in .whl/
# (datasets and its missing deps, bitsandbytes) into /tmp/site, then runs the benchmark; its JSON
# goes to $OUT/gpu_path.json. Arguments pass through, e.g. --seconds-per-variant 15 --only smol.
cd "$(dirname "$0")/.." || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:. || exit 1
# transformers.trainer imports datasets whenever it is installed: one that cannot import (a dep
# missing here) would take the Trainer down with it, so it goes (train_stage takes plain lists too)
python3 -c "import datasets" 2>/dev/null || { echo "datasets does not import here: removed"; rm -rf /tmp/site/datasets /tmp/site/datasets-*; }
python3 -c "import torch, transformers, huggingface_hub as h; print('torch', torch.__version__, 'transformers', transformers.__version__, 'hub', h.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv
PYTHONUNBUFFERED=1 python3 bench/gpu_path.py "$@"
