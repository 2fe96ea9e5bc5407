"""Per-GPU memory of a full fine-tune under ``resources.strategy`` ddp and fsdp: an estimate from the model's
shape, and (``--measure``) what two CPU ranks actually hold for a small model.

The estimate counts what this engine keeps per rank, in bytes per parameter, for ``model.dtype: auto`` on a
GPU (weights load in float32 and train under bf16 autocast; the frozen reference loads in bf16):

  policy weights 4, gradients 4, AdamW moments 8 (exp_avg and exp_avg_sq, float32);
  reference 2 (bf16; none at kl_coef 0, the default); PPO's separate critic 16 per backbone parameter
  (weights, gradients, AdamW; the backbone is the policy less an untied lm_head), + 4 of DDP buckets
  under ddp, or its gathered units under fsdp;
  ddp: + 4 for DDP's gradient buckets (accelerate leaves gradient_as_bucket_view off: a copy of the grads);
  fsdp over N ranks: everything above / N, + the gathered units in bf16: the root (embeddings, an untied
  head, the final norm), held through forward and backward, and two decoder layers (the one running and
  the one prefetched).

Left out: activations and logits (batch x sequence dependent; gradient checkpointing cuts the activations
to one layer's), generation's KV cache, the CUDA context (~0.5 GiB) and allocator slack.

Usage: python benchmarks/memory_table.py [--ranks 2 8] [--measure [--size small]]. ``--measure`` runs two
ranks under ``accelerate launch``: GPUs when CUDA is available (benchmarks/gpu_check.sh does so on two or
more), else CPU processes with gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = (h * q + q) + 2 * (h * kv + kv) + q * h  # q, k, v with biases (Qwen2), o without
        return attention + 3 * h * self.intermediate + 2 * h  # SwiGLU MLP, two RMSNorms

    def root_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()

    def backbone_params(self) -> int:
        return self.params() - (0 if self.tied else self.vocab * self.hidden)


# Qwen2.5's published configs (config.json of Qwen/Qwen2.5-{0.5B,1.5B,7B}).
SHAPES = [
    Shape("Qwen2.5-0.5B", 896, 24, 4864, 14, 2, 64, 151936, True),
    Shape("Qwen2.5-1.5B", 1536, 28, 8960, 12, 2, 128, 151936, True),
    Shape("Qwen2.5-7B", 3584, 28, 18944, 28, 4, 128, 152064, False),
]


def estimate(shape: Shape, strategy: str, ranks: int, *, reference: bool = True, gpu: bool = True) -> dict:
    """Bytes per rank by part (see the module docstring); ``gpu=False``: the CPU case (float32 reference,
    no bf16 gathers), what ``--measure`` compares with."""
    p, n = shape.params(), (ranks if strategy == "fsdp" else 1)
    low = 2 if gpu else 4  # bf16 on a GPU under mixed precision
    parts = {
        "weights": 4 * p / n,
        "gradients": 4 * p / n,
        "adamw": 8 * p / n,
        "reference": (low * p / n) if reference else 0.0,
    }
    if strategy == "ddp":
        parts["buffers"] = 4 * p
    else:
        parts["buffers"] = low * (shape.root_params() + 2 * shape.layer_params())
    backbone = shape.backbone_params()
    if strategy == "ddp":  # its own weights, gradients, AdamW and DDP buckets
        parts["critic"] = 20 * backbone
    else:  # its shards and its gathered units (embeddings, two layers)
        gathered = shape.vocab * shape.hidden + shape.hidden + 2 * shape.layer_params()
        parts["critic"] = 16 * backbone / n + low * gathered
    return parts


def table(ranks: list[int]) -> str:
    head = (
        "| model | params | strategy | weights | grads | AdamW | reference | buffers | GRPO total "
        "| + PPO critic | PPO total |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for shape in SHAPES:
        for strategy, n in [("ddp", 1)] + [("fsdp", r) for r in ranks]:
            e = estimate(shape, strategy, n)
            grpo = sum(v for k, v in e.items() if k != "critic")
            label = "ddp (any N)" if strategy == "ddp" else f"fsdp, {n} GPUs"
            cells = [e[k] / GIB for k in ("weights", "gradients", "adamw", "reference", "buffers")]
            rows.append(
                f"| {shape.name} | {shape.params() / 1e9:.2f} B | {label} | "
                + " | ".join(f"{c:.1f}" for c in cells)
                + f" | **{grpo / GIB:.1f}** | {e['critic'] / GIB:.1f} "
                + f"| **{(grpo + e['critic']) / GIB:.1f}** |"
            )
    return "\n".join(rows)


# ---- measured: two CPU ranks, the "small" test model -------------------------------------------------------

WORK = Path(os.environ.get("RLFT_BENCH_DIR", "/tmp/rlft-memory"))


def _spec(model: str, strategy: str, algorithm: str):
    from rlcore.spec import JobSpec

    hp = {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 16, "kl_coef": 0.05}
    if algorithm == "ppo":
        hp.update(group_size=1, prompts_per_step=4, value_model="separate")
    rows = [{"prompt": p} for p in ("Say something:", "Write a word:", "Go:", "Answer:")]
    return JobSpec.model_validate(
        {
            "algorithm": algorithm,
            "model": {"name_or_path": model},
            "dataset": {"rows": rows},
            "hyperparameters": hp,
            "resources": {"gpus": 2, "strategy": strategy},
        }
    )


def rank_child(out: Path, strategy: str, algorithm: str, size: str) -> None:
    """One rank: two steps, then what it holds (parameters, optimizer state, reference), its peak RSS and,
    on a GPU, its peak GPU memory."""
    import resource

    import torch

    from rlcore.testing import make_tiny_model
    from rlcore.trainer import Trainer

    def local_bytes(tensors) -> int:
        return sum((t.to_local() if hasattr(t, "to_local") else t).nbytes for t in tensors)

    model = str(make_tiny_model(WORK / f"model-{size}", size))
    trainer = Trainer(
        _spec(model, strategy, algorithm),
        out / "run",
        reward_fn=lambda prompts, completions, **_: [c.count("a") / max(1, len(c)) for c in completions],
        resume=False,
    )
    trainer.run(lambda: False)
    state = [t for s in trainer.optimizer.state_dict()["state"].values() for t in s.values() if t.dim()]
    ref = trainer.reference.model if trainer.reference is not None else None
    info = {
        "policy_bytes": local_bytes(trainer.policy.parameters()),
        "critic_bytes": local_bytes(trainer.value.parameters()) if trainer.value is not None else 0,
        "optimizer_bytes": local_bytes(state),
        "reference_bytes": local_bytes(ref.parameters()) if ref is not None else 0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
    }
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(info))
    trainer.close()


def measure(size: str) -> str:
    """ddp and fsdp, GRPO and PPO, on two ranks: CPU processes (gloo) or, on a machine with two GPUs, GPUs."""
    from rlcore.testing import SIZES

    rows = [
        "| model | job | strategy | policy / rank | optimizer / rank | reference / rank | critic / rank "
        "| peak RSS / rank | peak GPU / rank |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for algorithm in ("grpo", "ppo"):
        for strategy in ("ddp", "fsdp"):
            out = WORK / f"{algorithm}-{strategy}"
            out.mkdir(parents=True, exist_ok=True)
            launch = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--multi_gpu",
                "--num_processes",
                "2",
            ]
            launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            cmd = [*launch, __file__, "--size", size, "--rank-child", str(out), strategy, algorithm]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append(f"| {size} | {algorithm} | {strategy} | failed: {proc.stderr[-300:]!r} |")
                continue
            ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]

            def cell(key: str, ranks=ranks) -> str:
                scale = 1 if key.endswith("_mib") else 1 / 2**20
                return " / ".join(f"{r[key] * scale:.2f}" for r in ranks)

            parts = ("policy_bytes", "optimizer_bytes", "reference_bytes", "critic_bytes", "peak_rss_mib")
            parts += ("peak_gpu_mib",)
            rows.append(
                f"| {size} ({SIZES[size]['num_hidden_layers']} layers) | {algorithm} | {strategy} | "
                + " | ".join(cell(k) for k in parts)
                + " |"
            )
    return "MiB, rank 0 / rank 1.\n\n" + "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 8], help="fsdp world sizes to tabulate")
    p.add_argument("--measure", action="store_true", help="also run ddp and fsdp on two ranks")
    p.add_argument("--size", default="small", help="the test model measured (rlcore.testing.SIZES)")
    p.add_argument("--rank-child", nargs=3, metavar=("OUT", "STRATEGY", "ALGORITHM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_child:
        out, strategy, algorithm = args.rank_child
        rank_child(Path(out), strategy, algorithm, args.size)
        return 0
    print("Estimated GiB per GPU (full fine-tune; see the formula in benchmarks/memory_table.py):\n")
    print(table(args.ranks))
    if args.measure:
        print("\nMeasured on two ranks:\n")
        print(measure(args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
