"""`python -m sidlib serve`: one server on the smoke chain's fine-tuned model (06 + 08 shrunk, as
test_eval's chain test), talked to with the official openai client and plain HTTP. The smoke
model is a random tiny Llama: these tests check mechanics (shapes, fields, the constraint, the
queue, the refusals), never the quality of an answer."""
from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai  # the dev extra installs it: a missing client is a failure here, not a skip
import pytest

from sidlib import config, runner
from sidlib.serve import Engine, ServerThread, build_app

FAST = {"sft.max_per_task": 16, "sft.valid_per_task": 2, "finetune.stage1_steps": 1,
        "finetune.stage2_max_steps": 1, "finetune.max_train_samples": 16, "eval.max_new_tokens": 24}
REC_ASK = "I like Comedy movies. <|rec|>"


@pytest.fixture(scope="module")
def served(smoke_artifacts, tmp_path_factory):
    """(server, engine): smoke's 06 and 08 run once, shrunk, on a copy of the session's 01-05;
    the model loaded once and served on a free port for every test of this file."""
    root = tmp_path_factory.mktemp("serve")
    shutil.copytree(smoke_artifacts / "smoke", root / "artifacts" / "smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDLIB_ARTIFACTS", str(root / "artifacts"))
        mp.setenv("SIDLIB_RUNS", str(root / "runs"))
        lines: list[str] = []
        assert runner.run("smoke", "06", FAST, echo=lines.append) == 0, "\n".join(lines)
        assert runner.run("smoke", "08", FAST, echo=lines.append) == 0, "\n".join(lines)
        engine = Engine.load(config.load("smoke", FAST))
        try:
            with ServerThread(build_app(engine)) as srv:
                yield srv, engine
        finally:
            engine.close()


@pytest.fixture(scope="module")
def client(served):
    srv, _ = served
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(served):
    srv, _ = served
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        yield c


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sids_exist(text: str, table) -> bool:
    """Every SID block of `text` is well formed and names an existing item."""
    found = table.scheme.find_all(text)
    return all(codes is not None and table.item_of(codes) is not None for _span, codes in found)


# --------------------------------------------------------------------------- the OpenAI side


def test_models_and_health(served, client, http):
    _, engine = served
    assert [m.id for m in client.models.list().data] == ["smoke"]
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "smoke" and health["items"] == len(engine.table)


def test_chat_through_the_openai_client(served, client):
    _, engine = served
    out = client.chat.completions.create(model="smoke", messages=ask(REC_ASK), max_tokens=12)
    assert out.object == "chat.completion" and out.model == "smoke" and len(out.choices) == 1
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0 and 0 < out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # <|rec|> under the constraint: at least one existing item, every SID an item, listed in `items`
    raw = choice.message.content
    items = choice.model_extra["items"]
    assert items and sids_exist(raw, engine.table)
    assert [i["sid"] for i in items] == [raw[a:b] for (a, b), _c in engine.table.scheme.find_all(raw)]
    for i in items:
        assert i["match"] == "exact" and engine.table.sid_of(i["item_id"]) == i["sid"]
        assert i["title"] == engine.table.df["title"].iat[i["item_id"]]
    assert choice.model_extra["constrained"] is True
    # the raw response holds the same body
    resp = client.chat.completions.with_raw_response.create(model="smoke", messages=ask(REC_ASK), max_tokens=12)
    assert resp.http_response.json()["choices"][0]["items"] == items  # greedy: the same reply


def test_the_constraint_holds_and_can_be_switched_off(served, client):
    _, engine = served
    for seed in range(4):  # sampled replies wander; under the constraint every SID still names an item
        out = client.chat.completions.create(model="smoke", messages=ask("What should I watch tonight?"),
                                             temperature=1.5, seed=seed, max_tokens=24)
        assert sids_exist(out.choices[0].message.content, engine.table)
        again = client.chat.completions.create(model="smoke", messages=ask("What should I watch tonight?"),
                                               temperature=1.5, seed=seed, max_tokens=24)
        assert again.choices[0].message.content == out.choices[0].message.content  # a seed repeats
    free = client.chat.completions.create(model="smoke", messages=ask(REC_ASK), max_tokens=16,
                                          extra_body={"constrained": False})
    extra = free.choices[0].model_extra
    assert extra["constrained"] is False and extra["assisted"] is False
    assert all(i["match"] in ("exact", "prefix", "none") for i in extra["items"])


def test_a_conversation_with_system_and_earlier_turns(client):
    out = client.chat.completions.create(model="smoke", max_tokens=10, messages=[
        {"role": "developer", "content": "Items are written as semantic IDs."},
        {"role": "user", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "assistant", "content": "Hello! What do you like?"},
        {"role": "user", "content": REC_ASK}])
    assert out.choices[0].model_extra["items"]


def stream_text(client, **kw) -> tuple[str, list, str, object]:
    """(concatenated content, the last choice's items, finish_reason, usage) of a streamed reply."""
    parts, items, finish, usage = [], None, None, None
    for chunk in client.chat.completions.create(model="smoke", stream=True, **kw):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        parts.append(c.delta.content or "")
        if c.finish_reason is not None:
            finish, items = c.finish_reason, c.model_extra["items"]
    return "".join(parts), items, finish, usage


@pytest.mark.parametrize("kw", [
    dict(messages=ask(REC_ASK), max_tokens=12),
    dict(messages=ask("Tell me about a movie."), max_tokens=30, extra_body={"constrained": False}),
    # sampled free text (spaces, characters split over byte tokens): a seed makes it repeatable
    dict(messages=ask("Tell me about a movie."), max_tokens=40, temperature=1.3, seed=7,
         extra_body={"constrained": False}),
])
def test_streaming_concatenates_to_the_reply(client, kw):
    whole = client.chat.completions.create(model="smoke", **kw)
    text, items, finish, usage = stream_text(client, stream_options={"include_usage": True}, **kw)
    assert text == whole.choices[0].message.content
    assert items == whole.choices[0].model_extra["items"] and finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_sse_lines_end_with_done(http):
    with http.stream("POST", "/v1/chat/completions", json={"messages": ask(REC_ASK), "stream": True,
                                                           "max_tokens": 8}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_stop_strings_cut_the_reply(client):
    kw = dict(messages=ask("Tell me about a movie."), max_tokens=40, temperature=1.3, seed=3,
              extra_body={"constrained": False})
    full = client.chat.completions.create(model="smoke", **kw).choices[0].message.content
    words = full.split()
    assert len(words) > 4, full
    stop = words[len(words) // 2]
    cut = client.chat.completions.create(model="smoke", stop=[stop], **kw).choices[0]
    assert cut.message.content == full[: full.find(stop)].strip() and cut.finish_reason == "stop"
    text, _items, finish, _u = stream_text(client, stop=[stop], **kw)
    assert text == cut.message.content and finish == "stop"


# --------------------------------------------------------------------------- recommend


def test_recommend_ranks_as_chat_recommend(served, http):
    _, engine = served
    table = engine.table
    titles = table.df["title"].astype(str)
    unique = next(t for t in titles if (titles == t).sum() == 1)
    history = [3, table.sid_of(10), unique]
    ids = [3, 10, int(titles[titles == unique].index[0])]
    for exclude in (None, False, True):
        body = {"history": history, "k": 7} | ({} if exclude is None else {"exclude_seen": exclude})
        r = http.post("/v1/recommend", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        ban = engine.cfg.baselines.exclude_history if exclude is None else exclude
        assert got["history"] == ids and got["k"] == 7 and got["exclude_seen"] == ban
        # the very function 09 and the demo rank with, run on the server's worker thread
        want = engine.pool.submit(engine.chat.recommend, ids, 7, ban).result()
        assert got["items"] == want.to_dict("records")
        assert [i["rank"] for i in got["items"]] == list(range(1, 8))
        if ban:
            assert not {i["item_id"] for i in got["items"]} & set(ids)
    default_k = http.post("/v1/recommend", json={"history": [3]}).json()["k"]
    assert default_k == engine.cfg.eval.rec_beam


# --------------------------------------------------------------------------- refusals


def _ambiguous_title(table) -> str:
    counts = table.df["title"].astype(str).value_counts()
    return str(counts.index[0]) if counts.iloc[0] > 1 else ""


CHAT_BAD = {
    "malformed JSON": (b'{"messages": [', "not valid JSON", None),
    "not an object": (b"[1, 2]", "dictionary", None),
    "no body": (b"", "required", None),
    "unknown field": ({"messages": ask("hi"), "max_token": 5}, "Unrecognized request argument supplied: max_token",
                      "max_token"),
    "unsupported field": ({"messages": ask("hi"), "tools": []}, "tools is not supported", "tools"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, "'user'", "messages[0].role"),
    "tool role": ({"messages": [{"role": "tool", "content": "hi"}]}, "'assistant'", "messages[0].role"),
    "empty messages": ({"messages": []}, "at least 1", "messages"),
    "no messages": ({"model": "smoke"}, "messages is required", "messages"),
    "content not text": ({"messages": [{"role": "user", "content": 5}]}, "valid string", "messages[0].content"),
    "n=2": ({"messages": ask("hi"), "n": 2}, "n=1", "n"),
    "max_tokens absurd": ({"messages": ask("hi"), "max_tokens": 10**9}, "too large", "max_tokens"),
    "max_tokens zero": ({"messages": ask("hi"), "max_completion_tokens": 0}, "at least 1", "max_completion_tokens"),
    "temperature": ({"messages": ask("hi"), "temperature": 7}, "less than or equal to 2", "temperature"),
    "stop empty": ({"messages": ask("hi"), "stop": [""]}, "non-empty", "stop"),
    "prompt too long": ({"messages": ask("movie " * 2000)}, "maximum context length is 384", "messages"),
    "prompt + reply too long": ({"messages": ask("movie " * 300), "max_tokens": 200}, "+ 200 for the reply",
                                "messages"),
}


@pytest.mark.parametrize("case", list(CHAT_BAD))
def test_bad_chat_requests_are_400s_in_openais_shape(http, case):
    body, says, param = CHAT_BAD[case]
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = http.post("/v1/chat/completions", **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert says in err["message"] and err["param"] == param
    if case.startswith("prompt"):
        assert err["code"] == "context_length_exceeded"
    # the stream form is refused the same way, before any event
    if isinstance(body, dict) and "messages" in body:
        assert http.post("/v1/chat/completions", json=body | {"stream": True}).status_code == 400
    assert http.get("/health").status_code == 200  # and the server goes on


def test_the_openai_client_sees_the_refusal(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smoke", messages=ask("hi"), n=3)
    assert "n=3" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=ask("hi"))


def test_bad_recommend_requests_say_which_entry(served, http):
    _, engine = served
    n = len(engine.table)
    bad_sid = engine.table.scheme.format([0] * engine.table.scheme.levels)
    assert engine.table.item_of(bad_sid) is None or pytest.skip("code 0,0,0,0 is an item here")
    cases = [
        ({"history": [1, n + 5, "No Such Movie (1999)", bad_sid, "<|sid_start|><|sid_1|><|sid_end|>"]},
         [f"history[1]: no item {n + 5}", "history[2]: no item has the title 'No Such Movie (1999)'",
          f"history[3]: no item has the SID {bad_sid}", "history[4]: SID", "wrong level count"], "history"),
        ({"history": [1], "k": 0}, ["k=0", f"1..{n}"], "k"),
        ({"history": [1], "k": n + 1}, [f"k={n + 1}"], "k"),
        ({"history": []}, ["at least 1"], "history"),
        ({"history": [1.5]}, ["valid integer"], "history[0]"),
        ({"history": [True]}, ["valid integer"], "history[0]"),
        ({"history": [1], "users": 3}, ["Unrecognized request argument supplied: users"], "users"),
    ]
    twice = _ambiguous_title(engine.table)
    if twice:
        cases.append(({"history": [twice]}, [f"the title {twice!r} names"], "history"))
    for body, says, param in cases:
        r = http.post("/v1/recommend", json=body)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and all(s in err["message"] for s in says), (body, err)
    assert http.post("/v1/recommend", json={"history": [1], "k": 3}).status_code == 200


def test_unknown_paths_and_methods_in_openais_shape(http):
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert http.get("/v1/chat/completions").status_code == 405


# --------------------------------------------------------------------------- limits and the queue


def test_time_limit_cuts_a_reply_and_a_long_wait(served, http):
    _, engine = served
    long_reply = {"messages": ask("Tell me everything."), "max_tokens": 300, "temperature": 1.3, "seed": 1,
                  "constrained": False}
    full = http.post("/v1/chat/completions", json=long_reply).json()
    if full["choices"][0]["finish_reason"] != "length":
        pytest.skip("this model ended the sampled reply on its own")
    old = engine.limits.request_timeout
    engine.limits.request_timeout = 0.4
    try:
        t = time.monotonic()
        cut = http.post("/v1/chat/completions", json=long_reply).json()
        assert time.monotonic() - t < 0.4 + 2.0
        assert cut["choices"][0]["finish_reason"] == "length"
        assert cut["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]
        shown = cut["choices"][0]["message"]["content"].rstrip("\ufffd").strip()  # a character may be cut
        assert full["choices"][0]["message"]["content"].startswith(shown)
        # a whole-catalogue recommendation holds the worker for longer than the limit: a chat
        # request behind it waits out its time in the queue and is turned away (503), not run
        with ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            first = pool.submit(http.post, "/v1/recommend", json={"history": [1], "k": len(engine.table)})
            time.sleep(0.1)
            late = http.post("/v1/chat/completions", json={"messages": ask("hi")})
            assert first.result().status_code == 200
            held = time.monotonic() - t0
        if late.status_code == 200 and held < 0.1 + 0.4 + 0.2:
            pytest.skip(f"the whole-catalogue recommendation took only {held:.2f} s here: no queue to time out")
        assert late.status_code == 503 and late.json()["error"]["code"] == "queue_timeout"
    finally:
        engine.limits.request_timeout = old
    assert http.post("/v1/chat/completions", json={"messages": ask("hi"), "max_tokens": 4}).status_code == 200


def test_concurrent_requests_are_queued_not_mixed(served):
    srv, _ = served
    chats = [{"messages": ask(q), "max_tokens": 16} for q in (REC_ASK, "Hello!", "Something older, please.")]
    chats.append({"messages": ask("Tell me about a movie."), "max_tokens": 20, "temperature": 1.3, "seed": 5,
                  "constrained": False})
    recs = [{"history": h, "k": 5} for h in ([1, 2, 3], [40], [7, 8])]
    jobs = [("/v1/chat/completions", b) for b in chats] + [("/v1/recommend", b) for b in recs]

    def post(job):
        path, body = job
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            return c.post(path, json=body)

    def answer(path, r):
        assert r.status_code == 200, r.text
        j = r.json()
        return j["choices"][0]["message"]["content"] if path.endswith("completions") else j["items"]

    alone = [answer(p, post((p, b))) for p, b in jobs]
    burst = jobs * 2  # 14 at once
    with ThreadPoolExecutor(len(burst)) as pool:
        together = list(pool.map(post, burst))
    assert [answer(p, r) for (p, _b), r in zip(burst, together)] == alone * 2
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/health").json()["queued"] == 0


def test_a_server_stops_cleanly_and_finishes_what_it_runs(served):
    _, engine = served
    second = ServerThread(build_app(engine)).start()  # the same engine, a second server
    body = {"messages": ask("Tell me about a movie."), "max_tokens": 60, "constrained": False}
    got: dict = {}

    def call():
        with httpx.Client(base_url=second.url, timeout=120) as c:
            got["r"] = c.post("/v1/chat/completions", json=body)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the request is in
    second.stop()  # as SIGINT would: no new connections, the running reply finishes
    caller.join(60)
    assert got["r"].status_code == 200 and not second.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{second.url}/health", timeout=5)
