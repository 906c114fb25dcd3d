"""The book build never mixes modes: switching quick/full or changing an input re-executes.

``scripts/build_book.py --repo PATH`` builds a tiny stand-in book made here (one notebook
that prints whether quick mode is on and appends a line to a file each time it runs), not
the real one: a handful of small builds, about a minute in all.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import build_book  # noqa: E402

PROBE = "chapters/01_probe"


def _probe_notebook(runs: Path) -> dict:
    code = (
        "import os, time\n"
        "quick = os.environ.get('RLCORE_QUICK', '').strip().lower() in {'1', 'true', 'yes', 'on'}\n"
        f"with open({str(runs)!r}, 'a') as fh:\n"
        "    fh.write(f'{quick}\\n')\n"
        "print(f'probe quick mode: {quick}, run {time.time_ns()}')\n"
    )
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Probe\n\nA stand-in chapter."},
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
             "source": code},
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


CONFIG = """\
title: Probe book
author: tests
only_build_toc_files: true
exclude_patterns: [_build, Thumbs.db, .DS_Store, "**.ipynb_checkpoints"]
execute:
  execute_notebooks: force
  timeout: 120
  allow_errors: false
  raise_on_error: true
  run_in_temp: false
"""

TOC = """\
format: jb-book
root: intro
parts:
- caption: Chapters
  chapters:
  - file: chapters/01_probe
"""


def _make_repo(root: Path) -> Path:
    (root / "book").mkdir(parents=True)
    (root / "book" / "_config.yml").write_text(CONFIG)
    (root / "book" / "toc_template.yml").write_text(TOC)
    (root / "book" / "intro.md").write_text("# Probe book\n\nThe introduction.\n")
    (root / "chapters").mkdir()
    (root / f"{PROBE}.ipynb").write_text(json.dumps(_probe_notebook(root / "runs.txt"), indent=1))
    (root / "rlcore").mkdir()
    (root / "rlcore" / "probe.py").write_text("VALUE = 1\n")
    return root


def _build(root: Path, *, quick: bool, execute: str | None = None) -> str:
    """Build the stand-in book (main edition); return the probe page's printed line."""
    env = {k: v for k, v in os.environ.items() if k != "RLCORE_QUICK"}
    if quick:
        env["RLCORE_QUICK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, str(REPO / "scripts" / "build_book.py"), "--repo", str(root),
           "--no-student", "--quiet"]
    if execute:
        cmd += ["--execute", execute]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    html = (root / "book" / "_build" / "html" / f"{PROBE}.html").read_text()
    found = re.findall(r"probe quick mode: (?:True|False), run \d+", html)
    assert len(found) == 1, f"no single probe line in the page: {found}"
    return found[0]


def _runs(root: Path) -> list[str]:
    path = root / "runs.txt"
    return path.read_text().split() if path.exists() else []


def test_switching_mode_or_inputs_re_executes_and_nothing_else_does(tmp_path):
    if importlib.util.find_spec("jupyter_book") is None:
        pytest.skip("jupyter-book is not importable (run scripts/setup.sh)")
    root = _make_repo(tmp_path / "repo")

    # the issue: a quick build, then a plain (full, --execute fresh) build
    quick = _build(root, quick=True)
    assert quick.startswith("probe quick mode: True") and _runs(root) == ["True"]
    full = _build(root, quick=False)
    assert full.startswith("probe quick mode: False") and _runs(root) == ["True", "False"]

    # --execute cache with nothing changed reuses the page: no execution
    assert _build(root, quick=False, execute="cache") == full
    assert _runs(root) == ["True", "False"]

    # --execute cache after switching the mode executes again
    quick2 = _build(root, quick=True, execute="cache")
    assert quick2.startswith("probe quick mode: True") and quick2 != quick
    assert _runs(root) == ["True", "False", "True"]

    # ... and after a change in rlcore/, which the notebook file does not show
    (root / "rlcore" / "probe.py").write_text("VALUE = 2\n")
    quick3 = _build(root, quick=True, execute="cache")
    assert quick3 != quick2 and _runs(root) == ["True", "False", "True", "True"]

    manifest = json.loads((root / "book" / "_build" / build_book.MANIFEST).read_text())
    assert manifest["editions"]["main"]["quick"] is True
    assert "rlcore/probe.py" in manifest["editions"]["main"]["shared"]


def test_compare_states():
    def state(**kw):
        base = {"quick": False, "env": {}, "executed": True,
                "shared": {"rlcore/a.py": "1", "benchmarks/results/r.json": "2"},
                "notebooks": {"chapters/01.ipynb": "3", "chapters/02.ipynb": "4"}}
        return {**base, **kw}

    assert build_book.compare_states(state(), state()) == (None, [])
    assert "no record" in build_book.compare_states(None, state())[0]
    assert "mode changed: quick -> full" in build_book.compare_states(state(quick=True), state())[0]
    assert "RLCORE_SANDBOX" in build_book.compare_states(
        state(), state(env={"RLCORE_SANDBOX": "weak"}))[0]
    assert "execution switched on" in build_book.compare_states(state(executed=False), state())[0]
    reason = build_book.compare_states(
        state(), state(shared={"rlcore/a.py": "1", "benchmarks/results/r.json": "9"}))[0]
    assert "benchmarks/results/r.json" in reason
    changed = build_book.compare_states(
        state(), state(notebooks={"chapters/01.ipynb": "3", "chapters/02.ipynb": "5"}))
    assert changed == (None, ["chapters/02.ipynb"])


def test_execution_time_table_reads_the_jupyter_cache(tmp_path):
    """book.sh ends with a per-notebook time table, read from the jupyter-cache's records."""
    nbformat = pytest.importorskip("nbformat")
    jc = pytest.importorskip("jupyter_cache")
    from jupyter_cache.base import CacheBundleIn

    assert build_book.execution_times(tmp_path / "missing") == []
    assert "none recorded" in build_book.format_execution_table([])
    cache = jc.get_cache(str(tmp_path / "cache"))
    for name, seconds in [("02_b", 30.0), ("01_a", 90.0)]:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"print({name!r})", execution_count=1)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        cache.cache_notebook_bundle(CacheBundleIn(nb, str(tmp_path / f"{name}.ipynb"),
                                                  data={"execution_seconds": seconds}), overwrite=True)
    rows = build_book.execution_times(tmp_path / "cache")
    assert rows == [("01_a", 90.0), ("02_b", 30.0)]
    table = build_book.format_execution_table(rows)
    assert "01_a" in table and "90.0 s" in table and "120.0 s (2.0 min)" in table
