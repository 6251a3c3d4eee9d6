"""The user's path through a server: messages in, the server's own template and tokenizer.

Part of the client stage (``stage_client.run`` calls :func:`run` with the started target). A
user sends a conversation to ``/v1/chat/completions`` with only ``temperature: 0`` and a small
``max_tokens``; the server applies its own chat template and tokenizes with its own BOS rules.
For each golden case the reference's prompt is known (the template stage's render and the
tokenize stage's ids), so what the server built can be compared with it:

- ``server:<name>:prompt_tokens`` (stage ``tokenize``): ``usage.prompt_tokens`` against the
  length of the reference prompt. One token more where the reference render already starts with
  the model's BOS is a double BOS (klass ``double-bos``); one less where the reference ids start
  with it, a missing BOS (``missing-bos``); any other difference is a different prompt (default
  template, typed-content joining, tokenization: klass ``configuration-default``), with both
  counts. Where the server takes a raw prompt (Ollama's ``/api/generate`` with ``raw``, else
  ``/v1/completions``), the reference render is sent raw too and its count tells the two apart:
  counted as the reference, the server's own template made the difference. A prompt longer
  than the server's context (llama-server's ``/props``, vLLM's ``max_model_len``) that comes back
  shorter was cut without an error (``truncated``).
- The server's own render, where it has an endpoint for it: llama-server's ``/apply-template``
  (``server:<name>:apply-template``, stage ``template``: against the reference render, the first
  divergence) and ``/tokenize`` of that prompt; vLLM's ``/tokenize`` with messages and
  ``/detokenize`` of its ids (``server:<name>:detokenize``). ``server:<name>:tokenize`` (stage
  ``tokenize``): the server's ids of its own prompt against the reference ids, BOS and EOS counted.

- ``server:<name>:defaults`` (stage ``inference``): :func:`defaults`, the configuration-default
  class named by the parameter (or the few together) whose pin removes the difference.

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
    except (OSError, ValueError) as exc:  # no HTTP answer (refused, reset, timed out): the case is skipped
        return 0, f"no answer: {exc}"


def _ok(status: int) -> bool:
    """A 2xx answer (0: none at all)."""
    return 200 <= status < 300


def _get_json(url: str, timeout: float, api_key: str) -> dict:
    """A GET's JSON object, or {} (absent endpoint, another shape, no answer)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=min(timeout, 10)) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - a server without this endpoint
        return {}
    return data if isinstance(data, dict) else {}


def expressible(case: dict) -> bool:
    expect = case.get("expect") or {}
    return (
        "ids" in expect
        and "render" in expect
        and not expect.get("error")
        and not case.get("continue_final_message")
        and case.get("add_generation_prompt", True)
    )


def _specials(job: dict) -> tuple[str | None, int | None, int | None]:
    """(BOS text, BOS id, EOS id) of the model; Nones without its files."""
    try:
        import stage_tokenize

        bos, specials = stage_tokenize.model_special_tokens(job["model_dir"])
        eos = stage_tokenize.model_eos_token(job["model_dir"])
        return bos, specials.get(bos) if bos else None, specials.get(eos) if eos else None
    except Exception:  # noqa: BLE001 - without the model's files BOS and EOS are unknown
        return None, None, None


def judge_count(
    server: str,
    got: int,
    want: int,
    template_bos: bool,
    raw: int | None = None,
    ref_bos: bool = False,
    context: int | None = None,
) -> tuple[str, str, str | None]:
    """(outcome, detail, klass) of the server's prompt length against the reference's.

    ``template_bos``: the reference render already starts with the model's BOS text; ``ref_bos``:
    the reference ids start with the BOS id; ``raw``: the server's count for the reference render
    sent as a raw prompt (None where it takes none); ``context``: the server's context size, where
    it says."""
    if got == want:
        return "pass", f"{got} prompt tokens, as the reference prompt", None
    what = f"{server} counted {got} prompt tokens, the reference prompt has {want}"
    if raw is not None:
        what += f" (the reference prompt sent raw to {server}: {raw})"
    if context is not None and want > context >= got:
        return (
            "fail",
            what + f": the prompt is longer than the server's context ({context} tokens) and the "
            "server cut it without an error, so the model never saw the whole conversation",
            "truncated",
        )
    if raw == want:
        return (
            "fail",
            what + ": the server tokenizes the reference prompt as the reference does, so its own "
            "template built another prompt (its default template, typed-content joining or tools)",
            "configuration-default",
        )
    if template_bos and got == want + 1:
        return (
            "fail",
            what + ": one more, a BOS added to a prompt whose template already has one (double BOS)",
            "double-bos",
        )
    if ref_bos and got == want - 1:
        return "fail", what + ": one less, the reference prompt's BOS is missing", "missing-bos"
    return (
        "fail",
        what + ": the server's prompt differs (its default template, typed-content joining or tokenization)",
        "configuration-default",
    )


class Endpoints:
    """The server's own endpoints beyond chat completions, each tried once: an endpoint that
    answers 404 or 405, or in another shape, is taken as absent for the rest of the run."""

    def __init__(self, base_url: str, model: str | None, api_key: str, timeout: float, ollama: bool | None = None):
        self.base_url, self.model, self.api_key, self.timeout = base_url, model, api_key, timeout
        self.present = {"apply-template": True, "tokenize": True, "tokenize-messages": True, "raw": True}
        self.ollama = self._is_ollama() if ollama is None else ollama  # None: ask GET /api/version
        self.answered = False  # /tokenize has taken messages once: a later refusal is that case's

    def post(self, path: str, body: dict) -> tuple[int, dict | str]:
        if self.model and "model" not in body:
            body = {"model": self.model, **body}
        return _post(self.base_url + path, body, self.timeout, self.api_key)

    def _is_ollama(self) -> bool:
        return "version" in _get_json(self.base_url + "/api/version", self.timeout, self.api_key)

    def context(self) -> int | None:
        """The server's context size: llama-server's ``/props``, vLLM's ``max_model_len`` in
        ``/v1/models``; None where it does not say."""
        if not hasattr(self, "_context"):
            self._context = None
            for path, pick in (
                ("/props", lambda d: (d.get("default_generation_settings") or {}).get("n_ctx")),
                ("/v1/models", lambda d: ((d.get("data") or [{}])[0] or {}).get("max_model_len")),
            ):
                got = pick(_get_json(self.base_url + path, self.timeout, self.api_key))
                if isinstance(got, int) and got > 0:
                    self._context = got
                    break
        return self._context

    def raw_count(self, prompt: str) -> int | None:
        """The server's prompt length for ``prompt`` sent raw, with no template of its own."""
        if not self.present["raw"]:
            return None
        if self.ollama:
            body = {"prompt": prompt, "raw": True, "stream": False, "options": {"num_predict": 1, "temperature": 0}}
            status, answer = self.post("/api/generate", body)
            got = answer.get("prompt_eval_count") if isinstance(answer, dict) else None
        else:
            status, answer = self.post("/v1/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0})
            usage = answer.get("usage") if isinstance(answer, dict) else None
            got = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if status in (404, 405):
            self.present["raw"] = False
        return got if _ok(status) and isinstance(got, int) else None

    def messages_ids(self, case: dict) -> tuple[list | None, str | None]:
        """vLLM's ``/tokenize`` with messages (its chat path's ids) and ``/detokenize`` of them."""
        if not self.present["tokenize-messages"]:
            return None, None
        body = {"messages": case["messages"], "add_generation_prompt": True}
        if case.get("tools"):
            body["tools"] = case["tools"]
        status, answer = self.post("/tokenize", body)
        ids = answer.get("tokens") if isinstance(answer, dict) and "max_model_len" in answer else None
        if not _ok(status) or not isinstance(ids, list):
            if not self.answered:  # absent, or a tokenizer of plain text only (llama-server, SGLang)
                self.present["tokenize-messages"] = False
            return None, None
        self.answered = True
        status, text = self.post("/detokenize", {"tokens": ids})
        prompt = text.get("prompt") if isinstance(text, dict) else None
        return ids, prompt if _ok(status) and isinstance(prompt, str) else None


def run(job: dict, rec, base_url: str, model: str | None, server: str, api_key: str, timeout: float) -> None:
    cases = [c for c in job.get("cases") or [] if expressible(c)]
    if not cases:
        return
    bos, bos_id, eos_id = _specials(job)
    ask = Endpoints(base_url, model, api_key, timeout)
    facts = rec.facts.setdefault("user_path", {})
    facts.setdefault("server", server)
    facts.setdefault("counts", {})
    for case in cases:
        cid, expect = case["id"], case["expect"]
        body = {"messages": case["messages"], "temperature": 0, "max_tokens": 1}
        if case.get("tools"):
            body["tools"] = case["tools"]
        status, answer = ask.post("/v1/chat/completions", body)
        check = f"server:{server}:prompt_tokens"
        got = (answer.get("usage") or {}).get("prompt_tokens") if isinstance(answer, dict) else None
        if status == 0:  # no HTTP answer: nothing else of this case can be asked either
            rec.add(cid, "tokenize", check, "skipped", f"{server} gave no HTTP answer: {str(answer)[:300]}")
            continue
        if not _ok(status) or not isinstance(got, int):
            rec.add(
                cid,
                "tokenize",
                check,
                "skipped",
                f"{server} answered HTTP {status} without usage.prompt_tokens: {str(answer)[:300]}",
            )
        else:
            want = list(expect["ids"])
            raw = ask.raw_count(expect["render"]) if got != len(want) else None
            outcome, detail, klass = judge_count(
                server,
                got,
                len(want),
                bool(bos) and expect["render"].startswith(bos),
                raw=raw,
                ref_bos=bos_id is not None and want[:1] == [bos_id],
                context=ask.context() if got < len(want) else None,
            )
            facts["counts"][cid] = [got, len(want)] + ([raw] if raw is not None else [])
            rec.add(cid, "tokenize", check, outcome, detail, **({"klass": klass} if klass else {}))
        _own_render(rec, case, ask, server, bos_id, eos_id)
    defaults(job, rec, ask, server)


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


def responsible(pins: list, matches) -> list:
    """A smallest set of ``pins`` that still gives the reference's text, given that all of them
    do (``matches(subset) -> bool``): each pin is dropped in turn and kept only when the text needs
    it. A bisection over parameters that asks ``len(pins)`` questions and finds the one parameter
    responsible, or each of several that are needed together (1-minimal)."""
    kept = list(pins)
    for pin in pins:
        rest = [p for p in kept if p != pin]
        if matches(rest):
            kept = rest
    return kept


def _is_reference(text: str | None, finish: str | None, want: str) -> bool:
    """The reference's greedy text (or its beginning, where the server stopped at EOS)."""
    return text is not None and (text == want or (finish == "stop" and want.startswith(text)))


def defaults(job: dict, rec, ask: Endpoints, server: str) -> None:
    """Defaults as users send them: only messages, ``temperature: 0`` and ``max_tokens``; the
    server's greedy text against the reference's generation. A difference that pinning every
    parameter the server takes removes is ``configuration-default`` naming the parameter (or the
    few together) responsible, found by :func:`responsible`; one that the pins do not remove is
    the server's own (``mismatch``: its numerics or sampler, with what was pinned and refused)."""
    for case in job.get("cases") or []:
        gen = (case.get("expect") or {}).get("gen")
        if not gen or not expressible(case):
            continue
        cid, want = case["id"], gen.get("text")
        check = f"server:{server}:defaults"
        body = {"messages": case["messages"], "temperature": 0, "max_tokens": int(gen.get("max_new_tokens", 16))}

        def pinned_answer(pins: list, body=body) -> tuple[int, str | None, str | None]:
            status, answer = ask.post("/v1/chat/completions", {**body, **dict(pins)})
            return (status, *_content(answer)) if _ok(status) else (status, None, str(answer)[:300])

        status, text, finish = pinned_answer([])
        if text is None:
            rec.add(cid, "inference", check, "skipped", f"{server} answered HTTP {status}: {finish}")
            continue
        if _is_reference(text, finish, want):
            note = " (stopped at EOS)" if text != want else ""
            rec.add(cid, "inference", check, "pass", "the reference's greedy text under defaults" + note)
            continue
        pins, refused = list(PINS), []
        st, pinned, pfinish = pinned_answer(pins)
        if not _ok(st):  # a server that refuses a parameter it does not know: pin only what it takes
            refused = [p for p in PINS if not _ok(pinned_answer([p])[0])]
            pins = [p for p in PINS if p not in refused]
            st, pinned, pfinish = pinned_answer(pins)
        diff = first_divergence(want, text)
        names = ", ".join(n for n, _ in pins) or "none"
        if not _is_reference(pinned, pfinish, want):
            rec.add(
                cid,
                "inference",
                check,
                "fail",
                f"{server}'s greedy text differs from the reference under defaults and with every "
                f"parameter it takes pinned ({names}; refused {', '.join(n for n, _ in refused) or 'none'}), "
                f"so no default is the cause: the engine's own numerics or sampler: {diff}",
                klass="mismatch",
            )
            continue
        need = responsible(pins, lambda subset, want=want: _is_reference(*pinned_answer(subset)[1:], want))
        which = ", ".join(f"{n}={v}" for n, v in need)
        rec.add(
            cid,
            "inference",
            check,
            "fail",
            f"under defaults {server}'s greedy text differs from the reference ({diff}); with every "
            f"parameter pinned it is the reference's, and pinning {which}{' alone' if len(need) == 1 else ''} "
            "is enough: a default of the server's",
            klass="configuration-default",
            parameter=", ".join(n for n, _ in need),
        )


def _own_render(rec, case: dict, ask: Endpoints, server: str, bos_id, eos_id=None) -> None:
    """The server's own render and tokenization of the case, where it has endpoints for them:
    llama-server's ``/apply-template`` and ``/tokenize``, or vLLM's ``/tokenize`` with messages."""
    cid, expect = case["id"], case["expect"]
    if ask.present["apply-template"]:
        body = {
            "messages": case["messages"],
            "add_generation_prompt": True,
            **({"tools": case["tools"]} if case.get("tools") else {}),
        }
        status, answer = ask.post("/apply-template", body)
        if status in (404, 405):
            ask.present["apply-template"] = False
        elif not _ok(status) or not isinstance(answer, dict) or not isinstance(answer.get("prompt"), str):
            rec.add(
                cid,
                "template",
                f"server:{server}:apply-template",
                "skipped",
                f"{server} /apply-template answered HTTP {status}: {str(answer)[:300]}",
            )
            return
        else:
            prompt = answer["prompt"]
            _compare_render(rec, cid, f"server:{server}:apply-template", expect["render"], prompt)
            if not ask.present["tokenize"]:
                return
            status, answer = ask.post("/tokenize", {"content": prompt, "add_special": True})
            if status in (404, 405) or not isinstance(answer, dict) or not isinstance(answer.get("tokens"), list):
                ask.present["tokenize"] = False
                return
            own = [t if isinstance(t, int) else t.get("id") for t in answer["tokens"]]
            _compare_ids(rec, cid, server, list(expect["ids"]), own, bos_id, eos_id)
            return
    ids, text = ask.messages_ids(case)
    if ids is None:
        return
    if text is not None:
        _compare_render(rec, cid, f"server:{server}:detokenize", expect["render"], text)
    _compare_ids(rec, cid, server, list(expect["ids"]), ids, bos_id, eos_id)


def _compare_render(rec, cid: str, check: str, want: str, prompt: str) -> None:
    diff = first_divergence(want, prompt)
    rec.add(cid, "template", check, "fail" if diff else "pass", diff, **({"klass": "mismatch"} if diff else {}))


def _compare_ids(rec, cid: str, server: str, want: list, ids: list, bos_id, eos_id=None) -> None:
    """The server's ids of its own prompt against the reference ids: two leading BOS ids are a
    double BOS; one BOS the reference lacks is the server's rule for its tokenizer, not a fault;
    an EOS at the end that the reference lacks tells the model the turn is over."""
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
    if eos_id is not None and ids[-1:] == [eos_id] and want[-1:] != [eos_id]:
        rec.add(
            cid,
            "tokenize",
            check,
            "fail",
            f"{server}'s tokenization of its own prompt ends with EOS ({eos_id}), the reference prompt does not: "
            "the model is told the turn is over before it answers",
            klass="eos-added",
        )
        return
    diff = first_id_divergence(want, ids)
    rec.add(cid, "tokenize", check, "fail" if diff else "pass", diff, **({"klass": "mismatch"} if diff else {}))
