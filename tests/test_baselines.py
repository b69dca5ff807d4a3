import json

from sidlib import baselines, summary
from sidlib.baselines import _fresh_checkpoints


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path):
    folder = tmp_path / "ckpt_sasrec"
    _fresh_checkpoints(folder, {"cfg": {"hidden": 64}, "data": "a"})
    (folder / "last.pt").write_bytes(b"x")
    _fresh_checkpoints(folder, {"cfg": {"hidden": 64}, "data": "a"})  # same run: kept for resume
    assert (folder / "last.pt").exists()
    _fresh_checkpoints(folder, {"cfg": {"hidden": 32}, "data": "a"})  # other settings: cleared
    assert not (folder / "last.pt").exists()
    (folder / "last.pt").write_bytes(b"x")
    _fresh_checkpoints(folder, {"cfg": {"hidden": 32}, "data": "b"})  # other data: cleared
    assert not (folder / "last.pt").exists()


def test_cli_runs_the_stage_in_one_process(smoke_stages, capsys):
    """`python -m sidlib.baselines` writes what notebook 07 writes (both call run_stage)."""
    argv = ["--profile", "smoke", "--models", "popularity,sasrec", "--set", "baselines.epochs=2"]
    assert baselines.main(argv) == 0
    out = smoke_stages / "07-baselines"
    reports = json.loads((out / "reports.json").read_text())
    assert set(reports) == {"popularity", "sasrec"}
    assert reports["sasrec"]["fit"]["processes"] == 1 and reports["sasrec"]["fit"]["epochs_run"] == 2
    assert (out / "baselines.png").stat().st_size > 0 and (out / "valid_curves.png").stat().st_size > 0
    entry = summary.load("smoke")["stages"]["baselines"]
    assert entry["status"] == "ok" and set(entry["metrics"]) == {"popularity", "sasrec"}
    assert entry["metrics"]["sasrec"]["n_users"] == entry["metrics"]["popularity"]["n_users"] == 300
    assert (smoke_stages / "report.md").exists()
    assert "sasrec" in capsys.readouterr().out  # the results table

    # a second run resumes the finished checkpoint instead of training again
    assert baselines.main(argv) == 0
    again = json.loads((out / "reports.json").read_text())
    assert again["sasrec"]["fit"]["resumed_from"] == 2
    assert again["sasrec"]["test"]["all"] == reports["sasrec"]["test"]["all"]

    assert baselines.main(["--profile", "smoke", "--models", "sasrec,nope"]) == 2
    assert "choose among" in capsys.readouterr().err
