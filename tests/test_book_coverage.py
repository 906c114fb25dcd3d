"""The promise "every equation the book states has a test that checks rlcore against it", checked.

book/coverage.md holds two tables: the coverage IDs C1..C27 and one row per labelled equation
of the chapters. This test parses that file and the chapter notebooks and fails when

* a labelled equation (``$$ ... $$ (eq-label)``, or a ``{math}`` directive with ``:label: eq-label``, in a
  markdown cell) has no row in the equations table,
  or a row names a label that no chapter defines;
* a row lists no rlcore object or no test;
* a row names a test node that does not exist (the file, and ``test_name`` or ``Class::method`` defined
  in it; parametrised ids ``[...]`` are allowed);
* a row names an rlcore dotted object that cannot be imported (importlib + getattr);
* a coverage ID C1..C27 is missing.

No pytest subprocess: test files are read with ``ast``.
"""
from __future__ import annotations

import ast
import functools
import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COVERAGE = ROOT / "book" / "coverage.md"
CHAPTERS = ROOT / "chapters"

# a display-math block immediately followed by its MyST label: $$ ... $$ (eq-label)
LABEL_RE = re.compile(r"\$\$[ \t]*\((eq-[A-Za-z0-9_\-]+)\)")
# the directive form: ```{math} followed by option lines, one of them :label: eq-label
DIRECTIVE_LABEL_RE = re.compile(r"[`:]{3,}\{math\}[^\n]*\n(?:[ \t]*:[\w-]+:[^\n]*\n)*?[ \t]*:label:[ \t]*(eq-[A-Za-z0-9_\-]+)")
CODE_RE = re.compile(r"`(rlcore(?:\.[A-Za-z_]\w*)+)`")
TEST_RE = re.compile(r"`(tests/[\w/]+\.py)::([\w:\[\]\-.,= ]+)`")
EQ_RE = re.compile(r"`(eq-[A-Za-z0-9_\-]+)`")
COVERAGE_IDS = [f"C{i}" for i in range(1, 28)]


def chapter_labels() -> dict[str, str]:
    """``{label: notebook name}`` for every labelled equation in the chapters' markdown cells."""
    labels: dict[str, str] = {}
    for nb in sorted(CHAPTERS.glob("*.ipynb")):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            for label in LABEL_RE.findall(src) + DIRECTIVE_LABEL_RE.findall(src):
                labels.setdefault(label, nb.name)
    return labels


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@functools.lru_cache(maxsize=1)
def tables() -> dict[str, list[list[str]]]:
    """The markdown tables of coverage.md keyed by the first header cell ("ID" or "Label")."""
    out: dict[str, list[list[str]]] = {}
    lines = COVERAGE.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s\-:|]+\|\s*$", lines[i + 1]):
            header = _split_row(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            out[header[0]] = [header] + rows
        else:
            i += 1
    return out


def _column(table: list[list[str]], name: str) -> int:
    header = [h.lower() for h in table[0]]
    matches = [j for j, h in enumerate(header) if name in h]
    assert matches, f"book/coverage.md: table {table[0]} has no column named like {name!r}"
    return matches[0]


def equation_rows() -> dict[str, list[str]]:
    assert "Label" in tables(), "book/coverage.md needs an equations table whose first header cell is 'Label'"
    rows = {}
    for row in tables()["Label"][1:]:
        labels = EQ_RE.findall(row[0])
        assert len(labels) == 1, f"equations table: the first cell must be one `eq-label`, got {row[0]!r}"
        assert labels[0] not in rows, f"equations table: {labels[0]} has two rows"
        rows[labels[0]] = row
    return rows


def id_rows() -> dict[str, list[str]]:
    assert "ID" in tables(), "book/coverage.md needs a coverage table whose first header cell is 'ID'"
    return {row[0].strip("* "): row for row in tables()["ID"][1:]}


@functools.lru_cache(maxsize=None)
def _defined_tests(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name.startswith("test"):
                    names.add(f"{node.name}::{sub.name}")
    return names


def _check_test_node(path: str, name: str) -> str | None:
    if not (ROOT / path).is_file():
        return f"{path} does not exist"
    name = re.sub(r"\[.*\]$", "", name.strip())  # parametrised id
    if name not in _defined_tests(path):
        return f"{path}::{name} is not a test defined in {path}"
    return None


@functools.lru_cache(maxsize=None)
def _check_rlcore_object(dotted: str) -> str | None:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name) and e.name != module_name:
                return f"importing {module_name} failed: {e}"
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{dotted} cannot be found: no attribute {attr!r} after importing {module_name}"
            obj = getattr(obj, attr)
        return None
    return f"no module of {dotted} can be imported"


def _row_problems(where: str, code_cell: str, tests_cell: str) -> list[str]:
    problems = []
    codes, tests = CODE_RE.findall(code_cell), TEST_RE.findall(tests_cell)
    if not codes:
        problems.append(f"{where}: no rlcore object (write it as `rlcore.module.name`)")
    if not tests:
        problems.append(f"{where}: no test node (write it as `tests/test_x.py::test_name`)")
    for dotted in codes:
        msg = _check_rlcore_object(dotted)
        if msg:
            problems.append(f"{where}: {msg}")
    for path, name in tests:
        msg = _check_test_node(path, name)
        if msg:
            problems.append(f"{where}: {msg}")
    return problems


# ------------------------------------------------------------------ tests
def test_the_parsers_see_the_book():
    labels = chapter_labels()
    assert len(labels) >= 40, "the regex for labelled equations found almost nothing: has the label syntax changed?"
    assert set(tables()) >= {"ID", "Label"}
    for name, table in tables().items():  # a stray "|" in a cell would shift the columns
        bad = [row[0] for row in table[1:] if len(row) != len(table[0])]
        assert not bad, f"book/coverage.md table {name!r}: rows with the wrong number of cells: {bad}"


def test_label_regexes_read_both_myst_forms():
    dollar = "text\n$$\nx = 1\n$$ (eq-one)\n\n$$ y $$ (eq-two) and $x$ (eq-not-a-label)"
    directive = "```{math}\n:nowrap:\n:label: eq-three\nz = 2\n```"
    assert LABEL_RE.findall(dollar) == ["eq-one", "eq-two"]
    assert DIRECTIVE_LABEL_RE.findall(directive) == ["eq-three"]


def test_every_labelled_equation_has_a_row_and_every_row_a_label():
    labels, rows = chapter_labels(), equation_rows()
    missing = sorted(set(labels) - set(rows), key=lambda lab: (labels[lab], lab))
    assert not missing, ("labelled equations without a row in book/coverage.md's equations table: "
                         + ", ".join(f"{lab} ({labels[lab]})" for lab in missing))
    stale = sorted(set(rows) - set(labels))
    assert not stale, f"book/coverage.md lists labels that no chapter defines: {stale}"


def test_every_equation_row_names_real_code_and_real_tests():
    problems = []
    rows = equation_rows()
    code_col, test_col = _column(tables()["Label"], "rlcore"), _column(tables()["Label"], "test")
    for label, row in rows.items():
        problems += _row_problems(label, row[code_col], row[test_col])
    assert not problems, "\n".join(problems)


def test_every_coverage_id_has_a_complete_row():
    rows = id_rows()
    missing = [c for c in COVERAGE_IDS if c not in rows]
    assert not missing, f"coverage IDs missing from book/coverage.md: {missing}"
    table = tables()["ID"]
    code_col, test_col = _column(table, "rlcore"), _column(table, "test")
    label_col = _column(table, "label")
    known = set(chapter_labels())
    problems = []
    for cid in COVERAGE_IDS:
        row = rows[cid]
        problems += _row_problems(cid, row[code_col], row[test_col])
        if "planned" in " ".join(row).lower():
            problems.append(f"{cid}: still says 'planned'")
        for label in EQ_RE.findall(row[label_col]):
            if label not in known:
                problems.append(f"{cid}: label {label} is not defined in any chapter")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("bad,ok", [("rlcore.tabular.no_such_function", False), ("rlcore.no_such_module.x", False),
                                    ("rlcore.tabular.TabularMDP", True), ("rlcore.algos.ppo.PPOConfig", True)])
def test_the_object_check_can_fail(bad, ok):
    assert (_check_rlcore_object(bad) is None) == ok


def test_the_test_node_check_can_fail():
    assert _check_test_node("tests/test_book_coverage.py", "test_the_test_node_check_can_fail") is None
    assert _check_test_node("tests/test_book_coverage.py", "test_the_object_check_can_fail[x-False]") is None
    assert _check_test_node("tests/test_book_coverage.py", "test_does_not_exist") is not None
    assert _check_test_node("tests/no_such_file.py", "test_x") is not None
