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


# ------------------------------------------------------------------ derivation: equal compute
def test_equal_compute_steps_right_formulas_pass(capsys):
    def ledger_written_out(k, n_questions, n_samples, acceptance, epochs, prompts_per_step, group_size):
        P, L = 1000, 50  # any student size and completion length: they cancel
        distillation = 2 * k * P * n_questions * n_samples * L + 6 * P * epochs * acceptance * n_questions * n_samples * L
        step = 2 * P * prompts_per_step * group_size * L + 6 * P * prompts_per_step * group_size * L
        return distillation / step

    assert checks.check_equal_compute_steps(checks.equal_compute_steps) is True
    assert checks.check_equal_compute_steps(ledger_written_out, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ equal_compute_steps")


def test_equal_compute_steps_reference_matches_rlcores_ledger():
    """Against rlcore's ComputeLedger for the distillation and grpo_step_flops for one step (prompts of length 0)."""
    from rlcore.llm.distill import ComputeLedger, grpo_step_flops

    P, L = 10_000, 64
    for k, Q, n, a, E, B, G in [(1.0, 96, 4, 0.5, 2, 4, 8), (20.0, 500, 8, 0.25, 3, 16, 8), (3.0, 80, 1, 1.0, 1, 2, 16)]:
        ledger = ComputeLedger()
        ledger.forward(int(k * P), Q * n * L, "teacher generation")
        ledger.train(P, int(E * a * Q * n) * L, "student SFT")
        step = grpo_step_flops(P, B, G, prompt_len=0, completion_len=L, num_iterations=1, beta=0.0)
        assert ledger.flops / step == pytest.approx(float(checks.equal_compute_steps(k, Q, n, a, E, B, G)), rel=1e-9)


@pytest.mark.parametrize("fn,fragment", [
    (lambda k, Q, n, a, E, B, G: Q * n * (1 + 3 * E * a) / (4 * B * G), "teacher's own size"),
    (lambda k, Q, n, a, E, B, G: Q * n * (k + 3 * E * a) / (3 * B * G), "generates its samples"),
    (lambda k, Q, n, a, E, B, G: Q * n * (k + 3 * E) / (4 * B * G), "pass the filter"),
    (lambda k, Q, n, a, E, B, G: Q * n * (k + 3 * a) / (4 * B * G), "each epoch"),
])
def test_equal_compute_steps_mistakes_get_their_hint(fn, fragment, capsys):
    assert checks.check_equal_compute_steps(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_equal_compute_steps_stub_gets_not_implemented(capsys):
    def my_equal_compute_steps(k, n_questions, n_samples, acceptance, epochs, prompts_per_step, group_size):
        ...

    assert checks.check_equal_compute_steps(my_equal_compute_steps) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out
