"""Engine adapters for the inference stage: one class per engine, behind one small interface.

Standard library only at import time; each adapter imports its engine lazily in ``start``,
inside the cell's environment. An adapter:

- ``start()`` loads the model or starts the server. A missing package raises
  :class:`EngineUnavailable` (the engine's checks are ``skipped`` with the reason); a server that
  does not come up raises :class:`EngineInfra` with its log tail (``infra``, retried, never filed).
- ``generate(case)`` runs one generation case and returns a :class:`Generation`.
- ``facts()`` what the adapter pinned or observed (precision, threads, versions, protocol).
- ``close()`` frees the model or stops the server (always called, in ``finally``).

Engines (``job["engines"]`` entries are a name or ``{"name": ..., **options}``):

``transformers``       in-process ``AutoModelForCausalLM`` (float32, CPU unless told), ``generate``
                       with every decoding parameter pinned; top-k from the raw logits.
``llama-cpp-python``   in-process ``Llama`` on the model's GGUF (``logits_all=True``), greedy through
                       ``Llama.generate`` from the golden token ids; top-k from ``Llama.scores``.
``llama-cpp-server``   ``python -m llama_cpp.server`` on a free loopback port; ``/v1/completions``.
``llama-server``       llama.cpp's native server binary (``job["llama_server_bin"]``); its ``/completion``
                       from token ids, top-k from ``n_probs``.
``transformers-serve`` ``transformers serve DIR``; ``/v1/chat/completions`` (messages of the case).
``openai-endpoint``    any OpenAI-compatible base URL (option ``base_url``, ``api``, ``model``).
``vllm``, ``sglang``, ``ollama``  servers for runners that have them: :mod:`engines_gpu`.

Sampling (``case["sampling"]``): ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``min_p``,
``repeat_penalty``, ``seed``, ``stop_at_eos`` (default False: exactly ``max_new_tokens`` tokens,
so engines with different EOS defaults stay comparable where the API allows).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SAMPLING = {
    "temperature": 0.0,
    "top_k": 1,
    "top_p": 1.0,
    "min_p": 0.0,
    "repeat_penalty": 1.0,
    "seed": 0,
    "stop_at_eos": False,
}
TOPK = 5
ROUND = 5
"""Logprobs are rounded to this many decimals (goldens are committed JSON)."""


class EngineUnavailable(Exception):
    """The engine's package is not in this cell: its checks are skipped, with this reason."""


class EngineInfra(Exception):
    """The engine could not be brought up (server start, port, timeout): an infra outcome."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


class ProtocolError(Exception):
    """The engine answered, but not in the documented shape (missing fields, wrong types)."""


@dataclass
class Generation:
    """One generation. ``tokens`` are ids (int) where the engine exposes them, else the text
    pieces it returned (str); ``topk`` per step: ``[[token, logprob], ...]`` best first, tokens
    of the same kind. ``text`` is the engine's own detokenized output (None when unobserved)."""

    tokens: list
    topk: list
    text: str | None = None
    by: str = "ids"  # "ids" | "pieces" | "text" (no logprobs: text only)
    finish_reason: str | None = None
    prompt_kind: str = "ids"  # how the prompt was given: ids | text | messages
    extra: dict = field(default_factory=dict)

    @property
    def ids(self) -> list | None:
        return self.tokens if self.by == "ids" else None


def sampling_of(case: dict) -> dict:
    return {**DEFAULT_SAMPLING, **(case.get("sampling") or {})}


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _vtuple(v: str | None) -> tuple:
    out = []
    for part in (v or "0").split(".")[:3]:
        m = re.match(r"\d+", part)
        out.append(int(m.group()) if m else 0)
    return tuple(out)


class Engine:
    name = ""
    server = False

    def __init__(self, job: dict, options: dict | None = None):
        self.job = job
        self.options = dict(options or {})
        self.model_dir = job["model_dir"]
        self.k = int(job.get("topk", TOPK))
        self._facts: dict = {}

    def start(self) -> None:
        raise NotImplementedError

    def generate(self, case: dict) -> Generation:
        raise NotImplementedError

    def generate_many(self, cases: list[dict]) -> list[Generation]:
        """Concurrent requests (servers); in-process engines run them one after another."""
        return [self.generate(c) for c in cases]

    def facts(self) -> dict:
        return dict(self._facts)

    def close(self) -> None:
        pass

    @property
    def gguf_path(self) -> str:
        return self.job.get("gguf_path") or os.path.join(self.model_dir, "model.gguf")


# --------------------------------------------------------------------------- transformers


class TransformersEngine(Engine):
    """In-process transformers, float32 on CPU; greedy ``generate`` with every parameter pinned."""

    name = "transformers"

    def start(self) -> None:
        for mod in ("torch", "transformers"):
            if not have(mod):
                raise EngineUnavailable(
                    f"{mod} is not installed in this cell (the transformers engine "
                    "needs torch: `requires: [torch]` on the component)"
                )
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        self.torch = torch
        threads = int(self.options.get("threads", 2))
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        device = self.options.get("device", "cpu")
        dtype = getattr(torch, self.options.get("dtype", "float32"))
        kw = {"dtype": dtype} if _vtuple(transformers.__version__) >= (4, 56) else {"torch_dtype": dtype}
        attn = self.options.get("attn_implementation", "eager")
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, attn_implementation=attn, **kw)
        except (ValueError, ImportError, TypeError):
            attn = None
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, **kw)
        self.model = model.to(device).eval()
        self.device = device
        self.tokenizer = None
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        except Exception as exc:  # noqa: BLE001 - text is optional; ids are what is compared
            self._facts["tokenizer_error"] = str(exc)[:300]
        self.has_output_logits = _vtuple(transformers.__version__) >= (4, 38)
        cuda = torch.backends.cuda.matmul
        self._facts.update(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "device": device,
                "dtype": str(dtype).replace("torch.", ""),
                "param_dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
                "threads": torch.get_num_threads(),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "tf32_matmul": bool(getattr(cuda, "allow_tf32", False)),
                "attn_implementation": getattr(self.model.config, "_attn_implementation", attn),
                "topk_from": "raw logits (output_logits)" if self.has_output_logits else "scores (output_scores)",
            }
        )
        self.eos_ids = _as_list(getattr(self.model.generation_config, "eos_token_id", None)) or _as_list(
            getattr(self.model.config, "eos_token_id", None)
        )

    def generate(self, case: dict) -> Generation:
        torch = self.torch
        from transformers import GenerationConfig

        s = sampling_of(case)
        n = int(case.get("max_new_tokens", 16))
        prompt = list(case["prompt_ids"])
        greedy = float(s["temperature"]) == 0.0
        pad = getattr(self.model.config, "pad_token_id", None)
        # A fresh config: nothing inherited from the model's generation_config by accident.
        gc = GenerationConfig(
            max_new_tokens=n,
            min_new_tokens=0,
            do_sample=not greedy,
            num_beams=1,
            temperature=None if greedy else float(s["temperature"]),
            top_k=None if greedy else int(s["top_k"]),
            top_p=None if greedy else float(s["top_p"]),
            min_p=None if greedy or not s.get("min_p") else float(s["min_p"]),
            repetition_penalty=float(s["repeat_penalty"]),
            no_repeat_ngram_size=0,
            eos_token_id=self.eos_ids if s.get("stop_at_eos") else None,
            pad_token_id=pad if pad is not None else (self.eos_ids or [0])[0],
            use_cache=True,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=self.has_output_logits,
        )
        torch.manual_seed(int(s["seed"]))
        inputs = torch.tensor([prompt], dtype=torch.long, device=self.device)
        with torch.no_grad():
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=gc)
        ids = out.sequences[0, len(prompt) :].tolist()
        steps = out.logits if self.has_output_logits and getattr(out, "logits", None) is not None else out.scores
        topk = []
        for step in steps[: len(ids)]:
            lp = torch.log_softmax(step[0].double(), dim=-1)
            vals, idx = torch.topk(lp, min(self.k + 4, lp.shape[-1]))
            cand = sorted(zip(idx.tolist(), vals.tolist()), key=lambda t: (-t[1], t[0]))[: self.k]
            topk.append([[i, round(v, ROUND)] for i, v in cand])
        gen = Generation(ids, topk, by="ids", prompt_kind="ids")
        if self.tokenizer is not None:
            dec = self.tokenizer.decode
            gen.text = dec(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            gen.extra["pieces"] = [dec([i], skip_special_tokens=False) for i in ids]
            gen.extra["topk_pieces"] = [[dec([t], skip_special_tokens=False) for t, _ in step] for step in topk]
        return gen

    def close(self) -> None:
        self.model = None


def _as_list(v) -> list:
    if v is None:
        return []
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


# --------------------------------------------------------------------------- llama-cpp-python


class LlamaCppEngine(Engine):
    """In-process llama-cpp-python on the GGUF, from the golden token ids."""

    name = "llama-cpp-python"

    def start(self) -> None:
        if not have("llama_cpp"):
            raise EngineUnavailable("llama-cpp-python is not installed in this cell")
        if not os.path.isfile(self.gguf_path):
            raise EngineUnavailable(f"the model has no GGUF file ({self.gguf_path})")
        import llama_cpp
        from llama_cpp import Llama

        threads = int(self.options.get("threads", 2))
        self.n_ctx = int(self.options.get("n_ctx") or self.job.get("_n_ctx") or 2048)
        self.llm = Llama(
            model_path=self.gguf_path,
            logits_all=True,
            n_ctx=self.n_ctx,
            n_batch=512,
            seed=int(self.options.get("seed", 0)),
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=int(self.options.get("n_gpu_layers", 0)),
            verbose=False,
        )
        self.eos_ids = sorted(
            {t for t in (self.llm.token_eos(), _safe(lambda: self.llm._model.token_eot())) if t is not None and t >= 0}
        )
        info = _safe(lambda: llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip())
        self._facts.update(
            {
                "llama_cpp_python": dist_version("llama-cpp-python"),
                "threads": threads,
                "n_ctx": self.n_ctx,
                "n_gpu_layers": int(self.options.get("n_gpu_layers", 0)),
                "system_info": info,
                "topk_from": "Llama.scores (logits_all=True)",
                "eos_ids": self.eos_ids,
            }
        )

    def generate(self, case: dict, reset: bool = True) -> Generation:
        import numpy as np

        s = sampling_of(case)
        n = int(case.get("max_new_tokens", 16))
        prompt = [int(t) for t in case["prompt_ids"]]
        if len(prompt) + n > self.n_ctx:
            raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({n}) exceed n_ctx {self.n_ctx}")
        llm = self.llm
        if reset:
            llm.reset()
        llm.set_seed(int(s["seed"]))
        ids: list[int] = []
        gen = llm.generate(
            prompt,
            top_k=int(s["top_k"]),
            top_p=float(s["top_p"]),
            min_p=float(s.get("min_p") or 0.0),
            typical_p=1.0,
            temp=float(s["temperature"]),
            repeat_penalty=float(s["repeat_penalty"]),
            frequency_penalty=0.0,
            presence_penalty=0.0,
            tfs_z=1.0,
            mirostat_mode=0,
            penalize_nl=False,
            reset=True,
        )
        for tok in gen:
            ids.append(int(tok))
            if len(ids) >= n or (s.get("stop_at_eos") and tok in self.eos_ids):
                break
        gen.close()
        scores = llm.scores  # [n_ctx, vocab]; row j holds the logits after position j
        topk = []
        for step in range(len(ids)):
            row = np.asarray(scores[len(prompt) - 1 + step], dtype=np.float64)
            lp = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
            idx = np.argsort(-lp, kind="stable")[: self.k]
            topk.append([[int(i), round(float(lp[i]), ROUND)] for i in idx])
        text = llm.detokenize(ids).decode("utf-8", errors="replace")
        return Generation(ids, topk, text=text, by="ids", prompt_kind="ids")

    def generate_again(self, case: dict) -> Generation:
        """The same request without a reset: the KV-cache prefix-reuse path."""
        return self.generate(case, reset=False)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            if hasattr(llm, "close"):
                _safe(llm.close)


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - optional facts
        return None


# --------------------------------------------------------------------------- servers

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


class ServerEngine(Engine):
    """An OpenAI-compatible server: completions from token ids where the API takes them
    (``api: completions``, ``prompt: auto`` tries ids, then the golden render text), or chat
    completions from the case's messages (``api: chat``)."""

    server = True
    package = ""
    api = "completions"
    prompt = "auto"  # ids | text | auto

    def __init__(self, job, options=None):
        super().__init__(job, options)
        self.srv = None
        self.client = None
        self.prompt_mode = self.options.get("prompt", self.prompt)
        self.api = self.options.get("api", self.api)
        self.timeouts = job.get("limits", {})

    def command(self) -> list[str]:
        raise NotImplementedError

    def server_env(self) -> dict:
        env = dict(os.environ)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        return env

    def start(self) -> None:
        from servers import OpenAIClient, Server, ServerStartError

        if self.package and not have(self.package):
            raise EngineUnavailable(f"{self.package} is not installed in this cell")
        self.srv = Server(
            self.command(),
            name=self.name,
            env=self.server_env(),
            start_timeout=float(self.timeouts.get("server_start_seconds", 120)),
            ready_path=self.options.get("ready_path", "/v1/models"),
        )
        try:
            self.srv.start()
        except ServerStartError as exc:
            raise EngineInfra(str(exc).split("\n")[0], exc.log_tail) from None
        self.client = OpenAIClient(self.srv.base_url, timeout=float(self.timeouts.get("request_seconds", 120)))
        self._facts.update(
            {
                "server_ready_seconds": self.srv.ready_seconds,
                "api": self.api,
                "command": " ".join(self.srv.cmd).replace(self.model_dir, "$MODEL"),
            }
        )
        self.model_name = self.options.get("model") or self._first_model()

    def _first_model(self) -> str | None:
        try:
            data = self.client.models().get("data") or []
            return data[0].get("id") if data else None
        except Exception:  # noqa: BLE001 - the name is optional for single-model servers
            return None

    def body(self, case: dict, prompt_kind: str) -> dict:
        s = sampling_of(case)
        n = int(case.get("max_new_tokens", 16))
        body: dict[str, Any] = {
            "max_tokens": n,
            "temperature": float(s["temperature"]),
            "top_p": float(s["top_p"]),
            "seed": int(s["seed"]),
            "n": 1,
            "stream": False,
        }
        if self.model_name:
            body["model"] = self.model_name
        if self.api == "chat":
            body.update({"messages": case["messages"], "logprobs": True, "top_logprobs": self.k})
            if case.get("tools"):
                body["tools"] = case["tools"]
        else:
            body["prompt"] = list(case["prompt_ids"]) if prompt_kind == "ids" else case["prompt_text"]
            body["logprobs"] = self.k
        body.update(self.sampling_extras(s))
        return body

    def sampling_extras(self, s: dict) -> dict:
        return {}

    def generate(self, case: dict) -> Generation:
        from servers import HTTPStatusError

        if self.api == "chat":
            if not case.get("messages"):
                raise ProtocolError("chat API needs the case's messages")
            return self._parse(self.client.chat(self.body(case, "messages")), "messages")
        kinds = {"ids": ["ids"], "text": ["text"], "auto": ["ids", "text"]}[self.prompt_mode]
        if "prompt_text" not in case or case.get("prompt_text") is None:
            kinds = [k for k in kinds if k != "text"]
        last: Exception | None = None
        for kind in kinds:
            try:
                resp = self.client.completions(self.body(case, kind))
            except HTTPStatusError as exc:
                # a server that refuses a token-id prompt (some answer a validation error with 500)
                if kind != kinds[-1]:
                    self._facts["prompt_ids_refused"] = f"HTTP {exc.status}: {exc.body[:200]}"
                    self.prompt_mode = "text"  # remember: this server takes text only
                    last = exc
                    continue
                raise
            self._facts["prompt_kind"] = kind
            return self._parse(resp, kind)
        raise last or ProtocolError("no prompt kind to try")  # pragma: no cover - the loop returns or raises

    def generate_many(self, cases: list[dict]) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            return list(pool.map(self.generate, cases))

    def _parse(self, resp: dict, prompt_kind: str) -> Generation:
        try:
            choice = resp["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise ProtocolError(f"no choices in the response: {json.dumps(resp)[:300]}") from None
        finish = choice.get("finish_reason")
        lp = choice.get("logprobs")
        if self.api == "chat":
            text = (choice.get("message") or {}).get("content")
            content = (lp or {}).get("content") if isinstance(lp, dict) else None
            if not content:
                return self._text_only(text, finish, prompt_kind)
            tokens = [c.get("token") for c in content]
            tops = [[[t.get("token"), t.get("logprob")] for t in (c.get("top_logprobs") or [])] for c in content]
        else:
            text = choice.get("text")
            if not isinstance(lp, dict) or lp.get("tokens") is None:
                return self._text_only(text, finish, prompt_kind)
            tokens = list(lp["tokens"])
            tops = [[[t, v] for t, v in (d or {}).items()] for d in (lp.get("top_logprobs") or [])]
        by = "pieces"
        matches = [_TOKEN_ID.match(t) if isinstance(t, str) else None for t in tokens]
        if tokens and all(matches):
            by = "ids"
            tokens = [int(m.group(1)) for m in matches if m is not None]
            tops = [[[int(m.group(1)), v] for t, v in step if (m := _TOKEN_ID.match(str(t)))] for step in tops]
        tops = [
            sorted(([t, round(float(v), ROUND)] for t, v in step if v is not None), key=lambda tv: -tv[1])[: self.k]
            for step in tops
        ]
        return Generation(tokens, tops, text=text, by=by, finish_reason=finish, prompt_kind=prompt_kind)

    def _text_only(self, text, finish, prompt_kind) -> Generation:
        """No logprobs in the answer (the server ignores the request): only the text compares."""
        if not isinstance(text, str):
            raise ProtocolError("the response has neither logprobs nor text")
        self._facts["logprobs"] = "not returned (text-only comparison)"
        return Generation([], [], text=text, by="text", finish_reason=finish, prompt_kind=prompt_kind)

    def log_tail(self) -> str:
        return self.srv.log_tail() if self.srv else ""

    def close(self) -> None:
        if self.srv is not None:
            self.srv.stop()


class LlamaCppServerEngine(ServerEngine):
    name = "llama-cpp-server"
    package = "llama_cpp.server"

    def command(self) -> list[str]:
        threads = str(self.options.get("threads", 2))
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            self.gguf_path,
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--n_ctx",
            str(self.options.get("n_ctx") or self.job.get("_n_ctx") or 2048),
            "--n_threads",
            threads,
            "--n_threads_batch",
            threads,
            "--seed",
            str(self.options.get("seed", 0)),
            "--logits_all",
            "true",
            "--verbose",
            "false",
        ]

    def sampling_extras(self, s: dict) -> dict:
        return {
            "top_k": int(s["top_k"]),
            "min_p": float(s.get("min_p") or 0.0),
            "repeat_penalty": float(s["repeat_penalty"]),
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "mirostat_mode": 0,
        }


class LlamaServerEngine(ServerEngine):
    """llama.cpp's native ``llama-server`` (a binary built by ``matrix.builds.llama_server``;
    ``job["llama_server_bin"]`` or option ``bin``) on the GGUF. Generations go through its own
    ``/completion`` endpoint, which takes token ids as the prompt and answers with token ids and,
    with ``n_probs``, the top-k log-probabilities of the raw distribution (``post_sampling_probs``
    off) per step. Options: ``threads``, ``seed``, ``n_ctx``, ``parallel`` (slots, default 1),
    ``cache_prompt`` (default: the server's own), ``extra_args``."""

    name = "llama-server"

    def binary(self) -> str | None:
        return self.options.get("bin") or self.job.get("llama_server_bin")

    def command(self) -> list[str]:
        threads = str(self.options.get("threads", 2))
        parallel = int(self.options.get("parallel", 1))
        n_ctx = int(self.options.get("n_ctx") or self.job.get("_n_ctx") or 2048)
        exe = self.binary()
        if not exe:
            raise EngineUnavailable("no llama-server binary in this cell (job['llama_server_bin'])")
        cmd = [
            exe,
            "-m",
            self.gguf_path,
            "--host",
            "{host}",
            "--port",
            "{port}",
            "-c",
            str(n_ctx * parallel),
            "-np",
            str(parallel),
            "-t",
            threads,
            "-tb",
            threads,
            "--seed",
            str(self.options.get("seed", 0)),
            "-ngl",
            str(self.options.get("n_gpu_layers", 0)),
        ]
        return cmd + [str(a) for a in self.options.get("extra_args", [])]

    def start(self) -> None:
        from servers import OpenAIClient, Server, ServerStartError

        exe = self.binary()
        if not exe:
            raise EngineUnavailable("no llama-server binary in this cell (job['llama_server_bin'])")
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise EngineUnavailable(f"the llama-server binary {exe} does not exist or is not executable")
        if not os.path.isfile(self.gguf_path):
            raise EngineUnavailable(f"the model has no GGUF file ({self.gguf_path})")
        self.srv = Server(
            self.command(),
            name=self.name,
            env=self.server_env(),
            start_timeout=float(self.timeouts.get("server_start_seconds", 120)),
            ready_path=self.options.get("ready_path", "/health"),
        )
        try:
            self.srv.start()
        except ServerStartError as exc:
            raise EngineInfra(str(exc).split("\n")[0], exc.log_tail) from None
        self.client = OpenAIClient(self.srv.base_url, timeout=float(self.timeouts.get("request_seconds", 120)))
        self.model_name = None
        props = _safe(lambda: self._request("GET", "/props")) or {}
        self._facts.update(
            {
                "server_ready_seconds": self.srv.ready_seconds,
                "api": "native /completion",
                "command": " ".join(self.srv.cmd).replace(self.model_dir, "$MODEL"),
                "build": props.get("build_info"),
                "parallel": int(self.options.get("parallel", 1)),
                "topk_from": "n_probs (pre-sampling log-probabilities)",
            }
        )

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        from servers import NotJSON, request_json

        try:
            return request_json(method, self.srv.base_url + path, body, timeout=self.client.timeout)
        except NotJSON as exc:
            raise ProtocolError(f"not JSON from {path}: {exc.raw[:300]!r}") from None

    def body(self, case: dict, prompt_kind: str = "ids") -> dict:
        s = sampling_of(case)
        body = {
            "prompt": [int(t) for t in case["prompt_ids"]],
            "n_predict": int(case.get("max_new_tokens", 16)),
            "n_probs": self.k,
            "post_sampling_probs": False,
            "return_tokens": True,
            "stream": False,
            "temperature": float(s["temperature"]),
            "top_k": int(s["top_k"]),
            "top_p": float(s["top_p"]),
            "min_p": float(s.get("min_p") or 0.0),
            "repeat_penalty": float(s["repeat_penalty"]),
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "mirostat": 0,
            "typical_p": 1.0,
            "seed": int(s["seed"]),
            "ignore_eos": not s.get("stop_at_eos"),
            "n_keep": 0,
        }
        if "cache_prompt" in self.options:
            body["cache_prompt"] = bool(self.options["cache_prompt"])
        return body

    def generate(self, case: dict) -> Generation:
        resp = self._request("POST", "/completion", self.body(case))
        self._facts["prompt_kind"] = "ids"
        return self._parse_native(resp)

    def _parse_native(self, resp: dict) -> Generation:
        if not isinstance(resp, dict):
            raise ProtocolError(f"/completion answered {str(resp)[:300]}")
        text = resp.get("content")
        stop = resp.get("stop_type") or (
            "eos" if resp.get("stopped_eos") else "limit" if resp.get("stopped_limit") else None
        )
        finish = {"eos": "stop", "word": "stop", "limit": "length"}.get(stop, stop) if stop is not None else None
        probs = resp.get("completion_probabilities")
        if isinstance(probs, list) and probs and isinstance(probs[0], dict) and "id" in probs[0]:
            prob_ids = [int(p["id"]) for p in probs]
            ids = (
                [int(t) for t in resp["tokens"]]
                if isinstance(resp.get("tokens"), list) and resp["tokens"]
                else prob_ids
            )
            # The server may leave a token out of completion_probabilities (seen: tokens whose text
            # is not whole UTF-8): align them to ``tokens`` in order; a step without one has no top-k.
            topk, j = [], 0
            for tok in ids:
                if j < len(probs) and prob_ids[j] == tok:
                    step = [
                        [int(t["id"]), round(float(t["logprob"]), ROUND)]
                        for t in (probs[j].get("top_logprobs") or [])
                        if t.get("logprob") is not None
                    ]
                    topk.append(sorted(step, key=lambda tv: (-tv[1], tv[0]))[: self.k])
                    j += 1
                else:
                    topk.append([])
            if j != len(probs):
                raise ProtocolError(
                    f"completion_probabilities ids {prob_ids[:8]} are not a subsequence of "
                    f"the generated tokens {ids[:8]}"
                )
            if len(prob_ids) != len(ids):
                missing = self._facts.setdefault("steps_without_probs", 0)
                self._facts["steps_without_probs"] = missing + len(ids) - len(prob_ids)
            return Generation(ids, topk, text=text, by="ids", finish_reason=finish, prompt_kind="ids")
        if isinstance(resp.get("tokens"), list) and resp["tokens"]:
            self._facts["logprobs"] = "not returned (ids only)"
            return Generation(
                [int(t) for t in resp["tokens"]], [], text=text, by="ids", finish_reason=finish, prompt_kind="ids"
            )
        if isinstance(probs, list) and probs and isinstance(probs[0], dict) and "probs" in probs[0]:
            # older servers: pieces with post-sampling probabilities
            import math

            pieces = [p.get("content", "") for p in probs]
            topk = [
                [[t.get("tok_str"), round(math.log(t["prob"]), ROUND)] for t in p.get("probs") or [] if t.get("prob")]
                for p in probs
            ]
            self._facts["logprobs"] = "older server: pieces with post-sampling probabilities"
            # such servers give no entry for a token that is not whole UTF-8 on its own: the
            # judge puts those steps back where the reference has such a piece
            predicted = resp.get("tokens_predicted")
            omitted = predicted - len(probs) if isinstance(predicted, int) and predicted > len(probs) else 0
            if omitted:
                self._facts["steps_without_probs"] = self._facts.get("steps_without_probs", 0) + omitted
            return Generation(
                pieces,
                [s[: self.k] for s in topk],
                text=text,
                by="pieces",
                finish_reason=finish,
                prompt_kind="ids",
                extra={"omitted_steps": omitted},
            )
        return self._text_only(text, finish, "ids")

    def generate_many(self, cases: list[dict]) -> list[Generation]:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            return list(pool.map(self.generate, cases))


class TransformersServeEngine(ServerEngine):
    name = "transformers-serve"
    package = "transformers"
    api = "chat"

    def command(self) -> list[str]:
        from servers import transformers_serve_command

        exe = shutil.which("transformers", path=os.path.dirname(sys.executable)) or "transformers"
        return transformers_serve_command(exe, self.model_dir)

    def start(self) -> None:
        if not have("torch"):
            raise EngineUnavailable("torch is not installed in this cell (transformers serve needs it)")
        super().start()
        self.model_name = self.options.get("model") or self.model_dir


class OpenAIEndpointEngine(ServerEngine):
    """A server someone else runs: ``{"name": "openai-endpoint", "base_url": ..., "api": ...,
    "model": ..., "api_key_env": ...}``. Nothing to start or stop."""

    name = "openai-endpoint"

    def start(self) -> None:
        from servers import OpenAIClient

        url = self.options.get("base_url")
        if not url:
            raise EngineUnavailable("openai-endpoint needs a base_url")
        key = os.environ.get(self.options["api_key_env"]) if self.options.get("api_key_env") else None
        self.client = OpenAIClient(url, api_key=key, timeout=float(self.timeouts.get("request_seconds", 120)))
        self._facts.update({"api": self.api, "base_url": url})
        self.model_name = self.options.get("model") or self._first_model()


ADAPTERS = {
    cls.name: cls
    for cls in (
        TransformersEngine,
        LlamaCppEngine,
        LlamaCppServerEngine,
        TransformersServeEngine,
        OpenAIEndpointEngine,
        LlamaServerEngine,
    )
}
"""The core adapters by name; :mod:`engine_registry` joins them with the others."""
