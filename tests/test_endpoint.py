"""``llmcompat endpoint URL``: the probe's client stage and user path against any OpenAI-compatible
server. The server here is llama.cpp's native llama-server (0.3.8's vendored sources, built once)
on the tiny model's GGUF; the command runs as a user runs it, in a subprocess."""

from __future__ import annotations

import http.server
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from matrix.app import endpoint as ep
from matrix.cell.run import PROBE_LIMITS, ModelRef, SuiteRef
from matrix.errors import ConfigError
from tests.conftest import or_skip

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-endpoint-7f3a9c1e5b"
"""A key the keyed server demands; it must never show in anything the command prints or writes."""


# --------------------------------------------------------------------------- the pure core


def _suite() -> SuiteRef:
    cases = ({"id": "a", "messages": [{"role": "user", "content": "hi"}], "expect": {"ids": [1], "render": "x"}},)
    return SuiteRef("core", "d" * 8, cases)


def test_the_job_is_the_client_stage_only_against_the_url_with_the_models_golden_cases():
    model = ModelRef("tiny-qwen2", Path("/models/tiny"), "h" * 8)
    job = ep.build_job(ep.Endpoint("http://h:1", clients=("raw-http", "openai")), model, _suite())
    assert job["stages"] == ["client"]
    assert job["clients"] == ["raw-http", "openai"]
    assert job["client_target"] == {"base_url": "http://h:1", "name": "endpoint"}  # no model, no key variable
    assert job["model_dir"] == "/models/tiny" and job["cases"] == list(_suite().cases)
    assert job["limits"] == PROBE_LIMITS and job["limits"] is not PROBE_LIMITS
    assert job["report_versions"] == ["openai"]
    named = ep.build_job(
        ep.Endpoint("https://h/v1", served_model="m", api_key_env="MY_KEY", name="lmstudio"), model, _suite()
    )
    assert named["client_target"] == {
        "base_url": "https://h/v1",
        "model": "m",
        "api_key_env": "MY_KEY",
        "name": "lmstudio",
    }
    assert named["clients"] == ["raw-http"] and named["report_versions"] == []
    assert "client_constrained" not in named
    forced = ep.build_job(ep.Endpoint("http://h:1", constrained=True), model, _suite())
    assert forced["client_constrained"] is True  # the forced tool-call cases run


def test_bad_input_names_the_option_and_the_value():
    assert ep.check_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert ep.check_url("https://api.example.invalid/v1") == "https://api.example.invalid/v1"
    for bad in ("localhost:8080", "ftp://h/x", "http://", "http://h:port", "http://h/?a=1", "not a url"):
        with pytest.raises(ConfigError) as exc:
            ep.check_url(bad)
        assert exc.value.field == "url" and exc.value.value == bad and exc.value.exit_code == 2
    with pytest.raises(ConfigError) as exc:
        ep.check_url("http://user:hunter2@h:1")
    assert "hunter2" not in str(exc.value) and "--api-key-env" in str(exc.value)
    with pytest.raises(ConfigError, match=r"--client: client: 'curl': unknown client \(known: .*raw-http"):
        ep.choose_clients(["curl"], set())
    with pytest.raises(ConfigError, match="--client: client: 'openai': the openai package is not installed"):
        ep.choose_clients(["openai"], set())
    with pytest.raises(ConfigError, match="--model: model: 'tiny-gpt': unknown model"):
        ep.check_model("tiny-gpt", ["tiny-qwen2", "tiny-llama"])
    with pytest.raises(ConfigError, match="--api-key-env: variable: 'NOPE_UNSET': is not set"):
        ep.check_key_env("NOPE_UNSET", {})
    with pytest.raises(ConfigError, match="--name: name: 'a:b'"):
        ep.check_name("a:b")


def test_clients_default_to_raw_http_plus_the_installed_sdks():
    assert ep.choose_clients([], set()) == ("raw-http",)
    assert ep.choose_clients([], {"openai"}) == ("raw-http", "openai")
    assert ep.choose_clients(["openai", "raw-http", "openai"], {"openai"}) == ("openai", "raw-http")


def _rec(case, check, outcome, detail="", stage="client", **extra):
    return {"case": case, "check": check, "outcome": outcome, "detail": detail, "stage": stage, **extra}


def test_the_verdict_is_the_worst_record_and_sets_the_exit_code():
    passed = {"records": [_rec("a", "raw-http:once:request", "pass"), _rec("b", "x", "skipped")]}
    assert ep.verdict(passed) == "pass" and ep.exit_code("pass") == 0
    failed = {"records": [*passed["records"], _rec("c", "server:e:prompt_tokens", "fail", stage="tokenize")]}
    assert ep.verdict(failed) == "fail" and ep.exit_code("fail") == 1
    assert ep.verdict({"records": [_rec("*", "target", "infra")]}) == "infra" and ep.exit_code("infra") == 1
    assert ep.verdict({"records": [_rec("b", "x", "skipped")]}) == "skipped" and ep.exit_code("skipped") == 1


def test_the_summary_reads_in_80_columns_with_every_check_and_failing_case():
    long = "the server counted 23 prompt tokens, the reference prompt has 20 " * 6
    result = {
        "records": [
            _rec("single-user", "server:lm:prompt_tokens", "pass", stage="tokenize"),
            _rec("typed-content", "server:lm:prompt_tokens", "fail", long, stage="tokenize", klass="double-bos"),
            _rec("tools", "server:lm:prompt_tokens", "skipped", "HTTP 500 " + "x" * 300, stage="tokenize"),
            _rec("tools-2", "server:lm:prompt_tokens", "skipped", "HTTP 500 " + "x" * 300, stage="tokenize"),
            _rec("single-user", "server:lm:defaults", "pass", stage="inference"),
        ],
        "facts": {"client": {"clients": {"raw-http": {"version": "urllib/3.11"}}, "target": {"model": "m"}}},
    }
    lines = ep.summary_lines(result, ep.Endpoint("http://127.0.0.1:1", name="lm"))
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = "\n".join(lines)
    assert "server:lm:prompt_tokens [tokenize]: 1 fail, 1 pass, 2 skipped" in text
    assert "FAIL typed-content (double-bos)" in text and "skip tools, tools-2" in text  # same reason, one line
    assert "1 of 2 prompt lengths" in text and "1 double BOS" in text
    assert lines[-1].startswith("result") and "exit 1" in lines[-1]


def test_a_secret_is_redacted_everywhere_in_a_result():
    got = ep.redact({"a": [f"x{KEY}y", {KEY: 1}], "n": 3}, KEY)
    assert KEY not in json.dumps(got) and got["n"] == 3 and got["a"][0] == "x***y"
    assert ep.redact({"a": "b"}, None) == {"a": "b"}


# --------------------------------------------------------------------------- against a real server


def _llama_server(*extra: str):
    from matrix.app.job import Options, build_model, load_matrix
    from matrix.env import builds
    from matrix.probe import servers

    exe = or_skip(builds.llama_server, "0.3.8")
    model = or_skip(build_model, load_matrix(Options()), "tiny-qwen2")
    cmd = [str(exe), "-m", str(model.path / "model.gguf"), "--jinja", "--host", "{host}", "--port", "{port}"]
    return servers.Server([*cmd, "-c", "2048", *extra], name="llama-server", ready_path="/health", start_timeout=120)


@pytest.fixture(scope="module")
def server():
    with _llama_server() as srv:
        yield srv.base_url


@pytest.fixture(scope="module")
def keyed_server():
    with _llama_server("--api-key", KEY) as srv:
        yield srv.base_url


def _endpoint(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", "endpoint", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_the_users_path_through_a_real_llama_server(server):
    proc = _endpoint(server, "--name", "llamacpp", "--json")
    result = json.loads(proc.stdout)
    checks = {r["check"] for r in result["records"]}
    user_path = {r["check"] for r in result["records"] if r["stage"] != "client"}  # judged at template...inference
    assert user_path >= {"server:llamacpp:prompt_tokens", "server:llamacpp:apply-template", "server:llamacpp:defaults"}
    assert all(c.startswith("server:llamacpp:") for c in user_path)
    assert {"raw-http:once:request", "raw-http:stream:deltas"} <= checks
    if "openai" in ep.installed_packages():  # the default adds the SDKs this Python has
        assert {"openai:once:response", "openai:stream:accumulator"} <= checks
        assert result["versions"]["openai"]
    outcomes = [r["outcome"] for r in result["records"]]
    assert outcomes.count("pass") > 20
    assert result["outcome"] == ep.verdict(result)
    assert proc.returncode == (1 if {"fail", "infra"} & set(outcomes) else 0), proc.stderr
    assert result["facts"]["client"]["target"]["name"] == "llamacpp"
    # the same run as a reader sees it: the same exit code, every check named, no line over 80 columns
    text = _endpoint(server + "/v1/", "--name", "llamacpp")  # a base URL as SDKs take it works the same
    assert text.returncode == proc.returncode
    assert all(len(line) <= 80 for line in text.stdout.splitlines())
    for check in user_path:
        assert check in text.stdout
    assert "user path" in text.stdout and f"exit {proc.returncode}" in text.stdout


def test_bad_input_exits_2_naming_the_value(capsys):
    from matrix.app.cli import main

    assert main(["endpoint", "localhost:8080"]) == 2
    assert "'localhost:8080'" in capsys.readouterr().err
    assert main(["endpoint", "http://127.0.0.1:1", "--model", "tiny-gpt"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "'tiny-gpt'" in err and "tiny-qwen2" in err
    assert main(["endpoint", "http://127.0.0.1:1", "--client", "curl"]) == 2
    assert "'curl'" in capsys.readouterr().err
    proc = _endpoint("ftp://h/x")  # as a user runs it
    assert proc.returncode == 2 and "'ftp://h/x'" in proc.stderr and not proc.stdout


def test_an_unreachable_endpoint_is_infra_with_its_url():
    from matrix.probe.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    proc = _endpoint(url)
    assert proc.returncode == 1
    assert url in proc.stderr and "unreachable" in proc.stderr and "infra" in proc.stderr
    as_json = json.loads(_endpoint(url, "--json").stdout)
    assert as_json["outcome"] == "infra" and url in as_json["reason"]


def test_the_api_key_reaches_the_server_and_nothing_else(keyed_server, tmp_path):
    """llama-server started with ``--api-key`` refuses requests without it: the checks pass only if
    the probe sent it; it is in no output and in no file the probe run wrote."""
    capture = tmp_path / "probe-files"
    script = f'rc=0; "$@" || rc=$?; cp -R . {shlex.quote(str(capture))}; exit $rc'
    env = {"MY_ENDPOINT_KEY": KEY, "LLMCOMPAT_PROBE_WRAPPER": shlex.join(["/bin/sh", "-c", script, "sh"])}
    args = (keyed_server, "--api-key-env", "MY_ENDPOINT_KEY", "--served-model", "tiny")
    runs = [_endpoint(*args, *flag, env=env) for flag in ((), ("--json",))]
    for proc in runs:
        assert KEY not in proc.stdout + proc.stderr
    result = json.loads(runs[1].stdout)
    assert sum(r["outcome"] == "pass" and r["check"].startswith("server:") for r in result["records"]) > 20
    assert result["facts"]["client"]["target"]["model"] == "tiny"  # --served-model, as sent
    assert runs[0].returncode == runs[1].returncode == ep.exit_code(result["outcome"])
    written = [p for p in capture.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"job.json", "result.json"}
    assert not [p for p in written if KEY.encode() in p.read_bytes()]
    assert "MY_ENDPOINT_KEY" in (capture / "job.json").read_text()  # the variable's name, never its value
    refused = _endpoint(keyed_server, env={"LLMCOMPAT_PROBE_WRAPPER": ""})  # no key: the server says 401
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr and "--api-key-env" in refused.stderr


class _Echo(http.server.BaseHTTPRequestHandler):
    """A server that lists a model and answers every request with the Authorization header it got:
    careless servers echo what they were sent in their error bodies."""

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(400, {"error": {"message": f"bad request; you sent {self.headers.get('Authorization')}"}})

    def log_message(self, *args):
        pass


def test_a_key_the_server_echoes_back_is_redacted_from_the_output():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        env = {"MY_ENDPOINT_KEY": KEY}
        runs = [_endpoint(url, "--api-key-env", "MY_ENDPOINT_KEY", *flag, env=env) for flag in ((), ("--json",))]
    finally:
        srv.shutdown()
        srv.server_close()
    for proc in runs:
        assert KEY not in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert "Bearer ***" in runs[1].stdout  # the echo was there, and it was redacted
    assert runs[0].returncode == runs[1].returncode == ep.exit_code(json.loads(runs[1].stdout)["outcome"])
