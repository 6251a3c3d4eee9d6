"""Build the project's tiny model: tokenizer, seeded weights, GGUF and an Ollama Modelfile.

Runs INSIDE the reference environment (exact pins), never in llmcompat's own process, so the
packages that write the files are the pinned ones. Every output is a pure function of the files
beside this script and the arguments: fixed seeds, sorted keys, no timestamps, no network.

    python build.py --out DIR --arch qwen2|llama --parts tokenizer[,weights,gguf]

Only ``tokenizers`` and ``transformers`` are imported for the tokenizer part; torch only for
``weights``; ``gguf`` only for ``gguf``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.txt"
CHAT_TEMPLATE = HERE / "chat_template.jinja"
OLLAMA_TEMPLATE = HERE / "ollama.gotmpl"

ARCHS = ("qwen2", "llama")
PARTS = ("tokenizer", "weights", "gguf")

VOCAB_SIZE = 1500
"""Learned BPE tokens plus the added tokens below: the embedding matrix has exactly this many rows."""

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CONTROL_TOKENS = (BOS, EOS, PAD, IM_START, IM_END)
"""Special: never shown by a decoder that skips special tokens (GGUF token type CONTROL)."""
TEXT_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
"""Added but not special, as in Qwen: reasoning and tool-call parsers must see them in decoded
text, so ``skip_special_tokens`` keeps them (GGUF token type USER_DEFINED)."""

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's split: llama.cpp knows it as pre-tokenizer ``qwen2`` (no space cleaning on decode)."""
GGUF_PRE = "qwen2"

SEED = 20260101
HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 64, 2, 4, 2, 128
CONTEXT = 4096
ROPE_THETA = 10000.0
RMS_EPS = 1e-6


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer():
    """A byte-level BPE on corpus.txt; added tokens get the ids after the learned ones."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    learned = VOCAB_SIZE - len(CONTROL_TOKENS) - len(TEXT_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=learned,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator([CORPUS.read_text(encoding="utf-8")], trainer=trainer)
    if tok.get_vocab_size() != learned:
        raise SystemExit(f"corpus too small: learned {tok.get_vocab_size()} tokens, want {learned}")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEXT_TOKENS])
    assert tok.get_vocab_size() == VOCAB_SIZE
    return tok


def build_tokenizer(out: Path) -> None:
    """tokenizer.json, tokenizer_config.json (template inline), chat_template.jinja and
    special_tokens_map.json."""
    from transformers import PreTrainedTokenizerFast

    template = CHAT_TEMPLATE.read_text(encoding="utf-8")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=False,
        add_eos_token=False,  # the template owns every control token
        clean_up_tokenization_spaces=False,
        model_max_length=CONTEXT,
        chat_template=template,
    )
    # save_jinja_files=False: the template goes into tokenizer_config.json, where older readers
    # look; chat_template.jinja is written next to it for the newer ones.
    fast.save_pretrained(str(out), save_jinja_files=False)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config["add_bos_token"], config["add_eos_token"] = False, False
    # A class every transformers release knows (4.x has no TokenizersBackend); 5.x picks the
    # tokenizers backend from tokenizer.json by itself.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    # No unknown-token: transformers 5 loads a qwen2 checkpoint with Qwen2Tokenizer, whose default
    # unk "<|endoftext|>" would otherwise become token 1500, one past the embedding matrix.
    config["unk_token"] = None
    _write_json(config_path, config)
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": [IM_START, IM_END]}
    _write_json(out / "special_tokens_map.json", special)


# --------------------------------------------------------------------------- weights


def _uniform(name: str, shape: tuple[int, ...], bound: float):
    """Values in [-bound, bound) from a counter-based SplitMix64 stream keyed by the tensor name.

    Integer arithmetic and exact float conversions only: the same bytes on every CPU, every
    numpy and every torch, unlike a seeded ``torch.randn`` whose vectorised paths differ.
    """
    import numpy as np

    n = 1
    for d in shape:
        n *= d
    key = int.from_bytes(hashlib.sha256(f"{SEED}:{name}".encode()).digest()[:8], "little")
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    unit = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)  # exact, in [0, 1)
    return ((unit * 2.0 - 1.0) * bound).astype(np.float32).reshape(shape)


def _init(name: str, shape: tuple[int, ...]):
    """Norms are one; logits get a wide spread so greedy choices survive engines' rounding."""
    import numpy as np

    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    if name.endswith(".bias"):
        return _uniform(name, shape, 0.125)
    if "embed_tokens" in name:
        return _uniform(name, shape, 1.0)
    if name.startswith("lm_head"):
        return _uniform(name, shape, 0.625)
    return _uniform(name, shape, 0.25)


def model_config(arch: str, vocab: dict):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    return cls(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=RMS_EPS,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=False,
        use_cache=True,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
    )


def build_weights(out: Path, arch: str) -> None:
    """config.json, generation_config.json, model.safetensors (float32, CPU torch)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if torch.version.cuda:
        raise SystemExit(f"refusing a CUDA torch ({torch.__version__}): the reference is CPU torch")
    torch.manual_seed(SEED)
    vocab = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {t["content"]: t["id"] for t in vocab["added_tokens"]}
    config = model_config(arch, vocab)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            state[name].copy_(torch.from_numpy(_init(name, tuple(state[name].shape))))
    model.generation_config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        bos_token_id=vocab[BOS],
        eos_token_id=[vocab[IM_END], vocab[EOS]],
        pad_token_id=vocab[PAD],
    )
    model.save_pretrained(str(out), safe_serialization=True)
    path = out / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.setdefault("rope_theta", ROPE_THETA)  # transformers 5 writes only rope_parameters
    _write_json(path, cfg)
    for name in ("config.json", "generation_config.json"):
        _write_json(out / name, json.loads((out / name).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- gguf


def _permute(w, n_head: int):
    """HF's rotate-half Q/K rows into llama.cpp's interleaved rope layout (Llama only)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_tensor_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = name.split(".", 3)  # model.layers.N.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"


def build_gguf(out: Path, arch: str) -> None:
    """model.gguf (f32) with architecture, tokenizer and chat template metadata; read back to check."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    added = {t["content"]: t for t in tok["added_tokens"]}
    ids = {**vocab, **{c: t["id"] for c, t in added.items()}}
    tokens = [None] * len(ids)
    for text, i in ids.items():
        tokens[i] = text
    assert None not in tokens and len(tokens) == VOCAB_SIZE
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for t in added.values():
        types[t["id"]] = gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    template = CHAT_TEMPLATE.read_text(encoding="utf-8")

    path = out / "model.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"llmcompat-tiny-{arch}")
    w.add_vocab_size(VOCAB_SIZE)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(INTERMEDIATE)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(GGUF_PRE)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids[BOS])
    w.add_eos_token_id(ids[EOS])
    w.add_eot_token_id(ids[IM_END])
    w.add_pad_token_id(ids[PAD])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(template)
    state = load_file(str(out / "model.safetensors"))
    head_dim_rows = {"q_proj": HEADS, "k_proj": KV_HEADS}
    order = ["model.embed_tokens.weight"]
    for layer in range(LAYERS):
        order += sorted(n for n in state if n.startswith(f"model.layers.{layer}."))
    order += ["model.norm.weight", "lm_head.weight"]
    assert sorted(order) == sorted(state), "unexpected tensors in model.safetensors"
    for name in order:
        data = np.ascontiguousarray(state[name], dtype=np.float32)
        proj = name.split(".")[-2]
        if arch == "llama" and proj in head_dim_rows:
            data = np.ascontiguousarray(_permute(data, head_dim_rows[proj]))
        w.add_tensor(gguf_tensor_name(name), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    check_gguf(path, arch, len(order), template)


def check_gguf(path: Path, arch: str, n_tensors: int, template: str) -> None:
    """Read the file back: a writer bug must fail the build, not a cell much later."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def text(key: str) -> str:
        return r.fields[key].contents()

    problems = []
    if text("general.architecture") != arch:
        problems.append("architecture")
    if len(r.fields["tokenizer.ggml.tokens"].data) != VOCAB_SIZE:
        problems.append("token count")
    if text("tokenizer.chat_template") != template:
        problems.append("chat template")
    if text("tokenizer.ggml.pre") != GGUF_PRE:
        problems.append("pre-tokenizer")
    if len(r.tensors) != n_tensors:
        problems.append("tensor count")
    if problems:
        raise SystemExit(f"{path}: GGUF read back wrong: {', '.join(problems)}")


def build_modelfile(out: Path) -> None:
    """An Ollama Modelfile beside model.gguf, with the Go template equivalent to the Jinja one."""
    template = OLLAMA_TEMPLATE.read_text(encoding="utf-8")
    if '"""' in template:
        raise SystemExit("ollama.gotmpl must not contain triple quotes")
    lines = ["FROM ./model.gguf", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{t}"' for t in (IM_START, IM_END, EOS)]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {CONTEXT}"]
    (out / "Modelfile").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build(out: Path, arch: str, parts: list[str]) -> None:
    if arch not in ARCHS:
        raise SystemExit(f"unknown arch {arch!r}: one of {', '.join(ARCHS)}")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}: from {', '.join(PARTS)}")
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)  # every other part reads the tokenizer
    if "weights" in parts or "gguf" in parts:
        build_weights(out, arch)
    if "gguf" in parts:
        build_gguf(out, arch)
        build_modelfile(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--arch", default="qwen2", choices=ARCHS)
    p.add_argument("--parts", default="tokenizer", help="comma-separated: " + ",".join(PARTS))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    build(args.out, args.arch, [x for x in args.parts.split(",") if x])
    return 0


if __name__ == "__main__":
    sys.exit(main())
