# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned only here (where a pip constraint picks the local
# build); pyproject.toml keeps ranges so users elsewhere bring their own build.
TORCH_PINS ?= "torch==2.14.1" "torchvision==0.29.1"

.PHONY: install demo test bench listing clean

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
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/vae_speed.py

# after changing a built-in registry entry: `pyro-vae list` prints this pre-rendered text
listing: install
	$(PY) -c "from pyro_vae.cli import write_listing; print(write_listing())"

clean:
	rm -rf runs .pytest_cache
