"""Chapter 10's exercise checkers (rlcore/exercise_checks/ch10.py): they accept rlcore's reference and an
independent solution and reject the known mistakes with their hint."""
import numpy as np
import pytest
import torch

from rlcore.exercise_checks import ch10 as checks
from rlcore.llm.dpo import dpo_loss


def sol_dpo_loss(pc, pr, rc, rr, beta):
    margin = beta * ((pc - rc) - (pr - rr))
    return torch.nn.functional.softplus(-margin).mean()  # -log sigmoid(x) = softplus(-x)


def test_checkers_accept_references_and_solutions():
    assert checks.check_dpo_loss(lambda *a: dpo_loss(*a).loss, raise_on_fail=True)
    assert checks.check_dpo_loss(sol_dpo_loss, raise_on_fail=True)
    assert checks.check_bon_win_rate(checks.bon_win_rate, raise_on_fail=True)
    assert checks.check_bon_win_rate(lambda n: 1 - 1 / (n + 1), raise_on_fail=True)  # the same formula, rewritten


def test_dpo_checker_names_the_mistakes(capsys):
    assert not checks.check_dpo_loss(lambda pc, pr, rc, rr, b: -torch.nn.functional.logsigmoid(b * (pc - pr)).mean())
    assert "log-ratio against the reference" in capsys.readouterr().out
    assert not checks.check_dpo_loss(lambda pc, pr, rc, rr, b: sol_dpo_loss(pc, pr, rc, rr, b) * len(pc))
    assert "average over the pairs" in capsys.readouterr().out
    # a naive sigmoid underflows on the large-margin case
    naive = lambda pc, pr, rc, rr, b: -torch.log(torch.sigmoid(b * ((pc - rc) - (pr - rr)))).mean()  # noqa: E731
    assert not checks.check_dpo_loss(naive)


def test_bon_win_rate_checker_names_the_mistakes_and_matches_monte_carlo(capsys):
    assert not checks.check_bon_win_rate(lambda n: (n - 1) / n)
    assert "half the time" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        best = rng.normal(size=(200_000, n)).max(1)
        ref = rng.normal(size=200_000)
        assert (best > ref).mean() == pytest.approx(checks.bon_win_rate(n), abs=0.005)
