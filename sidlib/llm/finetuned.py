"""The fine-tuned SID chat model: where it is (this profile's 08 folder, `eval.model_dir`, any HF
folder or hub id), loaded with the SID table that gives its tokens their meaning. 09 and the
demo's Chat load it from here."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from .. import paths, stages
from ..config import Config
from ..device import resolve_device
from ..sids import SidTable
from . import base, vocab

log = logging.getLogger("sidlib.llm")



def model_folder(cfg: Config, model_dir: str = "") -> str:
    """The fine-tuned model to evaluate: `model_dir`, else eval.model_dir, else this profile's
    08 output. An error names the missing folder and the stage that makes it."""
    where = model_dir or cfg.eval.model_dir
    if where:
        p = paths.resolve_data_path(where)
        if p.exists():
            return str(p)
        if where.startswith(("/", ".", "~", "shared:")) or where.count("/") != 1:
            raise FileNotFoundError(f"no model folder at {p} (eval.model_dir / model_dir: an HF folder or a "
                                    "hub id such as owner/name)")
        return where  # owner/name: a hub id
    folder = stages.FINETUNE.dir(cfg.profile) / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no fine-tuned model at {folder}: run 08-finetune "
                                f"(python -m sidlib run --profile {cfg.profile} --stages 08)")
    return str(folder)


def sid_table_for(where: str, cfg: Config) -> SidTable:
    """The SID table that travels with a model (08 saves it beside the weights); a model without
    one (a hub id, another trainer's folder) uses this profile's 05-sids table."""
    folder = Path(where)
    if not folder.is_dir():
        try:
            folder = Path(snapshot_download(where, allow_patterns=list(SidTable.FILES.values())))
        except Exception as e:  # noqa: BLE001 - offline or not on the hub: fall back below
            log.info("no SID table downloadable for %s (%s)", where, e)
    if all((folder / f).exists() for f in SidTable.FILES.values()):
        return SidTable.load(folder)
    sid_dir = stages.SIDS.dir(cfg.profile)
    log.warning("%s has no SID table: using %s", where, sid_dir)
    return SidTable.load(sid_dir)


def load_finetuned(cfg: Config, model_dir: str = "") -> tuple[Any, Any, SidTable, str]:
    """(model, tokenizer, SID table, where it came from) of the fine-tuned model."""
    where = model_folder(cfg, model_dir)
    device = resolve_device(cfg.llm.device)
    tok = base.load_tokenizer(cfg.llm, source=where)
    model = base.load_model(cfg.llm, source=where, device=device, attn="sdpa").eval()
    table = sid_table_for(where, cfg)
    vocab.sid_token_ids(tok, table.scheme)  # a model without the SID tokens fails here, named
    return model, tok, table, where
