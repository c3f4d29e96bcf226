# `make demo` and `make test` do all the set-up on a fresh machine (see scripts/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

demo: install
	$(PY) -m pipeline demo --config configs/demo.yaml --out out/demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/decode.py

clean:
	rm -rf out bench/.cache .pytest_cache
