"""06-sft-data on real inputs: the smoke chain's 01-05 outputs (MovieLens) and Amazon 2018
Gift Cards (descriptions, features, also_buy pairs) prepared in-process. Checks every task and
its phrasings, the leakage rules against the split, SIDs that parse and name items, truncation
that keeps whole SIDs, determinism, the files, bad input, and the notebook through the runner."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sidlib import config, paths, runner, summary, text
from sidlib.data import load_raw, prep
from sidlib.data.schema import DataError
from sidlib.llm import base, chat, sft_data, tasks, vocab
from sidlib.sids import TOKEN_RE, SidScheme, SidTable

from conftest import text_codes

GIFT_OVERRIDES = {"data.source": "amazon2018", "data.path": "shared:amazon2018-gift-cards", "data.name": "Gift_Cards"}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer_folder() -> Path:
    """SmolLM2's HF folder in the real artifacts cache (converted once, ~20 s, on a fresh checkout)."""
    return base.smollm2_folder()


def tokenizer(cfg: config.Config, table: SidTable, folder: Path):
    tok = base.load_tokenizer(cfg.llm, source=folder)
    vocab.add_sid_tokens(tok, table.scheme)
    return tok


@pytest.fixture(scope="module")
def smoke(smoke_artifacts, tokenizer_folder):
    """The smoke profile's real 01/02/05 outputs, read with load_inputs, and the tokenizer."""
    cfg = config.load("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDLIB_ARTIFACTS", str(smoke_artifacts))
        inputs = sft_data.load_inputs(cfg)
    return cfg, inputs, tokenizer(cfg, inputs.table, tokenizer_folder)


@pytest.fixture(scope="module")
def smoke_data(smoke):
    cfg, inputs, tok = smoke
    return sft_data.build(inputs, tok, cfg, progress=False)


@pytest.fixture(scope="module")
def gift(shared_data, tokenizer_folder):
    """Amazon 2018 Gift Cards: prep + clean in-process, SIDs from quick codes."""
    cfg = config.load("smoke", GIFT_OVERRIDES)
    prepared = prep.prepare(load_raw(cfg.data), cfg.data, seed=cfg.seed)
    items, _ = text.clean_items(prepared.items, cfg.clean, source=cfg.data.source)
    codes, sizes = text_codes(items["item_context"].tolist(), k=8, dims=16, min_df=1)
    table = SidTable.build(codes, SidScheme(sizes), items["title"].tolist(), items["item_id"].tolist())
    inputs = tasks.Inputs(items, prepared.split, prepared.pairs, table, cfg.data.source)
    return cfg, inputs, tokenizer(cfg, table, tokenizer_folder)


@pytest.fixture(scope="module")
def gift_data(gift):
    cfg, inputs, tok = gift
    return sft_data.build(inputs, tok, cfg, progress=False)


# ----------------------------------------------------------------------------- helpers


def user_parts(split: pd.DataFrame) -> dict[int, tuple[list[int], int, int]]:
    return {int(u): (list(t), int(v), int(te)) for u, t, v, te in
            zip(split["user_id"], split["train"], split["valid"], split["test"])}


def contains_window(seq: list[int], history: list[int], target: int) -> bool:
    """history immediately followed by target, somewhere in seq."""
    n = len(history)
    return any(seq[t] == target and seq[t - n : t] == history for t in range(n, len(seq)))


def sid_blocks(content: str, scheme: SidScheme) -> list[list[int] | None]:
    return [codes for _span, codes in scheme.find_all(content)]


# ----------------------------------------------------------------------------- tasks


def test_every_task_has_samples_and_several_phrasings(smoke_data, gift_data, smoke):
    cfg, inputs, _ = smoke
    for task in tasks.TASKS:
        n = [int((d.train["task"] == task).sum()) for d in (smoke_data, gift_data)]
        assert sum(n) > 0, f"{task}: no samples on smoke or gift cards"
        phrasings = max(d.report["tasks"][task]["phrasings"] for d in (smoke_data, gift_data))
        assert phrasings >= 3, f"{task}: only {phrasings} phrasing(s)"
        assert len(tasks.templates_of(task)) >= 3
    rep = smoke_data.report["tasks"]
    # MovieLens has no descriptions or features: those tasks are skipped, counted, for every item
    for task, reason in [("description_to_sid", "no description"), ("features_to_sid", "no features"),
                         ("sid_to_description", "no description")]:
        assert rep[task]["train"] == 0 and rep[task]["skipped"] == {reason: len(inputs.items)}
    for task in tasks.TASKS:  # the cap, and valid stays small
        assert rep[task]["train"] <= cfg.sft.max_per_task and rep[task]["valid"] <= cfg.sft.valid_per_task
    assert smoke_data.report["tasks"]["seq_last_3"]["train"] == cfg.sft.max_per_task
    # every sample is system / user / assistant with the configured system prompt; a session
    # goes on with user / assistant turns
    for task, msgs in smoke_data.train[["task", "messages"]].head(200).itertuples(index=False):
        roles = [m["role"] for m in msgs]
        turns = (len(roles) - 1) // 2 if task == tasks.SESSION else 1
        assert roles == ["system"] + ["user", "assistant"] * turns, task
        assert msgs[0]["content"] == cfg.sft.system_prompt
    rec = smoke_data.train[smoke_data.train["task"] == "rec_steering"]
    assert rec["messages"].map(lambda m: m[1]["content"].endswith("<|rec|>")).all()
    # the preference sentence names the user's categories (MovieLens genres)
    assert rec["messages"].map(lambda m: " movies" in m[1]["content"]).all()


def test_explain_tasks_answer_in_words(smoke_data, smoke):
    """pair_in_common and bundle_name: answers in words (no SID), from the named items' genres."""
    cfg, inputs, _tok = smoke
    table = inputs.table
    cats = inputs.items.set_index("item_id")["categories"]
    pairs = smoke_data.train[smoke_data.train["task"] == "pair_in_common"]
    assert len(pairs) > 0 and smoke_data.report["tasks"]["pair_in_common"]["phrasings"] == 3
    for r in pairs.head(50).itertuples():
        answer = r.messages[-1]["content"]
        assert "<|sid" not in answer and answer.endswith(".")
        a, b = r.context_items
        shared = [g for g in cats[a] if g in list(cats[b])]
        if shared:
            assert answer.startswith("Both are ") and shared[0] in answer
    bundles = smoke_data.train[smoke_data.train["task"] == "bundle_name"]
    assert len(bundles) > 0
    for r in bundles.head(50).itertuples():
        answer = r.messages[-1]["content"]
        assert "<|sid" not in answer and answer.endswith(' Night"')
        assert len(sid_blocks(r.messages[1]["content"], table.scheme)) == 3  # the three bundled items
        top = answer.strip('"').removesuffix(" Night").split(" & ")[0]
        assert any(top in list(cats[i]) for i in r.context_items)


def test_gift_cards_text_tasks_and_metadata_pairs(gift_data, gift):
    _, inputs, _ = gift
    rep = gift_data.report["tasks"]
    has_desc = int((inputs.items["description"].fillna("").str.len() > 0).sum())
    assert rep["description_to_sid"]["train"] == has_desc
    assert rep["description_to_sid"]["skipped"].get("no description", 0) == len(inputs.items) - has_desc
    row = gift_data.train[gift_data.train["task"] == "features_to_sid"].iloc[0]
    feats = inputs.items.loc[row["target_item"], "features"]
    assert all(f in row["messages"][1]["content"] for f in feats)
    # also_buy pairs feed the forward task (the metadata adds edges the sequences lack)
    edges = tasks.copurchase_edges(inputs)
    assert (edges["kind"] == "also_buy").any()
    fwd = gift_data.train[gift_data.train["task"] == "copurchase_forward"]
    meta = set(zip(*edges[edges["kind"] == "also_buy"][["src", "dst"]].to_numpy().T.tolist()))
    assert any((c[0], t) in meta for c, t in zip(fwd["context_items"], fwd["target_item"]))


# ----------------------------------------------------------------------------- leakage


@pytest.mark.parametrize("which", ["smoke", "gift"])
def test_no_leakage_from_valid_or_test(which, request):
    cfg, inputs, _ = request.getfixturevalue(which)
    data = request.getfixturevalue(f"{which}_data")
    users = user_parts(inputs.split)
    train = data.train
    seq = train[train["task"].str.startswith("seq_last_")]
    rec = train[train["task"] == "rec_steering"]
    assert len(seq) and len(rec)
    for r in train[train["task"] == "seq_session"].itertuples():
        part, valid, test = users[r.user_id]
        assert not {valid, test} & (set(r.context_items) | set(r.answer_items)), r
        assert is_run(part, list(r.context_items) + list(r.answer_items)), r
    for r in pd.concat([seq, rec]).itertuples():
        part, valid, test = users[r.user_id]
        assert r.target_item not in (valid, test), r
        assert not {valid, test} & set(r.context_items), r
        if r.task.startswith("seq_last_"):  # the window really is one of the user's training windows
            assert contains_window(part, list(r.context_items), r.target_item), r
        elif len(r.context_items):  # rec: the shown history ends right before the target
            assert contains_window(part, list(r.context_items), r.target_item), r
        else:
            assert r.target_item in part
    # co-purchase training pairs are edges of the training parts (or the catalog metadata)
    directed = tasks.directed_pairs(inputs.split)
    seq_edges = set(zip(directed["src"].tolist(), directed["dst"].tolist()))
    meta = inputs.pairs[inputs.pairs["kind"] != "sequence"]
    meta_edges = set(zip(meta["src"].tolist(), meta["dst"].tolist()))
    for r in train[train["task"].str.startswith("copurchase_")].itertuples():
        given = r.context_items[0]
        if r.task == "copurchase_forward":
            assert (given, r.target_item) in seq_edges | meta_edges, r
        else:
            assert (r.target_item, given) in seq_edges, r
        assert r.user_id == -1
    # no test item anywhere in the valid split's user samples; their targets are valid items
    valid = data.valid
    for r in valid[valid["task"].map(tasks.is_user_task)].itertuples():
        part, v, t = users[r.user_id]
        assert t not in r.context_items and r.target_item != t, r
        if r.task == "copurchase_backward":
            assert r.context_items == [v] and r.target_item == part[-1]
        else:
            assert r.target_item == v, r
            assert set(r.context_items) <= set(part)


def is_run(seq: list[int], part: list[int]) -> bool:
    """part appears in seq as consecutive items."""
    n = len(part)
    return any(seq[t : t + n] == part for t in range(len(seq) - n + 1))


def test_sessions_cut_each_training_part_into_consecutive_turns(smoke):
    """seq_session: every training transition after the first n items is answered in exactly one
    session (uncapped), the history and answers are consecutive items of the user's training part,
    the conversation alternates follow-up questions and one SID per answer, and every answer is
    labelled when encoded."""
    cfg0, inputs, tok = smoke
    cfg = config.load("smoke", {"sft.max_per_task": 0, "sft.session_turns": 4})
    n, turns = max(cfg.sft.seq_lengths), cfg.sft.session_turns
    ctx = tasks.Context(tasks.make_catalog(inputs), inputs, cfg.sft, tasks.Tally())
    drafts = tasks.session_drafts(ctx, "train", cfg.seed)
    users = user_parts(inputs.split)
    answered: dict[int, list[int]] = {}
    for d in drafts:
        part = users[d.user_id][0]
        assert len(d.history) == n and 1 <= len(d.answer_items) <= turns + 1
        assert is_run(part, d.history + d.answer_items), d
        assert len(d.follow) == len(d.answer_items) - 1
        answered.setdefault(d.user_id, []).extend(d.answer_items)
    for u, (part, _v, _t) in users.items():
        assert sorted(answered.get(u, [])) == sorted(part[n:]), u  # each transition once
    msgs = drafts[0].messages(cfg.sft.system_prompt, ctx.catalog)
    roles = [m["role"] for m in msgs]
    assert roles == ["system"] + ["user", "assistant"] * len(drafts[0].answer_items)
    assert all(m["content"] in tasks.FOLLOW_UPS for m in msgs[3::2])
    trie = inputs.table.trie()
    assert [trie.item_of(sid_blocks(m["content"], inputs.table.scheme)[0]) for m in msgs[2::2]] == drafts[0].answer_items
    enc = chat.encode(tok, msgs, cfg.llm)
    start = tok.convert_tokens_to_ids("<|sid_start|>")
    labelled = [t for t in enc["labels"] if t != chat.IGNORE]
    assert labelled.count(start) == len(drafts[0].answer_items)
    # too long: the last turns go first, the history stays
    short = config.load("smoke", {"sft.tasks": ["seq_session"], "llm.max_length": 160})
    data = sft_data.build(inputs, tok, short, progress=False)
    cut = data.train[data.train["truncated"]]
    assert len(cut) > 0 and data.train["n_tokens"].max() <= 160
    for r in data.train.itertuples():  # the answers listed are the ones the conversation keeps
        assert sum(m["role"] == "assistant" for m in r.messages) == len(r.answer_items)
    for r in cut.itertuples():
        assert len(r.context_items) == n and len(r.answer_items) < short.sft.session_turns + 1


def test_history_lists_label_every_training_transition_once(smoke):
    """seq_history: uncapped, a user's lists are consecutive runs of the training part that
    together hold every item once (a one-item remainder at the start aside), the answer is the
    list's SIDs back to back, each a label; too long for llm.max_length, the oldest items go."""
    cfg0, inputs, tok = smoke
    cfg = config.load("smoke", {"sft.max_per_task": 0, "sft.history_window": 7})
    ctx = tasks.Context(tasks.make_catalog(inputs), inputs, cfg.sft, tasks.Tally())
    drafts = tasks.history_drafts(ctx, "train", cfg.seed)
    assert tasks.history_drafts(ctx, "valid", cfg.seed) == []  # 09 measures it as the recommender
    users = user_parts(inputs.split)
    listed: dict[int, list[int]] = {}
    for d in drafts:
        part = users[d.user_id][0]
        assert 2 <= len(d.history) <= 7 and d.answer_items == d.history and is_run(part, d.history), d
        listed.setdefault(d.user_id, []).extend(d.history)
    for u, (part, _v, _t) in users.items():
        want = part if len(part) % 7 != 1 else part[1:]
        assert sorted(listed.get(u, [])) == sorted(want), u
    # each user's latest list comes before every older one
    first = {}
    for j, d in enumerate(drafts):
        first.setdefault(d.user_id, j)
    n_users = len(first)
    assert sorted(first.values()) == list(range(n_users))
    d = drafts[0]
    msgs = d.messages(cfg.sft.system_prompt, ctx.catalog)
    assert msgs[2]["content"] == "".join(inputs.table.sid_of(i) for i in d.history)
    enc = chat.encode(tok, msgs, cfg.llm)
    start = tok.convert_tokens_to_ids("<|sid_start|>")
    assert [t for t in enc["labels"] if t != chat.IGNORE].count(start) == len(d.history)
    # through build: a list cut to fit keeps its newest items, and answer_items says which
    short = config.load("smoke", {"sft.tasks": ["seq_history"], "sft.history_window": 20, "llm.max_length": 80})
    data = sft_data.build(inputs, tok, short, progress=False)
    assert data.train["n_tokens"].max() <= 80 and data.train["truncated"].any() and len(data.valid) == 0
    for r in data.train.itertuples():
        blocks = sid_blocks(r.messages[2]["content"], inputs.table.scheme)
        assert [inputs.table.trie().item_of(c) for c in blocks] == list(r.answer_items)
        assert list(r.context_items) == [] and is_run(users[r.user_id][0], list(r.answer_items))


# ----------------------------------------------------------------------------- SIDs


@pytest.mark.parametrize("which", ["smoke", "gift"])
def test_every_sid_parses_and_names_an_item(which, request):
    _, inputs, _ = request.getfixturevalue(which)
    data = request.getfixturevalue(f"{which}_data")
    scheme, trie = inputs.table.scheme, inputs.table.trie()
    seen = 0
    for df in (data.train, data.valid):
        for r in df.itertuples():
            for m in r.messages:
                content = m["content"]
                if r.task == "prefix_to_category" and m["role"] == "user":
                    # an open prefix (<|sid_start|> + 1..L-1 codes) that some items share
                    nums = [int(x) for x in TOKEN_RE.findall(content) if x.isdigit()]
                    codes = [scheme.token_to_level_code(n)[1] for n in nums]
                    assert 1 <= len(codes) < scheme.levels and trie.count(codes) >= 2, content
                    continue
                for codes in sid_blocks(content, scheme):
                    assert codes is not None, f"{r.task}: malformed SID in {content!r}"
                    assert trie.item_of(codes) is not None, f"{r.task}: {codes} names no item"
                    seen += 1
            # the answer's SIDs are exactly the answer items, in order (a session's: every
            # assistant turn's)
            replies = [m for m in r.messages if m["role"] == "assistant"] if r.task == tasks.SESSION else r.messages[-1:]
            answer = [trie.item_of(c) for m in replies for c in sid_blocks(m["content"], scheme)]
            assert answer == list(r.answer_items), r
            assert r.target_item == (r.answer_items[0] if len(r.answer_items) == 1 else -1)
    assert seen > 1000


# ----------------------------------------------------------------------------- length


def test_truncation_drops_whole_history_items_and_is_counted(smoke):
    cfg0, inputs, tok = smoke
    full = sft_data.build(inputs, tok, config.load("smoke", {"sft.tasks": ["seq_last_5", "rec_steering"]}),
                          progress=False)
    limit = 75  # seq_last_5 is ~87 tokens with the system prompt, rec with 10 history items ~130
    cfg = config.load("smoke", {"sft.tasks": ["seq_last_5", "rec_steering"], "llm.max_length": limit})
    data = sft_data.build(inputs, tok, cfg, progress=False)
    rep = data.report["tasks"]
    assert rep["seq_last_5"]["truncated"] > 0 and rep["rec_steering"]["truncated"] > 0
    assert data.metrics()["truncated"] == rep["seq_last_5"]["truncated"] + rep["rec_steering"]["truncated"]
    assert data.train["n_tokens"].max() <= limit and data.valid["n_tokens"].max() <= limit
    assert full.train["n_tokens"].max() > limit
    users = user_parts(inputs.split)
    cut = data.train[data.train["truncated"]]
    assert len(cut) == int(data.train["truncated"].sum()) > 0
    scheme, trie = inputs.table.scheme, inputs.table.trie()
    for r in cut.itertuples():
        user = r.messages[1]["content"]
        blocks = sid_blocks(user, scheme)
        assert all(c is not None and trie.item_of(c) is not None for c in blocks), user  # whole SIDs only
        assert [trie.item_of(c) for c in blocks] == list(r.context_items)
        if r.task == "seq_last_5":
            # the most recent items are kept (oldest dropped), the prompt says how many it shows
            assert 1 <= len(r.context_items) < 5
            assert contains_window(users[r.user_id][0], list(r.context_items), r.target_item)
            n = len(r.context_items)
            if "last" in user:
                assert f"last {n} " in user
    # free text is cut on a word boundary when dropping history is not enough; impossible ones are skipped
    tiny = config.load("smoke", {"sft.tasks": ["sid_to_category", "rec_steering"], "llm.max_length": 45})
    small = sft_data.build(inputs, tok, tiny, progress=False)
    assert small.report["tasks"]["rec_steering"]["too_long"] > 0
    reasons = small.report["tasks"]["rec_steering"]["skipped"]
    assert any(r.startswith("longer than llm.max_length=45") for r in reasons)
    assert small.train["n_tokens"].max() <= 45


def test_long_descriptions_are_shortened_not_dropped(gift):
    cfg0, inputs, tok = gift
    cfg = config.load("smoke", {**GIFT_OVERRIDES, "sft.tasks": ["description_to_sid", "sid_to_description"],
                                "llm.max_length": 70})
    data = sft_data.build(inputs, tok, cfg, progress=False)
    rep = data.report["tasks"]
    assert rep["description_to_sid"]["shortened"] > 0 and rep["sid_to_description"]["shortened"] > 0
    assert data.train["n_tokens"].max() <= 70
    rows = data.train[data.train["shortened"] & (data.train["task"] == "description_to_sid")]
    short = rows[rows["template"] < 2].iloc[0]  # templates 0 and 1: a question line, then the text
    desc = inputs.items.loc[short["target_item"], "description"]
    shown = short["messages"][1]["content"].split("\n", 1)[1]
    assert desc.startswith(shown) and len(shown) < len(desc)


# ----------------------------------------------------------------------------- files, determinism, errors


def test_deterministic_and_files_round_trip(smoke, smoke_data, tmp_path):
    cfg, inputs, tok = smoke
    again = sft_data.build(inputs, tok, cfg, progress=False)
    pd.testing.assert_frame_equal(again.train, smoke_data.train)
    other = sft_data.build(inputs, tok, config.load("smoke", {"seed": 7}), progress=False)
    assert not other.train["messages"].head(50).equals(smoke_data.train["messages"].head(50))

    files = smoke_data.save(tmp_path)
    assert all(p.exists() for p in files.values())
    train, valid = sft_data.load(tmp_path)
    assert len(train) == len(smoke_data.train) and len(valid) == len(smoke_data.valid)
    assert train["messages"].tolist() == smoke_data.train["messages"].tolist()
    assert isinstance(train["messages"].iat[0], list) and set(train["messages"].iat[0][0]) == {"role", "content"}
    assert train["answer_items"].tolist() == smoke_data.train["answer_items"].tolist()
    report = json.loads(files["report"].read_text())
    assert report["tasks"]["seq_last_2"]["train"] == smoke_data.report["tasks"]["seq_last_2"]["train"]
    m = smoke_data.metrics()
    assert set(m["samples"]) == set(tasks.TASKS)
    assert m["tokens_p95"] >= m["tokens_mean"] > 0 and m["train"] == sum(m["samples"].values())
    # n_tokens is what the trainer will see: chat.encode of the stored messages
    r = train.iloc[3]
    assert len(chat.encode(tok, r["messages"], cfg.llm)["input_ids"]) == r["n_tokens"]


def test_bad_input_is_named(smoke, tmp_path):
    cfg, inputs, tok = smoke
    with pytest.raises(ValueError, match="unknown task.*'title_to_sku'"):
        sft_data.build(inputs, tok, config.load("smoke", {"sft.tasks": ["title_to_sku"]}), progress=False)
    with pytest.raises(ValueError, match="seq_last_4"):
        sft_data.build(inputs, tok, config.load("smoke", {"sft.tasks": ["seq_last_4"]}), progress=False)
    with pytest.raises(ValueError, match="similar_prefix"):
        sft_data.build(inputs, tok, config.load("smoke", {"sft.similar_prefix": 9}), progress=False)
    fewer = tasks.Inputs(inputs.items.iloc[:-1], inputs.split, inputs.pairs, inputs.table, inputs.source)
    with pytest.raises(DataError, match="05-sids was built from another item table"):
        sft_data.build(fewer, tok, cfg, progress=False)
    # pairs that do not come from the training parts (e.g. a stale 01-prep) are refused
    stale = inputs.pairs.drop(index=inputs.pairs.index[inputs.pairs["kind"] == "sequence"][0])
    bad = tasks.Inputs(inputs.items, inputs.split, stale, inputs.table, inputs.source)
    with pytest.raises(DataError, match="pairs.parquet.*rerun 01-prep"):
        tasks.copurchase_edges(bad)
    with pytest.raises(DataError, match="run 06-sft-data first"):
        sft_data.load(tmp_path)
    (tmp_path / "train.parquet").write_bytes(b"")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "valid.parquet")
    with pytest.raises(DataError, match="not an SFT data file"):
        sft_data.load(tmp_path)


# ----------------------------------------------------------------------------- the notebook


def test_notebook_runs_on_smoke_through_the_runner(smoke_stages, tokenizer_folder):
    # tokenizer_folder: the converted SmolLM2 (paths.models_cache, outside the temp artifacts)
    lines: list[str] = []
    assert runner.run("smoke", "06", echo=lines.append) == 0, lines
    m = summary.load("smoke")["stages"]["sft_data"]["metrics"]
    assert m["train"] > 0 and m["valid"] > 0 and m["tokens_p95"] >= m["tokens_mean"] > 0
    assert m["samples"]["seq_last_5"] > 0 and m["samples"]["rec_steering"] > 0
    out = paths.stage_dir("smoke", "06-sft-data", create=False)
    assert (out / "token_lengths.png").exists() and (out / "sft_report.json").exists()
    train, valid = sft_data.load(out)
    assert len(train) == m["train"] and set(train["task"]) == {t for t, n in m["samples"].items() if n}
