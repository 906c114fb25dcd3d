"""Checkers for chapter 7's exercises (R1-Zero in miniature): a strict format reward that
survives reward hacking, answer extraction with exact grading, and the reflection-word rate; and a
derivation, the share of zero-variance groups under an accuracy and a format rule (a formula, see
:mod:`rlcore.exercise_checks._derivation`).

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first (the reward-hacking
cases of ``tests/test_llm_rewards.py`` among them), then random ones, expected values from
rlcore's reference, and known mistakes with a hint each::

    from rlcore.exercise_checks import ch07 as checks
    checks.check_format_reward(my_format_reward)
"""
from __future__ import annotations

import random
import re
from typing import Callable

from rlcore.exercises import Case, Mistake, check

__all__ = ["GOOD_FORMAT_CASES", "HACKING_CASES", "check_format_reward", "check_answer_grading",
           "check_reflection_rate", "check_zero_variance_share", "zero_variance_share"]

GOOD_FORMAT_CASES = [
    ("well formed", "<think>\n2 + 3: add the units.\nSo it is 5.\n</think>\n<answer>5</answer>"),
    ("well formed, no whitespace", "<think>3+4=7</think><answer>7</answer>"),
    ("whitespace around and between the blocks", "  <think>a\n\nb</think>   <answer>5</answer>\n"),
]
"""Completions a strict format reward must accept (``prefilled_think=False``)."""

HACKING_CASES = [
    ("only the answer tag", "the answer is <answer>"),
    ("answer tag inside the thinking", "<think>I will write <answer>5</answer> later</think>"),
    ("repeated answer blocks", "<think>t</think><answer>5</answer><answer>5</answer>"),
    ("repeated think blocks", "<think>t</think><think>u</think><answer>5</answer>"),
    ("empty thinking", "<think> \n </think><answer>5</answer>"),
    ("empty answer", "<think>t</think><answer>  </answer>"),
    ("tags out of order", "<answer>5</answer><think>t</think>"),
    ("closing before opening", "</think>t<think><answer>5</answer>"),
    ("answer outside the tags", "<think>t</think> 5 <answer>5</answer>"),
    ("text before think", "Sure! <think>t</think><answer>5</answer>"),
    ("nested tags", "<think>t<answer>4</answer></think><answer>5</answer>"),
    ("nested answer", "<think>t</think><answer><answer>5</answer></answer>"),
    ("text after the answer", "<think>t</think><answer>5</answer> Hope this helps!"),
    ("missing think", "<answer>5</answer>"),
    ("unclosed think", "<think>t<answer>5</answer>"),
]
"""Reward-hacking completions a strict format reward must score 0 (the hacking cases of
``tests/test_llm_rewards.py::test_format_is_not_fooled`` written without a prefilled ``<think>``,
plus two that fool "contains <answer>")."""


def _strict(completion: str) -> float:
    from rlcore.llm.rewards import is_well_formed

    return float(is_well_formed(completion))


def _random_completions(n: int, seed: int) -> list[str]:
    """Random strings over the tags and a few characters: mostly malformed, some well formed."""
    rng = random.Random(seed)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "7", "x ", " ", "\n"]
    out = []
    for _ in range(n):
        if rng.random() < 0.3:  # a well-formed skeleton with random contents
            out.append(f"<think>{rng.choice(['a', ' b ', '1+1', ''])}</think>{rng.choice(['', ' '])}"
                       f"<answer>{rng.choice(['2', ' 3 ', ''])}</answer>{rng.choice(['', ' ', '!'])}")
        else:
            out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
    return out


def check_format_reward(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-07-format: ``fn(completion) -> float`` is 1.0 for a strictly well-formed
    completion and 0.0 otherwise (eq-r1-format-reward): exactly one non-empty ``<think>``
    block, then exactly one non-empty ``<answer>`` block, and nothing but whitespace before,
    between and after. The completion includes its opening ``<think>`` (no prefill).
    Reference: :func:`rlcore.llm.rewards.is_well_formed`."""
    cases = [Case({"completion": c}, 1.0, label) for label, c in GOOD_FORMAT_CASES]
    cases += [Case({"completion": c}, 0.0, "reward hacking: " + label) for label, c in HACKING_CASES]
    cases += [Case({"completion": c}, _strict(c), f"random completion {i + 1}")
              for i, c in enumerate(_random_completions(30, seed=7))]

    def contains_answer(completion):
        return float("<answer>" in completion)

    def both_tags(completion):
        return float("<think>" in completion and "<answer>" in completion)

    def regex_search(completion):  # no anchoring: text around the blocks passes
        return float(bool(re.search(r"<think>.+?</think>\s*<answer>.+?</answer>", completion, re.DOTALL)))

    def no_count(completion):  # anchored, but does not count the tags
        return float(bool(re.fullmatch(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", completion, re.DOTALL)))

    mistakes = [
        Mistake(regex_search, "a search finds the pattern anywhere, so text before or after the blocks (or a "
                              "second block) passes: the pattern must cover the whole completion, and each tag "
                              "must appear once."),
        Mistake(no_count, "a pattern anchored at both ends can still swallow extra tags (nested or repeated "
                          "blocks) or accept empty blocks: require each tag exactly once and contents that are "
                          "not only whitespace."),
        Mistake(both_tags, "the tags being present is not enough: check their order, that each appears exactly "
                           "once, and that nothing else is outside the blocks."),
        Mistake(contains_answer, "checking that '<answer>' appears is exactly the weak reward the chapter "
                                 "hacked: require the whole completion to be <think>...</think><answer>...</answer>."),
    ]
    return check(fn, cases, "format_reward", raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-07-format",
                 hint="reread eq-r1-format-reward and the hacking cases above: each of the four tags exactly once, "
                      "in the right order, both blocks with real content, and nothing but whitespace outside "
                      "them; check the *whole* completion, not a part of it.")


# --------------------------------------------------------------------- answer extraction and grading
def _grade(completion: str, reference: str) -> float:
    from rlcore.llm.rewards import accuracy_reward

    return accuracy_reward(None, [completion], answer=[reference])[0]


def check_answer_grading(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-07-answer: ``fn(completion, reference) -> float`` extracts the content of the
    **last** ``<answer>...</answer>`` block and returns 1.0 when it is one number equal to the
    integer ``reference`` (``"0042"``, ``" 42 "``, ``"42.0"`` count; ``"42 apples"``, ``"4 2"``
    and an answer outside the tags do not), else 0.0 (eq-r1-accuracy-reward).
    Reference: :func:`rlcore.llm.rewards.accuracy_reward`."""
    hand = [
        ("<think>t</think><answer>42</answer>", "42", "a plain correct answer"),
        ("<think>t</think><answer>41</answer>", "42", "a wrong answer"),
        ("<think>t</think><answer> 0042 </answer>", "42", "leading zeros and spaces: still the number 42"),
        ("<think>t</think><answer>42.0</answer>", "42", "42.0 is the number 42"),
        ("<think>t</think><answer>-7</answer>", "-7", "a negative answer"),
        ("<think>the answer is 42</think> 42", "42", "no answer block: 0, even though 42 is written"),
        ("<answer>42</answer><answer>41</answer>", "42", "two answers: only the last is graded"),
        ("<answer>41</answer><answer>42</answer>", "42", "two answers: only the last is graded"),
        ("<think>t</think><answer>42 apples</answer>", "42", "the answer must be one number, nothing else"),
        ("<think>t</think><answer>4 2</answer>", "42", "'4 2' is not a number"),
        ("<think>t</think><answer>42", "42", "an unclosed answer block does not count"),
        ("<think>t</think><answer></answer>", "0", "an empty answer is wrong"),
        ("<think>t</think><answer>1,000</answer>", "1000", "'1,000' is not one number"),
    ]
    cases = [Case({"completion": c, "reference": r}, _grade(c, r), label) for c, r, label in hand]
    rng = random.Random(3)
    for i in range(12):
        ref = str(rng.randint(-50, 200))
        guess = rng.choice([ref, str(int(ref) + 1), "0" + ref.lstrip("-") if not ref.startswith("-") else ref,
                            f"{ref}.0", f"{ref} ", "x"])
        pre = rng.choice(["", "<answer>9</answer>", "<think>t</think>", "<think>so 9</think>"])
        c = f"{pre}<answer>{guess}</answer>" if rng.random() < 0.85 else f"{pre} {guess}"
        cases.append(Case({"completion": c, "reference": ref}, _grade(c, ref), f"random case {i + 1}"))

    def first_block(completion, reference):
        m = re.search(r"<answer>(.*?)</answer>", completion, re.DOTALL)
        return float(m is not None and m.group(1).strip() == reference)

    def string_equal(completion, reference):
        m = re.findall(r"<answer>(.*?)</answer>", completion, re.DOTALL)
        return float(bool(m) and m[-1].strip() == reference)

    def substring(completion, reference):
        m = re.findall(r"<answer>(.*?)</answer>", completion, re.DOTALL)
        return float(bool(m) and reference in m[-1])

    mistakes = [
        Mistake(first_block, "you graded the first <answer> block; grade the last one, so writing several "
                             "answers cannot hedge."),
        Mistake(string_equal, "compare numbers, not strings: '0042' and '42.0' are the number 42 "
                              "(compare them exactly, as rational numbers, once you know the text is one number)."),
        Mistake(substring, "'42 apples' contains 42 but is not the answer 42: the whole block must be one number."),
    ]
    return check(fn, cases, "answer_grading", raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-07-answer",
                 hint="reread eq-r1-accuracy-reward: only the content of the *last* complete answer block counts; "
                      "it must be one number (a sign and a decimal point allowed, nothing else) and it is compared "
                      "with the reference as a number, exactly, not as a string.")


# --------------------------------------------------------------------- reflection rate
def check_reflection_rate(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-07-reflection: ``fn(completions, words) -> float`` is the share of completions
    that contain at least one of ``words`` as a whole word or phrase, ignoring case ("Wait,"
    counts, "waiting" and "checkpoint" do not). ``words`` is
    :data:`rlcore.llm.rewards.REFLECTION_WORDS`. Reference: :func:`rlcore.llm.rewards.reflection_rate`."""
    from rlcore.llm.rewards import REFLECTION_WORDS, reflection_rate

    words = tuple(REFLECTION_WORDS)

    def case(completions, label):
        return Case({"completions": list(completions), "words": words}, reflection_rate(completions), label)

    cases = [
        case(["<think>3 + 4 = 7</think><answer>7</answer>"], "no reflection at all"),
        case(["Wait, 3 + 4 is 7.", "3 + 4 = 7"], "'Wait,' with a capital and a comma counts"),
        case(["wait wait wait, check, verify", "7"], "a share of completions, not a count of words"),
        case(["I am waiting for the result", "a checkpoint was saved"], "'waiting' and 'checkpoint' are not 'wait'/'check'"),
        case(["Let me double-check: 7.", "Let me try again: 7."], "phrases count as a whole"),
        case(["HMM. 7", "so 7", "ok 7", "Actually 8"], "case does not matter"),
        case([], "no completions: 0.0"),
    ]
    rng = random.Random(11)
    vocab = ["so", "7", "the", "sum", "is", "carry", "waiting", "checks", "Wait", "verify,", "mistake.", "ok", "recheck"]
    for i in range(6):
        comps = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 8))]
        cases.append(case(comps, f"random batch {i + 1}"))

    def substring(completions, words):
        if not completions:
            return 0.0
        return sum(any(w in c.lower() for w in words) for c in completions) / len(completions)

    def counts(completions, words):
        if not completions:
            return 0.0
        pat = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in words) + r")(?![\w-])", re.IGNORECASE)
        return sum(len(pat.findall(c)) for c in completions) / len(completions)

    def case_sensitive(completions, words):
        if not completions:
            return 0.0
        pat = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in words) + r")(?![\w-])")
        return sum(bool(pat.search(c)) for c in completions) / len(completions)

    mistakes = [
        Mistake(substring, "plain substring search counts 'waiting' as 'wait' and 'checkpoint' as 'check': "
                           "match whole words and phrases only."),
        Mistake(counts, "you counted reflection words per completion; the rate is the share of completions "
                        "with at least one."),
        Mistake(case_sensitive, "ignore case: 'Wait' and 'HMM' are reflection words too."),
    ]
    return check(fn, cases, "reflection_rate", raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-07-reflection",
                 hint="reread eq-reflection-rate: a completion counts when it contains one of the words or phrases "
                      "as a whole word, in any case ('Wait,' yes, 'waiting' no); the rate is the share of such "
                      "completions, and 0.0 when there are none.")


# --------------------------------------------------------------------- derivation: groups without signal
def zero_variance_share(p_acc, p_fmt, G):
    """The reference: the probability that all ``G`` rewards of a group are equal when each answer is correct
    with probability ``p_acc`` and well formed with probability ``p_fmt``, independently of each other and of
    the other answers, and the reward is ``w_acc r_acc + w_fmt r_fmt`` with distinct positive weights (so the
    four combinations give four different rewards). The group is constant exactly when both rules are."""
    return (p_acc**G + (1 - p_acc) ** G) * (p_fmt**G + (1 - p_fmt) ** G)


def check_zero_variance_share(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-07-zero-variance: ``fn(p_acc, p_fmt, G)``, called with sympy symbols (``G`` a positive
    integer), returns :func:`zero_variance_share` as a formula; compared at hand-made and random points."""
    import numpy as np
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    p_acc, p_fmt = sp.symbols("p_acc p_fmt", positive=True)
    G = sp.Symbol("G", integer=True, positive=True)
    symbols = {"p_acc": p_acc, "p_fmt": p_fmt, "G": G}
    reference = zero_variance_share(p_acc, p_fmt, G)

    def pt(a, f, g):
        return {"p_acc": a, "p_fmt": f, "G": g}

    points = [(pt(0.5, 0.5, 2), "two coin flips per answer, a group of two"),
              (pt(0.01, 0.02, 8), "a model that is almost never right and almost never well formed"),
              (pt(0.01, 0.9, 8), "rarely right, usually well formed"),
              (pt(0.3, 0.99, 16), "a group of sixteen")]
    rng = np.random.default_rng(7)
    points += [(pt(float(np.round(rng.uniform(0.01, 0.99), 3)), float(np.round(rng.uniform(0.01, 0.99), 3)),
                   int(rng.integers(2, 33))), f"random point {i + 1}") for i in range(8)]
    mistakes = [
        (p_acc**G + (1 - p_acc) ** G,
         "that is the share for the accuracy rule alone; with the format rule in the reward, a group whose "
         "accuracies are all equal still has signal when the formats differ."),
        ((p_acc * p_fmt) ** G + ((1 - p_acc) * (1 - p_fmt)) ** G,
         "a group is also constant when every answer is correct but badly formatted, or well formatted but wrong: "
         "four combinations of the two rules, not two."),
        (p_acc**G + (1 - p_acc) ** G + p_fmt**G + (1 - p_fmt) ** G,
         "a group has no signal only when *both* rules are constant across it, and for independent rules the "
         "probability of both events is a product, not a sum."),
        ((p_acc + p_fmt) ** G,
         "count the groups in which every answer gets the same pair of rule outcomes; each pair has its own "
         "probability per answer."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "zero_variance_share",
        hint="with distinct weights the reward of eq-r1-total-reward determines both rule outcomes, so all G "
             "rewards are equal exactly when the G accuracies are all equal and the G formats are all equal; use "
             "the independence of the answers and of the two rules.",
        exercise="ex-07-zero-variance", mistakes=mistakes, raise_on_fail=raise_on_fail)
