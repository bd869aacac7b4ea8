#!/usr/bin/env bash
# Run the notebooks under nbval the way a reader who installed memollm from a wheel has them
# (Colab from the badge, or `pip install` and a downloaded notebook):
#   1. build the wheel from a copy of the sources (the checkout gets no build/ or egg-info);
#   2. install it, non-editable and without dependencies, into a folder put first on PYTHONPATH,
#      so `import memollm` in the kernel finds the wheel, not the editable checkout;
#   3. run `pytest --nbval` on a copy of notebooks/ in a temporary folder outside the repository.
# A conftest.py written into that copy asserts 2. before any notebook runs: the kernel's
# interpreter imports memollm from the wheel, its figure folder is outside the repository, and
# the packaged results load. Usage: scripts/nbval_from_wheel.sh [PYTHON] [pytest arguments];
# without arguments every notebook runs. Figures go to $MEMOLLM_FIGURES if set, else to the
# temporary folder, which is removed at the end.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="$repo/.venv/bin/python"
if [ $# -gt 0 ] && [ -x "$1" ] && [[ "$1" != *.ipynb ]]; then python="$1"; shift; fi
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
if ! compgen -G "$repo/notebooks/*.ipynb" >/dev/null; then
    echo "no notebooks in $repo/notebooks: nothing to run"
    exit 0
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/memollm-wheel.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/memollm" "$tmp/src/"
find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
if ! "$python" -m pip wheel -q --no-deps --no-build-isolation "$tmp/src" -w "$tmp/dist" >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log" >&2
    exit 1
fi
wheel="$(ls "$tmp"/dist/memollm-*.whl)"
"$python" - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [n for n in ("memollm/notebook.py", "memollm/results/eval_ppl.json") if n not in names]
assert not missing, f"the wheel lacks {missing}: check [tool.setuptools.package-data] in pyproject.toml"
EOF
"$python" -m pip install -q --no-deps --no-compile --target "$tmp/site" "$wheel" >/dev/null

cp -r "$repo/notebooks" "$tmp/notebooks"
rm -rf "$tmp/notebooks/.ipynb_checkpoints" "$tmp/notebooks/figures"
cat > "$tmp/notebooks/conftest.py" <<'EOF'
"""Written by scripts/nbval_from_wheel.sh: the kernel must see the wheel, not the checkout."""
import json
import os
import subprocess
import sys
from pathlib import Path


def pytest_sessionstart(session):
    from jupyter_client.kernelspec import KernelSpecManager

    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    kernel_python = sys.executable if argv0 in ("python", "python3") else argv0
    code = ("import json, memollm, memollm.notebook as nb; "
            "print(json.dumps([memollm.__file__, str(nb.figures_dir()), len(nb.load_result('eval_ppl'))]))")
    out = subprocess.run([kernel_python, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd())
    module_file, figures, records = json.loads(out.stdout.strip().splitlines()[-1])
    site = Path(os.environ["MEMOLLM_WHEEL_SITE"]).resolve()
    repo = Path(os.environ["MEMOLLM_REPO"]).resolve()
    assert Path(module_file).resolve().is_relative_to(site), f"the kernel imports memollm from {module_file}, not the wheel"
    assert not Path(figures).resolve().is_relative_to(repo), f"figures would go into the repository: {figures}"
    assert records > 0, "packaged result eval_ppl is empty"
    print(f"\nnotebooks run from the wheel: memollm from {Path(module_file).parent}, figures to {figures}")
EOF
cat > "$tmp/notebooks/pytest.ini" <<'EOF'
[pytest]
addopts = -ra -p no:cacheprovider
filterwarnings = ignore::DeprecationWarning:jupyter_client.*
EOF

cd "$tmp/notebooks"
export PYTHONPATH="$tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export MEMOLLM_WHEEL_SITE="$tmp/site" MEMOLLM_REPO="$repo"
[ $# -gt 0 ] || set -- .
"$python" -m pytest -q --nbval "$@"
