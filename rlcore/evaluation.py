"""Held-out evaluation: the policy completes prompts it never trains on, the job's own reward scores them.

At step 0 (before the first update: the baseline), every ``evaluation.every_steps`` steps and at the last
step the trainer calls ``Evaluator.evaluate``. It generates ``samples_per_prompt`` (k) completions per prompt
(greedy at temperature 0), scores them through the same path as training (``rlcore.rewards.scoring``: the
same endpoint or graders, protocol, retries and reward log), and returns the ``eval/...`` metrics
(``rlcore.metrics``) and per-sample records marked ``"split": "eval"``.

An evaluation leaves training exactly where it was: it reads no row of the training cursor, and it samples
inside a forked RNG seeded from ``(seed, step)``, so the training stream (torch, and CUDA on a GPU) is the
same after it as before, and a run with evaluation ends with the same weights as one without.

Under data parallelism the ranks split the prompts (rank r takes every world-th prompt from r on) and the
per-prompt results are gathered, so every rank returns the same metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlcore import metrics as names
from rlcore.data import load_rows, render_prompt
from rlcore.errors import DatasetError
from rlcore.rewards.base import RewardScorer
from rlcore.rewards.scoring import RewardLog, reward_items, score_items
from rlcore.rollout import generate
from rlcore.spec import EvaluationSpec, JobSpec

SPLIT = "eval"
MAX_SAMPLES = 4096  # sample records delivered per evaluation (the first ones, in prompt order)
_SEED_STRIDE = 1_000_003  # keeps the (seed, step) streams of neighbouring runs apart


@dataclass
class EvalResult:
    step: int
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)  # every rank's, in prompt order


def load_eval_rows(evaluation: EvaluationSpec) -> list[dict[str, Any]]:
    """The evaluation rows, read like the training rows, cut to ``max_prompts``."""
    try:
        rows = load_rows(evaluation.dataset)
    except DatasetError as e:  # its messages name dataset.*: say which dataset
        where = f"evaluation.{e.message}" if e.message.startswith("dataset.") else f"evaluation: {e.message}"
        raise DatasetError(where) from None
    return rows[: evaluation.max_prompts] if evaluation.max_prompts else rows


def overlap_warning(
    eval_rows: list[dict[str, Any]], train_rows: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """The warning event (message, data) when evaluation rows have the prompt (or messages) of a training
    row: such an evaluation is not held out. None when the two are disjoint."""

    def key(row: dict[str, Any]) -> str:
        return repr(row.get("prompt", row.get("messages")))

    seen = {key(r) for r in train_rows}
    overlap = sum(key(r) in seen for r in eval_rows)
    if not overlap:
        return None
    message = (
        f"{overlap} of the {len(eval_rows)} evaluation prompts are also training prompts: the evaluation "
        "is not held out"
    )
    return message, {"reason": "eval_overlaps_train", "overlap": overlap, "eval_rows": len(eval_rows)}


class Evaluator:
    """Evaluates one job's policy on its held-out prompts; one per trainer (and per rank)."""

    def __init__(
        self,
        spec: JobSpec,
        rows: list[dict[str, Any]],
        tokenizer,
        scorer: RewardScorer,
        reward_dir: Path,
        *,
        rank: int = 0,
        world: int = 1,
        gather: Callable[[list], list] | None = None,
        batch_size: int | None = None,
        synced: bool = False,
    ):
        if spec.evaluation is None:
            raise ValueError("the job has no evaluation section")
        self.ev, self.hp = spec.evaluation, spec.hyperparameters
        self.rows = rows
        self.prompts = [render_prompt(r, tokenizer) for r in rows]
        self.tokenizer, self.scorer = tokenizer, scorer
        self.rank, self.world = rank, world
        # Sharded weights (FSDP): every rank runs the same generate() calls, padded with a repeated prompt.
        self.synced = synced
        self.gather = gather or (lambda objects: objects)
        self.reward_log = RewardLog(reward_dir, rank, kind=SPLIT)
        self.k = self.ev.samples_per_prompt
        # Sequences per generate() call: the training rollout's share of a rank (it fits in memory).
        self.batch_size = max(self.k, batch_size or spec.rollout_batch_size // world)

    def due(self, step: int) -> bool:
        """Whether ``step`` is one of the every-N steps (the baseline and the last step are the trainer's)."""
        return step % self.ev.every_steps == 0

    def evaluate(self, model, step: int) -> EvalResult:
        """Metrics and samples of the policy ``model`` (unwrapped) after ``step`` updates."""
        t0 = time.perf_counter()
        mine = list(range(self.rank, len(self.rows), self.world))
        completed = self._complete(model, step, mine) if mine or self.synced else None
        per_prompt = self._score(completed, step, mine) if mine else []
        everyone = sorted(self.gather(per_prompt), key=lambda p: p["group"])
        metrics = self._metrics(everyone)
        metrics[names.EVAL_TIME_S] = time.perf_counter() - t0
        records = [r for p in everyone for r in p["records"]][:MAX_SAMPLES]
        samples = [{**record, "index": i} for i, record in enumerate(records)]
        return EvalResult(step, metrics, samples)

    # ---- generate, score -----------------------------------------------------------------------------------

    def _complete(self, model, step: int, indices: list[int]):
        """Prompts, completions, completion lengths (tokens) and whether each was cut at max_new_tokens, k
        consecutive ones per prompt."""
        prompts = [self.prompts[i] for i in indices for _ in range(self.k)]
        real = len(prompts)
        if self.synced:
            prompts += [self.prompts[0]] * (-(-len(self.rows) // self.world) * self.k - real)
        completions: list[str] = []
        lengths: list[int] = []
        truncated: list[bool] = []
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the training stream is untouched afterwards
            torch.manual_seed(self.hp.seed * _SEED_STRIDE + step * 64 + self.rank)
            chunk = self.batch_size - self.batch_size % self.k
            for start in range(0, len(prompts), chunk):
                rollout = generate(
                    model,
                    self.tokenizer,
                    prompts[start : start + chunk],
                    max_new_tokens=self.ev.max_new_tokens or self.hp.max_new_tokens,
                    max_prompt_tokens=self.hp.max_prompt_tokens,
                    temperature=self.ev.temperature,
                    top_p=1.0,
                )
                completions += rollout.completions
                lengths += rollout.response_mask.sum(dim=1).tolist()
                truncated += rollout.truncated.tolist()
        return prompts[:real], completions[:real], lengths[:real], truncated[:real]

    def _score(self, completed, step: int, indices: list[int]) -> list[dict[str, Any]]:
        """Per prompt: its global index (``group``), the k rewards, lengths, components and sample records."""
        prompts, completions, lengths, truncated = completed
        rows = [self.rows[i] for i in indices]
        items = reward_items(f"{SPLIT}-{step}", prompts, completions, rows, indices, truncated)
        scored = score_items(self.scorer, self.reward_log, step, items, self.k)
        records = scored.samples(len(items), split=SPLIT)
        k, result = self.k, scored.result
        return [
            {
                "group": indices[j],
                "rewards": result.rewards[j * k : (j + 1) * k],
                "lengths": lengths[j * k : (j + 1) * k],
                "components": result.components[j * k : (j + 1) * k],
                "records": records[j * k : (j + 1) * k],
            }
            for j in range(len(indices))
        ]

    # ---- metrics -------------------------------------------------------------------------------------------

    def _metrics(self, per_prompt: list[dict[str, Any]]) -> dict[str, float]:
        """eval/reward/{mean,std} over scored samples (a skipped one has no reward), eval/length_mean, with
        k > 1 eval/pass@k and eval/mean@k (a skipped sample does not pass), eval/reward/<component>/mean."""
        rewards = [r for p in per_prompt for r in p["rewards"] if r is not None]
        lengths = [n for p in per_prompt for n in p["lengths"]]
        out = {
            names.EVAL_REWARD_MEAN: _mean(rewards),
            names.EVAL_REWARD_STD: _std(rewards),
            names.EVAL_LENGTH_MEAN: _mean(lengths),
        }
        if self.k > 1:
            passed = [
                [r is not None and r >= self.ev.pass_threshold for r in p["rewards"]] for p in per_prompt
            ]
            out[names.EVAL_PASS_AT_K] = _mean([float(any(p)) for p in passed])
            out[names.EVAL_MEAN_AT_K] = _mean([sum(p) / len(p) for p in passed])
        parts: dict[str, list[float]] = {}
        for p in per_prompt:
            for comp in p["components"]:
                for name, value in (comp or {}).items():
                    parts.setdefault(name, []).append(value)
        for name, values in sorted(parts.items()):
            out[f"{names.EVAL_PREFIX}reward/{name}/mean"] = _mean(values)
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _std(xs: list[float]) -> float:
    """Unbiased, as ``torch.std`` (the training metric reward/std); 0 for fewer than two values."""
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
