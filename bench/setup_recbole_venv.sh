#!/usr/bin/env bash
# The separate venv for bench/recbole_sasrec.py only: RecBole 1.2.1 with its dependencies.
#
#   bash bench/setup_recbole_venv.sh        # creates .venv-recbole/ (git-ignored) at the repo root
#
# Why the pins:
# * torch first and pinned: the CPU wheel the main venv uses (a plain `torch` could pull the CUDA build).
# * numpy<1.24: RecBole 1.2.1 still uses np.float / np.long (removed in numpy 1.24) in code
#   paths such as the MRR metric and the feature-embedding layers.
# * pandas / scipy / scikit-learn: the last releases that accept numpy 1.23 on Python 3.11.
# * setuptools<81: ray 2.6.3 (a RecBole requirement, imported by recbole.quick_start) imports
#   pkg_resources, which setuptools 81 removed; torch 2.13 wants >= 77.0.3.
# * pyarrow<18: newer pyarrow needs numpy 2 (only used to read sidlib's parquet files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-recbole/bin/python ] || "$PY" -m venv .venv-recbole --prompt recbole
.venv-recbole/bin/pip install -q torch==2.13.0
.venv-recbole/bin/pip install -q recbole==1.2.1 "numpy==1.23.5" "pandas==2.0.3" "scipy==1.11.4" \
    "scikit-learn==1.3.2" "setuptools>=77.0.3,<81" "pyarrow<18"
.venv-recbole/bin/python -W ignore -c "import recbole, numpy, torch; print('recbole', recbole.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
