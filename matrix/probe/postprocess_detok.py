"""Detokenizers (tokenizers' DecodeStream, transformers' TextStreamer, llama.cpp's per-token
bytes) and the checks of incremental decoding and special tokens on them (items 2 and 4 of
:mod:`stage_postprocess`). Libraries are imported lazily, inside the cell's environment."""

from __future__ import annotations

import os

from postprocess_context import Ctx, Unavailable, model_specials
from postprocess_rules import SPECIAL_TEXT, TEXTS, convention, incremental_diff, special_expectations
from probe import first_divergence

DEFAULT_DETOKENIZERS = ("tokenizers", "transformers", "llama-cpp")


class Detokenizer:
    """Encode, full decode, incremental decode (pieces), and decode with specials kept/skipped."""

    name = ""
    bytes_level = False

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool = False):
        raise NotImplementedError

    def incremental(self, ids, skip_special_tokens: bool = False) -> list:
        raise NotImplementedError

    def decode_bytes(self, ids) -> bytes:
        """The full decode as bytes (byte-level detokenizers only)."""
        raise NotImplementedError

    def facts(self) -> dict:
        return {}


class TokenizersDetok(Detokenizer):
    name = "tokenizers"

    def __init__(self, model_dir: str):
        try:
            import tokenizers
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise Unavailable(f"tokenizers is not installed ({exc})") from None
        try:
            from tokenizers.decoders import DecodeStream
        except ImportError:
            raise Unavailable(f"tokenizers {tokenizers.__version__} has no decoders.DecodeStream") from None
        self.DecodeStream = DecodeStream
        self.version = tokenizers.__version__
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))

    def encode(self, text):
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def incremental(self, ids, skip_special_tokens=False):
        try:
            ds = self.DecodeStream(skip_special_tokens=skip_special_tokens)
        except TypeError:
            ds = self.DecodeStream(skip_special_tokens)
        return [ds.step(self.tok, int(i)) for i in ids]

    def facts(self):
        return {"tokenizers": self.version, "via": "tokenizers.decoders.DecodeStream"}


class _Ids:
    """The shape TextStreamer.put expects of a tensor: one step, one token."""

    def __init__(self, ids):
        self._ids = list(ids)
        self.shape = (len(self._ids),)

    def tolist(self):
        return list(self._ids)


class TransformersDetok(Detokenizer):
    name = "transformers"

    def __init__(self, model_dir: str):
        try:
            import transformers
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise Unavailable(f"transformers is not installed ({exc})") from None
        try:
            from transformers import TextStreamer
        except ImportError:
            raise Unavailable(f"transformers {transformers.__version__} has no TextStreamer") from None
        self.TextStreamer = TextStreamer
        self.version = transformers.__version__
        self.tok = AutoTokenizer.from_pretrained(model_dir)

    def encode(self, text):
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def incremental(self, ids, skip_special_tokens=False):
        pieces: list = []

        class Collect(self.TextStreamer):
            def on_finalized_text(self, text, stream_end=False):
                pieces.append(text)

        st = Collect(
            self.tok, skip_prompt=False, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )
        for i in ids:
            st.put(_Ids([int(i)]))
        st.end()
        return pieces

    def facts(self):
        return {"transformers": self.version, "via": "transformers.TextStreamer", "class": type(self.tok).__name__}


class LlamaCppDetok(Detokenizer):
    name = "llama-cpp"
    bytes_level = True

    def __init__(self, gguf_path: str):
        try:
            import llama_cpp
            from llama_cpp import Llama
        except ImportError as exc:
            raise Unavailable(f"llama-cpp-python is not installed ({exc})") from None
        if not os.path.isfile(gguf_path):
            raise Unavailable(f"the model has no GGUF file ({gguf_path})")
        self.version = getattr(llama_cpp, "__version__", None)
        self.llm = Llama(model_path=gguf_path, vocab_only=True, verbose=False)

    def encode(self, text):
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids, skip_special_tokens=True):
        raw = self.llm.detokenize(list(ids))
        return raw.decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        return self.llm.detokenize(list(ids))

    def incremental(self, ids, skip_special_tokens=True):
        return [self.llm.detokenize([int(i)]) for i in ids]

    def facts(self):
        return {"llama_cpp_python": self.version, "via": "Llama.detokenize per token (bytes)"}

    def close(self):
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "close"):
            try:
                llm.close()
            except Exception:  # noqa: BLE001
                pass


def make_detokenizer(name: str, job: dict) -> Detokenizer:
    if name == "tokenizers":
        return TokenizersDetok(job["model_dir"])
    if name == "transformers":
        return TransformersDetok(job["model_dir"])
    if name == "llama-cpp":
        return LlamaCppDetok(job.get("gguf_path") or os.path.join(job["model_dir"], "model.gguf"))
    raise Unavailable(f"unknown detokenizer {name!r} (known: {', '.join(DEFAULT_DETOKENIZERS)})")


def detok_checks(ctx: Ctx) -> None:
    job = ctx.job
    texts = dict(ctx.conf.get("texts") or TEXTS)
    control, _ = model_specials(job["model_dir"])
    gen_ids = {}
    for c in job.get("cases") or []:
        g = (c.get("expect") or {}).get("gen") or {}
        if g.get("ids"):
            gen_ids[c["id"]] = [int(i) for i in g["ids"]]
    conv = ctx.facts.setdefault("special_convention", {})
    for name in ctx.conf.get("detokenizers") or DEFAULT_DETOKENIZERS:
        try:
            d = make_detokenizer(name, job)
        except Unavailable as exc:
            ctx.skipped[f"detokenizer:{name}"] = str(exc)
            continue
        except Exception:  # noqa: BLE001 - loading is a result
            ctx.crash("*", f"{name}:load")
            continue
        try:
            ctx.facts.setdefault("detokenizers", {})[name] = d.facts()
            inputs = [(f"_detok/{t}", d.encode(txt), txt) for t, txt in texts.items()]
            # a generation of the tiny random model: whatever bytes it picked, split however
            inputs += [(f"_detok/gen:{cid}", ids, None) for cid, ids in gen_ids.items()]
            for case, ids, text in inputs:
                check = f"{name}:incremental"
                try:
                    if d.bytes_level:
                        full = d.decode_bytes(ids)
                        pieces = d.incremental(ids)
                    else:
                        full = d.decode(ids)
                        pieces = d.incremental(ids)
                except Exception:  # noqa: BLE001
                    ctx.crash(case, check)
                    continue
                diff = incremental_diff(pieces, full)
                full_text = full.decode("utf-8", errors="replace") if isinstance(full, bytes) else full
                if not diff and text is not None and full_text != text:
                    ctx.add(
                        case,
                        check,
                        "pass",
                        f"{len(ids)} ids; incremental equals the full decode, which "
                        f"itself differs from the text (a tokenize-stage matter): {first_divergence(text, full_text)}",
                        n_ids=len(ids),
                    )
                elif diff:
                    ctx.add(
                        case,
                        check,
                        "fail",
                        f"{len(ids)} ids fed one at a time: {diff}",
                        klass="backend-specific",
                        n_ids=len(ids),
                    )
                else:
                    ctx.add(
                        case,
                        check,
                        "pass",
                        f"{len(ids)} ids, {sum(1 for p in pieces if p)} non-empty pieces",
                        n_ids=len(ids),
                    )
            special_check(ctx, d, control, conv)
        finally:
            if hasattr(d, "close"):
                d.close()


def special_check(ctx: Ctx, d: Detokenizer, control: list[str], conv: dict) -> None:
    case, check = "_special/" + "mixed", f"{d.name}:special"
    kept, skipped = special_expectations(SPECIAL_TEXT, control)
    try:
        ids = d.encode(SPECIAL_TEXT)
        if d.bytes_level:
            got = {"default": d.decode(ids)}
        else:
            got = {"skip=False": d.decode(ids, False), "skip=True": d.decode(ids, True)}
            inc = d.incremental(ids, skip_special_tokens=True)
            got["skip=True incremental"] = "".join(p for p in inc if p)
    except Exception:  # noqa: BLE001
        ctx.crash(case, check)
        return
    problems = []
    for how, text in got.items():
        c = convention(text, kept, skipped)
        conv[f"{d.name} ({how})"] = c
        want = {"skip=False": "kept", "skip=True": "skipped", "skip=True incremental": "skipped"}.get(how)
        if c == "neither":
            problems.append(f"{how}: {text!r} is neither the text kept {kept!r} nor skipped {skipped!r}")
        elif want and c != want:
            problems.append(f"{how}: specials {c}, expected {want}")
    if problems:
        ctx.add(case, check, "fail", "; ".join(problems), klass="backend-specific")
    else:
        ctx.add(case, check, "pass", ", ".join(f"{h}: {conv[f'{d.name} ({h})']}" for h in got))
