"""rlcore.algorithms on CPU, three ways: hand-computed tiny tensors (the arithmetic in a comment), a plain
Python-loop reference against each vectorized function, and invariances (values under the mask change
nothing; the token-mean loss does not depend on the micro-batch split)."""

from __future__ import annotations

import math

import pytest
import torch

from rlcore import algorithms as alg

SEEDS = [0, 1, 2, 3]


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-5)


def random_mask(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """One contiguous completion span per row, anywhere in the row (prompt/pad before, pad after)."""
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        start = int(torch.randint(0, T, (1,), generator=gen))
        length = int(torch.randint(1, T - start + 1, (1,), generator=gen))
        mask[b, start : start + length] = True
    return mask


def perturb_masked(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(mask, x, torch.full_like(x, value))


# ---- GAE ------------------------------------------------------------------------------------------------


def test_gae_hand_computed():
    # gamma = lam = 0.5, V = [1, 2, 4], r = [0, 0, 8], value after the last token = 0:
    # t=2: delta = 8 + 0.5*0 - 4 = 4;  A = 4
    # t=1: delta = 0 + 0.5*4 - 2 = 0;  A = 0 + 0.25*4 = 1
    # t=0: delta = 0 + 0.5*2 - 1 = 0;  A = 0 + 0.25*1 = 0.25
    # returns = A + V = [1.25, 3, 8]
    adv, ret = alg.gae(torch.tensor([[0.0, 0, 8]]), torch.tensor([[1.0, 2, 4]]), torch.ones(1, 3), 0.5, 0.5)
    close(adv, [[0.25, 1.0, 4.0]])
    close(ret, [[1.25, 3.0, 8.0]])


def test_gae_same_example_between_prompt_and_padding():
    # Two prompt columns before and one pad column after the three completion tokens above; junk under the
    # mask (values 99, rewards 7) must not reach the completion, whose numbers stay as above.
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]])
    rewards = torch.tensor([[7.0, 7, 0, 0, 8, 7]])
    values = torch.tensor([[99.0, 99, 1, 2, 4, 99]])
    adv, ret = alg.gae(rewards, values, mask, 0.5, 0.5)
    close(adv, [[0, 0, 0.25, 1.0, 4.0, 0]])
    close(ret, [[0, 0, 1.25, 3.0, 8.0, 0]])


def gae_loop(rewards, values, mask, gamma, lam):
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        positions = [t for t in range(T) if mask[b][t]]
        next_value, next_adv = 0.0, 0.0
        for t in reversed(positions):
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b][t]
            adv[b][t], ret[b][t] = next_adv, next_adv + values[b][t]
    return adv, ret


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    B, T = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen))
    rewards, values = torch.randn(B, T, generator=gen), torch.randn(B, T, generator=gen)
    mask = random_mask(gen, B, T)
    gamma, lam = [float(x) for x in torch.rand(2, generator=gen)]
    adv, ret = alg.gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    close(adv, ref_adv)
    close(ret, ref_ret)


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_skips_holes_in_the_mask(seed):
    # Tool output inside a completion: V_{t+1} is the value at the next *completion* position.
    gen = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(4, 10, generator=gen), torch.randn(4, 10, generator=gen)
    mask = torch.rand(4, 10, generator=gen) < 0.6
    adv, ret = alg.gae(rewards, values, mask, 0.9, 0.7)
    ref_adv, ref_ret = gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), 0.9, 0.7)
    close(adv, ref_adv)
    close(ret, ref_ret)


def test_gae_ignores_values_under_the_mask():
    gen = torch.Generator().manual_seed(5)
    rewards, values, mask = torch.randn(4, 9, generator=gen), torch.randn(4, 9, generator=gen), None
    mask = random_mask(gen, 4, 9)
    expected = alg.gae(rewards, values, mask, 0.9, 0.95)
    for junk in (1e6, float("nan"), float("inf")):
        got = alg.gae(
            perturb_masked(rewards, mask, junk), perturb_masked(values, mask, junk), mask, 0.9, 0.95
        )
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


# ---- group advantages ------------------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 2, 3, 5, 5, 5])  # 2 groups of 3
    # group 1: mean 2, unbiased std sqrt((1+0+1)/2) = 1 -> [-1, 0, 1] / (1 + 1e-4); group 2: all equal -> 0
    close(alg.group_advantages(rewards, 3), [-1 / 1.0001, 0, 1 / 1.0001, 0, 0, 0])
    # batch: mean 3.5, squared deviations 6.25+2.25+0.25+3*2.25 = 15.5, unbiased var 15.5/5 = 3.1
    s = math.sqrt(3.1) + 1e-4
    close(alg.group_advantages(rewards, 3, scale="batch"), [-1 / s, 0, 1 / s, 0, 0, 0])
    close(alg.group_advantages(rewards, 3, scale="none"), [-1.0, 0, 1, 0, 0, 0])  # Dr. GRPO: centre only


def group_advantages_loop(rewards, G, scale):
    def mean(xs):
        return sum(xs) / len(xs)

    def std(xs):
        m = mean(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    out = []
    for g in range(0, len(rewards), G):
        group = rewards[g : g + G]
        div = {"group": std(group) + 1e-4, "batch": std(rewards) + 1e-4, "none": 1.0}[scale]
        out += [(r - mean(group)) / div for r in group]
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_loop_reference(seed, scale):
    gen = torch.Generator().manual_seed(seed)
    G, n = int(torch.randint(2, 6, (1,), generator=gen)), int(torch.randint(1, 5, (1,), generator=gen))
    rewards = torch.randint(0, 3, (n * G,), generator=gen).float()  # ties, so zero-std groups happen
    close(alg.group_advantages(rewards, G, scale), group_advantages_loop(rewards.tolist(), G, scale))


def test_group_advantages_reject_bad_layouts():
    with pytest.raises(ValueError, match="groups of 4"):
        alg.group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="at least 2"):
        alg.group_advantages(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        alg.group_advantages(torch.zeros(6), 3, scale="std")


def test_group_reward_stats_counts_groups_without_signal():
    stats = alg.group_reward_stats(torch.tensor([1.0, 1, 0, 1, 2, 2]), 2)  # groups [1,1] [0,1] [2,2]
    close(stats["frac_zero_std_groups"], 2 / 3)


def test_outcome_estimators_broadcast_over_completion_tokens():
    mask = torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 1]])
    token_rewards = torch.zeros(4, 3)
    token_rewards[0, 2], token_rewards[1, 1], token_rewards[2, 0], token_rewards[3, 2] = 1.0, 0.0, 3.0, 5.0
    token_rewards[1, 2] = 100.0  # under the mask: ignored
    grpo = alg.get_advantage_estimator("grpo")
    adv, ret = grpo(token_rewards, mask, group_size=2, scale="none")
    # scores [1, 0 | 3, 5] -> centred [0.5, -0.5 | -1, 1], repeated over each completion's tokens
    close(adv, [[0, 0.5, 0.5], [-0.5, -0.5, 0], [-1, 0, 0], [0, 0, 1]])
    close(ret, adv)


def test_gae_estimator_needs_values():
    gae = alg.get_advantage_estimator("gae")
    with pytest.raises(ValueError, match="needs values"):
        gae(torch.zeros(1, 3), torch.ones(1, 3))
    adv, _ = gae(
        torch.tensor([[0.0, 0, 8]]), torch.ones(1, 3), values=torch.tensor([[1.0, 2, 4]]), gamma=0.5, lam=0.5
    )
    close(adv, [[0.25, 1.0, 4.0]])


# ---- KL --------------------------------------------------------------------------------------------------


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    ln2 = math.log(2)  # logp - ref = ln 2; log_r = ref - logp = -ln 2
    close(alg.kl_estimate(logp, ref, "k1"), [[ln2]])
    close(alg.kl_estimate(logp, ref, "k2"), [[0.5 * ln2**2]])  # 0.2402
    close(alg.kl_estimate(logp, ref, alg.KLEstimator.K3), [[0.5 + ln2 - 1]])  # e^-ln2 - (-ln2) - 1 = 0.1931


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_estimators_match_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    logp, ref = -torch.rand(3, 5, generator=gen) * 4, -torch.rand(3, 5, generator=gen) * 4
    refs = {
        "k1": lambda a, b: a - b,
        "k2": lambda a, b: 0.5 * (a - b) ** 2,
        "k3": lambda a, b: math.exp(b - a) - (b - a) - 1,
    }
    for kind, f in refs.items():
        expected = [
            [f(a, b) for a, b in zip(ra, rb, strict=True)]
            for ra, rb in zip(logp.tolist(), ref.tolist(), strict=True)
        ]
        close(alg.kl_estimate(logp, ref, kind), expected)


def test_k3_stays_finite_for_extreme_ratios():
    k3 = alg.kl_estimate(torch.tensor([[-200.0, 0.0]]), torch.tensor([[0.0, -200.0]]), "k3")
    assert torch.isfinite(k3).all() and (k3 >= 0).all()


# ---- PPO clipped loss --------------------------------------------------------------------------------------


def test_ppo_clip_loss_hand_computed_both_signs_both_sides():
    # clip 0.2: ratio range [0.8, 1.2]. Tokens (A, ratio) -> per-token loss -min(r A, clip(r) A):
    #   (+1, 1.5): -min(1.5, 1.2) = -1.2   clipped (high), no gradient
    #   (+1, 0.5): -min(0.5, 0.8) = -0.5   unclipped, d/dlogp = -A r = -0.5
    #   (-1, 0.5): -min(-0.5, -0.8) = 0.8  clipped (low), no gradient
    #   (-1, 1.5): -min(-1.5, -1.2) = 1.5  unclipped, d/dlogp = -A r = 1.5
    # token mean: (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15; clipfrac 2/4; gradients / 4 tokens.
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
    logp = ratio.log().requires_grad_()
    loss, m = alg.ppo_clip_loss(
        logp, torch.zeros(1, 4), torch.tensor([[1.0, 1, -1, -1]]), torch.ones(1, 4), 0.2, 0.2
    )
    loss.backward()
    close(loss, 0.15)
    close(logp.grad, [[0.0, -0.5 / 4, 0.0, 1.5 / 4]])
    close(m["clipfrac"], 0.5)
    close(m["clipfrac_high"], 0.25)
    close(m["clipfrac_low"], 0.25)
    close(m["ratio_mean"], 1.0)
    close(m["ratio_max"], 1.5)
    # approx_kl = mean((r - 1) - log r) = 2 * (0.5 - ln 1.5) + 2 * (-0.5 - ln 0.5), / 4
    close(m["approx_kl"], (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5))) / 4)


def test_ppo_clip_loss_asymmetric_clip_higher():
    # clip_low 0.2, clip_high 0.28: A=+1 at r=1.25 is inside [0.8, 1.28] -> loss -1.25, not clipped
    loss, m = alg.ppo_clip_loss(
        torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), 0.2, 0.28
    )
    close(loss, -1.25)
    close(m["clipfrac"], 0.0)


def test_ratio_one_gives_no_clipping_and_minus_mean_advantage():
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 6, generator=gen)
    adv, mask = torch.randn(4, 6, generator=gen), random_mask(gen, 4, 6)
    logp_new = logp.clone().requires_grad_()
    loss, m = alg.ppo_clip_loss(logp_new, logp, adv, mask, 0.2, 0.2)
    close(loss, -adv[mask].mean())
    for name, value in [("clipfrac", 0.0), ("approx_kl", 0.0), ("ratio_mean", 1.0), ("ratio_max", 1.0)]:
        close(m[name], value)
    loss.backward()  # at r = 1 the gradient is the policy gradient -A / n_tokens
    close(logp_new.grad, torch.where(mask, -adv / mask.sum(), 0.0))


def test_sequence_advantages_broadcast_like_token_advantages():
    gen = torch.Generator().manual_seed(1)
    logp, old, mask = (
        -torch.rand(3, 4, generator=gen),
        -torch.rand(3, 4, generator=gen),
        random_mask(gen, 3, 4),
    )
    seq_adv = torch.randn(3, generator=gen)
    a = alg.ppo_clip_loss(logp, old, seq_adv, mask, 0.2, 0.2)[0]
    b = alg.ppo_clip_loss(logp, old, seq_adv[:, None].expand(3, 4), mask, 0.2, 0.2)[0]
    close(a, b)
    with pytest.raises(ValueError, match="advantages must be"):
        alg.ppo_clip_loss(logp, old, torch.zeros(4), mask, 0.2, 0.2)


def aggregate_loop(loss, mask, mode, norm=None):
    rows = [[x for x, m in zip(lr, mr, strict=True) if m] for lr, mr in zip(loss, mask, strict=True)]
    if mode == "token_mean":
        return sum(sum(r) for r in rows) / max(1, sum(len(r) for r in rows))
    if mode == "seq_mean_token_mean":
        return sum(sum(r) / max(1, len(r)) for r in rows) / len(rows)
    return sum(sum(r) / (norm or len(loss[0])) for r in rows) / len(rows)


def ppo_loop(logp, old, adv, mask, lo, hi, mode):
    per_token = [
        [
            -min(math.exp(a - b) * A, min(max(math.exp(a - b), 1 - lo), 1 + hi) * A)
            for a, b, A in zip(ra, rb, rA, strict=True)
        ]
        for ra, rb, rA in zip(logp, old, adv, strict=True)
    ]
    return aggregate_loop(per_token, mask, mode)


MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", MODES)
def test_ppo_clip_loss_matches_loop_reference(seed, mode):
    gen = torch.Generator().manual_seed(seed)
    B, T = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 10, (1,), generator=gen))
    logp, old = -torch.rand(B, T, generator=gen) * 2, -torch.rand(B, T, generator=gen) * 2
    adv, mask = torch.randn(B, T, generator=gen), random_mask(gen, B, T)
    loss, _ = alg.ppo_clip_loss(logp, old, adv, mask, 0.2, 0.28, agg=mode)
    close(loss, ppo_loop(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, mode))


def test_aggregate_hand_computed():
    loss = torch.tensor([[1.0, 2, 3], [4, 9, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(alg.aggregate(loss, mask, "token_mean"), 10 / 4)  # (1+2+3+4) / 4 tokens
    close(alg.aggregate(loss, mask, "seq_mean_token_mean"), (2 + 4) / 2)  # row means 6/3 and 4/1
    close(alg.aggregate(loss, mask, "seq_mean_token_sum_norm"), (6 / 3 + 4 / 3) / 2)  # norm = T = 3
    close(alg.aggregate(loss, mask, alg.LossAgg.SEQ_MEAN_TOKEN_SUM_NORM, norm=5), (6 / 5 + 4 / 5) / 2)
    close(alg.aggregate(loss, torch.zeros(2, 3), "token_mean"), 0.0)  # empty: 0, not nan


# ---- invariance -------------------------------------------------------------------------------------------


def _ppo_inputs(seed: int, B: int = 5, T: int = 7):
    gen = torch.Generator().manual_seed(seed)
    logp, old = -torch.rand(B, T, generator=gen) * 2, -torch.rand(B, T, generator=gen) * 2
    values, old_values, returns = (torch.randn(B, T, generator=gen) for _ in range(3))
    return logp, old, torch.randn(B, T, generator=gen), values, old_values, returns, random_mask(gen, B, T)


def _losses_and_grads(logp, old, adv, values, old_values, returns, mask, mode):
    logp, values = logp.clone().requires_grad_(), values.clone().requires_grad_()
    pg, pm = alg.ppo_clip_loss(logp, old, adv, mask, 0.2, 0.2, agg=mode)
    vf, vm = alg.value_loss(values, old_values, returns, mask, 0.2, agg=mode)
    (pg + vf).backward()
    return [pg.detach(), vf.detach(), *pm.values(), *vm.values(), logp.grad, values.grad]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("junk", [1e4, -1e4, float("nan"), float("inf")])
def test_values_under_the_mask_change_nothing(mode, junk):
    logp, old, adv, values, old_values, returns, mask = _ppo_inputs(seed=3)
    expected = _losses_and_grads(logp, old, adv, values, old_values, returns, mask, mode)
    junked = [perturb_masked(x, mask, junk) for x in (logp, old, adv, values, old_values, returns)]
    got = _losses_and_grads(*junked, mask, mode)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert (expected[-2][~mask] == 0).all() and (expected[-1][~mask] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_token_mean_is_independent_of_the_micro_batch_split(seed):
    logp, old, adv, values, old_values, returns, mask = _ppo_inputs(seed, B=7, T=6)
    full_logp = logp.clone().requires_grad_()
    full, _ = alg.ppo_clip_loss(full_logp, old, adv, mask, 0.2, 0.2)
    full.backward()
    n_total = int(mask.sum())
    gen = torch.Generator().manual_seed(seed + 100)
    cuts = sorted(torch.randperm(6, generator=gen)[:2].add(1).tolist())  # 3 micro-batches of random sizes
    weighted = torch.zeros(())
    split_logp = logp.clone().requires_grad_()
    for rows in (slice(0, cuts[0]), slice(cuts[0], cuts[1]), slice(cuts[1], 7)):
        local, _ = alg.ppo_clip_loss(split_logp[rows], old[rows], adv[rows], mask[rows], 0.2, 0.2)
        part = local * int(mask[rows].sum()) / n_total  # weight by token counts, as the trainer does
        part.backward()  # accumulate, as a trainer would
        weighted = weighted + part.detach()
    close(weighted, full)
    close(split_logp.grad, full_logp.grad)


@pytest.mark.parametrize("mode", MODES[1:])
def test_sequence_modes_split_exactly_when_weighted_by_sequences(mode):
    logp, old, adv, *_, mask = _ppo_inputs(seed=7, B=6, T=5)
    full, _ = alg.ppo_clip_loss(logp, old, adv, mask, 0.2, 0.2, agg=mode)
    parts = [
        alg.ppo_clip_loss(logp[r], old[r], adv[r], mask[r], 0.2, 0.2, agg=mode)[0] * (r.stop - r.start) / 6
        for r in (slice(0, 2), slice(2, 6))
    ]
    close(sum(parts), full)


# ---- value loss -------------------------------------------------------------------------------------------


def test_value_loss_hand_computed():
    # token 1: V=1.5, V_old=1.0, R=2: unclipped (1.5-2)^2 = 0.25;
    #          clipped V = 1.0 + 0.2 = 1.2, (1.2-2)^2 = 0.64 -> 0.5 * max = 0.32 (clipped branch taken)
    # token 2: V=1.1, V_old=1.0, R=2: both (1.1-2)^2 = 0.81 -> 0.405 (not clipped)
    v, v_old, r, mask = (
        torch.tensor([[1.5, 1.1]]),
        torch.tensor([[1.0, 1.0]]),
        torch.tensor([[2.0, 2.0]]),
        torch.ones(1, 2),
    )
    loss, m = alg.value_loss(v, v_old, r, mask, 0.2)
    close(loss, (0.32 + 0.405) / 2)
    close(m["vf_clipfrac"], 0.5)
    close(m["value_mean"], 1.3)
    loss, m = alg.value_loss(v, v_old, r, mask, None)  # unclipped: 0.5 * (0.25 + 0.81) / 2
    close(loss, 0.265)
    close(m["vf_clipfrac"], 0.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip", [0.2, None])
def test_value_loss_matches_loop_reference(seed, clip):
    _, _, _, values, old_values, returns, mask = _ppo_inputs(seed)

    def per_token(v, o, r):
        clipped = o + (min(max(v - o, -clip), clip) if clip is not None else v - o)
        return 0.5 * max((v - r) ** 2, (clipped - r) ** 2)

    expected = [
        [per_token(*x) for x in zip(*rows, strict=True)]
        for rows in zip(values.tolist(), old_values.tolist(), returns.tolist(), strict=True)
    ]
    close(
        alg.value_loss(values, old_values, returns, mask, clip)[0],
        aggregate_loop(expected, mask.tolist(), "token_mean"),
    )


# ---- masked statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_statistics_match_selecting_the_tokens(seed):
    gen = torch.Generator().manual_seed(seed)
    x, mask = torch.randn(4, 8, generator=gen), random_mask(gen, 4, 8)
    mask[0, :2] = True  # at least two tokens, so the unbiased variance is defined
    close(alg.masked_mean(x, mask), x[mask].mean())
    close(alg.masked_mean(x, mask, dim=1), [row[m].mean() for row, m in zip(x, mask, strict=True)])
    close(alg.masked_var(x, mask), x[mask].var())
    close(alg.masked_var(x, mask, unbiased=False), x[mask].var(unbiased=False))
    white = alg.masked_whiten(x, mask)
    close(white[mask], (x[mask] - x[mask].mean()) / (x[mask].var() + 1e-8).sqrt())
    assert (white[~mask] == 0).all()
    close(alg.masked_whiten(x, mask, shift_mean=False)[mask].mean(), x[mask].mean())
    junk = perturb_masked(x, mask, float("nan"))
    close(alg.masked_whiten(junk, mask), white)


# ---- chunked log-softmax ------------------------------------------------------------------------------


def _reference_logprobs(logits, labels):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _reference_entropy(logits):
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
@pytest.mark.parametrize("B,T,chunk_size", [(3, 7, 4), (2, 5, 1024), (4, 3, 7), (1, 10, 1)])
def test_chunked_logprobs_and_entropy_match_log_softmax(dtype, atol, B, T, chunk_size):
    gen = torch.Generator().manual_seed(B * 100 + T)
    base = (torch.randn(B, T + 2, 50, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, 50, (B, T), generator=gen)
    # A sliced (non-contiguous) view, as a trainer passes logits[:, start:-1].
    ours_in = base.clone().requires_grad_()
    ref_in = base.clone().requires_grad_()
    ours = alg.logprobs_from_logits(ours_in[:, 1:-1], labels, chunk_size=chunk_size)
    ref = _reference_logprobs(ref_in[:, 1:-1], labels)
    assert ours.dtype == torch.float32 and ours.shape == (B, T)
    close(ours, ref, atol=atol)
    upstream = torch.randn(B, T, generator=gen)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert ours_in.grad.dtype == dtype
    close(ours_in.grad.float(), ref_in.grad.float(), atol=atol)

    ours_in.grad = ref_in.grad = None
    ent = alg.entropy_from_logits(ours_in[:, 1:-1], chunk_size=chunk_size)
    ref_ent = _reference_entropy(ref_in[:, 1:-1])
    close(ent, ref_ent, atol=atol * 10)
    (ent * upstream).sum().backward()
    (ref_ent * upstream).sum().backward()
    close(ours_in.grad.float(), ref_in.grad.float(), atol=atol * 10)


def test_chunked_logprobs_and_entropy_pass_gradcheck():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (2, 3), generator=gen)
    assert torch.autograd.gradcheck(lambda x: alg.logprobs_from_logits(x, labels, chunk_size=2), (logits,))
    assert torch.autograd.gradcheck(lambda x: alg.entropy_from_logits(x, chunk_size=4), (logits,))


def test_logprobs_reject_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        alg.logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        alg.logprobs_from_logits(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), chunk_size=0)


# ---- registries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,valid",
    [
        (lambda: alg.get_advantage_estimator("ppo"), "gae, grpo"),
        (lambda: alg.get_kl_estimator("k4"), "k1, k2, k3"),
        (lambda: alg.kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "mse"), "k1, k2, k3"),
        (
            lambda: alg.aggregate(torch.zeros(1, 1), torch.ones(1, 1), "seq_mean"),
            "token_mean, seq_mean_token_mean",
        ),
    ],
)
def test_unknown_registry_names_raise_with_the_valid_list(call, valid):
    with pytest.raises(ValueError, match=f"valid: {valid}"):
        call()


def test_registries_resolve_names_and_enum_members_and_refuse_duplicates():
    assert alg.get_advantage_estimator("gae") is alg.get_advantage_estimator(alg.AdvantageEstimator.GAE)
    with pytest.raises(ValueError, match="already registered"):
        alg.register_adv_est("gae")(alg.gae)


# ---- KL controllers ---------------------------------------------------------------------------------------


def test_adaptive_kl_controller_follows_ziegler():
    ctl = alg.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL 12: error clip(12/6 - 1, -0.2, 0.2) = 0.2; mult = 1 + 0.2 * 100 / 10000 = 1.002
    close(torch.tensor(ctl.update(12.0, 100)), 0.1 * 1.002)
    close(torch.tensor(ctl.update(6.0, 100)), 0.1 * 1.002)  # on target: unchanged
    close(torch.tensor(ctl.update(3.0, 100)), 0.1 * 1.002 * 0.998)  # error -0.5 clipped to -0.2
    restored = alg.AdaptiveKLController(0.5, target=6.0, horizon=10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    with pytest.raises(ValueError, match="finite"):
        ctl.update(float("nan"), 100)


def test_fixed_kl_controller_and_factory():
    ctl = alg.FixedKLController(0.05)
    assert ctl.update(100.0, 64) == 0.05 and ctl.state_dict() == {"value": 0.05}
    assert isinstance(alg.make_kl_controller(0.05), alg.FixedKLController)
    assert isinstance(alg.make_kl_controller(0.05, target=6.0, horizon=100), alg.AdaptiveKLController)


def test_value_clipping_hand_computed_below_and_masked():
    # clip 0.5. token 1: V=-1, V_old=0, R=1: unclipped (-1-1)^2 = 4; clipped V = 0 - 0.5 = -0.5,
    #                    (-0.5-1)^2 = 2.25 -> max 4, the unclipped branch: 0.5 * 4 = 2.0 (not clipped)
    # token 2: V=-1, V_old=0, R=-3: unclipped (-1+3)^2 = 4; clipped -0.5: (-0.5+3)^2 = 6.25 -> 3.125 (clipped)
    # token 3 is masked: its junk changes nothing. Token mean: (2.0 + 3.125) / 2 = 2.5625
    v = torch.tensor([[-1.0, -1.0, 1e6]], requires_grad=True)
    v_old, r = torch.tensor([[0.0, 0.0, -1e6]]), torch.tensor([[1.0, -3.0, float("nan")]])
    mask = torch.tensor([[1, 1, 0]])
    loss, m = alg.value_loss(v, v_old, r, mask, 0.5)
    close(loss, 2.5625)
    close(m["vf_clipfrac"], 0.5)
    loss.backward()
    # d/dV: token 1 (V - R) / 2 = -1; token 2 is on the clipped branch (constant in V): 0; masked: 0
    close(v.grad, [[-1.0, 0.0, 0.0]])


# ---- entropy bonus ----------------------------------------------------------------------------------------


def test_entropy_bonus_hand_computed_and_raises_entropy():
    # entropies 1, 2 (3 masked) token mean 1.5 -> bonus -0.1 * 1.5 = -0.15
    entropy, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1, 1, 0]])
    close(alg.entropy_bonus(entropy, mask, 0.1), -0.15)
    # per sequence: rows (1+2)/2 = 1.5 and 4/1 = 4 -> mean 2.75 -> -0.275
    two = torch.tensor([[1.0, 2.0], [4.0, 9.0]])
    close(alg.entropy_bonus(two, torch.tensor([[1, 1], [1, 0]]), 0.1, "seq_mean_token_mean"), -0.275)
    close(alg.entropy_bonus(entropy, mask, 0.0), 0.0)
    # Minimising the bonus moves logits towards the uniform distribution (entropy goes up).
    logits = torch.tensor([[[3.0, 0.0, -1.0]]], requires_grad=True)
    h = alg.entropy_from_logits(logits)
    alg.entropy_bonus(h, torch.ones(1, 1), 0.5).backward()
    with torch.no_grad():
        stepped = alg.entropy_from_logits(logits - 0.1 * logits.grad)
    assert stepped.item() > h.item()
    with pytest.raises(ValueError, match=">= 0"):
        alg.entropy_bonus(entropy, mask, -0.1)


@pytest.mark.parametrize("junk", [0.0, 1e9, float("nan")])
def test_entropy_bonus_ignores_values_under_the_mask(junk):
    gen = torch.Generator().manual_seed(0)
    entropy, mask = torch.rand(3, 5, generator=gen), random_mask(gen, 3, 5)
    expected = alg.entropy_bonus(entropy, mask, 0.3)
    close(alg.entropy_bonus(perturb_masked(entropy, mask, junk), mask, 0.3), expected)


# ---- reward normalisation ---------------------------------------------------------------------------------


def test_running_moments_hand_computed():
    # [1, 2, 3]: n 3, mean 2, M2 = 1 + 0 + 1 = 2. Then [4, 0]: n 5, mean 10/5 = 2,
    # M2 = 2 + (batch M2: mean 2, 4 + 4 = 8) + (2 - 2)^2 * 3 * 2 / 5 = 10 -> std sqrt(10 / 5) = sqrt(2)
    m = alg.update_moments(alg.empty_moments(), torch.tensor([1.0, 2.0, 3.0]))
    close(m, [3.0, 2.0, 2.0])
    m = alg.update_moments(m, torch.tensor([4.0, 0.0]))
    close(m, [5.0, 2.0, 10.0])
    close(alg.moments_std(m), math.sqrt(2.0))
    assert m.dtype == torch.float64
    close(alg.update_moments(m, torch.tensor([])), m)  # no observation: unchanged


def _welford(xs: list[float]) -> list[float]:
    n, mean, m2 = 0, 0.0, 0.0
    for x in xs:
        n += 1
        d = x - mean
        mean += d / n
        m2 += d * (x - mean)
    return [float(n), mean, m2]


@pytest.mark.parametrize("seed", SEEDS)
def test_running_moments_match_a_welford_loop_whatever_the_batches(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, generator=gen, dtype=torch.float64) * 3 + 1
    cuts = sorted(torch.randint(1, 40, (4,), generator=gen).tolist())
    m = alg.empty_moments()
    for lo, hi in zip([0, *cuts], [*cuts, 40], strict=True):
        m = alg.update_moments(m, x[lo:hi])
    close(m, _welford(x.tolist()), atol=1e-9)
    close(alg.update_moments(alg.empty_moments(), x), m, atol=1e-9)  # one batch or many: the same


def test_normalize_rewards_running_batch_and_none():
    # running: batch 1 [1, 2, 3] -> mean 2, std sqrt(2/3): (x - 2) / 0.8165 = [-1.2247, 0, 1.2247]
    scores = torch.tensor([1.0, 2.0, 3.0])
    out, m = alg.normalize_rewards(scores, alg.empty_moments(), "running")
    close(out, [-1.224745, 0.0, 1.224745])
    # batch 2 [4, 0] with everything so far: mean 2, std sqrt(2): [2 / 1.41421, -2 / 1.41421]
    out, m = alg.normalize_rewards(torch.tensor([4.0, 0.0]), m, alg.RewardNorm.RUNNING)
    close(out, [1.414214, -1.414214])
    close(m, [5.0, 2.0, 10.0])
    # batch: this batch's statistics only, and the running moments are left alone
    out, m2 = alg.normalize_rewards(torch.tensor([4.0, 0.0]), m, "batch")
    close(out, [1.0, -1.0])
    assert torch.equal(m2, m)
    out, m3 = alg.normalize_rewards(scores, m, "none")
    assert torch.equal(out, scores) and torch.equal(m3, m)
    # equal rewards (a task nobody solves yet) map to 0, not nan
    close(alg.normalize_rewards(torch.zeros(4), alg.empty_moments(), "batch")[0], [0.0] * 4)
    with pytest.raises(ValueError, match="valid: none, batch, running"):
        alg.normalize_rewards(scores, m, "whiten")


def test_normalize_rewards_statistics_skip_unobserved_scores():
    # The placeholder 100 of a skipped sample neither moves the statistics nor escapes normalisation.
    scores, observed = torch.tensor([1.0, 3.0, 100.0]), torch.tensor([True, True, False])
    out, m = alg.normalize_rewards(scores, alg.empty_moments(), "running", observed=observed)
    close(m, [2.0, 2.0, 2.0])  # mean 2, std 1
    close(out, [-1.0, 1.0, 98.0])
