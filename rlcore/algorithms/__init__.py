"""The math of PPO and GRPO as pure torch functions: advantages, KL estimators, clipped losses, entropy
bonus, reward normalisation, loss aggregation, memory-light log-probs. Imports only torch; every module's
docstring cites its paper and lists where the code departs from it.

Shapes: B sequences (for GRPO B = prompts x G samples per group), T token columns, V vocabulary.
Arguments are named ``logprobs, old_logprobs, ref_logprobs, advantages, returns, response_mask``
(``mask`` for short), all ``(B, T)`` unless a docstring says otherwise.
"""

from rlcore.algorithms.advantages import (
    AdvantageEstimator,
    AdvantageFn,
    RewardScale,
    gae,
    get_advantage_estimator,
    group_advantages,
    group_reward_stats,
    register_adv_est,
)
from rlcore.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    KLEstimator,
    get_kl_estimator,
    kl_estimate,
    make_kl_controller,
)
from rlcore.algorithms.logprobs import entropy_from_logits, logprobs_from_logits
from rlcore.algorithms.losses import (
    entropy_bonus,
    ppo_clip_loss,
    value_loss,
)
from rlcore.algorithms.masking import (
    LossAgg,
    aggregate,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rlcore.algorithms.normalization import (
    RewardNorm,
    empty_moments,
    moments_std,
    normalize_rewards,
    update_moments,
)
from rlcore.algorithms.registry import Registry

__all__ = [
    "AdaptiveKLController",
    "AdvantageEstimator",
    "AdvantageFn",
    "FixedKLController",
    "KLController",
    "KLEstimator",
    "LossAgg",
    "Registry",
    "RewardNorm",
    "RewardScale",
    "aggregate",
    "empty_moments",
    "entropy_bonus",
    "entropy_from_logits",
    "gae",
    "get_advantage_estimator",
    "get_kl_estimator",
    "group_advantages",
    "group_reward_stats",
    "kl_estimate",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "moments_std",
    "normalize_rewards",
    "ppo_clip_loss",
    "register_adv_est",
    "update_moments",
    "value_loss",
]
