"""GPU check: rlcore GRPO and PPO and TRL GRPO on one CUDA card, a random 0.5 B Qwen2 model in bf16.

Prints, per run: generation tokens per second, training MFU (model FLOPs utilisation of the update phase)
and peak GPU memory. Run through ``benchmarks/gpu_check.sh`` (which checks for CUDA first).

MFU counts 6 x parameters x tokens for the policy's forward and backward, plus 2 x parameters x tokens for
each no-grad forward (reference; PPO's value model counts as a second policy), over the update phase's wall
time, against the card's dense bf16 peak (``--peak-tflops``, else looked up from the device name).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAKS.items() if k in name), None)


def run(engine: str, algorithm: str, model: str, steps: int, new_tokens: int, tag: str, timeout: int) -> dict:
    out = ROOT / ".bench" / "gpu" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "engines.py"),
        engine,
        "--gpu",
        "--model",
        model,
        "--workdir",
        str(ROOT / ".bench" / "gpu" / tag),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--algorithm",
        algorithm,
        "--max-new-tokens",
        str(new_tokens),
        "--lr",
        "1e-6",
    ]
    t0 = time.time()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_s": time.time() - t0}
    return {**json.loads(out.read_text()), "wall_s": time.time() - t0}


def figures(r: dict, params: int, peak: float | None, warmup: int) -> dict:
    if "error" in r:
        return {"error": r["error"].strip().splitlines()[-1] if r["error"].strip() else "failed"}
    ends = r["step_end"]
    intervals = [b - a for a, b in zip(ends, ends[1:], strict=False)][warmup - 1 :]
    step_s = statistics.median(intervals or [ends[0]])
    split = {k: statistics.median(v[warmup:] or v) for k, v in r["split"].items() if k.startswith("time/")}
    gen_s = split.get("time/generate_s")
    batch = 16
    new_tokens = r.get("max_new_tokens", 0)
    tokens = batch * new_tokens  # upper bound: rows that stop early still occupy the batch
    train_s = split.get("time/train_s", step_s - (gen_s or 0))
    # Tokens seen by the update: prompt (~15) + completion per row.
    seq = batch * (new_tokens + 15)
    passes = 6 + 2 + (6 + 2 if r["algorithm"] == "ppo" else 0)  # policy fwd+bwd, ref fwd, value fwd+bwd+fwd
    mfu = passes * params * seq / train_s / (peak * 1e12) if peak and train_s else None
    return {
        "step_s": step_s,
        "gen_tokens_per_s": tokens / gen_s if gen_s else None,
        "train_s": train_s,
        "mfu": mfu,
        "peak_gpu_gib": (r.get("peak_gpu_bytes") or 0) / 2**30,
        "wall_s": r["wall_s"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="0.5b")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--budget-s", type=int, default=420, help="stop starting runs after this many seconds")
    a = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.stderr.write(
            "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); "
            "run this on a machine with an NVIDIA GPU and a CUDA build of torch.\n"
        )
        return 2
    from rlcore.testing import SIZES, make_tiny_model

    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, a.peak_tflops)
    started = time.time()
    model = str(make_tiny_model(ROOT / ".bench" / f"model-{a.size}-bf16", a.size, dtype="bfloat16"))
    cfg = SIZES[a.size]
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model)
    params = _count(c)
    print(
        f"device: {name}; model {a.size} ({params / 1e6:.0f} M parameters, "
        f"{cfg['num_hidden_layers']} layers) "
        f"bf16; 2 prompts x 8 samples x {a.new_tokens} new tokens; built in {time.time() - started:.0f} s"
    )
    rows = []
    for engine, algo in [("rlcore", "grpo"), ("trl", "grpo"), ("rlcore", "ppo")]:
        left = a.budget_s - (time.time() - started)
        if left < 60:
            print(f"{engine} {algo}: skipped (time budget spent)")
            continue
        r = run(engine, algo, model, a.steps, a.new_tokens, f"{engine}-{algo}", int(left))
        r["max_new_tokens"] = a.new_tokens
        f = figures(r, params, peak, warmup=2)
        rows.append((engine, algo, f))
        print(json.dumps({"engine": engine, "algorithm": algo, **f}))
    print("\n| engine | algorithm | s/step | generation tokens/s | train s | training MFU | peak GPU GiB |")
    print("|---|---|---|---|---|---|---|")
    for engine, algo, f in rows:
        if "error" in f:
            print(f"| {engine} | {algo} | failed: {f['error'][:80]} | | | | |")
            continue
        mfu = f"{f['mfu'] * 100:.1f} %" if f["mfu"] is not None else "n/a (unknown peak)"
        tps = f"{f['gen_tokens_per_s']:.0f}" if f["gen_tokens_per_s"] else "n/a"
        print(
            f"| {engine} | {algo} | {f['step_s']:.2f} | {tps} | {f['train_s']:.2f} | {mfu} | "
            f"{f['peak_gpu_gib']:.1f} |"
        )
    return 0


def _count(c) -> int:
    """Parameters of a tied-embedding Qwen2 config, without building it."""
    h, i, n, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    hd = getattr(c, "head_dim", None) or h // c.num_attention_heads
    kv = c.num_key_value_heads * hd
    attn = h * h + h + 2 * (h * kv + kv) + h * h
    return v * h + n * (attn + 3 * h * i + 2 * h) + h


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
