"""The core stands alone: ``import memollm`` and ``generate`` in every mode need none of the tools.

The core (config, memory, policies, cache, attention, session, reading, llm, chat, models, views,
lessons, template) computes with torch, transformers and numpy. The tools (stats, evaluate, bench,
viz, notebook and the commands that use them) and the libraries they draw and test with
(matplotlib, seaborn, scipy: the ``eval`` extra; pandas, ipywidgets) are never imported by it.
Checked three ways: statically (every import of a core module, also inside functions), in a
subprocess that blocks the libraries, and in a fresh virtual environment with the wheel installed
without extras, as a user would (slow). The README's reading order of the core, with its line
counts, is checked against the files here as well.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "memollm"

TOOL_LIBRARIES = ("matplotlib", "seaborn", "scipy", "pandas", "ipywidgets")
TOOL_UNITS = ("stats", "evaluate", "bench", "viz", "notebook", "cli", "training")
# Top-level modules that are neither core nor tools: the package's front door, `python -m memollm`,
# and the offline texts the evaluation and the lessons read (torch only, no extra).
NOT_CORE = {"__init__", "__main__", "texts"}

# Run in a subprocess (by the fast test with the dev environment, by the slow one in a fresh venv):
# a tiny random Llama and a word-level tokenizer built in memory (no download, no bundled model),
# generate in every mode, then no tool module or library may be loaded.
SMOKE = r'''
import importlib.util, sys, time
TOOL_LIBRARIES = {libraries!r}
TOOL_MODULES = tuple("memollm." + unit for unit in {units!r})
if "--block" in sys.argv:
    # As if not installed: `import x` raises ImportError and importlib.util.find_spec(x) is None
    # (transformers asks find_spec whether scipy is there, and imports it if so).
    for name in TOOL_LIBRARIES:
        sys.modules[name] = None

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in TOOL_LIBRARIES:
                raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
start = time.perf_counter()
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

import memollm
from memollm import EbbinghausLLM, MemoryConfig

print("memollm from", memollm.__file__)
words = "the quick brown fox jumps over lazy dog a cat sat on mat and ran far away".split()
vocab = {{w: i for i, w in enumerate(["<unk>", "<eos>", *words])}}
raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
raw.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>")
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
llm = EbbinghausLLM(model=model, tokenizer=tokenizer)
prompt = " ".join(words * 3)  # 51 tokens: evict at a budget of 24 has to evict
assert set(memollm.MODES) == {{"baseline", "soft_delete", "sparse_attention", "evict"}}, memollm.MODES
for mode in memollm.MODES:
    extra = dict(memory_budget=24, sink_tokens=2, recent_window=4) if mode == "evict" else {{}}
    result = llm.generate(prompt, 5, mode, chat=False, config=MemoryConfig(), **extra)
    assert len(result["token_ids"]) > 0, (mode, result)
    print(mode, result["token_ids"])
allowed = set(sys.argv[sys.argv.index("--allow") + 1].split(",")) if "--allow" in sys.argv else set()
loaded = sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] not in allowed
                and (m.split(".")[0] in TOOL_LIBRARIES or m.startswith(TOOL_MODULES)))
assert not loaded, f"the core imported tools: {{loaded}}"
if "--not-installed" in sys.argv:
    present = [n for n in ("matplotlib", "seaborn", "scipy") if importlib.util.find_spec(n) is not None]
    assert not present, f"installed without the eval extra, yet present: {{present}}"
print(f"core ok in {{time.perf_counter() - start:.1f}} s")
'''.format(libraries=TOOL_LIBRARIES, units=TOOL_UNITS)


def _smoke(python: str, *args: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run([python, "-c", SMOKE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr[-4000:]}"
    return out.stdout


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLBACKEND")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", OMP_NUM_THREADS="1", **extra)
    return env


# -- the core's modules import no tool, not even inside a function --------------------------------

def _core_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in NOT_CORE | set(TOOL_UNITS))


def _imported(path: Path) -> set[str]:
    """Top-level names a module imports (``memollm.x`` and ``.x`` both give ``memollm.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name if not alias.name.startswith("memollm.") else ".".join(alias.name.split(".")[:2])
                      for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                found |= {f"memollm.{name}" for name in names}
            elif node.module:
                parts = node.module.split(".")
                found.add(".".join(parts[:2]) if parts[0] == "memollm" else parts[0])
    return {name if name.startswith("memollm.") else name.split(".")[0] for name in found}


@pytest.mark.parametrize("module", _core_modules())
def test_a_core_module_imports_no_tool(module):
    imported = _imported(PACKAGE / f"{module}.py")
    tools = sorted(imported & ({*TOOL_LIBRARIES} | {f"memollm.{unit}" for unit in TOOL_UNITS}))
    assert not tools, f"memollm/{module}.py (core) imports {tools}: the core must run without the tools"


def test_import_memollm_keeps_notebook_setup_lazy():
    code = ("import sys, memollm; assert 'memollm.notebook' not in sys.modules; "
            "from memollm import *; assert 'memollm.notebook' not in sys.modules; "
            "f = memollm.notebook_setup; import memollm.notebook as nb; assert f is nb.notebook_setup; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# -- generate in every mode, with the tool libraries blocked or merely installed ----------------

def test_generate_in_every_mode_with_the_tool_libraries_blocked():
    out = _smoke(sys.executable, "--block", cwd=REPO, env=_env(PYTHONPATH=str(REPO)))
    assert f"memollm from {PACKAGE / '__init__.py'}" in out
    assert all(f"\n{mode} [" in out for mode in ("baseline", "soft_delete", "sparse_attention", "evict")), out


def test_generate_in_every_mode_imports_no_tool_where_they_are_installed():
    """Also catches an import the blocked run would survive (``try: import matplotlib``). scipy is
    allowed here only because transformers itself imports it whenever it is installed."""
    _smoke(sys.executable, "--allow", "scipy", cwd=REPO, env=_env(PYTHONPATH=str(REPO)))


# -- the wheel in a fresh virtual environment, without extras, as a user installs it ----------

def _index_unreachable() -> str | None:
    """Why pip's package index cannot be reached, or None if it can."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        urllib.request.urlopen(f"{index}/pip/", timeout=15).close()
    except (urllib.error.URLError, OSError) as exc:
        return f"the package index {index} cannot be reached ({exc})"
    return None


@pytest.mark.slow
def test_the_wheel_without_extras_installs_and_generates(tmp_path):
    """Build the wheel from a copy of the sources (the checkout stays clean), install it with
    ``pip install -c constraints.txt`` into a fresh venv, then: matplotlib, seaborn and scipy are
    not installed, and generate runs in every mode; the ``memollm generate`` command starts."""
    started = time.perf_counter()
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "memollm", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next((tmp_path / "dist").glob("memollm-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)],
                             capture_output=True, text=True, timeout=1200, env=_env())
    if install.returncode != 0:
        reason = _index_unreachable()
        if reason:
            pytest.skip(f"{reason}: cannot install the wheel's dependencies")
        pytest.fail(f"pip install {wheel.name} failed:\n{install.stdout}\n{install.stderr[-4000:]}")
    installed = time.perf_counter() - started

    out = _smoke(python, "--not-installed", cwd=tmp_path, env=_env())
    assert f"memollm from {venv}" in out, out  # the wheel, not the checkout
    command = subprocess.run([str(venv / "bin" / "memollm"), "generate", "--help"], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert command.returncode == 0 and "usage: memollm generate" in command.stdout, command.stderr[-3000:]
    print(f"\nwheel built and installed in {installed:.0f} s; checked in {time.perf_counter() - started:.0f} s all told")


# -- the README's reading order of the core, with line counts ---------------------------------

COUNT = re.compile(r"^(\w+\.py)\s+(\d+) lines\s")
TOTAL = re.compile(r"^core\s+(\d+) lines\s*$")


def _readme_counts() -> tuple[dict[str, int], int | None]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("**The core, in reading order.**", 1)
    assert len(section) == 2, "README.md has no '**The core, in reading order.**' paragraph in its Layout section"
    block = section[1].split("```", 2)[1]
    counts, total = {}, None
    for line in block.splitlines():
        if found := COUNT.match(line):
            counts[found.group(1)] = int(found.group(2))
        elif found := TOTAL.match(line):
            total = int(found.group(1))
    return counts, total


def _wc_l(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def test_readme_lists_every_core_module_once():
    counts, _ = _readme_counts()
    listed, core = set(counts), {f"{m}.py" for m in _core_modules()}
    assert listed == core, (f"README core list: missing {sorted(core - listed)}, no such core module "
                            f"{sorted(listed - core)} (a new tool module: add it to TOOL_UNITS or NOT_CORE here)")


def test_readme_line_counts_are_the_files():
    counts, total = _readme_counts()
    real = {name: _wc_l(PACKAGE / name) for name in counts if (PACKAGE / name).is_file()}
    stale = {name: f"README {counts[name]}, wc -l {n}" for name, n in real.items() if counts[name] != n}
    assert not stale, f"update the core's line counts in README.md (Layout): {stale}"
    assert total == sum(real.values()), f"update the core total in README.md: README {total}, wc -l {sum(real.values())}"
