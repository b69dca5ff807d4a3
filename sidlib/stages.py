"""The stage contract: every stage of the chain, in order, and what it reads and writes.

One entry per stage: its name (the notebook's stem and its artifact folder), its summary.json key,
the profile sections its outputs depend on, the earlier stages it reads, the input paths outside
artifacts/ it reads, and the files it writes into its folder (what a later stage, a user or a test
may rely on). The runner, summary.json, the notebooks and every stage's `run()` take names and
folders from here. Adding a stage is one entry here plus its notebook (and a `run()` in sidlib).

    from sidlib import stages
    items = pd.read_parquet(stages.CLEAN.dir(cfg.profile) / "items.parquet")
    out = stages.SFT_DATA.dir(cfg.profile, create=True)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import paths


@dataclass(frozen=True)
class Stage:
    name: str  # notebook stem and artifact folder, e.g. "01-prep"
    key: str  # summary.json key
    sections: tuple[str, ...]  # config sections whose values the outputs depend on
    reads: tuple[str, ...] = ()  # earlier stages (names) whose outputs it reads
    external: tuple[str, ...] = ()  # config keys naming input files/folders outside artifacts/
    writes: tuple[str, ...] = ()  # files (or folders, ending in "/") it always leaves in its folder
    title: str = ""  # one line for docs/architecture.md and the CLI

    @property
    def number(self) -> int:
        return int(self.name.split("-")[0]) if self.name[0].isdigit() else 99

    @property
    def notebook(self) -> Path:
        nb = paths.NOTEBOOKS / f"{self.name}.ipynb"
        return nb if nb.exists() else paths.REPO / f"{self.name}.ipynb"  # demo.ipynb lives at the top

    def dir(self, profile: str, create: bool = False) -> Path:
        """artifacts/<profile>/<name>/; `create` for the stage that writes it, not for its readers."""
        return paths.stage_dir(profile, self.name, create=create)

    def missing(self, profile: str) -> list[str]:
        """The declared outputs (`writes`) that are not in the stage's folder."""
        d = self.dir(profile)
        return [w for w in self.writes if not (d / w.rstrip("/")).exists()]


PREP = Stage("01-prep", "prep", ("data",), external=("data.path", "data.items_file", "data.interactions_file"),
             writes=("items.parquet", "interactions.parquet", "sequences.parquet", "split.parquet",
                     "users.parquet", "pairs.parquet", "prep_report.json"),
             title="raw data -> items, chronological user sequences, k-core, leave-one-out split")
CLEAN = Stage("02-clean", "clean", ("clean",), (PREP.name,), writes=("items.parquet",),
              title="item text cleaning -> item_context")
EMBED = Stage("03-embed", "embed", ("embed",), (CLEAN.name,), writes=("embeddings.npy",),
              title="item text -> vectors")
RQVAE = Stage("04-rqvae", "rqvae", ("rqvae",), (EMBED.name,),
              writes=("codes.npy", "tokenizer.pt", "tokenizer.json", "quality.json"),
              title="vectors -> hierarchical codes (RQ-VAE or RQ-KMeans)")
SIDS = Stage("05-sids", "sids", ("sids",), (PREP.name, CLEAN.name, RQVAE.name), external=("sids.import_path",),
             writes=("sids.parquet", "sid_mapping.pt", "sid_manifest.json", "index.json"),
             title="codes + a uniqueness level -> one SID per item, its tokens")
SFT_DATA = Stage("06-sft-data", "sft_data", ("sft", "llm"), (PREP.name, CLEAN.name, SIDS.name),
                 writes=("train.parquet", "valid.parquet", "sft_report.json"),
                 title="multi-task chat conversations (text <-> SID, next item, co-purchase, steering)")
BASELINES = Stage("07-baselines", "baselines", ("baselines",), (PREP.name, SIDS.name),
                  writes=("reports.json", "test_ranks.parquet"),
                  title="SASRec, SID-SASRec, SID-GR on the same split")
FINETUNE = Stage("08-finetune", "finetune", ("finetune", "llm"), (CLEAN.name, SIDS.name, SFT_DATA.name),
                 writes=("model/", "finetune_report.json"),
                 title="the LLM: stage 1 (new token rows), stage 2 (the model)")
EVAL = Stage("09-eval", "eval", ("eval", "llm"), (PREP.name, SIDS.name, SFT_DATA.name, BASELINES.name, FINETUNE.name),
             writes=("tasks.csv", "comparison.csv", "predictions.jsonl", "eval_report.json"),
             title="every task, and one table of every model on the same test users")
# the demo reads eval.model_dir / eval.max_new_tokens too; 06 and 07 settings reach 09 through their outputs
DEMO = Stage("demo", "demo", ("llm", "eval"), (SIDS.name, FINETUNE.name), writes=("transcript.jsonl",),
             title="chat with the fine-tuned model, SIDs rendered as titles")

# The whole chain, in order. A stage whose notebook does not exist is left out of a run.
ALL: tuple[Stage, ...] = (PREP, CLEAN, EMBED, RQVAE, SIDS, SFT_DATA, BASELINES, FINETUNE, EVAL, DEMO)
KEYS: tuple[str, ...] = tuple(s.key for s in ALL)


def by_name(name: str) -> Stage:
    """The stage of a name ("05-sids") or summary key ("sids")."""
    for s in ALL:
        if name in (s.name, s.key):
            return s
    raise KeyError(f"no stage {name!r}; expected one of {', '.join(s.name for s in ALL)}")


def table_markdown() -> str:
    """The chain as a markdown table (docs/architecture.md holds this very text; a test keeps it so)."""
    rows = ["| stage | reads | settings | writes (in `artifacts/<profile>/<stage>/`) | what |",
            "|---|---|---|---|---|"]
    for s in ALL:
        reads = ", ".join(f"`{r}`" for r in s.reads) + (", " if s.reads and s.external else "")
        reads += ", ".join(f"`{e}`" for e in s.external) or ("" if s.reads else "-")
        rows.append(f"| `{s.name}` | {reads} | {', '.join(f'[{x}]' for x in s.sections)} | "
                    f"{', '.join(f'`{w}`' for w in s.writes)} | {s.title} |")
    return "\n".join(rows)
