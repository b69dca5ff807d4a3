"""What the server accepts and how it says no: the request bodies (pydantic, unknown fields
rejected) and OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# OpenAI request fields this server knows but cannot honour: named as unsupported (a client
# learns the field is real but not here) rather than as unknown
UNSUPPORTED = frozenset({
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "logprobs", "top_logprobs",
    "logit_bias", "response_format", "frequency_penalty", "presence_penalty", "audio", "modalities", "prediction",
    "reasoning_effort", "web_search_options", "store", "metadata", "service_tier", "verbosity",
})


class ApiError(Exception):
    """A request the server answers with an error: HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):  # noqa: A002 - OpenAI's field name
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------- requests


class _Strict(BaseModel):
    # a misspelt field ("max_token") would otherwise be ignored silently: say so instead
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """One part of a message's content as a list (the newer OpenAI form); text only."""

    type: Literal["text"]
    text: str


class Message(_Strict):
    # "developer" is OpenAI's newer name for the system turn; tool turns mean nothing to this model
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None  # accepted (OpenAI's participant name); the chat template has no place for it

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_turn(self) -> dict[str, str]:
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """POST /v1/chat/completions: OpenAI's fields that mean something here, plus `constrained`."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None  # OpenAI's newer name for max_tokens
    # 0 (or none given) = greedy, as the demo: the same question gets the same answer; > 0 samples
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: StrictInt = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    user: str | None = None  # OpenAI's end-user id: accepted, unused
    # sidlib: the SidConstraint and reply rules (every SID names an item; <|rec|> gets one);
    # the openai client sends it with extra_body={"constrained": False}
    constrained: bool = True

    def stop_strings(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or not all(stop):
            raise ApiError("stop: up to 4 non-empty strings", param="stop")
        return stop


class RecommendRequest(_Strict):
    """POST /v1/recommend: a history (oldest first) of item ids, SIDs or exact titles."""

    model: str | None = None
    # StrictInt: "12" stays a title and true is no item id
    history: list[StrictInt | str] = Field(min_length=1, max_length=10_000)
    k: StrictInt | None = None  # None = the profile's eval.rec_beam, the length 09 ranks
    exclude_seen: bool | None = None  # None = the profile's baselines.exclude_history, as 09 ranks


# --------------------------------------------------------------------------- validation errors -> OpenAI's shape

# pydantic names the member of a union it tried ("str", "list[TextPart]", "function-after[...]")
# inside an error's location: not a field a client wrote
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|[\w-]+\[.*\])$")


def param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """("body", "messages", 0, "role") -> "messages[0].role"."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TYPE_TAG.match(str(part)):
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first of pydantic's errors (and how many more) as one 400."""
    err = errors[0]
    loc = list(err.get("loc", ()))
    param = param_of(loc)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    kind = err.get("type", "")
    if kind == "json_invalid":
        why = (err.get("ctx") or {}).get("error", "")
        return ApiError(f"the request body is not valid JSON{': ' + why if why else ''}", code="invalid_json")
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        if name in UNSUPPORTED and len(loc) == 2:
            return ApiError(f"{name} is not supported by this server" + more, param=param,
                            code="unsupported_parameter")
        return ApiError(f"Unrecognized request argument supplied: {param}" + more, param=param,
                        code="unknown_parameter")
    if kind == "missing":
        what = f"{param} is required" if param else "a JSON request body is required"
        return ApiError(what + more, param=param, code="missing_required_parameter")
    where = param or "the request body"
    return ApiError(f"{where}: {err.get('msg', 'invalid')}" + more, param=param, code="invalid_value")
