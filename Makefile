# The two commands of the README. Both create .venv with nothing but Python 3.10+ on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv clean

$(BIN)/medml: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/medml

venv: $(BIN)/medml

demo: venv
	$(BIN)/medml demo --out medml-demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv lint
	$(BIN)/pytest -n 2 --dist loadfile -q

clean:
	rm -rf $(VENV) medml-demo .pytest_cache
