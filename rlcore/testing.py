"""A model builder that needs no network: random Qwen2-architecture weights and a byte-level tokenizer.

Tests, benchmarks and the demo use it. The result is an ordinary Hugging Face directory, loaded through
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` like any hub model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SIZES = {
    # ~0.1 M parameters: fast enough for the learning tests on two CPU cores.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    # ~3 M parameters: the "small" model of the benchmarks.
    "small": dict(
        hidden_size=256,
        intermediate_size=640,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
# Larger random models for GPU checks (benchmarks/gpu_check.sh); never built by tests.
SIZES["0.5b"] = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # 256 byte symbols, no merges: every byte is one token, every string round-trips.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="left",
    )
    fast.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(
    path: str | os.PathLike, size: str = "tiny", seed: int = 0, dtype: str = "float32"
) -> Path:
    """Write a random Qwen2-architecture causal LM and a byte-level tokenizer to ``path``; return it.

    Idempotent: a directory that already holds a complete model of the same size and seed is kept.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    out = Path(path)
    stamp = out / "rlft_tiny.json"
    want = {"size": size, "seed": seed, "dtype": dtype}
    if stamp.exists() and (out / "config.json").exists():
        try:
            if json.loads(stamp.read_text()) == want:
                return out
        except ValueError:
            pass
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_level_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    stamp.write_text(json.dumps(want))
    return out


def count_parameters(path: str | os.PathLike) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
