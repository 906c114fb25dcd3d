"""KL estimators k1, k2, k3 (C17): non-negativity, unbiasedness (exact and Monte Carlo), variance."""
import math

import pytest
import torch

from rlcore.kl import kl_estimator, kl_k1, kl_k2, kl_k3


def _pair(seed, K=6, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    lq = torch.log_softmax(lp + spread * torch.randn(K, generator=g, dtype=torch.float64), 0)
    return lp, lq


def _exact_moments(f, lp, lq):
    """E_{x~p}[k(x)] and Var_{x~p}[k(x)] by enumeration over the K outcomes."""
    k = f(lp, lq)
    p = lp.exp()
    mean = (p * k).sum()
    return mean.item(), ((p * k**2).sum() - mean**2).item()


def test_k3_nonnegative_everywhere():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(200_000, generator=g, dtype=torch.float64) * 10
    ref = torch.randn(200_000, generator=g, dtype=torch.float64) * 10
    assert torch.all(kl_k3(logp, ref) >= 0)
    assert torch.all(kl_k2(logp, ref) >= 0)
    assert (kl_k1(logp, ref) < 0).any()  # k1 can be negative per sample
    # tiny differences keep full precision (expm1) and are exactly zero at equality
    assert torch.all(kl_k3(logp, logp) == 0)
    d = torch.tensor(1e-6, dtype=torch.float64)
    assert kl_k3(torch.tensor(0.0, dtype=torch.float64), -d).item() == pytest.approx(d.item() ** 2 / 2, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_k3_exactly_unbiased_k2_biased(seed):
    lp, lq = _pair(seed)
    kl = (lp.exp() * (lp - lq)).sum().item()  # KL(p || q), p = pi_theta (sampling), q = pi_ref
    assert _exact_moments(kl_k1, lp, lq)[0] == pytest.approx(kl, rel=1e-10)
    assert _exact_moments(kl_k3, lp, lq)[0] == pytest.approx(kl, rel=1e-10)
    assert abs(_exact_moments(kl_k2, lp, lq)[0] - kl) > 1e-3 * kl


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_monte_carlo_mean_matches_exact_kl(name):
    lp, lq = _pair(3)
    kl = (lp.exp() * (lp - lq)).sum().item()
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x = torch.multinomial(lp.exp(), n, replacement=True, generator=g)
    k = kl_estimator(name)(lp[x], lq[x])
    bound = 4 * k.std().item() / math.sqrt(n)  # CLT: fails with probability ~6e-5
    assert abs(k.mean().item() - kl) < bound


def test_k3_has_lower_variance_than_k1_on_close_distributions():
    for seed in range(5):
        lp, lq = _pair(seed, spread=0.1)
        _, var1 = _exact_moments(kl_k1, lp, lq)
        _, var3 = _exact_moments(kl_k3, lp, lq)
        assert var3 < 0.1 * var1  # k1's variance is O(d^2), k3's O(d^4)
    # and the same shows up in samples
    lp, lq = _pair(0, spread=0.1)
    x = torch.multinomial(lp.exp(), 50_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert kl_k3(lp[x], lq[x]).var() < kl_k1(lp[x], lq[x]).var()


def test_k2_bias_is_second_order():
    # E[k2] / KL -> 1 as the distributions approach each other, but not for distant ones
    ratios = []
    for spread in (1.5, 0.3, 0.03):
        lp, lq = _pair(4, spread=spread)
        kl = (lp.exp() * (lp - lq)).sum().item()
        ratios.append(_exact_moments(kl_k2, lp, lq)[0] / kl)
    errors = [abs(r - 1) for r in ratios]
    assert errors[2] < 0.05
    assert errors[0] > 0.1
    assert errors[0] > errors[1] > errors[2]
