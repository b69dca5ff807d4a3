"""The chain: execute the numbered notebooks in order with papermill.

Each stage is a notebook that reads earlier stages' artifacts and writes its own folder.
A stage is skipped when its manifest says nothing it depends on changed: the notebook file,
its config sections, and the outputs of the stages it reads. `--force` reruns anyway.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from . import config as config_mod
from . import paths, summary
from . import stages as stages_mod

log = logging.getLogger("sidlib.runner")
MANIFEST = "_manifest.json"


# The stage contract lives in sidlib.stages; these names stay for callers of the runner.
Stage = stages_mod.Stage
STAGES: list[Stage] = list(stages_mod.ALL)


class StageFailed(RuntimeError):
    pass


def available_stages() -> list[Stage]:
    return [s for s in STAGES if s.notebook.exists()]


def select(spec: str | None) -> list[Stage]:
    """"01-02" (a range), "03,05" (a list) or names; None = every available stage."""
    stages = available_stages()
    if not spec:
        return stages
    wanted: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if "-" in part and all(p.strip().isdigit() for p in part.split("-", 1)):
            lo, hi = (int(p) for p in part.split("-", 1))
            wanted.update(range(lo, hi + 1))
        elif part.isdigit():
            wanted.add(int(part))
        else:
            match = [s.number for s in stages if part in (s.name, s.key)]
            if not match:
                raise SystemExit(f"--stages: no stage {part!r}; available: {', '.join(s.name for s in stages)}")
            wanted.update(match)
    chosen = [s for s in stages if s.number in wanted]
    if not chosen:
        raise SystemExit(f"--stages {spec!r} selects nothing; available: {', '.join(s.name for s in stages)}")
    return chosen


def _hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def outputs_hash(folder: Path) -> str:
    """Cheap fingerprint of a stage folder (or one file): names, sizes and mtimes (weights can be GBs)."""
    h = hashlib.sha256()
    if folder.is_file():
        st = folder.stat()
        h.update(f"{folder.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    elif folder.exists():
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                st = p.stat()
                h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _read_manifest(profile: str, stage: str) -> dict[str, Any] | None:
    p = paths.stage_dir(profile, stage, create=False) / MANIFEST
    return json.loads(p.read_text()) if p.exists() else None


def fingerprint(stage: Stage, cfg: config_mod.Config) -> dict[str, Any]:
    """What the stage's outputs depend on, as recorded in its manifest."""
    inputs = {}
    for up in stage.reads:
        m = _read_manifest(cfg.profile, up)
        inputs[up] = m["outputs"] if m else None
    for key in stage.external:  # an edited input file outside artifacts/ must rerun the stage
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            inputs[key] = outputs_hash(_external_path(cfg, key, value))
    return {
        "notebook": _hash_file(stage.notebook),
        "params": cfg.section_hash(*stage.sections),
        "inputs": inputs,
    }


def _external_path(cfg: config_mod.Config, key: str, value: str) -> Path:
    """Where an external input lives: the tables' files are relative to data.path (or absolute)."""
    if key in ("data.items_file", "data.interactions_file") and not Path(value).expanduser().is_absolute() \
            and cfg.data.path:
        return paths.resolve_data_path(cfg.data.path) / value
    return paths.resolve_data_path(value)


def is_fresh(stage: Stage, cfg: config_mod.Config) -> bool:
    m = _read_manifest(cfg.profile, stage.name)
    if not m or m.get("status") != "ok":
        return False
    now = fingerprint(stage, cfg)
    if any(v is None for v in now["inputs"].values()):
        return False
    same = all(m.get(k) == now[k] for k in ("notebook", "params", "inputs"))
    return same and m.get("outputs") == outputs_hash(stage.dir(cfg.profile))


def _write_manifest(stage: Stage, cfg: config_mod.Config, fp: dict[str, Any], seconds: float) -> None:
    folder = stage.dir(cfg.profile, create=True)
    m = dict(fp, status="ok", seconds=round(seconds, 2), outputs=outputs_hash(folder),
             finished=datetime.now().isoformat(timespec="seconds"))
    (folder / MANIFEST).write_text(json.dumps(m, indent=2))


# A quiet kernel: its own log stays at errors (a headless kernel on localhost warns on every start
# that TCP is unencrypted), and tqdm.auto's "IProgress not found" (no ipywidgets: the bars are
# text in the executed notebook, which is what a headless run wants) is not printed in every stage.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR",
               "--IPKernelApp.exec_lines=['import warnings', "
               "'warnings.filterwarnings(\"ignore\", message=\"IProgress not found\")']"]


def execute(stage: Stage, profile: str, overrides: dict[str, Any], out_dir: Path) -> Path:
    """Run one notebook with papermill; the executed copy lands in out_dir."""
    import papermill as pm  # imported here: `python -m sidlib --help` should not pay for it

    out = out_dir / stage.notebook.name
    try:
        pm.execute_notebook(
            str(stage.notebook),
            str(out),
            parameters={"profile": profile, "overrides": overrides},
            kernel_name="python3",  # jupyter_client maps it to this interpreter (the venv)
            cwd=str(stage.notebook.parent),
            progress_bar=False,
            request_save_on_cell_execute=True,
            extra_arguments=KERNEL_ARGS,
        )
    except pm.PapermillExecutionError as e:
        last = (e.evalue or "").strip().splitlines()
        raise StageFailed(
            f"{stage.notebook.relative_to(paths.REPO)} failed in cell {e.cell_index} "
            f"(In [{e.exec_count}]): {e.ename}: {last[-1] if last else ''}\n"
            f"  executed copy: {out}"
        ) from None
    return out


def run(
    profile: str = config_mod.DEFAULT_PROFILE,
    stages: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    echo=print,
) -> int:
    """Run the chain; returns a process exit code (0 ok, 1 a stage failed)."""
    overrides = overrides or {}
    cfg = config_mod.load(profile, overrides)  # fails fast on a bad profile or override
    chosen = select(stages)
    summary.claim(cfg.profile, cfg.profile_file)  # two profile files of one name never share a folder
    # the notebooks run in notebooks/: a profile file goes to them as its absolute path
    profile = cfg.profile_file or profile
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = paths.runs_root() / cfg.profile / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    echo(f"sidlib: profile {cfg.profile}, {len(chosen)} stage(s) → {paths.profile_dir(cfg.profile)}")
    t_all = time.time()
    # Papermill's kernels inherit the environment: make sure they see the same artifact roots.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    for stage in chosen:
        if not force and is_fresh(stage, cfg):
            echo(f"[{stage.name}] skipped: up to date (use --force to rerun)")
            summary.set_status(cfg.profile, stage.key, "skipped (up to date)")
            continue
        fp = fingerprint(stage, cfg)
        echo(f"[{stage.name}] running ...")
        t0 = time.time()
        try:
            execute(stage, profile, overrides, out_dir)
        except StageFailed as e:
            seconds = time.time() - t0
            summary.set_status(cfg.profile, stage.key, "failed", seconds)
            summary.write_report(cfg.profile)
            echo(f"[{stage.name}] FAILED after {seconds:.1f}s: {e}")
            return 1
        seconds = time.time() - t0
        missing = stage.missing(cfg.profile)
        if missing:  # the notebook ran but broke the stage contract (sidlib.stages): later stages would fail obscurely
            summary.set_status(cfg.profile, stage.key, "failed", seconds)
            summary.write_report(cfg.profile)
            echo(f"[{stage.name}] FAILED after {seconds:.1f}s: it did not write {', '.join(missing)} "
                 f"into {stage.dir(cfg.profile)} (its outputs in sidlib/stages.py)")
            return 1
        _write_manifest(stage, cfg, fp, seconds)
        summary.set_status(cfg.profile, stage.key, "ok", seconds)
        echo(f"[{stage.name}] ok in {seconds:.1f}s")
    report = summary.write_report(cfg.profile)
    echo(f"sidlib: done in {time.time() - t_all:.1f}s; summary {summary.summary_path(cfg.profile)}; report {report}")
    return 0
