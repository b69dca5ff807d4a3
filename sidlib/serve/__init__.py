"""`python -m sidlib serve`: the fine-tuned model over HTTP, in OpenAI's shapes.

    python -m sidlib serve --profile ml100k [--model-dir D] [--host 127.0.0.1] [--port 8000]

- `POST /v1/chat/completions`: OpenAI's chat completion (stream or not). The reply's content is
  what the model wrote, SID tokens included; each choice also lists the `items` it names
  (`match`: "exact", "prefix" = the nearest item by leading codes, "none"). The SID constraint
  is on unless the request says `"constrained": false`; a last user message with `<|rec|>` is
  answered with at least one item (the demo's `Chat`, through the same `generate_reply`).
- `POST /v1/recommend`: {history: item ids, SIDs or exact titles, k, exclude_seen} -> ranked
  items, by the constrained beam search 09 ranks with (`Chat.recommend`).
- `GET /v1/models`, `GET /health`.

One request generates at a time (`engine`), the rest wait in order; every refusal is a 4xx in
OpenAI's error shape (`schemas`). `app` holds the routes and runs uvicorn.
"""
from __future__ import annotations

from .app import ServerThread, build_app, serve
from .engine import Engine, Limits
from .schemas import ApiError, ChatRequest, RecommendRequest

__all__ = ["ApiError", "ChatRequest", "Engine", "Limits", "RecommendRequest", "ServerThread", "build_app", "serve"]
