"""One benchmark run of one engine, in its own process: ``python benchmarks/engines.py rlcore|trl ...``.

The parent (``benchmarks/run.py``) starts one process per run so that each engine's peak resident memory is
its own (``ru_maxrss`` of a fresh process) and no state (allocator, thread pools, caches) carries over.
Both engines see the same model directory, the same prompts, the same reward callable and equal
hyperparameters (see ``equal_work()``); each writes one JSON document to ``--out``:
``{"engine", "step_end": [t...], "rewards": [...], "split": {...}, "peak_rss_bytes", ...}``.

Timing is wall clock between successive step ends, measured by a callback in both engines the same way,
so it includes everything an engine does per step (sampling, reward, forward/backward, logging).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

PROMPTS = ["Say something:", "Write a word:", "Go:", "Answer:"]
# 50 copies: TRL re-creates its data loader at each epoch; a long epoch keeps that out of the timings.
ROWS = [{"prompt": p, "label": "a"} for p in PROMPTS] * 50


def letter_reward(prompts, completions, **kwargs):
    """The fraction of the completion's characters that are the letter 'a' (0 for an empty completion)."""
    return [c.count("a") / len(c) if c else 0.0 for c in completions]


def equal_work(args) -> dict:
    """The hyperparameters both engines run with (the issue's list)."""
    return dict(
        prompts_per_step=2,
        group_size=8,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        learning_rate=args.lr,
        kl_coef=0.04,
        clip=0.2,
        seed=args.seed,
    )


class Recorder:
    """Collects the wall-clock end of each step and the mean reward; stops once the target held."""

    def __init__(self, target: float | None, hold: int):
        self.step_end: list[float] = []
        self.rewards: list[float] = []
        self.split: dict[str, list[float]] = {}
        self.target, self.hold = target, hold
        self.start = time.perf_counter()
        self.train_start: float | None = None  # set by the engine's train-start callback

    def mark_train_start(self) -> None:
        self.train_start = time.perf_counter() - self.start

    def record(self, reward: float, split: dict[str, float] | None = None) -> None:
        self.step_end.append(time.perf_counter() - self.start)
        self.rewards.append(float(reward))
        for k, v in (split or {}).items():
            self.split.setdefault(k, []).append(float(v))

    def reached(self) -> bool:
        if self.target is None or len(self.rewards) < self.hold:
            return False
        return min(self.rewards[-self.hold :]) >= self.target


# ---- rlcore ------------------------------------------------------------------------------------------------


def run_rlcore(args, rec: Recorder) -> dict:
    from rlcore.callbacks import Callback
    from rlcore.errors import Interrupted
    from rlcore.rewards.urlpolicy import RewardURLPolicy
    from rlcore.spec import JobSpec
    from rlcore.trainer import train

    w = equal_work(args)
    hp = dict(
        steps=args.steps,
        prompts_per_step=w["prompts_per_step"],
        group_size=w["group_size"],
        max_new_tokens=w["max_new_tokens"],
        temperature=w["temperature"],
        top_p=1.0,
        learning_rate=w["learning_rate"],
        lr_schedule="constant",
        epochs_per_rollout=1,
        kl_coef=w["kl_coef"],
        clip_low=w["clip"],
        clip_high=w["clip"],
        loss_agg="token_mean",
        scale_rewards="group",
        seed=w["seed"],
        checkpoint_every=0,
        samples_per_step=0,
    )
    reward: dict = {}
    if args.algorithm == "ppo":  # equal batch: 16 prompts x 1 sample instead of 2 x 8
        hp.update(prompts_per_step=16, group_size=1, value_model=args.value_model)
    if args.reward_url:
        reward = {
            "url": args.reward_url,
            "batch_size": args.reward_batch_size,
            "max_concurrency": args.reward_concurrency,
        }
    model = {"name_or_path": args.model, "dtype": "bfloat16" if args.gpu else "float32"}
    spec = JobSpec.model_validate(
        {
            "algorithm": args.algorithm,
            "model": model,
            "dataset": {"rows": ROWS},
            "reward": reward,
            "hyperparameters": hp,
        }
    )

    class Rec(Callback):
        def on_train_start(self, step, total_steps):
            rec.mark_train_start()

        def on_step_end(self, step, metrics):
            rec.record(
                metrics["reward/mean"],
                {k: v for k, v in metrics.items() if k.startswith(("time/", "reward_endpoint/"))},
            )

    try:
        train(
            spec,
            args.workdir,
            reward_fn=None if args.reward_url else letter_reward,
            url_policy=RewardURLPolicy.local(),  # the benchmark's reward server runs on this machine
            callbacks=[Rec()],
            resume=False,
            should_stop=rec.reached,
        )
    except Interrupted:
        pass  # stopped once the target held
    return {}


# ---- TRL -------------------------------------------------------------------------------------------------


def run_trl(args, rec: Recorder) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    w = equal_work(args)
    config = GRPOConfig(
        output_dir=args.workdir,
        max_steps=args.steps,
        seed=w["seed"],
        data_seed=w["seed"],
        num_generations=w["group_size"],
        per_device_train_batch_size=w["prompts_per_step"] * w["group_size"],  # 16 completions per update
        gradient_accumulation_steps=1,
        num_iterations=1,  # one update per rollout
        max_completion_length=w["max_new_tokens"],
        temperature=w["temperature"],
        top_k=0,
        top_p=1.0,
        min_p=None,
        repetition_penalty=1.0,
        learning_rate=w["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        beta=w["kl_coef"],
        epsilon=w["clip"],
        loss_type="dapo",
        scale_rewards="group",
        use_vllm=False,
        report_to=[],
        bf16=args.gpu,
        fp16=False,
        use_cpu=not args.gpu,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": "bfloat16" if args.gpu else "float32"},
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"

    generate_s: list[float] = []

    class Rec(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            rec.mark_train_start()

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                rec.record(logs["reward"], {"time/generate_s": sum(generate_s)})
                generate_s.clear()
                if rec.reached():
                    control.should_training_stop = True

    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=letter_reward,
        args=config,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in ROWS]),
        processing_class=tokenizer,
        callbacks=[Rec()],
    )
    trainer._generate_single_turn = _timed(trainer._generate_single_turn, generate_s)
    trainer.train()
    return {"trl_version": trl.__version__}


def _timed(fn, sink: list[float]):
    """``fn`` that appends its wall time to ``sink`` (after the GPU has finished, where there is one)."""
    import torch

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def wrapper(*a, **kw):
        sync()
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        sync()
        sink.append(time.perf_counter() - t0)
        return out

    return wrapper


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine", choices=["rlcore", "trl"])
    p.add_argument("--model", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--algorithm", choices=["grpo", "ppo"], default="grpo")
    p.add_argument("--value-model", choices=["separate", "shared"], default="separate", help="PPO's critic")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--target", type=float, default=None, help="stop once mean reward >= target held")
    p.add_argument("--hold", type=int, default=1, help="steps the target must hold")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--gpu", action="store_true", help="CUDA, bf16 weights (benchmarks/gpu_check.sh)")
    p.add_argument("--reward-url", default=None)
    p.add_argument("--reward-batch-size", type=int, default=2)
    p.add_argument("--reward-concurrency", type=int, default=4)
    args = p.parse_args(argv)
    if args.engine == "trl" and args.algorithm != "grpo":
        p.error("TRL 1.16 has no PPO trainer")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rec = Recorder(args.target, args.hold)
    extra = (run_rlcore if args.engine == "rlcore" else run_trl)(args, rec)
    result = {
        "engine": args.engine,
        "algorithm": args.algorithm,
        "model": args.model,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "train_start": rec.train_start,
        "step_end": rec.step_end,
        "rewards": rec.rewards,
        "split": rec.split,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch": torch.__version__,
        **extra,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
