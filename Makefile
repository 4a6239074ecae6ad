# The README's commands. `make serve` and `make test` each run `make setup`
# first, so a fresh Debian machine needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# System packages: liburing headers to build the binding; wrk, curl and ab
# are real clients the tests and the load test drive.
APT_PACKAGES := liburing-dev wrk curl apache2-utils
BACKEND ?= uring
PROTOCOL ?= http
ARGS ?=

.PHONY: setup system-deps serve test lint typecheck bench clean docker-lint docker-test seccomp-profile

setup: system-deps $(STAMP)

system-deps:
	@missing=""; \
	[ -f /usr/include/liburing.h ] || missing="$$missing liburing-dev"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v ab >/dev/null || missing="$$missing apache2-utils"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml setup.py uring_backend/_build.py
	rm -f uring_backend/_liburing*.so  # a stale in-place build would shadow the new one
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,loadtest,fastapi,dev]'
	touch $(STAMP)

serve: setup
	$(PY) -m server --backend $(BACKEND) --protocol $(PROTOCOL) $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(PY) -m pytest -q

bench: setup
	$(PY) -m loadtest.compare $(ARGS)

# Docker image (see docker/README-section.md).  docker-test builds the image
# with podman and runs it three ways; it installs podman, runc and mmdebstrap
# itself when root.
docker-lint: setup
	$(VENV)/bin/hadolint Dockerfile

docker-test: docker-lint
	docker/smoke-test.sh

# Regenerates docker/seccomp-io_uring.json from Docker's default profile
# (fetched from Debian's golang-github-docker-docker-dev; see the script).
seccomp-profile:
	$(PYTHON) docker/make-seccomp-profile.py

clean:
	rm -rf $(VENV) build *.egg-info uring_backend/_liburing.c uring_backend/*.o uring_backend/*.so
