"""Fingerprints: same failure -> same fingerprint; another stage or case -> another one."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from bot.fingerprint import fingerprint, normalize_error

RUN_A = """Traceback (most recent call last):
  File "/home/runner/work/.llmcompat/venvs/cell-1a2b/lib/python3.11/site-packages/transformers/tokenization_utils_base.py", line 1723, in apply_chat_template
    rendered = compiled.render(**kwargs)
jinja2.exceptions.TemplateError: <Template object at 0x7f3a9c2b10d0> raised at 2026-03-01T12:00:01.123Z
  while rendering /tmp/tmpab12cd/chat_template.jinja:14:7 (request 123456789,
  id 123e4567-e89b-12d3-a456-426614174000) with transformers 4.57.1"""

RUN_B = """Traceback (most recent call last):
  File "/home/runner/work/.llmcompat/venvs/cell-9f8e/lib/python3.12/site-packages/transformers/tokenization_utils_base.py", line 1731, in apply_chat_template
    rendered   =   compiled.render(**kwargs)
jinja2.exceptions.TemplateError: <Template object at 0x55d0c0ffee00> raised at 2026-03-02T08:15:59+00:00
  while rendering /tmp/tmpzz99yy/chat_template.jinja:15:2 (request 987654321,
  id 0b8f3c2e-1111-4a2b-9c3d-abcdefabcdef) with transformers 4.58.0"""


def test_runs_that_differ_only_in_noise_share_a_fingerprint():
    a = fingerprint("transformers", "template", "tool-call-basic", RUN_A, versions=["4.57.1"])
    b = fingerprint("transformers", "template", "tool-call-basic", RUN_B, versions=["4.58.0"])
    assert a == b
    assert re.fullmatch(r"[0-9a-f]{16}", a)


def test_another_stage_case_component_or_message_differs():
    base = fingerprint("transformers", "template", "tool-call-basic", RUN_A)
    assert fingerprint("transformers", "tokenize", "tool-call-basic", RUN_A) != base
    assert fingerprint("transformers", "template", "multi-turn", RUN_A) != base
    assert fingerprint("tokenizers", "template", "tool-call-basic", RUN_A) != base
    other = RUN_A.replace("TemplateError", "UndefinedError")
    assert fingerprint("transformers", "template", "tool-call-basic", other) != base


def test_fingerprint_is_a_pure_function_of_its_inputs():
    # a fixed value: a change of normalization or hashing shows up here (it would reopen issues)
    assert fingerprint("openai", "client", "stream", "KeyError: 'choices'") == fingerprint(
        "openai", "client", "stream", "KeyError:   'choices'\n"
    )
    assert fingerprint("openai", "client", "stream", "KeyError: 'choices'") == "1d606f215217afd4"


def test_normalize_rules():
    n = normalize_error
    assert n("segfault at 0x7ffd1234abcd") == "segfault at 0x<addr>"
    assert n('File "x.py", line 42, in f') == 'File "x.py", line <n>, in f'
    assert n("model.jinja:3:14: unexpected '}'") == "model.jinja:<n>: unexpected '}'"
    assert n("wrote /var/folders/xy/T/tmpq1/out.json") == "wrote <tmp>"
    assert n(r"C:\Users\ci\AppData\Local\Temp\tmp1x\a.gguf missing") == "<tmp> missing"
    assert n("pid 1234567 exited") == "pid <n> exited"
    assert n("at 2026-01-31 23:59:59 and 10:11:12") == "at <time> and <time>"
    assert n("needs llama-cpp-python>=0.3.16, got 0.3.2") == "needs llama-cpp-python>=<version>, got <version>"
    assert n("pin jinja2==3.1, then") == "pin jinja2==<version>, then"
    assert n("tokenizers 0.22.1 failed") == "tokenizers <version> failed"
    assert n("a \t\n  b ") == "a b"
    # meaningful small numbers and two-part values stay, unless they are the changed versions
    assert n("expected 3 tokens, got 4; temperature 0.7") == "expected 3 tokens, got 4; temperature 0.7"
    assert n("engine 4.46 broke", versions=["4.46"]) == "engine <version> broke"
    assert n("engine 4.46 broke") == "engine 4.46 broke"


@given(
    st.integers(0, 2**48),
    st.integers(1, 99999),
    st.from_regex(r"[a-z0-9_]{3,10}", fullmatch=True),
    st.uuids(),
)
def test_noise_never_changes_the_fingerprint(addr, line, tmp, uid):
    msg = f"boom at {hex(addr)} in /tmp/{tmp}/x.py, line {line}, request {uid}"
    assert fingerprint("c", "inference", "k", msg) == fingerprint(
        "c", "inference", "k", "boom at 0x0 in /tmp/t/x.py, line 1, request 00000000-0000-0000-0000-000000000000"
    )
