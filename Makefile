# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned only here (where a pip constraint picks the local
# build); pyproject.toml keeps ranges so users elsewhere bring their own build.
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_PINS ?= "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
# `make test-oldest`: the suite in a second venv on the lower bounds pyproject.toml states
# (.ci/oldest_constraints.py), torch/torchvision at the local build as above.
OLDEST_VENV ?= .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
PYTEST_ARGS ?=
# the versions each test run prints before it starts
KEY_PACKAGES := torch torchvision pyro-ppl lightning numpy scipy omegaconf scikit-learn matplotlib pillow pandas anndata tensorboard pytest
SHOW_VERSIONS := -c "import sys, importlib.metadata as m; have = {d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}; \
	print('\n'.join(f'  {p:<13} {have.get(p, \"not installed\")}' for p in sys.argv[1:]))" $(KEY_PACKAGES)

.PHONY: install install-oldest demo test test-oldest lint bench listing clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install $(TORCH_PINS) >$(VENV)/install.log 2>&1 || (tail -20 $(VENV)/install.log; exit 1)
	@$(PY) -m pip install -e ".[test]" >>$(VENV)/install.log 2>&1 || (tail -20 $(VENV)/install.log; exit 1)
	$(PY) -c "import torch, torchvision, pyro, lightning, pyro_vae; print('torch', torch.__version__, 'pyro', pyro.__version__)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pyro-vae train examples/configs/digits_vae.yaml --out runs/demo --overwrite trainer.progress_bar=false
	@echo "outputs: runs/demo (samples.png, reconstructions.png, latent_map.png, metrics.json)"

test: install
	@echo "resolved versions ($(VENV), newest that pyproject.toml allows):"
	@$(PY) $(SHOW_VERSIONS)
	$(PY) -m pytest tests $(PYTEST_ARGS)

$(OLDEST_VENV)/.installed: pyproject.toml .ci/oldest_constraints.py
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) .ci/oldest_constraints.py $(TORCH_VERSION) $(TORCHVISION_VERSION) >$(OLDEST_VENV)/constraints.txt
	@cat $(OLDEST_VENV)/constraints.txt
	@echo "installing into $(OLDEST_VENV) (log: $(OLDEST_VENV)/install.log) ..."
	@$(OLDEST_PY) -m pip install -c $(OLDEST_VENV)/constraints.txt $(TORCH_PINS) >$(OLDEST_VENV)/install.log 2>&1 || (tail -20 $(OLDEST_VENV)/install.log; exit 1)
	@$(OLDEST_PY) -m pip install -c $(OLDEST_VENV)/constraints.txt -e ".[test]" >>$(OLDEST_VENV)/install.log 2>&1 || (tail -20 $(OLDEST_VENV)/install.log; exit 1)
	touch $@

install-oldest: $(OLDEST_VENV)/.installed

test-oldest: install-oldest
	@echo "resolved versions ($(OLDEST_VENV), lower bounds of pyproject.toml):"
	@$(OLDEST_PY) $(SHOW_VERSIONS)
	$(OLDEST_PY) -m pytest tests $(PYTEST_ARGS)

# ruff's lint rules and its formatter (settings in pyproject.toml)
lint: install
	@$(PY) -m pip install -q -e ".[lint]" >>$(VENV)/install.log 2>&1 || (tail -20 $(VENV)/install.log; exit 1)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/vae_speed.py

# after changing a built-in registry entry: `pyro-vae list` prints this pre-rendered text
listing: install
	$(PY) -c "from pyro_vae.cli import write_listing; print(write_listing())"

clean:
	rm -rf runs .pytest_cache
