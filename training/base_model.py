"""Turn any `base_model` spec into a plain Hugging Face checkpoint folder, then load it.

Specs: "embedded" (the bot's SmolLM2 GGUF), a `.gguf` file, "random:llama-3.2-1b" / "-3b" (the
architecture from its config, random weights: for offline GPU runs and benchmarks), a local HF
folder, or a hub id. GGUF and random bases are materialised once into a cache folder, because
transformers refuses `save_pretrained` on a GGUF-loaded model and dequantizing takes ~10 s: we build
a fresh model from the config, load the state dict, and save that. Everything downstream (both
backends, merge, the GGUF converter) then sees an ordinary checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from training.errors import ConfigError

# Shapes of the original experiment's models (from their public config.json files).
LLAMA_SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
    ),
    "llama-3.2-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
    ),
    # a toy of the same family, for CPU tests of GPU code paths
    "llama-test": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=49152,
    ),
}
LLAMA_COMMON = dict(
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=128000,
    eos_token_id=128009,
    rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
)


def cache_dir() -> Path:
    root = os.environ.get("LORABOT_CACHE_DIR") or Path.home() / ".cache" / "lorabot"
    return Path(root) / "bases"


MAKE_TOKENIZER = (
    "make it where lorabot and its embedded model are installed with "
    "`python -m training.cli save-tokenizer .gpu/tokenizer` (`make gpu-bundle` does it too) "
    "and carry the folder over"
)


def resolve_base(spec: str, tokenizer_spec: str | None = None, seed: int = 3407) -> Path | str:
    """A local checkpoint folder for file-like specs; hub ids are returned unchanged."""
    if spec == "embedded" or spec.endswith(".gguf"):
        from core.embedded import EmbeddedModelMissing, embedded_model_path

        try:
            gguf = embedded_model_path() if spec == "embedded" else Path(spec).expanduser()
        except EmbeddedModelMissing as error:
            raise ConfigError(f"base model 'embedded': {error}") from None
        if not gguf.is_file():
            raise ConfigError(f"base model file not found: {gguf}")
        return _materialise(f"{gguf.stem}-{_file_key(gguf)}", lambda out: gguf_to_checkpoint(gguf, out))
    if spec.startswith("random:"):
        shape = spec.split(":", 1)[1]
        if shape not in LLAMA_SHAPES:
            raise ConfigError(
                f"unknown random base {spec!r}; use one of: random:{', random:'.join(LLAMA_SHAPES)}"
            )
        tok_dir = random_tokenizer(spec, tokenizer_spec)
        key = f"random-{shape}-seed{seed}"
        return _materialise(key, lambda out: random_checkpoint(shape, Path(tok_dir), out, seed))
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec.startswith((".", "/", "~")):
        raise ConfigError(f"base model folder not found: {path}")
    return spec  # a hub id: transformers/unsloth fetch it where there is a network


def random_tokenizer(spec: str, tokenizer_spec: str | None) -> Path | str:
    """The tokenizer a `random:*` base takes: config `tokenizer =`, else $LORABOT_RANDOM_TOKENIZER,
    else the embedded model's. A missing one is a ConfigError saying how to make it (GPU hosts
    usually have no embedded model)."""
    env = os.environ.get("LORABOT_RANDOM_TOKENIZER")
    source, where = (
        (tokenizer_spec, "tokenizer = in the config")
        if tokenizer_spec
        else (env, "$LORABOT_RANDOM_TOKENIZER")
    )
    if not source:
        try:
            return resolve_base("embedded")
        except ConfigError as error:
            raise ConfigError(
                f"{spec} needs a tokenizer and the default one, the embedded model's, is not here ({error}); "
                f"{MAKE_TOKENIZER}, then point tokenizer = (config) or $LORABOT_RANDOM_TOKENIZER at it"
            ) from None
    path = Path(source).expanduser()
    if source == "embedded" or source.endswith(".gguf"):
        return resolve_base(source)
    if not path.is_dir():
        raise ConfigError(
            f"{spec} takes its tokenizer from {path} ({where}), which does not exist; {MAKE_TOKENIZER}"
        )
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConfigError(f"{path} ({where}) holds no tokenizer (no tokenizer.json); {MAKE_TOKENIZER}")
    return path


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:10]


def _materialise(key: str, build) -> Path:
    """Build into a temp folder and rename, so an interrupted build never looks finished."""
    out = cache_dir() / key
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    build(tmp)
    tmp.replace(out) if not out.exists() else None
    return out


def fix_special_tokens(tokenizer: Any, config: Any) -> None:
    """transformers' GGUF tokenizer reads eos as <|im_start|>; the model's config knows better."""
    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos_id is not None and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def gguf_to_checkpoint(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a fresh fp32 model and save it (weights, tokenizer, config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.tie_weights()
    fix_special_tokens(tokenizer, config)
    fresh.generation_config.eos_token_id = config.eos_token_id
    tokenizer.clean_up_tokenization_spaces = False
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    repair_bpe_tokenizer(out / "tokenizer.json", _gguf_pre_tokenizer(gguf))


def _gguf_pre_tokenizer(gguf: Path) -> str | None:
    """llama.cpp's pre-tokenizer name (e.g. "smollm") for GPT-2-style BPE vocabularies, else None."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    if "tokenizer.ggml.model" not in fields or fields["tokenizer.ggml.model"].contents() != "gpt2":
        return None
    return fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else "default"


def repair_bpe_tokenizer(path: Path, pre: str | None) -> None:
    """Make the GGUF-derived tokenizer.json a plain byte-level BPE again.

    transformers rebuilds GGUF BPE vocabularies SentencePiece-style (byte fallback, '▁' decoder) and
    drops the digit splitting of SmolLM's pre-tokenizer. Training would then tokenize numbers
    differently from llama.cpp at inference, and the GGUF converter would take the vocabulary for
    a SentencePiece one (llama.cpp then fails to load it). Restore what the original file had.
    """
    import json

    if pre is None:
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data["model"]["byte_fallback"] = False
    data["normalizer"] = None
    data["decoder"] = {**byte_level, "add_prefix_space": True}
    data["post_processor"] = {**byte_level, "trim_offsets": False}
    data["pre_tokenizer"] = (
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
        if pre == "smollm"
        else byte_level
    )
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def random_checkpoint(shape: str, tokenizer_dir: Path, out: Path, seed: int) -> None:
    """A Llama-3.2-shaped model with random weights (bf16) and the embedded model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**{**LLAMA_COMMON, **LLAMA_SHAPES[shape]})
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def load_tokenizer(source: Path | str, chat_template: str):
    from transformers import AutoTokenizer

    from training.chat_format import set_chat_template

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_chat_template(tokenizer, chat_template)
    return tokenizer


def load_model(source: Path | str, dtype: str, load_in_4bit: bool = False, device: str = "cpu"):
    """Plain transformers load (the HF backend, merge and tests use this)."""
    from transformers import AutoModelForCausalLM

    from training.hardware import torch_dtype

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype),
        )
    if device != "cpu":
        kwargs["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)
