"""Load on `python -m sidlib serve`: latency and throughput with 1, 4 and 16 clients at once.

    .venv/bin/python bench/serve_load.py [--profile smoke] [--url http://127.0.0.1:8000]
                                         [--clients 1,4,16] [--requests 6] [--max-tokens 16] [--k 10]

Starts the server in-process on the profile's 08 model (or talks to a running one at --url),
then for each client count runs that many clients together, each sending --requests requests
one after another in a fixed mix (chat, streamed chat, /v1/recommend), and stops by itself.
Every request must come back complete (200; a chat reply with its finish_reason, a stream ending
in [DONE], k ranked items): the script counts the answered ones and fails if any is lost. Prints
p50/p95 latency (and the stream's time to first content) and requests/s, and writes
artifacts/bench/serve_load.json. The server generates one request at a time, so more clients
wait longer at about the same requests/s: this measures the queue and the HTTP overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from sidlib import config, paths  # noqa: E402

KINDS = ("chat", "stream", "recommend")
PROMPTS = ("I like Comedy movies. <|rec|>", "What should I watch tonight?", "Something older, please. <|rec|>")


def one_request(c: httpx.Client, kind: str, i: int, n_items: int, max_tokens: int, k: int) -> dict[str, Any]:
    """Send one request; {kind, ok, latency_s, first_s (streams), why (when not ok)}."""
    t = time.perf_counter()
    first = None
    try:
        if kind == "recommend":
            rng = np.random.default_rng(i)
            hist = rng.choice(n_items, size=int(rng.integers(1, 8)), replace=False).tolist()
            r = c.post("/v1/recommend", json={"history": hist, "k": k})
            ok = r.status_code == 200 and len(r.json()["items"]) >= 1
        elif kind == "chat":
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": PROMPTS[i % 3]}],
                                                     "max_tokens": max_tokens})
            ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        else:
            body = {"messages": [{"role": "user", "content": PROMPTS[i % 3]}], "max_tokens": max_tokens,
                    "stream": True}
            events: list[Any] = []
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    ev = line[len("data: "):]
                    events.append(ev if ev == "[DONE]" else json.loads(ev))
                    if first is None and ev != "[DONE]" and events[-1]["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t  # the first piece of the reply
            ok = r.status_code == 200 and events[-1:] == ["[DONE]"] and len(events) > 1 \
                and events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
        why = "" if ok else f"HTTP {r.status_code}"
    except Exception as e:  # noqa: BLE001 - a lost request is counted, never a crash of the bench
        ok, why = False, f"{type(e).__name__}: {e}"
    return {"kind": kind, "ok": ok, "latency_s": time.perf_counter() - t, "first_s": first, "why": why}


def run_clients(url: str, clients: int, per_client: int, n_items: int, max_tokens: int, k: int) -> dict[str, Any]:
    """`clients` clients at once, each `per_client` requests in turn; every client starts on a
    different kind, so each moment holds a mix."""

    def client(cid: int) -> list[dict[str, Any]]:
        with httpx.Client(base_url=url, timeout=600) as c:
            return [one_request(c, KINDS[(cid + j) % len(KINDS)], cid * 1000 + j, n_items, max_tokens, k)
                    for j in range(per_client)]

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - t
    lat = np.array([r["latency_s"] for r in done]) * 1000
    row: dict[str, Any] = {"clients": clients, "sent": clients * per_client, "answered": sum(r["ok"] for r in done),
                           "wall_s": round(wall, 2), "req_per_s": round(len(done) / wall, 2),
                           "p50_ms": round(float(np.percentile(lat, 50))), "p95_ms": round(float(np.percentile(lat, 95)))}
    for kind in KINDS:
        ms = np.array([r["latency_s"] for r in done if r["kind"] == kind]) * 1000
        row[f"{kind}_p50_ms"] = round(float(np.percentile(ms, 50))) if len(ms) else None
    firsts = [r["first_s"] * 1000 for r in done if r["first_s"] is not None]
    row["stream_first_p50_ms"] = round(float(np.percentile(firsts, 50))) if firsts else None
    row["lost"] = [r["why"] for r in done if not r["ok"]]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke", help="whose 08 model to serve in-process (without --url)")
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--url", default="", help="a running server instead of one in-process")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)
    server = engine = None
    url = args.url.rstrip("/")
    t = time.perf_counter()
    if not url:
        from sidlib.serve import Engine, ServerThread, build_app

        engine = Engine.load(config.load(args.profile), args.model_dir)
        server = ServerThread(build_app(engine)).start()
        url = server.url
    load_s = time.perf_counter() - t
    try:
        health = httpx.get(f"{url}/health", timeout=30).json()
        n_items = int(health["items"])
        with httpx.Client(base_url=url, timeout=600) as c:  # warm-up: the first request pays one-time costs
            one_request(c, "chat", 0, n_items, args.max_tokens, args.k)
        rows = [run_clients(url, int(n), args.requests, n_items, args.max_tokens, args.k)
                for n in args.clients.split(",") if n.strip()]
    finally:
        if server is not None:
            server.stop()
            engine.close()
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "lost"} for r in rows])
    print(table.to_string(index=False))
    lost = [w for r in rows for w in r["lost"]]
    result = {"rows": rows, "model": health["model"], "items": n_items, "url": args.url or "in-process",
              "load_s": round(load_s, 1), "requests_per_client": args.requests, "max_tokens": args.max_tokens,
              "k": args.k, "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
              "torch_threads": __import__("torch").get_num_threads() if engine is not None else None}
    print("wrote", paths.write_bench("serve_load", result))
    if lost:
        print(f"{len(lost)} request(s) lost: {lost[:5]}", file=sys.stderr)
        sys.exit(1)
    print(f"every request answered ({sum(r['answered'] for r in rows)} of {sum(r['sent'] for r in rows)})")
    return result


if __name__ == "__main__":
    main()
