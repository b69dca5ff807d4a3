"""The papermill chain on the smoke profile: outputs, summary, skip, --force, failures."""
from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest

from sidlib import config, paths, runner, stages, summary


def test_notebooks_are_clean_and_parameterised():
    for stage in runner.available_stages():
        nb = nbformat.read(stage.notebook, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{stage.notebook.name}: needs exactly one parameters cell"
        assert "profile" in tagged[0].source and "overrides" in tagged[0].source
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{stage.notebook.name} has outputs"


def test_stage_selection():
    names = [s.name for s in runner.select("01-02")]
    assert names == ["01-prep", "02-clean"]
    assert [s.name for s in runner.select("02")] == ["02-clean"]
    assert [s.name for s in runner.select("prep,clean")] == ["01-prep", "02-clean"]
    with pytest.raises(SystemExit, match="no stage"):
        runner.select("nonsense")


def test_smoke_chain_runs_skips_and_forces(tmp_roots, capfd):
    lines: list[str] = []
    assert runner.run("smoke", "01-02", echo=lines.append) == 0
    # a quiet run: the kernels' TCP warning and tqdm's IProgress note are not printed (#17)
    err = capfd.readouterr().err
    assert "Kernel is running over TCP" not in err and "IProgress" not in err, err[-500:]
    data = summary.load("smoke")
    assert data["profile"] == "smoke"
    prep, clean = data["stages"]["prep"], data["stages"]["clean"]
    assert prep["status"] == "ok" and prep["seconds"] > 0
    assert set(prep["metrics"]) >= {"users", "items", "interactions", "mean_seq_len", "test_users"}
    assert 0 < prep["metrics"]["users"] <= 300
    assert clean["status"] == "ok" and {"items_cleaned", "items_dropped"} <= set(clean["metrics"])
    out = paths.stage_dir("smoke", "01-prep", create=False)
    for f in ["items.parquet", "sequences.parquet", "split.parquet", "pairs.parquet", "distributions.png"]:
        assert (out / f).exists(), f
    report = (paths.profile_dir("smoke") / "report.md").read_text()
    assert "## prep" in report and "distributions.png" in report
    executed = list((tmp_roots / "runs" / "smoke").glob("*/01-prep.ipynb"))
    assert len(executed) == 1

    # unchanged inputs and parameters: both stages are skipped
    lines.clear()
    assert runner.run("smoke", "01-02", echo=lines.append) == 0
    assert sum("skipped" in line for line in lines) == 2

    # a clean-only change reruns clean, not prep
    lines.clear()
    assert runner.run("smoke", "01-02", {"clean.max_title_chars": 40}, echo=lines.append) == 0
    assert any("[01-prep] skipped" in line for line in lines)
    assert any("[02-clean] ok" in line for line in lines)

    # --force reruns everything
    lines.clear()
    assert runner.run("smoke", "01-02", force=True, echo=lines.append) == 0
    assert not any("skipped" in line for line in lines)


def test_failing_notebook_names_notebook_cell_and_copy(tmp_roots):
    # a k-core nobody survives: prep raises, the runner reports where and exits non-zero
    proc = subprocess.run(
        [sys.executable, "-m", "sidlib", "run", "--profile", "smoke", "--stages", "01", "--set", "data.kcore=100000"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "01-prep.ipynb failed in cell" in proc.stdout
    assert "k-core" in proc.stdout
    copy = proc.stdout.split("executed copy: ")[1].split()[0]
    assert json.loads(open(copy).read())["cells"], "executed copy is a notebook"
    assert summary.load("smoke")["stages"]["prep"]["status"] == "failed"


def test_a_profile_file_runs_the_chain_and_claims_its_folder(tmp_roots, tmp_path):
    """The notebooks get the file (not its stem, which no packaged profile has), and another file
    of the same name cannot write into the same artifacts folder."""
    f = tmp_path / "a" / "myshop.toml"
    f.parent.mkdir()
    f.write_text('base = "smoke"\n[data]\nkcore = 6\n[rqvae]\nepochs = 10\ncompare = false\n')  # 04 in seconds
    lines: list[str] = []
    assert runner.run(str(f), "01-05", echo=lines.append) == 0, "\n".join(lines)
    for s in stages.ALL[:5]:
        assert s.missing("myshop") == [], s.name
    data = summary.load("myshop")
    assert data["profile_file"] == str(f.resolve()) and data["stages"]["prep"]["status"] == "ok"
    executed = next((tmp_roots / "runs" / "myshop").glob("*/01-prep.ipynb")).read_text()
    assert str(f.resolve()) in executed  # the notebooks loaded the file itself
    assert config.load(str(f)).data.kcore == 6
    twin = tmp_path / "b" / "myshop.toml"
    twin.parent.mkdir()
    twin.write_text('base = "smoke"\n')
    with pytest.raises(config.ConfigError, match="holds the runs of the profile file"):
        runner.run(str(twin), "01", echo=lines.append)
    assert runner.run("smoke", "01", echo=lines.append) == 0  # the packaged smoke has its own folder


def test_an_edited_table_outside_data_path_reruns_prep(tmp_path):
    """The tables' files are inputs of 01 wherever they are: inside data.path (relative) or beside
    it (absolute); editing either changes 01's fingerprint."""
    inside, outside = tmp_path / "data", tmp_path / "exports"
    inside.mkdir(), outside.mkdir()
    (inside / "items.csv").write_text("item_id,title\nA,Pen\n")
    (outside / "events.csv").write_text("user_id,item_id,timestamp\nu,A,1\n")
    f = tmp_path / "shop.toml"
    f.write_text(f'base = "smoke"\n[data]\nsource = "tables"\npath = "data"\nitems_file = "items.csv"\n'
                 f'interactions_file = "{outside / "events.csv"}"\n')
    cfg = config.load(str(f))
    before = runner.fingerprint(stages.PREP, cfg)["inputs"]
    assert set(before) == {"data.path", "data.items_file", "data.interactions_file"}
    (outside / "events.csv").write_text("user_id,item_id,timestamp\nu,A,1\nu,A,2\n")
    after = runner.fingerprint(stages.PREP, cfg)["inputs"]
    assert after["data.interactions_file"] != before["data.interactions_file"]
    assert after["data.items_file"] == before["data.items_file"] and after["data.path"] == before["data.path"]
    (inside / "items.csv").write_text("item_id,title\nA,Red pen\n")
    again = runner.fingerprint(stages.PREP, cfg)["inputs"]
    assert again["data.items_file"] != after["data.items_file"] and again["data.path"] != after["data.path"]
