"""Rule-based rewards, including reward-hacking cases (rlcore/llm/rewards.py)."""
import functools
import math

import numpy as np
import pytest
import torch

from rlcore.llm.rewards import (REFLECTION_WORDS, RewardFunctionError, accuracy_reward, code_reward,
                                combine_rewards, compute_rewards, countdown_reward, extract_answer,
                                extract_code, extract_think, format_components, format_reward,
                                language_consistency, language_consistency_reward, partial_format_reward,
                                reflection_count, reflection_rate, safe_eval_arithmetic, think_length)
from rlcore.llm.tasks import as_columns, countdown_dataset
from rlcore.exercise_checks.ch07 import HACKING_CASES

GOOD = "<think>\n2 + 3: add the units.\nSo it is 5.\n</think>\n<answer>5</answer>"


def fmt(c, **kw):
    return format_reward(None, [c], **kw)[0]


# ------------------------------------------------------------------ parsing and accuracy
def test_extract_answer_takes_the_last_block():
    assert extract_answer("<answer> 7 </answer>") == "7"
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("no tags here, the answer is 5") is None
    assert extract_answer("<answer>unclosed 5") is None
    assert extract_think(GOOD) == "2 + 3: add the units.\nSo it is 5."
    assert extract_think("reasoning</think><answer>1</answer>", prefilled_think=True) == "reasoning"


@pytest.mark.parametrize("content,expected", [
    ("42", 1.0), ("0042", 1.0), ("42.0", 1.0), (" 42 ", 1.0), ("+42", 1.0),
    ("4 2", 0.0), ("42 apples", 0.0), ("41", 0.0), ("", 0.0), ("42/1", 0.0), ("4.2e1", 0.0),
])
def test_accuracy_numeric_comparison(content, expected):
    assert accuracy_reward(None, [f"<think>x</think><answer>{content}</answer>"], answer=["42"]) == [expected]


def test_accuracy_needs_the_answer_inside_tags():
    assert accuracy_reward(None, ["<think>the answer is 42</think> 42"], answer=["42"]) == [0.0]
    # several answers: only the last is graded, so hedging does not pay
    assert accuracy_reward(None, ["<answer>42</answer><answer>41</answer>"], answer=["42"]) == [0.0]
    assert accuracy_reward(None, ["<answer>-7</answer>", "<answer>x</answer>"], answer=["-7", "x"]) == [1.0, 1.0]


# ------------------------------------------------------------------ strict format
def test_format_accepts_well_formed_completions():
    assert fmt(GOOD) == 1.0
    assert fmt("  <think>a\n\nb</think>   <answer>5</answer>\n<|im_end|>") == 1.0
    assert fmt("2 + 3 = 5</think> <answer>5</answer>", prefilled_think=True) == 1.0
    assert format_reward(None, [GOOD, "x</think><answer>5</answer>"], prefilled_think=[False, True]) == [1.0, 1.0]


# The hacking cases live once, in the chapter-7 exercise checker that students' rewards face too;
# the last case only applies to a prompt prefilled with "<think>".
@pytest.mark.parametrize("name,completion", [
    *HACKING_CASES,
    ("prefill repeated by the model", "<think>t</think><answer>5</answer>"),
])
def test_format_is_not_fooled(name, completion):
    prefilled = name == "prefill repeated by the model"
    assert fmt(completion, prefilled_think=prefilled) == 0.0, name


def test_partial_format_reward_is_shaped_and_consistent():
    cases = [GOOD, "<think>t</think>", "<think></think><answer>5</answer>", "<think>t</think>5",
             "<think>t</think><answer>5</answer> trailing", "<answer>5</answer>", "nothing",
             "<think>t</think> x <answer>5</answer>", "<answer>5</answer><think>t</think>"]
    partial = partial_format_reward(None, cases)
    strict = format_reward(None, cases)
    for c, p, s in zip(cases, partial, strict):
        assert 0.0 <= p <= 1.0
        assert (p == 1.0) == (s == 1.0), c
        assert p == pytest.approx(sum(format_components(c).values()) / 5)
    assert partial[0] == 1.0 and partial[6] == 0.0
    # more structure earns more credit: nothing < think only < think + empty-answer-free answer
    assert partial[6] < partial[1] < partial[4] < partial[0]


# ------------------------------------------------------------------ language consistency
def test_language_consistency_on_mixed_text():
    # English words: First, I, add, and, so, the, sum, is  (8); Korean words: 그러면, 이다 (2); numbers ignored
    text = "First I add 3 and 4, 그러면 so the sum is 7 이다."
    assert language_consistency(text, "en") == pytest.approx(8 / 10)
    assert language_consistency(text, "ko") == pytest.approx(2 / 10)
    # Chinese characters are one word each: Let, me, this (3 English) + 计, 算 (2 Han)
    assert language_consistency("Let me 计算 this", "en") == pytest.approx(3 / 5)
    assert language_consistency("Let me 计算 this", "zh") == pytest.approx(2 / 5)
    assert language_consistency("Это просто check", "ru") == pytest.approx(2 / 3)
    # word list: Wir, und, dann are German function words; "addieren" passes as (ASCII) English
    assert language_consistency("Wir addieren und dann", "en") == pytest.approx(1 / 4)
    assert language_consistency("12 + 30 = 42", "en") == 0.0
    with pytest.raises(ValueError, match="target_lang"):
        language_consistency("x", "klingon")


def test_language_consistency_reward_scores_only_the_thinking():
    completions = ["<think>I add 그리고 check</think><answer>정답 5</answer>",
                   "add them 더하기</think><answer>5</answer>",
                   "<think>모두 한국어</think><answer>5</answer>"]
    r = language_consistency_reward(None, completions, target_lang="en", prefilled_think=[False, True, False])
    assert r == pytest.approx([3 / 4, 2 / 3, 0.0])
    assert language_consistency_reward(None, completions[2:], target_lang="ko") == [1.0]


# ------------------------------------------------------------------ countdown
def test_safe_eval_never_runs_code():
    assert safe_eval_arithmetic("(16 * 3 - 2) - 24") == (22, [16, 3, 2, 24])
    assert safe_eval_arithmetic("7 / 2")[0] == pytest.approx(3.5)
    for bad in ["__import__('os').system('echo hacked')", "2 ** 10", "-3 + 5", "3.0 + 1", "abs(3)",
                "1 / (2 - 2)", "x + 1", "True + 1", "[1, 2]", "1 if 1 else 2", "(" * 300 + "1" + ")" * 300]:
        with pytest.raises(ValueError):
            safe_eval_arithmetic(bad)


def test_countdown_reward():
    kw = {"numbers": [[3, 7, 25]] * 7, "target": [46] * 7}
    completions = [
        "<think>t</think><answer>25 + 3 * 7</answer>",        # right
        "<answer>(25 + 3 * 7) = 46</answer>",                 # right, with "= target"
        "<answer>25 + 21</answer>",                           # wrong numbers
        "<answer>25 + 3 * 7 + 0</answer>",                    # extra number
        "<answer>25 + 7 * 7</answer>",                        # number used twice
        "<answer>__import__('os').getcwd()</answer>",         # code, not arithmetic
        "25 + 3 * 7",                                         # no answer block
    ]
    assert countdown_reward(None, completions, **kw) == [1, 1, 0, 0, 0, 0, 0]
    data = countdown_dataset(20, seed=2)
    wrapped = [f"<think>t</think><answer>{ex.answer}</answer>" for ex in data]
    assert countdown_reward(None, wrapped, **as_columns(data)) == [1.0] * 20
    with pytest.raises(ValueError, match="numbers"):
        countdown_reward(None, completions)


# ------------------------------------------------------------------ code
def test_code_reward_fraction_of_tests_passed():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
    good = "<think>t</think><answer>```python\ndef add(a, b):\n    return a + b\n```</answer>"
    loop = "<answer>```python\ndef add(a, b):\n    while True: pass\n```</answer>"
    io = "```python\nprint(sum(map(int, input().split())))\n```"
    r = code_reward(None, [good, loop, "no code"], tests=[tests, tests[:1], tests], timeout_s=0.5)
    assert r == pytest.approx([2 / 3, 0.0, 0.0])
    assert code_reward(None, [io], tests=[[{"input": "2 3", "output": "5"}, {"input": "1 1", "output": "3"}]]) == [0.5]
    assert extract_code(io).startswith("print(")


# ------------------------------------------------------------------ combining with checks
def test_compute_rewards_weighted_sum_and_logging():
    completions = [GOOD, "<answer>5</answer>", "<think>t</think><answer>4</answer>"]
    prompts = ["q"] * 3
    total, per = compute_rewards([accuracy_reward, format_reward], [1.0, 0.5], prompts, completions,
                                 answer=["5", "5", "5"])
    acc = torch.tensor(accuracy_reward(prompts, completions, answer=["5"] * 3))
    frm = torch.tensor(format_reward(prompts, completions))
    assert torch.allclose(total, acc + 0.5 * frm)
    assert set(per) == {"accuracy_reward", "format_reward"} and torch.equal(per["format_reward"], frm)
    same, per2 = compute_rewards([format_reward, format_reward], None, prompts, completions)
    assert set(per2) == {"format_reward", "format_reward_2"} and torch.allclose(same, 2 * frm)
    combined = combine_rewards([accuracy_reward, format_reward], [1.0, 0.5])
    assert combined(prompts, completions, answer=["5"] * 3) == pytest.approx(total.tolist())
    # numpy arrays and partials are accepted; partial is named after its function
    part = functools.partial(language_consistency_reward, target_lang="en")
    _, per3 = compute_rewards([part, lambda p, c, **k: np.ones(len(c))], None, prompts, completions)
    assert "language_consistency_reward" in per3 and "<lambda>" in per3


def _raises(p, c, **k):
    raise KeyError("answer")


def _short(p, c, **k):
    return [1.0] * (len(c) - 1)


def _none_at_1(p, c, **k):
    return [1.0, None, 1.0]


def _nan_at_2(p, c, **k):
    return [0.0, 1.0, math.nan]


def _returns_none(p, c, **k):
    return None


@pytest.mark.parametrize("func,pattern", [
    (_raises, r"'_raises' raised KeyError"), (_short, r"'_short' returned 2 values for 3"),
    (_none_at_1, r"'_none_at_1' returned None at index 1"), (_nan_at_2, r"'_nan_at_2' returned nan at index 2"),
    (_returns_none, r"'_returns_none' returned NoneType"),
])
def test_compute_rewards_names_the_broken_function(func, pattern):
    with pytest.raises(RewardFunctionError, match=pattern):
        compute_rewards([format_reward, func], None, ["q"] * 3, [GOOD] * 3)


def test_compute_rewards_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        compute_rewards([format_reward], [1.0, 2.0], ["q"], [GOOD])
    with pytest.raises(ValueError, match="prompts"):
        compute_rewards([format_reward], None, ["q"], [GOOD, GOOD])


# ------------------------------------------------------------------ reflection metrics
def test_reflection_metrics():
    completions = ["<think>3 + 4 = 7. Wait, let me check: yes.</think><answer>7</answer>",
                   "<think>Hmm, that was a MISTAKE.</think>",
                   "<think>The waiter checked the menu.</think>",   # no reflection words as whole words
                   "<think>7</think><answer>7</answer>"]
    assert [reflection_count(c) for c in completions] == [2, 2, 0, 0]
    assert reflection_rate(completions) == 0.5
    assert reflection_rate([]) == 0.0
    assert {"wait", "verify", "mistake"} <= set(REFLECTION_WORDS)
    assert think_length(completions[0]) == len("3 + 4 = 7. Wait, let me check: yes.".split())
    assert think_length("one two three</think><answer>x</answer>", prefilled_think=True) == 3
    assert think_length("<think>a b c d (truncated") == 5
    assert think_length("no tags") == 0
