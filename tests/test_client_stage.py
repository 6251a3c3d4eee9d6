"""The client stage: the recording proxy and the wire readers in-process; the stage against a
scripted stdlib OpenAI/Ollama server (streamed parallel tool calls, so SDK accumulation bugs show
whatever the model does); and the probe for real in uv environments with openai-python of two
majors, litellm and ollama-python, against the scripted server and (slow) llama.cpp's server.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import or_skip as _or_skip

PROBE_DIR = Path(__file__).resolve().parent.parent / "matrix" / "probe"
sys.path.insert(0, str(PROBE_DIR))

import stage_client as sc  # noqa: E402  (probe-side modules: standard library only)
import wire  # noqa: E402
from probe import Recorder  # noqa: E402

OPENAI = {"3": "openai==3.57.0", "2": "openai==2.54.0"}
LITELLM = "litellm==1.110.2"
OLLAMA = "ollama==0.6.3"


# --------------------------------------------------------------------------- the scripted server


def _tc(index, *, id=None, name=None, args=None):
    d = {"index": index}
    if id:
        d.update(id=id, type="function")
    fn = {}
    if name:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    if fn:
        d["function"] = fn
    return d


# One OpenAI stream per script: lists of deltas (None: the finish chunk).
SCRIPTS: dict[str, list[dict[str, Any]]] = {
    # the usual shape: each call opens with id+name, arguments follow in pieces; index 0 is
    # resumed after index 1 has opened (legal: deltas are grouped by index, not by position)
    "parallel": [
        {"role": "assistant", "content": None},
        {"tool_calls": [_tc(0, id="call_a", name="get_weather", args="")]},
        {"tool_calls": [_tc(0, args='{"city": ')]},
        {"tool_calls": [_tc(0, args='"Paris"')]},
        {"tool_calls": [_tc(1, id="call_b", name="get_weather", args="")]},
        {"tool_calls": [_tc(1, args='{"city": "Ro')]},
        {"tool_calls": [_tc(0, args=', "unit": "c"}')]},
        {"tool_calls": [_tc(1, args='me"}')]},
    ],
    # several fragments in one chunk, the first tool-call chunk included (servers that flush
    # on a timer do this): two fragments of index 0, then index 0's end with index 1's start
    "packed": [
        {"role": "assistant", "content": None},
        {"tool_calls": [_tc(0, id="call_a", name="get_weather", args=""), _tc(0, args='{"city": ')]},
        {"tool_calls": [_tc(0, args='"Paris"}'), _tc(1, id="call_b", name="get_weather", args='{"city": ')]},
        {"tool_calls": [_tc(1, args='"Rome"}')]},
    ],
    "text": [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"content": " wor"},
        {"content": "ld"},
    ],
}
WANT_CALLS = {
    "parallel": [("call_a", '{"city": "Paris", "unit": "c"}'), ("call_b", '{"city": "Rome"}')],
    "packed": [("call_a", '{"city": "Paris"}'), ("call_b", '{"city": "Rome"}')],
}
USAGE = {"prompt_tokens": 17, "completion_tokens": 9, "total_tokens": 26}


def script_for(body: dict) -> str:
    if body.get("tools") and body["messages"][-1]["role"] == "user":
        return "packed" if "packed" in str(body.get("model")) else "parallel"
    return "text"


def final_message(script: str) -> dict:
    acc = wire.accumulate([{"choices": [{"index": 0, "delta": d}]} for d in SCRIPTS[script]])
    msg = {"role": "assistant", "content": acc["content"]}
    if acc["tool_calls"]:
        msg["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in acc["tool_calls"]
        ]
    return msg


class FakeServer:
    """A stdlib OpenAI-compatible (and Ollama-compatible) server that answers from SCRIPTS."""

    def __init__(self, delay: float = 0.0, ollama: bool = True):
        self.delay = delay
        self.ollama = ollama
        self.seen: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, code, doc):
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chunked(self, ctype, pieces):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for p in pieces:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
                    self.wfile.flush()
                    time.sleep(outer.delay)
                self.wfile.write(b"0\r\n\r\n")

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                if self.path == "/api/version" and outer.ollama:
                    return self._json(200, {"version": "0.0.0-scripted"})
                if self.path == "/bytes":
                    data = bytes(range(256)) * 64
                    return self._chunked(
                        "application/octet-stream", [data[i : i + 1000] for i in range(0, len(data), 1000)]
                    )
                self._json(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if self.path == "/v1/chat/completions":
                    return self.chat(body)
                if self.path == "/api/chat" and outer.ollama:
                    return self.ollama_chat(body)
                self._json(404, {"error": "not found"})

            def chat(self, body):
                script = script_for(body)
                base = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": body["model"]}
                finish = "tool_calls" if script != "text" else "stop"
                if not body.get("stream"):
                    return self._json(
                        200,
                        {
                            **base,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": final_message(script),
                                    "finish_reason": finish,
                                    "logprobs": None,
                                }
                            ],
                            "usage": USAGE,
                        },
                    )
                ck = {**base, "object": "chat.completion.chunk"}
                events = [{**ck, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in SCRIPTS[script]]
                events.append({**ck, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append({**ck, "choices": [], "usage": USAGE})
                pieces = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
                self._chunked("text/event-stream", pieces)

            def ollama_chat(self, body):
                script = script_for(body)
                msg = final_message(script)
                calls = [
                    {"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                    for c in msg.get("tool_calls", [])
                ]
                done = {
                    "model": body["model"],
                    "created_at": "2025-01-01T00:00:00Z",
                    "done": True,
                    "done_reason": "stop",
                    "prompt_eval_count": 17,
                    "eval_count": 9,
                    "total_duration": 1,
                }
                if not body.get("stream", True):
                    m = {"role": "assistant", "content": msg["content"] or ""}
                    if calls:
                        m["tool_calls"] = calls
                    return self._json(200, {**done, "message": m})
                lines = []
                if script == "text":
                    for d in SCRIPTS["text"][1:]:
                        lines.append(
                            {
                                "model": body["model"],
                                "created_at": "2025-01-01T00:00:00Z",
                                "done": False,
                                "message": {"role": "assistant", "content": d["content"]},
                            }
                        )
                else:
                    lines.append(
                        {
                            "model": body["model"],
                            "created_at": "2025-01-01T00:00:00Z",
                            "done": False,
                            "message": {"role": "assistant", "content": "", "tool_calls": calls},
                        }
                    )
                lines.append({**done, "message": {"role": "assistant", "content": ""}})
                self._chunked("application/x-ndjson", [json.dumps(x).encode() + b"\n" for x in lines])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    with FakeServer() as srv:
        yield srv


# --------------------------------------------------------------------------- pure readers


def _events(script, usage=True):
    evs = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in SCRIPTS[script]]
    evs.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    if usage:
        evs.append({"choices": [], "usage": USAGE})
    return evs


@pytest.mark.parametrize("script", ["parallel", "packed"])
def test_accumulate_groups_tool_call_deltas_by_index_in_order(script):
    acc = wire.accumulate(_events(script))
    assert [(c["id"], c["arguments"]) for c in acc["tool_calls"]] == WANT_CALLS[script]
    assert [c["name"] for c in acc["tool_calls"]] == ["get_weather", "get_weather"]
    assert acc["finish_reason"] == "tool_calls" and acc["usage"] == USAGE and acc["notes"] == []


def test_accumulate_notes_what_the_streaming_rules_do_not_allow():
    evs = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "}"}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": ""}}]}}]},
    ]
    acc = wire.accumulate(evs)
    assert acc["tool_calls"][0]["arguments"] == "{}" and acc["tool_calls"][0]["name"] == "f"
    assert any("repeats its id" in n for n in acc["notes"]) and any("without index" in n for n in acc["notes"])


def test_parse_sse_handles_crlf_comments_multiline_data_and_done():
    body = b': keepalive\r\n\r\nevent: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: [DONE]\r\n\r\n'
    evs = wire.parse_sse(body)
    assert [(e["event"], e["json"], e["done"]) for e in evs] == [("x", {"a": 1}, False), (None, None, True)]


def test_request_diff_separates_added_parameters_from_changed_fields():
    want = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}
    got = {"model": "m", "temperature": 0.0, "top_p": 1, "messages": [{"role": "user", "content": "a"}]}
    changed, added = sc.request_diff(want, got)
    assert added == {"top_p": 1}
    assert changed == ['messages[0].content: case [{"text": "a", "type": "text"}], wire \'a\'']


# --------------------------------------------------------------------------- the proxy


def test_proxy_passes_bytes_through_unchanged_and_streams_per_chunk(fake):
    with wire.RecordingProxy(fake.url) as proxy:
        direct = urllib.request.urlopen(fake.url + "/bytes").read()
        via = urllib.request.urlopen(proxy.url + "/bytes").read()
        assert via == direct == bytes(range(256)) * 64
        (ex,) = proxy.since(0)
        assert ex.body == direct and ex.streamed and ex.pieces >= 2

    fake.delay = (
        0.3  # 10 events (8 deltas, finish, [DONE]) 0.3 s apart: the first must arrive long before the last is sent
    )
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "tools": [sc.WEATHER], "stream": True}
    with wire.RecordingProxy(fake.url) as proxy:
        req = urllib.request.Request(
            proxy.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        t0 = time.monotonic()
        with urllib.request.urlopen(req) as resp:
            first = resp.readline()
            t_first = time.monotonic() - t0
            rest = resp.read()
        total = time.monotonic() - t0
    assert first.startswith(b"data: ") and t_first < 1.0 < total, (t_first, total)
    (ex,) = proxy.exchanges
    assert ex.body == first + rest and len(ex.events) == 10 and ex.events[-1]["done"]
    assert ex.request_json == body


def test_proxy_forwards_credentials_but_never_records_them(fake):
    secret = "sk-very-secret-123"
    with wire.RecordingProxy(fake.url) as proxy:
        req = urllib.request.Request(
            proxy.url + "/v1/chat/completions",
            data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode(),
            headers={"Authorization": f"Bearer {secret}", "X-Api-Key": secret, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req).read()
        record = json.dumps([ex.to_json() for ex in proxy.exchanges]) + "\n".join(proxy.log)
    assert fake.seen[-1]["auth"] == f"Bearer {secret}"  # forwarded upstream
    assert secret not in record and "<redacted>" in record


def test_proxy_answers_502_when_the_upstream_is_gone():
    from servers import free_port

    with wire.RecordingProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(proxy.url + "/v1/models")
        assert err.value.code == 502 and "upstream" in proxy.exchanges[0].error


# --------------------------------------------------------------------------- the stage in-process


def _run(job) -> Recorder:
    rec = Recorder("check")
    sc.run(job, rec)
    return rec


def _by_check(rec):
    return {(r["case"], r["check"]): r for r in rec.records}


def test_raw_http_agrees_with_the_wire_on_every_case(fake):
    rec = _run({"client_target": fake.url, "clients": ["raw-http", "openai-but-unknown"]})
    recs = _by_check(rec)
    bad = [r for r in rec.records if r["outcome"] not in ("pass", "skipped")]
    assert not bad, bad
    assert recs[("client-tools", "raw-http:stream:deltas")]["wire_chunks"] == 10  # 8 deltas, finish, usage
    assert "unknown client" in rec.facts["client"]["clients"]["openai-but-unknown"]["skipped"]
    assert rec.facts["client"]["target"]["model"] == "scripted"
    assert rec.stage_summary(["client"])["client"]["outcome"] == "pass"


class DropsLastDelta(sc.RawHTTP):
    name = "raw-http"

    def stream(self, req):
        chunks, _ = super().stream(req)
        return chunks[:-3] + chunks[-2:], None  # loses one tool-call delta


class AddsTopP(sc.RawHTTP):
    def once(self, req):
        return super().once({**req, "top_p": 1.0})


class CrashesOnTools(sc.RawHTTP):
    def once(self, req):
        got = super().once(req)
        if got["tool_calls"]:
            raise KeyError("function")
        return got


def test_failure_classes_protocol_configuration_default_and_crash(fake, monkeypatch):
    for name, cls in (("raw-http", DropsLastDelta), ("adds", AddsTopP), ("crashes", CrashesOnTools)):
        monkeypatch.setitem(sc.CLIENT_CLASSES, name, type(cls.__name__, (cls,), {"name": name}))
    job = {
        "client_target": {"base_url": fake.url + "/v1", "model": "scripted"},
        "clients": ["raw-http", "adds", "crashes"],
        "client_cases": [
            {"id": "client-tools", "tools": [sc.WEATHER], "messages": [{"role": "user", "content": "Weather?"}]}
        ],
    }
    recs = _by_check(_run(job))
    r = recs[("client-tools", "raw-http:stream:deltas")]
    assert (
        r["klass"] == "protocol"
        and "tool_calls[1].arguments" in r["detail"]
        and "10 chunks on the wire, 9 from the SDK" in r["detail"]
    )
    r = recs[("client-tools", "adds:once:request")]
    assert r["klass"] == "configuration-default" and "top_p=1.0" in r["detail"]
    r = recs[("client-tools", "crashes:once:response")]
    assert r["klass"] == "crash" and "KeyError" in r["detail"]
    assert recs[("client-tools", "crashes:stream:deltas")]["outcome"] == "pass"


def test_no_target_and_a_dead_target(tmp_path):
    rec = _run({})
    assert rec.records[0]["outcome"] == "skipped" and "client_target" in rec.records[0]["detail"]
    rec = _run({"client_target": {"engine": "no-such-engine"}, "model_dir": str(tmp_path)})
    assert rec.records[0]["outcome"] == "skipped" and "unknown engine" in rec.records[0]["detail"]
    rec = _run({"client_target": "llama-cpp-server", "model_dir": str(tmp_path)})  # no GGUF / no package here
    assert rec.records[0]["check"] == "target" and rec.records[0]["outcome"] in ("skipped", "infra")


# --------------------------------------------------------------------------- the probe for real


def cell_python(*reqs) -> Path:
    from matrix.env import uv as envs

    lock = _or_skip(envs.resolve, list(reqs), python="3.11", overrides=["torch==2.13.0+cpu"])
    if isinstance(lock, envs.Unresolvable):
        pytest.fail(f"unresolvable: {lock.reason[:500]}")
    return _or_skip(envs.ensure, lock).python


def run_probe(python: Path, job: dict, tmp_path: Path, monkeypatch) -> dict:
    from tests.conftest import probe_result

    return probe_result(python, job)


def outcomes(result) -> dict:
    return {(r["case"], r["check"]): r for r in result["records"] if r["stage"] == "client"}


def print_failures(recs: dict, width: int) -> None:
    """The records that did not pass, for the log of a test against a live server."""
    failing = {f"{c} {k}": [v["outcome"], v.get("klass"), v["detail"][:width]] for (c, k), v in recs.items()}
    print(json.dumps({k: v for k, v in failing.items() if v[0] != "pass"}, indent=1))


@pytest.fixture(scope="module")
def scripted():
    with FakeServer() as srv:
        yield srv


@pytest.mark.parametrize("major", ["3", "2"])
def test_openai_python_against_the_scripted_parallel_tool_calls(major, scripted, tmp_path, monkeypatch):
    python = cell_python(OPENAI[major], OLLAMA)
    job = {
        "mode": "check",
        "stages": ["client"],
        "clients": ["openai", "ollama", "raw-http"],
        "client_target": {"base_url": scripted.url, "model": "scripted-packed"},
        "report_versions": ["openai", "ollama"],
    }
    result = run_probe(python, job, tmp_path, monkeypatch)
    recs = outcomes(result)
    print_failures(recs, 300)
    facts = result["facts"]["client"]
    assert facts["clients"]["openai"]["version"].startswith(major + ".")
    # parsing is right in both majors: requests as the case set them, chunks one per event
    for case in ("client-text", "client-multi-turn", "client-tools", "client-tool-result", "client-content-parts"):
        for check in (
            "openai:once:request",
            "openai:stream:request",
            "openai:once:response",
            "openai:stream:deltas",
            "raw-http:stream:deltas",
        ):
            assert recs[(case, check)]["outcome"] == "pass", recs[(case, check)]
    # the SDK's own accumulator: 2.x merges the first tool-call chunk's fragments wrongly
    acc = recs[("client-tools", "openai:stream:accumulator")]
    if major == "3":
        assert acc["outcome"] == "pass", acc
        assert result["stages"]["client"]["outcome"] == "pass"
    else:
        assert acc["outcome"] == "fail" and acc["klass"] == "protocol", acc
        assert "tool_calls[0].arguments" in acc["detail"]
    # ollama-python over the scripted native API: tool calls, content and counts agree
    assert recs[("client-tools", "ollama:stream:deltas")]["outcome"] == "pass"
    skipped = facts["clients"]["ollama"]["skipped_checks"]
    assert "content parts" in skipped["client-content-parts ollama:once"]


def test_openai_2x_accumulates_the_usual_stream_shape_right(scripted, tmp_path, monkeypatch):
    python = cell_python(OPENAI["2"])
    job = {
        "mode": "check",
        "stages": ["client"],
        "clients": ["openai"],
        "client_target": {"base_url": scripted.url, "model": "scripted-parallel"},
        "client_cases": [
            {
                "id": "client-tools",
                "tools": [sc.WEATHER],
                "tool_choice": "auto",
                "modes": ["stream"],
                "messages": [{"role": "user", "content": "Weather in Paris and in Rome?"}],
            }
        ],
    }
    result = run_probe(python, job, tmp_path, monkeypatch)
    assert result["stages"]["client"]["outcome"] == "pass", result["records"]


@pytest.mark.parametrize("major", ["3", "2"])
def test_litellm_against_the_scripted_server(major, scripted, tmp_path, monkeypatch):
    python = cell_python(LITELLM, OPENAI[major])
    job = {
        "mode": "check",
        "stages": ["client"],
        "clients": ["litellm"],
        "client_target": {"base_url": scripted.url, "model": "scripted-packed"},
        "limits": {"request_seconds": 60},
    }
    t = time.perf_counter()
    result = run_probe(python, job, tmp_path, monkeypatch)
    recs = outcomes(result)
    print(f"litellm probe: {time.perf_counter() - t:.1f}s")
    print_failures(recs, 400)
    info = result["facts"]["client"]["clients"]["litellm"]
    assert info["version"] == LITELLM.split("==")[1] and "skipped" not in info
    assert not [r for r in recs.values() if r.get("klass") == "crash"], recs
    # litellm's openai/ provider puts the case on the wire as given (it drops `content: null` of an
    # assistant tool-call turn: the same thing in the OpenAI API) and adds no parameter; its own
    # chunk handling and stream_chunk_builder accumulate the packed parallel tool calls right
    assert all(r["outcome"] == "pass" for r in recs.values()), recs
    assert result["stages"]["client"]["outcome"] == "pass"


@pytest.mark.slow
def test_clients_against_llama_cpp_server_on_the_tiny_model(model, tmp_path, monkeypatch):
    from tests.conftest import llama_env

    python = llama_env(OPENAI["3"], LITELLM, OLLAMA)
    job = {
        "mode": "check",
        "stages": ["client"],
        "model_dir": str(model.path),
        "clients": ["openai", "litellm", "ollama", "raw-http"],
        "client_target": "llama-cpp-server",
        "limits": {"request_seconds": 120, "server_start_seconds": 120},
        "report_versions": ["openai", "litellm", "ollama", "llama-cpp-python"],
    }
    t = time.perf_counter()
    result = run_probe(python, job, tmp_path, monkeypatch)
    recs = outcomes(result)
    print(f"llama-cpp-server client probe: {time.perf_counter() - t:.1f}s")
    print_failures(recs, 400)
    facts = result["facts"]["client"]
    assert facts["target"]["kind"] == "engine" and facts["target"]["engine"] == "llama-cpp-server"
    assert "Ollama-compatible" in facts["clients"]["ollama"]["skipped"]
    # the control: urllib agrees with the wire on every case and mode
    raw = [r for (c, k), r in recs.items() if k.startswith("raw-http:")]
    assert raw and all(r["outcome"] in ("pass", "skipped") for r in raw), raw
    for case in ("client-text", "client-multi-turn"):
        for check in (
            "openai:once:request",
            "openai:once:response",
            "openai:stream:deltas",
            "openai:stream:accumulator",
        ):
            assert recs[(case, check)]["outcome"] == "pass", recs[(case, check)]
