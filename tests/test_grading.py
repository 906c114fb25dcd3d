"""rlcore.grading: student notebooks without answers (release, nbgrader metadata) and grading
of submitted notebooks in a fresh kernel (grade), including broken submissions."""
from __future__ import annotations

import copy
import csv
import json
import re

import pytest

from rlcore import grading
from rlcore.exercises import all_checkers, checker_texts

CHAPTERS = sorted(grading.CHAPTERS.glob("[0-9]*.ipynb"))


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _src(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _squash(text):
    return re.sub(r"\s+", "", text)


# --------------------------------------------------------------------- structure of the chapters
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_exercise_is_found_and_its_checker_points_back_to_it(path):
    nb = _read(path)
    info = grading.analyse(nb)
    labels = [ex.label for ex in info.exercises]
    assert labels and len(labels) == len(set(labels)), labels
    assert all(re.fullmatch(r"ex-\d\d-[\w-]+", label) for label in labels), labels
    code = [ex for ex in info.exercises if ex.kind == "code"]
    assert code, "a chapter without an auto-graded exercise"
    checkers = all_checkers()
    for ex in code:
        assert ex.checker in checkers
        assert checker_texts(checkers[ex.checker])["exercise"] == ex.label, \
            f"{ex.checker} says it checks another exercise than {ex.label}"
        assert re.search(rf"^def {ex.function}\(", _src(nb["cells"][ex.answer_cell]), re.M)
        assert ex.statement_cell < ex.answer_cell <= ex.check_cell
        assert ex.model_cells, f"{ex.label}: no cell shows that the checker accepts a correct answer"


def test_model_answers_of_the_book_pass_their_checkers(capsys):
    """The ```python code of every {solution} block is a correct answer (it passes its checker)."""
    import math

    import numpy as np
    import torch
    import torch.nn.functional as F

    checkers = all_checkers()
    failures = []
    for path in CHAPTERS:
        nb = _read(path)
        source = grading.nbgrader_source_notebook(nb)
        for ex in grading.analyse(nb).exercises:
            if ex.kind != "code":
                continue
            cell = next(c for c in source["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == ex.label)
            code = "\n".join(line for line in _src(cell).split("\n") if not grading._CHECK_CALL_RE.match(line))
            ns = {"np": np, "torch": torch, "F": F, "math": math}
            exec(compile(code, ex.label, "exec"), ns)
            if not checkers[ex.checker](ns[ex.function]):
                failures.append(ex.label)
    assert not failures, capsys.readouterr().out


# --------------------------------------------------------------------- release
@pytest.fixture(scope="module")
def released(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert grading.main(["release", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_released_notebook_has_the_stubs_and_no_answer(path, released):
    source, student = _read(path), _read(released / path.name)
    info = grading.analyse(source)
    text = "\n".join(_src(c) for c in student["cells"])
    assert "{solution" not in text
    assert not any(grading.is_model_answer(_src(c)) for c in student["cells"])
    for label, model in grading.model_answers(source).items():
        for line in model.split("\n"):
            if len(_squash(line)) >= 20 and _squash(line) not in _squash(
                    "\n".join(_src(c) for i, c in enumerate(source["cells"])
                              if i not in info.solution_cells and i not in info.solution_ranges)):
                assert _squash(line) not in _squash(text), f"{label}: {line!r} is in the student notebook"
    assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")
    meta = student["metadata"]["rlcore"]
    assert meta["chapter"] == path.stem and meta["edition"] == "student"

    cells_by_id = {c["metadata"].get("nbgrader", {}).get("grade_id"): c for c in student["cells"]
                   if "nbgrader" in c["metadata"]}
    ids = [c["metadata"]["nbgrader"]["grade_id"] for c in student["cells"] if "nbgrader" in c["metadata"]]
    assert len(ids) == len(set(ids))
    for ex in info.exercises:
        if ex.kind == "code":
            answer, test = cells_by_id[ex.label], cells_by_id[f"{ex.label}-test"]
            assert answer["metadata"]["nbgrader"]["solution"] and not answer["metadata"]["nbgrader"]["grade"]
            assert _src(answer) == _src(source["cells"][ex.answer_cell]), "the stub changed"
            grader = test["metadata"]["nbgrader"]
            assert grader["grade"] and grader["locked"] and grader["points"] == 1 and not grader["solution"]
            assert f"_check({ex.function}, raise_on_fail=True)" in _src(test)
        else:
            answer = cells_by_id[ex.label]
            assert answer["cell_type"] == "markdown" and "YOUR ANSWER HERE" in _src(answer)
            assert answer["metadata"]["nbgrader"]["grade"] and answer["metadata"]["nbgrader"]["solution"]


def test_nbgrader_source_version_holds_the_model_answers_in_solution_regions(tmp_path):
    [path] = grading.release(["00"], tmp_path, nbgrader_source=True)
    nb = _read(path)
    answers = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("solution")
               and c["cell_type"] == "code"]
    assert len(answers) == 4
    for cell in answers:
        src = _src(cell)
        assert src.count("### BEGIN SOLUTION") == 1 and src.count("### END SOLUTION") == 1
        assert "\n    ...\n" not in src


# --------------------------------------------------------------------- grading (a fresh kernel each)
RETURNS = """\
    G, running = [], 0.0
    for r in list(rewards)[::-1]:
        running = r + gamma * running
        G.append(running)
    return G[::-1]"""
IMMEDIATE_ONLY = "    return (pi * R).sum(1)"
STATE_DISTRIBUTION = """\
    P_pi = np.einsum("sa,sax->sx", pi, P)
    eta = np.linalg.solve((np.eye(len(mu0)) - gamma * P_pi).T, mu0)
    return eta / eta.sum()"""


def _answer(nb, label, body=None, append=""):
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == label)
    src = _src(cell)
    if body is not None:
        assert "    # your code here\n    ...\n" in src
        src = src.replace("    # your code here\n    ...\n", body + "\n")
    cell["source"] = src + append
    return cell


def test_grade_scores_each_exercise(released, tmp_path):
    nb = _read(released / "00_introduction.ipynb")
    _answer(nb, "ex-00-returns", RETURNS)
    _answer(nb, "ex-00-policy-evaluation", IMMEDIATE_ONLY)  # a known mistake
    # the stub of ex-00-state-distribution stays; its test cell is tampered with, to no effect
    test = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") ==
                "ex-00-state-distribution-test")
    test["source"] = "my_state_distribution = lambda *a: 'graded?'"
    sub = tmp_path / "alice.ipynb"
    sub.write_text(json.dumps(nb))
    out = tmp_path / "results"
    assert grading.main(["grade", str(sub), "--out", str(out), "--timeout", "120"]) == 0

    result = json.loads((out / "alice.json").read_text())
    assert result["chapter"] == "00_introduction"
    assert (result["score"], result["max_score"]) == (1, 4)
    by_name = {e["name"]: e for e in result["exercises"]}
    assert by_name["ex-00-returns"]["status"] == "passed" and by_name["ex-00-returns"]["points"] == 1
    failed = by_name["ex-00-policy-evaluation"]
    assert failed["status"] == "failed" and failed["points"] == 0 and failed["max_points"] == 1
    assert "immediate reward" in failed["message"]  # the checker's message names the mistake
    assert by_name["ex-00-state-distribution"]["status"] == "not implemented"
    assert "Hint" not in by_name["ex-00-state-distribution"]["message"]
    assert by_name["ex-00-two-state-value"]["status"] == "not implemented"
    assert [m["name"] for m in result["manual"]] == ["ex-00-discuss-markov", "ex-00-discuss-timelimit",
                                                     "ex-00-experiment-monte-carlo"]
    assert result["cell_errors"] == []

    table = (out / "alice.txt").read_text()
    assert re.search(r"ex-00-returns\s+1/1\s+passed", table)
    assert re.search(r"ex-00-policy-evaluation\s+0/1\s+failed", table)
    assert re.search(r"total\s+1/4", table)
    graded = _read(out / "alice.graded.ipynb")
    assert any("RLCORE-GRADE" in json.dumps(c.get("outputs", [])) for c in graded["cells"])
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert rows[0]["score"] == "1" and rows[0]["ex-00-returns"] == "1"


def test_grade_survives_a_syntax_error_and_an_endless_loop(released, tmp_path):
    nb = _read(released / "00_introduction.ipynb")
    _answer(nb, "ex-00-returns", "    return [r for r in rewards if]")  # a syntax error
    _answer(nb, "ex-00-state-distribution", STATE_DISTRIBUTION, append="\n\nwhile True:\n    pass\n")
    sub = tmp_path / "bob.ipynb"
    sub.write_text(json.dumps(nb))
    result = grading.grade(sub, tmp_path / "results", timeout=10, cells="exercises", quiet=True)

    assert (tmp_path / "results" / "bob.json").exists() and (tmp_path / "results" / "bob.txt").exists()
    by_name = {e["name"]: e for e in result["exercises"]}
    assert by_name["ex-00-returns"]["status"] == "missing"
    assert by_name["ex-00-policy-evaluation"]["status"] == "not implemented"
    assert by_name["ex-00-state-distribution"]["status"] == "passed"  # defined before the loop
    assert result["score"] == 1
    errors = " ".join(e["error"] for e in result["cell_errors"])
    assert "SyntaxError" in errors and "timed out after 10 s" in errors


def test_an_unreadable_submission_still_gets_a_result_file(tmp_path):
    sub = tmp_path / "carol.ipynb"
    sub.write_text("{ this is not a notebook")
    result = grading.grade(sub, tmp_path / "results", quiet=True)
    saved = json.loads((tmp_path / "results" / "carol.json").read_text())
    assert saved["score"] == result["score"] == 0
    assert "cannot grade" in saved["cell_errors"][0]["error"]


def test_chapter_is_found_from_labels_without_metadata(released):
    nb = copy.deepcopy(_read(released / "00_introduction.ipynb"))
    del nb["metadata"]["rlcore"]
    spec = grading._spec_for(nb, None, grading.CHAPTERS)
    assert spec.chapter == "00_introduction"
    assert [ex.label for ex in spec.exercises if ex.kind == "code"] == [
        "ex-00-returns", "ex-00-policy-evaluation", "ex-00-state-distribution", "ex-00-two-state-value"]
