"""The default profile end to end (slow: 33-60 min on 2 cores by the day's speed; `pytest -m
slow`): the fine-tuned LLM talks, writes SIDs on its own and knows the catalogue — issue #15's
targets 1-3, read from summary.json as a user would."""
from __future__ import annotations

import pytest

from sidlib import runner, summary


@pytest.mark.slow
def test_default_chain_llm_targets():
    lines: list[str] = []
    assert runner.run("ml100k", echo=lines.append) == 0, "\n".join(lines)
    stages = summary.load("ml100k")["stages"]
    demo = stages["demo"]["metrics"]
    assert demo["turns"] >= 8 and demo["empty_replies"] == 0
    assert demo["rec_turns_with_item"] == demo["rec_turns"]
    assert demo["text_turns_in_words"] == demo["text_turns"]
    llm = stages["eval"]["metrics"]["llm"]
    assert llm["wellformed_rate_unconstrained"] >= 0.90
    assert llm["valid_rate_unconstrained"] >= 0.50
    catalog = llm["tasks"]["title_to_sid"]
    assert catalog["n"] >= 100 and catalog["level1"] >= 0.25
