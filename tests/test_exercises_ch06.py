"""Checkers of chapter 6's exercises (rlcore.exercise_checks.ch06): independent right answers pass,
known mistakes fail with their hint, unfinished stubs get "not implemented yet" (no hint), and the
references the checkers use agree with independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlcore import kl, returns
from rlcore.exercise_checks import ch06 as checks
from rlcore.exercises import ExerciseError
from _exercise_helpers import fails_with

torch.set_num_threads(1)


# ------------------------------------------------------------------ independent solutions (numpy / plain Python)
def advantages_numpy(rewards, G):
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, G)
    return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).ravel()


def k3_numpy(logp, ref_logp):
    x = np.exp(np.asarray(ref_logp, dtype=np.float64) - np.asarray(logp, dtype=np.float64))
    return x - np.log(x) - 1


def aggregate_loops(per_token, mask, loss_type, max_len):
    rows = [[float(per_token[i, t]) for t in range(per_token.shape[1]) if mask[i, t] > 0]
            for i in range(per_token.shape[0])]
    if loss_type == "grpo":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    total = sum(sum(r) for r in rows)
    if loss_type == "bnpo":
        return total / sum(len(r) for r in rows)
    return total / (len(rows) * max_len)


CHECKERS = [
    (checks.check_group_advantages, advantages_numpy),
    (checks.check_kl_k3, k3_numpy),
    (checks.check_grpo_aggregation, aggregate_loops),
]


_fails_with = fails_with


@pytest.mark.parametrize("checker,fn", CHECKERS, ids=lambda x: getattr(x, "__name__", ""))
def test_independent_solutions_pass(checker, fn, capsys):
    assert checker(fn) is True
    assert capsys.readouterr().out.startswith("✓")


def test_rlcore_references_pass():
    assert checks.check_group_advantages(lambda r, G: returns.group_normalized_advantages(r, group_size=G))
    assert checks.check_kl_k3(kl.kl_k3)
    assert checks.check_grpo_aggregation(checks.aggregate_reference)


@pytest.mark.parametrize("checker", [c for c, _ in CHECKERS], ids=lambda c: c.__name__)
def test_stub_returning_none_gets_a_helpful_message(checker, capsys):
    def stub(*args):
        ...

    out = _fails_with(checker, stub, "returned None", "not implemented yet", capsys=capsys)
    assert "Hint" not in out and "case 1 of" not in out, out
    with pytest.raises(ExerciseError, match="returned None"):
        checker(stub, raise_on_fail=True)


# ------------------------------------------------------------------ references vs independent computations
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_aggregate_reference_is_grpo_loss_aggregation(loss_type):
    g = torch.Generator().manual_seed(3)
    per = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = (torch.arange(7)[None] < torch.tensor([7, 3, 1, 5, 6])[:, None]).double()
    got = float(checks.aggregate_reference(per, mask, loss_type, 11))
    assert got == pytest.approx(aggregate_loops(per, mask, loss_type, 11), rel=1e-12)


def test_k3_reference_matches_numpy_and_is_nonnegative():
    g = torch.Generator().manual_seed(4)
    lp, rf = -3 * torch.rand(200, generator=g, dtype=torch.float64), -3 * torch.rand(200, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(kl.kl_k3(lp, rf).numpy(), k3_numpy(lp, rf), rtol=1e-10, atol=1e-12)
    assert (kl.kl_k3(lp, rf) >= 0).all()


def test_zero_variance_group_gets_zero_advantage_not_nan():
    a = returns.group_normalized_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), group_size=3)
    assert torch.equal(a[:3], torch.zeros(3))
    assert a[3:].abs().sum() > 0 and math.isfinite(float(a.sum()))


# ------------------------------------------------------------------ known mistakes get their hint
@pytest.mark.parametrize("kw,fragment", [
    (dict(unbiased=False), "sample standard deviation"),
    (dict(per_group=False), "within each group"),
    (dict(centre=False), "subtract the group mean"),
    (dict(scale=False), "only centred"),
])
def test_group_advantage_mistakes(kw, fragment, capsys):
    _fails_with(checks.check_group_advantages, lambda r, G: checks._adv_variant(r, G, **kw), fragment, capsys=capsys)


def test_group_advantage_without_eps_gets_the_zero_variance_hint(capsys):
    def no_eps(r, G):
        r = r.view(-1, G)
        return ((r - r.mean(1, keepdim=True)) / r.std(1, keepdim=True)).flatten()

    _fails_with(checks.check_group_advantages, no_eps, "NaN", "standard deviation 0", capsys=capsys)


@pytest.mark.parametrize("fn,fragment", [
    (lambda lp, rf: torch.exp(lp - rf) - (lp - rf) - 1, "upside down"),
    (lambda lp, rf: lp - rf, "that is k1"),
    (lambda lp, rf: 0.5 * (lp - rf) ** 2, "that is k2"),
    (lambda lp, rf: torch.exp(rf - lp) - (rf - lp), "a constant is missing"),
    (lambda lp, rf: torch.exp(rf - lp) + (rf - lp) - 1, "sign of the log term"),
])
def test_k3_mistakes(fn, fragment, capsys):
    _fails_with(checks.check_kl_k3, fn, fragment, capsys=capsys)


@pytest.mark.parametrize("wrong,fragment", [
    ("padded", "its own length"),
    ("tokens", "that is bnpo"),
    ("seqmean", "pools every generated token"),
    ("width", "not the width L"),
])
def test_aggregation_mistakes(wrong, fragment, capsys):
    _fails_with(checks.check_grpo_aggregation, lambda p, m, lt, ml: checks._agg_variant(p, m, lt, ml, wrong=wrong),
                fragment, capsys=capsys)


def test_aggregation_variant_without_mistake_passes(capsys):
    assert checks.check_grpo_aggregation(lambda p, m, lt, ml: checks._agg_variant(p, m, lt, ml)) is True


# ------------------------------------------------------------------ derivation: a group of 0/1 rewards
def test_binary_group_advantage_right_formulas_pass(capsys):
    import sympy as sp

    def from_the_definition(k, G):  # mean and sample variance written out, not simplified
        mean = k / G
        var = (k * (1 - mean) ** 2 + (G - k) * mean**2) / (G - 1)
        return (1 - mean) / sp.sqrt(var), -mean / sp.sqrt(var)

    assert checks.check_binary_group_advantage(checks.binary_group_advantage) is True
    assert checks.check_binary_group_advantage(from_the_definition, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ binary_group_advantage")


@pytest.mark.parametrize("k,G", [(1, 2), (1, 8), (3, 8), (7, 8), (5, 16), (13, 64)])
def test_binary_group_advantage_reference_matches_rlcore(k, G):
    """The closed form against rlcore's group-normalised advantages (which add 1e-4 to the std)."""
    rewards = torch.tensor([1.0] * k + [0.0] * (G - k), dtype=torch.float64)
    adv = returns.group_normalized_advantages(rewards, group_size=G)
    a_correct, a_wrong = (float(x) for x in checks.binary_group_advantage(k, G))
    assert float(adv[0]) == pytest.approx(a_correct, rel=1e-3)
    assert float(adv[-1]) == pytest.approx(a_wrong, rel=1e-3)
    assert float((adv**2).sum()) == pytest.approx(G - 1, rel=1e-3)


@pytest.mark.parametrize("fn,fragment", [
    (lambda k, G: (((G - k) / k) ** 0.5, -(k / (G - k)) ** 0.5), "population standard deviation"),
    (lambda k, G: ((G - k) / G, -k / G), "only the centred reward"),
    (lambda k, G: (-(k * (G - 1) / ((G - k) * G)) ** 0.5, ((G - k) * (G - 1) / (k * G)) ** 0.5), "swapped"),
    (lambda k, G: ((k * (G - 1) / ((G - k) * G)) ** 0.5, -((G - k) * (G - 1) / (k * G)) ** 0.5), "rarer outcome"),
])
def test_binary_group_advantage_mistakes_get_their_hint(fn, fragment, capsys):
    assert checks.check_binary_group_advantage(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_binary_group_advantage_numeric_group_and_stub(capsys):
    def build_a_group(k, G):  # a loop over range(G) cannot run on a symbol
        r = torch.tensor([1.0] * k + [0.0] * (G - k))
        return float(((r - r.mean()) / r.std())[0]), float(((r - r.mean()) / r.std())[-1])

    assert checks.check_binary_group_advantage(build_a_group) is False
    assert "with sympy symbols, not numbers" in capsys.readouterr().out

    def my_binary_group_advantage(k, G):
        ...

    assert checks.check_binary_group_advantage(my_binary_group_advantage) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out
