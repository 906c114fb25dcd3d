"""Chapter 7's exercise checkers (rlcore/exercise_checks/ch07.py): they accept rlcore's reference and an
independent solution, reject the known mistakes, and cover the reward-hacking cases of test_llm_rewards.py."""
import re
from fractions import Fraction

import pytest

from rlcore.exercise_checks import ch07 as checks
from rlcore.llm.rewards import REFLECTION_WORDS, accuracy_reward, is_well_formed, reflection_rate


# ---------------------------------------------------------------- solutions as in the notebook
def sol_format(completion):
    if any(completion.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return 0.0
    m = re.fullmatch(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", completion, re.DOTALL)
    return float(bool(m and m.group(1).strip() and m.group(2).strip()))


def sol_grade(completion, reference):
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end != -1 else -1
    if start == -1:
        return 0.0
    text = completion[start + len("<answer>"):end].strip()
    if not re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", text):
        return 0.0
    return float(Fraction(text) == Fraction(reference))


def sol_reflection(completions, words):
    if not completions:
        return 0.0
    pat = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                     + r")(?![\w-])", re.IGNORECASE)
    return sum(bool(pat.search(c)) for c in completions) / len(completions)


def test_checkers_accept_the_references_and_the_solutions():
    assert checks.check_format_reward(lambda c: float(is_well_formed(c)), raise_on_fail=True)
    assert checks.check_format_reward(sol_format, raise_on_fail=True)
    assert checks.check_answer_grading(lambda c, r: accuracy_reward(None, [c], answer=[r])[0], raise_on_fail=True)
    assert checks.check_answer_grading(sol_grade, raise_on_fail=True)
    assert checks.check_reflection_rate(lambda cs, w: reflection_rate(cs), raise_on_fail=True)
    assert checks.check_reflection_rate(sol_reflection, raise_on_fail=True)


def test_format_checker_rejects_weak_rewards_with_a_hint(capsys):
    assert not checks.check_format_reward(lambda c: float("<answer>" in c))
    out = capsys.readouterr().out
    assert "✗" in out and "weak reward" in out
    assert not checks.check_format_reward(
        lambda c: float(bool(re.search(r"<think>.+?</think>\s*<answer>.+?</answer>", c, re.DOTALL))))
    assert "cover the whole completion" in capsys.readouterr().out
    assert not checks.check_format_reward(lambda c: None)
    assert "returned None" in capsys.readouterr().out


def test_hacking_cases_are_ill_formed_and_good_cases_well_formed():
    # tests/test_llm_rewards.py parametrises its reward-hacking test with these same cases
    assert all(not is_well_formed(c) for _, c in checks.HACKING_CASES)
    assert all(is_well_formed(c) for _, c in checks.GOOD_FORMAT_CASES)


@pytest.mark.parametrize("wrong,hint", [
    (lambda c, r: float(bool(re.search(r"<answer>(.*?)</answer>", c)) and
                        re.search(r"<answer>(.*?)</answer>", c).group(1).strip() == r), "last one"),
    (lambda c, r: float(bool(re.findall(r"<answer>(.*?)</answer>", c)) and
                        r in re.findall(r"<answer>(.*?)</answer>", c)[-1]), "one number"),
])
def test_answer_checker_names_the_mistake(capsys, wrong, hint):
    assert not checks.check_answer_grading(wrong)
    assert hint in capsys.readouterr().out


def test_reflection_checker_rejects_substring_and_counting(capsys):
    assert not checks.check_reflection_rate(lambda cs, w: sum(any(x in c.lower() for x in w) for c in cs) / max(len(cs), 1))
    assert "whole words" in capsys.readouterr().out
    assert not checks.check_reflection_rate(lambda cs, w: float(len(cs)))
    with pytest.raises(AssertionError):
        checks.check_reflection_rate(lambda cs, w: 0.0, raise_on_fail=True)
    assert REFLECTION_WORDS  # the exercise passes this tuple as `words`


# ------------------------------------------------------------------ derivation: zero-variance groups under two rules
def test_zero_variance_share_right_formulas_pass(capsys):
    def four_pairs(p_acc, p_fmt, G):  # every answer of the group has the same pair of rule outcomes
        return sum((a * f) ** G for a in (p_acc, 1 - p_acc) for f in (p_fmt, 1 - p_fmt))

    assert checks.check_zero_variance_share(checks.zero_variance_share) is True
    assert checks.check_zero_variance_share(four_pairs, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ zero_variance_share")


def test_zero_variance_share_reference_matches_simulated_groups():
    """Against simulated groups scored with weights 1 and 0.5, and rlcore's zero-variance detector."""
    import numpy as np
    import torch

    from rlcore.returns import zero_variance_groups

    rng = np.random.default_rng(0)
    for p_acc, p_fmt, G in [(0.1, 0.5, 4), (0.6, 0.9, 8), (0.02, 0.3, 6)]:
        n = 200_000
        acc = rng.random((n, G)) < p_acc
        fmt = rng.random((n, G)) < p_fmt
        rewards = torch.as_tensor(1.0 * acc + 0.5 * fmt).flatten()
        share = float(zero_variance_groups(rewards, group_size=G).float().mean())
        expected = float(checks.zero_variance_share(p_acc, p_fmt, G))
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1e-6


@pytest.mark.parametrize("fn,fragment", [
    (lambda a, f, G: a**G + (1 - a) ** G, "accuracy rule alone"),
    (lambda a, f, G: (a * f) ** G + ((1 - a) * (1 - f)) ** G, "four combinations"),
    (lambda a, f, G: a**G + (1 - a) ** G + f**G + (1 - f) ** G, "not a sum"),
])
def test_zero_variance_share_mistakes_get_their_hint(fn, fragment, capsys):
    assert checks.check_zero_variance_share(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_zero_variance_share_stub_gets_not_implemented(capsys):
    def my_zero_variance_share(p_acc, p_fmt, G):
        ...

    assert checks.check_zero_variance_share(my_zero_variance_share) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out
