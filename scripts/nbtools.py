"""Small notebook utilities for authors (needs ``jupytext`` and ``nbformat``).

The committed ``.ipynb`` is the single source of each chapter. Authors may draft a chapter
as a text file (MyST markdown ``.md`` or jupytext percent ``.py``) *outside the repository*
and turn it into the notebook with ``build``; notebooks are always committed without
outputs (``strip``), which ``check`` verifies.

    python scripts/nbtools.py build /tmp/draft.md chapters/00_introduction.ipynb
    python scripts/nbtools.py strip chapters/*.ipynb
    python scripts/nbtools.py check chapters/*.ipynb      # exit 1 if any has outputs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs, execution counts and per-cell execution metadata; set the kernel."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.pop("widgets", None)
    return nb


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    return any(c.cell_type == "code" and (c.outputs or c.execution_count is not None) for c in nb.cells)


def build(src: Path, dst: Path) -> None:
    import jupytext

    if src.suffix not in {".md", ".py"}:
        raise SystemExit(f"source must be a MyST .md or a percent .py file, got {src}")
    fmt = "md:myst" if src.suffix == ".md" else "py:percent"
    nb = jupytext.read(src, fmt=fmt)
    nb.metadata.pop("jupytext", None)
    nb = strip(nb)
    nbformat.validate(nb)
    nbformat.write(nb, dst)
    print(f"wrote {dst} ({len(nb.cells)} cells)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="draft (.md MyST or .py percent) -> stripped .ipynb")
    b.add_argument("src", type=Path)
    b.add_argument("dst", type=Path)
    s = sub.add_parser("strip", help="clear outputs and execution counts in place")
    s.add_argument("notebooks", type=Path, nargs="+")
    c = sub.add_parser("check", help="fail if a notebook has outputs or execution counts")
    c.add_argument("notebooks", type=Path, nargs="+")
    args = parser.parse_args(argv)

    if args.cmd == "build":
        build(args.src, args.dst)
        return 0
    bad = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if args.cmd == "strip":
            nbformat.write(strip(nb), path)
        elif has_outputs(nb):
            bad.append(path)
    for path in bad:
        print(f"{path}: has outputs; run `python scripts/nbtools.py strip {path}`", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
