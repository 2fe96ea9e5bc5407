"""GGUF models (issue 15): a job naming ``model.gguf_file`` trains and checkpoints, ``rlft models
import-gguf`` converts, bad files are refused with a clear message, and the model policy keeps the file
inside the roots.

Each test writes its own small GGUF file with the ``gguf`` package: a tiny llama-architecture model whose
weights come from a Hugging Face model built here, laid out as llama.cpp's converter lays them out (q and k
rows permuted), and the byte-level tokenizer of ``rlcore.testing``. The real SmolLM2 file is only read by
``benchmarks/real_task.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlcore.errors import ModelLoadError
from rlcore.gguf import convert_gguf, load_gguf_causal_lm
from rlcore.modelpolicy import (
    ModelForbidden,
    ModelNotLoadable,
    check_gguf_inside,
    check_loadable,
    check_model_source,
)
from rlcore.spec import JobSpec
from rlcore.testing import CHAT_TEMPLATE, SPECIAL_TOKENS
from rlcore.trainer import train
from tests.rlcore.helpers import letter_reward, make_spec

gguf = pytest.importorskip("gguf")

HEADS, KV_HEADS, HIDDEN, LAYERS, FFN = 4, 2, 64, 2, 128
TEXT = "Add 12 and 30. Answer: 42"


def _tokens() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet()) + SPECIAL_TOKENS


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's layout of q/k rows (``LlamaModel.permute`` in convert_hf_to_gguf.py), undone on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = _tokens()
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokens.index("<|im_start|>"),
        eos_token_id=tokens.index("<|im_end|>"),
        pad_token_id=tokens.index("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def write_tiny_gguf(path: Path, seed: int = 0):
    """Write a tiny llama GGUF to ``path``; return the Hugging Face model its weights came from."""
    model = _hf_llama(seed)
    tokens = _tokens()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3] * len(SPECIAL_TOKENS))  # normal bytes, then control tokens
    w.add_token_scores([0.0] * len(tokens))  # no merges: transformers derives none from equal scores
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(LAYERS):
        pre = f"model.layers.{i}."
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[f"{pre}{hf}.weight"])
        q = _permute(torch.from_numpy(sd[f"{pre}self_attn.q_proj.weight"]), HEADS)
        k = _permute(torch.from_numpy(sd[f"{pre}self_attn.k_proj.weight"]), KV_HEADS)
        w.add_tensor(f"blk.{i}.attn_q.weight", q.numpy())
        w.add_tensor(f"blk.{i}.attn_k.weight", k.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("gguf")
    model = write_tiny_gguf(root / "tiny.gguf")
    return root, model


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_a_gguf_file_loads_as_the_model_it_was_written_from(gguf_dir) -> None:
    from transformers import AutoTokenizer

    root, original = gguf_dir
    loaded = load_gguf_causal_lm(str(root), "tiny.gguf", None, torch.float32)
    tok = AutoTokenizer.from_pretrained(str(root), gguf_file="tiny.gguf")
    ids = tok(TEXT)["input_ids"]
    assert tok.decode(ids) == TEXT and len(ids) == len(TEXT.encode())  # one byte, one token
    assert tok.eos_token == "<|im_end|>"
    torch.testing.assert_close(_logits(loaded, ids), _logits(original, ids), atol=1e-4, rtol=1e-4)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in loaded.parameters())
    assert not getattr(loaded, "is_quantized", False)  # dense: trainable and saveable


def test_import_gguf_writes_a_plain_directory_that_loads_without_the_file(gguf_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, original = gguf_dir
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "rlft", "models", "import-gguf", str(root / "tiny.gguf"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(TEXT)["input_ids"]
    torch.testing.assert_close(_logits(model, ids), _logits(original, ids), atol=1e-4, rtol=1e-4)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n"
    )
    # A second import into the same directory would mix two models' files: refused, nothing written.
    again = subprocess.run(
        [sys.executable, "-m", "rlft", "models", "import-gguf", str(root / "tiny.gguf"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1 and "not empty" in again.stderr


def test_bad_gguf_input_is_refused_with_a_clear_message(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        convert_gguf(tmp_path / "config.json", tmp_path / "out")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_gguf_causal_lm(str(tmp_path), "config.json", None, torch.float32)
    with pytest.raises(ModelLoadError, match="is not a file"):
        convert_gguf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "rlft", "models", "import-gguf", str(tmp_path / "nope.gguf"), "-o", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "model, message",
    [
        ({"checkpoint": "ckpt_x", "gguf_file": "m.gguf"}, "model.gguf_file names a file inside"),
        ({"name_or_path": "/m", "gguf_file": "../m.gguf"}, "without a directory"),
        ({"name_or_path": "/m", "gguf_file": "sub/m.gguf"}, "without a directory"),
        ({"name_or_path": "/m", "gguf_file": ""}, "gguf_file"),
    ],
)
def test_spec_refuses_a_gguf_file_that_is_not_a_file_name(model, message) -> None:
    spec = make_spec("/m").model_dump(mode="json")
    spec["model"] = model
    with pytest.raises(ValueError, match=message):
        JobSpec.model_validate(spec)


def test_the_model_policy_keeps_the_gguf_file_inside_the_roots(gguf_dir, tmp_path) -> None:
    root, _ = gguf_dir
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    (models / "m" / "model.gguf").write_bytes((root / "tiny.gguf").read_bytes())
    (models / "m" / "link.gguf").symlink_to(root / "tiny.gguf")  # a real GGUF, but outside the root
    (models / "m" / "notes.txt").write_text("hello")
    roots, forbidden = [models.resolve()], []
    path = check_model_source(str(models / "m"), "model.name_or_path", roots, forbidden)
    check_gguf_inside(path, "model.gguf", roots, forbidden)
    check_loadable(path, str(models / "m"), "model.name_or_path", "model.gguf")
    with pytest.raises(ModelForbidden) as refused:
        check_gguf_inside(path, "link.gguf", roots, forbidden)
    assert refused.value.field == "model.gguf_file"
    with pytest.raises(ModelNotLoadable, match="not a GGUF file"):
        check_loadable(path, str(models / "m"), "model.name_or_path", "notes.txt")
    with pytest.raises(ModelNotLoadable, match="not a GGUF file"):
        check_loadable(path, str(models / "m"), "model.name_or_path", "missing.gguf")


def test_a_job_trains_from_a_gguf_file_and_checkpoints_a_plain_model(gguf_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    root, original = gguf_dir
    spec = make_spec(str(root), steps=2, checkpoint_every=2, kl_coef=0.05).model_dump(mode="json")
    spec["model"]["gguf_file"] = "tiny.gguf"
    result = train(JobSpec.model_validate(spec), tmp_path / "run", reward_fn=letter_reward)
    assert result.status == "succeeded" and result.step == 2
    final = Path(result.last_checkpoint) / "model"
    trained = AutoModelForCausalLM.from_pretrained(final)
    before = dict(original.named_parameters())
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "no weight moved"
    assert "quantization_config" not in json.loads((final / "config.json").read_text())
