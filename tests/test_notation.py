"""The notation page, the glossary, and the renamings that give every symbol one meaning.

* ``book/notation.md``: its tables (header ``Symbol | Meaning | Introduced | In rlcore``) must not list
  a symbol twice with two meanings (a symbol is compared without spaces and without a trailing argument
  list, so ``r_t(\\theta)`` and ``r_t`` are the same symbol); every row names the chapter that
  introduces it; every page, equation and theorem it links to exists.
* The chapters' markdown must not bring back a clash that the notation page resolved: PPO's ratio
  written with the reward's letter ``r_t(\\theta)``, ``\\epsilon`` outside PPO's clip range, ``\\rho`` as
  anything but an importance ratio, the group size's bare ``G`` for a return, and so on (``RULES``).
  Each rule carries the text it was written against, and a test checks that the rule still catches it.
* Every chapter links to the notation page and the glossary; every ``{term}`` in the book is
  defined in ``book/glossary.md``, which defines the jargon the book uses; both pages are in the table
  of contents.

Plain text parsing (json + re): no Sphinx and no notebook execution.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = ROOT / "chapters"
NOTATION = BOOK / "notation.md"
GLOSSARY = BOOK / "glossary.md"

# The chapters whose markdown the rules and the link check read: all of them.
CHECKED = ("00", "01", "02", "03", "04", "05", "06", "07", "08", "09")

AREAS = (
    "MDPs, policies and returns",
    "Value functions and value-based learning",
    "Policy gradients",
    "Trust regions and PPO",
    "Language models and GRPO",
    "KL divergences and their estimators",
    "RLHF, rule-based rewards and distillation",
)


# --- reading markdown -----------------------------------------------------------------------------

_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})\s*(.*?)\s*$")
_CODE_SPAN_RE = re.compile(r"``[^`\n]+``|`[^`\n]*`")
_MATH_RE = re.compile(r"\$\$.+?\$\$|\$[^$]+?\$", re.S)


def prose(markdown: str) -> str:
    """The markdown without code: code blocks and inline code spans removed, MyST directives kept.

    A fence whose info string starts with ``{`` is a directive (``{prf:proof}``, ``{exercise}``...): its
    body is text and math, so only its fence lines go. Other fences (``python``, none) are code.
    """
    out, directives, code = [], [], None
    for line in markdown.splitlines():
        m = _FENCE_RE.match(line)
        if code is not None:
            if m and m.group(1)[0] == code[0] and len(m.group(1)) >= len(code) and not m.group(2):
                code = None
            continue
        if m:
            fence, info = m.groups()
            if info.startswith("{"):
                directives.append(fence)
                continue
            if not info and directives and fence == directives[-1]:
                directives.pop()
                continue
            code = fence
            continue
        out.append(line)
    return _CODE_SPAN_RE.sub(" ", "\n".join(out))


def math_segments(markdown: str) -> list[str]:
    """The ``$...$`` and ``$$...$$`` math of a markdown text, code excluded."""
    return _MATH_RE.findall(prose(markdown))


@functools.lru_cache(maxsize=None)
def markdown_cells(prefix: str) -> tuple[str, tuple[str, ...]]:
    """(notebook name, markdown cell sources) of the chapter whose file name starts with ``prefix``."""
    found = sorted(CHAPTERS.glob(f"{prefix}_*.ipynb"))
    assert len(found) == 1, f"expected one chapters/{prefix}_*.ipynb, found {[p.name for p in found]}"
    nb = json.loads(found[0].read_text(encoding="utf-8"))
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            src = cell["source"]
            cells.append("".join(src) if isinstance(src, list) else src)
    return found[0].name, tuple(cells)


def test_math_extraction_keeps_directives_and_drops_code():
    text = (
        "Text $a_t$ and\n```{prf:proof}\n:label: x\nA proof with $\\rho_t$.\n```\n"
        "```python\nprint('$not math$')\n```\n`$no$` and $$\nG_t\n$$ (eq-x)\n"
        "````{exercise} E\n```python\nx = '$no$'\n```\nSay $y$.\n````\nAfter $z$."
    )
    assert math_segments(text) == ["$a_t$", "$\\rho_t$", "$$\nG_t\n$$", "$y$", "$z$"]


# --- the notation page -----------------------------------------------------------------------------

def _split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def symbol_tables(text: str) -> list[tuple[str, list[tuple[int, list[str]]]]]:
    """Every table whose first header cell is "Symbol": (section heading, [(line number, cells)])."""
    tables, heading = [], ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        if (lines[i].lstrip().startswith("|") and i + 1 < len(lines)
                and re.match(r"^\s*\|[\s\-:|]+\|\s*$", lines[i + 1])):
            header = _split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append((i + 1, _split_row(lines[i])))
                i += 1
            if header and header[0].lower() == "symbol":
                assert [h.lower() for h in header] == ["symbol", "meaning", "introduced", "in rlcore"], header
                tables.append((heading, rows))
            continue
        i += 1
    return tables


def symbol_key(symbol: str) -> str:
    """A symbol without spacing and without a trailing argument list: ``r_t(\\theta)`` -> ``r_t``."""
    key = re.sub(r"\\[,;!: ]|\s+", "", symbol)
    if key.endswith(")"):
        depth = 0
        for j in range(len(key) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(key[j], 0)
            if depth == 0:
                if j > 0:
                    key = key[:j]
                break
    return key


def clashes(text: str) -> list[str]:
    """Symbols that two rows of the notation tables give different meanings."""
    seen: dict[str, tuple[str, int]] = {}
    problems = []
    for _heading, rows in symbol_tables(text):
        for line, cells in rows:
            meaning = re.sub(r"\s+", " ", cells[1])
            for symbol in re.findall(r"\$([^$]+)\$", cells[0]):
                key = symbol_key(symbol)
                if key in seen and seen[key][0] != meaning:
                    problems.append(f"{key!r} on line {seen[key][1]} ({seen[key][0]!r}) and on line {line} ({meaning!r})")
                seen.setdefault(key, (meaning, line))
    return problems


def test_clash_detector_catches_a_symbol_with_two_meanings():
    page = (
        "## A\n\n| Symbol | Meaning | Introduced | In rlcore |\n|---|---|---|---|\n"
        "| $r_t$ | the reward | 0 | `rewards` |\n| $\\epsilon$ | the clip range | 4 | `clip_coef` |\n\n"
        "## B\n\n| Symbol | Meaning | Introduced | In rlcore |\n|---|---|---|---|\n"
        "| $r_t(\\theta)$ | the probability ratio | 4 | `ratio` |\n| $\\epsilon$ | the clip range | 4 | `clip_coef` |\n"
    )
    found = clashes(page)
    assert len(found) == 1 and "'r_t'" in found[0], found
    assert symbol_key(r"\rho_t(\theta)") == r"\rho_t" and symbol_key(r"p(s', r \mid s, a)") == "p"
    assert symbol_key(r"\Pr(\cdot)") == r"\Pr" and symbol_key(r"\mathbb 1[\cdot]") == r"\mathbb1[\cdot]"


@functools.lru_cache(maxsize=1)
def notation_text() -> str:
    return NOTATION.read_text(encoding="utf-8")


def test_notation_page_gives_every_symbol_one_meaning():
    tables = symbol_tables(notation_text())
    headings = [h for h, _ in tables]
    for area in AREAS:
        assert area in headings, f"book/notation.md has no table for {area!r} (tables: {headings})"
    assert sum(len(rows) for _, rows in tables) >= 100
    problems = clashes(notation_text())
    assert not problems, "book/notation.md lists a symbol with two meanings:\n" + "\n".join(problems)


def test_notation_rows_are_complete():
    for heading, rows in symbol_tables(notation_text()):
        for line, cells in rows:
            assert len(cells) == 4, f"book/notation.md:{line}: {len(cells)} cells, expected 4 (a '|' inside a cell?)"
            assert re.findall(r"\$[^$]+\$", cells[0]), f"book/notation.md:{line}: no $symbol$ in {cells[0]!r}"
            assert cells[1], f"book/notation.md:{line}: no meaning"
            assert re.search(r"\{doc\}`[^`]*<chapters/\d\d_\w+>`", cells[2]), \
                f"book/notation.md:{line} ({heading}): 'Introduced' must link the chapter, got {cells[2]!r}"
            assert cells[3], f"book/notation.md:{line}: empty 'In rlcore' cell (write — when there is none)"


@functools.lru_cache(maxsize=1)
def chapter_labels() -> set[str]:
    labels = set()
    for nb in CHAPTERS.glob("*.ipynb"):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "markdown":
                src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                labels.update(re.findall(r"\$\$[ \t]*\((eq-[\w\-]+)\)", src))
                labels.update(re.findall(r"^:label:\s*([\w\-]+)", src, re.M))
    return labels


def _doc_exists(target: str, relative_to: Path) -> bool:
    path = (relative_to / target).resolve()
    if path.is_relative_to(BOOK / "chapters"):
        path = CHAPTERS / path.relative_to(BOOK / "chapters")
    return any(path.with_suffix(suffix).exists() for suffix in (".ipynb", ".md"))


@pytest.mark.parametrize("page", [NOTATION, GLOSSARY], ids=["notation", "glossary"])
def test_reference_pages_link_only_to_what_exists(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", text):
        assert _doc_exists(target, BOOK), f"{page.name}: {{doc}} link to a missing page {target!r}"
    for role in ("eq", "prf:ref"):
        for label in re.findall(r"\{" + role + r"\}`([^`]+)`", text):
            assert label in chapter_labels(), f"{page.name}: {{{role}}}`{label}` is defined in no chapter"


# --- the renamings, kept in the chapters -------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    chapters: tuple[str, ...]
    pattern: str
    why: str
    was: str          # the text the rule was written against: the rule must match it
    scope: str = "math"  # "math": inside $...$ only; "text": anywhere outside code


EVERY = CHECKED
RULES = (
    Rule(("04",), r"(?<![\\A-Za-z])r_t\(\\theta\)",
         "PPO's probability ratio is rho_t(theta); r_t is the reward of step t",
         r"L(\theta) = \hat{\mathbb E}_t[r_t(\theta) \hat A_t]"),
    Rule(("04",), r"\\ell\(r\)|(?<![\\A-Za-z])r\s?A(?![A-Za-z])|\\operatorname\{clip\}\(r_?t?,|\(r_t A_t",
         "the ratio inside the clipped objective is rho, not r (the reward)",
         r"\ell(r) = \min(rA, \operatorname{clip}(r, 1-\epsilon, 1+\epsilon) A)"),
    Rule(EVERY, r"\\rho\^|\\rho_k|\\rho\(s",
         "rho is the importance ratio; the discounted k-step probability is omega^pi(s -> x, k)",
         r"\rho^\pi(s \to x, k) = \gamma^k \Pr(s_k = x \mid s_0 = s)"),
    Rule(("00", "01", "02", "03", "09"), r"\\(?:var)?epsilon(?![A-Za-z])",
         "epsilon is PPO's clip range (chapters 4-6): chapter 1 writes p_rand and xi, chapter 3 A_max and bar A_max",
         r"\pi_\epsilon(a \mid s) = \frac{\epsilon}{|\mathcal A|}"),
    Rule(EVERY, r"\\varepsilon|\\bar\s*\\epsilon",
         "epsilon is only PPO's clip range: no second epsilon (error bounds are xi, A_max, bar A_max)",
         r"C = \frac{4 \bar\epsilon \gamma}{(1 - \gamma)^2}"),
    Rule(("04",), r"larger \$\\epsilon\$ than",
         "Adam's numerical constant is the code's eps, not the clip range", "a larger $\\epsilon$ than the default",
         scope="text"),
    Rule(("00", "01", "02", "03", "04", "09"), r"\\beta(?![A-Za-z])",
         "beta is the KL coefficient (chapters 5-6); TRPO's backtracking factor is nu",
         r"\theta_\text{old} + \beta^j \Delta^\star"),
    Rule(EVERY, r"\\lambda\s*I(?![A-Za-z])",
         "lambda is GAE's; TRPO's damping is c_damp", r"(F + \lambda I)\,s = g"),
    Rule(("03",), r"(?<![A-Za-z\\{])s\s*=\s*F\^|s\^\\top\s*\(?F|(?<![A-Za-z\\])s_k(?![A-Za-z])",
         "s is a state: the natural-gradient direction is tilde g = F^{-1} g",
         r"\Delta^\star = \sqrt{\frac{2\delta}{s^\top F s}}\; s, \qquad s = F^{-1} g"),
    Rule(("03",), r"\$P\$ (?:parameters|iterations)|\$P\^2\$",
         "P is the transition matrix: the number of parameters is |theta|",
         "For a policy network with $P$ parameters $F$ has $P^2$ entries", scope="text"),
    Rule(("03",), r"A x = b|A p_k|(?<![A-Za-z\\])r_k(?![A-Za-z])|(?<![A-Za-z\\])p_k(?![A-Za-z])",
         "conjugate gradient in the book's letters (A is the advantage, r the reward, p a probability)",
         r"\alpha_k = \frac{r_k^\top r_k}{p_k^\top A p_k}"),
    Rule(EVERY, r"\\mu(?![_A-Za-z])|\\mu_\\theta",
         "mu is a state distribution (mu_0, mu_j): the Gaussian mean is m_theta, GRPO's updates per batch K",
         r"\mathcal N(a;\, \mu_\theta(s), \sigma^2)"),
    Rule(EVERY, r"V_\\psi|V_\{\\psi|r_\\phi",
         "the critic is V_phi (chapters 2-5), the reward model r_psi", r"V_\psi(s_t) and r_\phi(q, o)"),
    Rule(EVERY, r"(?<!V_)\\phi\(|\\phi_\{s|\\nabla_\\phi|\\Phi(?![A-Za-z])",
         "phi is the critic's parameters only: the local term of the policy gradient proof is g(s)",
         r"\phi(s) = \sum_a Q^\pi(s,a)\, \nabla_\theta \pi_\theta(a|s)"),
    Rule(EVERY, r"\\hat\s*R(?![A-Za-z])",
         "R(s, a) is the expected reward: the return target is hat G_t", r"\hat R_t = \hat A_t + V(s_t)"),
    Rule(("00", "01", "02", "03", "04"), r"(?<![A-Za-z\\{])G(?![_A-Za-z])",
         "a return always has a time index (G_t); a bare G is GRPO's group size", r"(G - b)\,\nabla \log \pi"),
    Rule(("01",), r"(?<![A-Za-z\\])C(?![A-Za-z_])",
         "C is TRPO's penalty coefficient: DQN's target period is n_target", r"\theta^- \text{ every } C \text{ steps}"),
    Rule(("09",), r"N_[TS](?![A-Za-z])|(?<!\\mathcal )(?<![A-Za-z\\])C_\{",
         "N counts samples and C is TRPO's coefficient: parameters are |theta|, compute is mathcal C",
         r"C_{\text{distill}} = 2 N_T"),
    Rule(("06",), r"\\eta_a|\\sigma\(",
         "eta is the discounted visitation and sigma a standard deviation", r"\sigma(\eta_a)"),
    Rule(EVERY, r"\\theta_\{s,\s?b\}|\\theta_b(?![A-Za-z])|\[a\s?=\s?b\]|\\sum_\{?b",
         "b is the baseline: the second action index is a'", r"\sum_{b \in \mathcal A} \exp(\theta_{s,b})"),
    Rule(("02",), r"\$K\$(?:-armed| actions)|length \$K\$",
         "K counts optimisation passes: a bandit has |A| arms", "A $K$-armed bandit has mean rewards", scope="text"),
    Rule(EVERY, r"\\\|\s*(?:\\,)?\s*q\)|D_\\mathrm\{TV\}\(p,\s?q\)|q_\\theta|q_\{\\theta",
         "q is the prompt: two generic distributions are p and p'", r"\mathrm{KL}(p \,\|\, q)"),
    Rule(("04",), r"\\max\s*\|\\delta\|",
         "a bare delta is TRPO's radius: TD errors carry a time index", r"\max|\delta| \, \lambda^{k-1}"),
    Rule(("01", "02"), r"\\Delta(?![A-Za-z])",
         "Delta is a parameter step (chapter 3)", r"V^*(s) - V^\pi(s) \le 2\varepsilon + \gamma\Delta"),
    Rule(("05",), r"(?<![A-Za-z\\_])x\s*=\s*\\pi_\\text\{ref\}|\\nabla\(x\s",
         "the reference-to-policy ratio is x_r, as in chapter 6's estimators",
         r"x = \pi_\text{ref}(o_t \mid s_t) / \pi_\theta(o_t \mid s_t)"),
    Rule(EVERY, r"^\$\[[A-Z][^\]$]*\]\$$",
         "tensor shapes are code (`[N, L]`, as on the API page): L is a loss, T a number of steps", "[N, L]"),
    Rule(("03",), r"K\$ iterations of conjugate|CG iterations \$K\$",
         "CG iterations are n_CG (K counts optimisation passes)", "CG iterations $K$, backtracking", scope="text"),
    Rule(EVERY, r"(?<!\\hat )(?<!\\hat)(?<![A-Za-z\\{])A_\{?i(?![a-z])",
         "an advantage computed from samples wears a hat: GRPO's group advantage is hat A_i",
         r"A_i = (r_i - \operatorname{mean}(r_{1..G})) / \operatorname{std}(r_{1..G})"),
    Rule(("07", "08"), r"(?<![A-Za-z\\])[TA]\s*(?:\\[,;!: ])?\s*\\texttt\{</(?:think|answer)>\}|(?<![A-Za-z\\])T\(o\)",
         "the texts of the think and answer blocks are think(o) and ans(o): T counts steps, A is the advantage",
         r"o \in \texttt{<think>}\,T\,\texttt{</think>}\;\texttt{<answer>}\,A\,\texttt{</answer>}"),
    Rule(("08",), r"\(x,\s*y\)|(?<![A-Za-z\\])s\s*=\s*\(x|\\mid\s*s_\{<t\}|t\s*\\in\s*C(?![A-Za-z])|\|C\||\\lvert\s*C\s*\\rvert",
         "a prompt is q and a completion o (chapter 5): s is a state, C TRPO's coefficient",
         r"-\frac{1}{|C|} \sum_{t \in C} \log \pi_\theta(s_t \mid s_{<t}), \quad s = (x, y)"),
    Rule(("08",), r"\\text\{[^}]*language[^}]*\}\s*\\ell|^\$\\ell\$$",
         "ell is the term of one sample in a loss: the target language has no symbol (the code's target_lang)",
         r"\#\{\text{words of } T(o) \text{ in language } \ell\}"),
    Rule(("08",), r"\b[26]N per (?:forward|trained) token",
         "N counts samples: a model has |theta| parameters and costs 2|theta| FLOPs per forward token",
         "(2N per forward token, 6N per trained token)", scope="text"),
)


def _violations(rule: Rule, text: str) -> list[str]:
    if rule.scope == "text":
        return [m.group(0) for m in re.finditer(rule.pattern, prose(text))]
    return [seg for seg in math_segments(text) if re.search(rule.pattern, seg)]


@pytest.mark.parametrize("rule", RULES, ids=[f"{'-'.join(r.chapters)}:{r.why[:40]}" for r in RULES])
def test_rule_catches_the_text_it_was_written_against(rule):
    text = rule.was if rule.scope == "text" else f"${rule.was}$"
    assert _violations(rule, text), f"rule {rule.pattern!r} no longer matches {rule.was!r}"


@pytest.mark.parametrize("prefix", CHECKED)
def test_chapter_markdown_keeps_one_meaning_per_symbol(prefix):
    name, cells = markdown_cells(prefix)
    problems = []
    for rule in RULES:
        if prefix not in rule.chapters:
            continue
        for i, src in enumerate(cells):
            for hit in _violations(rule, src):
                problems.append(f"markdown cell {i}: {hit.strip()[:160]!r}\n    -> {rule.why}")
    assert not problems, f"{name} brings back a notation clash (see book/notation.md):\n" + "\n".join(problems)


@pytest.mark.parametrize("prefix", CHECKED)
def test_chapter_links_notation_and_glossary(prefix):
    name, cells = markdown_cells(prefix)
    text = "\n".join(cells)
    assert "{doc}`../notation`" in text, f"{name}: no link to the notation page ({{doc}}`../notation`)"
    assert "{doc}`../glossary`" in text, f"{name}: no link to the glossary ({{doc}}`../glossary`)"


# --- the glossary ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def glossary_terms() -> set[str]:
    text = GLOSSARY.read_text(encoding="utf-8")
    m = re.search(r"^(`{3,}|:{3,})\{glossary\}[^\n]*\n(.*?)^\1\s*$", text, re.S | re.M)
    assert m, "book/glossary.md has no {glossary} directive"
    terms = set()
    for line in m.group(2).splitlines():
        if line.strip() and not line[0].isspace() and not line.startswith(":"):
            terms.add(line.strip().lower())
    return terms


REQUIRED_TERMS = (
    "coupling", "minorise–maximise", "control variate", "whitening", "nat", "bootstrapping",
    "deadly triad", "on-policy", "off-policy", "trust region", "surrogate objective", "clip fraction",
    "explained variance", "advantage", "baseline", "gae", "kl penalty", "kl constraint", "reward hacking",
    "cold start", "rejection sampling", "distillation", "lora", "logit", "token", "rollout",
    "group-relative advantage", "rule-based reward", "reference model",
)


def test_glossary_defines_the_jargon():
    missing = [t for t in REQUIRED_TERMS if t not in glossary_terms()]
    assert not missing, f"book/glossary.md does not define {missing}"
    assert len(glossary_terms()) >= 50


def _term_targets(text: str) -> list[str]:
    return [m.group(2) or m.group(1) for m in re.finditer(r"\{term\}`([^`<]*?)\s*(?:<([^`>]+)>)?`", text)]


def test_every_term_role_has_a_glossary_entry():
    sources = {p.name: p.read_text(encoding="utf-8") for p in BOOK.glob("*.md")}
    for nb in sorted(CHAPTERS.glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        sources[nb.name] = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                                     for c in cells if c["cell_type"] == "markdown")
    used = 0
    for name, text in sources.items():
        for target in _term_targets(text):
            used += 1
            assert target.strip().lower() in glossary_terms(), f"{name}: {{term}}`{target}` is not in book/glossary.md"
    assert used >= 20, f"only {used} {{term}} links in the book"


def test_reference_pages_are_in_the_table_of_contents():
    import yaml

    toc = yaml.safe_load((BOOK / "toc_template.yml").read_text(encoding="utf-8"))
    reference = [p for p in toc["parts"] if p.get("caption") == "Reference"]
    assert reference, "book/toc_template.yml has no 'Reference' part"
    files = [c.get("file") for c in reference[0]["chapters"]]
    assert "notation" in files and "glossary" in files, files
