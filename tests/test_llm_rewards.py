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
                                reflection_count, reflection_rate, safe_eval_arithmetic, split_words,
                                think_length)
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
    # English words: First, add, and, so, the, sum, is (7); Korean words: 그러면, 이다 (2); numbers are
    # neutral, and so is the single letter "I" (single Latin letters are variables: x, y, a, ...)
    text = "First I add 3 and 4, 그러면 so the sum is 7 이다."
    assert language_consistency(text, "en") == pytest.approx(7 / 9)
    assert language_consistency(text, "ko") == pytest.approx(2 / 9)
    # Chinese characters are one word each: Let, me, this (3 English) + 计, 算 (2 Han)
    assert language_consistency("Let me 计算 this", "en") == pytest.approx(3 / 5)
    assert language_consistency("Let me 计算 this", "zh") == pytest.approx(2 / 5)
    assert language_consistency("Это просто check", "ru") == pytest.approx(2 / 3)
    # German: "Wir", "und", "dann" are German words and "addieren" is no English word at all (the former
    # word list let "addieren" pass as English, for 1/4)
    assert language_consistency("Wir addieren und dann", "en") == 0.0
    assert language_consistency("Wir addieren und dann", "de") == 1.0
    assert language_consistency("12 + 30 = 42", "en") == 0.0
    with pytest.raises(ValueError, match="target_lang"):
        language_consistency("x", "klingon")


def test_language_consistency_reward_scores_only_the_thinking():
    completions = ["<think>I add 그리고 check</think><answer>정답 5</answer>",
                   "add them 더하기</think><answer>5</answer>",
                   "<think>모두 한국어</think><answer>5</answer>"]
    r = language_consistency_reward(None, completions, target_lang="en", prefilled_think=[False, True, False])
    assert r == pytest.approx([2 / 3, 2 / 3, 0.0])  # "I" is neutral: add, check (English) and 그리고
    assert language_consistency_reward(None, completions[2:], target_lang="ko") == [1.0]


# Labelled examples: what the reward must give (targets of the hardening issue), in the styles chapter 8
# uses (sft.cot_trace, sft.mix_languages) and in the styles a policy could game it with.
ENGLISH = [
    "First add the ones: 8 + 4 = 12, write 2 and carry 1.",
    "ones 7+0=7 write 7\ntens 4+5=9 write 9",
    "We need 36 + 80.\nAdd the ones: 6 + 0 = 6, write 6.\nAdd the tens: 3 + 8 = 11, write 1 and carry 1.\n"
    "Bring down the last carry 1.\nSo 36 + 80 = 116.",
    "Wait, let me check that again: 36 + 80 = 116, so the answer is 116.",
    "Hmm, that was a mistake. I should have subtracted instead of adding.",
    "We need to find x such that 3x + 4 = 19, so x = 5.",
    "It's easy: we don't need to carry here, because 4 + 3 is only 7.",
    "The quotient is 12 with remainder 3, so the divisor is 5.",
    "Add the ones then the tens", "So the answer is 12", "carry the one",
]
NOT_ENGLISH = {
    "keyboard mash": ["asdkjh qwpoeiru zxcmvn", "qwerty uiop asdf ghjkl", "jfkdls ghtyru bnvmcx", "asd qwe zxc"],
    "German": ["Zuerst addieren wir die Einer: 7 + 5 = 12, wir schreiben 2 und merken uns 1.",
               "Moment, ich prüfe das noch einmal: die Summe ist richtig.", "Das Ergebnis ist 12",
               "Wir addieren zuerst die Einer und dann die Zehner, das Ergebnis ist zwölf."],
    "French": ["D'abord, on additionne les unités : 7 + 5 = 12, on écrit 2 et on retient 1.",
               "La réponse est douze, parce que sept plus cinq font douze.", "Le résultat est 12"],
    "Spanish": ["Primero sumamos las unidades: 7 + 5 = 12, escribimos 2 y llevamos 1.",
                "Espera, lo compruebo otra vez: la suma es correcta.", "El resultado es 12"],
    "Chinese": ["首先把个位相加：7 + 5 = 12，写 2 进 1。", "答案是十二"],
}
CODE = ["```python\ndef add(a, b):\n    return a + b\n```",
        "```\nfor i in range(10):\n    total += i\nprint(total)\n```",
        "```js\nconst sum = numbers.reduce((a, b) => a + b, 0);\nconsole.log(sum);\n```",
        "```python\nwhile True:\n    answer = input()",  # never closed: code to the end
        "Use `total = first + second` and `print(total)`"]


@pytest.mark.parametrize("text", ENGLISH)
def test_language_consistency_clean_english(text):
    assert language_consistency(text, "en") >= 0.9, text


@pytest.mark.parametrize("kind,text", [(k, t) for k, ts in NOT_ENGLISH.items() for t in ts])
def test_language_consistency_not_english(kind, text):
    assert language_consistency(text, "en") <= 0.2, (kind, text)


@pytest.mark.parametrize("text", CODE)
def test_language_consistency_code_is_not_prose(text):
    assert language_consistency(text, "en") <= 0.3, text


def test_language_consistency_mixes():
    from rlcore.llm import sft, tasks

    # 50/50: as many English words as Chinese characters
    assert language_consistency("Add the 个位 then the 十位", "en") == pytest.approx(0.5)
    assert language_consistency("Add the 个位 then the 十位", "zh") == pytest.approx(0.5)
    half = "We add the ones first 我们先把个位相加 and then the tens 然后十位"
    assert language_consistency(half, "en") == pytest.approx(0.5, abs=0.1)
    assert language_consistency(half, "zh") == pytest.approx(0.5, abs=0.1)
    # the mixed traces of chapter 8's cold start
    q = tasks.arithmetic_dataset(1, digits=2, seed=3)[0]
    trace = sft.cot_trace(q, prefilled_think=False, style="words")
    mixed = sft.mix_languages(trace)
    assert language_consistency_reward(None, [trace]) == [1.0]
    english, chinese = 0, 0
    for word, script in split_words(mixed.split("<think>")[1].split("</think>")[0]):
        english += script == "latin"
        chinese += script == "han"
    assert language_consistency_reward(None, [mixed]) == [pytest.approx(english / (english + chinese))]
    assert language_consistency_reward(None, [mixed], target_lang="zh") == [pytest.approx(chinese / (english + chinese))]
    # English mixed with German or French in one sentence: the English half counts
    assert 0.4 <= language_consistency("First we add die Einer, then we add die Zehner.", "en") <= 0.75
    assert 0.4 <= language_consistency("First add les unités, then add les dizaines.", "en") <= 0.75
    # prose with a code block: the code's words count against the share
    prose = "First add the ones, then the tens, and write the sum."
    with_code = prose + "\n```python\nresult = first + second\nprint(result)\n```"
    assert language_consistency(prose) == 1.0
    assert language_consistency(with_code) < 0.75


def test_language_consistency_neutral_tokens_and_other_targets():
    assert language_consistency("12 + 34 = 46", "en") == 0.0  # no words at all: no evidence, no reward
    assert language_consistency("x + y = 7, so x = 3", "en") == 1.0  # variables are neutral: only "so" counts
    assert language_consistency("7 + 5 = 12, donc le résultat est 12", "fr") == 1.0
    assert language_consistency("Zuerst addieren wir die Einer", "de") == 1.0
    assert language_consistency("First add the ones", "de") <= 0.25
    # invisible characters do not split or hide words; fullwidth letters are letters
    assert language_consistency("ca\u200brry the o\u00adnes", "en") == 1.0
    assert language_consistency("ｃａｒｒｙ the ones", "en") == 1.0


def test_language_consistency_is_fast_enough_for_a_grpo_step():
    import random
    import time

    rng = random.Random(0)
    pool = (" ".join(ENGLISH) + " " + " ".join(NOT_ENGLISH["German"])).split()
    batch = ["<think>" + " ".join(rng.choice(pool) for _ in range(100)) + "</think><answer>5</answer>"
             for _ in range(64)]
    language_consistency_reward(None, batch[:1])  # loads the word lists once
    t0 = time.perf_counter()
    language_consistency_reward(None, batch)
    assert time.perf_counter() - t0 < 1.0  # about 0.02 s on the 2-core CPU


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
    from rlcore.llm.sandbox import sandbox_info

    # strict where this host can raise the sandbox's walls, else the named weaker mode (strict would refuse)
    iso = "strict" if sandbox_info("strict")["available"] else "weak"
    r = code_reward(None, [good, loop, "no code"], tests=[tests, tests[:1], tests], timeout_s=0.5, isolation=iso)
    assert r == pytest.approx([2 / 3, 0.0, 0.0])
    io_tests = [[{"input": "2 3", "output": "5"}, {"input": "1 1", "output": "3"}]]
    assert code_reward(None, [io], tests=io_tests, isolation=iso) == [0.5]
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
