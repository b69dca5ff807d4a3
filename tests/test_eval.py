"""Stage 09 and the demo: hand-computed accuracies through the real decoding path (a scripted
model whose preferences are known), the recommender against transformers' own constrained beam
search, SID rendering in the chat, and 09 + demo through the runner on the smoke profile."""
from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import DynamicCache

from sidlib import config, runner, stages, summary
from sidlib.llm import base, chat, decode, demo, generate, tasks, vocab
from sidlib.llm import eval as ev
from sidlib.sids import SID_END, SID_START, SidScheme, SidTable

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cfg():
    return config.load("smoke", {"eval.max_new_tokens": 12})


@pytest.fixture(scope="module")
def binary_table():
    """16 items, SID = the 4 bits of the item id, MSB first (3 tokenizer levels + dedup, 2 codes each)."""
    codes = np.array(list(itertools.product([0, 1], repeat=4)))
    return SidTable.build(codes, SidScheme([2, 2, 2, 2]), [f"Movie {i}" for i in range(16)])


@pytest.fixture(scope="module")
def tok(cfg, binary_table):
    t = base.load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(t, binary_table.scheme)
    return t


class ScriptedLM(torch.nn.Module):
    """The same logits at every position (`prefs`), except that after <|sid_end|> the end of turn
    wins: free replies are one SID then the end, and beam scores are sums of `prefs` over a SID's
    code tokens — computable by hand. A real transformers cache carries dummy keys, so the
    evaluation's prefill / copy / reorder path runs as with a real model."""

    def __init__(self, prefs: torch.Tensor, sid_end: int, eos: int):
        super().__init__()
        self.prefs = torch.nn.Parameter(prefs, requires_grad=False)
        self.sid_end, self.eos = sid_end, eos
        self.config = SimpleNamespace(use_cache=True)
        self.generation_config = None

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0):
        b, t = input_ids.shape
        cache = past_key_values if past_key_values is not None else DynamicCache()
        dummy = torch.zeros(b, 1, t, 1)
        cache.update(dummy, dummy, 0)
        logits = self.prefs.expand(b, t, -1).clone()
        logits[..., self.eos] += 100.0 * (input_ids == self.sid_end)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=cache)


@pytest.fixture(scope="module")
def scripted(tok, binary_table):
    """Prefers <|sid_start|> above all, then at every level code 0 with weight 8, 4, 2, 1 (code 1:
    0). Greedy answer: item 0 (0000); beam score of item i = 15 - i, so the top 10 are items 0..9."""
    prefs = torch.zeros(len(tok))
    prefs[tok.convert_tokens_to_ids(SID_START)] = 20.0
    for level, w in enumerate([8.0, 4.0, 2.0, 1.0]):
        prefs[tok.convert_tokens_to_ids(binary_table.scheme.token(level, 0))] = w
    eos = chat.end_token_ids(tok)[0]
    return ScriptedLM(prefs, tok.convert_tokens_to_ids(SID_END), eos)


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a helpful shopping assistant."},
            {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# --------------------------------------------------------------------------- accuracy by hand


def test_hierarchical_on_a_fixed_set():
    assert ev.accuracy_keys(4) == ["level1", "prefix2", "prefix3", "exact"]
    assert ev.accuracy_keys(2) == ["level1", "exact"]
    preds = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 9, 3, 4], [7, 2, 3, 4], None]
    truth = [1, 2, 3, 4]
    # shared leading codes: 4, 3, 1, 0, 0 -> level1 3/5, prefix2 2/5, prefix3 2/5, exact 1/5
    got = ev.hierarchical(preds, [truth] * 5)
    assert got == {"level1": 3 / 5, "prefix2": 2 / 5, "prefix3": 2 / 5, "exact": 1 / 5}
    # several acceptable answers: the closest one counts
    assert ev.match_depth([1, 2, 0, 0], [[5, 5, 5, 5], [1, 2, 0, 1]]) == 3
    assert ev.hierarchical([[1, 2, 0, 0]], [[[5, 5, 5, 5], [1, 2, 0, 0]]])["exact"] == 1.0
    assert ev.token_f1("Toy Story (1995)", "toy story") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert ev.normalize_text("Toy  Story (1995)!") == "toy story 1995" and ev.token_f1("", "x") == 0.0


def test_task_accuracy_reproduces_hand_computed_values(cfg, tok, binary_table, scripted):
    sid = binary_table.sid_of
    valid = pd.DataFrame({
        "task": ["title_to_sid"] * 4 + ["similar_items", "sid_to_title"],
        "messages": [
            conversation("Find item zero.", sid(0)),  # 0000: every level right, in the top 10
            conversation("Find item three.", sid(3)),  # 0011: first 2 codes right, in the top 10
            conversation("Find item twelve.", sid(12)),  # 1100: level 1 wrong, not in the top 10
            conversation("Find item one.", sid(1)),  # 0001: first 3 codes right, in the top 10
            conversation("Like item 5?", f"{sid(12)}, {sid(2)}"),  # closest answer 0010: 2 codes; 2 in top 10
            conversation(f"Title of {sid(0)}?", "Movie 0"),  # a text answer
        ],
        "target_item": [0, 3, 12, 1, -1, -1],
    })
    tasks, detail = ev.task_accuracy(scripted, tok, binary_table, valid, cfg, per_task=0, beam=10, progress=False)
    t = tasks.loc["title_to_sid"]
    assert (t["n"], t["level1"], t["prefix2"], t["prefix3"], t["exact"]) == (4, 0.75, 0.75, 0.5, 0.25)
    assert t["exact_at_10"] == 0.75
    s = tasks.loc["similar_items"]
    assert (s["level1"], s["prefix2"], s["prefix3"], s["exact"], s["exact_at_10"]) == (1.0, 1.0, 0.0, 0.0, 1.0)
    # unconstrained the model repeats <|sid_start|> (no valid SID); constrained it writes item 0 and stops
    assert t["valid_unconstrained"] == 0.0 and t["valid_constrained"] == 1.0
    assert t["wellformed_unconstrained"] == 0.0  # "<|sid_start|><|sid_start|>...": no closed block
    sid_rows = detail[detail["kind"] == "sid"]
    assert (sid_rows["reply"] == sid(0)).all() and (sid_rows["greedy_item"] == 0).all()
    assert sid_rows["topk"].iloc[0] == list(range(10))  # ranked by beam score: 15 - i
    text = tasks.loc["sid_to_title"]
    assert text["kind"] == "text" and text["exact"] == 0.0 and text["f1"] == 0.0


def test_constraint_sees_only_the_reply(tok, binary_table):
    """prefix_to_category prompts hold an open SID prefix: the constraint must not close it."""
    constraint = decode.SidConstraint(tok, binary_table)
    prompt = tok(f"Items under {SID_START}{binary_table.scheme.token(0, 1)} are? Answer:",
                 add_special_tokens=False)["input_ids"]
    x, scores = torch.tensor([prompt]), torch.randn(1, len(tok))
    assert torch.isfinite(constraint(x, scores.clone())).sum() == 1  # the raw view: only <|sid_end|>
    reply_view = decode.ReplyOnly(constraint, len(prompt))(x, scores.clone())
    # the reply view: no block open, so free text keeps its scores; only the tokens that belong
    # inside a block (codes, <|sid_end|>) are withheld
    free = torch.ones(len(tok), dtype=torch.bool)
    free[constraint.block_only] = False
    assert torch.equal(reply_view[0, free], scores[0, free])
    assert torch.isinf(reply_view[0, ~free]).all()


# --------------------------------------------------------------------------- the recommender


@pytest.fixture(scope="module")
def small_table():
    """40 items, 3 x 4 codes + a dedup level; level-1 code 3 is never used (an unknown SID)."""
    rng = np.random.default_rng(0)
    combos = np.array(list(itertools.product(range(3), range(4), range(4))))
    codes = combos[rng.choice(len(combos), 40, replace=False)]
    full = np.concatenate([codes, np.zeros((40, 1), dtype=np.int64)], 1)  # unique already: dedup code 0
    return SidTable.build(full, SidScheme([4, 4, 4, 2]), [f"Title {i}" for i in range(40)])


@pytest.fixture(scope="module")
def small_tok(cfg, small_table):
    t = base.load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(t, small_table.scheme)
    return t


@pytest.fixture(scope="module")
def random_lm(cfg, small_tok):
    torch.manual_seed(0)
    model = base.tiny_model(cfg.llm, len(small_tok)).eval()
    with torch.no_grad():  # larger weights: distinct beam scores that depend on the whole prompt
        for name, w in model.named_parameters():
            if "norm" not in name:
                w.normal_(0, 0.5)
    return model


def test_recommender_returns_existing_items_ranked_like_transformers(cfg, small_table, small_tok, random_lm):
    tok = small_tok
    histories = [[3, 7, 1], [5], [0, 2, 4, 6, 8, 10, 12], [39, 38]]
    got = ev.recommend_topk(random_lm, tok, small_table, histories, cfg, k=10)
    assert got.shape == (4, 10)
    assert ((got >= 0) & (got < len(small_table))).all()
    assert all(len(set(row)) == 10 for row in got.tolist())
    # one history at a time (no padding) gives the same lists: left padding is invisible
    assert np.array_equal(ev.recommend_topk(random_lm, tok, small_table, histories[1:2], cfg, k=10), got[1:2])
    # transformers' beam search with the SidConstraint ranks the same items in the same order
    dec = generate.Decoder(random_lm, tok, small_table, cfg.llm)
    prompts = [dec.rec_prompt(h, cfg) for h in histories]
    assert len({len(p) for p in prompts}) == 4  # the batch is left-padded
    mine = dec.beam(dec.prefill(prompts), range(4), 10)
    assert np.array_equal(mine.items.numpy(), got)
    for h, row, scores in zip(histories, got, mine.scores):
        ids = dec.rec_prompt(h, cfg) + [dec.start_id]
        out = random_lm.generate(torch.tensor([ids]), max_new_tokens=small_table.scheme.levels, num_beams=10,
                                 num_return_sequences=10, do_sample=False, length_penalty=0.0,
                                 logits_processor=[decode.ReplyOnly(dec.constraint, len(ids))],
                                 return_dict_in_generate=True, output_scores=True,
                                 pad_token_id=dec.pad_id, eos_token_id=dec.ends)
        theirs = [small_table.trie().item_of([int(dec.constraint.code_of[t]) for t in seq[len(ids):]])
                  for seq in out.sequences]
        assert theirs == row.tolist()
        # the same scores (sums of code log-probabilities), in descending order
        assert torch.allclose(out.sequences_scores, scores, atol=1e-4)
        assert out.sequences_scores.tolist() == sorted(out.sequences_scores.tolist(), reverse=True)


def test_recommender_prompt_question_or_history_list(cfg, small_table, small_tok, random_lm):
    """eval.rec_prompt: "auto" continues seq_history's list when 06 builds it (smoke sets
    sft.history_window), showing the last history_window items; "question" is seq_last_N's
    question; a history prompt without seq_history, or an unknown value, is a named error."""
    dec = generate.Decoder(random_lm, small_tok, small_table, cfg.llm)
    history = list(range(30))
    w = cfg.sft.history_window
    assert 2 <= w < len(history) and generate.rec_prompt_mode(cfg) == "history"
    ids = dec.rec_prompt(history, cfg)
    text = small_tok.decode(ids)
    head = small_tok.decode(dec.prompt(generate.history_messages(small_table, cfg)))
    assert text.startswith(head) and "oldest first. Continue the list." in head
    assert text[len(head):] == "".join(small_table.sid_of(i) for i in history[-w:])
    # the 06 task asks the same question
    assert generate.history_messages(small_table, cfg)[-1]["content"] == \
        tasks.templates_of(tasks.HISTORY)[0][0].format(nouns="movies", verb="watched")
    question = config.load("smoke", {"eval.rec_prompt": "question"})
    assert dec.rec_prompt(history, question) == dec.prompt(generate.rec_messages(history, small_table, question))
    assert generate.rec_prompt_mode(config.load("smoke", {"sft.history_window": 0})) == "question"
    with pytest.raises(config.ConfigError, match="needs 06's seq_history"):
        generate.rec_prompt_mode(config.load("smoke", {"sft.history_window": 0, "eval.rec_prompt": "history"}))
    with pytest.raises(config.ConfigError, match="expected one of auto, question, history"):
        generate.rec_prompt_mode(config.load("smoke", {"eval.rec_prompt": "list"}))


def test_recommender_skips_the_history_inside_the_search(cfg, small_table, small_tok, random_lm):
    """exclude_history: no history item comes out, and an exhaustive search (k = every item)
    ranks the rest exactly as the unbanned search does."""
    histories = [[3, 7, 1], [5], [0, 2, 4, 6, 8, 10, 12]]
    n = len(small_table)
    free = ev.recommend_topk(random_lm, small_tok, small_table, histories, cfg, k=n)
    got = ev.recommend_topk(random_lm, small_tok, small_table, histories, cfg, k=n, exclude_history=True)
    for h, f, g in zip(histories, free, got):
        rest = [i for i in f.tolist() if i not in h]
        assert g[: len(rest)].tolist() == rest and (g[len(rest):] == -1).all()
    top = ev.recommend_topk(random_lm, small_tok, small_table, histories, cfg, k=5, exclude_history=True)
    assert all(len(set(r)) == 5 and min(r) >= 0 and not set(r) & set(h) for r, h in zip(top.tolist(), histories))


def test_comparison_table_rows_and_sample_sizes():
    baselines = {"popularity": {"ndcg@10": 0.02, "hit@10": 0.05, "mrr": 0.02, "n_users": 300, "n_cold": 41},
                 "sid_gr": {"ndcg@10": 0.01, "hit@10": 0.02, "mrr": 0.01, "n_users": 300, "n_cold": 41, "beam": 20}}
    llm = {ev.FINETUNED: {"ndcg@10": 0.03, "hit@10": 0.06, "mrr": 0.02, "n_users": 16, "n_cold": 3, "beam": 10}}
    t = ev.comparison_table(baselines, llm)
    assert list(t.index) == ["Popularity", "SID-GR", ev.FINETUNED]
    assert t.loc["SID-GR", "ranking"] == "top-20 beams" and t.loc["Popularity", "ranking"] == "full ranking"
    assert t.loc[ev.FINETUNED, "n_users"] == 16 and t.loc[ev.FINETUNED, "ranking"] == "top-10 beams"


def test_same_user_rows_keep_the_baselines_ranking(cfg, monkeypatch):
    """07's models re-scored on the LLM's users from their saved per-user ranks: the metrics of
    those users, and a beam model's row still says its ranks are beams."""
    ranks = pd.DataFrame({"model": ["sasrec"] * 3 + ["sid_gr"] * 3, "user_id": [1, 2, 3] * 2,
                          "rank": [1, 50, 3, 2, np.inf, 11]})  # 1-based; inf = not in SID-GR's beams
    monkeypatch.setattr(ev, "load_ranks", lambda profile: ranks)
    samples = pd.DataFrame({"user_id": [1, 3], "history": [[0], [0]], "target": [5, 6]})
    entries = {"sasrec": {"ndcg@10": 0.1, "n_users": 3}, "sid_gr": {"ndcg@10": 0.05, "n_users": 3, "beam": 20}}
    same = ev.baselines_on(cfg, samples, np.ones(10, dtype=np.int64), entries)
    assert same["SASRec" + ev.SAME_USERS]["n_users"] == 2
    assert same["SASRec" + ev.SAME_USERS]["hit@10"] == 1.0 and same["SID-GR" + ev.SAME_USERS]["hit@10"] == 0.5
    t = ev.comparison_table({**entries, **same}, {})
    assert t.loc["SID-GR" + ev.SAME_USERS, "ranking"] == "top-20 beams"
    assert t.loc["SASRec" + ev.SAME_USERS, "ranking"] == "full ranking"


# --------------------------------------------------------------------------- the demo's chat


def test_chat_keeps_history_and_renders_unknown_sids(cfg, small_table, small_tok, random_lm, monkeypatch):
    tok = small_tok
    chat = demo.Chat(random_lm, tok, small_table, cfg, max_new_tokens=6)
    first = chat(f"What is the title of {small_table.sid_of(3)}?")  # a real generation: no crash
    assert isinstance(first.raw, str) and len(chat.history) == 2
    scheme = small_table.scheme
    unknown = scheme.format([3, 0, 0, 0])  # no item starts with level-1 code 3
    near = scheme.format([*small_table.codes[5, :3], 1])  # item 5's first 3 codes, a dedup code nobody has
    scripted = tok(f"Try {unknown}, {near} or {small_table.sid_of(5)}", add_special_tokens=False)["input_ids"]

    def fake_generate(x, **kw):  # the model "says" an invalid SID, then ends its turn
        return torch.cat([x, torch.tensor([scripted + [chat.dec.ends[0]]])], 1)

    monkeypatch.setattr(random_lm, "generate", fake_generate)
    reply = chat("And now?")
    assert reply.raw == f"Try {unknown}, {near} or {small_table.sid_of(5)}"
    first5 = small_table.trie().longest_known_prefix([*small_table.codes[5, :3], 1])[1]
    assert reply.text == f"Try [unknown SID], [Title {first5} (L3 match)] or [Title 5]"
    assert chat.render(f"{SID_START}{scheme.token(0, 1)}{SID_END}") == "[unknown SID]"  # too few codes
    assert len(chat.history) == 4 and chat.transcript()["rendered"].iat[3] == reply.text
    chat.reset()
    assert chat.history == []


def test_chat_never_stores_an_empty_reply_and_rec_gets_an_item(cfg, small_table, small_tok, random_lm, monkeypatch):
    from sidlib.sids import REC

    chat = demo.Chat(random_lm, small_tok, small_table, cfg, max_new_tokens=10)
    reply = chat(f"I like comedies. {REC}")  # a random model: the rules must open and close a block
    trie = small_table.trie()
    items = [trie.item_of(c) for _s, c in small_table.scheme.find_all(reply.raw) if c is not None]
    assert any(i is not None for i in items), reply.raw
    assert reply.assisted and reply.constrained and len(chat.history) == 2
    # unconstrained, a model that ends its turn at once says nothing: the turn is not stored
    free = demo.Chat(random_lm, small_tok, small_table, cfg, constrained=False)
    monkeypatch.setattr(random_lm, "generate", lambda x, **kw: torch.cat([x, torch.tensor([[free.dec.ends[0]]])], 1))
    empty = free("Hello?")
    assert empty.raw == "" and free.history == []


def test_reply_rules_hold_the_end_and_open_a_block(small_table, small_tok):
    from sidlib.llm.decode import ReplyRules, blank_tokens

    start = small_tok.convert_tokens_to_ids(SID_START)
    end = small_tok.convert_tokens_to_ids(SID_END)
    eos = chat.end_token_ids(small_tok)
    blank = blank_tokens(small_tok)
    word = small_tok("Hello", add_special_tokens=False)["input_ids"][0]
    space = small_tok(" ", add_special_tokens=False)["input_ids"][0]
    levels = small_table.scheme.levels
    scores = torch.zeros(1, len(small_tok))
    scores[0, eos[0]] = 10.0  # the model wants to end its turn
    prompt = [7, 8, 9]
    rules = ReplyRules(start, end, eos, blank, levels, len(prompt), 20, require_sid=False)
    assert rules(torch.tensor([prompt]), scores).argmax() != eos[0]  # empty: the end is held
    assert rules(torch.tensor([prompt + [space]]), scores).argmax() != eos[0]  # only a space so far
    assert rules(torch.tensor([prompt + [word]]), scores).argmax() == eos[0]  # words: it may end
    rec = ReplyRules(start, end, eos, blank, levels, len(prompt), 20, require_sid=True)
    assert rec(torch.tensor([prompt + [word]]), scores).argmax() != eos[0]  # no SID yet
    # only room for one SID left and none open: <|sid_start|> is forced
    assert rec(torch.tensor([prompt + [word] * (20 - levels - 2)]), scores).argmax() == start
    done = prompt + [word, start] + small_small_codes(small_table, small_tok) + [end]
    assert rec(torch.tensor([done]), scores).argmax() == eos[0]
    assert bool(rec.intervened.all())


def small_small_codes(table, tok) -> list[int]:
    return tok(table.sid_of(0), add_special_tokens=False)["input_ids"][1:-1]


def test_demo_log_counts_the_right_kind_of_answer(small_table):
    log = demo.DemoLog(small_table)
    sid = small_table.sid_of
    log.add("history", demo.REC_TURN, "next?", demo.Reply(f"Try {sid(3)}", "Try [Title 3]"))
    log.add("pref", demo.REC_TURN, "like?", demo.Reply("I am not sure.", "I am not sure.", assisted=False))
    log.add("why", demo.TEXT_TURN, "why?", demo.Reply("Both are comedies.", "Both are comedies."))
    log.add("bundle", demo.TEXT_TURN, "name?", demo.Reply(f"{sid(1)}", "[Title 1]"))
    log.add("title", demo.SID_TURN, "sid?", demo.Reply(f"{sid(2)}", "[Title 2]"))
    log.add("numbers", demo.TEXT_TURN, "title?", demo.Reply("The 2019 2023 2024 2025", "The 2019 2023 2024 2025"))
    log.add("empty", demo.TEXT_TURN, "x", demo.Reply("", ""))
    c = log.counts()
    assert c == {"turns": 7, "empty_replies": 1, "rec_turns": 2, "rec_turns_with_item": 1, "rec_turns_assisted": 0,
                 "text_turns": 4, "text_turns_in_words": 1, "sid_turns": 1, "sid_turns_with_item": 1}
    with pytest.raises(ValueError, match="turn kind"):
        log.add("x", "chat", "x", demo.Reply("", ""))


# --------------------------------------------------------------------------- the chain


def test_09_and_demo_run_on_smoke_through_the_runner(smoke_stages, tmp_roots):
    """06, 08, 09 and the demo on smoke through their notebooks, shrunk; a 07 summary entry stands
    in for the baselines' training."""
    fast = {"sft.max_per_task": 16, "sft.valid_per_task": 2, "finetune.stage1_steps": 1,
            "finetune.stage2_max_steps": 1, "finetune.max_train_samples": 16, "eval.users": 6,
            "eval.max_new_tokens": 8, "eval.rec_beam": 5}
    lines: list[str] = []
    assert runner.run("smoke", "06", fast, echo=lines.append) == 0, "\n".join(lines)
    summary.record("smoke", "baselines", {"sasrec": {"ndcg@10": 0.01, "hit@10": 0.02, "mrr": 0.01,
                                                     "n_users": 300, "n_cold": 41}})
    assert runner.run("smoke", "08,09,demo", fast, echo=lines.append) == 0, "\n".join(lines)

    entry = summary.load("smoke")["stages"]["eval"]
    assert entry["status"] == "ok"
    llm = entry["metrics"]["llm"]
    sid_tasks = {t: m for t, m in llm["tasks"].items() if "exact_at_10" in m}
    assert sid_tasks and all({"level1", "prefix2", "prefix3", "exact", "exact_at_10"} <= set(m)
                             for m in sid_tasks.values())
    assert 0.0 <= llm["valid_rate_unconstrained"] <= llm["wellformed_rate_unconstrained"] <= 1.0
    assert 0.0 <= llm["ndcg@10"] <= llm["hit@10"] + 1e-12
    table = {r["model"]: r for r in entry["metrics"]["table"]}
    pop = ev.BASELINE_NAMES["popularity_llm_users"]
    assert set(table) == {"SASRec", pop, ev.FINETUNED, ev.FLOOR}
    assert table[ev.FINETUNED]["n_users"] == table[pop]["n_users"] == 6 and table["SASRec"]["n_users"] == 300
    assert llm["popularity_ndcg@10_same_users"] == table[pop]["ndcg@10"]
    for stage in (stages.SFT_DATA, stages.FINETUNE, stages.EVAL, stages.DEMO):  # the stage contract
        assert stage.missing("smoke") == [], stage.name
    out = stages.EVAL.dir("smoke")
    for f in ["comparison.png", "tasks.png"]:
        assert (out / f).exists(), f
    assert json.loads((out / "eval_report.json").read_text())["users"] == 6
    demo_entry = summary.load("smoke")["stages"]["demo"]
    assert demo_entry["status"] == "ok"
    counts = demo_entry["metrics"]
    turns = [json.loads(line) for line in
             (stages.DEMO.dir("smoke") / "transcript.jsonl").read_text().splitlines()]
    assert counts["turns"] == len(turns) >= 8 and counts["empty_replies"] == 0
    assert counts["rec_turns"] == 3 and counts["text_turns"] == 3
    # the smoke model is random, but the <|rec|> turns are guaranteed an existing item
    assert counts["rec_turns_with_item"] >= 2
    assert {"prompt", "raw", "rendered", "constrained", "assisted"} <= set(turns[0])
    assert list((tmp_roots / "runs" / "smoke").glob("*/demo.ipynb")), "the executed demo is a run output"
