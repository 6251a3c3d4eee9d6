"""The core golden suite: its schema, the repeat helper, what it covers, and its goldens."""

import sys
from pathlib import Path

import pytest

from matrix import suites
from matrix.errors import ConfigError

PROBE_DIR = Path(__file__).resolve().parent.parent / "matrix" / "probe"
if str(PROBE_DIR) not in sys.path:
    sys.path.insert(0, str(PROBE_DIR))

import toolcalls  # noqa: E402


@pytest.fixture(scope="module")
def suite():
    return suites.load("core")


@pytest.fixture(scope="module")
def goldens(suite):
    return suites.load_goldens(suite, "tiny-qwen2")


def texts(value):
    """Every string inside a case (contents, parts, arguments, tool schemas)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from texts(v)


def contents(case):
    for m in case["messages"]:
        c = m.get("content")
        if isinstance(c, str):
            yield c
        elif isinstance(c, list):
            yield from (p.get("text", "") for p in c)


def write_suite(tmp_path, body: str) -> Path:
    d = tmp_path / "s"
    d.mkdir(exist_ok=True)
    (d / "cases.yaml").write_text("suite: s\nversion: '1'\ncases:\n" + body, encoding="utf-8")
    return tmp_path


# --------------------------------------------------------------------------- coverage


FEATURES = {
    "system prompt": lambda c: c["messages"][0]["role"] == "system",
    "multi-turn": lambda c: sum(m["role"] == "user" for m in c["messages"]) >= 3,
    "generation prompt off": lambda c: c.get("add_generation_prompt") is False and not c.get("continue_final_message"),
    "generation prompt on": lambda c: c.get("add_generation_prompt", True) is True,
    "continue final message": lambda c: (
        c.get("continue_final_message") is True and c["messages"][-1]["role"] == "assistant"
    ),
    "tool definitions": lambda c: bool(c.get("tools")),
    "single tool call": lambda c: any(len(m.get("tool_calls") or []) == 1 for m in c["messages"]),
    "parallel tool calls": lambda c: any(len(m.get("tool_calls") or []) >= 2 for m in c["messages"]),
    "arguments as dict": lambda c: any(
        isinstance(t.get("function", t).get("arguments"), dict)
        for m in c["messages"]
        for t in m.get("tool_calls") or []
    ),
    "arguments as JSON string": lambda c: any(
        isinstance(t.get("function", t).get("arguments"), str) for m in c["messages"] for t in m.get("tool_calls") or []
    ),
    "tool results": lambda c: any(m["role"] == "tool" for m in c["messages"]),
    "consecutive tool results": lambda c: any(
        a["role"] == b["role"] == "tool" for a, b in zip(c["messages"], c["messages"][1:])
    ),
    "reasoning kept": lambda c: c["messages"][-1].get("reasoning_content") and c["messages"][-1]["role"] == "assistant",
    "reasoning dropped": lambda c: (
        any(m.get("reasoning_content") for m in c["messages"][:-1]) and c["messages"][-1]["role"] == "user"
    ),
    "typed content": lambda c: any(isinstance(m.get("content"), list) for m in c["messages"]),
    "CJK": lambda c: any("\u4e00" <= ch <= "\u9fff" for t in contents(c) for ch in t),
    "emoji ZWJ": lambda c: any("\u200d" in t and any(ord(ch) > 0x1F000 for ch in t) for t in contents(c)),
    "skin tone": lambda c: any(any(0x1F3FB <= ord(ch) <= 0x1F3FF for ch in t) for t in contents(c)),
    "combining marks": lambda c: any("\u0301" in t or "\u0303" in t for t in contents(c)),
    "NBSP": lambda c: any("\u00a0" in t for t in contents(c)),
    "zero-width space": lambda c: any("\u200b" in t for t in contents(c)),
    "RTL text": lambda c: any(any("\u0590" <= ch <= "\u06ff" for ch in t) for t in contents(c)),
    "whitespace runs": lambda c: any("    " in t for t in contents(c)),
    "tabs": lambda c: any("\t" in t for t in contents(c)),
    "CRLF": lambda c: any("\r\n" in t for t in contents(c)),
    "special-token text": lambda c: any("<|im_start|>" in t or "<|im_end|>" in t for t in contents(c)),
    "very long message": lambda c: any(len(t) >= 20_000 for t in contents(c)),
    "empty content": lambda c: any(
        m.get("content") == "" and m["role"] in ("user", "assistant", "system") and not m.get("tool_calls")
        for m in c["messages"]
    ),
    "unknown role raises": lambda c: "role" in c.get("expect", {}).get("error", ""),
    "needles": lambda c: bool(c.get("needles")),
}


def test_the_core_suite_has_40_cases_covering_every_feature(suite):
    assert len(suite.cases) >= 40
    missing = [name for name, has in FEATURES.items() if not any(has(c) for c in suite.cases)]
    assert not missing


CAPABILITIES = {
    "system-role",
    "tools",
    "tool-calls",
    "parallel-tool-calls",
    "typed-content",
    "object-arguments",
    "reasoning",
}


def test_every_capability_has_a_needle_case_with_unique_needles(suite):
    caps = {c.get("capability"): c for c in suite.cases if c.get("needles")}
    assert CAPABILITIES <= set(caps)
    for case in suite.cases:
        for needle in case.get("needles", []):
            assert any(needle in t for t in texts([case["messages"], case.get("tools") or []])), needle
            others = [c["id"] for c in suite.cases if c is not case and any(needle in t for t in texts(c))]
            assert not others, (needle, others)


# --------------------------------------------------------------------------- loader


def test_repeat_is_expanded_by_the_loader(suite):
    case = next(c for c in suite.cases if c["id"] == "long-message")
    assert case["messages"][0]["content"] == "abc " * 5000 and len(case["messages"][0]["content"]) == 20_000


def test_repeat_expands_anywhere_in_a_case(tmp_path):
    root = write_suite(
        tmp_path,
        """
  - id: a
    messages:
      - role: user
        content: [{type: text, text: {repeat: "xy", times: 3}}]
""",
    )
    (case,) = suites.load("s", root).cases
    assert case["messages"][0]["content"][0]["text"] == "xyxyxy"


@pytest.mark.parametrize(
    "bad",
    [
        '{repeat: "", times: 3}',
        '{repeat: "x", times: 0}',
        '{repeat: "x", times: "3"}',
        '{repeat: "x"}',
        '{repeat: "x", times: 2, extra: 1}',
        '{repeat: "x", times: 100000000}',
    ],
)
def test_a_bad_repeat_is_a_config_error_naming_the_case(tmp_path, bad):
    root = write_suite(
        tmp_path,
        f"""
  - id: a
    messages:
      - {{role: user, content: {bad}}}
""",
    )
    with pytest.raises(ConfigError) as err:
        suites.load("s", root)
    assert "cases[0].messages[0].content" in str(err.value)


@pytest.mark.parametrize(
    "field, value",
    [("needles", "[]"), ("needles", "[1]"), ("needles", "'x'"), ("capability", "'Bad Name'"), ("stages", "[render]")],
)
def test_the_schema_checks_needles_capability_and_stages(tmp_path, field, value):
    root = write_suite(
        tmp_path,
        f"""
  - id: a
    {field}: {value}
    messages: [{{role: user, content: hi}}]
""",
    )
    with pytest.raises(ConfigError):
        suites.load("s", root)


def test_continuing_the_final_message_means_no_generation_prompt(suite):
    for case in suite.cases:
        if case.get("continue_final_message"):
            assert case["add_generation_prompt"] is False, case["id"]


# --------------------------------------------------------------------------- goldens


def test_goldens_are_for_this_suite(suite, goldens):
    assert goldens is not None
    for case in suite.cases:
        got = goldens.cases.get(case["id"], {})
        if case.get("expect", {}).get("error"):
            assert "render" not in got, case["id"]
            continue
        assert "render" in got, case["id"]
        assert ("ids" in got) == ("tokenize" in case.get("stages", ["template", "tokenize"])), case["id"]
    assert set(goldens.cases) <= set(suite.case_ids)


def test_needles_survive_into_the_golden_renders(suite, goldens):
    for case in suite.cases:
        for needle in case.get("needles", []):
            assert needle in goldens.cases[case["id"]]["render"], (case["id"], needle)


def test_tool_calls_round_trip_through_the_golden_renders(suite, goldens):
    n = 0
    for case in suite.cases:
        if any(m.get("tool_calls") for m in case["messages"]):
            assert toolcalls.roundtrip(case["messages"], goldens.cases[case["id"]]["render"]) == "", case["id"]
            n += 1
    assert n >= 8


def test_continued_renders_end_with_the_open_message(suite, goldens):
    for case in suite.cases:
        if case.get("continue_final_message"):
            final = case["messages"][-1]["content"]
            if isinstance(final, list):
                final = "".join(p["text"] for p in final)
            assert goldens.cases[case["id"]]["render"].endswith(final), case["id"]
