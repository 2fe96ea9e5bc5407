"""Rewards: HTTP endpoints (``rlft.reward.v1`` or OpenRLHF's format), built-in graders, or a Python callable.

``make_job_scorer`` builds a job's scorer from its spec (one endpoint, or a weighted list of endpoints and
graders); the trainer only sees the ``RewardScorer`` protocol.
"""

from __future__ import annotations

from rlcore.errors import ConfigError
from rlcore.rewards.base import (
    RewardBatchResult,
    RewardItem,
    RewardScorer,
    component_metrics,
    local_run_id,
)
from rlcore.rewards.callable import CallableReward, RewardFn, load_callable
from rlcore.rewards.composite import CompositeScorer
from rlcore.rewards.graders import GraderScorer, TokenCounter
from rlcore.rewards.http import HTTPRewardClient
from rlcore.rewards.urlpolicy import RewardURLPolicy, check_reward_url
from rlcore.spec import HTTPRewardEntry, JobSpec, RewardSpec

__all__ = [
    "CallableReward",
    "CompositeScorer",
    "GraderScorer",
    "HTTPRewardClient",
    "RewardBatchResult",
    "RewardItem",
    "RewardScorer",
    "RewardURLPolicy",
    "check_reward_url",
    "component_metrics",
    "load_callable",
    "local_run_id",
    "make_job_scorer",
    "make_reward_scorer",
]


def make_reward_scorer(
    spec: RewardSpec,
    reward_fn: RewardFn | None = None,
    job_id: str | None = None,
    url_policy: RewardURLPolicy | None = None,
) -> RewardScorer:
    """``CallableReward`` when ``reward_fn`` is given (it wins over ``spec.url``), else the HTTP client
    (``url_policy``, default public hosts only, decides which URLs it may call)."""
    if reward_fn is not None:
        return CallableReward(reward_fn, on_error=spec.on_error)
    if spec.url:
        return HTTPRewardClient(spec, job_id=job_id or local_run_id(), url_policy=url_policy)
    raise ConfigError("no reward: set reward.url in the spec or pass --reward-fn module:function")


def make_job_scorer(
    spec: JobSpec,
    reward_fn: RewardFn | None = None,
    job_id: str | None = None,
    url_policy: RewardURLPolicy | None = None,
    count_tokens: TokenCounter | None = None,
) -> RewardScorer:
    """The scorer of a job: ``reward_fn`` when given, else ``spec.reward``, else the weighted
    ``spec.rewards``.

    ``count_tokens`` is the tokenizer's count for the ``length`` grader (default: an approximation).
    """
    job_id = job_id or local_run_id()
    if spec.rewards is None or reward_fn is not None:
        reward = spec.reward or RewardSpec()
        return make_reward_scorer(reward, reward_fn, job_id, url_policy)
    built: list[tuple[object, RewardScorer]] = []
    try:
        for entry in spec.rewards:
            if isinstance(entry, HTTPRewardEntry):
                scorer: RewardScorer = HTTPRewardClient(
                    entry, job_id=job_id, url_policy=url_policy, name=entry.name
                )
            else:
                scorer = GraderScorer(entry, count_tokens)
            built.append((entry, scorer))
    except BaseException:
        for _, scorer in built:
            scorer.close()
        raise
    return CompositeScorer(built)
