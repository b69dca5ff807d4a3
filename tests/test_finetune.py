"""Stage 08 mechanics: SID vocabulary, assistant-only labels, packing, stage 1 freezing, resume,
save -> from_pretrained. Real tokenizer (SmolLM2's), real Scientific items and codes; the
model is the tiny Llama from a config where only mechanics are tested."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sidlib import config
from sidlib.llm import base, chat, train, vocab
from sidlib.sids import SidTable


@pytest.fixture(scope="module")
def table(scientific_sid_table) -> SidTable:
    return scientific_sid_table


def conversations(table: SidTable, n: int = 40) -> pd.DataFrame:
    """Real title -> SID and SID -> title conversations for the first n items."""
    rows = []
    for item in range(n):
        title, sid = str(table.df["title"].iat[item]), table.sid_of(item)
        rows.append([{"role": "system", "content": "You speak semantic IDs."},
                     {"role": "user", "content": f"Which product is called {title}?"},
                     {"role": "assistant", "content": sid}])
        rows.append([{"role": "user", "content": f"What is {sid}?"}, {"role": "assistant", "content": title}])
    return pd.DataFrame({"task": ["title_to_sid", "sid_to_title"] * n, "messages": rows})


def cfg_tiny(**over):
    base_over = {"llm.model": "tiny", "llm.max_length": 256, "finetune.batch_size": 4, "finetune.logging_steps": 1,
                 "finetune.stage1_steps": 3, "finetune.stage2_max_steps": 2, "finetune.save_steps": 2}
    return config.load("smoke", {**base_over, **over})


def test_added_tokens_keep_old_ids_and_encode_whole(table):
    cfg = cfg_tiny()
    tok = base.load_tokenizer(cfg.llm)
    text = "A cordless drill, 18V, with two batteries <|im_end|>"
    before, n_before = tok(text)["input_ids"], len(tok)
    with pytest.raises(base.LLMError, match="splits SID tokens"):
        vocab.check_sid_tokenization(tok, table.scheme, [table.sid_of(0)])
    ids = vocab.add_sid_tokens(tok, table.scheme)
    assert tok(text)["input_ids"] == before
    assert ids == list(range(n_before, n_before + len(table.scheme.tokens())))
    vocab.check_sid_tokenization(tok, table.scheme, table.df["sid"].head(20).tolist())
    assert len(tok(table.sid_of(3), add_special_tokens=False)["input_ids"]) == table.scheme.levels + 2
    assert vocab.add_sid_tokens(tok, table.scheme) == ids  # idempotent


def test_model_without_chat_template(tmp_path):
    cfg = cfg_tiny()
    tok = base.load_tokenizer(cfg.llm)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    with pytest.raises(base.LLMError, match="no chat template"):
        base.load_tokenizer(cfg.llm, source=tmp_path)
    cfg.llm.chat_template = "chatml"
    tok = base.load_tokenizer(cfg.llm, source=tmp_path)
    text = chat.render(tok, [{"role": "user", "content": "hi"}], cfg.llm, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_labels_cover_assistant_turns_only(table):
    cfg = cfg_tiny()
    tok = base.load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(tok, table.scheme)
    sid, title = table.sid_of(5), str(table.df["title"].iat[5])
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"What is {sid}?"},
            {"role": "assistant", "content": title}, {"role": "user", "content": "And its ID?"},
            {"role": "assistant", "content": sid}]
    enc = chat.encode(tok, msgs, cfg.llm)
    assert enc["input_ids"] == tok(chat.render(tok, msgs, cfg.llm), add_special_tokens=False)["input_ids"]
    learned = tok.decode([t for t, l in zip(enc["input_ids"], enc["labels"]) if l != chat.IGNORE])
    assert learned == f"{title}<|im_end|>\n{sid}<|im_end|>\n"
    # the prompt of the first answer is exactly what generation would be given
    prompt = chat.prompt_ids(tok, msgs[:2], cfg.llm)
    assert enc["input_ids"][: len(prompt)] == prompt and set(enc["labels"][: len(prompt)]) == {chat.IGNORE}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_padded_loss(table, attn):
    """Several conversations in one row, position ids restarting: the same loss as padding each
    one, so no token attends across conversations."""
    cfg = cfg_tiny()
    tok = base.load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(tok, table.scheme)
    torch.manual_seed(0)
    model = base.tiny_model(cfg.llm, len(tok)).eval()
    model.config._attn_implementation = attn
    data = train.encode_frame(conversations(table, 6), tok, cfg.llm)
    feats = [data[i] for i in range(len(data))]
    assert len({f["length"] for f in feats}) > 1  # padding really happens
    packed = train.make_collator(tok, True, attn)(feats)
    padded = train.make_collator(tok, False, attn)(feats)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert (packed["position_ids"] == 0).sum() == len(feats)
    with torch.no_grad():  # use_cache=False as in training: with a cache transformers ignores the resets
        l_packed = model(**packed, use_cache=False).loss
        l_padded = model(**padded, use_cache=False).loss
        # cross-contamination would show: the same row without position resets differs
        no_reset = {k: v for k, v in packed.items() if k != "position_ids"}
        l_mixed = model(**no_reset, use_cache=False).loss
    assert torch.allclose(l_packed, l_padded, atol=1e-5), (l_packed, l_padded)
    assert not torch.allclose(l_packed, l_mixed, atol=1e-4)


def test_stage1_trains_only_new_rows_then_resumes(table, tmp_path, caplog):
    cfg = cfg_tiny(**{"finetune.stage1_steps": 4, "finetune.stage1_mode": "trainer"})
    sft = conversations(table)
    from sidlib.models.train import set_seed

    set_seed(cfg.seed)  # as finetune() does: the same tiny random init
    model, tok, info = train.prepare_model(cfg, table, "cpu", "sdpa")
    assert info["untied"] and info["added"] == len(table.scheme.tokens())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "ft"
    res = train.finetune(cfg, sft, table, out=out, which=("stage1",))
    assert res["metrics"]["stage1_steps"] == 4 and res["metrics"]["stage2_steps"] == 0
    after = train.base.load_model(cfg.llm, source=out / "stage1" / "final").state_dict()
    n_old = info["vocab_before"]
    for name, w in before.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[name][:n_old], w[:n_old]), f"{name}: old rows moved"
            assert not torch.equal(after[name][n_old:], w[n_old:]), f"{name}: new rows did not train"
        else:
            assert torch.equal(after[name], w), f"{name} changed in stage 1"
    # interrupt: the finished marker and the last checkpoint are lost -> resume from checkpoint-2
    import shutil

    shutil.rmtree(out / "stage1" / "final")
    shutil.rmtree(out / "stage1" / "checkpoint-4")
    with caplog.at_level(logging.INFO, logger="sidlib.llm.train"):
        again = train.finetune(cfg, sft, table, out=out, which=("stage1",))
    assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert again["metrics"]["stage1_steps"] == 4
    assert 0 < again["metrics"]["train_tokens"] < res["metrics"]["train_tokens"]  # only steps 3-4 ran


def test_checkpoints_of_other_sids_are_not_resumed(table, tmp_path, caplog):
    """Two items swap SIDs (another dedup order: same scheme, same number of conversations): the
    finished stage 1 of the old table is cleared, not taken as done; the same table resumes."""
    cfg = cfg_tiny()
    sft, out = conversations(table), tmp_path / "ft"
    train.finetune(cfg, sft, table, out=out, which=("stage1",))
    with caplog.at_level(logging.INFO, logger="sidlib.llm.train"):
        train.finetune(cfg, sft, table, out=out, which=("stage1",))
    assert "stage1 already finished" in caplog.text and "clearing" not in caplog.text
    codes = table.codes.copy()
    codes[[0, 1]] = codes[[1, 0]]
    swapped = SidTable.build(codes, table.scheme, table.df["title"].tolist())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sidlib.llm.train"):
        res = train.finetune(cfg, conversations(swapped), swapped, out=out, which=("stage1",))
    assert "settings changed: clearing" in caplog.text and "already finished" not in caplog.text
    assert res["metrics"]["stage1_steps"] >= 1


def test_bf16_autocast_trains_and_saves_fp32(table, tmp_path):
    """finetune.bf16 = on: stage 2 under bf16 autocast on the CPU (what "auto" picks on a CPU with
    AMX) has a finite loss and saves fp32 weights; off is off; a misspelt value names the key."""
    from transformers import AutoModelForCausalLM

    assert train.resolve_bf16(cfg_tiny(**{"finetune.bf16": "off"}).finetune, "cpu") is False
    with pytest.raises(config.ConfigError, match="finetune.bf16 = 'yes'"):
        train.resolve_bf16(cfg_tiny(**{"finetune.bf16": "yes"}).finetune, "cpu")
    res = train.finetune(cfg_tiny(**{"finetune.bf16": "on"}), conversations(table), table, out=tmp_path / "ft")
    m = res["metrics"]
    assert m["bf16"] is True and m["stage2_steps"] == 2 and np.isfinite(m["final_loss"])
    model = AutoModelForCausalLM.from_pretrained(res["model_dir"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_two_stages_save_a_loadable_model(table, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg_tiny()
    res = train.finetune(cfg, conversations(table), table, out=tmp_path / "ft")
    m = res["metrics"]
    assert m["stage1_mode"] == "cached" and m["stage1_steps"] >= 1  # the best epoch of the cached fit
    assert m["stage2_steps"] == 2 and m["train_tokens"] > 0
    assert np.isfinite(m["final_loss"]) and m["tokens_per_second"] > 0
    folder = Path(res["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert not model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert len(tok) == model.config.vocab_size == m["vocab"]["vocab_after"]
    vocab.check_sid_tokenization(tok, table.scheme, table.df["sid"].head(5).tolist())
    assert SidTable.load(folder).df["sid"].equals(table.df["sid"])
    # the saved stage-2 weights are the ones a second load gives (no re-tying, no re-init)
    again = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([chat.prompt_ids(tok, [{"role": "user", "content": f"What is {table.sid_of(1)}?"}], cfg.llm)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_notebook_cli_and_ddp_on_smoke(smoke_stages):
    """06 and 08 through the runner; then the same stage from the shell under `accelerate launch`
    with two CPU processes (DDP over gloo), which must write a loadable model."""
    import json
    import os
    import subprocess
    import sys

    from sidlib import paths, runner, summary

    lines: list[str] = []
    assert runner.run("smoke", "06,08", echo=lines.append) == 0, lines
    m = summary.load("smoke")["stages"]["finetune"]["metrics"]
    assert m["stage1_mode"] == "cached" and m["stage2_steps"] == 4 and m["processes"] == 1
    out = paths.stage_dir("smoke", "08-finetune", create=False)
    assert (out / "loss_curves.png").exists()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(paths.REPO / "configs/accelerate/ddp-llm.yaml"), "--num_processes", "2", "--main_process_port", "0",
           "-m", "sidlib.llm.train", "--profile", "smoke", "--no-resume"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    # the first traceback names the process that failed; the tail only shows the others stopping
    first = max(proc.stderr.find("Traceback"), 0)
    assert proc.returncode == 0, proc.stderr[first:first + 3000] + "\n...\n" + proc.stderr[-1500:]
    report = json.loads((out / "finetune_report.json").read_text())["metrics"]
    assert report["processes"] == 2 and report["stage2_steps"] == 4
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model").config.vocab_size == report["vocab"]["vocab_after"]


def test_stage1_cached_fits_only_the_new_output_rows(table, tmp_path):
    """Stage 1 on cached hidden states: the new tokens' output rows move and the held-out loss
    falls; every other weight (input rows included) is untouched."""
    cfg = cfg_tiny(**{"finetune.stage1_epochs": 30, "finetune.stage1_lr": 2e-2})
    from sidlib.models.train import set_seed

    set_seed(cfg.seed)
    model, tok, info = train.prepare_model(cfg, table, "cpu", "sdpa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "ft"
    res = train.finetune(cfg, conversations(table), table, out=out, which=("stage1",))
    fit = res["metrics"]["stage1_fit"]
    assert fit["after"]["loss"] < fit["before"]["loss"], fit
    assert fit["new_positions"] > 0 and fit["positions"] > fit["new_positions"]  # words too (titles)
    after = train.base.load_model(cfg.llm, source=out / "stage1" / "final").state_dict()
    new = vocab.sid_token_ids(tok, table.scheme) + chat.end_token_ids(tok)  # + the end of turn
    old = torch.ones(len(tok), dtype=torch.bool)
    old[new] = False
    assert not torch.equal(after["lm_head.weight"][new], before["lm_head.weight"][new])
    assert torch.equal(after["lm_head.weight"][old], before["lm_head.weight"][old])
    for name, w in before.items():
        if name != "lm_head.weight":
            assert torch.equal(after[name], w), f"{name} changed in stage 1"


def test_stage1_collect_batches_do_not_change_the_states(table):
    """head.collect pads length-sorted batches: every labelled position gets the hidden state and
    label it has when its conversation is read alone, whatever the batch it lands in."""
    from sidlib.llm import head

    cfg = cfg_tiny()
    model, tok, _ = train.prepare_model(cfg, table, "cpu", "sdpa")
    data = train.encode_frame(conversations(table, 12), tok, cfg.llm)
    rows = [data[i] for i in range(len(data))]
    new = vocab.sid_token_ids(tok, table.scheme)
    assert len(head.length_batches([len(r["input_ids"]) for r in rows], 200)) > 1
    together = head.collect(model, rows, new, max_tokens=200, progress=False)
    alone = [head.collect(model, [r], new, max_tokens=10_000, progress=False) for r in rows]
    order = head.length_batches([len(r["input_ids"]) for r in rows], 10 ** 9)[0]  # collect's order
    expect_h = torch.cat([alone[i].h for i in order])
    assert torch.equal(together.label, torch.cat([alone[i].label for i in order]))
    assert torch.allclose(together.h, expect_h, atol=1e-4), (together.h - expect_h).abs().max()
    assert together.tokens == sum(len(r["input_ids"]) for r in rows)


def test_sid_rows_inside_spare_embedding_rows(table):
    """A model with more embedding rows than tokenizer tokens (Qwen3: 151,936 rows, 151,669
    tokens): the SID tokens take ids inside the existing rows; they are new rows all the same
    (stage 1 trains them), and the old vocabulary is the tokenizer's."""
    cfg = cfg_tiny()
    tok = base.load_tokenizer(cfg.llm)
    n_tok = len(tok)
    spare = len(table.scheme.tokens()) + 16
    model = base.tiny_model(cfg.llm, n_tok + spare)
    info = vocab.resize_and_init(model, tok, table.scheme, "mean")
    assert info["vocab_before"] == n_tok and info["embedding_rows"] == n_tok + spare  # no resize
    new = vocab.sid_token_ids(tok, table.scheme)
    assert min(new) == n_tok
    vocab.freeze_all_but_embeddings(model)
    hooks = train.mask_old_rows(model, new)
    ids = torch.tensor([[1, 2, new[0], new[5], new[-1]]])
    model(input_ids=ids, labels=ids).loss.backward()
    for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        moved = (w.grad.abs().sum(1) > 0).nonzero().flatten().tolist()
        assert moved and set(moved) <= set(new), "only the SID rows may get a gradient"
        assert w.grad[new[0]].abs().sum() > 0
    for h in hooks:
        h.remove()


def test_stages_read_different_batches_and_warmup_never_starts_at_zero():
    a, b = train.stage_order(500, 42, "stage1"), train.stage_order(500, 42, "stage2")
    assert sorted(a) == sorted(b) == list(range(500)) and a[:8] != b[:8]
    assert train.stage_order(500, 42, "stage2") == b  # seeded
    tasks = ["title_to_sid" if i % 10 == 0 else "seq_last_2" for i in range(500)]
    c = train.stage_order(500, 42, "stage1", tasks, first=["title_to_sid"])
    assert {tasks[i] for i in c[:50]} == {"title_to_sid"} and sorted(c) == list(range(500))
    # several first tasks: task by task, in the listed order (not mixed)
    tasks3 = ["title_to_sid" if i % 10 == 0 else "seq_session" if i % 10 == 1 else "seq_last_2" for i in range(500)]
    d = train.stage_order(500, 42, "stage1", tasks3, first=["title_to_sid", "seq_session"])
    assert [tasks3[i] for i in d[:100]] == ["title_to_sid"] * 50 + ["seq_session"] * 50
    ft = config.load("smoke").finetune
    plan = train.StagePlan("stage2", 1e-4, 20, 1.0, 0.0, 0.03)
    assert train.warmup_steps(plan, ft, 1000) == 0  # 0.6 of a step: none, not one step at LR 0
    plan.max_steps = 100
    assert train.warmup_steps(plan, ft, 1000) == 3


def test_labelled_logits_give_the_models_own_loss(table):
    cfg = cfg_tiny()
    tok = base.load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(tok, table.scheme)
    torch.manual_seed(0)
    model = base.tiny_model(cfg.llm, len(tok)).eval()
    data = train.encode_frame(conversations(table, 4), tok, cfg.llm)
    feats = [data[i] for i in range(len(data))]
    full = train.make_collator(tok, True, "sdpa")(feats)
    kept = train.make_collator(tok, True, "sdpa", labelled_only=True)(feats)
    with torch.no_grad():
        ref = model(**full, use_cache=False).loss
        labels = kept.pop("labels")
        out = model(**kept, use_cache=False)
    kept_rows = out.logits.reshape(-1, out.logits.shape[-1]).shape[0]  # [kept positions, vocab]
    assert kept_rows == int((labels[:, 1:] != chat.IGNORE).sum()) < full["input_ids"].shape[1] / 2
    assert torch.allclose(train.labelled_loss(out, labels), ref, atol=1e-5)


def test_freeze_lower_layers(table):
    cfg = cfg_tiny(**{"llm.tiny_layers": 3})
    tok = base.load_tokenizer(cfg.llm)
    model = base.tiny_model(cfg.llm, len(tok))
    vocab.untie_embeddings(model)  # as prepare_model does
    n = train.freeze_lower(model, 2)
    layers = model.get_decoder().layers
    assert not any(p.requires_grad for layer in layers[:2] for p in layer.parameters())
    assert all(p.requires_grad for p in layers[2].parameters())
    assert not model.get_input_embeddings().weight.requires_grad and model.lm_head.weight.requires_grad
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="freeze_layers=3"):
        train.freeze_lower(model, 3)


def test_auto_attention_per_device(monkeypatch):
    """attn=auto: flash-attention 2 on CUDA when it is installed, else flex attention (packed rows
    block-sparse), sdpa on the CPU; a set value is kept."""
    ft = config.load("smoke").finetune
    assert train.importable("torch") and not train.importable("no_such_module.sub")
    have = {"flash_attn": False, "torch.nn.attention.flex_attention": True}
    monkeypatch.setattr(train, "importable", lambda m: have.get(m, False))
    assert train.resolve_attn(ft, "cpu") == "sdpa"
    assert train.resolve_attn(ft, "cuda") == "flex_attention"
    have["flash_attn"] = True
    assert train.resolve_attn(ft, "cuda:0") == "flash_attention_2"
    have.update({"flash_attn": False, "torch.nn.attention.flex_attention": False})
    assert train.resolve_attn(ft, "cuda") == "sdpa"
    ft.attn = "eager"
    assert train.resolve_attn(ft, "cuda") == "eager"


def test_structure_rows_tell_the_trunk_where_in_a_sid_it_is(table):
    """finetune.structure: <|sid_start|>, <|sid_end|>, <|rec|> get distinct input rows ("[", "]",
    "recommend") and each level's code rows one shared level offset over the title init; the
    output rows are those of the plain init."""
    cfg = cfg_tiny()
    rows = {}
    for structure in (False, True):
        tok = base.load_tokenizer(cfg.llm)
        model = base.tiny_model(cfg.llm, len(tok))
        torch.manual_seed(0)
        with torch.no_grad():  # the same base rows for both inits
            model.get_input_embeddings().weight.normal_()
            model.get_output_embeddings().weight.normal_()
        vocab.resize_and_init(model, tok, table.scheme, "text", table.codes, table.df["title"].tolist(),
                              structure=structure)
        rows[structure] = (model.get_input_embeddings().weight.detach().clone(),
                           model.get_output_embeddings().weight.detach().clone())
    ids = vocab.sid_token_ids(tok, table.scheme)
    start, end, rec = ids[-3:]
    plain, marked = rows[False][0], rows[True][0]
    assert torch.equal(plain[start], plain[end]) and torch.equal(plain[end], plain[rec])  # one mean row
    assert not torch.allclose(marked[start], marked[end]) and not torch.allclose(marked[end], marked[rec])
    assert torch.equal(marked[start], plain[tok.convert_tokens_to_ids("[")])
    shift = marked[ids[: len(ids) - 3]] - plain[ids[: len(ids) - 3]]
    for level in range(table.scheme.levels):
        first, last = table.scheme.level_token_range(level)
        assert torch.allclose(shift[first:last + 1], shift[first].expand(last - first + 1, -1), atol=1e-5)
    assert not torch.allclose(shift[0], shift[table.scheme.level_token_range(1)[0]])  # levels differ
    assert torch.equal(rows[False][1], rows[True][1])  # output rows untouched
