"""The notebooks: their set-up cells, Colab links, glossary links and kernels (memollm.notebook itself: test_notebook.py)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import memollm
from memollm import notebook

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SOLUTION_NOTEBOOKS = sorted((REPO / "notebooks" / "solutions").glob("*.ipynb"))
LESSONS = [p for p in NOTEBOOKS if not p.name.startswith("00_")]
START = REPO / "notebooks" / "00_start_here.ipynb"
GLOSSARY = REPO / "notebooks" / "GLOSSARY.md"


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


def test_repo_revision_exists():
    """The badges and install lines open a revision that exists: main, or a tag in this history."""
    revision = notebook.REPO_REVISION
    if revision == "main":
        return
    assert re.fullmatch(r"v\d+\.\d+\.\d+", revision), f"REPO_REVISION {revision!r} is neither main nor vX.Y.Z"
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("no git checkout here: cannot check that the tag exists")
    tags = subprocess.run(["git", "tag", "--merged", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.split()
    assert revision in tags, f"REPO_REVISION {revision!r} is not a tag in this history (tags: {tags})"


def test_colab_install_command_and_links_use_the_revision():
    rev = notebook.REPO_REVISION
    cmd = notebook.colab_install_command()
    assert cmd == f'%pip install -q "memollm[colab] @ git+{notebook.REPO_URL}@{rev}"'
    badge = notebook.colab_badge_url("notebooks/01_forgetting_curve.ipynb")
    assert badge.startswith("https://colab.research.google.com/github/")
    assert badge.endswith(f"/blob/{rev}/notebooks/01_forgetting_curve.ipynb")
    assert notebook.repo_file_url("README.md#quality") == f"{notebook.REPO_URL}/blob/{rev}/README.md#quality"
    assert notebook.glossary_url("budget") == f"{notebook.REPO_URL}/blob/{rev}/notebooks/GLOSSARY.md#budget"


def _pins(lines) -> dict[str, str]:
    """``{normalised name: version}`` of the ``name==version`` lines (comments and others skipped)."""
    pins = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)\s*(#.*)?", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def _project() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


# Left to Colab's own kernel, on purpose (see the comment above the extra in pyproject.toml).
LEFT_TO_COLAB = {"torch", "numpy", "matplotlib"}


def test_colab_extra_pins_the_tested_versions():
    """What a notebook installs on Colab is what the tests ran: every entry of the ``colab`` extra
    is ``name==version`` with the version of constraints.txt, and covers memollm's own
    dependencies except the few left to Colab."""
    project = _project()
    colab = project["optional-dependencies"]["colab"]
    pinned = _pins(colab)
    assert len(pinned) == len(colab), f"every entry of the colab extra must be name==version: {colab}"
    tested = _pins((REPO / "constraints.txt").read_text(encoding="utf-8").splitlines())
    differ = {name: (version, tested.get(name)) for name, version in pinned.items() if tested.get(name) != version}
    assert not differ, f"colab pins differ from constraints.txt (colab, constraints): {differ}"
    direct = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", d).group(0)).lower()
              for d in project["dependencies"]}
    assert direct - LEFT_TO_COLAB <= set(pinned), f"not pinned for Colab: {sorted(direct - LEFT_TO_COLAB - set(pinned))}"
    assert pinned["ipywidgets"].startswith("8."), "the panel in notebook 01 needs ipywidgets 8"
    assert "ipywidgets>=8" in project["optional-dependencies"]["notebooks"]


# -- the notebooks' set-up cells -----------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS + SOLUTION_NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_installs_this_revision(path):
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
    assert "half precision" in source, f"{path.name}: say that a GPU runs in half precision (numbers differ)"
    tags = cell["metadata"].get("tags", [])
    assert "nbval-ignore-output" in tags or lines[0].startswith("# NBVAL_IGNORE_OUTPUT"), (
        f"{path.name}: the set-up cell prints versions and paths; its output must be ignored")


SEED_URL = "https://github.com/Fzkuji/LLM-Memory"  # the seed project, credited by 00 and the glossary


def _badge(path: Path) -> str:
    """The Colab badge's target: lessons through ``colab_badge_url``, solutions in their subfolder."""
    if path.parent.name == "solutions":
        return notebook.colab_badge_url(path.name).replace("/notebooks/", "/notebooks/solutions/")
    return notebook.colab_badge_url(path.name)


WITH_BADGES = NOTEBOOKS + SOLUTION_NOTEBOOKS  # every lesson and every solution opens in Colab from its badge


@pytest.mark.parametrize("path", WITH_BADGES, ids=lambda p: p.name)
def test_badge_and_links_derive_from_the_repo_url(path):
    nb = _nb(path)
    text = "\n".join(_source(c) for c in nb["cells"])
    badges = re.findall(r"\(https://colab\.research\.google\.com/github/[^)\s]+\)", text)
    assert badges == [f"({_badge(path)})"], f"{path.name}: badge {badges}"
    for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
        assert url in (notebook.REPO_URL, SEED_URL), f"{path.name} names {url}, not {notebook.REPO_URL}"


def _markdown(nb: dict) -> str:
    return "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _glossary_anchors() -> set[str]:
    return {_slug(h) for h in re.findall(r"^## (.+)$", GLOSSARY.read_text(encoding="utf-8"), re.M)}


@pytest.mark.parametrize("path", WITH_BADGES, ids=lambda p: p.name)
def test_links_are_absolute_and_resolve(path):
    """A notebook opened alone (Colab) has no folder around it: links are absolute, and the files and
    glossary entries they name exist here."""
    text = _markdown(_nb(path))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert target.startswith(("https://", "http://")), f"{path.name}: relative link {target!r}"
    prefix = f"{notebook.REPO_URL}/blob/"
    for url in re.findall(re.escape(prefix) + r"[^)\s]+", text):
        rev, _, rest = url.removeprefix(prefix).partition("/")
        assert rev == notebook.REPO_REVISION, f"{path.name}: {url} is not at {notebook.REPO_REVISION}"
        file, _, anchor = rest.partition("#")
        assert (REPO / file).exists(), f"{path.name} links {file}, which is not in the repository"
        if file == notebook.GLOSSARY and anchor:
            assert anchor in _glossary_anchors(), f"{path.name}: no glossary entry #{anchor}"


# -- the front page and the glossary -------------------------------------------------------------

GLOSSARY_TERMS = ["seed", "retention-r", "strength-s", "age-t", "time-step", "review-and-share",
                  "attention-sink", "recent-window", "budget", "memory-layer", "consensus", "granularity",
                  "observation-window-and-pool", "true-and-cache-positions", "soft-delete", "sparse-attention",
                  "eviction", "policy", "peer-policies", "full-cache", "tune-and-report-split",
                  "paired-interval", "holm-correction", "kv-cache", "decode-step", "sdpa",
                  "student-t-interval-and-bootstrap"]


def test_glossary_defines_the_terms():
    anchors = _glossary_anchors()
    assert set(GLOSSARY_TERMS) <= anchors, f"missing entries: {sorted(set(GLOSSARY_TERMS) - anchors)}"
    peers = GLOSSARY.read_text(encoding="utf-8").split("## Peer policies")[1].split("\n## ")[0]
    for name in ("streaming", "h2o", "tova", "snapkv"):
        assert f"`{name}`" in peers


def test_start_here_links_the_glossary():
    """The glossary is a page of its own (GLOSSARY.md): 00 links it and does not copy it."""
    text = _markdown(_nb(START))
    assert f"]({notebook.glossary_url()})" in text, "00 must link the glossary"
    assert "\n### Retention R" not in text, "00 holds a copy of the glossary: link GLOSSARY.md instead"


def test_start_here_lists_every_lesson_in_order():
    text = _markdown(_nb(START))
    links = [f"({notebook.repo_file_url('notebooks/' + p.name)})" for p in LESSONS]
    positions = [text.find(link) for link in links]
    assert -1 not in positions, f"00 lacks a link to {[p.name for p, i in zip(LESSONS, positions) if i < 0]}"
    assert positions == sorted(positions), "00 lists the notebooks out of order"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_links_its_words_to_the_glossary(path):
    first = _source(_nb(path)["cells"][0])
    line = next((l for l in first.splitlines() if l.startswith("Words used here")), None)
    assert line, f"{path.name}: the first cell needs a 'Words used here: ...' line linking the glossary"
    anchors = re.findall(re.escape(notebook.glossary_url()) + r"#([\w-]+)", line)
    assert anchors and set(anchors) <= _glossary_anchors(), f"{path.name}: glossary links {anchors}"


# -- the GPU scale-up cells ----------------------------------------------------------------------

def test_scale_up_cells_skip_without_a_gpu(monkeypatch):
    """Every cell tagged nbval-skip (the GPU sections) runs on a CPU and prints that it skipped."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_model(*args, **kwargs):
        raise AssertionError("a skipped cell loaded a model")

    for path in NOTEBOOKS:
        namespace = {"DEVICE": torch.device("cpu"), "memollm": memollm, "torch": torch,
                     "EbbinghausLLM": no_model}
        for cell in _nb(path)["cells"]:
            if cell["cell_type"] != "code" or "nbval-skip" not in cell["metadata"].get("tags", []):
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(_source(cell), f"{path.name}:{cell.get('id')}", "exec"), namespace)  # noqa: S102
            assert "skipped" in out.getvalue().lower(), f"{path.name}: a GPU cell printed {out.getvalue()!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_the_installed_one(path):
    """JupyterLab rewrites (and so modifies) a notebook whose stored kernelspec differs."""
    spec = _nb(path)["metadata"]["kernelspec"]
    assert spec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
