# Two commands do all set-up themselves: `make demo` and `make test`.
# The venv is created on first use and re-installed when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first, pinned, so pip does not pick a newer multi-GB build;
# override for another build, e.g. `make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	# k-diffusion is a peer in tests and benchmarks; only its sampling module is used, and its own
	# dependency list (torchvision, wandb, clip, …) is not needed for that, hence --no-deps.
	$(PY) -m pip install -q --no-deps "k-diffusion==0.1.1.post1"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sde_diffusion demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m sde_diffusion bench solvers
	$(PY) -m sde_diffusion bench overhead

clean:
	rm -rf $(VENV) demo_output .pytest_cache .hypothesis
