"""Rewards a model cannot game (rlcore/llm/rewards.py): every reward and parser returns a valid value
for ANY string (property-based, with hypothesis), normalises Unicode before it reads numbers and
emptiness, and runs in time linear in the length of the completion."""
import time
import unicodedata
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlcore.llm import rewards as R

# ------------------------------------------------------------------ the functions under test
N_ITEMS = 1  # one completion per call: the reward functions are applied element-wise


def _acc(c):
    return R.accuracy_reward(None, [c], answer=["42"])[0]


def _acc_text(c):
    return R.accuracy_reward(None, [c], answer=["x + 1"])[0]


def _lenient(c):
    return R.lenient_accuracy_reward(None, [c], answer=["-7"])[0]


def _format(c):
    return R.format_reward(None, [c])[0]


def _format_prefilled(c):
    return R.format_reward(None, [c], prefilled_think=True)[0]


def _partial(c):
    return R.partial_format_reward(None, [c])[0]


def _countdown(c):
    return R.countdown_reward(None, [c], numbers=[[3, 7, 25]], target=[46])[0]


def _lang_en(c):
    return R.language_consistency_reward(None, [c], target_lang="en")[0]


def _lang_zh(c):
    return R.language_consistency_reward(None, [c], target_lang="zh", prefilled_think=True)[0]


REWARDS = {  # name -> (function, the values it may return)
    "accuracy": (_acc, {0.0, 1.0}), "accuracy_text": (_acc_text, {0.0, 1.0}), "lenient": (_lenient, {0.0, 1.0}),
    "format": (_format, {0.0, 1.0}), "format_prefilled": (_format_prefilled, {0.0, 1.0}),
    "partial_format": (_partial, {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}), "countdown": (_countdown, {0.0, 1.0}),
    "language_en": (_lang_en, None), "language_zh": (_lang_zh, None),
}


def check_value(name, value):
    func, allowed = REWARDS[name]
    assert type(value) is float, (name, value)
    assert 0.0 <= value <= 1.0, (name, value)
    if allowed is not None:
        assert any(abs(value - a) < 1e-12 for a in allowed), (name, value)


def check_parsers(text, langs=("en", "zh", "de", "ko")):
    """Every parser on ``text``: the documented type, no exception."""
    a = R.extract_answer(text)
    assert a is None or isinstance(a, str)
    t = R.extract_think(text)
    assert t is None or isinstance(t, str)
    t2 = R.extract_think(text, prefilled_think=True)
    assert isinstance(t2, str) or t2 is None
    n = R.parse_number(text)
    assert n is None or isinstance(n, Fraction)
    assert isinstance(R.answers_match(text, "42"), bool)
    assert isinstance(R.answers_match(text, text), bool)
    assert isinstance(R.is_well_formed(text), bool)
    comps = R.format_components(text)
    assert set(comps) == {"think_block", "think_nonempty", "answer_block", "answer_nonempty", "nothing_outside"}
    assert all(isinstance(v, bool) for v in comps.values())
    assert isinstance(R.reflection_count(text), int) and R.reflection_count(text) >= 0
    assert isinstance(R.think_length(text), int) and R.think_length(text) >= 0
    assert isinstance(R.countdown_score(text, [3, 7, 25], 46), float)
    for lang in langs:
        v = R.language_consistency(text, lang)
        assert type(v) is float and 0.0 <= v <= 1.0
    assert isinstance(R.normalize_text(text), str)
    assert isinstance(R.is_blank(text), bool)


def check_everything(text, repeat=True, langs=("en", "zh", "de", "ko")):
    """Every reward and parser on ``text``: valid values, no exception, and (``repeat``) the same value twice."""
    for name, (func, _) in REWARDS.items():
        v1 = func(text)
        check_value(name, v1)
        if repeat:
            assert func(text) == v1, f"{name} is not deterministic"
    check_parsers(text, langs)


# ------------------------------------------------------------------ strategies
ANY_CHAR = st.characters(exclude_categories=())  # every category, lone surrogates included
PIECES = [
    "<think>", "</think>", "<answer>", "</answer>", "<|im_end|>", "</s>", "<think", "answer>", "<", ">", "/",
    "42", "-7", "\u22127", "\u2013", "\uff0d7", "\uff14\uff12", "\uff0b", "+", "-", ".", "=", "/", "*", "(", ")",
    "25 + 3 * 7", "3", "7", "25", "9" * 1200, "0" * 999 + "42", "1e5", "1,000",
    "\u200b", "\u200d", "\ufeff", "\u00ad", "\u2060", "\u3000", "\xa0", " ", "\n", "\t", "\x00", "\ud800", "\udfff",
    "\u115f", "\u3164", "\u2800", "\u0301", "\ufe0f",
    "```", "```python\n", "`", "def f(x):", "return x",
    "carry", "the", "ones", "Add", "wait", "check", "und", "die", "les", "el", "asdkjh", "qwpoeiru", "x",
    "\u4e2a\u4f4d", "\u5199", "\uc77c\uc758", "\u0447\u0438\u0441\u043b\u043e", "caf\u00e9", "\U0001f600",
]
ADVERSARIAL = st.lists(st.one_of(st.sampled_from(PIECES), st.text(ANY_CHAR, max_size=8)), max_size=40).map("".join)
ARBITRARY = st.text(ANY_CHAR, max_size=200)
FAST = settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FAST
@given(ARBITRARY)
def test_every_reward_on_arbitrary_text(text):
    check_everything(text)


@FAST
@given(ADVERSARIAL)
def test_every_reward_on_adversarial_structures(text):
    check_everything(text)


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(ADVERSARIAL, min_size=1, max_size=6))
def test_batches_are_elementwise(completions):
    """A batch gives the same values as its completions one by one (no state leaks between them)."""
    n = len(completions)
    for name, func in [("accuracy", lambda c: R.accuracy_reward(None, c, answer=["42"] * n)),
                       ("format", lambda c: R.format_reward(None, c)),
                       ("language_en", lambda c: R.language_consistency_reward(None, c))]:
        single = REWARDS[name][0]
        assert func(completions) == [single(c) for c in completions]


# ------------------------------------------------------------------ huge and odd inputs
def one_char_of_every_category():
    seen = {}
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))
        seen.setdefault(cat, chr(cp))
    return seen


def test_every_unicode_category():
    cats = one_char_of_every_category()
    assert len(cats) == 30  # all general categories, Cs (lone surrogates) and Cn (unassigned) included
    blob = "".join(cats.values())
    for text in [blob, f"<think>{blob}</think><answer>{blob}</answer>", *cats.values(),
                 *(f"<think>{c}</think><answer>{c}</answer>" for c in cats.values())]:
        check_everything(text)


@pytest.mark.parametrize("text", [
    "9" * 100_000, "<answer>" + "9" * 100_000 + "</answer>", "<answer>-" + "1" * 5000 + "." + "0" * 5000 + "</answer>",
    "<think>" + "x " * 500_000 + "</think><answer>42</answer>",  # 1 MB
    "<answer>" * 100_000, "</answer>" * 100_000, "<think>" * 100_000, "<|im_end|>" * 100_000,
    "\x00" * 1_000_000, "\ud800" * 100_000, "\u200b" * 1_000_000,
    "<answer>" + "\uff19" * 200_000 + "</answer>",  # fullwidth digits: NFKC makes them 200k ASCII digits
], ids=["digits", "answer-digits", "long-decimal", "1MB-think", "open", "close", "think", "eos", "nul",
        "surrogates", "zwsp", "fullwidth"])
def test_huge_inputs(text):
    check_everything(text, repeat=False, langs=("de",))


def test_non_strings_raise_a_clear_type_error():
    for bad in (None, b"<answer>42</answer>", 42):
        with pytest.raises(TypeError, match="must be a str"):
            R.accuracy_reward(None, [bad], answer=["42"])
        with pytest.raises(TypeError, match="decode"):
            R.format_reward(None, [bad])
        with pytest.raises(TypeError, match="must be a str"):
            R.language_consistency_reward(None, [bad])
        with pytest.raises(TypeError, match="must be a str"):
            R.extract_think(bad)


# ------------------------------------------------------------------ the rules
def test_number_length_rule():
    limit = R.MAX_NUMBER_DIGITS
    assert R.parse_number("7" * limit) == int("7" * limit)
    assert R.parse_number("7" * (limit + 1)) is None                 # too long: not a number
    assert R.parse_number("0" * limit + "7") is None                 # leading zeros count
    assert R.parse_number("1." + "0" * (limit - 1)) == 1
    assert _acc("<answer>" + "0" * (limit - 2) + "42</answer>") == 1.0
    assert _acc("<answer>" + "0" * limit + "42</answer>") == 0.0
    assert R.answers_match("9" * 100_000, "9" * 100_000) is False       # even when equal: rejected, never raised


@pytest.mark.parametrize("written", [
    "\u22127", "\u20137", "\u20147", "\u20127", "\u20107", "\u20117", "\ufe637", "\uff0d7", "\u27967",
    "\u207b7", "\u02d77", "\uff0d\uff17", "-\u200b7", "\u22127\u00ad", " \u22127 ",
])
def test_unicode_minus_signs(written):
    assert R.parse_number(written) == -7, written
    assert _acc(f"<answer>{written}</answer>".replace("42", "")) == 0.0  # the reference is 42, not -7
    assert R.accuracy_reward(None, [f"<answer>{written}</answer>"], answer=["-7"]) == [1.0]
    assert _lenient(f"so it is {written}") == 1.0


@pytest.mark.parametrize("written,value", [
    ("\uff14\uff12", 42), ("\uff0b\uff14\uff12", 42), ("4\u200b2", 42), ("\ufeff42", 42), ("\u0664\u0662", 42),
    ("\uff14\uff12\uff0e\uff10", 42), ("\u00b2", 2), ("\U0001d7d2", 4), ("\u2167", None), ("\u00bd", None), ("4 2", None), ("4\u30002", None),
])
def test_unicode_digits(written, value):
    assert R.parse_number(written) == value, written


@pytest.mark.parametrize("invisible", [
    "", " ", "\n\t ", "\u200b", "\u200c\u200d", "\ufeff", "\u00ad", "\u2060\u2061", "\u3000", "\xa0",
    "\u180e", "\U000e0041", "\u115f", "\u3164", "\uffa0", "\u2800", "\u034f", "\ufe0f", "\x00", "\ud800",
    " \u200b\n\ufeff\u3000 ",
])
def test_invisible_blocks_are_empty(invisible):
    assert R.is_blank(invisible)
    assert _format(f"<think>{invisible}</think><answer>5</answer>") == 0.0
    assert _format(f"<think>t</think><answer>{invisible}</answer>") == 0.0
    comps = R.format_components(f"<think>{invisible}</think><answer>5</answer>")
    assert comps["think_block"] and not comps["think_nonempty"]
    assert _partial(f"<think>{invisible}</think><answer>5</answer>") == pytest.approx(0.8)
    assert R.extract_think(f"<think>{invisible}</think>") == ""
    assert _acc(f"<think>t</think><answer>{invisible}</answer>") == 0.0


@pytest.mark.parametrize("visible", ["a", "5", ".", "+", "\u4e2a", "\U0001f600", "\u00e9", "e\u0301", "\u0301", "\ue000"])
def test_visible_blocks_are_not_empty(visible):
    assert not R.is_blank(visible)
    assert _format(f"<think>{visible}</think><answer>5</answer>") == 1.0


def test_normalisation_does_not_create_tags():
    """Tags are read literally: compatibility forms of '<' and '>' do not open a block."""
    assert R.extract_answer("\uff1canswer\uff1e42\uff1c/answer\uff1e") is None
    assert _format("\ufe64think\ufe65t\ufe64/think\ufe65<answer>5</answer>") == 0.0


# ------------------------------------------------------------------ linear time
SMALL, LARGE = 1_500, 24_000  # characters (16x); both under 30 000, above which str.find changes algorithm


def fill(piece, n, head="", tail=""):
    return head + piece * max(1, (n - len(head) - len(tail)) // len(piece)) + tail


ADVERSARIAL_BUILDERS = {  # n -> an adversarial string of about n characters
    "open answer": lambda n: fill("<answer>", n),
    "close answer": lambda n: fill("</answer>", n),
    "answer pairs": lambda n: fill("<answer>1", n, tail="</answer>"),
    "open think": lambda n: fill("<think>", n),
    "close think": lambda n: fill("</think>", n),
    "think answer": lambda n: fill("<think><answer>", n),
    "eos": lambda n: fill("<|im_end|> ", n),
    "digits": lambda n: fill("9", n, "<answer>", "</answer>"),
    "decimals": lambda n: fill("1.", n, "<answer>"),
    "equals": lambda n: fill("=", n, "<answer>", "</answer>"),
    "invisible": lambda n: fill("\u200b\u00ad", n, "<think>", "</think><answer>5</answer>"),
    "marks": lambda n: fill("\u0301\u0316", n, "<think>a", "</think><answer>a</answer>"),  # NFKC sorts these
    "tibetan": lambda n: fill("\u0f73", n, "<answer>", "</answer>"),  # decomposes into marks out of order
    "fences": lambda n: fill("``` a", n, "<think>"),
    "mixed scripts": lambda n: fill("ab\u4e2a1-", n, "<think>"),
    "reflection": lambda n: fill("wait ", n),
}
LINEAR_FUNCS = {  # one function per code path (accuracy_text, format_prefilled, language_zh share theirs)
    "extract_answer": R.extract_answer, "extract_think": R.extract_think, "parse_number": R.parse_number,
    "answers_match": lambda s: R.answers_match(s, "42"), "reflection_count": R.reflection_count,
    "think_length": R.think_length, "accuracy": _acc, "lenient": _lenient, "format": _format,
    "partial_format": _partial, "countdown": _countdown, "language": _lang_en,
}


def _cpu_time(func, text, reps):
    """CPU time of this thread for ``reps`` calls: time the other processes of a loaded machine
    take does not count."""
    t0 = time.thread_time()
    for _ in range(reps):
        func(text)
    return time.thread_time() - t0


def growth_ratio(func, build):
    """CPU time at 16x the length over CPU time at the length: at most about 16 for a linear
    function (less when a constant cost dominates), about 256 for a quadratic one. Small and large
    are timed in turn, 3 times each, and the best of each is kept; each timing covers enough calls
    to last half a millisecond."""
    small, large = build(SMALL), build(LARGE)
    func(small), func(large)  # warm caches (word-frequency look-ups, Unicode tables)
    reps = 1
    while reps < 1024 and _cpu_time(func, small, reps) < 5e-4:
        reps *= 4
    t_small = t_large = float("inf")
    for _ in range(3):
        t_small = min(t_small, _cpu_time(func, small, reps))
        t_large = min(t_large, _cpu_time(func, large, reps))
    return t_large / max(t_small, 1e-9)


@pytest.mark.parametrize("name", sorted(LINEAR_FUNCS))
def test_linear_time(name):
    """16x longer adversarial input, at most 64x the CPU time (quadratic: about 256x); re-measured once
    before failing. The quadratic parsers this file was written against fail it (ratios 100 to 1000)."""
    func = LINEAR_FUNCS[name]
    for label, build in ADVERSARIAL_BUILDERS.items():
        ratio = growth_ratio(func, build)
        if ratio > 64:
            ratio = min(ratio, growth_ratio(func, build))
        assert ratio <= 64, f"{name} on {label!r}: 16x the input took {ratio:.0f}x the time"
