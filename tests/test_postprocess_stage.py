"""The postprocess stage: in-process with fake decoders and stub servers for the failure classes
(a detokenizer that drops a partial UTF-8 byte, a stream that loses a character, a stop string
returned), then for real in uv environments on the tiny model: tokenizers 0.23.2 and 0.23.3 with
transformers (incremental detokenization, special tokens, transformers' reasoning and tool-call
parser), and llama-cpp-python 0.2.90 in-process and as a server (slow)."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import or_skip as _or_skip

PROBE_DIR = Path(__file__).resolve().parent.parent / "matrix" / "probe"
sys.path.insert(0, str(PROBE_DIR))

import postprocess_context as pc  # noqa: E402  (probe-side modules: standard library only)
import postprocess_detok as pd  # noqa: E402
import postprocess_engines as pe  # noqa: E402
import postprocess_rules as pr  # noqa: E402
import stage_postprocess as sp  # noqa: E402
import toolcalls  # noqa: E402
from probe import Recorder  # noqa: E402

TOKENIZER_CELLS = {
    "tokenizers-0.23.2": ["tokenizers==0.23.2", "transformers==5.23.0"],
    "tokenizers-0.23.3": ["tokenizers==0.23.3", "transformers==5.24.0"],
}


# --------------------------------------------------------------------------- fake byte-level decoders


class ByteDetok(pd.Detokenizer):
    """One token per UTF-8 byte (ids 0..255), 300 = a control token ``<|c|>``, 301 = ``<think>``
    (added, not special): the hardest split a byte-level BPE can make."""

    name = "fake"
    SPECIAL = {300: ("<|c|>", True), 301: ("<think>", False)}

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            for tid, (tok, _) in self.SPECIAL.items():
                if text.startswith(tok, i):
                    ids.append(tid)
                    i += len(tok)
                    break
            else:
                ids.extend(text[i].encode("utf-8"))
                i += 1
        return ids

    def _bytes(self, ids, skip=False):
        out = b""
        for i in ids:
            if i in self.SPECIAL:
                tok, special = self.SPECIAL[i]
                out += b"" if (skip and special) else tok.encode()
            else:
                out += bytes([i])
        return out

    def decode(self, ids, skip_special_tokens=False):
        return self._bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def incremental(self, ids, skip_special_tokens=False):
        """Correct: hold bytes until they decode."""
        out, buf = [], b""
        for i in ids:
            buf += self._bytes([i], skip_special_tokens)
            try:
                out.append(buf.decode("utf-8"))
                buf = b""
            except UnicodeDecodeError:
                out.append(None)
        return out


class DropsPartialByte(ByteDetok):
    """The classic bug: each token decoded alone with errors='ignore' (a partial byte is lost)."""

    def incremental(self, ids, skip_special_tokens=False):
        return [self._bytes([i], skip_special_tokens).decode("utf-8", errors="ignore") for i in ids]


class ReplacesPartialByte(ByteDetok):
    """Emits U+FFFD for a partial character instead of waiting for its next byte."""

    def incremental(self, ids, skip_special_tokens=False):
        return [self._bytes([i], skip_special_tokens).decode("utf-8", errors="replace") for i in ids]


class SkipsAddedTokens(ByteDetok):
    """Drops every added token with skip_special_tokens, even the non-special <think>."""

    def decode(self, ids, skip_special_tokens=False):
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.SPECIAL]
        return super().decode(ids, skip_special_tokens)


def _run_detok(monkeypatch, tmp_path, cls) -> dict:
    (tmp_path / "tokenizer.json").write_text(
        json.dumps(
            {
                "added_tokens": [
                    {"id": 300, "content": "<|c|>", "special": True},
                    {"id": 301, "content": "<think>", "special": False},
                ]
            }
        )
    )
    monkeypatch.setattr(pd, "make_detokenizer", lambda name, job: cls())
    monkeypatch.setattr(pd, "SPECIAL_TEXT", "<|c|>a <think>\n你好🙂")
    rec = Recorder("check")
    job = {
        "model_dir": str(tmp_path),
        "postprocess": {"detokenizers": ["fake"]},
        "cases": [{"id": "g", "expect": {"gen": {"ids": [0xE4, 0xBD, 0xA0, 0x41]}}}],
    }
    pd.detok_checks(pc.Ctx(job, rec))
    return {(r["case"], r["check"]): r for r in rec.records}


def test_a_correct_incremental_decoder_passes_on_every_multibyte_text(monkeypatch, tmp_path):
    recs = _run_detok(monkeypatch, tmp_path, ByteDetok)
    assert {k[0] for k in recs} >= {f"_detok/{t}" for t in pr.TEXTS} | {"_detok/gen:g", "_special/mixed"}
    assert all(r["outcome"] == "pass" for r in recs.values()), recs


def test_a_decoder_that_drops_a_partial_utf8_byte_is_caught(monkeypatch, tmp_path):
    recs = _run_detok(monkeypatch, tmp_path, DropsPartialByte)
    r = recs[("_detok/cjk", "fake:incremental")]
    assert (r["outcome"], r["klass"]) == ("fail", "backend-specific")
    assert "bytes lost" in r["detail"] and "first divergence at char 0" in r["detail"]
    assert recs[("_detok/gen:g", "fake:incremental")]["outcome"] == "fail"  # 你 in three byte tokens


def test_a_decoder_that_emits_replacement_chars_mid_stream_is_caught(monkeypatch, tmp_path):
    recs = _run_detok(monkeypatch, tmp_path, ReplacesPartialByte)
    r = recs[("_detok/emoji-zwj", "fake:incremental")]
    assert r["outcome"] == "fail" and "U+FFFD in piece" in r["detail"]


def test_skipping_a_non_special_added_token_is_caught(monkeypatch, tmp_path):
    recs = _run_detok(monkeypatch, tmp_path, SkipsAddedTokens)
    r = recs[("_special/mixed", "fake:special")]
    assert r["outcome"] == "fail" and "skip=True" in r["detail"] and "neither" in r["detail"]


def test_incremental_diff_bytes_and_text():
    full = "a你🙂".encode()
    assert pr.incremental_diff([full[:2], full[2:5], full[5:]], full) == ""
    assert "1 bytes lost" in pr.incremental_diff([full[:2], full[3:]], full)
    assert pr.incremental_diff(["a", None, "你", "🙂"], "a你🙂") == ""
    # a U+FFFD the full decode also has (the model emitted invalid bytes) is not the decoder's fault
    assert pr.incremental_diff(["a", "\ufffd", "b"], "a\ufffdb") == ""
    assert "U+FFFD in piece 1" in pr.incremental_diff(["a", "\ufffd", "b"], "a你b")


# --------------------------------------------------------------------------- pure helpers


def test_reference_reasoning_split_inverts_the_template():
    assert pr.split_reasoning("<think>\nplan\n</think>\n\nanswer") == ("plan", "answer")
    assert pr.split_reasoning("just text ") == (None, "just text")
    assert pr.split_reasoning("prefilled\n</think>\n\nA") == ("prefilled", "A")
    assert pr.split_reasoning("<think>\nunterminated") == ("unterminated", "")
    assert pr.split_reasoning("<think>\n\n</think>\n\nA") == ("", "A")


def test_compare_split_trim_and_strict():
    assert pr.compare_split(("r", "c"), ("\nr\n", "\n\nc"), "trim") == ("", True)
    diff, _ = pr.compare_split(("r", "c"), ("\nr\n", "c"), "strict")
    assert diff.startswith("reasoning:")
    assert "content" in pr.compare_split(("r", "c"), ("r", "d"))[0]


def test_sse_parsing_and_accumulation_of_chat_deltas():
    lines = [
        ": keep-alive",
        "",
        'data: {"choices":[{"delta":{"role":"assistant","reasoning_content":"th"}}]}',
        "",
        'data: {"choices":[{"delta":{"content":"Hi "}}]}',
        "",
        'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\\"a\\""}}]}}]}',
        "",
        'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":": 1}"}}]}}]}',
        "",
        'data: {"choices":[{"delta":{},"finish_reason":"tool_calls"}]}',
        "",
        "data: [DONE]",
        "",
        'data: {"choices":[{"delta":{"content":"after done"}}]}',
        "",
    ]
    acc = pe.streamed_answer(pe.sse_payloads("\n".join(lines).encode()))
    assert acc["text"] == "Hi " and acc["reasoning"] == "th" and acc["finish_reason"] == "tool_calls"
    assert acc["tool_calls"] == [{"name": "f", "arguments": '{"a": 1}'}]
    comp = pe.streamed_answer(
        pe.sse_payloads(
            "\n".join(
                [
                    'data: {"choices":[{"text":"a"}]}',
                    "",
                    'data: {"choices":[{"text":"b","finish_reason":"length"}]}',
                    "",
                ]
            )
        )
    )
    assert (comp["text"], comp["finish_reason"]) == ("ab", "length")


def test_stream_diff_names_what_differs():
    a = {"text": "abc", "finish_reason": "stop"}
    assert pr.stream_diff(a, dict(a)) == ""
    d = pr.stream_diff(a, {"text": "ab", "finish_reason": "length"})
    assert "text: first divergence at char 2" in d and "finish_reason 'stop' (plain) vs 'length'" in d


def test_stop_across_picks_a_token_boundary_and_judge_stop():
    pieces = ["Hel", "lo", " wor", "ld"]
    stop, before, i = pr.stop_across(pieces)
    assert stop in ("lw", "o w", "lo", "rl") and "".join(pieces).find(stop) == len(before)
    assert pr.stop_across([" ", " "]) is None and pr.stop_across(["a", ""]) is None
    assert pr.stop_across(["aa", "a"])[0] == "aaa"  # "aa" first occurs inside the first piece
    assert pr.judge_stop("Hel", "stop", "Hel", "stop 'lo'", "lo")[0] == "pass"
    assert pr.judge_stop("Hel", "length", "Hel", "x")[2] == "protocol"
    outcome, detail, klass = pr.judge_stop("Hello", "stop", "Hel", "stop 'lo'", "lo")
    assert (outcome, klass) == ("fail", "protocol") and "returned at the end" in detail
    assert pr.judge_stop("Hello w", "length", "Hel", "x")[2] == "backend-specific"


def test_whole_pieces_merge_split_characters():
    b = "a你🙂".encode()
    pieces, ends = pr.whole_pieces([b[:2], b[2:4], b[4:6], b[6:]])
    assert (pieces, ends) == (["a你", "🙂"], [1, 3])
    assert pr.whole_pieces([b"a\xe4"]) == (["a\ufffd"], [0])  # an unfinished tail is still returned


def test_gbnf_literal_escapes():
    g = pr.gbnf_literal('a"\\\n東🙂\t')
    assert g == 'root ::= "a\\"\\\\\\n\\u6771\\U0001F642\\x09"\n'


def test_special_conventions():
    kept, skipped = pr.special_expectations("<|a|>x<think>y<|b|>", ["<|a|>", "<|b|>"])
    assert (kept, skipped) == ("<|a|>x<think>y<|b|>", "x<think>y")
    assert pr.convention("x<think>y", kept, skipped) == "skipped"
    assert pr.convention("xy", kept, skipped) == "neither"


def test_reference_tool_parser_on_the_fixed_completions():
    assert [c.name for c in toolcalls.parse(pr.TOOL_TEXTS["parallel"])] == ["get_weather", "get_time"]
    (call,) = toolcalls.parse(pr.TOOL_TEXTS["nested-unicode"])
    assert call.arguments["guest"]["name"] == "Zoë 李" and call.arguments["note"] == 'quote " and \\ backslash'
    got = pr.tool_calls_of([{"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}])
    assert toolcalls.compare(toolcalls.parse(pr.TOOL_TEXTS["single"]), got) == ""


def test_golden_mode_records_nothing_and_an_empty_cell_is_one_skipped_record(tmp_path):
    rec = Recorder("golden")
    sp.run({"model_dir": str(tmp_path)}, rec)
    assert rec.records == [] and "golden" in rec.facts["postprocess"]
    rec = Recorder("check")
    sp.run({"model_dir": str(tmp_path), "postprocess": {"detokenizers": ["nope"]}}, rec)
    assert [r["outcome"] for r in rec.records] == ["skipped"]
    assert "unknown detokenizer" in rec.records[0]["detail"]


# --------------------------------------------------------------------------- SSE over real HTTP (stub)


class _Stub(BaseHTTPRequestHandler):
    """Answers /v1/completions; streamed, it drops the second byte token of 你 (a lossy stream)."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = "a你b" if not req.get("stop") else "a"
        if not req.get("stream"):
            body = json.dumps({"choices": [{"text": text, "finish_reason": "length"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in ("a", "b"):
            self.wfile.write(f"data: {json.dumps({'choices': [{'text': piece}]})}\n\n".encode())
        self.wfile.write(b'data: {"choices":[{"text":"","finish_reason":"length"}]}\n\ndata: [DONE]\n\n')


@pytest.fixture
def stub_url():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_stream_request_reads_sse_and_a_lossy_stream_is_a_failure(stub_url):
    from servers import OpenAIClient

    client = OpenAIClient(stub_url, timeout=10)
    plain = client.completions({"prompt": "x"})["choices"][0]
    streamed = pe.streamed_answer(pe.stream_request(client, "/completions", {"prompt": "x"}))
    assert streamed["chunks"] == 3 and streamed["finish_reason"] == "length"
    diff = pr.stream_diff({"text": plain["text"], "finish_reason": plain["finish_reason"]}, streamed)
    assert "first divergence at char 1" in diff


def test_server_engine_checks_against_a_stub_openai_endpoint(stub_url, tmp_path):
    rec = Recorder("check")
    job = {
        "model_dir": str(tmp_path),
        "engines": [{"name": "openai-endpoint", "base_url": stub_url, "model": "m"}],
        "cases": [{"id": "c1", "stages": ["inference"], "expect": {"render": "hello", "ids": [1]}}],
    }
    ctx = pc.Ctx(job, rec)
    pe.engine_checks(ctx)
    recs = {r["check"]: r for r in rec.records}
    assert recs["openai-endpoint:stream"]["outcome"] == "fail"
    assert recs["openai-endpoint:stream"]["klass"] == "backend-specific"


# --------------------------------------------------------------------------- the probe for real


def run_postprocess(python: Path, job: dict) -> dict:
    from tests.conftest import probe_result

    return probe_result(python, job)


def golden_cases(ids):
    from matrix import suites

    suite = suites.load("core")
    cases = suites.cases_with_goldens(suite, suites.load_goldens(suite, "tiny-qwen2"))
    return [c for c in cases if c["id"] in ids]


def by_check(result) -> dict:
    return {(r["case"], r["check"]): r for r in result["records"]}


@pytest.mark.parametrize("cell", sorted(TOKENIZER_CELLS))
def test_incremental_detokenization_and_parsers_with_real_tokenizers(cell, model):
    from matrix.env import uv as envs

    lock = _or_skip(envs.resolve, TOKENIZER_CELLS[cell], python="3.11")
    assert isinstance(lock, envs.Lock), lock
    python = _or_skip(envs.ensure, lock).python
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["postprocess"],
        "cases": golden_cases(["single-user"]),
        "report_versions": ["tokenizers", "transformers"],
    }
    result = run_postprocess(python, job)
    recs = by_check(result)
    facts = result["facts"]["postprocess"]
    print(cell, result["duration_s"], "s;", json.dumps(result["stages"]["postprocess"]))
    # 2. incremental detokenization: DecodeStream and TextStreamer, every multi-byte text
    for det in ("tokenizers", "transformers"):
        for t in pr.TEXTS:
            r = recs[(f"_detok/{t}", f"{det}:incremental")]
            assert r["outcome"] == "pass", r
        assert recs[("_special/mixed", f"{det}:special")]["outcome"] == "pass"
    assert facts["detokenizers"]["tokenizers"]["tokenizers"] == TOKENIZER_CELLS[cell][0].split("==")[1]
    assert facts["special_convention"]["tokenizers (skip=True)"] == "skipped"
    # 5 + 6: transformers' response-template parser against the reference on fixed texts
    for name in pr.TOOL_TEXTS:
        assert recs[(f"_tools/{name}", "tools:transformers")]["outcome"] == "pass"
        assert recs[(f"_tools/{name}", "tools:transformers-stream")]["outcome"] == "pass"
    for name in pr.REASONING_TEXTS:
        assert recs[(f"_reasoning/{name}", "reasoning:transformers")]["outcome"] == "pass"
    # a real finding, kept visible: streamed, the parser keeps the template's newlines that the
    # whole-text parse strips (transformers serve: stream and non-stream answers differ)
    r = recs[("_reasoning/think-then-answer", "reasoning:transformers:stream")]
    assert r["outcome"] == "fail" and r["klass"] == "backend-specific", r
    assert "fixed completion texts" in facts["reasoning_inputs"]
    assert "llama-cpp" in " ".join(facts["skipped"])  # a fact, not a record


@pytest.fixture(scope="module")
def llama_python():
    from tests.conftest import llama_env

    return llama_env()


@pytest.mark.slow
def test_llama_cpp_streaming_stops_and_specials_for_real(model, llama_python):
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["postprocess"],
        "cases": golden_cases(["single-user", "system-prompt"]),
        "engines": ["llama-cpp-python", "llama-cpp-server"],
        "postprocess": {"cases": ["single-user"]},
    }
    result = run_postprocess(llama_python, job)
    recs = by_check(result)
    print(result["duration_s"], "s;", json.dumps(result["stages"]["postprocess"]))
    for t in pr.TEXTS:
        assert recs[(f"_detok/{t}", "llama-cpp:incremental")]["outcome"] == "pass"
    for eng in ("llama-cpp-python", "llama-cpp-server"):
        # forced multi-byte texts: the plain stream path holds split characters until whole
        for t in pr.TEXTS:
            assert recs[(f"_forced/{t}", f"{eng}:stream")]["outcome"] == "pass", recs[(f"_forced/{t}", f"{eng}:stream")]
        # llama-cpp-python 0.2.90 decodes each streamed token alone with errors="ignore" when
        # logprobs are asked for: every character split across tokens is lost
        r = recs[("_forced/cjk", f"{eng}:stream-logprobs")]
        assert r["outcome"] == "fail" and r["klass"] == "backend-specific", r
    for check in (
        "llama-cpp-python:stop-string",
        "llama-cpp-python:stop-string:stream",
        "llama-cpp-python:stop-token:1490",
        "llama-cpp-python:stop-token:1493:stream",
        "llama-cpp-python:special",
        "llama-cpp-python:special:stream",
    ):
        case = next(k[0] for k in recs if k[1] == check)
        assert recs[(case, check)]["outcome"] == "pass", recs[(case, check)]
    assert result["facts"]["postprocess"]["special_convention"]["llama-cpp-python:special"] == "skipped"
    assert "no reasoning separation" in result["facts"]["postprocess"]["llama_cpp_parsers"]
