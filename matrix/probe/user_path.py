"""The user's path through a server: messages in, the server's own template and tokenizer.

Part of the client stage (``stage_client.run`` calls :func:`run` with the started target). A
user sends a conversation to ``/v1/chat/completions`` with only ``temperature: 0`` and a small
``max_tokens``; the server applies its own chat template and tokenizes with its own BOS rules.
For each golden case the reference's prompt is known (the template stage's render and the
tokenize stage's ids), so what the server built can be compared with it:

- ``server:<name>:prompt_tokens`` (stage ``tokenize``): ``usage.prompt_tokens`` against the
  length of the reference prompt. One token more where the reference render already starts with
  the model's BOS is a double BOS (klass ``double-bos``); any other difference is a different
  prompt (default template, typed-content joining, tokenization: klass ``configuration-default``),
  with both counts. Without the server's own render the count cannot say more.
- ``server:<name>:apply-template`` (stage ``template``), where the server has llama-server's
  ``/apply-template``: its rendered prompt against the reference render (the first divergence);
  ``server:<name>:tokenize`` (stage ``tokenize``), where it has ``/tokenize``: that prompt's ids
  with the server's special-token rule against the reference ids, BOS counted.

- ``server:<name>:defaults`` (stage ``inference``): :func:`defaults`, the configuration-default
  class named by the parameter whose pin alone removes the difference.

For a server that is not the cell's own (the shared client server) the checks are facts
(``facts.user_path.checks``, :class:`FactsOnly`), not records: no component of the cell made them.

Cases a chat request cannot express (``continue_final_message``, no generation prompt, an
expected template error) are left out; a request the server refuses is ``skipped`` with its words.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from probe import first_divergence, first_id_divergence


class FactsOnly:
    """A recorder that keeps the checks as facts (``facts.user_path.checks``), not records: for a
    server that is not the cell's own (the shared client server), whose findings would otherwise
    be grouped under the cell's engine or tokenizer, which did not make them."""

    def __init__(self, rec):
        self.facts = rec.facts
        self.checks = rec.facts.setdefault("user_path", {}).setdefault("checks", [])

    def add(self, case, stage, check, outcome, detail="", **extra):
        self.checks.append(
            {"case": case, "stage": stage, "check": check, "outcome": outcome, "detail": detail[:500], **extra}
        )


def _post(url: str, body: dict, timeout: float, api_key: str) -> tuple[int, dict | str]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")[:500]


def expressible(case: dict) -> bool:
    expect = case.get("expect") or {}
    return (
        "ids" in expect
        and "render" in expect
        and not expect.get("error")
        and not case.get("continue_final_message")
        and case.get("add_generation_prompt", True)
    )


def _bos(job: dict) -> tuple[str | None, int | None]:
    try:
        import stage_tokenize

        bos, specials = stage_tokenize.model_special_tokens(job["model_dir"])
        return bos, specials.get(bos) if bos else None
    except Exception:  # noqa: BLE001 - without the model's files BOS is unknown
        return None, None


def judge_count(server: str, got: int, want: int, template_bos: bool) -> tuple[str, str, str | None]:
    """(outcome, detail, klass) of the server's prompt length against the reference's;
    ``template_bos``: the reference render already starts with the model's BOS text."""
    if got == want:
        return "pass", f"{got} prompt tokens, as the reference prompt", None
    what = f"{server} counted {got} prompt tokens, the reference prompt has {want}"
    if template_bos and got == want + 1:
        return (
            "fail",
            what + ": one more, a BOS added to a prompt whose template already has one (double BOS)",
            "double-bos",
        )
    return (
        "fail",
        what + ": the server's prompt differs (its default template, typed-content joining or tokenization)",
        "configuration-default",
    )


def run(job: dict, rec, base_url: str, model: str | None, server: str, api_key: str, timeout: float) -> None:
    cases = [c for c in job.get("cases") or [] if expressible(c)]
    if not cases:
        return
    bos, bos_id = _bos(job)
    endpoints = {"apply-template": True, "tokenize": True}
    facts = rec.facts.setdefault("user_path", {})
    facts.setdefault("server", server)
    facts.setdefault("counts", {})
    for case in cases:
        cid, expect = case["id"], case["expect"]
        body = {"messages": case["messages"], "temperature": 0, "max_tokens": 1}
        if model:
            body["model"] = model
        if case.get("tools"):
            body["tools"] = case["tools"]
        status, answer = _post(base_url + "/v1/chat/completions", body, timeout, api_key)
        check = f"server:{server}:prompt_tokens"
        got = (answer.get("usage") or {}).get("prompt_tokens") if isinstance(answer, dict) else None
        if status >= 300 or not isinstance(got, int):
            rec.add(
                cid,
                "tokenize",
                check,
                "skipped",
                f"{server} answered HTTP {status} without usage.prompt_tokens: {str(answer)[:300]}",
            )
        else:
            outcome, detail, klass = judge_count(
                server, got, len(expect["ids"]), bool(bos) and expect["render"].startswith(bos)
            )
            facts["counts"][cid] = [got, len(expect["ids"])]
            rec.add(cid, "tokenize", check, outcome, detail, **({"klass": klass} if klass else {}))
        if endpoints["apply-template"]:
            _apply_template(job, rec, case, base_url, server, api_key, timeout, endpoints, bos_id)
    defaults(job, rec, base_url, model, server, api_key, timeout)


PINS = (
    ("top_p", 1.0),
    ("top_k", 1),
    ("min_p", 0.0),
    ("repetition_penalty", 1.0),
    ("repeat_penalty", 1.0),
    ("frequency_penalty", 0.0),
    ("presence_penalty", 0.0),
    ("seed", 0),
)
"""The reference's decoding parameters, as a server's API may name them: pinned one at a time."""


def _content(answer) -> tuple[str | None, str | None]:
    try:
        choice = answer["choices"][0]
        return choice["message"].get("content") or "", choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, None


def defaults(job: dict, rec, base_url: str, model: str | None, server: str, api_key: str, timeout: float) -> None:
    """Defaults as users send them: only messages, ``temperature: 0`` and ``max_tokens``; the
    server's greedy text against the reference's generation. A difference that pinning one
    parameter alone removes is ``configuration-default`` naming that parameter (a bisection over
    parameters); one that no pin removes is the server's own (``mismatch``, with what was tried)."""
    for case in job.get("cases") or []:
        gen = (case.get("expect") or {}).get("gen")
        if not gen or not expressible(case):
            continue
        cid, want = case["id"], gen.get("text")
        check = f"server:{server}:defaults"
        body = {
            "messages": case["messages"],
            "temperature": 0,
            "max_tokens": int(gen.get("max_new_tokens", 16)),
            **({"model": model} if model else {}),
        }
        status, answer = _post(base_url + "/v1/chat/completions", body, timeout, api_key)
        text, finish = _content(answer)
        if status >= 300 or text is None:
            rec.add(cid, "inference", check, "skipped", f"{server} answered HTTP {status}: {str(answer)[:300]}")
            continue
        if text == want or (finish == "stop" and want.startswith(text)):
            rec.add(
                cid,
                "inference",
                check,
                "pass",
                "the reference's greedy text under defaults" + (" (stopped at EOS)" if text != want else ""),
            )
            continue
        tried, refused = [], []
        for name, value in PINS:
            st, ans = _post(base_url + "/v1/chat/completions", {**body, name: value}, timeout, api_key)
            if st >= 300:
                refused.append(name)
                continue
            tried.append(name)
            if _content(ans)[0] == want:
                rec.add(
                    cid,
                    "inference",
                    check,
                    "fail",
                    f"under defaults {server}'s greedy text differs from the "
                    f"reference ({first_divergence(want, text)}); pinning {name}={value} alone gives the "
                    "reference's text",
                    klass="configuration-default",
                    parameter=name,
                )
                break
        else:
            rec.add(
                cid,
                "inference",
                check,
                "fail",
                f"{server}'s greedy text differs from the reference under defaults "
                f"and with each parameter pinned alone (tried {', '.join(tried) or 'none'}; refused "
                f"{', '.join(refused) or 'none'}): {first_divergence(want, text)}",
                klass="mismatch",
            )


def _apply_template(job, rec, case, base_url, server, api_key, timeout, endpoints, bos_id) -> None:
    """llama-server's own render and tokenization of the case (skipped where it has no such endpoint)."""
    cid, expect = case["id"], case["expect"]
    body = {
        "messages": case["messages"],
        "add_generation_prompt": True,
        **({"tools": case["tools"]} if case.get("tools") else {}),
    }
    status, answer = _post(base_url + "/apply-template", body, timeout, api_key)
    if status in (404, 405):
        endpoints["apply-template"] = False
        return
    check = f"server:{server}:apply-template"
    if status >= 300 or not isinstance(answer, dict) or not isinstance(answer.get("prompt"), str):
        rec.add(
            cid, "template", check, "skipped", f"{server} /apply-template answered HTTP {status}: {str(answer)[:300]}"
        )
        return
    prompt = answer["prompt"]
    diff = first_divergence(expect["render"], prompt)
    rec.add(cid, "template", check, "fail" if diff else "pass", diff, **({"klass": "mismatch"} if diff else {}))
    if not endpoints["tokenize"]:
        return
    status, answer = _post(base_url + "/tokenize", {"content": prompt, "add_special": True}, timeout, api_key)
    if status in (404, 405) or not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
        endpoints["tokenize"] = False
        return
    ids = [t if isinstance(t, int) else t.get("id") for t in answer["tokens"]]
    want = list(expect["ids"])
    lead = 0
    while bos_id is not None and lead < len(ids) and ids[lead] == bos_id:
        lead += 1
    check = f"server:{server}:tokenize"
    if lead >= 2:
        rec.add(
            cid,
            "tokenize",
            check,
            "fail",
            f"{lead} BOS ids ({bos_id}) at the start of {server}'s tokenization of its own prompt",
            klass="double-bos",
            bos_count=lead,
        )
        return
    if bos_id is not None and lead == 1 and (not want or want[0] != bos_id):
        want = [bos_id] + want  # the server adds the model's BOS: compare the rest
    diff = first_id_divergence(want, ids)
    rec.add(cid, "tokenize", check, "fail" if diff else "pass", diff, **({"klass": "mismatch"} if diff else {}))
