# kernel_delay: make targets.  Run as root (sudo make ...): deps installs
# packages and the tests load eBPF programs.

# The distribution's interpreter: bcc is packaged for it, not for pyenv,
# conda or virtualenv interpreters that may come first on PATH.
PYTHON ?= /usr/bin/python3
FLAKE8 ?= $(PYTHON) -m flake8
PYTEST_ARGS ?=

# python3-jsonschema: the tests validate --format json against its schema;
# the tool does not need it.
DEB_PACKAGES = python3-bpfcc bpfcc-tools python3-psutil \
	python3-pytest python3-jsonschema flake8 gcc libc6-dev linux-libc-dev \
	systemtap-sdt-dev openvswitch-switch util-linux
RPM_PACKAGES = python3-bcc bcc-tools python3-psutil \
	python3-pytest python3-jsonschema python3-flake8 gcc glibc-devel \
	kernel-headers systemtap-sdt-devel openvswitch util-linux

.PHONY: all deps check test lint demo bench

all: check

# Install what is missing, and only that.
deps:
	@if command -v apt-get >/dev/null 2>&1; then \
	    missing=$$(for pkg in $(DEB_PACKAGES); do \
	        dpkg-query -W -f='$${Status}\n' $$pkg 2>/dev/null | \
	            grep -q 'ok installed' || echo $$pkg; done); \
	    if [ -n "$$missing" ]; then \
	        echo "Installing:" $$missing; \
	        apt-get update -q && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	            $$missing; \
	    fi; \
	elif command -v dnf >/dev/null 2>&1; then \
	    missing=$$(for pkg in $(RPM_PACKAGES); do \
	        rpm -q $$pkg >/dev/null 2>&1 || echo $$pkg; done); \
	    if [ -n "$$missing" ]; then dnf install -y $$missing; fi; \
	else \
	    echo "ERROR: no apt-get or dnf; install by hand: bcc (python)," \
	         "psutil, pytest, jsonschema, flake8, gcc, sys/sdt.h," \
	         "openvswitch" >&2; \
	    exit 1; \
	fi

lint:
	$(FLAKE8) kernel_delay.py tests

test:
	$(PYTHON) -m pytest -v $(PYTEST_ARGS) tests

check: deps lint test

demo: deps
	$(PYTHON) tests/demo.py

bench: deps
	$(PYTHON) tests/bench.py
