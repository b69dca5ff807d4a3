"""Stage 1 on cached hidden states: fit the SID tokens' output rows on a frozen trunk.

`train_ids` below are the rows that train (08 passes the SID tokens and the end-of-turn token,
so the turn can end after a SID); every other row is fixed.

Stage 1 exists to give the new tokens rows the model can use before the whole model moves. On a
frozen trunk the output row of a token only ever meets the trunk's last hidden state h, so
instead of running the Trainer (forward + backward through every layer, at every step) we run
the trunk *once*, forward only, over a sample of 06's conversations, keep h at every position
that has a label, and fit the new rows there for many epochs in seconds:

    loss = logaddexp(lse_old, logsumexp(h @ W_new.T)) - logit(label)

where lse_old = logsumexp(h @ W_old.T) over the old (frozen) rows is computed once per position.
This is exact full-vocabulary cross-entropy with the old rows fixed, on the positions the SFT
loss uses: the rows of `<|sid_start|>` learn where a SID block opens (they start at the mean
row, i.e. at the average logit, where they never win), `<|sid_end|>` where it closes, and each
code row which hidden states it should win on (title -> level-1 code, prefix -> next code),
while positions labelled with ordinary words keep the new rows from stealing their
probability. On 2 CPU cores a forward pass costs ~1/4 of a training step per token and the fit
itself a few seconds, so stage 1 sees several times the conversations of a Trainer stage 1 in
the same time and is trained to convergence (docs/benchmarks.md).

What it cannot do: move the *input* rows (the trunk is frozen, so the hidden states are
computed with the input rows of the initialisation, `finetune.init`). Stage 2 trains those.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from .chat import IGNORE

log = logging.getLogger("sidlib.llm.head")


@dataclass
class CachedStates:
    """Per labelled position: the trunk's last hidden state, the label, and the log-sum-exp of
    the frozen rows' logits (with the label's logit when the label is a frozen row)."""

    h: torch.Tensor  # [n, hidden] float32
    label: torch.Tensor  # [n] token id
    lse_fixed: torch.Tensor  # [n] logsumexp over the rows that do not train
    max_fixed: torch.Tensor  # [n] the largest of those logits (accuracy: does a new row beat it)
    tokens: int  # tokens the trunk read (prompt + answer)
    seconds: float


def train_row_mask(vocab_rows: int, train_ids: list[int]) -> torch.Tensor:
    mask = torch.zeros(vocab_rows, dtype=torch.bool)
    mask[torch.as_tensor(train_ids, dtype=torch.long)] = True
    return mask


def length_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `max_tokens` padded tokens (one
    conversation at least): rows of one batch have nearly the same length, so padding costs
    little. Padded rows, not packed ones: on a CPU a packed row of thousands of tokens runs
    attention with a dense block mask, ~2x slower than the same conversations padded (a 2,500-token
    row of eight 312-token sessions: 27 s packed, 14 s padded, SmolLM2 on 2 cores)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


@torch.no_grad()
def collect(model: Any, dataset: Any, train_ids: list[int], max_tokens: int = 2048, progress: bool = True) -> CachedStates:
    """Forward-only pass of the trunk over `dataset` (input_ids / labels rows of
    sidlib.llm.train.encode_frame) in length-sorted, right-padded batches of <= `max_tokens`
    tokens. Causal attention alone is enough: a real token never sees the padding after it."""
    model.eval()
    trunk, head = model.get_decoder(), model.get_output_embeddings()
    dev = head.weight.device
    w = head.weight.detach()
    new = train_row_mask(w.shape[0], train_ids).to(dev)
    w_fixed = w[~new].float()
    hs, labels, lses, maxes = [], [], [], []
    tokens = 0
    t0 = time.perf_counter()
    rows_all = [dataset[i] for i in range(len(dataset))]
    batches = length_batches([len(r["input_ids"]) for r in rows_all], max_tokens)
    for batch in tqdm(batches, desc="08 stage 1: hidden states", disable=not progress, mininterval=5.0):
        rows = [rows_all[i] for i in batch]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        lab = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r["input_ids"])] = torch.as_tensor(r["input_ids"])
            lab[j, : len(r["labels"])] = torch.as_tensor(r["labels"])
            tokens += len(r["input_ids"])
        ids, lab = ids.to(dev), lab.to(dev)
        h = trunk(input_ids=ids, use_cache=False).last_hidden_state
        # position t predicts token t+1; padding and prompts carry IGNORE
        target = lab[:, 1:].reshape(-1)
        keep = torch.nonzero(target != IGNORE).flatten()
        hk = h[:, :-1].reshape(-1, h.shape[-1])[keep].float()
        lk = target[keep]
        logits = hk @ w_fixed.T
        lse = torch.logsumexp(logits, dim=1)
        # kept on the CPU: the fit is small (positions x hidden), the trunk may be on a GPU
        hs.append(hk.cpu())
        labels.append(lk.cpu())
        lses.append(lse.cpu())
        maxes.append(logits.max(1).values.cpu())
    return CachedStates(torch.cat(hs), torch.cat(labels), torch.cat(lses), torch.cat(maxes), tokens,
                        time.perf_counter() - t0)


def fixed_label_logits(model: Any, states: CachedStates, train_ids: list[int]) -> torch.Tensor:
    """[n] logit of the label for positions whose label is a frozen row (nan elsewhere)."""
    w = model.get_output_embeddings().weight.detach().float().cpu()
    new = train_row_mask(w.shape[0], train_ids)
    out = torch.full((len(states.label),), math.nan)
    fixed = ~new[states.label]
    out[fixed] = (states.h[fixed] * w[states.label[fixed]]).sum(1)
    return out


def fit_rows(model: Any, states: CachedStates, train_ids: list[int], epochs: int = 200, lr: float = 1e-2,
             batch_size: int = 4096, valid_share: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Fit the output rows of `train_ids` (all other rows fixed) on the cached positions with Adam;
    the epoch with the best held-out loss is kept. Returns the loss curve and the before/after
    losses and next-token accuracies (on the new-token positions)."""
    head = model.get_output_embeddings()
    new_t = torch.as_tensor(train_ids, dtype=torch.long)
    w_new = head.weight.detach()[new_t.to(head.weight.device)].float().cpu().clone().requires_grad_(True)
    col = torch.full((head.weight.shape[0],), -1, dtype=torch.long)
    col[new_t] = torch.arange(len(new_t))
    label_col = col[states.label]  # -1: the label is a fixed row
    fixed_logit = fixed_label_logits(model, states, train_ids)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(states.label), generator=g)
    n_valid = int(len(perm) * valid_share) if len(perm) >= 20 else 0
    valid, train = perm[:n_valid], perm[n_valid:]

    def loss_of(idx: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = states.h[idx], label_col[idx]
        z = h @ w.T  # [b, n_new]
        lse = torch.logaddexp(states.lse_fixed[idx], torch.logsumexp(z, 1))
        is_new = c >= 0
        target = torch.where(is_new, z.gather(1, c.clamp(min=0)[:, None])[:, 0], fixed_logit[idx].nan_to_num(0.0))
        # right at a new-token position: its row is the best of all, new and fixed
        return lse - target, is_new & (z.argmax(1) == c) & (z.max(1).values > states.max_fixed[idx])

    def evaluate(idx: torch.Tensor) -> dict[str, float]:
        if len(idx) == 0:
            return {}
        with torch.no_grad():
            loss, hit = loss_of(idx, w_new)
        is_new = label_col[idx] >= 0
        return {"loss": float(loss.mean()), "new_loss": float(loss[is_new].mean()) if is_new.any() else math.nan,
                "new_accuracy": float(hit[is_new].float().mean()) if is_new.any() else math.nan}

    before = evaluate(valid if n_valid else train)
    opt = torch.optim.Adam([w_new], lr=lr)
    curve: list[dict[str, float]] = []
    best, best_w, best_epoch = math.inf, w_new.detach().clone(), 0
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = train[torch.randperm(len(train), generator=g)]
        total = 0.0
        for a in range(0, len(order), batch_size):
            idx = order[a: a + batch_size]
            loss, _ = loss_of(idx, w_new)
            loss = loss.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        row = {"epoch": epoch, "train_loss": total / max(len(order), 1)}
        if n_valid:
            row.update({f"valid_{k}": v for k, v in evaluate(valid).items()})
            score = row["valid_loss"]
        else:
            score = row["train_loss"]
        curve.append(row)
        if score < best:
            best, best_w, best_epoch = score, w_new.detach().clone(), epoch
    with torch.no_grad():
        w_new.copy_(best_w)
        head.weight[new_t.to(head.weight.device)] = best_w.to(head.weight.device, head.weight.dtype)
    after = evaluate(valid if n_valid else train)
    return {"positions": int(len(states.label)), "new_positions": int((label_col >= 0).sum()),
            "epochs": epochs, "best_epoch": best_epoch, "fit_seconds": round(time.perf_counter() - t0, 1),
            "before": before, "after": after, "curve": curve}


def stage1_cached(model: Any, dataset: Any, train_ids: list[int], epochs: int, lr: float, max_tokens: int,
                  seed: int, progress: bool = True) -> dict[str, Any]:
    """Collect the hidden states of `dataset` and fit the new output rows on them."""
    states = collect(model, dataset, train_ids, max_tokens, progress)
    log.info("stage 1: %d labelled positions from %d tokens in %.1f s (%.0f tokens/s)", len(states.label),
             states.tokens, states.seconds, states.tokens / max(states.seconds, 1e-9))
    res = fit_rows(model, states, train_ids, epochs=epochs, lr=lr, seed=seed)
    log.info("stage 1: held-out loss %.3f -> %.3f, next SID token accuracy %.3f -> %.3f (best epoch %d)",
             res["before"].get("loss", math.nan), res["after"].get("loss", math.nan),
             res["before"].get("new_accuracy", math.nan), res["after"].get("new_accuracy", math.nan), res["best_epoch"])
    return {**res, "tokens": states.tokens, "collect_seconds": round(states.seconds, 1),
            "tokens_per_second": round(states.tokens / max(states.seconds, 1e-9), 1)}

