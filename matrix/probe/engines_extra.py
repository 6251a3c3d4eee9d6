"""More in-process engine adapters for the inference stage: mistral.rs, ONNX Runtime GenAI, OpenVINO GenAI.

Same contract as :mod:`engines` (``start`` / ``generate`` / ``facts`` / ``close``; a missing
package raises :class:`engines.EngineUnavailable`, so the engine's checks are ``skipped``).
Standard library only at import time; each engine is imported lazily in ``start``, inside the
cell's environment. :data:`ADAPTERS` joins the others in :mod:`engine_registry`.

``mistralrs``          the ``mistralrs`` wheel's ``Runner`` on the model directory (safetensors,
                       float32; option ``source: gguf`` loads ``model.gguf`` instead). Its Python
                       API takes no token ids, so the prompt goes in as the golden prompt *text*
                       through an identity chat template (``{{ content }}``, nothing added), after
                       checking that the engine's own tokenizer turns that text into exactly the
                       golden prompt ids (else ``fail`` klass ``protocol``, with the first
                       divergence) and that the engine reports that many prompt tokens. Greedy
                       chat completion with ``logprobs``; ids and top-k from ``top_logprobs``.
                       Pinned: f32 KV cache (the wheel's CPU default is f16:
                       ``MISTRALRS_CPU_KV_F32=1``; option ``kv_cache: default`` keeps it).
``onnxruntime-genai``  ``og.Model`` on an export made by the model builder on the host
                       (``job["exports"]["onnxruntime-genai"]``, see ``matrix.model_exports``), CPU
                       provider; greedy ``Generator`` from the golden ids, top-k from
                       ``get_logits()`` before each step. The API has no ``ignore_eos``: at an EOS
                       the generator is done (``finish_reason: stop``), which the stage accepts as
                       identical up to EOS.
``openvino-genai``     ``LLMPipeline`` on an OpenVINO IR exported by optimum-intel on the host
                       (``job["exports"]["openvino-genai"]``), device CPU, from the golden ids.
                       Pinned: ``INFERENCE_PRECISION_HINT=f32`` and ``KV_CACHE_PRECISION=f32``
                       (the CPU plugin defaults to a u8 KV cache; option ``precision: default``
                       keeps the plugin's defaults). No per-step top-k is exposed: the comparison
                       is one-sided (engine token in the reference top-k); the cumulative logprob
                       goes to ``extra``.

Options common to all: ``threads`` (default 2). ``export_dir`` overrides the job's export path.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

from engines import ROUND, Engine, EngineUnavailable, Generation, ProtocolError, _safe, dist_version, have, sampling_of


class PromptMismatch(ProtocolError):
    """A text-prompted engine tokenizes the golden prompt text into other ids than the golden's:
    the generation would not start from the same prompt, so it is not compared."""


def _first_diff(a: list, b: list) -> str:
    n = min(len(a), len(b))
    i = next((k for k in range(n) if a[k] != b[k]), n)
    return (
        f"first divergence at prompt token {i} ({len(a)} golden ids, {len(b)} engine ids): "
        f"golden {a[max(0, i - 3) : i + 4]}, engine {b[max(0, i - 3) : i + 4]}"
    )


def _topk_from_logits(row, k: int) -> list:
    """``[[id, logprob], ...]`` best first (ties by id) from one row of raw logits (numpy)."""
    import numpy as np

    row = np.asarray(row, dtype=np.float64).reshape(-1)
    m = row.max()
    lp = row - (m + math.log(float(np.exp(row - m).sum())))
    idx = np.lexsort((np.arange(lp.shape[0]), -lp))[:k]
    return [[int(i), round(float(lp[i]), ROUND)] for i in idx]


def _config(model_dir: str) -> dict:
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _set_threads_env(threads: int) -> None:
    # before the engine's thread pools start (rayon, OpenMP); a cell runs one probe per process
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


class ExportEngine(Engine):
    """An engine that runs a host-made conversion of the model (``job["exports"][name]``)."""

    export_key = ""

    @property
    def export_dir(self) -> str:
        path = self.options.get("export_dir") or (self.job.get("exports") or {}).get(self.export_key or self.name)
        if not path or not os.path.isdir(path):
            raise EngineUnavailable(
                f"no {self.name} export of the model (job['exports'][{self.export_key or self.name!r}] = {path!r}); "
                "the host makes it with matrix.model_exports.ensure_export"
            )
        return path


# --------------------------------------------------------------------------- mistral.rs

IDENTITY_TEMPLATE = "{%- for message in messages %}{{ message['content'] }}{%- endfor %}"
"""The chat template mistralrs is given: the prompt text exactly, nothing added."""


_MISTRALRS_ARCH = {
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "llama": "Llama",
    "mistral": "Mistral",
    "gemma": "Gemma",
    "gemma2": "Gemma2",
    "phi3": "Phi3",
}
"""config.json model_type -> ``mistralrs.Architecture`` member (others: the engine detects it)."""


class MistralRsEngine(Engine):
    name = "mistralrs"

    def start(self) -> None:
        if not have("mistralrs"):
            raise EngineUnavailable("mistralrs is not installed in this cell")
        threads = int(self.options.get("threads", 2))
        _set_threads_env(threads)
        kv = self.options.get("kv_cache", "f32")
        if kv == "f32":
            os.environ["MISTRALRS_CPU_KV_F32"] = "1"
        import mistralrs
        from mistralrs import Runner, Which

        self.mr = mistralrs
        self.source = self.options.get("source", "safetensors")
        dtype = getattr(getattr(mistralrs, "ModelDType", None), self.options.get("dtype", "F32"), None)
        tmp = tempfile.mkdtemp(prefix="llmcompat-mistralrs-")
        self._tmp: str | None = tmp
        template = os.path.join(tmp, "identity.jinja")
        with open(template, "w", encoding="utf-8") as f:
            f.write(IDENTITY_TEMPLATE)
        kw = {"dtype": dtype} if dtype is not None else {}
        arch = None
        if self.source == "gguf":
            if not os.path.isfile(self.gguf_path):
                raise EngineUnavailable(f"the model has no GGUF file ({self.gguf_path})")
            which = Which.GGUF(
                quantized_model_id=os.path.dirname(self.gguf_path),
                quantized_filename=os.path.basename(self.gguf_path),
                tok_model_id=self.model_dir,
                **kw,
            )
        else:
            model_type = _config(self.model_dir).get("model_type", "")
            arch_enum = getattr(mistralrs, "Architecture", None)
            arch = getattr(arch_enum, _MISTRALRS_ARCH.get(model_type, ""), None) if arch_enum else None
            which = Which.Plain(model_id=self.model_dir, arch=arch, **kw)
        runner_kw = {
            "token_source": "none",
            "jinja_explicit": template,
            "prefix_cache_n": int(self.options.get("prefix_cache_n", 16)),
        }
        try:
            self.runner = Runner(which=which, no_paged_attn=True, **runner_kw)
        except TypeError:  # older wheels: fewer keywords
            self.runner = Runner(which=which, **runner_kw)
        self.model_id = "default"
        self._facts.update(
            {
                "mistralrs": dist_version("mistralrs"),
                "source": self.source,
                "threads": threads,
                "dtype": self.options.get("dtype", "F32"),
                "arch": str(arch) if arch is not None else "auto",
                "kv_cache": "f32 (MISTRALRS_CPU_KV_F32=1)" if kv == "f32" else "engine default",
                "prefix_cache_n": runner_kw["prefix_cache_n"],
                "prompt": "golden prompt text through an identity chat template (the Python API takes no token "
                "ids); the engine's tokenization of it is checked against the golden ids",
                "topk_from": "chat completion top_logprobs",
                "seed": "unset (the CPU device cannot be seeded)",
            }
        )

    def _tokenize(self, text: str) -> list[int]:
        try:
            return list(self.runner.tokenize_text(text, False, None))
        except TypeError:  # older signature: (text, add_special_tokens)
            return list(self.runner.tokenize_text(text, False))

    def generate(self, case: dict) -> Generation:
        from mistralrs import ChatCompletionRequest

        s = sampling_of(case)
        n = int(case.get("max_new_tokens", 16))
        prompt = [int(t) for t in case["prompt_ids"]]
        text = case.get("prompt_text")
        if not text:
            raise ProtocolError("mistralrs takes text prompts only, and the case has no prompt text")
        engine_ids = self._tokenize(text)
        if engine_ids != prompt:
            raise PromptMismatch(
                "mistralrs tokenizes the golden prompt text into other ids than the golden: "
                + _first_diff(prompt, engine_ids)
            )
        greedy = float(s["temperature"]) == 0.0
        req = ChatCompletionRequest(
            messages=text,
            model=self.model_id,
            max_tokens=n,
            n_choices=1,
            logprobs=True,
            top_logprobs=self.k,
            temperature=0.0 if greedy else float(s["temperature"]),
            top_k=1 if greedy else int(s["top_k"]),
            top_p=1.0 if greedy else float(s["top_p"]),
            min_p=None if greedy or not s.get("min_p") else float(s["min_p"]),
            repetition_penalty=float(s["repeat_penalty"]),
            presence_penalty=0.0,
            frequency_penalty=0.0,
            ignore_eos=not s.get("stop_at_eos"),
        )
        resp = self.runner.send_chat_completion_request(req)
        choice = resp.choices[0]
        used = getattr(getattr(resp, "usage", None), "prompt_tokens", None)
        if used is not None and used != len(prompt):
            raise PromptMismatch(
                f"mistralrs ran a prompt of {used} tokens, the golden prompt has {len(prompt)} "
                "(the engine added tokens around the prompt text)"
            )
        content = (choice.logprobs.content if choice.logprobs is not None else None) or []
        ids, topk, pieces, by = [], [], [], "ids"
        for step in content:
            tops = sorted(
                ((int(t.token), float(t.logprob), t.bytes) for t in step.top_logprobs), key=lambda t: (-t[1], t[0])
            )
            pieces.append(step.token)
            chosen = [t for t in tops if t[1] == step.logprob and t[2] == step.token] or [
                t for t in tops if t[1] == step.logprob
            ]
            if not chosen:
                by = "pieces"  # a sampled token outside the top-k: its id is not reported
            ids.append(chosen[0][0] if chosen else None)
            topk.append([[t[0], round(t[1], ROUND)] for t in tops[: self.k]])
        if not content:
            gen = Generation(
                [], [], text=choice.message.content, by="text", finish_reason=choice.finish_reason, prompt_kind="text"
            )
            self._facts["logprobs"] = "not returned (text-only comparison)"
            return gen
        if by == "pieces":
            topk = [
                [[t.bytes, round(float(t.logprob), ROUND)] for t in step.top_logprobs][: self.k] for step in content
            ]
            return Generation(
                pieces,
                topk,
                text=choice.message.content,
                by="pieces",
                finish_reason=choice.finish_reason,
                prompt_kind="text",
            )
        gen = Generation(
            ids, topk, text=choice.message.content, by="ids", finish_reason=choice.finish_reason, prompt_kind="text"
        )
        gen.extra["pieces"] = pieces
        return gen

    def close(self) -> None:
        self.runner = None
        tmp, self._tmp = getattr(self, "_tmp", None), None
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- ONNX Runtime GenAI


class OnnxRuntimeGenAIEngine(ExportEngine):
    name = "onnxruntime-genai"

    def start(self) -> None:
        if not have("onnxruntime_genai"):
            raise EngineUnavailable("onnxruntime-genai is not installed in this cell")
        path = self.export_dir
        threads = int(self.options.get("threads", 2))
        _set_threads_env(threads)
        import onnxruntime_genai as og

        self.og = og
        overlay = None
        if hasattr(og, "Config"):
            cfg = og.Config(path)
            cfg.clear_providers()  # CPU
            overlay = {
                "model": {"decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}}
            }
            if hasattr(cfg, "overlay"):
                try:
                    cfg.overlay(json.dumps(overlay))
                except Exception as exc:  # noqa: BLE001 - a fact, not a failure
                    self._facts["overlay_error"] = str(exc)[:200]
                    overlay = None
            else:
                overlay = None
            self.model = og.Model(cfg)
        else:
            self.model = og.Model(path)
        self.tokenizer = _safe(lambda: og.Tokenizer(self.model))
        with open(os.path.join(path, "genai_config.json"), encoding="utf-8") as f:
            gcfg = json.load(f)
        eos = gcfg.get("model", {}).get("eos_token_id")
        self.eos_ids = sorted(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._facts.update(
            {
                "onnxruntime_genai": dist_version("onnxruntime-genai"),
                "onnxruntime": dist_version("onnxruntime"),
                "provider": "cpu",
                "threads": threads if overlay else "engine default",
                "export": os.path.basename(os.path.normpath(path)),
                "eos_ids": self.eos_ids,
                "topk_from": "Generator.get_logits() before each step",
                "stops_at_eos": "always (the API has no ignore_eos)",
            }
        )

    def generate(self, case: dict) -> Generation:
        og = self.og
        s = sampling_of(case)
        n = int(case.get("max_new_tokens", 16))
        prompt = [int(t) for t in case["prompt_ids"]]
        greedy = float(s["temperature"]) == 0.0
        params = og.GeneratorParams(self.model)
        opts = {
            "max_length": len(prompt) + n,
            "min_length": 0,
            "num_beams": 1,
            "do_sample": not greedy,
            "repetition_penalty": float(s["repeat_penalty"]),
        }
        if not greedy:
            opts.update(
                temperature=float(s["temperature"]),
                top_k=int(s["top_k"]),
                top_p=float(s["top_p"]),
                random_seed=int(s["seed"]),
            )
        params.set_search_options(**opts)
        gen = og.Generator(self.model, params)
        if hasattr(gen, "append_tokens"):
            gen.append_tokens(prompt)
        else:  # before 0.6: the prompt goes into the params
            import numpy as np

            params.input_ids = np.asarray([prompt], dtype=np.int32)
            gen = og.Generator(self.model, params)
        ids: list[int] = []
        topk: list = []
        finish = "length"
        while len(ids) < n:
            if gen.is_done():
                finish = "stop"
                break
            logits = gen.get_logits() if hasattr(gen, "get_logits") else gen.get_output("logits")
            topk.append(_topk_from_logits(logits.reshape(-1, logits.shape[-1])[-1], self.k))
            gen.generate_next_token()
            ids.append(int(gen.get_next_tokens()[0]))
        del gen
        if finish == "length" and ids and ids[-1] in self.eos_ids:
            finish = "stop"
        text = _safe(lambda: self.tokenizer.decode(ids)) if self.tokenizer is not None else None
        return Generation(ids, topk[: len(ids)], text=text, by="ids", finish_reason=finish, prompt_kind="ids")

    def close(self) -> None:
        self.tokenizer = None
        self.model = None


# --------------------------------------------------------------------------- OpenVINO GenAI

_OV_FINISH = {"LENGTH": "length", "STOP": "stop"}


class OpenVINOGenAIEngine(ExportEngine):
    name = "openvino-genai"

    def start(self) -> None:
        if not have("openvino_genai"):
            raise EngineUnavailable("openvino-genai is not installed in this cell")
        path = self.export_dir
        threads = int(self.options.get("threads", 2))
        import openvino_genai

        self.ovg = openvino_genai
        props: dict[str, object] = {}
        if self.options.get("precision", "f32") == "f32":
            props = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
        props["INFERENCE_NUM_THREADS"] = threads
        props.update(self.options.get("properties") or {})
        self.device = self.options.get("device", "CPU")
        self.pipe = openvino_genai.LLMPipeline(path, self.device, **props)
        self.tokenizer = _safe(self.pipe.get_tokenizer)
        self._facts.update(
            {
                "openvino_genai": dist_version("openvino-genai"),
                "openvino": dist_version("openvino"),
                "openvino_tokenizers": dist_version("openvino-tokenizers"),
                "device": self.device,
                "properties": {k: str(v) for k, v in props.items()},
                "export": os.path.basename(os.path.normpath(path)),
                "topk_from": "not exposed (one-sided: engine token in the reference top-k)",
            }
        )

    def generate(self, case: dict) -> Generation:
        import numpy as np
        import openvino as ov

        s = sampling_of(case)
        n = int(case.get("max_new_tokens", 16))
        prompt = [int(t) for t in case["prompt_ids"]]
        greedy = float(s["temperature"]) == 0.0
        gc = self.pipe.get_generation_config()
        gc.max_new_tokens = n
        gc.min_new_tokens = 0
        gc.num_beams = 1
        gc.num_return_sequences = 1
        gc.do_sample = not greedy
        gc.repetition_penalty = float(s["repeat_penalty"])
        gc.ignore_eos = not s.get("stop_at_eos")
        if not greedy:
            gc.temperature, gc.top_k, gc.top_p = float(s["temperature"]), int(s["top_k"]), float(s["top_p"])
            gc.rng_seed = int(s["seed"])
        if hasattr(gc, "logprobs"):
            gc.logprobs = 1  # fills the cumulative score
        res = self.pipe.generate(ov.Tensor(np.asarray([prompt], dtype=np.int64)), gc)
        ids = [int(t) for t in res.tokens[0]]
        reasons = getattr(res, "finish_reasons", None) or []
        finish = _OV_FINISH.get(getattr(reasons[0], "name", ""), None) if reasons else None
        text = _safe(lambda: self.tokenizer.decode(ids)) if self.tokenizer is not None else None
        gen = Generation(ids, [], text=text, by="ids", finish_reason=finish, prompt_kind="ids")
        scores = list(getattr(res, "scores", []) or [])
        if scores:
            gen.extra["cumulative_logprob"] = round(float(scores[0]), ROUND)
        return gen

    def close(self) -> None:
        self.tokenizer = None
        self.pipe = None


ADAPTERS = {cls.name: cls for cls in (MistralRsEngine, OnnxRuntimeGenAIEngine, OpenVINOGenAIEngine)}
"""Engine name -> adapter class, for :mod:`engine_registry`."""

EXPORT_ENGINES = {"onnxruntime-genai": "onnxruntime-genai", "openvino-genai": "openvino-genai"}
"""Engines that need a host-made export: engine name -> key in ``job["exports"]``."""

__all__ = [
    "ADAPTERS",
    "EXPORT_ENGINES",
    "MistralRsEngine",
    "OnnxRuntimeGenAIEngine",
    "OpenVINOGenAIEngine",
    "PromptMismatch",
]
