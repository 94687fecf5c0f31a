# The commands of the README. Each creates .venv with nothing but Python 3.10+ on the machine; pip shows what it
# downloads and installs (a first install fills .venv with several GB, mostly torch and its CUDA libraries).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/pip install --progress-bar on
# Where `make demo` writes and where the notebooks look for it (medml.demo.tiny_run).
MEDML_DEMO_DIR ?= $(CURDIR)/medml-demo

.PHONY: demo test lint venv notebooks clean

$(BIN)/medml: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e ".[dev]"
	touch $(BIN)/medml

venv: $(BIN)/medml

demo: venv
	$(BIN)/medml demo --out $(MEDML_DEMO_DIR)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv lint
	$(BIN)/pytest -n 2 --dist loadfile -q

$(BIN)/jupyter-lab: $(BIN)/medml
	$(PIP_INSTALL) -e ".[dev,notebooks]"

# Jupyter Lab on the notebooks, which open the runs of `make demo` (run first if they are missing).
notebooks: $(BIN)/jupyter-lab demo
	MEDML_DEMO_DIR=$(MEDML_DEMO_DIR) $(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) medml-demo .pytest_cache build dist *.egg-info
