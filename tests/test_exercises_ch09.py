"""Chapter 9's exercise checkers (rlcore/exercise_checks/ch09.py): they accept rlcore's reference and an
independent solution and reject the known mistakes with their hint."""
import pytest

from rlcore.exercise_checks import ch09 as checks
from rlcore.llm.distill import grpo_step_flops
from rlcore.llm.rewards import think_length


def sol_filter(completions, accuracy, format_ok, num_samples, max_per_prompt):
    out = []
    for i in range(len(completions) // num_samples):
        kept = []
        for j in range(i * num_samples, (i + 1) * num_samples):
            if accuracy[j] >= 1 and format_ok[j] >= 1 and completions[j] not in kept:
                if max_per_prompt is None or len(kept) < max_per_prompt:
                    kept.append(completions[j])
                    out.append(j)
    return out


def sol_flops(N, p, G, P, L, mu, beta):
    n = p * G
    fwd = p * P + n * L + n * (P + L) * (int(mu > 1) + int(beta > 0))
    return 2 * N * fwd + 6 * N * n * (P + L) * mu


def sol_think(completion, prefilled_think):
    text = "<think>" + completion if prefilled_think else completion
    if "<think>" not in text:
        return 0
    return len(text.split("<think>", 1)[1].split("</think>", 1)[0].split())


def test_reference_filter_matches_an_independent_loop():
    comps = ["x", "x", "y", "x", "z", "z"]
    acc, fmt = [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]
    assert checks.reference_rejection_filter(comps, acc, fmt, 3, None) == [1, 2, 3, 4]
    assert checks.reference_rejection_filter(comps, acc, fmt, 3, 1) == [1, 3]
    assert checks.reference_rejection_filter(comps, acc, fmt, 3, None) == sol_filter(comps, acc, fmt, 3, None)


def test_checkers_accept_references_and_solutions():
    assert checks.check_rejection_filter(checks.reference_rejection_filter, raise_on_fail=True)
    assert checks.check_rejection_filter(sol_filter, raise_on_fail=True)
    assert checks.check_grpo_step_flops(grpo_step_flops, raise_on_fail=True)
    assert checks.check_grpo_step_flops(sol_flops, raise_on_fail=True)
    assert checks.check_think_length(think_length, raise_on_fail=True)
    assert checks.check_think_length(sol_think, raise_on_fail=True)


def test_rejection_checker_names_the_mistakes(capsys):
    assert not checks.check_rejection_filter(lambda c, a, f, k, cap: [j for j in range(len(c)) if a[j] >= 1])
    assert "*both* rules" in capsys.readouterr().out
    assert not checks.check_rejection_filter(lambda c, a, f, k, cap: None)
    assert "returned None" in capsys.readouterr().out


def test_flops_checker_names_the_mistakes(capsys):
    def train_2n(N, p, G, P, L, mu, beta):
        n = p * G
        return 2 * N * (p * P + n * L + n * (P + L) * (int(mu > 1) + int(beta > 0))) + 2 * N * n * (P + L) * mu

    assert not checks.check_grpo_step_flops(train_2n)
    assert "6 N" in capsys.readouterr().out


def test_think_checker_names_the_mistakes(capsys):
    assert not checks.check_think_length(lambda c, pre: think_length(c, False))
    assert "prepend" in capsys.readouterr().out
    with pytest.raises(AssertionError):
        checks.check_think_length(lambda c, pre: 0, raise_on_fail=True)
