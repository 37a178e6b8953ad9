# MountainID — the two commands a newcomer needs:
#   make run    set up, then run the whole pipeline on the embedded default and serve the site
#   make test   set up (Python packages + Debian packages), then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= $(abspath ../shared)
export MOUNTAINID_WEIGHTS ?= $(SHARED)/models/imagenet/mobilenet_v2_1.0_224_imagenet.weights.h5
export MOUNTAINID_SHARED := $(SHARED)
export TF_CPP_MIN_LOG_LEVEL ?= 2
DEBIAN_PACKAGES := chromium chromium-driver shellcheck

.PHONY: setup system-deps run test test-fast lint local-cloud bench clean

$(VENV)/.installed: pyproject.toml requirements.lock requirements-test.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip==25.3
	$(VENV)/bin/pip install -q -r requirements.lock -r requirements-test.lock
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests need (headless Chromium for the browser test, shellcheck for infra/).
system-deps:
	@if ! dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	fi

# Offline by default: a fake Flickr serves ../shared/data/peaks14 (+ street photos as noise) into the
# local bucket var/bucket. The fake makes up each photo's licence over every Flickr id, so the demo accepts all
# but "All Rights Reserved" (NonCommercial and NoDerivs opted in) to train on the whole photo set; a
# deployment keeps the default of licences that allow commercial reuse.
# For real Flickr: FLICKR_API_KEY=... FLICKR_API_SECRET=... .venv/bin/mountainid run
run: setup
	MOUNTAINID_CATALOG=$${MOUNTAINID_CATALOG:-peaks14} \
	MOUNTAINID_LICENSES=$${MOUNTAINID_LICENSES:-1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16} $(PY) -m mountainid.cli run \
		--fake-flickr $(SHARED)/data/peaks14 --noise $(SHARED)/data/scenes/street $(RUN_ARGS)

# Two pytest workers (pytest-xdist): the tests are mostly single-threaded Python and Keras steps, so two
# cores run two of them side by side (23 -> 14 minutes here); each worker starts its own emulators on free ports.
test: setup system-deps lint
	$(PY) -m pytest -q -rs --durations=15 -n 2 --dist worksteal

# The inner loop: everything but the slow, emulator and browser tests (docs/testing.md: its time).
test-fast: setup
	$(PY) -m pytest -q -rs --durations=10 -m "not slow and not emulator and not browser"

# The whole pipeline on the local cloud: emulators, functions-framework, web; one scenario end to end.
local-cloud: setup
	$(PY) -m mountainid.cli local-cloud --shared $(SHARED)

# Ruff's rule sets and mypy over the core (pyproject.toml); a few seconds, so CI runs it before the tests.
lint: setup
	$(VENV)/bin/ruff check mountainid harness functions training_job web tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var build *.egg-info
