"""The semantic-ID token scheme, owned here for the whole project (the seed's scheme).

An item's SID is L+1 codes: L from the tokenizer (RQ-VAE / RQ-KMeans) plus one dedup level
that makes every tuple unique. Level l has K_l codes; its tokens are `<|sid_{offset_l + c}|>`
with offset_l = K_0 + ... + K_{l-1} (equal K: `<|sid_{l*K + c}|>`, the seed's
`<|sid_{level*256+code}|>`). Three special tokens: `<|sid_start|>`, `<|sid_end|>` around every
SID and `<|rec|>` (a prompt asks for a recommendation).

    <|sid_start|><|sid_64|><|sid_313|><|sid_637|><|sid_768|><|sid_end|>

What lives here:
- `SidScheme`: token list, format / parse (strict, `SidFormatError` says what is wrong),
  `find_all` (SID blocks inside free text, malformed ones reported as None), manifest JSON.
- `add_dedup_level`: the extra level, index within the collision group (by item id, or by
  popularity with `sids.dedup_order`).
- `import_lcrec_index` (LC-Rec `index.json`) and `import_codes_table` (parquet / CSV),
  validated: every item covered, codes in range, tuples unique.
- `SidTable`: item_id, codes, sid, title; `save` writes `sids.parquet`, `sid_mapping.pt`
  (LongTensor [levels, items], column i = item i, the layout NVIDIA's SID-GR loads) and
  `sid_manifest.json`.
- `CodeTrie`: the one prefix trie of the items' codes, as dense per-level tensors: batched
  masks / steps for constrained decoding (beam search, the LLM's SidConstraint), and one-prefix
  lookups: allowed next codes, item lookup, longest known prefix (rendering SIDs that name no item).
"""
from __future__ import annotations

from .codes import (add_dedup_level, collision_stats, export_lcrec_index, import_codes_table, import_lcrec_index,
                    resolve_collisions)
from .scheme import (MANIFEST_FORMAT, REC, SID_END, SID_START, SPECIAL_TOKENS, TOKEN_RE, SidError, SidFormatError,
                     SidScheme)
from .stage import SidOutputs, build_table, run
from .table import SidTable
from .trie import CodeTrie

__all__ = ["MANIFEST_FORMAT", "REC", "SID_END", "SID_START", "SPECIAL_TOKENS", "TOKEN_RE", "CodeTrie", "SidError",
           "SidFormatError", "SidOutputs", "SidScheme", "SidTable", "add_dedup_level", "build_table",
           "collision_stats", "export_lcrec_index", "import_codes_table", "import_lcrec_index",
           "resolve_collisions", "run"]
