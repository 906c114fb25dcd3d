"""Each chapter opens with a short setup cell, hidden on the site, that does its boilerplate through rlcore.notebook."""
import glob

import nbformat
import pytest

CHAPTERS = sorted(glob.glob("chapters/*.ipynb"))


@pytest.mark.parametrize("path", CHAPTERS)
def test_setup_cell_is_short_hidden_and_uses_rlcore_notebook(path):
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert "hide-input" in cell.metadata.get("tags", []), f"{path}: tag the setup cell 'hide-input'"
    lines = [line for line in cell.source.splitlines() if line.strip()]
    assert len(lines) <= 25, f"{path}: the setup cell has {len(lines)} lines; move boilerplate into rlcore.notebook"
    assert "setup()" in cell.source and "from rlcore.notebook import" in cell.source
    assert "sys.path" not in cell.source and "def show_source" not in cell.source


def test_setup_seeds_and_sets_threads(capsys):
    import random

    import torch

    from rlcore.notebook import setup

    threads = torch.get_num_threads()
    try:
        setup(seed=3, threads=1)
        a = random.random(), torch.rand(1).item()
        setup(seed=3, threads=1)
        assert (random.random(), torch.rand(1).item()) == a and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)  # the rest of the test session keeps its threads
    assert "quick mode:" in capsys.readouterr().out
