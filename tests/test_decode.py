"""Constrained decoding and SID rendering on a real SID table (Scientific titles -> codes) with
SmolLM2's real tokenizer; the model is the tiny random Llama (mechanics: whatever it prefers,
only existing items may come out)."""
from __future__ import annotations

import pytest
import torch

from sidlib import config
from sidlib.llm import base, decode, vocab
from sidlib.sids import SID_START


@pytest.fixture(scope="module")
def setup(scientific_sid_table):
    cfg = config.load("smoke")
    tok = base.load_tokenizer(cfg.llm)
    vocab.add_sid_tokens(tok, scientific_sid_table.scheme)
    torch.manual_seed(0)
    model = base.tiny_model(cfg.llm, len(tok)).eval()
    return tok, model, scientific_sid_table, decode.SidConstraint(tok, scientific_sid_table)


def sids_in(tok, table, ids) -> list:
    text = tok.decode(ids, skip_special_tokens=False)
    return [codes for _, codes in table.scheme.find_all(text)]


def prompt(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
def test_only_existing_items_come_out(setup, mode):
    tok, model, table, constraint = setup
    trie = table.trie()
    x = prompt(tok, f"Recommend a microscope: {SID_START}").repeat(3, 1)
    kw = {"greedy": dict(do_sample=False), "sample": dict(do_sample=True, top_k=0, temperature=1.5),
          "beam": dict(num_beams=8, num_return_sequences=8, do_sample=False)}[mode]
    torch.manual_seed(1)
    with torch.no_grad():
        free = model.generate(x, max_new_tokens=table.scheme.levels + 1, pad_token_id=tok.pad_token_id, **kw)
        out = model.generate(x, max_new_tokens=table.scheme.levels + 4, pad_token_id=tok.pad_token_id,
                             logits_processor=[constraint], **kw)
    # unconstrained, the random model does not write items; constrained, every row does
    assert not all(trie.is_item(c or []) for row in free for c in sids_in(tok, table, row[x.shape[1] - 1:]))
    for row in out:
        found = sids_in(tok, table, row[x.shape[1] - 1 :])
        assert found and found[0] is not None and trie.is_item(found[0]), tok.decode(row)
        # every block, not just the first: no stray code or <|sid_end|> in the text after it
        # (only the last block may be cut open by max_new_tokens)
        assert all(c is not None and trie.is_item(c) for c in found[:-1]), tok.decode(row)


def test_beam_results_sorted_and_distinct(setup):
    tok, model, table, constraint = setup
    x = prompt(tok, f"Items: {SID_START}")
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=table.scheme.levels + 1, num_beams=10, num_return_sequences=10,
                             do_sample=False, logits_processor=[constraint], output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    scores = out.sequences_scores.tolist()
    assert scores == sorted(scores, reverse=True)
    items = [table.trie().item_of(sids_in(tok, table, row[x.shape[1] - 1 :])[0]) for row in out.sequences]
    assert None not in items and len(set(items)) == 10


def test_free_text_untouched(setup):
    tok, model, table, constraint = setup
    scores = torch.randn(1, len(tok))
    block_only = torch.zeros(len(tok), dtype=torch.bool)
    block_only[constraint.block_only] = True
    assert int(block_only.sum()) == table.scheme.num_code_tokens + 1  # the codes and <|sid_end|>
    for text in ("Hello, please describe a good telescope for a beginner", f"I bought {table.sid_of(7)} and liked it"):
        out = constraint(prompt(tok, text), scores.clone())
        # no block open: every other token keeps its score (free text, <|sid_start|>, <|rec|>) ...
        assert torch.equal(out[0, ~block_only], scores[0, ~block_only])
        assert torch.isfinite(out[0, tok.convert_tokens_to_ids(SID_START)])
        # ... and a code or <|sid_end|> outside a block, a broken SID, cannot be written
        assert torch.isinf(out[0, block_only]).all()
    # inside a block after the full L codes: only <|sid_end|>
    full = table.sid_of(7)[: -len("<|sid_end|>")]
    masked = constraint(prompt(tok, full), scores.clone())
    assert torch.isfinite(masked).sum() == 1 and torch.isfinite(masked[0, constraint.end_id])


def test_allowed_codes_match_the_trie(setup):
    tok, _, table, constraint = setup
    codes = table.codes[42]
    for depth in range(table.scheme.levels):
        partial = SID_START + "".join(table.scheme.token(l, c) for l, c in enumerate(codes[:depth]))
        masked = constraint(prompt(tok, "x " + partial), torch.zeros(1, len(tok)))
        allowed = set(torch.nonzero(torch.isfinite(masked[0])).flatten().tolist())
        want = {tok.convert_tokens_to_ids(table.scheme.token(depth, c)) for c in table.trie().allowed(codes[:depth])}
        assert allowed == want


def test_render_titles_and_unknown(scientific_sid_table):
    table = scientific_sid_table
    t5 = table.df["title"].iat[5]
    assert decode.render(f"Try {table.sid_of(5)}!", table) == f"Try [{t5}]!"
    # a dedup code that no item of its 3-code prefix has: the title of the prefix's first item, marked
    codes = table.codes
    group = (codes[:, :-1] == codes[5, :-1]).all(1).sum()
    assert group < table.scheme.codebook_sizes[-1]
    unknown = [*codes[5, :-1], group]
    assert table.trie().item_of(unknown) is None
    assert decode.render(table.scheme.format(unknown), table).endswith("(L3 match)]")
    assert decode.render("<|sid_start|><|sid_1|><|sid_end|>", table) == "[unknown SID]"
    assert decode.render("no ids here", table) == "no ids here"
