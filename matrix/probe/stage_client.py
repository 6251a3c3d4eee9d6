"""Client stage: each client SDK of the cell talks to the cell's server through a recording proxy
(:mod:`wire`); what the SDK returns is compared with what the server really sent, and what the
SDK put on the wire with what the case asked for. The wire is the reference: no goldens.

Job fields:

- ``client_target``: the server. A base URL (``http://127.0.0.1:8080``); or an engine name from
  :mod:`engines` started for the stage (``llama-cpp-server``: ``python -m llama_cpp.server`` on the
  model's GGUF); or a mapping ``{"base_url": ..., "model": ..., "api_key_env": ..., "name": ...}`` (``name``:
  what the user path's checks call the server, default ``server``) or
  ``{"engine": NAME, **engine options}``. Absent: the stage is ``skipped``. A target that does not
  come up is ``infra``; an engine whose package is missing ``skipped``.
- ``client_targets_more``: further servers of the cell, as ``client_target`` (:class:`TargetRecorder`).
- ``clients``: the client SDKs to run: ``openai`` (openai-python, any major), ``litellm`` (its
  ``openai/`` provider with ``api_base``), ``ollama`` (ollama-python, Ollama's native
  ``/api/chat``: ``skipped`` where the target has no ``GET /api/version``), ``raw-http`` (urllib:
  the control, it must always agree with the wire). Default ``["raw-http"]``. A client whose
  package is not installed is ``skipped``.
- ``client_cases``: ``[{id, messages, tools, tool_choice, params, max_tokens, modes, clients,
  stream_usage}]``; an entry that is only ``{id}`` takes messages and tools from ``job["cases"]``.
  Default: :data:`DEFAULT_CASES` (text, multi-turn, tools with ``tool_choice``, a tool result with
  ``tool_call_id``, typed content parts). ``modes``: ``once`` and/or ``stream`` (default both);
  ``stream_usage`` (default true) asks for ``stream_options: {include_usage: true}``.
- ``client_seed`` (0), ``client_max_tokens`` (8), ``limits.request_seconds`` (60),
  ``limits.server_start_seconds`` (120). Every request: temperature 0, the seed, max_tokens small.

Checks, one record per (case, check), check names ``<client>:<mode>:<what>``:

- ``request``: the request body the SDK put on the wire against the case's request (model,
  messages with tool calls, ``tool_call_id`` and content parts as the case has them, tools,
  tool_choice, sampling). A top-level parameter the case did not set: ``fail``, klass
  ``configuration-default`` (the parameter and its value in the detail); a dropped or changed
  field: ``fail``, klass ``protocol`` (the first difference, path and both values). An added
  parameter with an empty value (``tools: []``) sets nothing: it is only listed in ``added``.
- ``response`` (once): message content, tool calls (id, type, name, arguments), finish_reason and
  usage as the SDK returns them against the response JSON on the wire (klass ``protocol``).
- ``deltas`` (stream): the SDK's chunks as a program iterates them, accumulated by the OpenAI
  streaming rules (:func:`wire.accumulate`), against the accumulation of the recorded SSE events;
  for openai and raw-http also one chunk per event.
- ``accumulator`` (stream): the SDK's own accumulator (openai ``ChatCompletionStreamState``,
  litellm ``stream_chunk_builder``) against the accumulation of the recorded SSE events.
- ``agent`` (the forced cases, :data:`CONSTRAINED_CASES`: a required call, parallel calls, the
  second turn of a tool loop, a stop sequence the arguments contain, a JSON schema): what an agent
  needs from the wire (:func:`agent_diffs`); ``server:stream-vs-once`` once per such case: the
  streamed answer's calls against the non-streamed one's, byte for byte (:func:`stream_vs_once`).

An SDK that raises on a 2xx answer is ``fail`` klass ``crash``; a server that refuses the request
(4xx/5xx) with the SDK raising too is no record, only a fact with the server's words (not the
client's business); an SDK that hides an HTTP error, or sends no request at all, or several (retries), is
``protocol``. Facts: ``client.target``, per client ``version``, ``accumulator``, ``added``
(parameters it adds), ``skipped`` (the client did not run: a fact, not a record, unless no
client ran), ``skipped_checks`` (``"case check"`` -> why: a case the client's API cannot express,
a request the server refused); ``client.wire_notes`` (stream irregularities of the server).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Mapping

STAGE = "client"
CLIENTS = ("openai", "litellm", "ollama", "raw-http")
API_KEY = "sk-llmcompat-not-a-secret"
DEFAULT_MAX_TOKENS = 8
MODES = ("once", "stream")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
DEFAULT_CASES: list[dict] = [
    {"id": "client-text", "messages": [{"role": "user", "content": "Hello!"}]},
    {
        "id": "client-multi-turn",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
    },
    {
        "id": "client-tools",
        "tools": [WEATHER],
        "tool_choice": "auto",
        "messages": [{"role": "user", "content": "Weather in Paris and in Rome?"}],
    },
    {
        "id": "client-tool-result",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        ],
    },
    {
        "id": "client-content-parts",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world!"}]}
        ],
    },
]

# closed value sets: under a grammar, random weights would fill an open string until max_tokens
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}
FORCED_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city.", "parameters": CITY},
}
FORECAST = {
    "type": "json_schema",
    "json_schema": {
        "name": "forecast",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome"]},
                "temp_c": {"type": "integer", "enum": [20, 21]},
            },
            "required": ["city", "temp_c"],
            "additionalProperties": False,
        },
    },
}
FORCED_TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}, "h24": {"type": "boolean"}},
            "required": ["city", "h24"],
            "additionalProperties": False,
        },
    },
}
PREVIOUS_CALL_ID = "call_llmcompat_1"
CONSTRAINED_CASES: list[dict] = [
    {
        "id": "client-tool-required",
        "tools": [FORCED_TOOL],
        "tool_choice": "required",
        "max_tokens": 200,
        "agent": "tool-required",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    },
    {
        "id": "client-tool-parallel",
        "tools": [FORCED_TOOL, FORCED_TIME],
        "tool_choice": "required",
        "params": {"parallel_tool_calls": True},
        "max_tokens": 300,
        "agent": "tool-required",
        "messages": [{"role": "user", "content": "Weather and local time in Paris and in Rome?"}],
    },
    {
        # the loop's second turn: the call went out, its result came back (tool_call_id), call again
        "id": "client-tool-loop",
        "tools": [FORCED_TOOL, FORCED_TIME],
        "tool_choice": "required",
        "max_tokens": 200,
        "agent": "tool-required",
        "messages": [
            {"role": "user", "content": "Weather in Paris, then the local time there?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": PREVIOUS_CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": PREVIOUS_CALL_ID, "content": '{"temp_c": 21}'},
        ],
    },
    {
        # every call's arguments end in "}": a stop sequence must end the text, not the call
        "id": "client-tool-stop",
        "tools": [FORCED_TOOL],
        "tool_choice": "required",
        "params": {"stop": ["}"]},
        "max_tokens": 200,
        "agent": "tool-required",
        "messages": [{"role": "user", "content": "Weather in Rome?"}],
    },
    {
        "id": "client-json-schema",
        "params": {"response_format": FORECAST},
        "max_tokens": 200,
        "agent": "json-schema",
        "messages": [{"role": "user", "content": "Forecast for Paris as JSON."}],
    },
]
"""Forced tool-call and structured-output streams: random weights emit them only under constrained
decoding (llama-server's grammar for ``tool_choice: required`` and ``response_format``), so they
run where the target constrains (``job["client_constrained"]``, or a target engine in
:data:`CONSTRAINING_ENGINES`); elsewhere they are skipped with that reason (a fact)."""
CONSTRAINING_ENGINES = ("llama-server",)


REASONING_TAGS = ("<think>", "</think>", "<|channel|>analysis", "[THINK]")
"""Reasoning markup that must never reach ``content``: a server that does not split it off hands
an agent's user the model's thoughts."""


def agent_diffs(kind: str, case: dict, result: dict) -> list[str]:
    """What an agent would trip over in the server's answer (the wire): a required tool call not
    made (or cut by a stop sequence), a call of a tool that was not offered, arguments or content
    that are not the JSON the schema asks for, a call id reused from the conversation, reasoning
    markup in ``content``."""
    content = result.get("content")
    diffs = [
        f"reasoning markup {tag!r} in content: {_short(content)}"
        for tag in REASONING_TAGS
        if isinstance(content, str) and tag in content
    ][:1]
    if kind == "tool-required":
        calls, stops = result.get("tool_calls") or [], (case.get("params") or {}).get("stop")
        if not calls:
            finish, why = result.get("finish_reason"), ""
            if finish == "length":
                why = " before max_tokens ran out"
            elif finish == "stop" and stops:
                why = f" (a stop sequence of {stops} ended the answer)"
            return diffs + [f"tool_choice required, but no tool call{why} (content {_short(content)})"]
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in case["tools"]}
        earlier = {tc.get("id") for m in case["messages"] for tc in m.get("tool_calls") or []}
        for c in calls:
            name = c.get("name")
            if name not in schemas:
                diffs.append(f"a call of {name!r}, which is not among the tools offered ({', '.join(schemas)})")
                continue
            bad = _json_diffs(f"tool call {name!r} arguments", c.get("arguments"), schemas[name])
            if bad and stops:
                bad[-1] += f" (the request's stop sequences {stops}: one inside the arguments ended them)"
            diffs += bad
            if c.get("id") and c.get("id") in earlier:
                diffs.append(f"tool call id {c.get('id')!r} is reused from earlier in the conversation")
        return diffs
    if kind == "json-schema":
        schema = case["params"]["response_format"]["json_schema"]["schema"]
        return diffs + _json_diffs("content", content, schema)
    return diffs


def stream_vs_once(once: dict, streamed: dict) -> list[str]:
    """The streamed answer against the non-streamed one to the same greedy request (both as the
    wire carried them): tool-call names and arguments byte for byte, content and finish_reason."""
    diffs = []
    a, b = once.get("tool_calls") or [], streamed.get("tool_calls") or []
    if len(a) != len(b):
        diffs.append(f"{len(a)} tool calls in the answer, {len(b)} streamed")
    for i, (x, y) in enumerate(zip(a, b)):
        for key in ("name", "arguments"):
            if x.get(key) != y.get(key):
                diffs.append(f"tool call {i} {key}: answer {_short(x.get(key))}, streamed {_short(y.get(key))}")
    for key in ("content", "finish_reason"):
        if (once.get(key) or None) != (streamed.get(key) or None):
            diffs.append(f"{key}: answer {_short(once.get(key))}, streamed {_short(streamed.get(key))}")
    return diffs


def _json_diffs(what: str, text, schema: dict) -> list[str]:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError as exc:
        return [f"{what} are not JSON ({exc}): {_short(text)}"]
    if not isinstance(value, dict):
        return [f"{what} are not a JSON object: {_short(text)}"]
    missing = [k for k in schema.get("required", []) if k not in value]
    return [f"{what} lack the required {missing}: {_short(text)}"] if missing else []


class Skip(Exception):
    """This client or case cannot run here; the reason is the detail."""


class AccumulatorCrash:
    """The SDK's accumulator raised (the chunks themselves were read)."""

    def __init__(self, exc: BaseException, tb: str):
        self.exc = exc
        self.tb = tb


class Infra(Exception):
    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


# --------------------------------------------------------------------------- pure comparison


def same(a, b) -> bool:
    """JSON equality: numbers by value (0 == 0.0), booleans apart from numbers; in objects a null
    field equals an absent one."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a if a[k] is not None} | {k for k in b if b[k] is not None}
        return all(same(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _short(v, n: int = 160) -> str:
    s = json.dumps(v, ensure_ascii=False, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[:n] + "…"


def first_diff(want, got, path: str = "") -> str:
    """ "" when equal; else where the first difference is, with both sides."""
    if same(want, got):
        return ""
    if isinstance(want, dict) and isinstance(got, dict):
        # inside the body, a null field and an absent one mean the same (OpenAI's optional fields)
        for k in want:
            if k not in got:
                if want[k] is None:
                    continue
                return f"{path}.{k}: dropped (case {_short(want[k])})"
            d = first_diff(want[k], got[k], f"{path}.{k}")
            if d:
                return d
        for k in got:
            if k not in want and got[k] is not None:
                return f"{path}.{k}: added {_short(got[k])}"
        return ""
    if isinstance(want, list) and isinstance(got, list):
        for i, (w, g) in enumerate(zip(want, got)):
            d = first_diff(w, g, f"{path}[{i}]")
            if d:
                return d
        return f"{path}: {len(want)} entries in the case, {len(got)} on the wire"
    return f"{path or '.'}: case {_short(want)}, wire {_short(got)}"


def request_diff(want: dict, got) -> tuple[list[str], dict]:
    """(protocol differences, added top-level parameters) between the case's request and the wire's."""
    if not isinstance(got, dict):
        return [f"the request body on the wire is not a JSON object: {_short(got)}"], {}
    added = {k: got[k] for k in got if k not in want}
    changed = [
        d
        for k in want
        for d in [first_diff(want[k], got[k], k) if k in got else f"{k}: dropped (case {_short(want[k])})"]
        if d
    ]
    return changed, added


def message_of(resp) -> dict:
    """Choice 0 of a (non-streamed) chat completion, SDK object or wire JSON, in one shape."""
    from wire import _get, usage_of

    choices = _get(resp, "choices") or []
    choice = choices[0] if choices else None
    msg = _get(choice, "message")
    calls = []
    for i, tc in enumerate(_get(msg, "tool_calls") or []):
        fn = _get(tc, "function")
        calls.append(
            {
                "index": i,
                "id": _get(tc, "id"),
                "type": _get(tc, "type"),
                "name": _get(fn, "name"),
                "arguments": _get(fn, "arguments"),
            }
        )
    reasoning = _get(msg, "reasoning_content", None)
    if reasoning is None:
        reasoning = _get(msg, "reasoning", None)
    return {
        "content": _get(msg, "content"),
        "reasoning": reasoning if isinstance(reasoning, str) else None,
        "tool_calls": calls,
        "finish_reason": _get(choice, "finish_reason"),
        "usage": usage_of(_get(resp, "usage")),
    }


def ollama_message_of(parts) -> dict:
    """Ollama ``/api/chat`` answers (one JSON, or the NDJSON lines of a stream; SDK objects or
    dicts) in the same shape as :func:`message_of`. Ollama sends arguments as objects: they are
    compared as canonical JSON."""
    from wire import _get

    content, reasoning, finish, usage = None, None, None, None
    calls: list[dict] = []
    for part in parts:
        msg = _get(part, "message")
        piece = _get(msg, "content")
        if isinstance(piece, str):
            content = (content or "") + piece
        piece = _get(msg, "thinking")
        if isinstance(piece, str) and piece:
            reasoning = (reasoning or "") + piece
        for tc in _get(msg, "tool_calls") or []:
            fn = _get(tc, "function")
            args = _get(fn, "arguments")
            calls.append(
                {
                    "index": len(calls),
                    "id": None,
                    "type": None,
                    "name": _get(fn, "name"),
                    "arguments": json.dumps(dict(args) if args is not None else None, sort_keys=True),
                }
            )
        if _get(part, "done"):
            finish = _get(part, "done_reason")
            usage = {
                "prompt_tokens": _get(part, "prompt_eval_count"),
                "completion_tokens": _get(part, "eval_count"),
                "total_tokens": None,
            }
    return {"content": content, "reasoning": reasoning, "tool_calls": calls, "finish_reason": finish, "usage": usage}


CALL_FIELDS = ("id", "type", "name", "arguments")


def result_diff(wire: dict, sdk: dict, *, loose_empty: bool = False, index: bool = False) -> list[str]:
    """What the SDK returns that the wire did not say. ``loose_empty``: None and "" content are
    the same (accumulators differ on it, programs rarely do)."""
    diffs = []
    for key in ("content", "reasoning"):
        w, s = wire.get(key), sdk.get(key)
        if loose_empty:
            w, s = w or None, s or None
        if key == "reasoning" and w is None and s is None:
            continue
        if w != s:
            from probe import first_divergence

            if isinstance(w, str) and isinstance(s, str):
                diffs.append(f"{key}: {first_divergence(w, s)}")
            else:
                diffs.append(f"{key}: wire {_short(w)}, SDK {_short(s)}")
    wc, sc = wire.get("tool_calls") or [], sdk.get("tool_calls") or []
    if len(wc) != len(sc):
        diffs.append(
            f"tool_calls: {len(wc)} on the wire, {len(sc)} from the SDK: wire "
            f"{_short([[c.get(f) for f in CALL_FIELDS] for c in wc], 300)}, SDK "
            f"{_short([[c.get(f) for f in CALL_FIELDS] for c in sc], 300)}"
        )
    fields = CALL_FIELDS + (("index",) if index else ())
    for i, (w, s) in enumerate(zip(wc, sc)):
        for f in fields:
            if w.get(f) is not None and w.get(f) != s.get(f):
                diffs.append(f"tool_calls[{i}].{f}: wire {_short(w.get(f))}, SDK {_short(s.get(f))}")
    if wire.get("finish_reason") != sdk.get("finish_reason"):
        diffs.append(f"finish_reason: wire {wire.get('finish_reason')!r}, SDK {sdk.get('finish_reason')!r}")
    wu, su = wire.get("usage"), sdk.get("usage")
    if wu is None and su is not None and any(v for v in su.values()):
        diffs.append(f"usage: the server sent none, the SDK reports {_short(su)}")
    elif wu is not None:
        for k, v in wu.items():
            if v is not None and (su or {}).get(k) != v:
                diffs.append(f"usage.{k}: wire {v}, SDK {(su or {}).get(k)}")
    return diffs


# --------------------------------------------------------------------------- requests


def openai_messages(messages) -> list:
    """A case's messages as the OpenAI API takes them: tool-call arguments as JSON strings."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                tc = json.loads(json.dumps(tc))
                fn = tc.get("function") if isinstance(tc.get("function"), dict) else tc
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments", {}), ensure_ascii=False)
                tc.setdefault("type", "function")
                calls.append(tc)
            m["tool_calls"] = calls
        out.append(m)
    return out


def openai_request(case: dict, model: str | None, stream: bool, job: dict) -> dict:
    body = {
        "model": model or "model",
        "messages": openai_messages(case["messages"]),
        "temperature": 0,
        "seed": int(job.get("client_seed", 0)),
        "max_tokens": int(case.get("max_tokens") or job.get("client_max_tokens") or DEFAULT_MAX_TOKENS),
    }
    if case.get("tools"):
        body["tools"] = case["tools"]
    if case.get("tool_choice") is not None:
        body["tool_choice"] = case["tool_choice"]
    body.update(case.get("params") or {})
    if stream:
        body["stream"] = True
        if case.get("stream_usage", True):
            body["stream_options"] = {"include_usage": True}
    return body


def ollama_request(case: dict, model: str | None, stream: bool, job: dict) -> dict:
    msgs = []
    for m in case["messages"]:
        if not isinstance(m.get("content"), (str, type(None))):
            raise Skip("Ollama's chat API has no content parts (content must be a string)")
        om = {"role": m["role"]}
        if m.get("content") is not None:
            om["content"] = m["content"]
        if m.get("tool_calls"):
            om["tool_calls"] = []
            for tc in m["tool_calls"]:
                fn = tc.get("function", tc)
                args = fn.get("arguments", {})
                om["tool_calls"].append(
                    {"function": {"name": fn["name"], "arguments": json.loads(args) if isinstance(args, str) else args}}
                )
        if m["role"] == "tool" and m.get("name"):
            om["tool_name"] = m["name"]
        msgs.append(om)
    body = {
        "model": model or "model",
        "messages": msgs,
        "stream": stream,
        "options": {
            "temperature": 0,
            "seed": int(job.get("client_seed", 0)),
            "num_predict": int(case.get("max_tokens") or job.get("client_max_tokens") or DEFAULT_MAX_TOKENS),
        },
    }
    if case.get("tools"):
        body["tools"] = case["tools"]
    return body


# --------------------------------------------------------------------------- clients


class Client:
    """One client SDK: ``call(request, stream)`` returns what a program would see."""

    name = ""
    dist = ""
    chat_path = "/v1/chat/completions"
    accumulator: str | None = None

    def __init__(self, base_url: str, api_key: str, timeout: float):
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = timeout

    def version(self) -> str | None:
        from engines import dist_version

        return dist_version(self.dist) if self.dist else None

    def setup(self) -> None:
        pass

    def request_for(self, case, model, stream, job) -> dict:
        return openai_request(case, model, stream, job)

    def once(self, req: dict) -> dict:
        raise NotImplementedError

    def stream(self, req: dict) -> tuple[list, dict | None]:
        """(chunks as iterated, the SDK's own accumulation or None)."""
        raise NotImplementedError

    def wire_result(self, ex, stream: bool) -> dict:
        from wire import accumulate

        if stream:
            return accumulate([e["json"] for e in ex.events if not e["done"] and e["json"] is not None])
        return message_of(ex.response_json)

    def chunks_result(self, chunks) -> dict:
        from wire import accumulate

        return accumulate(chunks)


class RawHTTP(Client):
    name = "raw-http"

    def version(self):
        import platform

        return "urllib/" + platform.python_version()

    def _post(self, req):
        import urllib.request

        data = json.dumps(req).encode("utf-8")
        r = urllib.request.Request(
            self.base_url + self.chat_path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        return urllib.request.urlopen(r, timeout=self.timeout)

    def once(self, req):
        with self._post(req) as resp:
            return message_of(json.loads(resp.read().decode("utf-8")))

    def stream(self, req):
        from wire import parse_sse

        chunks, buf = [], b""
        with self._post(req) as resp:
            for line in resp:
                buf += line
                if line in (b"\n", b"\r\n"):
                    chunks += [e["json"] for e in parse_sse(buf) if not e["done"] and e["json"] is not None]
                    buf = b""
        chunks += [e["json"] for e in parse_sse(buf) if not e["done"] and e["json"] is not None]
        return chunks, None


class OpenAISDK(Client):
    name = "openai"
    dist = "openai"

    def setup(self):
        try:
            import openai
        except ImportError as exc:
            raise Skip(f"openai is not installed in this cell ({exc})") from None
        self.openai = openai
        self.client = openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=self.api_key, max_retries=0, timeout=self.timeout
        )
        try:
            from openai.lib.streaming.chat import ChatCompletionStreamState

            self.State = ChatCompletionStreamState
            self.accumulator = "openai.lib.streaming.chat.ChatCompletionStreamState"
        except ImportError:
            self.State = None

    def once(self, req):
        return message_of(self.client.chat.completions.create(**req))

    def stream(self, req):
        chunks = list(self.client.chat.completions.create(**req))
        if self.State is None or not chunks:
            return chunks, None
        try:
            # the snapshot, not get_final_completion(): that one parses (strict tools, response
            # formats) and raises on finish_reason "length" by design
            state = self.State(input_tools=req["tools"]) if req.get("tools") else self.State()
            for chunk in chunks:
                state.handle_chunk(chunk)
            return chunks, message_of(state.current_completion_snapshot)
        except Exception as exc:  # noqa: BLE001 - the accumulator's own crash, judged apart
            return chunks, AccumulatorCrash(exc, traceback.format_exc(limit=6))


class LiteLLM(Client):
    name = "litellm"
    dist = "litellm"
    accumulator = "litellm.stream_chunk_builder"

    def setup(self):
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
        os.environ.setdefault("LITELLM_TELEMETRY", "False")
        try:
            import litellm
        except ImportError as exc:
            raise Skip(f"litellm is not installed in this cell ({exc})") from None
        litellm.telemetry = False
        litellm.suppress_debug_info = True
        self.litellm = litellm

    def _kwargs(self, req):
        kw = {k: v for k, v in req.items() if k != "model"}
        return dict(
            model="openai/" + req["model"],
            api_base=self.base_url + "/v1",
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=0,
            num_retries=0,
            **kw,
        )

    def once(self, req):
        return message_of(self.litellm.completion(**self._kwargs(req)))

    def stream(self, req):
        chunks = list(self.litellm.completion(**self._kwargs(req)))
        try:
            built = self.litellm.stream_chunk_builder(chunks, messages=req["messages"]) if chunks else None
        except Exception as exc:  # noqa: BLE001 - the accumulator's own crash, judged apart
            return chunks, AccumulatorCrash(exc, traceback.format_exc(limit=6))
        return chunks, (message_of(built) if built is not None else None)


class Ollama(Client):
    name = "ollama"
    dist = "ollama"
    chat_path = "/api/chat"

    def setup(self):
        import urllib.error
        import urllib.request

        try:
            import ollama
        except ImportError as exc:
            raise Skip(f"ollama (ollama-python) is not installed in this cell ({exc})") from None
        url = self.base_url + "/api/version"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                ok = resp.status == 200 and "version" in json.loads(resp.read().decode("utf-8") or "{}")
                why = f"HTTP {resp.status} without a version"
        except urllib.error.HTTPError as exc:
            ok, why = False, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            ok, why = False, str(exc)
        if not ok:
            raise Skip(f"no Ollama-compatible endpoint at the target (GET /api/version: {why})")
        self.client = ollama.Client(host=self.base_url, timeout=self.timeout)

    def request_for(self, case, model, stream, job):
        return ollama_request(case, model, stream, job)

    def once(self, req):
        return ollama_message_of([self.client.chat(**req)])

    def stream(self, req):
        return list(self.client.chat(**req)), None

    def wire_result(self, ex, stream):
        return ollama_message_of(ex.lines if stream else [ex.response_json])

    def chunks_result(self, chunks):
        return ollama_message_of(chunks)


CLIENT_CLASSES = {c.name: c for c in (OpenAISDK, LiteLLM, Ollama, RawHTTP)}


# --------------------------------------------------------------------------- the target


class Target:
    """The server the clients talk to: a base URL, or an engine started here (and stopped)."""

    def __init__(self, job: dict):
        self.job = job
        self.engine = None
        spec = job.get("client_target")
        self.spec = spec
        self.base_url: str | None = None
        self.model = None
        self.api_key = API_KEY
        self.facts: dict = {}
        self.answers: dict = {}  # agent case -> the wire's answers by mode (server:stream-vs-once)

    def start(self) -> None:
        spec = self.spec
        if isinstance(spec, str) and spec.startswith(("http://", "https://")):
            spec = {"base_url": spec}
        elif isinstance(spec, str):
            spec = {"engine": spec}
        if not isinstance(spec, Mapping):
            raise TypeError(f"client_target {spec!r} is not a URL, an engine name or a mapping")
        spec = dict(spec)
        if spec.get("unavailable"):  # the host could not bring up the server it meant to give
            raise Infra(str(spec["unavailable"]))
        if spec.get("api_key_env"):
            key = os.environ.get(spec["api_key_env"])
            if not key:  # a dummy key would only earn a 401 that hides the cause
                raise Infra(f"client_target.api_key_env names {spec['api_key_env']!r}, which is not set")
            self.api_key = key
        if spec.get("base_url"):
            base = spec["base_url"].rstrip("/")
            self.base_url = base[:-3] if base.endswith("/v1") else base
            self.facts = {
                "kind": "url",
                "base_url": self.base_url,
                **({"shared": spec["shared"]} if spec.get("shared") else {}),
                **({"name": str(spec["name"])} if spec.get("name") else {}),
            }
        else:
            import engine_registry
            import engines

            name = spec.pop("engine", None) or spec.pop("name", None)
            try:
                eng = engine_registry.make({"name": name, **spec}, self.job)
            except engines.EngineUnavailable as exc:
                raise Skip(str(exc)) from None
            if not getattr(eng, "server", False):
                raise Skip(f"engine {name!r} is not a server: the client stage needs an HTTP endpoint")
            self.engine = eng
            try:
                eng.start()
            except engines.EngineUnavailable as exc:
                raise Skip(str(exc)) from None
            except engines.EngineInfra as exc:
                raise Infra(f"{name}: {exc}", exc.log_tail) from None
            srv = getattr(eng, "srv", None)
            self.base_url = srv.base_url if srv is not None else eng.client.base_url[:-3]
            self.model = getattr(eng, "model_name", None)
            self.facts = {
                "kind": "engine",
                "engine": name,
                **{k: v for k, v in eng.facts().items() if k in ("server_ready_seconds", "command")},
            }
        self.model = spec.get("model") or self.model or self._first_model()
        self.facts["model"] = self.model

    def _first_model(self):
        import urllib.request

        try:
            req = urllib.request.Request(
                self.base_url + "/v1/models", headers={"Authorization": f"Bearer {self.api_key}"}
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                data = json.loads(resp.read().decode("utf-8")).get("data") or []
                return data[0].get("id") if data else None
        except Exception:  # noqa: BLE001 - a single-model server takes any name
            return None

    def log_tail(self) -> str:
        return self.engine.log_tail() if self.engine is not None and hasattr(self.engine, "log_tail") else ""

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


# --------------------------------------------------------------------------- the stage


def client_cases(job: dict) -> list[dict]:
    given = job.get("client_cases")
    if not given:
        extra = CONSTRAINED_CASES if job.get("client_constrained") else []
        return [dict(c) for c in DEFAULT_CASES + extra]
    by_id = {c.get("id"): c for c in job.get("cases") or []}
    out = []
    for c in given:
        base = by_id.get(c.get("id"), {})
        merged = {k: base[k] for k in ("messages", "tools") if k in base}
        merged.update(c)
        out.append(merged)
    return out


class TargetRecorder:
    """The records and facts of a further client target of the cell (``client_targets_more``):
    its check names are ``<target>/<check>``, so a cell's two servers' checks stay apart, and its
    facts go under ``facts.client.targets[<target>]``."""

    def __init__(self, rec, name: str):
        self._rec, self.name, self.mode = rec, name, rec.mode
        self.facts: dict = {}
        rec.facts.setdefault("client", {"clients": {}, "wire_notes": {}}).setdefault("targets", {})[name] = self.facts
        self._start = len(rec.records)

    @property
    def records(self) -> list:
        return [r for r in self._rec.records[self._start :] if r["check"].startswith(self.name + "/")]

    def add(self, case, stage, check, outcome, detail="", **extra):
        self._rec.add(case, stage, f"{self.name}/{check}", outcome, detail, **extra)


def run(job: dict, rec) -> None:
    """The stage against the cell's server (``client_target``), then against each further server
    of the cell (``client_targets_more``: a cell with llama-cpp-python's server and native
    llama-server talks to both; only the latter constrains decoding)."""
    run_target(job, rec)
    for spec in job.get("client_targets_more") or []:
        name = spec if isinstance(spec, str) else str(spec.get("engine") or spec.get("name") or "server")
        run_target(dict(job, client_target=spec), TargetRecorder(rec, name))


def run_target(job: dict, rec) -> None:
    facts = rec.facts.setdefault("client", {"clients": {}, "wire_notes": {}})
    if not job.get("client_target"):
        rec.add("*", STAGE, "target", "skipped", "no client_target in the job")
        return
    limits = job.get("limits") or {}
    timeout = float(limits.get("request_seconds", 60))
    target = Target(job)
    try:
        try:
            target.start()
        except Skip as exc:
            rec.add("*", STAGE, "target", "skipped", str(exc))
            return
        except Infra as exc:
            tail = f"\n--- server log (tail) ---\n{exc.log_tail}" if exc.log_tail else ""
            rec.add("*", STAGE, "target", "infra", f"{exc}{tail}")
            return
        facts["target"] = target.facts
        if "client_constrained" not in job and not job.get("client_cases"):
            job = dict(job, client_constrained=target.facts.get("engine") in CONSTRAINING_ENGINES)
        if not job.get("client_constrained") and not job.get("client_cases"):
            facts["constrained_cases"] = (
                f"skipped: the target ({target.facts.get('engine') or target.facts.get('shared') or 'a URL'}) "
                "does not constrain decoding, and random weights emit no tool call or schema "
                f"JSON without it ({', '.join(c['id'] for c in CONSTRAINED_CASES)})"
            )
        from wire import RecordingProxy

        with RecordingProxy(target.base_url, timeout=timeout) as proxy:
            for name in job.get("clients") or ["raw-http"]:
                run_client(name, job, rec, proxy, target, timeout, facts)
            # A client this cell lacks (or cannot serve) is a fact, not a record: it must not turn
            # the stage of a cell whose other clients ran into `skipped`. With none run, it is the result.
            if not any(r["stage"] == STAGE and r["case"] != "*" for r in rec.records):
                for name, info in facts["clients"].items():
                    if info.get("skipped"):
                        rec.add("*", STAGE, name, "skipped", info["skipped"])
            facts["exchanges"] = len(proxy.exchanges)
            leaked = [ex for ex in proxy.exchanges if target.api_key in json.dumps(ex.to_json())]
            if leaked:  # the recorder's promise, checked on every run
                rec.add(
                    "*", STAGE, "wire:no-credentials", "fail", "a credential reached the wire record", klass="crash"
                )
        if job.get("user_path", True):  # messages in, the server's own template and BOS rules (user_path)
            import user_path

            tf = target.facts
            server = tf.get("engine") or tf.get("shared") or tf.get("name") or "server"
            # the shared server's findings are not the cell's components': facts, not records
            sink = user_path.FactsOnly(rec) if target.facts.get("shared") else rec
            user_path.run(job, sink, target.base_url, target.model, server, target.api_key, timeout)
    finally:
        target.close()


def run_client(name, job, rec, proxy, target, timeout, facts) -> None:
    cls = CLIENT_CLASSES.get(name)
    info = facts["clients"].setdefault(name, {})
    if cls is None:
        info["skipped"] = f"unknown client {name!r} (known: {', '.join(CLIENTS)})"
        return
    client = cls(proxy.url, target.api_key, timeout)
    info["version"] = client.version()
    started = time.monotonic()
    try:
        client.setup()
    except Skip as exc:
        info["skipped"] = str(exc)
        return
    except Exception:  # noqa: BLE001 - an SDK that cannot even be set up is a crash of that SDK
        rec.add("*", STAGE, name, "fail", "setup crashed:\n" + traceback.format_exc(limit=6), klass="crash")
        return
    info["setup_seconds"] = round(time.monotonic() - started, 3)
    info["accumulator"] = client.accumulator
    added_all: dict = {}
    for case in client_cases(job):
        if case.get("clients") and name not in case["clients"]:
            continue
        for mode in case.get("modes") or MODES:
            run_one(client, case, mode, job, rec, proxy, target, facts, added_all)
    info["added"] = added_all
    info["seconds"] = round(time.monotonic() - started, 3)


def _server_stream_vs_once(rec, cid: str, stream: bool, wire: dict, target) -> None:
    """Once per agent case, the server's streamed answer against its non-streamed one (the first
    client's of each mode): arguments must survive streaming byte for byte."""
    seen = target.answers.setdefault(cid, {})
    seen.setdefault("stream" if stream else "once", wire)
    if "once" in seen and "stream" in seen and not seen.get("judged"):
        seen["judged"] = True
        diffs = stream_vs_once(seen["once"], seen["stream"])
        outcome = "fail" if diffs else "pass"
        extra = {"klass": "protocol"} if diffs else {}
        rec.add(cid, STAGE, "server:stream-vs-once", outcome, "; ".join(diffs)[:1500], **extra)


def run_one(client, case, mode, job, rec, proxy, target, facts, added_all) -> None:
    cid, name, stream = case["id"], client.name, mode == "stream"
    check = f"{name}:{mode}"
    try:
        req = client.request_for(case, target.model, stream, job)
    except Skip as exc:
        facts["clients"][name].setdefault("skipped_checks", {})[f"{cid} {check}"] = str(exc)
        return
    mark = proxy.mark()
    error, got, acc = None, None, None
    try:
        if stream:
            got, acc = client.stream(json.loads(json.dumps(req)))
        else:
            got = client.once(json.loads(json.dumps(req)))
    except Exception as exc:  # noqa: BLE001 - judged against the wire below
        error = exc
        tb = traceback.format_exc(limit=6)
    exchanges = [
        ex for ex in proxy.since(mark) if ex.method == "POST" and ex.path.split("?")[0].endswith(client.chat_path)
    ]
    if not exchanges:
        if error is not None:
            rec.add(cid, STAGE, check, "fail", f"the SDK raised before sending a request:\n{tb}", klass="crash")
        else:
            rec.add(
                cid, STAGE, check, "fail", "the SDK returned a result without any request on the wire", klass="protocol"
            )
        return
    ex = exchanges[-1]
    if len(exchanges) > 1:
        rec.add(
            cid,
            STAGE,
            f"{check}:requests",
            "fail",
            f"the SDK sent {len(exchanges)} requests for one call (retries?): statuses {[e.status for e in exchanges]}",
            klass="protocol",
        )
    # request serialization
    changed, added = request_diff(req, ex.request_json)
    for k, v in added.items():
        added_all.setdefault(k, v)
    # an empty value (tools: [], options: {}) sets nothing: a fact (``added``), not a failure
    added = {k: v for k, v in added.items() if v not in (None, "", [], {})}
    if changed:
        rec.add(
            cid,
            STAGE,
            f"{check}:request",
            "fail",
            "request serialization: " + "; ".join(changed)[:1500],
            klass="protocol",
            added=added,
        )
    elif added:
        rec.add(
            cid,
            STAGE,
            f"{check}:request",
            "fail",
            "the SDK sent parameters the case did not set: " + ", ".join(f"{k}={_short(v)}" for k, v in added.items()),
            klass="configuration-default",
            added=added,
        )
    else:
        rec.add(cid, STAGE, f"{check}:request", "pass")
    # the answer
    what = "deltas" if stream else "response"
    status = ex.status or 0
    if not 200 <= status < 300:
        body = ex.body.decode("utf-8", "replace")[:400]
        if error is not None:  # the server's business, not the client's: a fact
            facts["clients"][name].setdefault("skipped_checks", {})[f"{cid} {check}:{what}"] = (
                f"the server refused the request (HTTP {status}: {body}); the SDK raised {type(error).__name__}"
            )
        else:
            rec.add(
                cid,
                STAGE,
                f"{check}:{what}",
                "fail",
                f"the server answered HTTP {status} ({body}) but the SDK returned a result",
                klass="protocol",
            )
        return
    if error is not None:
        rec.add(
            cid,
            STAGE,
            f"{check}:{what}",
            "fail",
            f"the SDK raised on the server's HTTP {status} answer ({ex.content_type}, {len(ex.body)} bytes):\n{tb}",
            klass="crash",
        )
        return
    assert got is not None  # the SDK returned: its chunks or its result
    wire = client.wire_result(ex, stream)
    if case.get("agent"):
        diffs = agent_diffs(case["agent"], case, wire)
        if diffs:
            rec.add(cid, STAGE, f"{check}:agent", "fail", "; ".join(diffs)[:1500], klass="protocol")
        else:
            rec.add(cid, STAGE, f"{check}:agent", "pass")
        _server_stream_vs_once(rec, cid, stream, wire, target)
    if stream:
        notes = wire.get("notes") if isinstance(wire, dict) else None
        if notes:
            facts["wire_notes"].setdefault(cid, notes[:10])
        mine = client.chunks_result(got)
        diffs = result_diff(wire, mine, loose_empty=True, index=name in ("openai", "raw-http"))
        if name in ("openai", "raw-http") and mine.get("chunks") != wire.get("chunks"):
            diffs.insert(0, f"{wire.get('chunks')} chunks on the wire, {mine.get('chunks')} from the SDK")
        _verdict(rec, cid, f"{check}:deltas", diffs, wire_chunks=wire.get("chunks"))
        if client.accumulator:
            if isinstance(acc, AccumulatorCrash):
                rec.add(
                    cid,
                    STAGE,
                    f"{check}:accumulator",
                    "fail",
                    f"{client.accumulator} raised on {len(got)} chunks the SDK read:\n{acc.tb}",
                    klass="crash",
                )
            elif acc is None:
                rec.add(
                    cid,
                    STAGE,
                    f"{check}:accumulator",
                    "fail",
                    f"{client.accumulator} gave nothing for {len(got)} chunks",
                    klass="protocol",
                )
            else:
                _verdict(
                    rec,
                    cid,
                    f"{check}:accumulator",
                    result_diff(wire, acc, loose_empty=True),
                    accumulator=client.accumulator,
                )
    else:
        _verdict(rec, cid, f"{check}:response", result_diff(wire, got))


def _verdict(rec, cid, check, diffs, **extra) -> None:
    if diffs:
        rec.add(
            cid,
            STAGE,
            check,
            "fail",
            "SDK result differs from the wire: " + "; ".join(diffs)[:2000],
            klass="protocol",
            **extra,
        )
    else:
        rec.add(cid, STAGE, check, "pass", **extra)
