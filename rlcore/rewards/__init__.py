"""Rewards: an HTTP endpoint (``rlft.reward.v1`` or OpenRLHF's format) or a Python callable.

``make_reward_scorer`` picks one from the spec; the trainer only sees the ``RewardScorer`` protocol.
"""

from __future__ import annotations

from rlcore.errors import ConfigError
from rlcore.rewards.base import RewardBatchResult, RewardItem, RewardScorer
from rlcore.rewards.callable import CallableReward, RewardFn, load_callable
from rlcore.rewards.http import HTTPRewardClient
from rlcore.rewards.urlpolicy import check_reward_url
from rlcore.spec import RewardSpec

__all__ = [
    "CallableReward",
    "HTTPRewardClient",
    "RewardBatchResult",
    "RewardItem",
    "RewardScorer",
    "check_reward_url",
    "load_callable",
    "make_reward_scorer",
]


def make_reward_scorer(
    spec: RewardSpec,
    reward_fn: RewardFn | None = None,
    job_id: str = "local",
    allow_private: bool = True,
    allowlist: list[str] | None = None,
) -> RewardScorer:
    """``CallableReward`` when ``reward_fn`` is given (it wins over ``spec.url``), else the HTTP client."""
    if reward_fn is not None:
        return CallableReward(reward_fn, on_error=spec.on_error)
    if spec.url:
        return HTTPRewardClient(spec, job_id=job_id, allow_private=allow_private, allowlist=allowlist)
    raise ConfigError("no reward: set reward.url in the spec or pass --reward-fn module:function")
