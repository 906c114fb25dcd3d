"""Student notebooks and automatic grading of the book's exercises, in nbgrader's conventions.

Two commands (run them from the repository, with the project's virtual environment)::

    python -m rlcore.grading release [CHAPTER ...] --out student_notebooks/
    python -m rlcore.grading grade SUBMISSION.ipynb [...] --out results/

``release`` writes one student notebook per chapter (all chapters by default; a chapter is
named by its number, ``00``, its file name, ``00_introduction``, or a path): the same
notebook as ``chapters/``, with every model answer removed, i.e.

* the ``{solution}`` blocks and the gated ``{solution-start}`` ... ``{solution-end}`` regions
  of the markdown cells (and every cell inside a gated region);
* the *model-answer cells*: code cells that assert that a checker accepts a correct solution
  (``assert checks.check_x(reference)``, some of them tagged ``remove-cell``).

The answer cells keep their stubs (a body of ``...``); each gets nbgrader metadata
(``{"solution": true, "grade": false, "grade_id": "<exercise label>"}``) and is followed by a
locked autograder test cell (``{"grade": true, "points": 1, "grade_id": "<label>-test"}``)
that runs the exercise's checker with ``raise_on_fail=True``. Discussion exercises (no
checker) get a markdown answer cell for manual grading (``{"solution": true, "grade": true}``).
A teacher can therefore also use nbgrader itself: put the released notebooks into nbgrader's
``source/<assignment>/`` folder and run ``nbgrader generate_assignment`` (the answer cells have
no ``### BEGIN SOLUTION`` region, so nbgrader would replace their whole content by its own stub;
``release --nbgrader-source`` writes versions whose answer cells hold the model answer inside
``### BEGIN SOLUTION`` / ``### END SOLUTION``, which is what nbgrader expects as its source).

``grade`` executes each submitted notebook from the top in a **fresh kernel**, in a temporary
directory, with a time limit per cell (:mod:`nbclient`), then calls every exercise's checker
on the student's function in that kernel, and writes, per submission,

* ``<name>.json``: ``{"submission", "chapter", "score", "max_score", "exercises": [{"name",
  "title", "function", "max_points", "points", "status", "message"}, ...], "manual": [...],
  "cell_errors": [...]}``; ``status`` is ``passed``, ``failed``, ``not implemented``,
  ``missing`` (the function is not defined), ``timeout`` or ``error``;
* ``<name>.txt``: the same as a readable table (also printed);
* ``<name>.graded.ipynb``: the executed notebook, with the grading cells at the end;

and ``scores.csv`` (one row per submission, one column per exercise). Points are nbgrader's
all-or-nothing: an exercise's point is earned when its checker passes every case. The
exercise list, the function names and the checkers come from the chapter in ``chapters/``
(found from the notebook's metadata or its exercise labels), never from the submission, so
editing the test cells in a submission changes nothing.

**Not a sandbox.** Grading runs the students' code with the rights of the user who grades:
it can read and write that user's files, use the network, and interfere with the grading
in the same kernel (e.g. replace a checker). Grade untrusted submissions inside a container
or a virtual machine without credentials; see ``book/teaching.md``.
"""
from __future__ import annotations

import argparse
import ast
import copy
import csv
import json
import os
import re
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = REPO / "chapters"

__all__ = [
    "Exercise",
    "analyse",
    "solution_sources",
    "student_notebook",
    "student_markdown",
    "nbgrader_source_notebook",
    "model_answers",
    "is_model_answer",
    "release",
    "grade",
    "find_chapter",
    "main",
]

# --------------------------------------------------------------------- notebook structure
_FENCE_RE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|:{3,})\s*\{(?P<name>[\w-]+)\}\s*(?P<arg>.*?)\s*$")
_LABEL_RE = re.compile(r"^\s*:label:\s*(\S+)")
_MODEL_ANSWER_RE = re.compile(r"^\s*assert\b.*\bcheck_\w+\s*\(", re.M)
_CHECK_CALL_RE = re.compile(
    r"^(?!\s*assert\b)\s*(?:[A-Za-z_][\w.]*\.)?(?P<checker>check_\w+)\(\s*(?P<fn>[A-Za-z_]\w*)\s*"
    r"(?:,\s*raise_on_fail\s*=\s*False\s*)?\)\s*$", re.M)
_DEF_RE = r"^def\s+{name}\s*\("
NBGRADER_SCHEMA = 3
GRADE_MARK = "RLCORE-GRADE "


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def is_model_answer(source: str) -> bool:
    """A code cell that asserts that an exercise checker accepts a function: a model answer
    (``assert checks.check_x(reference)``), hidden in the student edition and the student
    notebooks."""
    return bool(_MODEL_ANSWER_RE.search(source))


def _closing(fence: str, line: str) -> bool:
    s = line.strip()
    return len(s) >= len(fence) and set(s) == {fence[0]}


@dataclass
class _Block:
    name: str            # exercise, solution, solution-start, solution-end, ...
    arg: str             # the directive's argument (exercise title, solution target)
    start: int           # first line (the opening fence)
    end: int             # last line (the closing fence), inclusive
    label: str = ""


def _blocks(text: str) -> list[_Block]:
    """Top-level fenced directives (``{name}``) of a markdown text, with their line span."""
    lines = text.split("\n")
    out: list[_Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, j, label = m["fence"], i + 1, ""
        while j < len(lines) and not _closing(fence, lines[j]):
            lm = _LABEL_RE.match(lines[j])
            if lm and not label:
                label = lm.group(1)
            j += 1
        out.append(_Block(m["name"], m["arg"], i, min(j, len(lines) - 1), label))
        i = j + 1
    return out


@dataclass
class Exercise:
    """One exercise of a chapter notebook (cell indices refer to that notebook)."""

    label: str
    title: str
    statement_cell: int
    function: str = ""           # the reader's function (code exercises)
    checker: str = ""            # qualified name, e.g. "rlcore.exercise_checks.ch01.check_dqn_target"
    answer_cell: int | None = None
    check_cell: int | None = None
    model_cells: list[int] = field(default_factory=list)
    points: int = 1

    @property
    def kind(self) -> str:
        return "code" if self.checker else "discussion"


@dataclass
class _Analysis:
    exercises: list[Exercise]
    solution_cells: set[int]            # cells removed entirely (model answers, cells inside gated regions)
    solution_ranges: dict[int, list[tuple[int, int]]]  # markdown cell -> line spans to remove


def _checker_index() -> dict[str, str]:
    from .exercises import all_checkers

    index: dict[str, str] = {}
    for qualified in all_checkers():
        short = qualified.rsplit(".", 1)[1]
        if short in index:
            raise RuntimeError(f"two checkers are called {short}: {index[short]} and {qualified}")
        index[short] = qualified
    return index


def analyse(nb: dict) -> _Analysis:
    """The exercises of a chapter notebook and where its solutions are.

    An exercise is a ``{exercise}`` directive with a ``:label:``; it is a *code* exercise when a
    later code cell (before the next exercise) calls a checker on the reader's function,
    ``checks.check_x(my_fn, raise_on_fail=False)``; the *answer cell* is the cell that defines
    ``my_fn``. Solutions are ``{solution}`` blocks, gated ``{solution-start}`` ... ``{solution-end}``
    regions (and the cells inside them) and model-answer cells (:func:`is_model_answer`).
    """
    cells = nb.get("cells", [])
    index = None
    exercises: list[Exercise] = []
    solution_cells: set[int] = set()
    ranges: dict[int, list[tuple[int, int]]] = {}
    gated = False
    for i, cell in enumerate(cells):
        src = _source(cell)
        if cell.get("cell_type") == "markdown":
            lines = src.split("\n")
            spans: list[tuple[int, int]] = []
            gate_from = 0 if gated else None
            for b in _blocks(src):
                if b.name == "exercise" and gate_from is None:
                    exercises.append(Exercise(b.label, b.arg, i))
                elif b.name == "solution" and gate_from is None:
                    spans.append((b.start, b.end))
                elif b.name == "solution-start":
                    gate_from = b.start
                elif b.name == "solution-end":
                    spans.append((gate_from if gate_from is not None else b.start, b.end))
                    gate_from = None
            gated = gate_from is not None
            if gated:
                spans.append((gate_from, len(lines) - 1))
            if spans:
                ranges[i] = spans
            continue
        if cell.get("cell_type") != "code":
            continue
        if gated or is_model_answer(src):
            solution_cells.add(i)
            if exercises and not gated:
                exercises[-1].model_cells.append(i)
            continue
        m = _CHECK_CALL_RE.search(src)
        if m and exercises and not exercises[-1].checker:
            index = index if index is not None else _checker_index()
            ex = exercises[-1]
            if m["checker"] not in index:
                raise ValueError(f"cell {i} calls {m['checker']}, which is not a checker of rlcore")
            ex.checker, ex.function, ex.check_cell = index[m["checker"]], m["fn"], i
            definer = re.compile(_DEF_RE.format(name=re.escape(m["fn"])), re.M)
            for j in range(i, ex.statement_cell, -1):
                if cells[j].get("cell_type") == "code" and definer.search(_source(cells[j])):
                    ex.answer_cell = j
                    break
            if ex.answer_cell is None:
                raise ValueError(f"no cell between the statement of {ex.label} and cell {i} defines {m['fn']}")
    return _Analysis(exercises, solution_cells, ranges)


def _strip_spans(text: str, spans: list[tuple[int, int]]) -> str:
    lines = text.split("\n")
    drop = {k for a, b in spans for k in range(a, b + 1)}
    kept = [line for k, line in enumerate(lines) if k not in drop]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
    return out


def solution_sources(nb: dict) -> list[str]:
    """Every line of the notebook's solutions: the contents of ``{solution}`` blocks and gated
    regions (markdown, including their code fences) and the model-answer cells."""
    info = analyse(nb)
    out: list[str] = []
    cells = nb.get("cells", [])
    for i, spans in info.solution_ranges.items():
        lines = _source(cells[i]).split("\n")
        for a, b in spans:
            out.extend(lines[a:b + 1])
    for i in sorted(info.solution_cells):
        out.extend(_source(cells[i]).split("\n"))
    return out


# --------------------------------------------------------------------- student notebooks
def _nbgrader(**kw) -> dict:
    meta = {"grade": False, "solution": False, "locked": False, "schema_version": NBGRADER_SCHEMA, "task": False}
    meta.update(kw)
    return meta


def _code_cell(source: str, cell_id: str, meta: dict) -> dict:
    return {"cell_type": "code", "id": cell_id, "metadata": meta, "execution_count": None, "outputs": [],
            "source": source}


def _markdown_cell(source: str, cell_id: str, meta: dict) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": meta, "source": source}


def _test_source(ex: Exercise) -> str:
    module, name = ex.checker.rsplit(".", 1)
    return (f"# Autograder test of exercise {ex.label} ({ex.points} point{'s' if ex.points != 1 else ''}): "
            f"leave this cell as it is.\n"
            f"from {module} import {name} as _check\n\n"
            f"assert _check({ex.function}, raise_on_fail=True)")


def _chapter_name(nb: dict, default: str = "") -> str:
    return ((nb.get("metadata") or {}).get("rlcore") or {}).get("chapter") or default


def student_notebook(nb: dict, chapter: str = "", answers: dict[str, str] | None = None) -> dict:
    """The student version of a chapter notebook (see the module docstring); ``nb`` is not modified.

    ``answers`` maps an exercise label to the source that replaces its answer cell (used by
    :func:`nbgrader_source_notebook`)."""
    info = analyse(nb)
    by_answer = {ex.answer_cell: ex for ex in info.exercises if ex.kind == "code"}
    by_check = {ex.check_cell: ex for ex in info.exercises if ex.kind == "code"}
    discussion: dict[int, list[Exercise]] = {}
    for ex in info.exercises:
        if ex.kind == "discussion":
            discussion.setdefault(ex.statement_cell, []).append(ex)
    out = copy.deepcopy(nb)
    cells = []
    for i, cell in enumerate(nb.get("cells", [])):
        if i in info.solution_cells:
            continue
        cell = copy.deepcopy(cell)
        if cell.get("cell_type") == "markdown" and i in info.solution_ranges:
            text = _strip_spans(_source(cell), info.solution_ranges[i])
            if not text.strip():
                continue
            cell["source"] = text
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
            ex = by_answer.get(i)
            if ex is not None:
                cell["metadata"]["nbgrader"] = _nbgrader(solution=True, grade_id=ex.label)
                if answers and ex.label in answers:
                    cell["source"] = answers[ex.label]
        cells.append(cell)
        ex = by_check.get(i)
        if ex is not None:
            cells.append(_code_cell(_test_source(ex), f"{ex.label}-test",
                                    {"nbgrader": _nbgrader(grade=True, locked=True, points=ex.points,
                                                           grade_id=f"{ex.label}-test"),
                                     "tags": ["raises-exception"]}))
        for ex in discussion.get(i, []):
            cells.append(_markdown_cell(f"**Your answer to {ex.label}** ({ex.title}):\n\nYOUR ANSWER HERE",
                                        f"{ex.label}-answer",
                                        {"nbgrader": _nbgrader(grade=True, solution=True, points=ex.points,
                                                               grade_id=ex.label)}))
    out["cells"] = cells
    meta = out.setdefault("metadata", {})
    meta["rlcore"] = {
        "chapter": chapter or _chapter_name(nb),
        "edition": "student",
        "exercises": [{"name": ex.label, "title": ex.title, "kind": ex.kind, "function": ex.function,
                       "checker": ex.checker, "points": ex.points} for ex in info.exercises],
    }
    out["nbformat"], out["nbformat_minor"] = 4, max(5, out.get("nbformat_minor", 5))
    return out


def student_markdown(text: str) -> str:
    """A MyST markdown document without its ``{solution}`` blocks and gated solution regions."""
    info = analyse({"cells": [{"cell_type": "markdown", "source": text}]})
    return _strip_spans(text, info.solution_ranges.get(0, [])) + "\n" if info.solution_ranges else text


def _solution_fence(text: str) -> str:
    m = re.search(r"^(`{3,})python\s*\n(.*?)^\1\s*$", text, re.M | re.S)
    return m.group(2) if m else ""


def model_answers(nb: dict) -> dict[str, str]:
    """``{exercise label: model answer code}``: the python code of each code exercise's
    ``{solution}`` block (its ```` ```python ```` fence)."""
    info = analyse(nb)
    cells = nb.get("cells", [])
    targets: dict[str, str] = {}
    for i, spans in info.solution_ranges.items():
        lines = _source(cells[i]).split("\n")
        for a, b in spans:
            m = _FENCE_RE.match(lines[a])
            if m and m["name"] == "solution" and m["arg"]:
                targets[m["arg"].split()[0]] = _solution_fence("\n".join(lines[a + 1:b]))
    return {ex.label: targets.get(ex.label, "") for ex in info.exercises if ex.kind == "code"}


def _answer_with_solution(stub: str, function: str, model: str) -> str:
    """The stub cell with its ``...`` body replaced by the model answer's body inside nbgrader's
    ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers."""
    tree = ast.parse(model)
    lines = model.split("\n")
    body: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            body += lines[node.lineno - 1:node.end_lineno]
        elif isinstance(node, ast.FunctionDef) and node.name == function:
            first = node.body[0]
            body += [textwrap.dedent("\n".join(lines[first.lineno - 1:node.end_lineno]))]
    if not body:
        raise ValueError(f"the model answer does not define {function}")
    stub_lines = stub.split("\n")
    for k, line in enumerate(stub_lines):
        if line.strip() == "...":
            indent = line[: len(line) - len(line.lstrip())]
            region = [indent + "### BEGIN SOLUTION",
                      *[textwrap.indent(b, indent) for b in body],
                      indent + "### END SOLUTION"]
            start = k - 1 if k and stub_lines[k - 1].strip().lower() == "# your code here" else k
            return "\n".join(stub_lines[:start] + region + stub_lines[k + 1:])
    raise ValueError(f"the stub of {function} has no `...` body")


def nbgrader_source_notebook(nb: dict, chapter: str = "") -> dict:
    """Like :func:`student_notebook`, but every answer cell holds the model answer inside
    ``### BEGIN SOLUTION`` / ``### END SOLUTION``: nbgrader's *source* version, from which
    ``nbgrader generate_assignment`` makes the student version."""
    info = analyse(nb)
    models = model_answers(nb)
    cells = nb.get("cells", [])
    answers = {}
    for ex in info.exercises:
        if ex.kind == "code":
            if not models.get(ex.label):
                raise ValueError(f"{ex.label} has no ```python fence in its {{solution}} block")
            answers[ex.label] = _answer_with_solution(_source(cells[ex.answer_cell]), ex.function, models[ex.label])
    out = student_notebook(nb, chapter, answers=answers)
    out["metadata"]["rlcore"]["edition"] = "nbgrader-source"
    return out


def find_chapter(name: str, chapters_dir: Path = CHAPTERS) -> Path:
    """A chapter notebook from its number (``"0"``, ``"00"``), stem (``00_introduction``) or path."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p
    stem = p.name.removesuffix(".ipynb")
    found = sorted(chapters_dir.glob(f"{stem}.ipynb"))
    if not found and stem.isdigit():
        found = sorted(chapters_dir.glob(f"{int(stem):02d}_*.ipynb"))
    if len(found) != 1:
        raise FileNotFoundError(f"no chapter {name!r} in {chapters_dir}")
    return found[0]


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _write(nb: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def release(chapters: Iterable[str] = (), out: Path = Path("student_notebooks"), chapters_dir: Path = CHAPTERS,
            nbgrader_source: bool = False) -> list[Path]:
    """Write the student notebooks (or nbgrader source notebooks) of ``chapters`` (default: all) to ``out``."""
    paths = [find_chapter(c, chapters_dir) for c in chapters] or sorted(Path(chapters_dir).glob("[0-9]*.ipynb"))
    written = []
    for path in paths:
        nb = _read(path)
        make = nbgrader_source_notebook if nbgrader_source else student_notebook
        student = make(nb, chapter=path.stem)
        target = Path(out) / path.name
        _write(student, target)
        info = student["metadata"]["rlcore"]["exercises"]
        code = sum(e["kind"] == "code" for e in info)
        print(f"{target}: {code} auto-graded exercise(s), {len(info) - code} for manual grading")
        written.append(target)
    return written


# --------------------------------------------------------------------- grading
_GRADER_PRELUDE = r'''
# rlcore grading: helper (added by the grader)
def __rlcore_grade(label, function, module, checker):
    import contextlib, importlib, io, json
    record = {"name": label}
    fn = globals().get(function)
    if fn is None:
        record.update(status="missing", message=f"{function} is not defined (did its cell raise an error?)")
    elif not callable(fn):
        record.update(status="missing", message=f"{function} is not a function")
    else:
        check = getattr(importlib.import_module(module), checker)
        out = io.StringIO()
        ok = False
        try:
            with contextlib.redirect_stdout(out):
                ok = check(fn, raise_on_fail=False) is True
        except BaseException as exc:  # KeyboardInterrupt from the time limit, SystemExit, ...
            out.write(f"\nthe check stopped: {type(exc).__name__}: {exc}")
        message = out.getvalue().strip()
        if ok:
            status = "passed"
        elif message.split("\n")[0].endswith("not implemented yet"):
            status = "not implemented"
        else:
            status = "failed"
        record.update(status=status, message=message[-4000:])
    print("RLCORE-GRADE " + json.dumps(record))
'''.strip()


@dataclass
class _Spec:
    chapter: str
    exercises: list[Exercise]


def _spec_for(nb: dict, source: Path | None, chapters_dir: Path) -> _Spec:
    if source is None:
        chapter = _chapter_name(nb)
        if not chapter:  # infer from exercise labels ex-NN-... in grade ids or markdown
            text = json.dumps(nb.get("cells", []))
            numbers = sorted(set(re.findall(r"\bex-(\d\d)-", text)))
            if len(numbers) != 1:
                raise ValueError("cannot tell which chapter this notebook is; pass --chapter")
            chapter = numbers[0]
        source = find_chapter(chapter, chapters_dir)
    info = analyse(_read(source))
    return _Spec(Path(source).stem, info.exercises)


def _exercise_section_start(nb: dict) -> int:
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "markdown" and any(b.name == "exercise" for b in _blocks(_source(cell))):
            return i
    return len(nb.get("cells", []))


def _prepare(nb: dict, spec: _Spec, cells: str) -> tuple[dict, list[int], list[int]]:
    """The notebook to execute: the submission (without its autograder test cells, which the
    grader regenerates), then the grading cells; returns it, the indices of the grading cells,
    and for each kept cell its index in the submission."""
    run = copy.deepcopy(nb)
    kept, origin = [], []
    start = _exercise_section_start(nb) if cells == "exercises" else 0
    first_code = next((i for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"), None)
    for i, cell in enumerate(run.get("cells", [])):
        grader = (cell.get("metadata") or {}).get("nbgrader") or {}
        if grader.get("grade") and not grader.get("solution"):
            continue  # an autograder test cell: the grader runs its own
        if cells == "exercises" and i < start and i != first_code:
            continue
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        kept.append(cell)
        origin.append(i)
    grading = [_code_cell(_GRADER_PRELUDE, "rlcore-grading-prelude", {})]
    for ex in spec.exercises:
        if ex.kind != "code":
            continue
        module, name = ex.checker.rsplit(".", 1)
        grading.append(_code_cell(f"# rlcore grading: {ex.label}\n"
                                  f"__rlcore_grade({ex.label!r}, {ex.function!r}, {module!r}, {name!r})",
                                  f"rlcore-grade-{ex.label}", {}))
    run["cells"] = kept + grading
    return run, list(range(len(kept), len(kept) + len(grading))), origin


def _cell_error(cell: dict) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}".strip()[:500]
    return ""


def _execute(run: dict, grading: list[int], timeout: int, kernel: str, workdir: Path,
             startup_timeout: int) -> tuple[list[dict], dict[int, str]]:
    """Execute ``run`` cell by cell in a fresh kernel; return the cells' problems and, per cell
    that could not finish, why. A cell that runs past ``timeout`` is interrupted (KeyboardInterrupt)
    and the next cells run; if the kernel does not answer after an interrupt, or dies, the
    remaining cells are not run."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    class Client(NotebookClient):
        timed_out = False

        async def _async_handle_timeout(self, timeout, cell=None):
            self.timed_out = True
            return await super()._async_handle_timeout(timeout, cell)

    nb = nbformat.reads(json.dumps(run), as_version=4)  # joins list-of-lines sources
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    client = Client(nb, timeout=timeout, kernel_name=kernel, allow_errors=True, interrupt_on_timeout=True,
                    error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran longer than {timeout} s",
                                      "traceback": []},
                    startup_timeout=startup_timeout, resources={"metadata": {"path": str(workdir)}})
    problems: list[dict] = []
    skipped: dict[int, str] = {}
    n = len(nb.cells)
    alive = True
    with client.setup_kernel(env=env, cwd=str(workdir)):
        for idx in range(n):
            cell = nb.cells[idx]
            if cell.cell_type != "code":
                continue
            if not alive:
                skipped[idx] = "not run: the kernel died or stopped answering earlier"
                continue
            client.timed_out = False
            try:
                client.execute_cell(cell, idx)
            except DeadKernelError:
                problems.append({"cell": idx, "error": "the kernel died"})
                skipped[idx] = "the kernel died"
                alive = False
                continue
            if client.timed_out:
                problems.append({"cell": idx, "error": f"timed out after {timeout} s (interrupted)"})
                skipped[idx] = f"timed out after {timeout} s"
                # does the kernel answer again after the interrupt?
                probe = nbformat.v4.new_code_cell("pass")
                nb.cells.append(probe)
                client.timed_out, saved, client.timeout = False, client.timeout, min(timeout, 30)
                try:
                    client.execute_cell(probe, len(nb.cells) - 1)
                    alive = not client.timed_out
                except DeadKernelError:
                    alive = False
                finally:
                    client.timeout = saved
                    nb.cells.pop()
                continue
            error = _cell_error(cell)
            if error and idx not in grading:
                problems.append({"cell": idx, "error": error})
    run["cells"] = [dict(c) for c in json.loads(nbformat.writes(nb))["cells"]]
    return problems, skipped


def _parse_grade(cell: dict) -> dict | None:
    for out in cell.get("outputs", []):
        text = out.get("text", "")
        text = "".join(text) if isinstance(text, list) else text
        for line in text.splitlines():
            if line.startswith(GRADE_MARK):
                try:
                    return json.loads(line[len(GRADE_MARK):])
                except json.JSONDecodeError:
                    return None
    return None


def grade(submission: Path, out: Path = Path("results"), timeout: int = 60, cells: str = "all",
          chapter: str | None = None, source: Path | None = None, kernel: str = "python3",
          chapters_dir: Path = CHAPTERS, startup_timeout: int = 120, quiet: bool = False) -> dict:
    """Grade one submitted notebook; write ``<stem>.json``, ``<stem>.txt`` and ``<stem>.graded.ipynb``
    to ``out`` and return the result (see the module docstring).

    Even a notebook that cannot be read, has syntax errors, loops forever or kills its kernel
    gets a result file (with the exercises it could not grade at 0 points)."""
    submission = Path(submission)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result: dict[str, Any] = {"submission": str(submission), "chapter": None, "graded_at":
                              time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timeout_s": timeout, "cells": cells,
                              "score": 0, "max_score": 0, "exercises": [], "manual": [], "cell_errors": []}
    try:
        nb = _read(submission)
        if source is None and chapter:
            source = find_chapter(chapter, chapters_dir)
        spec = _spec_for(nb, source, chapters_dir)
    except Exception as exc:  # unreadable submission or unknown chapter: still a result file
        spec, nb = None, None
        result["cell_errors"].append({"cell": None, "error": f"cannot grade: {type(exc).__name__}: {exc}"})
    if spec is not None:
        result["chapter"] = spec.chapter
        run, grading, origin = _prepare(nb, spec, cells)
        code_exercises = [ex for ex in spec.exercises if ex.kind == "code"]
        records: dict[str, dict] = {}
        try:
            with tempfile.TemporaryDirectory(prefix="rlcore-grade-") as tmp:
                problems, skipped = _execute(run, grading, timeout, kernel, Path(tmp), startup_timeout)
            for p in problems:  # report the submission's cell numbers
                p["cell"] = origin[p["cell"]] if p["cell"] is not None and p["cell"] < len(origin) else "grading"
            result["cell_errors"] = problems
            for ex, idx in zip(code_exercises, grading[1:]):
                rec = _parse_grade(run["cells"][idx])
                why = skipped.get(idx, "")
                if rec is None:
                    why = why or _cell_error(run["cells"][idx]) or "the grading cell printed no result"
                    rec = {"status": "timeout" if "timed out" in why else "error", "message": why}
                elif "timed out" in why:  # the check itself ran too long: an endless loop in the function?
                    rec = {"status": "timeout", "message": f"the check {why} (is there an endless loop?)"}
                records[ex.label] = rec
            _write(run, out / f"{submission.stem}.graded.ipynb")
        except Exception as exc:  # the kernel could not start, ...
            result["cell_errors"].append({"cell": None, "error": f"execution failed: {type(exc).__name__}: {exc}"})
        for ex in code_exercises:
            rec = records.get(ex.label, {"status": "error", "message": "not graded (execution failed)"})
            points = ex.points if rec.get("status") == "passed" else 0
            result["exercises"].append({"name": ex.label, "title": ex.title, "function": ex.function,
                                        "max_points": ex.points, "points": points, "status": rec.get("status"),
                                        "message": rec.get("message", "")})
        result["manual"] = [{"name": ex.label, "title": ex.title, "max_points": ex.points}
                            for ex in spec.exercises if ex.kind == "discussion"]
        result["score"] = sum(e["points"] for e in result["exercises"])
        result["max_score"] = sum(e["max_points"] for e in result["exercises"])
    result["seconds"] = round(time.time() - t0, 1)
    (out / f"{submission.stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    table = format_table(result)
    (out / f"{submission.stem}.txt").write_text(table + "\n", encoding="utf-8")
    if not quiet:
        print(table)
    return result


def format_table(result: dict) -> str:
    """The result of :func:`grade` as a readable table."""
    head = (f"{result['submission']}  (chapter {result['chapter']}, {result['timeout_s']} s per cell, "
            f"graded {result['graded_at']})")
    rows = [(e["name"], f"{e['points']}/{e['max_points']}", e["status"] or "",
             (e["message"] or "").split("\n")[0]) for e in result["exercises"]]
    w0 = max([len("exercise")] + [len(r[0]) for r in rows])
    w2 = max([len("status")] + [len(r[2]) for r in rows])
    lines = [head, "", f"{'exercise':<{w0}}  points  {'status':<{w2}}  checker message"]
    lines += [f"{a:<{w0}}  {b:>6}  {c:<{w2}}  {d}" for a, b, c, d in rows]
    lines.append(f"{'total':<{w0}}  {str(result['score']) + '/' + str(result['max_score']):>6}")
    if result["manual"]:
        lines.append("")
        lines.append("to grade by hand (discussion, not scored here): "
                     + ", ".join(m["name"] for m in result["manual"]))
    if result["cell_errors"]:
        lines.append("")
        lines.append("cells that raised an error or timed out:")
        lines += [f"  cell {p['cell']}: {p['error']}" for p in result["cell_errors"][:20]]
    return "\n".join(lines)


def _write_scores(results: list[dict], out: Path) -> Path:
    names = []
    for r in results:
        for e in r["exercises"]:
            if e["name"] not in names:
                names.append(e["name"])
    path = Path(out) / "scores.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["submission", "chapter", "score", "max_score", *names])
        for r in results:
            points = {e["name"]: e["points"] for e in r["exercises"]}
            w.writerow([r["submission"], r["chapter"], r["score"], r["max_score"], *[points.get(n, "") for n in names]])
    return path


# --------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlcore.grading",
                                 description="Student notebooks and grading for the book's exercises.")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="write student notebooks: stubs kept, model answers removed")
    r.add_argument("chapters", nargs="*", help="chapter numbers, names or paths (default: all)")
    r.add_argument("--out", type=Path, default=Path("student_notebooks"))
    r.add_argument("--chapters-dir", type=Path, default=CHAPTERS)
    r.add_argument("--nbgrader-source", action="store_true",
                   help="answer cells hold the model answer inside ### BEGIN/END SOLUTION (nbgrader's source version)")
    g = sub.add_parser("grade", help="execute submitted notebooks in a fresh kernel and score each exercise")
    g.add_argument("submissions", nargs="+", type=Path)
    g.add_argument("--out", type=Path, default=Path("results"))
    g.add_argument("--timeout", type=int, default=60, help="seconds per cell (default 60)")
    g.add_argument("--cells", choices=["all", "exercises"], default="all",
                   help="run every cell (default) or only the first code cell and the exercise section")
    g.add_argument("--chapter", help="the chapter (number or name) when the notebook's metadata does not say")
    g.add_argument("--kernel", default="python3")
    g.add_argument("--chapters-dir", type=Path, default=CHAPTERS)
    args = ap.parse_args(argv)
    if args.command == "release":
        release(args.chapters, args.out, args.chapters_dir, nbgrader_source=args.nbgrader_source)
        return 0
    results = []
    for path in args.submissions:
        results.append(grade(path, args.out, timeout=args.timeout, cells=args.cells, chapter=args.chapter,
                             kernel=args.kernel, chapters_dir=args.chapters_dir))
        print()
    print(f"scores: {_write_scores(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
