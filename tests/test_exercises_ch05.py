"""Checkers of chapter 5's exercises (rlcore.exercise_checks.ch05): independent right answers pass,
known mistakes fail with their hint, unfinished stubs get "not implemented yet" (no hint), and the
references the checkers use agree with independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlcore.exercise_checks import ch05 as checks
from rlcore.exercises import ExerciseError
from rlcore.llm import ppo
from _exercise_helpers import fails_with

torch.set_num_threads(1)


# ------------------------------------------------------------------ independent solutions (plain Python / numpy)
def rewards_by_definition(scores, logp, ref_logp, mask, beta):
    N, L = logp.shape
    out = np.zeros((N, L))
    for i in range(N):
        n = int(mask[i].sum())
        for t in range(n):
            out[i, t] = -beta * (float(logp[i, t]) - float(ref_logp[i, t])) + (float(scores[i]) if t == n - 1 else 0.0)
    return out


def loss_by_definition(logp, old_logp, adv, mask, eps):
    total = 0.0
    for i in range(logp.shape[0]):
        n = int(mask[i].sum())
        s = 0.0
        for t in range(n):
            rho = math.exp(float(logp[i, t]) - float(old_logp[i, t]))
            a = float(adv[i, t])
            s += min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
        total += s / n
    return -total / logp.shape[0]


def gae_by_definition(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} inside the completion, with V = 0 after its last token."""
    N, L = rewards.shape
    out = np.zeros((N, L))
    for i in range(N):
        n = int(mask[i].sum())
        v = [float(values[i, t]) for t in range(n)] + [0.0]
        delta = [float(rewards[i, t]) + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            out[i, t] = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
    return out


CHECKERS = [
    (checks.check_per_token_rewards, rewards_by_definition),
    (checks.check_token_ppo_loss, loss_by_definition),
    (checks.check_token_gae, gae_by_definition),
]


_fails_with = fails_with


@pytest.mark.parametrize("checker,fn", CHECKERS, ids=lambda x: getattr(x, "__name__", ""))
def test_independent_solutions_pass(checker, fn, capsys):
    assert checker(fn) is True
    assert capsys.readouterr().out.startswith("✓")


def test_rlcore_references_pass():
    assert checks.check_per_token_rewards(ppo.per_token_rewards)
    assert checks.check_token_ppo_loss(lambda *a: ppo.ppo_lm_loss(*a)[0])
    assert checks.check_token_gae(
        lambda r, v, m, g, lam: ppo.token_gae(r, v, m, torch.ones(m.shape[0], dtype=torch.bool), g, lam)[0])


@pytest.mark.parametrize("checker", [c for c, _ in CHECKERS], ids=lambda c: c.__name__)
def test_stub_returning_none_gets_a_helpful_message(checker, capsys):
    def stub(*args):
        ...

    out = _fails_with(checker, stub, "returned None", "not implemented yet", capsys=capsys)
    assert "Hint" not in out and "case 1 of" not in out, out
    with pytest.raises(ExerciseError, match="returned None"):
        checker(stub, raise_on_fail=True)


# ------------------------------------------------------------------ references vs independent computations
def test_per_token_rewards_reference_matches_definition_on_random_batches():
    for seed in range(3):
        logp, _, ref, mask = checks.random_batch(5, 8, seed=100 + seed)
        scores = torch.randn(5, dtype=torch.float64)
        got = ppo.per_token_rewards(scores, logp, ref, mask, beta=0.2).double().numpy()
        np.testing.assert_allclose(got, rewards_by_definition(scores, logp, ref, mask, 0.2), atol=1e-5)


def test_token_gae_reference_matches_sum_of_td_errors():
    g = torch.Generator().manual_seed(7)
    _, _, _, mask = checks.random_batch(4, 9, seed=7)
    r, v = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 10, generator=g, dtype=torch.float64)
    got = ppo.token_gae(r, v, mask, torch.ones(4, dtype=torch.bool), 0.97, 0.8)[0].double().numpy()
    np.testing.assert_allclose(got, gae_by_definition(r, v, mask, 0.97, 0.8), atol=1e-5)


# ------------------------------------------------------------------ known mistakes get their hint
@pytest.mark.parametrize("kw,fragment", [
    (dict(where="column"), "*own* last generated token"),
    (dict(where="every"), "paid once"),
    (dict(where="first"), "not the first"),
    (dict(flip=True), "sign of the KL term"),
    (dict(masked=False), "padding positions must get reward 0"),
])
def test_per_token_rewards_mistakes(kw, fragment, capsys):
    _fails_with(checks.check_per_token_rewards, lambda *a: checks._rewards_variant(*a, **kw), fragment, capsys=capsys)


def test_per_token_rewards_variant_without_mistake_passes(capsys):
    assert checks.check_per_token_rewards(lambda *a: checks._rewards_variant(*a)) is True


@pytest.mark.parametrize("kw,fragment", [
    (dict(agg="tokens"), "mean over all tokens"),
    (dict(agg="padded"), "padded width L"),
    (dict(agg="nomask"), "padding counted"),
    (dict(clip=False), "no clipping"),
    (dict(combine=torch.max), "*min*"),
    (dict(sign=1.0), "its negative"),
])
def test_token_loss_mistakes(kw, fragment, capsys):
    _fails_with(checks.check_token_ppo_loss, lambda *a: checks._loss_variant(*a, **kw), fragment, capsys=capsys)


@pytest.mark.parametrize("kw,fragment", [
    (dict(bootstrap_end=True), "terminal and worth 0"),
    (dict(use_mask=False), "its own last generated token"),
    (dict(lam_power=False), "lambda is missing"),
])
def test_token_gae_mistakes(kw, fragment, capsys):
    _fails_with(checks.check_token_gae, lambda *a: checks._gae_loop(*a, **kw), fragment, capsys=capsys)


def test_token_gae_loop_without_mistake_passes(capsys):
    assert checks.check_token_gae(lambda *a: checks._gae_loop(*a)) is True


# ------------------------------------------------------------------ derivation: the KL-regularised optimum
def test_kl_optimum_right_formulas_pass(capsys):
    import sympy as sp

    def leave_the_wrong_ones(p, beta):  # the same probability written from the wrong completions' side
        return 1 - (1 - p) / (p * sp.exp(1 / beta) + 1 - p)

    assert checks.check_kl_optimum_success(checks.kl_optimum_success) is True
    assert checks.check_kl_optimum_success(leave_the_wrong_ones, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ kl_optimum_success")


def test_kl_optimum_reference_maximises_the_objective():
    """Against a brute-force maximisation of E[r] - beta KL over distributions (p_correct on the correct ones,
    spread like the reference within each class, which is optimal), on a fine grid."""
    for p, beta in [(0.01, 0.1), (0.3, 0.5), (0.9, 2.0), (0.5, 1.0)]:
        x = np.linspace(1e-9, 1 - 1e-9, 2_000_001)
        objective = x - beta * (x * np.log(x / p) + (1 - x) * np.log((1 - x) / (1 - p)))
        best = x[np.argmax(objective)]
        assert float(checks.kl_optimum_success(p, beta)) == pytest.approx(best, abs=2e-6)


@pytest.mark.parametrize("fn,fragment", [
    (lambda p, b: p * np.e ** (1 / b), "normalised together"),
    (lambda p, b: p * np.e ** b / (p * np.e ** b + 1 - p), "tilt must weaken"),
    (lambda p, b: p * np.e ** (-1 / b) / (p * np.e ** (-1 / b) + 1 - p), "wrong way"),
    (lambda p, b: 1, "always be correct"),
])
def test_kl_optimum_mistakes_get_their_hint(fn, fragment, capsys):
    assert checks.check_kl_optimum_success(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_kl_optimum_stub_gets_not_implemented(capsys):
    def my_kl_optimum_success(p, beta):
        ...

    assert checks.check_kl_optimum_success(my_kl_optimum_success) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out
