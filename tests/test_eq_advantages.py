"""C12, C13: k-step advantages, GAE as their exponentially weighted average, terminated vs
truncated, and the group-normalised advantage of GRPO. Every check compares rlcore.returns
with an independent plain-Python computation from the definitions."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlcore.returns import (gae, group_normalized_advantages, kstep_advantages, monte_carlo_advantages, td_errors,
                            zero_variance_groups)

GAMMA = 0.9


def episode(T=6, seed=0):
    """One episode of T steps that *terminates* at its last step (so V(s_T) = 0 exactly)."""
    g = np.random.default_rng(seed)
    rewards = g.normal(size=T)
    V = g.normal(size=T + 1)  # V[t] = V(s_t); V[T] is the value of the terminal state, never used
    terminated = np.zeros(T)
    terminated[-1] = 1.0
    return rewards, V, terminated


def kstep_by_definition(rewards, V, k, gamma=GAMMA):
    """A^(k)_t = sum_{j<k} gamma^j r_{t+j} + gamma^k V(s_{t+k}) - V(s_t), with V(terminal) = 0."""
    T = len(rewards)
    out = []
    for t in range(T):
        steps = min(k, T - t)
        total = sum(gamma**j * rewards[t + j] for j in range(steps))
        if t + k < T:  # still inside the episode: bootstrap
            total += gamma**k * V[t + k]
        out.append(total - V[t])
    return np.array(out)


def as_tensors(rewards, V, terminated):
    return (torch.tensor(rewards), torch.tensor(V[:-1]), torch.tensor(V[1:]), torch.tensor(terminated),
            torch.zeros(len(rewards), dtype=torch.float64))


def test_one_step_advantage_is_td_error():
    r, V, term = episode()
    rewards, values, next_values, terminated, truncated = as_tensors(r, V, term)
    delta = td_errors(rewards, values, next_values, terminated, GAMMA)
    np.testing.assert_allclose(delta.numpy(), kstep_by_definition(r, V, 1), atol=1e-12)
    a1 = kstep_advantages(rewards, values, next_values, terminated, truncated, GAMMA, k=1)
    np.testing.assert_allclose(a1.numpy(), delta.numpy(), atol=1e-12)


def test_infinite_step_advantage_is_monte_carlo_return_minus_value():
    r, V, term = episode()
    rewards, values, next_values, terminated, truncated = as_tensors(r, V, term)
    mc_return = np.array([sum(GAMMA**j * r[t + j] for j in range(len(r) - t)) for t in range(len(r))])
    a_inf = monte_carlo_advantages(rewards, values, next_values, terminated, truncated, GAMMA)
    np.testing.assert_allclose(a_inf.numpy(), mc_return - V[:-1], atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_kstep_matches_definition(k):
    r, V, term = episode(T=7, seed=k)
    a = kstep_advantages(*as_tensors(r, V, term), GAMMA, k=k)
    np.testing.assert_allclose(a.numpy(), kstep_by_definition(r, V, k), atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 0.95, 1.0])
def test_gae_is_exponentially_weighted_sum_of_kstep_advantages(lam):
    """(1 - lam) sum_{k>=1} lam^{k-1} A^(k) = GAE (eq-gae). For k >= T - t, A^(k) = A^(inf), so the
    tail sums analytically: (1 - lam) sum_{k>K} lam^{k-1} = lam^K."""
    T = 8
    r, V, term = episode(T=T, seed=3)
    A = {k: kstep_by_definition(r, V, k) for k in range(1, T + 1)}
    expected = np.zeros(T)
    for t in range(T):
        K = T - t  # A^(k)_t = A^(inf)_t for every k >= K
        head = sum((1 - lam) * lam ** (k - 1) * A[k][t] for k in range(1, K))
        expected[t] = head + lam ** (K - 1) * A[K][t]  # (1-lam) sum_{k>=K} lam^{k-1} = lam^{K-1}
    got = gae(*as_tensors(r, V, term), GAMMA, lam)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    # and the delta form sum_l (gamma lam)^l delta_{t+l}
    delta = kstep_by_definition(r, V, 1)
    delta_form = [sum((GAMMA * lam) ** l * delta[t + l] for l in range(T - t)) for t in range(T)]
    np.testing.assert_allclose(got.numpy(), delta_form, atol=1e-12)


def test_gae_limits():
    r, V, term = episode(T=9, seed=4)
    args = as_tensors(r, V, term)
    np.testing.assert_allclose(gae(*args, GAMMA, 0.0).numpy(), td_errors(*args[:4], GAMMA).numpy(), atol=1e-12)
    np.testing.assert_allclose(gae(*args, GAMMA, 1.0).numpy(),
                               monte_carlo_advantages(*args, GAMMA).numpy(), atol=1e-12)


def test_terminated_vs_truncated_hand_computed():
    """Steps 0-2: an episode cut by a time limit at t=2 (truncated: bootstrap from the real
    final observation's value 2.0). Steps 3-4: an episode that terminates at t=4."""
    g, lam = 0.9, 0.8
    rewards = torch.ones(5, dtype=torch.float64)
    values = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9], dtype=torch.float64)
    next_values = torch.tensor([0.6, 0.7, 2.0, 0.9, 1.1], dtype=torch.float64)
    terminated = torch.tensor([0, 0, 0, 0, 1.0], dtype=torch.float64)
    truncated = torch.tensor([0, 0, 1.0, 0, 0], dtype=torch.float64)
    d = [1 + g * 0.6 - 0.5, 1 + g * 0.7 - 0.6, 1 + g * 2.0 - 0.7, 1 + g * 0.9 - 0.8, 1 - 0.9]
    A4 = d[4]
    A3 = d[3] + g * lam * A4
    A2 = d[2]  # the episode ended: nothing from t=3 leaks in
    A1 = d[1] + g * lam * A2
    A0 = d[0] + g * lam * A1
    got = gae(rewards, values, next_values, terminated, truncated, g, lam)
    np.testing.assert_allclose(got.numpy(), [A0, A1, A2, A3, A4], atol=1e-12)

    # no leak: changing the next episode's values/rewards leaves the truncated episode untouched
    v2, r2 = values.clone(), rewards.clone()
    v2[3], r2[4] = 10.0, -5.0
    got2 = gae(r2, v2, next_values, terminated, truncated, g, lam)
    np.testing.assert_allclose(got2[:3].numpy(), got[:3].numpy(), atol=1e-12)
    # the truncated step *does* use next_values there ...
    nv = next_values.clone()
    nv[2] = 3.0
    assert abs(float(gae(rewards, values, nv, terminated, truncated, g, lam)[2] - A2) - g * 1.0) < 1e-12
    # ... the terminated step does not
    nv = next_values.clone()
    nv[4] = 100.0
    np.testing.assert_allclose(gae(rewards, values, nv, terminated, truncated, g, lam).numpy(), got.numpy(), atol=1e-12)


def test_rollout_end_bootstraps_and_envs_are_independent():
    """[T, N] layout: the last step of a rollout bootstraps from next_values; columns do not mix."""
    g, lam = 0.99, 0.95
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    values = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)
    next_values = torch.tensor([[0.3, 0.4], [0.5, 0.6]], dtype=torch.float64)
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    got = gae(rewards, values, next_values, zeros, zeros, g, lam)
    for n in range(2):
        d1 = rewards[1, n] + g * next_values[1, n] - values[1, n]
        d0 = rewards[0, n] + g * next_values[0, n] - values[0, n]
        assert abs(float(got[1, n] - d1)) < 1e-12
        assert abs(float(got[0, n] - (d0 + g * lam * d1))) < 1e-12


def test_kstep_variance_grows_with_k_monte_carlo():
    """Noisy-reward chain of T steps, r_t = 1 + sigma * eps_t, with the *exact* V. Then
    Var[A^(k)_0] = sigma^2 sum_{j<k} gamma^{2j}: bias-free, variance growing with k (C12).
    Each empirical variance must lie within 5 standard errors of the exact value."""
    T, n, sigma, g = 10, 4000, 1.0, 0.95
    gen = torch.Generator().manual_seed(0)
    rewards = 1.0 + sigma * torch.randn(T, n, generator=gen, dtype=torch.float64)
    V = torch.tensor([sum(g**j for j in range(T - t)) for t in range(T + 1)], dtype=torch.float64)
    values = V[:-1, None].expand(T, n)
    next_values = V[1:, None].expand(T, n).clone()
    terminated = torch.zeros(T, n, dtype=torch.float64)
    terminated[-1] = 1.0
    truncated = torch.zeros(T, n, dtype=torch.float64)
    variances = []
    for k in (1, 2, 4, 8):
        a0 = kstep_advantages(rewards, values, next_values, terminated, truncated, g, k)[0]
        exact = sigma**2 * sum(g ** (2 * j) for j in range(k))
        se = exact * math.sqrt(2 / (n - 1))  # std of a Gaussian sample variance
        assert abs(float(a0.mean())) < 5 * math.sqrt(exact / n)  # unbiased: V is exact
        assert abs(float(a0.var()) - exact) < 5 * se
        variances.append(float(a0.var()))
    assert all(a < b for a, b in zip(variances, variances[1:]))


# --------------------------------------------------------------------- GRPO advantages
def test_group_normalized_formula():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    got = group_normalized_advantages(rewards)
    for i in range(2):
        row = rewards[i].tolist()
        m = sum(row) / 4
        std = math.sqrt(sum((x - m) ** 2 for x in row) / 3)  # unbiased
        np.testing.assert_allclose(got[i].numpy(), [(x - m) / (std + 1e-4) for x in row], rtol=1e-6)
    flat = group_normalized_advantages(rewards.flatten(), group_size=4)
    np.testing.assert_allclose(flat.numpy(), got.flatten().numpy())


def test_all_equal_group_gives_zero_and_is_counted():
    rewards = torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    adv = group_normalized_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(3)) and torch.equal(adv[2], torch.zeros(3))
    assert adv[1].abs().sum() > 0
    mask = zero_variance_groups(rewards)
    assert mask.tolist() == [True, False, True]
    assert int(zero_variance_groups(rewards.flatten(), group_size=3).sum()) == 2


@settings(max_examples=150, deadline=None, database=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False), size=st.integers(2, 40), groups=st.integers(1, 3),
       dtype=st.sampled_from([torch.float32, torch.float64]), scale=st.sampled_from(["group", "batch", "none"]))
def test_all_equal_group_is_exactly_zero_for_any_value(value, size, groups, dtype, scale):
    """In float32, eight rewards of 0.1 have a mean that is not 0.1 exactly: without care the ~1e-9
    left over, divided by std + eps, became an advantage of ~1e-5 (and of ~1e26 for rewards of 1e30)."""
    if dtype == torch.float32 and not abs(value) <= 3.4e38:
        value = math.copysign(3.4e38, value)  # stay inside float32's range (inf is refused as a reward)
    r = torch.full((groups, size), value, dtype=dtype)
    adv = group_normalized_advantages(r, scale=scale)
    assert adv.dtype == dtype and torch.equal(adv, torch.zeros_like(adv))
    flat = group_normalized_advantages(r.flatten(), group_size=size, scale=scale)
    assert torch.equal(flat, torch.zeros_like(flat))


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.2, 1.0, -0.7, 3.3333]), min_size=4, max_size=4),
                min_size=1, max_size=5), st.sampled_from([torch.float32, torch.float64]),
       st.sampled_from(["group", "batch", "none"]))
def test_other_groups_are_unchanged(rows, dtype, scale):
    """Only all-equal groups are touched: the others get the formula, bit for bit."""
    r = torch.tensor(rows, dtype=dtype)
    adv = group_normalized_advantages(r, scale=scale)
    centred = r - r.mean(dim=1, keepdim=True)
    formula = {"group": centred / (r.std(dim=1, keepdim=True) + 1e-4), "batch": centred / (r.std() + 1e-4),
               "none": centred}[scale]
    for i, row in enumerate(rows):
        if len(set(row)) == 1:
            assert torch.equal(adv[i], torch.zeros(4, dtype=dtype))
        else:
            assert torch.equal(adv[i], formula[i])


def test_group_errors():
    with pytest.raises(ValueError, match="group_size"):
        group_normalized_advantages(torch.ones(4), group_size=1)
    with pytest.raises(ValueError, match="group_size"):
        group_normalized_advantages(torch.ones(4, 1))
    with pytest.raises(ValueError, match="NaN"):
        group_normalized_advantages(torch.tensor([1.0, float("nan"), 0.0, 1.0]), group_size=2)
    with pytest.raises(ValueError):
        group_normalized_advantages(torch.ones(5), group_size=2)
