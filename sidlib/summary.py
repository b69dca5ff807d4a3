"""summary.json and report.md: the machine- and human-readable record of a profile's run.

Notebooks call `record(cfg, "prep", metrics)`; the runner adds status and wall time.
Layout: {"profile": ..., "stages": {"prep": {"status", "seconds", "metrics", "plots"}, ...}}.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import config as config_mod
from . import paths, stages

# The stage keys, in chain order (sidlib.stages owns them).
STAGE_KEYS = list(stages.KEYS)


def summary_path(profile: str) -> Path:
    return paths.profile_dir(profile) / "summary.json"


def jsonable(x: Any) -> Any:
    """numpy/torch scalars and arrays, tuples, Paths, NaN → plain JSON values."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return jsonable(x.item())  # 0-d torch tensor
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def load(profile: str) -> dict[str, Any]:
    p = summary_path(profile)
    if p.exists():
        return json.loads(p.read_text())
    return {"profile": profile, "stages": {}}


def _write(profile: str, data: dict[str, Any]) -> None:
    p = summary_path(profile)
    p.parent.mkdir(parents=True, exist_ok=True)
    # atomic replace: an interrupted write never leaves half a summary
    fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(jsonable(data), f, indent=2)
    os.replace(tmp, p)


def record(cfg_or_profile: Any, stage: str, metrics: dict[str, Any], plots: list[str | Path] | None = None) -> dict:
    """A stage's metrics (and plot paths) into summary.json; replaces that stage's earlier metrics."""
    if stage not in STAGE_KEYS:
        raise ValueError(f"unknown stage key {stage!r}; expected one of {STAGE_KEYS}")
    profile = getattr(cfg_or_profile, "profile", cfg_or_profile)
    data = load(profile)
    entry = data["stages"].setdefault(stage, {})
    entry["metrics"] = jsonable(metrics)
    entry.setdefault("status", "ok")
    if plots is not None:
        root = paths.profile_dir(profile)
        entry["plots"] = [os.path.relpath(Path(p).resolve(), root.resolve()) for p in plots]
    _write(profile, data)
    return entry


class ProfileClash(config_mod.ConfigError):
    """artifacts/<name>/ belongs to another profile file of the same name."""


def claim(profile: str, profile_file: str) -> None:
    """Record which profile writes artifacts/<profile>/ (a file's path, or "" for the packaged
    profile of that name); a different one of the same name is an error, never a silent mix."""
    data = load(profile)
    owner = data.get("profile_file")
    if owner is None:  # a folder from before this record, or a new one
        data["profile_file"] = profile_file
        _write(profile, data)
        return
    if owner != profile_file:
        def what(f: str) -> str:
            return f"the profile file {f}" if f else f"the packaged profile {profile!r}"
        raise ProfileClash(f"{paths.profile_dir(profile)} holds the runs of {what(owner)}; this run is "
                           f"{what(profile_file)}. Give one of them another name (`name = \"...\"` at the top "
                           "of a profile file) or move that folder away.")


def set_status(profile: str, stage: str, status: str, seconds: float | None = None, **extra: Any) -> None:
    data = load(profile)
    entry = data["stages"].setdefault(stage, {})
    entry["status"] = status
    if seconds is not None:
        entry["seconds"] = round(seconds, 2)
    entry.update(extra)
    # keep stage keys in chain order, however they were added
    data["stages"] = {k: data["stages"][k] for k in sorted(data["stages"], key=_order)}
    _write(profile, data)


def _order(key: str) -> int:
    return STAGE_KEYS.index(key) if key in STAGE_KEYS else len(STAGE_KEYS)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (int, float)) for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, (list, dict)):
        s = json.dumps(v)
        return s if len(s) <= 80 else s[:77] + "..."
    return str(v)


def write_report(profile: str) -> Path:
    """report.md beside summary.json: per stage, status, time, a metrics table and plot links."""
    data = load(profile)
    lines = [f"# sidlib run report — profile `{profile}`", ""]
    total = sum(s.get("seconds", 0) or 0 for s in data["stages"].values())
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    for key, st in data["stages"].items():
        lines.append(f"| {key} | {st.get('status', '?')} | {st.get('seconds', '')} |")
    lines += [f"| **total** | | {total:.1f} |", ""]
    for key, st in data["stages"].items():
        lines += [f"## {key}", ""]
        metrics = st.get("metrics") or {}
        if metrics:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(metrics).items()]
            lines.append("")
        for p in st.get("plots", []):
            lines += [f"![{Path(p).stem}]({p})", ""]
    out = paths.profile_dir(profile) / "report.md"
    out.write_text("\n".join(lines))
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and len(_flatten(v)) <= 40:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
