"""The engine's fast paths compute what the Hugging Face paths compute.

Run: ``pytest benchmarks/test_fast_paths.py``.

Kept beside the benchmark that motivated them; meant to move to tests/rlcore/ (CPU, ~10 s, no marks needed).
1. ``fast_sample`` draws token for token what ``model.generate()`` draws for the same seed (same logits,
   same use of the random stream), with left padding, at two temperatures and both model sizes.
2. ``completion_logits`` through the lean forward equals the HF forward, and so do its gradients.
3. What the fast sampler does not cover (nucleus sampling, PEFT wrappers) goes to ``generate()``.
"""

from __future__ import annotations

import pytest
import torch

from rlcore import fastpath as F
from rlcore import rollout as R
from rlcore.testing import make_tiny_model

PROMPTS = ["Say something:", "Go:", "A", "Write a word:"] * 3


@pytest.fixture(scope="module", params=["tiny", "small"])
def model_and_tokenizer(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("m") / request.param, request.param)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return model, tok


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fast_sampler_draws_the_same_tokens_as_generate(model_and_tokenizer, temperature):
    model, tok = model_and_tokenizer
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    assert F.fast_sampling_supported(model, top_p=1.0)
    torch.manual_seed(11)
    with torch.no_grad():
        fast = F.fast_sample(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            max_new_tokens=24,
            temperature=temperature,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    torch.manual_seed(11)
    with torch.no_grad():
        reference = R._hf_sample(model, tok, enc, 24, temperature, 1.0)
    assert torch.equal(fast, reference)


def test_lean_forward_matches_the_hf_forward_and_its_gradients(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rollout = R.generate(
        model, tok, PROMPTS, max_new_tokens=16, max_prompt_tokens=64, temperature=1.0, top_p=1.0
    )
    args = (rollout.input_ids, rollout.attention_mask, rollout.position_ids)
    mask = rollout.response_mask.bool()
    assert F.lean_forward_supported(model, rollout.input_ids)
    lean = R.completion_logits(model, *args, 16)
    ref = model(
        input_ids=args[0], attention_mask=args[1], position_ids=args[2], logits_to_keep=17, use_cache=False
    ).logits[:, :-1]
    torch.testing.assert_close(lean[mask], ref[mask], rtol=0, atol=1e-5)
    grads = []
    for logits in (lean, ref):
        model.zero_grad()
        logits[mask].logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_nucleus_sampling_and_adapters_use_generate(model_and_tokenizer):
    model, _ = model_and_tokenizer
    assert not F.fast_sampling_supported(model, top_p=0.9)
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules="all-linear"))
    assert not F.fast_sampling_supported(peft_model, top_p=1.0)
