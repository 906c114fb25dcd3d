#!/usr/bin/env bash
# Build the book: set up .venv, execute every notebook, build both editions.
#
#   bash scripts/book.sh            # full budgets (default)
#   RLCORE_QUICK=1 bash scripts/book.sh   # quick budgets: faster, noisier figures
#   bash scripts/book.sh --open     # and open it in a browser, if there is one
#
# Other options are passed to scripts/build_book.py (e.g. --execute cache to reuse
# the outputs of the last build, --no-student, --strict). Reuse never mixes modes:
# book/_build/build_manifest.json records the mode (RLCORE_QUICK) and a hash of every
# input (notebooks, rlcore/, benchmarks/results/, book config); when they differ from
# the last build's, every notebook is executed again.
# The build ends with a table of each notebook's execution time and their total.
#
# Output: book/_build/html/index.html (the book) and
#         book/_build/student/html/index.html (student edition, solutions hidden).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/setup.sh

# Offline by design: never try to reach a model hub from a notebook.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export PYTHONUNBUFFERED=1

T0=$(date +%s)
.venv/bin/python scripts/build_book.py "$@"
echo "==> book: built in $(( $(date +%s) - T0 )) s"
echo "==> open: $REPO/book/_build/html/index.html"
