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
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlcore import algorithms as alg
from rlcore import checkpoint as ckpt
from rlcore.callbacks import Callback, CallbackList
from rlcore.critic import SHARED, policy_and_values, value_metrics
from rlcore.data import PromptCursor, load_rows, render_prompt
from rlcore.errors import Interrupted, OutOfMemory, RLFTError, TrainingDiverged
from rlcore.models import load_models, load_tokenizer
from rlcore.optim import make_optimizer, make_scheduler
from rlcore.rewards import component_metrics, make_job_scorer
from rlcore.rollout import Rollout, generate
from rlcore.spec import Algorithm, JobSpec
from rlcore.state import RewardLog, TrainerState, capture_rng, restore_rng

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


@dataclass
class Batch:
    """One rollout ready for updates. All tensors are (B, T) unless noted."""

    rollout: Rollout
    scores: torch.Tensor  # (B,) sequence rewards
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None  # None: use the detached current ones (ratio exactly 1)
    ref_logprobs: torch.Tensor | None
    old_values: torch.Tensor | None
    returns: torch.Tensor | None
    mask: torch.Tensor  # response mask with skipped samples zeroed
    kl: torch.Tensor | None = None  # KL to the reference at rollout time, when it penalises the reward


def train(
    spec: JobSpec,
    output_dir: str | Path,
    *,
    reward_fn: Callable | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool | str = True,
    should_stop: Callable[[], bool] | None = None,
    allow_private: bool = True,
    allowlist: list[str] | None = None,
    job_id: str | None = None,
) -> TrainResult:
    """Run a job to the end (or until ``should_stop()``); see docs/contracts.md."""
    trainer = Trainer(
        spec,
        output_dir,
        reward_fn=reward_fn,
        callbacks=callbacks,
        resume=resume,
        allow_private=allow_private,
        allowlist=allowlist,
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
        allow_private=True,
        allowlist=None,
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
        if self.hp.prompts_per_step % self.world:
            raise RLFTError(
                f"hyperparameters.prompts_per_step ({self.hp.prompts_per_step}) must divide by the "
                f"number of processes ({self.world})",
                code="invalid_spec",
            )
        set_seed(self.hp.seed + self.rank)
        self.resume_dir = self._find_resume(resume)
        self._load_models()
        self.rows = load_rows(spec.dataset)
        self.prompts = [render_prompt(r, self.tokenizer) for r in self.rows]
        self.cursor = PromptCursor(len(self.rows), self.hp.seed)
        self.kl_ctl = alg.make_kl_controller(self.hp.kl_coef, self.hp.kl_target, self.hp.kl_horizon)
        self._forward = functools.partial(  # the policy (and critic) on micro-batches of a rollout
            policy_and_values,
            shared=self.hp.value_model == SHARED,
            temperature=self.hp.temperature,
            chunk_size=self.hp.logprob_chunk_size,
        )
        self.scorer = make_job_scorer(
            spec,
            reward_fn=reward_fn,
            job_id=job_id,
            allow_private=allow_private,
            allowlist=allowlist,
            count_tokens=lambda text: len(self.tokenizer.encode(text, add_special_tokens=False)),
        )
        self.reward_log = RewardLog(self.output_dir / "rewards", self.rank)
        self.state = TrainerState(step=0)
        self.reward_moments = alg.empty_moments()  # running reward statistics (reward_norm="running")
        if self.resume_dir is not None:
            self._restore(self.resume_dir)

    # ---- setup -------------------------------------------------------------------------------------------

    def _find_resume(self, resume) -> Path | None:
        found, broken = ckpt.find_resume(self.output_dir, resume)
        for b in broken:
            self._event("warning", f"skipping checkpoint {b.name}: its manifest does not verify")
        return found

    def _load_models(self) -> None:
        spec = self.spec
        self.tokenizer = load_tokenizer(spec.model)
        policy, self.reference, value = load_models(spec, self.acc.device, self.mixed_bf16, self.resume_dir)
        optimizer = make_optimizer(policy, value, self.hp)
        total = self.hp.steps * self.hp.epochs_per_rollout * self.num_minibatches
        scheduler = make_scheduler(optimizer, self.hp, total)
        models = [policy] if value is None else [policy, value]
        *models, self.optimizer, self.scheduler = self.acc.prepare(*models, optimizer, scheduler)
        self.policy, self.value = models[0], (models[1] if value is not None else None)

    @property
    def num_minibatches(self) -> int:
        local = self.spec.rollout_batch_size // self.world
        return max(1, local // self.minibatch_size)

    @property
    def minibatch_size(self) -> int:
        local = self.spec.rollout_batch_size // self.world
        return min(local, (self.hp.minibatch_size or self.spec.rollout_batch_size) // self.world or 1)

    @property
    def micro_batch_size(self) -> int:
        return min(self.minibatch_size, self.hp.micro_batch_size or self.minibatch_size)

    def _restore(self, directory: Path) -> None:
        opt = torch.load(directory / "optimizer.pt", weights_only=True, map_location="cpu")
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        self.state = TrainerState.load(directory)
        self.cursor.load_state_dict(self.state.cursor)
        self.kl_ctl.load_state_dict(self.state.kl)
        self.reward_moments = torch.tensor(self.state.reward_moments or [0.0] * 3, dtype=torch.float64)
        restore_rng(self.state.rng[self.rank] if self.rank < len(self.state.rng) else self.state.rng[0])
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
        if self.acc.is_main_process:
            self.callbacks.on_train_start(self.state.step, hp.steps)
        try:
            while self.state.step < hp.steps:
                if self._stop_requested(should_stop):
                    last_ckpt = self.save_checkpoint()
                    raise Interrupted(f"stopped at step {self.state.step} on request; checkpoint written")
                metrics = self.step()
                self.state.step += 1
                if self.acc.is_main_process:
                    self.callbacks.on_step_end(self.state.step, metrics)
                if (
                    hp.checkpoint_every
                    and self.state.step % hp.checkpoint_every == 0
                    and self.state.step < hp.steps
                ):
                    last_ckpt = self.save_checkpoint()
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
        return TrainResult("succeeded", self.state.step, str(self.output_dir), last_ckpt, metrics)

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
        t0 = time.perf_counter()
        rollout = self._rollout()
        t1 = time.perf_counter()
        scores, keep, samples, reward_metrics = self._score(rollout)
        t2 = time.perf_counter()
        batch = self._prepare(rollout, scores, keep)
        train_metrics = self._update(batch)
        t3 = time.perf_counter()
        metrics = self._step_metrics(batch, train_metrics, reward_metrics)
        if "kl/mean" in metrics:  # the KL averaged over ranks, so every rank's coefficient stays the same
            self.kl_ctl.update(metrics["kl/mean"], self.spec.rollout_batch_size)
        n_tokens = float(self.acc.reduce(batch.rollout.response_mask.sum().float(), reduction="sum").item())
        metrics.update(
            {
                "time/generate_s": t1 - t0,
                "time/reward_s": t2 - t1,
                "time/train_s": t3 - t2,
                "time/step_s": t3 - t0,
                "throughput/tokens_per_s": n_tokens / max(t3 - t0, 1e-9),
                "memory/peak_bytes": float(_peak_memory()),
            }
        )
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

    def _score(self, rollout: Rollout):
        """Sequence rewards (B,), which samples to keep (B,), per-sample records, reward metrics."""
        from rlcore.rewards.base import RewardItem

        G, step = self.hp.group_size, self.state.step + 1
        rows = [r for r in self.local_rows for _ in range(G)]
        items = [
            RewardItem(
                id=f"{step}-{self.rank * len(self.local_rows) + i // G}-{i % G}",
                prompt=p,
                completion=c,
                group=self.rank * len(self.local_rows) + i // G,
                label=row.get("label"),
                metadata=row.get("metadata") or {},
                finish_reason="length" if cut else "stop",
            )
            for i, (p, c, row, cut) in enumerate(
                zip(rollout.prompts, rollout.completions, rows, rollout.truncated.tolist(), strict=True)
            )
        ]
        result = self.reward_log.lookup(step, items)
        replayed = result is not None
        if result is None:
            result = self.scorer.score(step, items)
            self.reward_log.record(step, items, result)
        keep = torch.tensor([r is not None for r in result.rewards], dtype=torch.bool)
        raw = torch.tensor(
            [r if r is not None else float("nan") for r in result.rewards], dtype=torch.float32
        )
        # A skipped sample takes its group's mean so that it moves no advantage; its tokens are masked out.
        groups = raw.view(-1, G)
        fill = torch.nan_to_num(torch.nanmean(groups, dim=1, keepdim=True), nan=0.0).expand_as(groups)
        scores = torch.where(torch.isnan(groups), fill, groups).reshape(-1)
        n = min(self.hp.samples_per_step, len(items))
        samples = [
            {
                "index": i,
                "group": items[i].group,
                "prompt": items[i].prompt,
                "completion": items[i].completion,
                "reward": result.rewards[i],
                "label": items[i].label,
                "error": result.errors[i],
                "components": result.components[i],
            }
            for i in range(n)
        ]
        components = result.components
        if self.world > 1:
            from accelerate.utils import gather_object

            components = gather_object(list(components))
        metrics = {**result.metrics, **component_metrics(components)}
        if replayed:
            metrics["reward_endpoint/replayed"] = 1.0
        return scores.to(self.acc.device), keep.to(self.acc.device), samples, metrics

    # ---- advantages ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _prepare(self, rollout: Rollout, scores: torch.Tensor, keep: torch.Tensor) -> Batch:
        hp = self.hp
        mask = rollout.response_mask * keep[:, None].long()
        need_old = hp.epochs_per_rollout > 1 or self.num_minibatches > 1
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

    def _micro_slices(self, n: int):
        size = self.micro_batch_size
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

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
        for s in self._micro_slices(rollout.input_ids.shape[0]):
            out, v = self._forward(model, critic, rollout, s, logprobs=logprobs)
            outs += [out.logprobs.float()] if out is not None else []
            values += [v] if v is not None else []
        return (torch.cat(outs) if outs else None), (torch.cat(values) if values else None)

    # ---- updates -------------------------------------------------------------------------------------------

    def _update(self, batch: Batch) -> dict[str, float]:
        hp, B = self.hp, batch.mask.shape[0]
        sums: dict[str, float] = {}
        count = 0
        self.policy.train()
        for _ in range(hp.epochs_per_rollout):
            order = torch.randperm(B) if self.num_minibatches > 1 else torch.arange(B)
            for start in range(0, B, self.minibatch_size):
                idx = order[start : start + self.minibatch_size].to(self.acc.device)
                for k, v in self._minibatch_step(batch, idx).items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in sums.items()}

    def _minibatch_step(self, batch: Batch, idx: torch.Tensor) -> dict[str, float]:
        hp = self.hp
        mb_tokens = batch.mask[idx].sum().clamp(min=1)
        slices = self._micro_slices(len(idx))
        metrics: dict[str, float] = {}
        for i, s in enumerate(slices):
            micro = idx[s]
            weight = (
                batch.mask[micro].sum() / mb_tokens
                if hp.loss_agg == "token_mean"
                else torch.tensor(len(micro) / len(idx))
            )
            with contextlib.ExitStack() as no_sync:
                if i < len(slices) - 1 and self.world > 1:  # gradients are all-reduced once, at the last
                    for model in (self.policy, self.value):
                        if model is not None:
                            no_sync.enter_context(self.acc.no_sync(model))
                loss, m = self._micro_loss(batch, micro)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss is {loss.item()} at step {self.state.step + 1}: lower "
                        "hyperparameters.learning_rate or check the rewards"
                    )
                self.acc.backward(loss * weight)
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * float(weight)
        metrics.update(zip(("optim/grad_norm", "optim/value_grad_norm"), self._clip_and_step(), strict=False))
        metrics["optim/lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _micro_loss(self, batch: Batch, micro: torch.Tensor):
        hp = self.hp
        mask = batch.mask[micro]
        warmup = self.state.step < hp.critic_warmup_steps  # value-only updates: the policy does not move
        asked = dict(
            logprobs=not warmup, entropy=True, entropy_grad=hp.entropy_coef > 0, policy_grad=not warmup
        )
        out, values = self._forward(self.policy, self.value, batch.rollout, micro, **asked)
        loss, metrics = torch.zeros((), device=mask.device), {}
        if not warmup:
            loss, metrics = self._policy_loss(batch, micro, out.logprobs.float(), out.entropy)
        if values is not None:
            v_loss, vm = alg.value_loss(
                values, batch.old_values[micro], batch.returns[micro], mask, hp.value_clip, agg=hp.loss_agg
            )
            loss = loss + hp.vf_coef * v_loss
            metrics["loss/value"] = v_loss.detach()
            metrics["value/clipfrac"] = vm["vf_clipfrac"]
        metrics["loss/total"] = loss.detach()
        return loss, metrics

    def _policy_loss(self, batch: Batch, micro: torch.Tensor, logprobs: torch.Tensor, entropy: torch.Tensor):
        hp, mask = self.hp, batch.mask[micro]
        old = batch.old_logprobs[micro] if batch.old_logprobs is not None else logprobs.detach()
        loss, pm = alg.ppo_clip_loss(
            logprobs, old, batch.advantages[micro], mask, hp.clip_low, hp.clip_high, agg=hp.loss_agg
        )
        metrics = {
            "loss/policy": loss.detach(),
            "policy/clipfrac": pm["clipfrac"],
            "policy/approx_kl": pm["approx_kl"],
            "policy/entropy": alg.masked_mean(entropy.detach(), mask),
        }
        if hp.entropy_coef > 0:
            bonus = alg.entropy_bonus(entropy, mask, hp.entropy_coef, agg=hp.loss_agg)
            loss = loss + bonus
            metrics["loss/entropy"] = bonus.detach()
        if batch.ref_logprobs is not None:
            kl = alg.kl_estimate(logprobs, batch.ref_logprobs[micro], hp.kl_estimator)
            metrics["kl/mean"] = alg.masked_mean(kl.detach(), mask)
            if hp.kl_in == "loss":
                kl_loss = alg.aggregate(kl, mask, hp.loss_agg)
                loss = loss + self.kl_ctl.value * kl_loss
                metrics["loss/kl"] = kl_loss.detach()
        return loss, metrics

    def _clip_and_step(self) -> list[float]:
        """Clip each parameter group (the policy; the critic) to ``max_grad_norm`` on its own, so that a
        large value loss cannot use up the policy's step; step. The groups' gradient norms."""
        norms = []
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:  # the policy during critic warm-up
                norms.append(0.0)
            elif self.hp.max_grad_norm is not None:
                norms.append(float(self.acc.clip_grad_norm_(params, self.hp.max_grad_norm)))
            else:
                norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in params]))))
        if not all(math.isfinite(n) for n in norms):
            raise TrainingDiverged(
                f"the gradient norm is {max(norms)} at step {self.state.step + 1}: lower "
                "hyperparameters.learning_rate or check the rewards"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norms

    # ---- metrics -------------------------------------------------------------------------------------------

    def _step_metrics(
        self, batch: Batch, train: dict[str, float], reward: dict[str, float]
    ) -> dict[str, float]:
        G = self.hp.group_size
        scores = self.acc.gather(batch.scores.float())
        lengths = self.acc.gather(batch.rollout.response_mask.sum(dim=1).float())
        truncated = self.acc.gather(batch.rollout.truncated.float())
        m: dict[str, float] = {
            "reward/mean": scores.mean().item(),
            "reward/std": scores.std().item() if len(scores) > 1 else 0.0,
            "reward/min": scores.min().item(),
            "reward/max": scores.max().item(),
            "completion/length_mean": lengths.mean().item(),
            "completion/clipped_ratio": truncated.mean().item(),
            "kl/coef": float(self.kl_ctl.value),
        }
        if not self.is_ppo:
            std = scores.view(-1, G).std(dim=1)
            m["reward/frac_zero_std_groups"] = (std < 1e-6).float().mean().item()
        else:
            m.update(value_metrics(batch.old_values, batch.returns, batch.mask))
        for k, v in train.items():
            m[k] = (
                float(self.acc.reduce(torch.tensor(v, device=self.acc.device), reduction="mean").item())
                if self.world > 1
                else v
            )
        if batch.kl is not None:  # the rollout's KL, not the updates' (they drift over epochs)
            m["kl/mean"] = self.acc.reduce(alg.masked_mean(batch.kl, batch.mask), reduction="mean").item()
        m.update(reward)
        return m

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def save_checkpoint(self, final: bool = False) -> str:
        from accelerate.utils import gather_object

        rng_states = gather_object([capture_rng()])
        self.state.cursor = self.cursor.state_dict()
        self.state.kl = self.kl_ctl.state_dict()
        self.state.reward_moments = self.reward_moments.tolist()
        self.state.rng = rng_states
        path = manifest = None
        merge = final and self.spec.model.lora is not None and self.spec.model.merge_lora_on_save
        if self.acc.is_main_process:
            path, manifest = ckpt.save_checkpoint(
                self.output_dir,
                self.state.step,
                lambda d: self._write_checkpoint(d, merge),
                keep=self.hp.keep_checkpoints,
            )
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            self.callbacks.on_checkpoint(self.state.step, str(path), manifest)
        return str(path) if path else ""

    def _write_checkpoint(self, directory: Path, merge: bool = False) -> None:
        policy = self.acc.unwrap_model(self.policy)
        policy.save_pretrained(directory / "model", safe_serialization=True)
        self.tokenizer.save_pretrained(directory / "model")
        if merge:  # a plain model beside the adapter, for tools that do not read adapters
            import copy

            copy.deepcopy(policy).merge_and_unload().save_pretrained(
                directory / "merged", safe_serialization=True
            )
            self.tokenizer.save_pretrained(directory / "merged")
        if self.value is not None:
            self.acc.unwrap_model(self.value).save(directory / "value_model")
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            directory / "optimizer.pt",
        )
        self.state.save(directory)


def _peak_memory() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
