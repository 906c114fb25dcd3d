"""What every chapter notebook does first, in one call, so its setup cell shows only its imports.

    from rlcore.notebook import setup, show_source
    setup()        # seed 0, one torch thread, off-screen rendering, quiet progress bars
"""
from __future__ import annotations

import inspect
import os
import warnings
from datetime import datetime, timezone

__all__ = ["setup", "show_source"]


def setup(seed: int = 0, threads: int | None = 1, offline: bool = True) -> None:
    """Seed everything, pick the torch thread count and silence what a reader need not see.

    ``threads=1``: the classic chapters' networks are tiny, so one thread is fastest and leaves the
    other cores free; ``None`` keeps torch's default (the language-model chapters use it).
    ``offline``: nothing in the book downloads anything (``HF_HUB_OFFLINE=1`` unless already set).
    Prints one line with the rlcore version, whether quick mode is on and the UTC date and time of
    execution, so every page says how and when it was run.
    """
    import torch

    import rlcore
    from rlcore.utils import quick_mode, seed_everything

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # render off-screen: no display needed
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)
    executed = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"rlcore {rlcore.__version__}, quick mode: {quick_mode()}, executed {executed}")


def show_source(obj) -> None:
    """Display the source code of an rlcore function or class (the book shows the code it runs)."""
    from IPython.display import Code, display

    display(Code(inspect.getsource(obj), language="python"))
