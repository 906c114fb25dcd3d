#!/usr/bin/env python3
"""Build the book (normal and student editions) with Jupyter Book 1.

    python scripts/build_book.py [--execute fresh|cache|force|off] [--no-student]
                                 [--strict] [--open] [--repo PATH]

Outputs
    book/_build/html/             the book, every notebook executed
    book/_build/student/html/     the student edition: same pages, solutions hidden;
                                  its downloadable sources (_sources/) are the student
                                  notebooks of `python -m rlcore.grading release`
    book/_build/logs/*.log        the full Sphinx logs

Execution (--execute):
    fresh (default)  empty the jupyter-cache and Sphinx's saved environments, then
                     execute every notebook once; the student edition reuses those
                     cached outputs instead of executing again
    cache            reuse the outputs of the last build only where nothing they depend
                     on changed (see "Reuse" below; fast iteration)
    force            execute in both editions, no cache
    off              no execution (pages show the committed notebooks, i.e. no outputs)

RLCORE_QUICK=1 in the environment reaches the notebook kernels (quick budgets).

Reuse: book/_build/build_manifest.json records, for the jupyter-cache and for each
edition's Sphinx environment (book/_build/.doctrees, book/_build/student/_build/.doctrees),
what their outputs were computed from: the mode (quick or full, and every other
RLCORE_* variable), whether notebooks were executed, and a SHA-256 of every input --
each notebook, the other files in chapters/, rlcore/**/*.py, benchmarks/results/**,
book/_config.yml and book/_ext/.  When the mode or a shared input differs from the
record (or there is no record), the cache and the saved environments are wiped, so
every notebook is executed again; when only some notebooks changed, those are re-read
(and re-executed unless the jupyter-cache holds outputs for their exact code).
Switching between quick and full mode therefore always re-executes.
Exit status: 0 on success; 1 if a build failed, or with --strict if the logs contain
errors or warnings about broken references (see ``check_log``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import webbrowser
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_toc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Log lines that make a build "broken" even though Sphinx finished.
ERROR_RE = re.compile(r"\b(ERROR|CRITICAL|SEVERE)\b|Exception occurred|Traceback \(most recent")
BAD_WARNING_RE = re.compile(
    r"undefined label|unknown target|unknown document|not found|xref_missing|"
    r"could not find bibtex key|duplicate label|nonexisting document|"
    r"Unknown directive type|Unknown interpreted text role|"
    r"Inline interpreted text or phrase reference start-string without end-string|"
    r"equation .*(not found|undefined)|Execution Failed|Executing notebook failed",
    re.IGNORECASE,
)


def check_log(text: str) -> list[str]:
    """Problems in a Sphinx log: errors, and warnings about broken references."""
    problems = []
    for line in text.splitlines():
        if ERROR_RE.search(line):
            problems.append(line.strip())
        elif "WARNING" in line and BAD_WARNING_RE.search(line):
            problems.append(line.strip())
    return problems


# What executed outputs depend on besides each notebook itself (paths relative to the repo).
SHARED_INPUTS = ("rlcore/**/*.py", "benchmarks/results/**/*", "book/_config.yml", "book/_ext/**/*")
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
MANIFEST = "build_manifest.json"


def is_quick(env=None) -> bool:
    value = (os.environ if env is None else env).get("RLCORE_QUICK", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(repo: Path, pattern: str) -> list[Path]:
    return sorted(
        p for p in repo.glob(pattern)
        if p.is_file() and not SKIP_PARTS & set(p.relative_to(repo).parts) and p.suffix != ".pyc"
    )


def build_state(repo: Path, *, executed: bool, env=None) -> dict:
    """What the outputs of a build are computed from (see "Reuse" in the module docstring)."""
    env = os.environ if env is None else env
    shared, notebooks = {}, {}
    for pattern in SHARED_INPUTS:
        for p in _files(repo, pattern):
            shared[p.relative_to(repo).as_posix()] = _sha256(p)
    for p in _files(repo, "chapters/**/*"):
        rel = p.relative_to(repo).as_posix()
        if p.name in make_toc.SKIP_NAMES or any(x.startswith(".") for x in rel.split("/")):
            continue  # what make_toc.sync_chapters does not copy
        (notebooks if p.suffix == ".ipynb" else shared)[rel] = _sha256(p)
    return {
        "quick": is_quick(env),
        "env": {k: v for k, v in sorted(env.items())
                if k.startswith("RLCORE_") and k != "RLCORE_QUICK"},
        "executed": bool(executed),
        "shared": dict(sorted(shared.items())),
        "notebooks": dict(sorted(notebooks.items())),
    }


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def compare_states(old: dict | None, new: dict) -> tuple[str | None, list[str]]:
    """(why every output is stale, or None; notebooks changed since ``old``)."""
    if not old:
        return "no record of a previous build", []
    if old.get("quick") != new["quick"]:
        mode = {True: "quick", False: "full"}
        return f"mode changed: {mode.get(old.get('quick'), '?')} -> {mode[new['quick']]}", []
    env = _changed(old.get("env", {}), new["env"])
    if env:
        return f"environment changed: {', '.join(env)}", []
    if old.get("executed") != new["executed"]:
        return "execution switched " + ("on" if new["executed"] else "off"), []
    shared = _changed(old.get("shared", {}), new["shared"])
    if shared:
        more = f" (+{len(shared) - 5} more)" if len(shared) > 5 else ""
        return f"inputs changed: {', '.join(shared[:5])}{more}", []
    return None, _changed(old.get("notebooks", {}), new["notebooks"])


def _cache_key(state: dict) -> dict:
    """The part of a state that the jupyter-cache's outputs depend on (it keys by code itself)."""
    return {k: state[k] for k in ("quick", "env", "shared")}


def read_manifest(build: Path) -> dict:
    try:
        data = json.loads((build / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(build: Path, manifest: dict) -> None:
    build.mkdir(parents=True, exist_ok=True)
    tmp = build / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(build / MANIFEST)


def edition_dirs(build: Path, name: str) -> list[Path]:
    """What Sphinx/myst-nb keep between builds of one edition (the saved environment)."""
    root = build if name == "main" else build / "student" / "_build"
    return [root / ".doctrees", root / "jupyter_execute"]


def plan_reuse(repo: Path, build: Path, cache: Path, *, execute: str, editions: list[str],
               state: dict) -> dict:
    """Wipe what could hold outputs of other inputs or another mode; return the new manifest.

    The manifest keeps the records of editions not built now; the records of the editions
    built now are dropped, and written back by the caller once each build succeeds (a
    failed build leaves no record, so the next one starts that edition afresh).
    """
    old = read_manifest(build)
    new = {"cache": old.get("cache"), "editions": dict(old.get("editions") or {})}
    if execute != "off":  # an unexecuted build neither reads nor fills the jupyter-cache
        if execute == "fresh":
            reason = "--execute fresh"
        elif old.get("cache") != _cache_key(state):
            record = old.get("cache")
            reason = compare_states(
                {**record, "executed": True, "notebooks": {}} if record else None,
                {**state, "executed": True, "notebooks": {}},
            )[0] or "different inputs"
        else:
            reason = None
        if reason:
            if cache.exists():
                shutil.rmtree(cache)
            print(f"reuse: jupyter-cache emptied ({reason})")
        new["cache"] = _cache_key(state)
    touch = set()
    for name in editions:
        if execute in ("fresh", "force"):
            reason, changed = f"--execute {execute}", []
        else:
            reason, changed = compare_states(new["editions"].get(name), state)
        if reason:
            for d in edition_dirs(build, name):
                if d.exists():
                    shutil.rmtree(d)
            print(f"reuse: {name} edition: every page is read again ({reason})")
        elif changed:
            touch.update(changed)
            print(f"reuse: {name} edition: {len(changed)} changed notebook(s) read again")
        else:
            print(f"reuse: {name} edition: mode and inputs unchanged since its last build")
        new["editions"].pop(name, None)
    # Sphinx re-reads a source only if its mtime is newer than its last read, and the
    # copies in book/chapters keep the mtime of chapters/: make changed ones look new.
    now = time.time()
    for rel in sorted(touch):
        copy = repo / "book" / rel
        if copy.exists():
            os.utime(copy, (now, now))
    write_manifest(build, new)
    return new


def execution_times(cache: Path) -> list[tuple[str, float | None]]:
    """``(notebook name, seconds)`` of every notebook whose outputs the jupyter-cache holds, in name
    order: how long each took to execute when it last ran (``None`` when the cache did not record it)."""
    if not cache.exists():
        return []
    from jupyter_cache import get_cache

    rows = {}
    for rec in get_cache(str(cache)).list_cache_records():
        rows[Path(rec.uri).stem] = (rec.data or {}).get("execution_seconds")
    return sorted(rows.items())


def format_execution_table(rows: list[tuple[str, float | None]]) -> str:
    """The table ``scripts/book.sh`` prints at the end: one line per notebook and the total."""
    if not rows:
        return "notebook execution times: none recorded (no notebook was executed through the cache)"
    width = max(len(name) for name, _ in rows)
    lines = ["notebook execution times (from the jupyter-cache, when each notebook last ran):"]
    lines += [f"  {name:<{width}}  {'?' if sec is None else f'{sec:8.1f} s'}" for name, sec in rows]
    total = sum(sec for _, sec in rows if sec is not None)
    lines.append(f"  {'total':<{width}}  {total:8.1f} s ({total / 60:.1f} min)")
    return "\n".join(lines)


def jupyter_book_exe() -> str:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return str(exe)
    found = shutil.which("jupyter-book")
    if not found:
        sys.exit("jupyter-book not found: run scripts/setup.sh first")
    return found


def write_config(book: Path, dest: Path, *, execute: str, student: bool, cache: Path | None):
    cfg = yaml.safe_load((book / "_config.yml").read_text())
    execute_cfg = cfg.setdefault("execute", {})
    execute_cfg["execute_notebooks"] = execute
    if cache is not None:
        execute_cfg["cache"] = str(cache)
    # local extension folders are resolved against the config file's folder: make
    # them absolute, since this config file does not live in book/
    local = cfg.get("sphinx", {}).get("local_extensions") or {}
    for name, path in local.items():
        local[name] = str((book / path).resolve())
    sphinx_cfg = cfg.setdefault("sphinx", {}).setdefault("config", {})
    sphinx_cfg["hide_solutions"] = bool(student)
    if student:
        cfg["title"] = f"{cfg.get('title', '')} (student edition)"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def run_logged(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, str]:
    """Run cmd, streaming its output to stdout and to log; return (rc, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    chunks = []
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            fh.write(line)
            chunks.append(line)
        rc = proc.wait()
    return rc, "".join(chunks)


def build_edition(
    repo: Path, *, student: bool, execute: str, cache: Path | None, quiet: bool = False
) -> tuple[int, str, Path]:
    """Build one edition; return (returncode, log text, html directory)."""
    book = repo / "book"
    build = book / "_build"
    name = "student" if student else "main"
    cfg_path = build / "configs" / f"_config.{name}.yml"
    write_config(book, cfg_path, execute=execute, student=student, cache=cache)
    path_output = build / "student" if student else book
    cmd = [
        jupyter_book_exe(), "build", str(book), "--builder", "html",
        "--config", str(cfg_path), "--path-output", str(path_output),
    ]
    if quiet:
        cmd.append("-q")
    env = dict(os.environ)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # autodoc and the notebook kernels import rlcore from this tree (also in a copy)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    print(f"\n=== building the {name} edition (execute={execute}) ===", flush=True)
    t0 = time.time()
    rc, out = run_logged(cmd, build / "logs" / f"{name}.log", env=env)
    html = path_output / "_build" / "html"
    if student and html.is_dir():
        final = build / "student" / "html"
        if final.exists():
            shutil.rmtree(final)
        html.rename(final)
        html = final
    print(f"=== {name} edition: rc={rc} in {time.time() - t0:.0f} s -> {html}", flush=True)
    return rc, out, html


def student_sources(html: Path, repo: Path) -> list[Path]:
    """Replace the student edition's downloadable sources by versions without solutions.

    Sphinx copies every source file to ``_sources/`` (the page's download button), so the
    student edition would otherwise ship each chapter notebook with its ``{solution}``
    blocks and model-answer cells. Notebooks become the student notebooks of
    :func:`rlcore.grading.student_notebook`; markdown sources lose their solution blocks.
    Returns the files rewritten.
    """
    sys.path.insert(0, str(repo))
    from rlcore.grading import student_markdown, student_notebook

    changed = []
    sources = html / "_sources"
    for path in sorted(sources.rglob("*")) if sources.is_dir() else []:
        if path.suffix == ".ipynb":
            nb = json.loads(path.read_text(encoding="utf-8"))
            new = json.dumps(student_notebook(nb, chapter=path.stem), indent=1, ensure_ascii=False) + "\n"
        elif path.suffix in (".md", ".txt") and "{solution" in path.read_text(encoding="utf-8"):
            new = student_markdown(path.read_text(encoding="utf-8"))
        else:
            continue
        path.write_text(new, encoding="utf-8")
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the book (normal + student editions).")
    ap.add_argument("--execute", choices=["fresh", "cache", "force", "off"], default="fresh")
    ap.add_argument("--no-student", action="store_true", help="skip the student edition")
    ap.add_argument("--strict", action="store_true", help="fail on errors / broken refs in logs")
    ap.add_argument("--open", action="store_true", help="open the book in a browser")
    ap.add_argument("--quiet", action="store_true", help="pass -q to jupyter-book")
    ap.add_argument("--repo", type=Path, default=REPO)
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    book = repo / "book"
    build = book / "_build"

    if not (book / "_offline" / "_static" / "mathjax" / "tex-chtml.js").exists():
        print("WARNING: no local MathJax (book/_offline/_static/mathjax); run scripts/setup.sh",
              file=sys.stderr)
    quick = is_quick()
    print(f"RLCORE_QUICK={'1 (quick budgets)' if quick else '0 (full budgets)'}")
    make_toc.prepare(repo)

    cache = build / ".jupyter_cache"
    if args.execute in ("fresh", "cache"):
        main_mode, student_mode = "cache", "cache"
    else:
        main_mode = student_mode = args.execute
    state = build_state(repo, executed=args.execute != "off")
    editions = ["main"] + ([] if args.no_student else ["student"])
    manifest = plan_reuse(repo, build, cache, execute=args.execute, editions=editions,
                          state=state)

    def record(name: str) -> None:  # this edition's outputs now match ``state``
        manifest["editions"][name] = state
        write_manifest(build, manifest)

    t0 = time.time()
    results = [build_edition(repo, student=False, execute=main_mode, cache=cache,
                             quiet=args.quiet)]
    if results[0][0] == 0:
        record("main")
    if results[0][0] == 0 and not args.no_student:
        results.append(build_edition(repo, student=True, execute=student_mode, cache=cache,
                                     quiet=args.quiet))
        if results[-1][0] == 0:
            record("student")
            rewritten = student_sources(results[-1][2], repo)
            print(f"student edition: {len(rewritten)} downloadable source(s) without solutions")

    status = 0
    for (rc, log, html), name in zip(results, ["main", "student"]):
        problems = check_log(log)
        if problems:
            print(f"\n{name} edition: {len(problems)} problem line(s) in the log:")
            for p in problems[:40]:
                print("   ", p)
        if rc != 0:
            print(f"{name} edition: jupyter-book failed (rc={rc})")
            status = 1
        elif problems and args.strict:
            status = 1
    index = build / "html" / "index.html"
    if args.execute != "off":
        print("\n" + format_execution_table(execution_times(cache)))
    print(f"\nTotal build time: {time.time() - t0:.0f} s")
    if status == 0:
        print(f"Book:            {index}")
        if len(results) > 1:
            print(f"Student edition: {build / 'student' / 'html' / 'index.html'}")
        if args.open:
            graphical = sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") \
                or os.environ.get("WAYLAND_DISPLAY")
            if graphical and webbrowser.open(index.as_uri()):
                print("Opened in your browser.")
            else:
                print("No graphical browser available here; open the file above yourself.")
    return status


if __name__ == "__main__":
    sys.exit(main())
