"""Server engine adapters for runners that have them: vLLM and SGLang (GPU), Ollama (its binary).

Same contract as :mod:`engines` (``start`` / ``generate`` / ``facts`` / ``close``), built on
:class:`engines.ServerEngine` and :class:`servers.Server`: each server runs on a free loopback
port, is polled until ready, keeps its log (its tail goes into an ``infra`` record when it does
not come up, and into ``crash`` records when it dies), and is stopped in ``close`` whatever
happened. A missing package, binary or GPU raises :class:`engines.EngineUnavailable` with what
is missing, so the engine's checks are ``skipped`` with that reason. Standard library only.

``vllm``    ``python -m vllm.entrypoints.openai.api_server`` (the module behind ``vllm serve``)
            on the model's HF directory. Pinned: ``--dtype float32`` (option ``dtype``),
            ``--seed``, ``--enforce-eager`` (no CUDA graphs / compilation), ``--generation-config
            vllm`` (the model's generation_config.json does not change the request's defaults),
            ``--logprobs-mode raw_logprobs`` (top-k of the raw distribution, before any
            processing; option ``logprobs_mode: null`` leaves the flag out for older servers),
            ``--return-tokens-as-token-ids`` (``token_id:N`` in the logprobs, so ids compare).
            ``/v1/completions`` with the golden prompt ids as ``prompt`` (vLLM takes a list of ids),
            ``logprobs: k``, greedy, ``ignore_eos``, special tokens kept in the text.
            Ready: ``GET /health``.
``sglang``  ``python -m sglang.launch_server`` on the HF directory. Pinned: ``--dtype float32``,
            ``--random-seed``, ``--disable-cuda-graph``, ``--disable-radix-cache`` (no prefix
            reuse between requests; option ``radix_cache: true`` keeps it), ``--attention-backend
            torch_native`` (any dtype; option ``attention_backend``), ``--sampling-backend
            pytorch``. Native ``POST /generate`` with ``input_ids``, ``return_logprob`` and
            ``top_logprobs_num`` (ids and top-k per step from ``meta_info``). Ready:
            ``GET /health``.
``ollama``  ``ollama serve`` with ``OLLAMA_HOST=127.0.0.1:<port>`` and its own ``OLLAMA_MODELS``
            and ``HOME`` (a temporary directory: nothing of the machine's Ollama is used or
            touched), then ``ollama create`` from the tiny model's Modelfile (its ``FROM`` pointed
            at the job's GGUF), then native ``POST /api/generate`` with the golden prompt *text*
            and ``raw: true`` (no template applied on top of the already rendered prompt),
            options ``temperature 0, top_k 1, top_p 1, min_p 0, seed, num_predict,
            repeat_penalty 1`` and ``stop: []`` (the Modelfile's stop strings do not cut the
            comparison short; Ollama still stops at EOS, which the stage accepts). Ollama takes
            no token ids and returns none: from 0.12.11 it returns ``logprobs`` with
            ``top_logprobs`` as text pieces (compared by pieces and top-k pieces, and the
            text); before, only the text (pass only when identical, L0). The prompt token count it reports must not exceed the golden's
            (else ``protocol``: the engine added tokens). Binary: option ``bin``,
            ``job["ollama_bin"]``, ``$OLLAMA_BIN``, else ``ollama`` on PATH. Ready:
            ``GET /api/version``.

Options common to all: ``seed`` (0), ``n_ctx`` (default the stage's), ``extra_args`` (appended to
the server's command line), ``start_seconds`` (default 600 for vLLM and SGLang, which load CUDA
kernels, 120 for Ollama), ``ready_path``. vLLM and SGLang: ``gpu_memory_utilization`` (0.3),
``require_gpu`` (default true: without an NVIDIA GPU the engine is unavailable).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from engines import (
    ROUND,
    EngineInfra,
    EngineUnavailable,
    Generation,
    ProtocolError,
    ServerEngine,
    _safe,
    dist_version,
    have,
    sampling_of,
)

SERVED_NAME = "llmcompat-tiny"
"""The name the model is served under (vLLM ``--served-model-name``, SGLang, Ollama ``create``)."""

GPU_START_SECONDS = 600.0


def gpu_reason() -> str | None:
    """Why no NVIDIA GPU can be used here, or None when ``nvidia-smi -L`` lists one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU (nvidia-smi not found)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no NVIDIA GPU (nvidia-smi -L failed: {exc})"
    if out.returncode != 0 or "GPU" not in out.stdout:
        return f"no NVIDIA GPU (nvidia-smi -L: {(out.stderr or out.stdout).strip()[:200] or out.returncode})"
    return None


def _gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    out = _safe(
        lambda: (
            subprocess.run(
                [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        )
    )
    return [line.strip() for line in (out or "").splitlines() if line.strip()]


class _GPUServerEngine(ServerEngine):
    """A Python-module server that needs an NVIDIA GPU."""

    module = ""  # the server's entry module: present in the cell, else unavailable
    dist = ""  # its distribution, for the version fact
    ready = "/health"

    def n_ctx(self) -> int:
        return int(self.options.get("n_ctx") or self.job.get("_n_ctx") or 2048)

    def seed(self) -> int:
        return int(self.options.get("seed", 0))

    def dtype(self) -> str:
        return str(self.options.get("dtype", "float32"))

    def check_available(self) -> None:
        if not have(self.package):
            raise EngineUnavailable(f"{self.dist} is not installed in this cell (no {self.package} module)")
        if self.options.get("require_gpu", True):
            reason = gpu_reason()
            if reason:
                raise EngineUnavailable(f"{self.name} needs a GPU runner: {reason}")

    def server_env(self) -> dict:
        env = super().server_env()
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        env.update({"DO_NOT_TRACK": "1", "VLLM_NO_USAGE_STATS": "1", "SGLANG_DISABLE_TELEMETRY": "1"})
        return env

    def start(self) -> None:
        from servers import OpenAIClient, Server, ServerStartError

        self.check_available()
        self.srv = Server(
            self.command(),
            name=self.name,
            env=self.server_env(),
            start_timeout=float(
                self.options.get("start_seconds")
                or max(GPU_START_SECONDS, float(self.timeouts.get("server_start_seconds", 120)))
            ),
            ready_path=self.options.get("ready_path", self.ready),
        )
        try:
            self.srv.start()
        except ServerStartError as exc:
            raise EngineInfra(str(exc).split("\n")[0], exc.log_tail) from None
        self.client = OpenAIClient(self.srv.base_url, timeout=float(self.timeouts.get("request_seconds", 120)))
        self.model_name = self.options.get("model") or self._first_model() or SERVED_NAME
        self._facts.update(
            {
                "server_ready_seconds": self.srv.ready_seconds,
                "api": self.api,
                "command": " ".join(self.srv.cmd).replace(self.model_dir, "$MODEL"),
                self.dist.replace("-", "_"): dist_version(self.dist),
                "torch": dist_version("torch"),
                "dtype": self.dtype(),
                "seed": self.seed(),
                "gpu": _gpu_names(),
            }
        )

    def _request(self, method: str, path: str, body: dict | None = None):
        from servers import NotJSON, request_json

        try:
            return request_json(method, self.srv.base_url + path, body, timeout=self.client.timeout)
        except NotJSON as exc:
            raise ProtocolError(f"not JSON from {path}: {exc.raw[:300]!r}") from None


# --------------------------------------------------------------------------- vLLM


class VllmEngine(_GPUServerEngine):
    name = "vllm"
    package = "vllm"
    dist = "vllm"
    module = "vllm.entrypoints.openai.api_server"
    api = "completions"
    prompt = "ids"

    def command(self) -> list[str]:
        k = self.k
        cmd = [
            sys.executable,
            "-m",
            self.module,
            "--model",
            self.model_dir,
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--served-model-name",
            SERVED_NAME,
            "--dtype",
            self.dtype(),
            "--seed",
            str(self.seed()),
            "--enforce-eager",
            "--generation-config",
            "vllm",
            "--max-model-len",
            str(self.n_ctx()),
            "--max-logprobs",
            str(max(20, k)),
            "--return-tokens-as-token-ids",
            "--gpu-memory-utilization",
            str(self.options.get("gpu_memory_utilization", 0.3)),
            "--tensor-parallel-size",
            "1",
            "--max-num-seqs",
            str(self.options.get("max_num_seqs", 16)),
        ]
        mode = self.options.get("logprobs_mode", "raw_logprobs")
        if mode:
            cmd += ["--logprobs-mode", str(mode)]
        return cmd + [str(a) for a in self.options.get("extra_args", [])]

    def sampling_extras(self, s: dict) -> dict:
        greedy = float(s["temperature"]) == 0.0
        return {
            "top_k": 1 if greedy else int(s["top_k"]),
            "min_p": float(s.get("min_p") or 0.0),
            "repetition_penalty": float(s["repeat_penalty"]),
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "ignore_eos": not s.get("stop_at_eos"),
            "min_tokens": 0,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "return_tokens_as_token_ids": True,
            "echo": False,
        }

    def start(self) -> None:
        super().start()
        version = _safe(lambda: self._request("GET", "/version")) or {}
        self._facts.update(
            {
                "server_version": version.get("version"),
                "enforce_eager": True,
                "generation_config": "vllm",
                "logprobs_mode": self.options.get("logprobs_mode", "raw_logprobs"),
                "topk_from": "completions logprobs (token_id:N)",
                "prompt_kind": "ids",
            }
        )


# --------------------------------------------------------------------------- SGLang


class SGLangEngine(_GPUServerEngine):
    name = "sglang"
    package = "sglang"
    dist = "sglang"
    module = "sglang.launch_server"
    api = "native"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            self.module,
            "--model-path",
            self.model_dir,
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--served-model-name",
            SERVED_NAME,
            "--dtype",
            self.dtype(),
            "--random-seed",
            str(self.seed()),
            "--context-length",
            str(self.n_ctx()),
            "--mem-fraction-static",
            str(self.options.get("gpu_memory_utilization", 0.3)),
            "--tp-size",
            "1",
            "--disable-cuda-graph",
            "--attention-backend",
            str(self.options.get("attention_backend", "torch_native")),
            "--sampling-backend",
            str(self.options.get("sampling_backend", "pytorch")),
        ]
        if not self.options.get("radix_cache", False):
            cmd.append("--disable-radix-cache")
        if self.options.get("deterministic_inference"):
            cmd.append("--enable-deterministic-inference")
        return cmd + [str(a) for a in self.options.get("extra_args", [])]

    def body(self, case: dict, prompt_kind: str = "ids") -> dict:
        s = sampling_of(case)
        greedy = float(s["temperature"]) == 0.0
        params = {
            "max_new_tokens": int(case.get("max_new_tokens", 16)),
            "temperature": float(s["temperature"]),
            "top_p": float(s["top_p"]),
            "top_k": 1 if greedy else int(s["top_k"]),
            "min_p": float(s.get("min_p") or 0.0),
            "repetition_penalty": float(s["repeat_penalty"]),
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "ignore_eos": not s.get("stop_at_eos"),
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "no_stop_trim": True,
        }
        if not greedy:
            params["sampling_seed"] = int(s["seed"])  # per-request seed (SGLang 0.5)
        return {
            "input_ids": [int(t) for t in case["prompt_ids"]],
            "sampling_params": params,
            "return_logprob": True,
            "top_logprobs_num": self.k,
            "logprob_start_len": -1,
            "return_text_in_logprobs": False,
            "stream": False,
        }

    def start(self) -> None:
        super().start()
        info = _safe(lambda: self._request("GET", "/get_model_info")) or {}
        version = _safe(lambda: self._request("GET", "/version")) or {}
        self._facts.update(
            {
                "server_version": version.get("version"),
                "model_info": {k: info.get(k) for k in ("model_path", "is_generation") if k in info},
                "attention_backend": self.options.get("attention_backend", "torch_native"),
                "radix_cache": bool(self.options.get("radix_cache", False)),
                "api": "native /generate",
                "topk_from": "meta_info.output_top_logprobs",
                "prompt_kind": "ids",
            }
        )

    def generate(self, case: dict) -> Generation:
        resp = self._request("POST", "/generate", self.body(case))
        return self.parse(resp, len(case["prompt_ids"]))

    def parse(self, resp, n_prompt: int | None = None) -> Generation:
        """``/generate`` answer -> Generation. ``meta_info.output_token_logprobs`` holds one
        ``[logprob, token_id, text|null]`` per generated token, ``output_top_logprobs`` one list of
        such triples per step (the shape SGLang's native API documents)."""
        if isinstance(resp, list) and len(resp) == 1:
            resp = resp[0]
        if not isinstance(resp, dict) or not isinstance(resp.get("meta_info"), dict):
            raise ProtocolError(f"/generate answered without meta_info: {str(resp)[:300]}")
        meta = resp["meta_info"]
        text = resp.get("text")
        fr = meta.get("finish_reason")
        finish = fr.get("type") if isinstance(fr, dict) else fr
        if n_prompt is not None and meta.get("prompt_tokens") not in (None, n_prompt):
            raise ProtocolError(
                f"sglang ran a prompt of {meta['prompt_tokens']} tokens, the golden prompt has {n_prompt}"
            )
        toks = meta.get("output_token_logprobs")
        if isinstance(toks, list) and toks:
            try:
                ids = [int(t[1]) for t in toks]
                tops = []
                for step in (meta.get("output_top_logprobs") or [None] * len(ids))[: len(ids)]:
                    pairs = [[int(t[1]), round(float(t[0]), ROUND)] for t in (step or []) if t[0] is not None]
                    tops.append(sorted(pairs, key=lambda tv: (-tv[1], tv[0]))[: self.k])
            except (TypeError, IndexError, ValueError) as exc:
                raise ProtocolError(
                    f"output_token_logprobs not [logprob, id, text] triples ({exc}): {str(toks[:2])[:300]}"
                ) from None
            while len(tops) < len(ids):
                tops.append([])
            return Generation(ids, tops, text=text, by="ids", finish_reason=finish, prompt_kind="ids")
        if isinstance(resp.get("output_ids"), list):
            self._facts["logprobs"] = "not returned (ids only)"
            return Generation(
                [int(t) for t in resp["output_ids"]], [], text=text, by="ids", finish_reason=finish, prompt_kind="ids"
            )
        return self._text_only(text, finish, "ids")


# --------------------------------------------------------------------------- Ollama

_VERSION = re.compile(r"(\d+\.\d+\.\d+(?:[-.+][0-9A-Za-z.]+)?)")
LOGPROBS_SINCE = (0, 12, 11)
"""The first Ollama release whose native API returns ``logprobs`` / ``top_logprobs``."""


def _vt(v: str | None) -> tuple:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", v or "")
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def ollama_binary(options: dict, job: dict) -> str | None:
    """The ``ollama`` binary: option ``bin``, ``job["ollama_bin"]``, ``$OLLAMA_BIN``, else PATH."""
    return options.get("bin") or job.get("ollama_bin") or os.environ.get("OLLAMA_BIN") or shutil.which("ollama")


def modelfile_for(modelfile_text: str, gguf_path: str) -> str:
    """The Modelfile with its ``FROM`` line pointed at ``gguf_path`` (absolute); the rest as is."""
    lines = modelfile_text.splitlines()
    out, seen = [], False
    for line in lines:
        if not seen and re.match(r"^\s*FROM\s", line, re.IGNORECASE):
            out.append(f"FROM {os.path.abspath(gguf_path)}")
            seen = True
        else:
            out.append(line)
    if not seen:
        out.insert(0, f"FROM {os.path.abspath(gguf_path)}")
    return "\n".join(out) + "\n"


class OllamaEngine(ServerEngine):
    name = "ollama"
    api = "native"
    prompt = "text"

    def __init__(self, job, options=None):
        super().__init__(job, options)
        self._tmp = None
        self.version = None

    @property
    def modelfile(self) -> str:
        return self.options.get("modelfile") or os.path.join(self.model_dir, "Modelfile")

    def command(self) -> list[str]:
        return [self._found_binary(), "serve"]

    def _found_binary(self) -> str:
        """The binary :meth:`start` found (it raises when there is none)."""
        if self.binary is None:
            raise EngineUnavailable("the ollama engine has not been started")
        return self.binary

    def server_env(self, port: int | None = None) -> dict:
        env = super().server_env()
        env.update(
            {
                "OLLAMA_HOST": f"127.0.0.1:{port}" if port else env.get("OLLAMA_HOST", ""),
                "OLLAMA_MODELS": os.path.join(self._tmp or "", "models"),
                "HOME": self._tmp or env.get("HOME", ""),
                "OLLAMA_NUM_PARALLEL": str(int(self.options.get("parallel", 1))),
                "OLLAMA_KEEP_ALIVE": "-1",
                "OLLAMA_NOPRUNE": "1",
                "OLLAMA_NOHISTORY": "1",
            }
        )
        if self.options.get("llm_library"):
            env["OLLAMA_LLM_LIBRARY"] = str(self.options["llm_library"])
        return env

    def start(self) -> None:
        from servers import Server, ServerStartError, free_port

        self.binary = ollama_binary(self.options, self.job)
        if not self.binary:
            raise EngineUnavailable(
                "no ollama binary on PATH (nor option bin, job['ollama_bin'] or $OLLAMA_BIN): "
                "Ollama runs only on runners that provide it"
            )
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise EngineUnavailable(f"the ollama binary {self.binary} does not exist or is not executable")
        if not os.path.isfile(self.modelfile):
            raise EngineUnavailable(f"the model has no Ollama Modelfile ({self.modelfile})")
        if not os.path.isfile(self.gguf_path):
            raise EngineUnavailable(f"the model has no GGUF file ({self.gguf_path})")
        self._tmp = tempfile.mkdtemp(prefix="llmcompat-ollama-")
        port = free_port()
        self.srv = Server(
            self.command(),
            name=self.name,
            env=self.server_env(port),
            port=port,
            start_timeout=float(self.options.get("start_seconds") or self.timeouts.get("server_start_seconds", 120)),
            ready_path=self.options.get("ready_path", "/api/version"),
        )
        try:
            self.srv.start()
        except ServerStartError as exc:
            raise EngineInfra(str(exc).split("\n")[0], exc.log_tail) from None
        from servers import OpenAIClient

        self.client = OpenAIClient(self.srv.base_url, timeout=float(self.timeouts.get("request_seconds", 120)))
        self.version = (_safe(lambda: self._request("GET", "/api/version")) or {}).get("version")
        self.model_name = self.options.get("model") or SERVED_NAME
        self._create()
        self._facts.update(
            {
                "ollama": self.version,
                "binary": self.binary,
                "server_ready_seconds": self.srv.ready_seconds,
                "api": "native /api/generate (raw prompt text)",
                "prompt_kind": "text",
                "command": " ".join(self.srv.cmd),
                "model": self.model_name,
                "topk_from": (
                    "logprobs.top_logprobs (text pieces)"
                    if _vt(self.version) >= LOGPROBS_SINCE
                    else f"not available before {'.'.join(map(str, LOGPROBS_SINCE))}: text only"
                ),
                "compared_by": "pieces with top-k (no ids)"
                if _vt(self.version) >= LOGPROBS_SINCE
                else "text only (no logprobs: identical text or fail)",
            }
        )

    def _create(self) -> None:
        """``ollama create`` from the project's Modelfile (FROM pointed at the job's GGUF)."""
        with open(self.modelfile, encoding="utf-8") as f:
            text = modelfile_for(f.read(), self.gguf_path)
        path = os.path.join(self._tmp, "Modelfile")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        env = self.server_env(self.srv.port)
        try:
            out = subprocess.run(
                [self._found_binary(), "create", self.model_name, "-f", path],
                capture_output=True,
                text=True,
                env=env,
                cwd=self._tmp,
                timeout=float(self.options.get("create_seconds", 300)),
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineInfra(f"ollama create timed out after {exc.timeout:.0f}s", self.log_tail()) from None
        if out.returncode != 0:
            raise EngineInfra(
                f"ollama create exited with {out.returncode}: {(out.stderr or out.stdout).strip()[-500:]}",
                self.log_tail(),
            )

    def _request(self, method: str, path: str, body: dict | None = None):
        from servers import NotJSON, request_json

        try:
            return request_json(method, self.srv.base_url + path, body, timeout=self.client.timeout)
        except NotJSON as exc:
            raise ProtocolError(f"not JSON from {path}: {exc.raw[:300]!r}") from None

    def body(self, case: dict, prompt_kind: str = "text") -> dict:
        s = sampling_of(case)
        greedy = float(s["temperature"]) == 0.0
        text = case.get("prompt_text")
        if not text:
            raise ProtocolError("ollama takes text prompts only, and the case has no prompt text")
        options: dict[str, object] = {
            "temperature": float(s["temperature"]),
            "top_k": 1 if greedy else int(s["top_k"]),
            "top_p": float(s["top_p"]),
            "min_p": float(s.get("min_p") or 0.0),
            "seed": int(s["seed"]),
            "num_predict": int(case.get("max_new_tokens", 16)),
            "repeat_penalty": float(s["repeat_penalty"]),
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "num_ctx": int(self.options.get("n_ctx") or self.job.get("_n_ctx") or 2048),
            "num_thread": int(self.options.get("threads", 2)),
        }
        if not s.get("stop_at_eos"):
            options["stop"] = []  # the Modelfile's stop strings would end the generation early
        return {
            "model": self.model_name,
            "prompt": text,
            "raw": True,
            "stream": False,
            "options": options,
            "logprobs": True,
            "top_logprobs": self.k,
            "keep_alive": -1,
        }

    def generate(self, case: dict) -> Generation:
        resp = self._request("POST", "/api/generate", self.body(case))
        return self.parse(resp, len(case["prompt_ids"]))

    def parse(self, resp, n_prompt: int | None = None) -> Generation:
        """``/api/generate`` answer (``stream: false``) -> Generation: ``response`` is the text,
        ``done_reason`` stop | length, ``logprobs`` (0.12.11+) one ``{token, logprob, bytes,
        top_logprobs: [{token, logprob, bytes}]}`` per generated token: text pieces, no ids."""
        if not isinstance(resp, dict) or "response" not in resp:
            raise ProtocolError(f"/api/generate answered without response: {str(resp)[:300]}")
        text = resp.get("response")
        finish = resp.get("done_reason") or ("stop" if resp.get("done") else None)
        used = resp.get("prompt_eval_count")
        if n_prompt is not None and isinstance(used, int):
            self._facts["prompt_eval_count"] = used
            if used > n_prompt:
                raise ProtocolError(
                    f"ollama evaluated a prompt of {used} tokens, the golden prompt has {n_prompt} "
                    "(the engine added tokens around the raw prompt text)"
                )
        lps = resp.get("logprobs")
        if not isinstance(lps, list) or not lps:
            return self._text_only(text, finish, "text")
        pieces, tops = [], []
        for step in lps:
            if not isinstance(step, dict) or "token" not in step:
                raise ProtocolError(f"a logprobs entry without token: {str(step)[:200]}")
            pieces.append(step["token"])
            pairs = [
                [t.get("token"), round(float(t["logprob"]), ROUND)]
                for t in (step.get("top_logprobs") or [])
                if t.get("logprob") is not None
            ]
            tops.append(sorted(pairs, key=lambda tv: -tv[1])[: self.k])
        return Generation(pieces, tops, text=text, by="pieces", finish_reason=finish, prompt_kind="text")

    def close(self) -> None:
        try:
            super().close()
        finally:
            tmp, self._tmp = self._tmp, None
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- registration

ADAPTERS = {cls.name: cls for cls in (VllmEngine, SGLangEngine, OllamaEngine)}
"""Engine name -> adapter class, for :mod:`engine_registry`."""

__all__ = ["ADAPTERS", "OllamaEngine", "SGLangEngine", "VllmEngine", "gpu_reason", "modelfile_for", "ollama_binary"]
