"""The training loop: rollout → score → advantages → epochs × minibatches → metrics.

GRPO (Shao et al. 2024, arXiv:2402.03300) and PPO (Schulman et al. 2017, arXiv:1707.06347) with GAE
(Schulman et al. 2015, arXiv:1506.02438), as in the seed tutorial. Where this departs from the papers:
1. GRPO's KL to the reference sits in the loss (k3 by default, as DeepSeekMath); PPO's in the per-token
   reward (k1 by default, as Ziegler et al. 2019 and OpenRLHF), each switchable with ``kl_in``.
2. Losses are aggregated over tokens of the whole minibatch (``token_mean``, TRL's "dapo") by default
   rather than per sequence first (the seed's 1/|o|); the per-sequence modes are selectable.
3. With one epoch and one minibatch per rollout (GRPO's default) the old log-probs are the detached current
   ones (no second forward), so the ratio is exactly 1 and PPO-clip reduces to the policy gradient, as in
   TRL. PPO's defaults (several epochs over minibatches) take them in a forward before any update.
4. Under data parallelism each rank aggregates its own tokens and gradients are averaged across ranks.

Where the pieces live: sampling in ``rlcore.rollout``, scoring and the reward log in
``rlcore.rewards.scoring``, the advantage math in ``rlcore.algorithms``, the update loop and loss terms in
``rlcore.update``, step metrics in ``rlcore.step_metrics``, checkpoint files in ``rlcore.checkpoint``,
held-out evaluation in ``rlcore.evaluation``, early stopping in ``rlcore.early_stop``, the models on the
ranks (DDP, or FSDP with ``resources.strategy: fsdp``) and their checkpoints in ``rlcore.distributed``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlcore import algorithms as alg
from rlcore import checkpoint as ckpt
from rlcore import distributed as dist
from rlcore.callbacks import Callback, CallbackList
from rlcore.critic import SHARED, policy_and_values
from rlcore.data import PromptCursor, load_rows, render_prompt
from rlcore.early_stop import EarlyStopper
from rlcore.errors import ErrorCode, Interrupted, OutOfMemory, RLFTError
from rlcore.evaluation import Evaluator, load_eval_rows, overlap_warning
from rlcore.layout import rewards_dir
from rlcore.rewards import RewardURLPolicy, make_job_scorer
from rlcore.rewards.scoring import RewardLog, ScoredRollout, reward_items, score_items
from rlcore.rollout import Rollout, generate
from rlcore.spec import Algorithm, JobSpec
from rlcore.state import TrainerState, capture_rng, restore_rng
from rlcore.step_metrics import step_metrics, timing_metrics
from rlcore.update import Batch, Updater, micro_slices

# The seed's two methods: PPO's advantages come from GAE over a critic, GRPO's from comparing a group.
ADVANTAGE_ESTIMATORS = {
    Algorithm.PPO: alg.AdvantageEstimator.GAE,
    Algorithm.GRPO: alg.AdvantageEstimator.GRPO,
}


@dataclass
class TrainResult:
    status: str
    step: int
    output_dir: str
    last_checkpoint: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False  # early_stop ended the run (status is still "succeeded")


def train(
    spec: JobSpec,
    output_dir: str | Path,
    *,
    reward_fn: Callable | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool | str = True,
    should_stop: Callable[[], bool] | None = None,
    url_policy: RewardURLPolicy | None = None,
    job_id: str | None = None,
) -> TrainResult:
    """Run a job to the end (or until ``should_stop()``); see docs/contracts.md. ``url_policy``: which
    reward URLs it may call (default: public hosts only; ``RewardURLPolicy.local()`` on one's own machine)."""
    trainer = Trainer(
        spec,
        output_dir,
        reward_fn=reward_fn,
        callbacks=callbacks,
        resume=resume,
        url_policy=url_policy,
        job_id=job_id,
    )
    try:
        return trainer.run(should_stop or (lambda: False))
    finally:
        trainer.close()


class Trainer:
    def __init__(
        self,
        spec: JobSpec,
        output_dir,
        *,
        reward_fn=None,
        callbacks=(),
        resume=True,
        url_policy=None,
        job_id=None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.spec, self.hp = spec, spec.hyperparameters
        self.is_ppo = spec.algorithm is Algorithm.PPO
        self.output_dir = Path(output_dir)
        self.callbacks = CallbackList(list(callbacks))
        use_cpu = not torch.cuda.is_available()
        self.mixed_bf16 = not use_cpu and spec.model.dtype == "auto" and torch.cuda.is_bf16_supported()
        self.acc = Accelerator(cpu=use_cpu, mixed_precision="bf16" if self.mixed_bf16 else "no")
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        # FSDP over one process would shard nothing: a local run of an fsdp spec trains unsharded.
        self.fsdp = spec.resources.strategy == dist.FSDP and self.world > 1
        if self.hp.prompts_per_step % self.world:
            raise RLFTError(
                f"hyperparameters.prompts_per_step ({self.hp.prompts_per_step}) must divide by the "
                f"number of processes ({self.world})",
                code=ErrorCode.INVALID_SPEC,
            )
        set_seed(self.hp.seed + self.rank)
        self.resume_dir = self._find_resume(resume)
        self._forward = functools.partial(  # the policy (and critic) on micro-batches of a rollout
            policy_and_values,
            shared=self.hp.value_model == SHARED,
            temperature=self.hp.temperature,
            chunk_size=self.hp.logprob_chunk_size,
        )
        self._load_models()
        self.rows = load_rows(spec.dataset)
        self.prompts = [render_prompt(r, self.tokenizer) for r in self.rows]
        self.cursor = PromptCursor(len(self.rows), self.hp.seed)
        self.kl_ctl = alg.make_kl_controller(self.hp.kl_coef, self.hp.kl_target, self.hp.kl_horizon)
        self.scorer = make_job_scorer(
            spec,
            reward_fn=reward_fn,
            job_id=job_id,
            url_policy=url_policy,
            count_tokens=lambda text: len(self.tokenizer.encode(text, add_special_tokens=False)),
        )
        self.reward_log = RewardLog(rewards_dir(self.output_dir), self.rank)
        self.state = TrainerState(step=0)
        self.reward_moments = alg.empty_moments()  # running reward statistics (reward_norm="running")
        self.evaluator = self._make_evaluator()
        metric = spec.early_stop_metric()
        self.stopper = EarlyStopper.from_spec(spec.early_stop, metric) if metric else None
        if self.resume_dir is not None:
            self._restore(self.resume_dir)

    # ---- setup -------------------------------------------------------------------------------------------

    def _find_resume(self, resume) -> Path | None:
        found, broken = ckpt.find_resume(self.output_dir, resume)
        for b in broken:
            self._event("warning", f"skipping checkpoint {b.name}: its manifest does not verify")
        return found

    def _make_evaluator(self) -> Evaluator | None:
        if self.spec.evaluation is None:
            return None
        rows = load_eval_rows(self.spec.evaluation)
        if warning := overlap_warning(rows, self.rows):
            self._event("warning", *warning)
        return Evaluator(
            self.spec,
            rows,
            self.tokenizer,
            self.scorer,
            rewards_dir(self.output_dir),
            rank=self.rank,
            world=self.world,
            gather=self._gather,
            synced=self.fsdp,  # sharded weights: every rank runs the same generate() calls
        )

    def _load_models(self) -> None:
        m = dist.load_and_place(
            self.acc, self.spec, self.resume_dir, fsdp=self.fsdp, mixed_bf16=self.mixed_bf16
        )
        self.tokenizer, self.policy, self.reference, self.value = m.tokenizer, m.policy, m.reference, m.value
        self.optimizer, self.scheduler, self.sizes = m.optimizer, m.scheduler, m.sizes
        self.updater = Updater(
            self.acc, m.policy, m.value, m.optimizer, m.scheduler, self.hp, m.sizes, self._forward
        )

    def _restore(self, directory: Path) -> None:
        dist.load_optimizer(directory, self.acc, self.optimizer, self.scheduler, fsdp=self.fsdp)
        self.state = TrainerState.load(directory)
        self.cursor.load_state_dict(self.state.cursor)
        self.kl_ctl.load_state_dict(self.state.kl)
        self.reward_moments = torch.tensor(self.state.reward_moments or [0.0] * 3, dtype=torch.float64)
        restore_rng(self.state.rng[self.rank] if self.rank < len(self.state.rng) else self.state.rng[0])
        if self.stopper is not None:
            self.stopper.load_state_dict(self.state.early_stop)
        self._event(
            "info",
            f"resumed from checkpoint {directory.name} at step {self.state.step}",
            {"step": self.state.step, "checkpoint": directory.name},
        )

    def close(self) -> None:
        self.scorer.close()

    # ---- the loop ------------------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool]) -> TrainResult:
        hp = self.hp
        last_ckpt = str(self.resume_dir) if self.resume_dir else None
        metrics: dict[str, float] = {}
        stopped_early = False
        if self.acc.is_main_process:
            self.callbacks.on_train_start(self.state.step, hp.steps)
        try:
            if self.evaluator is not None and self.state.step == 0 and self.state.last_eval_step != 0:
                metrics = self._baseline()
                last_ckpt = self.save_checkpoint()  # the untrained model can be the best one too
            while self.state.step < hp.steps and not stopped_early:
                if self._stop_requested(should_stop):
                    last_ckpt = self.save_checkpoint()
                    raise Interrupted(f"stopped at step {self.state.step} on request; checkpoint written")
                metrics = self.step()
                self.state.step += 1
                stopped_early = self._evaluate_and_observe(metrics)
                s = self.state.step
                if self.acc.is_main_process:
                    self.callbacks.on_step_end(s, metrics)
                periodic = hp.checkpoint_every and s % hp.checkpoint_every == 0
                if (periodic or self.state.last_eval_step == s) and s < hp.steps and not stopped_early:
                    last_ckpt = self.save_checkpoint()
            if stopped_early:
                self._event("info", *self.stopper.event(self.state.step))
            last_ckpt = self.save_checkpoint(final=True)
        except Interrupted as e:
            self._end("interrupted", e)
            raise
        except torch.OutOfMemoryError as e:
            err = OutOfMemory(
                f"out of memory at step {self.state.step}: lower hyperparameters.micro_batch_size "
                f"or max_new_tokens ({e})"
            )
            self._end("failed", err)
            raise err from e
        except RLFTError as e:
            self._end("failed", e)
            raise
        self._end("succeeded", None)
        return TrainResult(
            "succeeded", self.state.step, str(self.output_dir), last_ckpt, metrics, stopped_early
        )

    # ---- evaluation and early stopping --------------------------------------------------------------------

    def _baseline(self) -> dict[str, float]:
        """Step 0: the model before any update, evaluated and reported as step 0's metrics."""
        metrics = self._evaluate()
        if self.stopper is not None and self.stopper.watches_eval:
            self.stopper.observe(0, metrics)
        if self.acc.is_main_process:
            self.callbacks.on_step_end(0, metrics)
        return metrics

    def _evaluate_and_observe(self, metrics: dict[str, float]) -> bool:
        """After a step: evaluate when due (every N, the last step, a step that stops the run), merging the
        eval metrics into the step's; feed early stopping. True: stop now."""
        s, stopper = self.state.step, self.stopper
        stop = stopper is not None and not stopper.watches_eval and stopper.observe(s, metrics)
        if self.evaluator is not None and (self.evaluator.due(s) or s == self.hp.steps or stop):
            evaluated = self._evaluate()
            metrics.update(evaluated)
            if stopper is not None and stopper.watches_eval:
                stop = stopper.observe(s, evaluated)
        return stop

    def _evaluate(self) -> dict[str, float]:
        result = self.evaluator.evaluate(self.acc.unwrap_model(self.policy), self.state.step)
        self.state.last_eval_step = self.state.step
        if self.acc.is_main_process and result.samples:
            self.callbacks.on_samples(self.state.step, result.samples)
        return result.metrics

    def _stop_requested(self, should_stop: Callable[[], bool]) -> bool:
        flag = bool(should_stop())
        if self.world > 1:  # every rank must stop at the same step
            t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
            flag = bool(self.acc.reduce(t, reduction="sum").item() > 0)
        return flag

    def _end(self, status: str, error: RLFTError | None) -> None:
        if self.acc.is_main_process:
            self.callbacks.on_train_end(status, error.to_dict() if error else None)

    def _event(self, level: str, message: str, data: dict | None = None) -> None:
        if self.acc.is_main_process:
            self.callbacks.on_event(level, message, data)

    def step(self) -> dict[str, float]:
        """One step: rollout → score → advantages → updates; its metrics."""
        t0 = time.perf_counter()
        rollout = self._rollout()
        t1 = time.perf_counter()
        scored = self._score(rollout)
        t2 = time.perf_counter()
        batch = self._prepare(rollout, scored.scores, scored.keep)
        train_metrics = self.updater.update(batch, self.state.step, self.kl_ctl.value)
        t3 = time.perf_counter()
        metrics = step_metrics(
            self.acc,
            batch,
            train_metrics,
            scored.metrics,
            group_size=self.hp.group_size,
            is_ppo=self.is_ppo,
            kl_coef=self.kl_ctl.value,
        )
        if "kl/mean" in metrics:  # the KL averaged over ranks, so every rank's coefficient stays the same
            self.kl_ctl.update(metrics["kl/mean"], self.spec.rollout_batch_size)
        metrics.update(timing_metrics(self.acc, batch, t1 - t0, t2 - t1, t3 - t2))
        samples = scored.samples(self.hp.samples_per_step)
        if self.acc.is_main_process and samples:
            self.callbacks.on_samples(self.state.step + 1, samples)
        return metrics

    # ---- rollout and rewards -------------------------------------------------------------------------------

    def _rollout(self) -> Rollout:
        hp = self.hp
        global_idx = self.cursor.next_indices(hp.prompts_per_step)
        per_rank = hp.prompts_per_step // self.world
        self.local_rows = [
            self.rows[i] for i in global_idx[self.rank * per_rank : (self.rank + 1) * per_rank]
        ]
        local_prompts = [
            self.prompts[i] for i in global_idx[self.rank * per_rank : (self.rank + 1) * per_rank]
        ]
        prompts = [p for p in local_prompts for _ in range(hp.group_size)]
        return generate(
            self.acc.unwrap_model(self.policy),
            self.tokenizer,
            prompts,
            max_new_tokens=hp.max_new_tokens,
            max_prompt_tokens=hp.max_prompt_tokens,
            temperature=hp.temperature,
            top_p=hp.top_p,
        )

    def _score(self, rollout: Rollout) -> ScoredRollout:
        """The rollout's rewards (through the reward log, so a replayed step asks no endpoint twice)."""
        step = self.state.step + 1
        first = self.rank * len(self.local_rows)
        groups = range(first, first + len(self.local_rows))
        items = reward_items(
            str(step),
            rollout.prompts,
            rollout.completions,
            self.local_rows,
            groups,
            rollout.truncated.tolist(),
        )
        scored = score_items(self.scorer, self.reward_log, step, items, self.hp.group_size, self._gather)
        scored.scores, scored.keep = scored.scores.to(self.acc.device), scored.keep.to(self.acc.device)
        return scored

    def _gather(self, objects: list) -> list:
        """Every rank's ``objects``, concatenated in rank order (the list itself with one process)."""
        if self.world == 1:
            return objects
        from accelerate.utils import gather_object

        return gather_object(objects)

    # ---- advantages ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _prepare(self, rollout: Rollout, scores: torch.Tensor, keep: torch.Tensor) -> Batch:
        hp = self.hp
        mask = rollout.response_mask * keep[:, None].long()
        need_old = hp.epochs_per_rollout > 1 or self.sizes.num_minibatches > 1
        kl_in_reward = self.reference is not None and hp.kl_in == "reward"
        logp, old_values = self._forward_all(self.policy, rollout, need_old or kl_in_reward, self.value)
        ref_logprobs = None
        if self.reference is not None:
            with self.reference.active() as ref_model:
                ref_logprobs, _ = self._forward_all(ref_model, rollout)
        # Token rewards (B, T): the (normalised) sequence reward on the last completion token, minus the KL
        # penalty on every token when KL acts in the reward. Skipped samples keep their group-mean fill
        # here, so they move no other sample's advantage, and are masked out afterwards.
        resp = rollout.response_mask
        token_rewards = torch.zeros(resp.shape, dtype=torch.float32, device=resp.device)
        last = (resp.sum(dim=1) - 1).clamp(min=0)
        token_rewards[torch.arange(len(last)), last] = self._normalize_rewards(scores, keep)
        kl = None
        if kl_in_reward:
            kl = alg.kl_estimate(logp, ref_logprobs, hp.kl_estimator)
            token_rewards -= self.kl_ctl.value * kl * resp
        old_logprobs = logp if need_old else None
        old_values = old_values * resp if old_values is not None else None
        estimator = alg.get_advantage_estimator(ADVANTAGE_ESTIMATORS[self.spec.algorithm])
        advantages, returns = estimator(
            token_rewards,
            resp,
            values=old_values,
            gamma=hp.gamma,
            lam=hp.lam,
            group_size=hp.group_size,
            scale=hp.scale_rewards,
        )
        if self.is_ppo and hp.whiten_advantages:
            advantages = alg.masked_whiten(advantages, mask)
        advantages = advantages * mask
        return Batch(rollout, scores, advantages, old_logprobs, ref_logprobs, old_values, returns, mask, kl)

    def _normalize_rewards(self, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Sequence rewards (B,) under ``reward_norm``, with statistics over every rank's kept samples."""
        if self.hp.reward_norm == "none":
            return scores
        everyone, kept = self.acc.gather(scores), self.acc.gather(keep)
        normed, self.reward_moments = alg.normalize_rewards(
            everyone, self.reward_moments, self.hp.reward_norm, observed=kept
        )
        return normed[self.rank * len(scores) : (self.rank + 1) * len(scores)]

    def _forward_all(self, model, rollout: Rollout, logprobs: bool = True, critic=None):
        """No-grad log-probs (B, T) of ``model`` (None unless ``logprobs``), values (B, T) of ``critic``."""
        outs, values = [], []
        for s in micro_slices(rollout.input_ids.shape[0], self.sizes.micro_batch_size):
            out, v = self._forward(model, critic, rollout, s, logprobs=logprobs)
            outs += [out.logprobs.float()] if out is not None else []
            values += [v] if v is not None else []
        return (torch.cat(outs) if outs else None), (torch.cat(values) if values else None)

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def save_checkpoint(self, final: bool = False) -> str:
        rng_states = self._gather([capture_rng()])
        self.state.cursor = self.cursor.state_dict()
        self.state.kl = self.kl_ctl.state_dict()
        self.state.reward_moments = self.reward_moments.tolist()
        self.state.rng = rng_states
        self.state.early_stop = self.stopper.state_dict() if self.stopper is not None else {}
        merge = final and self.spec.model.lora is not None and self.spec.model.merge_lora_on_save
        parts = dict(policy=self.policy, value=self.value, optimizer=self.optimizer, scheduler=self.scheduler)
        parts.update(tokenizer=self.tokenizer, state=self.state, merge_lora=merge)
        keep = self.hp.keep_checkpoints
        path, manifest = dist.save_checkpoint(
            self.acc, self.output_dir, self.state.step, self.fsdp, keep, **parts
        )
        if self.acc.is_main_process:
            self.callbacks.on_checkpoint(self.state.step, str(path), manifest)
        return str(path) if path else ""
