"""The stage contract (sidlib.stages): one list, used by the runner and summary, kept in the docs,
and honoured by the stages themselves."""
from __future__ import annotations

from sidlib import paths, runner, stages, summary


def test_one_list_in_chain_order():
    assert runner.STAGES == list(stages.ALL)
    assert summary.STAGE_KEYS == [s.key for s in stages.ALL]
    names = [s.name for s in stages.ALL]
    assert len(set(names)) == len(names) and len({s.key for s in stages.ALL}) == len(names)
    for i, s in enumerate(stages.ALL):
        assert set(s.reads) <= set(names[:i]), f"{s.name} reads a later stage"
        assert s.notebook.exists(), s.notebook
        assert s.writes, f"{s.name} declares no outputs"
    assert stages.by_name("sids") is stages.by_name("05-sids") is stages.SIDS


def test_architecture_doc_holds_the_table():
    doc = (paths.REPO / "docs" / "architecture.md").read_text()
    assert stages.table_markdown() in doc, "docs/architecture.md: paste sidlib.stages.table_markdown() again"


def test_stages_01_to_05_write_what_they_declare(smoke_stages):
    for s in stages.ALL[:5]:
        assert s.missing("smoke") == [], s.name


def test_runner_fails_a_stage_that_breaks_its_contract(smoke_stages, monkeypatch):
    lines: list[str] = []
    assert runner.run("smoke", "02", echo=lines.append) == 0
    broken = stages.Stage(**{**stages.CLEAN.__dict__, "writes": ("items.parquet", "never_written.json")})
    monkeypatch.setattr(runner, "STAGES", [stages.PREP, broken, *stages.ALL[2:]])
    lines.clear()
    assert runner.run("smoke", "02", force=True, echo=lines.append) == 1
    assert any("never_written.json" in line and "FAILED" in line for line in lines), lines
    assert summary.load("smoke")["stages"]["clean"]["status"] == "failed"
