"""Rule-based rewards for RL on language models (C19, C20, C22).

Every reward function has the TRL signature ``f(prompts, completions, **kwargs) -> list[float]``:
dataset columns arrive as keyword lists aligned with ``completions`` (``answer=[...]``,
``numbers=[...]``, ``target=[...]``, ``tests=[...]``); unknown keywords are ignored.
``completions`` are what the policy generated *after* the prompt.  When the prompt was
prefilled with ``<think>`` (:data:`rlcore.llm.tasks.R1_ZERO_TEMPLATE`), pass
``prefilled_think=True`` (or a list of bools): the completion then starts inside the
think block and the parsers prepend the missing ``<think>``.

Parsing conventions (decided once, used everywhere):

* :func:`extract_answer` returns the content of the **last** ``<answer>...</answer>``
  block (the text after the last ``<answer>`` that is closed, up to the next ``</answer>``).
  Spamming several answers therefore buys nothing: only one guess is graded.  Whether the
  completion is *well formed* (one block, nothing outside the tags, ...) is the job of
  :func:`format_reward`, not of the accuracy reward (the R1-Zero split into
  eq-r1-accuracy-reward and eq-r1-format-reward).
* Numbers are compared numerically and exactly (``Fraction``): ``"0042" == "42" ==
  "42.0"``, but the whole answer must be one number: ``"4 2"``, ``"42 apples"`` and
  ``"1,000"`` are wrong.

Rewards a model cannot game.  RL optimises whatever the reward lets through, so every reward and
parser here accepts ANY ``str`` (1 MB completions, 100k-digit numbers, lone surrogates, NUL bytes,
every Unicode category), never raises on one, returns the documented type and range, and runs in
time linear in the length of the completion (tags are located with one ``find``/``rfind`` each,
never with a backtracking regex; ``tests/test_reward_properties.py`` checks all of this with
hypothesis and a growth-ratio timing test).  The rules:

* **Tags are read literally** on the raw completion (``<think>``, ``</think>``, ``<answer>``,
  ``</answer>`` in ASCII); look-alike brackets do not open a block.
* **Contents are normalised before they are read** (:func:`normalize_text`): NFKC (fullwidth
  ``４２`` becomes ``42``, ``＋`` becomes ``+``), the minus-like signs of :data:`MINUS_SIGNS` (U+2212,
  hyphens, en and em dashes, fullwidth, small, superscript and heavy minus) become ``-`` and the
  plus-like signs of :data:`PLUS_SIGNS` become ``+``, and format characters (category Cf: zero-width
  space and joiners, BOM, soft hyphen, bidi controls, ...) are deleted, so ``"4\\u200b2"`` reads as
  ``42``.  Runs of more than 30 combining marks are cut to 30 first (Unicode's stream-safe
  format), because NFKC sorts such runs in quadratic time.
* **A block is empty** (:func:`is_blank`) unless it holds a visible character: whitespace, controls,
  format characters, lone surrogates, the Hangul fillers, the braille blank and the invisible
  variation selectors do not count.  A think block of zero-width spaces is empty.
* **A number has at most** :data:`MAX_NUMBER_DIGITS` **(1000) digits**, leading and trailing zeros
  included; a longer one is not read as a number, so such an answer is simply wrong (Python itself
  refuses to convert more than 4300 digits and would raise).
* **Only strings are completions**: ``None``, ``bytes`` or other objects raise a ``TypeError`` that
  says how to fix the caller (decode bytes; pass ``""`` for a missing completion).  A reward that
  raises stops a GRPO step, which :func:`compute_rewards` reports with the function's name.

The language-consistency reward (:func:`language_consistency`) is built on the word-frequency lists
of ``wordfreq`` (pinned in the ``llm`` extra); see its docstring for the definition and for the
comparison with ``py3langid`` and ``lingua`` that chose it.
"""
from __future__ import annotations

import ast
import functools
import math
import numbers as _numbers
import re
import unicodedata
from collections import Counter
from fractions import Fraction
from typing import Callable, Sequence

# ------------------------------------------------------------------ Unicode normalisation
MAX_NUMBER_DIGITS = 1000
"""Longest number (in digits, leading and trailing zeros included) that :func:`parse_number` reads;
a longer one is not a number, so an answer holding it is wrong (and nothing raises)."""

MINUS_SIGNS = ("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2796\u02d7\ufe58\ufe63\uff0d\u207b\u208b")
"""Characters read as ``-`` in a number: hyphen, non-breaking hyphen, figure dash, en dash, em dash,
horizontal bar, MINUS SIGN (U+2212), heavy minus, modifier minus, small em dash, small and fullwidth
hyphen-minus, superscript and subscript minus."""
PLUS_SIGNS = "\u2795\u02d6\ufb29\ufe62\uff0b\u207a\u208a"
"""Characters read as ``+``: heavy plus, modifier plus, Hebrew alternative plus, small, fullwidth,
superscript and subscript plus."""

_INVISIBLE = (0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x034F, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F,
              *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0))
"""Characters that print as nothing although they are letters, symbols or marks: the Hangul fillers,
the braille blank, the combining grapheme joiner, invisible Khmer vowels, the variation selectors."""
_STREAM_SAFE = 30  # longest run of combining marks kept before NFKC (Unicode's stream-safe text format)


def _char_class(codepoints) -> str:
    """A regex character class body (without brackets) for a set of code points, as ranges."""
    cps = sorted(set(codepoints))
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\U{cps[i]:08x}" if i == j else f"\\U{cps[i]:08x}-\\U{cps[j]:08x}")
        i = j + 1
    return "".join(parts)


class _UnicodeTables:
    """Built once, on first use (~0.05 s): one pass over the planes that hold format characters and
    combining marks (the BMP, plane 1 and plane 14; the others hold only ideographs, private use
    and unassigned code points)."""

    def __init__(self):
        blank, nonstarters, cf = list(_INVISIBLE), [], []
        for cp in (*range(0x20000), *range(0xE0000, 0xE1000)):
            ch = chr(cp)
            cat = unicodedata.category(ch)
            if cat in ("Zs", "Zl", "Zp", "Cc", "Cf", "Cs"):
                blank.append(cp)
            if cat == "Cf":
                cf.append(cp)
            if unicodedata.combining(ch):
                nonstarters.append(cp)
            elif cat[0] == "M" or 0xFF9E <= cp <= 0xFF9F:  # starters whose decomposition starts with a mark
                d = unicodedata.normalize("NFKD", ch)
                if d and unicodedata.combining(d[0]):
                    nonstarters.append(cp)
        self.visible = re.compile(f"[^{_char_class(blank)}]")
        marks = _char_class(nonstarters)
        self.long_mark_runs = re.compile(f"([{marks}]{{{_STREAM_SAFE}}})[{marks}]+")
        self.table = {cp: None for cp in cf}
        self.table.update({ord(c): "-" for c in MINUS_SIGNS})
        self.table.update({ord(c): "+" for c in PLUS_SIGNS})


@functools.lru_cache(maxsize=None)
def _tables() -> _UnicodeTables:
    return _UnicodeTables()


def _require_str(text, what: str = "completion") -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        fix = "decode it first, e.g. text.decode('utf-8', errors='replace')"
    elif text is None:
        fix = "pass '' for a missing completion (and decode bytes before calling)"
    else:
        fix = "pass the generated text (decode bytes first; str(x) for other objects)"
    raise TypeError(f"{what} must be a str, got {type(text).__name__}: {fix}")


def normalize_text(text: str) -> str:
    """``text`` as the parsers read it: NFKC, minus-like signs -> ``-``, plus-like signs -> ``+``,
    format characters (category Cf: zero-width spaces and joiners, BOM, soft hyphen, ...) deleted.
    Linear time: runs of more than 30 combining marks are cut to 30 before NFKC. ASCII text is
    returned unchanged."""
    text = _require_str(text, "text")
    if text.isascii():
        return text
    tables = _tables()
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", tables.long_mark_runs.sub(r"\1", text))
    return text.translate(tables.table)


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace, control and format characters (zero-width
    space, ZWJ, BOM, soft hyphen, ...), lone surrogates, Hangul fillers, the braille blank or
    variation selectors."""
    return _tables().visible.search(_require_str(text, "text")) is None


def _strip_blank(text: str) -> str:
    """``text`` without the invisible characters of :func:`is_blank` at either end."""
    visible = _tables().visible
    first = visible.search(text)
    if first is None:
        return ""
    last = visible.search(text[::-1])
    return text[first.start():len(text) - last.start()]


# ------------------------------------------------------------------ parsing
_EOS_STRINGS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<eos>")
_EOS_REVERSED = tuple(e[::-1] for e in _EOS_STRINGS)
_SPACES = re.compile(r"\s*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def _prefilled(kwargs: dict, i: int) -> bool:
    p = kwargs.get("prefilled_think", False)
    if isinstance(p, (list, tuple)):
        return bool(p[i])
    return bool(p)


def _with_think(text: str, prefilled_think: bool) -> str:
    text = _require_str(text)
    return "<think>" + text if prefilled_think else text


def _strip_eos(text: str) -> str:
    """``text`` without trailing whitespace and EOS strings (in any order, any number): one pass
    over the reversed text, so linear even for a million ``<|im_end|>``."""
    rev, pos = text[::-1], 0
    while True:
        pos = _SPACES.match(rev, pos).end()
        for eos in _EOS_REVERSED:
            if rev.startswith(eos, pos):
                pos += len(eos)
                break
        else:
            return text[:len(text) - pos]


def extract_answer(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` block without invisible characters at its ends
    (:func:`is_blank`), or None if there is none.  Linear time: one ``rfind`` per tag."""
    text = _require_str(text)
    last_close = text.rfind("</answer>")
    if last_close == -1:
        return None
    start = text.rfind("<answer>", 0, last_close)
    if start == -1:
        return None
    end = text.find("</answer>", start + len("<answer>"))
    return _strip_blank(text[start + len("<answer>"):end])


def extract_think(text: str, prefilled_think: bool = False) -> str | None:
    """Content of the first ``<think>...</think>`` block without invisible characters at its ends,
    or None if there is none.  Linear time: the first ``<think>``, then the first ``</think>`` after it."""
    text = _with_think(text, prefilled_think)
    start = text.find("<think>")
    if start == -1:
        return None
    end = text.find("</think>", start + len("<think>"))
    if end == -1:
        return None
    return _strip_blank(text[start + len("<think>"):end])


def parse_number(text: str | None) -> Fraction | None:
    """The exact value of ``text`` if it is one decimal number (``"0042"``, ``"-3.50"``, ``"４２"``,
    ``"\\u22127"``), else None (also None for None).

    Read after :func:`normalize_text`: fullwidth digits, Unicode minus signs and zero-width
    characters are understood; digits of other scripts count by their value.  A number of more
    than :data:`MAX_NUMBER_DIGITS` digits is not a number (None): never an exception."""
    if text is None:
        return None
    text = normalize_text(text).strip()
    if len(text) > MAX_NUMBER_DIGITS + 2 or not _NUMBER.fullmatch(text):
        return None
    sign = -1 if text[0] == "-" else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    if len(whole) + len(frac) > MAX_NUMBER_DIGITS:
        return None
    scale = 10 ** len(frac)
    return sign * Fraction(int(whole or "0") * scale + int(frac or "0"), scale)


def answers_match(predicted: str | None, reference) -> bool:
    """Numeric comparison when the reference is a number (a number-shaped reference longer than
    :data:`MAX_NUMBER_DIGITS` digits matches nothing), else equality of the normalised texts with
    whitespace collapsed."""
    if predicted is None:
        return False
    predicted = _require_str(predicted, "predicted answer")
    reference = normalize_text(reference if isinstance(reference, str) else str(reference)).strip()
    if _NUMBER.fullmatch(reference):
        ref = parse_number(reference)
        return ref is not None and parse_number(predicted) == ref
    return " ".join(normalize_text(predicted).split()) == " ".join(reference.split())


def _column(kwargs: dict, name: str, n: int, fn: str) -> list:
    if name in kwargs and kwargs[name] is not None:
        col = kwargs[name]
    elif "meta" in kwargs and kwargs["meta"] is not None:  # list of Example.meta dicts
        col = [m[name] for m in kwargs["meta"]]
    else:
        raise ValueError(f"{fn} needs the dataset column {name!r} as a keyword list "
                         f"(e.g. {fn}(prompts, completions, {name}=[...]))")
    if len(col) != n:
        raise ValueError(f"{fn}: column {name!r} has {len(col)} entries for {n} completions")
    return list(col)


# ------------------------------------------------------------------ accuracy and format
def accuracy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the last ``<answer>`` block equals the reference ``answer`` (eq-r1-accuracy-reward), else 0.0."""
    answer = _column({"answer": answer}, "answer", len(completions), "accuracy_reward")
    return [float(answers_match(extract_answer(c), a)) for c, a in zip(completions, answer)]


_ANY_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def lenient_accuracy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the *last number* of the completion equals ``answer``, tags or not.

    A shaped answer reward for models that do not yet follow the ``<answer>`` format: R1-Zero style
    replications use such a relaxed check to get any learning signal from a weak starting model, and
    move to the strict :func:`accuracy_reward` once the format is learned. Easier to game (a list of
    numbers ending in the right one passes), which is why it is only a starting aid.  Without an
    answer block only the last 2000 characters are searched; the text is normalised first
    (:func:`normalize_text`), so ``−7`` (U+2212) is ``-7``.
    """
    answer = _column({"answer": answer}, "answer", len(completions), "lenient_accuracy_reward")
    out = []
    for c, a in zip(completions, answer):
        inside = extract_answer(c)
        last = None
        for last in _ANY_NUMBER.finditer(normalize_text(inside if inside is not None else c[-2000:])):
            pass
        out.append(float(last is not None and answers_match(last.group(), a)))
    return out


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _only_space(text: str) -> bool:
    return not text or text.isspace()


def format_components(completion: str, prefilled_think: bool = False) -> dict[str, bool]:
    """The five checks behind :func:`partial_format_reward`; all True iff :func:`is_well_formed`.

    A block is non-empty when it holds a visible character (:func:`is_blank`): a think block of
    zero-width spaces is empty.  Linear time: one ``count`` and one ``find`` per tag."""
    text = _strip_eos(_with_think(completion, prefilled_think))
    counts = {tag: text.count(tag) for tag in _TAGS}
    t0, t1, a0, a1 = (text.find(tag) for tag in _TAGS)
    think_ok = counts["<think>"] == 1 and counts["</think>"] == 1 and t0 < t1
    answer_ok = counts["<answer>"] == 1 and counts["</answer>"] == 1 and a0 < a1
    in_order = think_ok and answer_ok and t1 < a0
    return {
        "think_block": think_ok,
        "think_nonempty": think_ok and not is_blank(text[t0 + len("<think>"):t1]),
        "answer_block": answer_ok and (not think_ok or t1 < a0),
        "answer_nonempty": answer_ok and not is_blank(text[a0 + len("<answer>"):a1]),
        "nothing_outside": in_order and _only_space(text[:t0]) and _only_space(text[t1 + len("</think>"):a0])
        and _only_space(text[a1 + len("</answer>"):]),
    }


def is_well_formed(completion: str, prefilled_think: bool = False) -> bool:
    """Strict format check: exactly one non-empty ``<think>`` block, then exactly one
    non-empty ``<answer>`` block, nothing but whitespace before, between and after
    (a trailing EOS string such as ``<|im_end|>`` is allowed), no nested or repeated tags.
    Invisible characters (:func:`is_blank`) do not make a block non-empty."""
    return all(format_components(completion, prefilled_think).values())


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 for a strictly well-formed completion (:func:`is_well_formed`, eq-r1-format-reward), else 0.0.

    Keyword ``prefilled_think`` (bool or list of bools): the prompt ended with ``<think>``.
    """
    return [float(is_well_formed(c, _prefilled(kwargs, i))) for i, c in enumerate(completions)]


def partial_format_reward(prompts, completions, **kwargs) -> list[float]:
    """Shaped format credit for curricula: the share of the five :func:`format_components`
    that hold (0.2 each).  Equals 1.0 exactly when :func:`format_reward` does."""
    return [sum(format_components(c, _prefilled(kwargs, i)).values()) / 5.0
            for i, c in enumerate(completions)]


# ------------------------------------------------------------------ language consistency
_SCRIPT_PREFIXES = {
    "LATIN": "latin", "HANGUL": "hangul", "CJK": "han", "HIRAGANA": "kana", "KATAKANA": "kana",
    "CYRILLIC": "cyrillic", "GREEK": "greek", "ARABIC": "arabic", "HEBREW": "hebrew",
    "DEVANAGARI": "devanagari", "THAI": "thai",
}
LANGUAGE_SCRIPTS = {
    "en": {"latin"}, "fr": {"latin"}, "de": {"latin"}, "es": {"latin"}, "it": {"latin"}, "pt": {"latin"},
    "nl": {"latin"}, "ko": {"hangul"}, "zh": {"han"}, "ja": {"han", "kana"}, "ru": {"cyrillic"},
    "uk": {"cyrillic"}, "el": {"greek"}, "ar": {"arabic"}, "he": {"hebrew"}, "hi": {"devanagari"}, "th": {"thai"},
}
"""Target language -> the Unicode scripts its words are written in."""

LATIN_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl")
"""Latin-script languages told apart word by word with wordfreq's frequency lists: for a target among
them, a Latin word must be a recognisable word of the target (not of one of the others)."""

WORDFREQ_VERSION = "3.1.1"
"""The wordfreq release the thresholds below were measured with (pinned in the ``llm`` extra)."""
_SURE_ZIPF = 3.0      # a common word of the target: at least once per million words ...
_SURE_MARGIN = 0.5    # ... and at least ~3x more frequent there than in any other candidate language
_FOREIGN_MARGIN = 2.0  # 100x more frequent in another candidate language: that language's word
_CONTEXT = 6          # an ambiguous word takes the majority verdict of the 6 Latin words on each side
_CODE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]*`", re.DOTALL)


@functools.lru_cache(maxsize=1 << 16)
def char_script(ch: str) -> str | None:
    """Script of a letter (``"latin"``, ``"hangul"``, ``"han"``, ``"kana"``, ``"cyrillic"``, ...),
    ``"other"`` for letters of other scripts, None for digits, punctuation and spaces."""
    if ch.isalpha() or unicodedata.category(ch) == "Lo":
        name = unicodedata.name(ch, "")
        return next((s for p, s in _SCRIPT_PREFIXES.items() if name.startswith(p)), "other")
    return None


_WORDLIKE = re.compile(r"[^\W\d_]+")  # runs of letters (and a few non-decimal numerals); holds every word


def split_words(text: str) -> list[tuple[str, str]]:
    """``[(word, script), ...]``: maximal runs of letters of one script; every Han or kana
    character is a word of its own (Chinese and Japanese do not separate words by
    spaces).  Digits and punctuation are not words."""
    words = []
    for m in _WORDLIKE.finditer(_require_str(text, "text")):
        run = m.group()
        if run.isascii():  # the common case, without a loop over its characters
            words.append((run, "latin"))
            continue
        cur, cur_script = [], None
        for ch in run:
            s = char_script(ch)
            if s is not None and s == cur_script and s not in ("han", "kana"):
                cur.append(ch)
                continue
            if cur:
                words.append(("".join(cur), cur_script))
            cur, cur_script = ([ch], s) if s is not None else ([], None)
        if cur:
            words.append(("".join(cur), cur_script))
    return words


@functools.lru_cache(maxsize=None)
def _wordfreq():
    try:
        import wordfreq
    except ImportError as exc:  # pragma: no cover - the llm extra installs it
        raise ImportError("language_consistency needs the word-frequency lists of wordfreq for Latin-script "
                          f"targets: pip install 'rlcore[llm]' (or wordfreq=={WORDFREQ_VERSION})") from exc
    return wordfreq


@functools.lru_cache(maxsize=1 << 16)
def _zipf(word: str, lang: str) -> tuple[float, float]:
    """(Zipf frequency of ``word`` in ``lang``, the highest in the other :data:`LATIN_LANGUAGES`).
    The target's large list reaches down to once per 100 million words; the others' small lists
    (once per million) are enough to see that a word is *common* elsewhere, at a fifth of the memory."""
    wf = _wordfreq()
    own = wf.zipf_frequency(word, lang, wordlist="large")
    other = max(wf.zipf_frequency(word, o, wordlist="small") for o in LATIN_LANGUAGES if o != lang)
    return own, other


def _latin_verdict(word: str, lang: str) -> tuple[int, bool]:
    """(+1 a word of ``lang``, -1 not, 0 ambiguous; the verdict for an ambiguous word without context)."""
    own, other = _zipf(word.lower(), lang)
    if own == 0.0 or own - other <= -_FOREIGN_MARGIN:
        return -1, False                     # unknown in lang (keyboard mash, foreign words) or clearly foreign
    if own >= _SURE_ZIPF and own - other >= _SURE_MARGIN:
        return 1, True
    return 0, own >= _SURE_ZIPF and own - other > -1.0  # rare, or shared with another language


def language_consistency(text: str, target_lang: str = "en") -> float:
    """Share of the words of ``text`` that are recognisably in ``target_lang`` (eq-r1-language-reward);
    0.0 without words.

    What counts (after :func:`normalize_text`; words as in :func:`split_words`):

    * **neutral** (in neither the numerator nor the denominator): digits, operators, punctuation,
      and single Latin letters (variables such as ``x`` or ``a``);
    * **code is not prose**: every word inside a fenced code block (opened by three backticks or
      three tildes, closed or not) or an inline span between single backticks counts as *not* in
      the target language;
    * for a target written in its own script (``zh``, ``ja``, ``ko``, ``ru``, ...,
      :data:`LANGUAGE_SCRIPTS`) a word counts when it is in that script; each Han or kana character
      is one word, so a 50/50 mix means as many English words as Chinese characters;
    * for a Latin-script target (:data:`LATIN_LANGUAGES`: ``en``, ``de``, ``fr``, ``es``, ``it``,
      ``pt``, ``nl``) a Latin word must be a recognisable word of the target, judged by its Zipf
      frequency (log10 of occurrences per billion words) in wordfreq's lists: a word absent from
      the target's list (keyboard mash, ``"addieren"``) or 100x more frequent in another candidate
      language (``"und"``, ``"les"``, ``"el"``, ``"die"``) is not; a common word (Zipf >= 3) at least
      3x more frequent in the target than elsewhere is; the rest (rare words such as ``"quotient"``,
      and words shared between languages such as ``"in"``, ``"so"``, ``"tens"``) take the majority
      verdict of the clear words among the 6 Latin words on each side, and without a clear
      neighbour count only when common and not 10x more frequent elsewhere.

    Why wordfreq: on a labelled set of 100 texts (36 English reasoning traces and sentences, 8 of them
    of 3-10 words; 27 German, French, Spanish, Italian, Portuguese and Dutch ones; 4 Chinese; 13
    English-Chinese traces from :func:`rlcore.llm.sft.mix_languages` and English-German/French
    sentences; 12 keyboard mashes; 4 code blocks; 4 numbers-only traces such as "12 + 34 = 46") this
    rule puts 100/100 texts in their expected band (English >= 0.9, other languages, mash <= 0.2, code
    <= 0.3, mixes within 0.1-0.15 of their English share); its first version scored 97/100, missing
    rare English words such as "divisor" until rare words were left to their context.  The same set
    gives 93/100 for py3langid 0.4.0 and 94/100 for lingua-language-detector 2.1.1, each applied
    sentence by sentence (py3langid misreads short compact traces and mixed sentences; lingua calls
    keyboard mash English and cannot split a mixed sentence), and 56/100 for the former hand-written
    word list (mash, code and other Latin languages all passed as English).  Scoring 64 completions of
    100 words takes 10-20 ms on the 2-core CPU once the lists are loaded (0.6 s and 56 MB, once per
    process); lingua takes 60-110 ms and py3langid 25-90 ms.  The wheel is 57 MB (lingua: 96 MB,
    py3langid: 5 MB) and holds all its data: nothing is downloaded at run time.  Han-script mash
    cannot be told from Chinese this way (wordfreq needs jieba to segment Chinese), so for ``zh``
    every Han character counts.
    """
    if target_lang not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown target_lang {target_lang!r}; choose one of {sorted(LANGUAGE_SCRIPTS)}")
    text = normalize_text(text)
    scripts = LANGUAGE_SCRIPTS[target_lang]
    by_frequency = target_lang in LATIN_LANGUAGES
    total = hits = 0
    latin: list[tuple[int, bool]] = []  # verdicts of the prose Latin words, in order, for the context rule
    pos = 0
    for m in [*_CODE.finditer(text), None]:
        prose = text[pos:m.start()] if m is not None else text[pos:]
        for word, script in split_words(prose):
            if script == "latin" and len(word) == 1:
                continue                                      # a variable, not a word
            total += 1
            if script not in scripts:
                continue
            if by_frequency and script == "latin":
                latin.append(_latin_verdict(word, target_lang))
            else:
                hits += 1
        if m is None:
            break
        total += sum(not (s == "latin" and len(w) == 1) for w, s in split_words(m.group()))  # code: never prose
        pos = m.end()
    if latin:
        sure_yes, sure_no = [0], [0]  # prefix counts of the clear verdicts
        for verdict, _ in latin:
            sure_yes.append(sure_yes[-1] + (verdict == 1))
            sure_no.append(sure_no[-1] + (verdict == -1))
        for i, (verdict, fallback) in enumerate(latin):
            if verdict:
                hits += verdict == 1
                continue
            lo, hi = max(0, i - _CONTEXT), min(len(latin), i + _CONTEXT + 1)
            yes, no = sure_yes[hi] - sure_yes[lo], sure_no[hi] - sure_no[lo]
            hits += (yes > no) if yes != no else fallback
    return hits / total if total else 0.0


def language_consistency_reward(prompts, completions, target_lang: str = "en", **kwargs) -> list[float]:
    """Share of chain-of-thought words in ``target_lang`` (DeepSeek-R1's language-consistency reward,
    :func:`language_consistency`), in [0, 1].

    The chain of thought is the ``<think>`` block (honouring ``prefilled_think``); for a
    completion whose think block never closes, everything generated counts as thought.
    ``target_lang`` may also be a list (one per completion).
    """
    out = []
    for i, c in enumerate(completions):
        lang = target_lang[i] if isinstance(target_lang, (list, tuple)) else target_lang
        think = extract_think(c, _prefilled(kwargs, i))
        if think is None:
            think = _with_think(c, _prefilled(kwargs, i)).split("<think>", 1)[-1]
        out.append(language_consistency(think, lang))
    return out


# ------------------------------------------------------------------ Countdown
MAX_EXPRESSION_CHARS = 200


def safe_eval_arithmetic(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value and the integer literals of an expression of integers, ``+ - * /`` and
    parentheses, parsed with :mod:`ast` (never ``eval``).  Raises ValueError for anything
    else (names, calls, powers, unary minus, floats, division by zero, overly long text)."""
    expression = _require_str(expression, "expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError) as exc:
        raise ValueError(f"not an arithmetic expression: {exc}") from None
    literals: list[int] = []
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}

    def ev(node) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return ops[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"disallowed syntax: {type(node).__name__}")

    try:
        value = ev(tree)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    return value, literals


def countdown_score(answer_text: str | None, numbers: Sequence[int], target: int) -> float:
    """1.0 if ``answer_text`` (optionally ``expr = target``) uses exactly ``numbers`` and equals ``target``.
    The text is normalised first (:func:`normalize_text`: fullwidth digits, Unicode minus signs)."""
    if answer_text is None:
        return 0.0
    expr = normalize_text(answer_text).partition("=")[0]
    try:
        value, literals = safe_eval_arithmetic(expr)
    except ValueError:
        return 0.0
    if Counter(literals) != Counter(int(x) for x in numbers):
        return 0.0
    return float(value == target)


def countdown_reward(prompts, completions, numbers=None, target=None, **kwargs) -> list[float]:
    """Countdown reward: 1.0 when the last ``<answer>`` block is an expression that uses each
    given number exactly once and evaluates (exactly, without ``eval``) to the target."""
    n = len(completions)
    numbers = _column({"numbers": numbers, **kwargs}, "numbers", n, "countdown_reward")
    target = _column({"target": target, **kwargs}, "target", n, "countdown_reward")
    return [countdown_score(extract_answer(c), nums, t) for c, nums, t in zip(completions, numbers, target)]


# ------------------------------------------------------------------ code
# The code reward lives in its own module (it drives the sandbox); re-exported here so that
# ``rlcore.llm.rewards`` stays the one place to import every reward from.
from .code_reward import code_reward, extract_code, run_tests  # noqa: E402,F401


# ------------------------------------------------------------------ combining
class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned something other than one finite number per completion."""


def reward_name(func: Callable) -> str:
    """Name used for logging: ``__name__``, the wrapped function of a ``functools.partial``, or the class name."""
    name = getattr(func, "__name__", None)
    if name is None and hasattr(func, "func"):
        name = getattr(func.func, "__name__", None)
    return name or type(func).__name__


def compute_rewards(reward_funcs: Sequence[Callable], weights: Sequence[float] | None, prompts: list[str],
                    completions: list[str], **kwargs):
    """Weighted sum of reward functions, with checks (eq-r1-total-reward: r = sum_k w_k r_k).

    Returns ``(total, per_function)``: a float32 tensor ``[N]`` and ``{name: tensor [N]}``
    of unweighted values for logging (names made unique with ``_2``, ``_3``, ...).
    Raises :class:`RewardFunctionError` naming the function (and the first offending index)
    when a function raises, returns a wrong length, or returns None / NaN / inf / non-numbers.
    """
    import torch

    if callable(reward_funcs):
        reward_funcs = [reward_funcs]
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise ValueError("reward_funcs is empty; pass at least one reward function")
    if weights is None:
        weights = [1.0] * len(reward_funcs)
    weights = [float(w) for w in weights]
    if len(weights) != len(reward_funcs):
        raise ValueError(f"got {len(weights)} weights for {len(reward_funcs)} reward functions")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite, got {weights}")
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions; repeat each prompt once per completion")

    total = torch.zeros(n, dtype=torch.float32)
    per_function: dict[str, torch.Tensor] = {}
    for func, w in zip(reward_funcs, weights):
        name = base = reward_name(func)
        k = 2
        while name in per_function:
            name, k = f"{base}_{k}", k + 1
        try:
            values = func(prompts, completions, **kwargs)
        except Exception as exc:
            raise RewardFunctionError(f"reward function {name!r} raised {type(exc).__name__}: {exc}") from exc
        if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise RewardFunctionError(f"reward function {name!r} returned {type(values).__name__}; "
                                      f"it must return a list of {n} floats")
        if hasattr(values, "tolist"):
            values = values.tolist()
        if len(values) != n:
            raise RewardFunctionError(f"reward function {name!r} returned {len(values)} values for {n} completions")
        clean = []
        for i, v in enumerate(values):
            if not isinstance(v, _numbers.Real) or not math.isfinite(float(v)):
                raise RewardFunctionError(f"reward function {name!r} returned {v!r} at index {i}; "
                                          "every reward must be a finite number")
            clean.append(float(v))
        t = torch.tensor(clean, dtype=torch.float32)
        per_function[name] = t
        total += w * t
    return total, per_function


def combine_rewards(reward_funcs: Sequence[Callable], weights: Sequence[float] | None = None) -> Callable:
    """One TRL-style reward function returning the checked weighted sum of ``reward_funcs``."""
    funcs = list(reward_funcs)

    def combined_reward(prompts, completions, **kwargs) -> list[float]:
        total, _ = compute_rewards(funcs, weights, prompts, completions, **kwargs)
        return total.tolist()

    return combined_reward


# ------------------------------------------------------------------ reflection ("aha moment")
REFLECTION_WORDS = (
    "wait", "hmm", "check", "checking", "recheck", "re-check", "double-check", "verify", "verifying",
    "re-evaluate", "reevaluate", "reconsider", "mistake", "wrong", "actually", "let me try again",
    "on second thought",
)
"""Words and phrases that signal self-reflection (matched case-insensitively as whole words)."""

_REFLECTION_RE = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in
                            sorted(REFLECTION_WORDS, key=len, reverse=True)) + r")(?![\w-])", re.IGNORECASE)


def reflection_count(completion: str) -> int:
    """Number of reflection words and phrases in ``completion``."""
    return sum(1 for _ in _REFLECTION_RE.finditer(_require_str(completion)))


def reflection_rate(completions: Sequence[str]) -> float:
    """Share of completions containing at least one of :data:`REFLECTION_WORDS` (C20); 0.0 for none."""
    completions = list(completions)
    if not completions:
        return 0.0
    return sum(reflection_count(c) > 0 for c in completions) / len(completions)


def think_length(completion: str, prefilled_think: bool = False, tokenizer=None) -> int:
    """Length of the chain of thought: whitespace-separated words (or tokens with ``tokenizer``).
    An unclosed think block (truncated generation) counts up to the end; no think block: 0."""
    text = _with_think(completion, prefilled_think)
    think = extract_think(text)
    if think is None:
        think = text.split("<think>", 1)[1] if "<think>" in text else ""
    if tokenizer is not None:
        return len(tokenizer(think, add_special_tokens=False)["input_ids"])
    return len(think.split())


__all__ = [
    "extract_answer", "extract_think", "extract_code", "parse_number", "answers_match", "accuracy_reward",
    "lenient_accuracy_reward", "is_well_formed", "format_reward", "format_components", "partial_format_reward", "char_script",
    "split_words", "language_consistency", "language_consistency_reward", "LANGUAGE_SCRIPTS",
    "LATIN_LANGUAGES", "MAX_NUMBER_DIGITS", "MINUS_SIGNS", "PLUS_SIGNS", "normalize_text", "is_blank",
    "safe_eval_arithmetic", "countdown_score", "countdown_reward", "run_tests",
    "code_reward", "RewardFunctionError", "reward_name", "compute_rewards", "combine_rewards",
    "REFLECTION_WORDS", "reflection_count", "reflection_rate", "think_length",
]
