"""Where figures go, and the one helper that saves them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..notebook import figures_dir


def save_figure(fig, name: str, directory: str | os.PathLike | None = None) -> Path:
    """Save ``fig`` as ``<figures>/<name>.png`` (150 dpi, tight) and return the path.

    Notebooks name figures after themselves (``01_forgetting_curve_curves``), commands
    after the command (``bench_tokens_per_second``). The folder is ``figures_dir()``
    (``$MEMOLLM_FIGURES``, the repository's figures/ from its notebooks/, else ./figures),
    unless ``memollm.viz.FIGURES_DIR`` was assigned.
    """
    if directory is None:
        assigned = vars(sys.modules["memollm.viz"]).get("FIGURES_DIR")  # read, not imported: viz imports us
        directory = assigned or figures_dir()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
