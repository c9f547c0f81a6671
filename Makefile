# kernel_delay: make targets.  Run as root (sudo make ...): deps installs
# packages and the tests load eBPF programs.

# The distribution's interpreter: bcc is packaged for it, not for pyenv,
# conda or virtualenv interpreters that may come first on PATH.
PYTHON ?= /usr/bin/python3
FLAKE8 ?= $(PYTHON) -m flake8
PYTEST_ARGS ?=
# check-vm: virtme-ng goes into a virtualenv here (not into the system's
# Python), pinned to the version it was tested with.
BUILD ?= build
VNG_VERSION = 1.42
VNG_VENV = $(BUILD)/vng

# python3-jsonschema: the tests validate --format json against its schema;
# python3-hypothesis: they fuzz the command line.  The tool needs neither.
DEB_PACKAGES = python3-bpfcc bpfcc-tools \
	python3-pytest python3-jsonschema python3-hypothesis flake8 gcc \
	libc6-dev linux-libc-dev systemtap-sdt-dev openvswitch-switch util-linux
RPM_PACKAGES = python3-bcc bcc-tools \
	python3-pytest python3-jsonschema python3-hypothesis python3-flake8 \
	gcc glibc-devel kernel-headers systemtap-sdt-devel openvswitch util-linux
# The second kernel of check-vm, its headers, and what virtme-ng needs.
VM_DEB_PACKAGES = qemu-system-x86 linux-image-amd64 linux-headers-amd64 \
	busybox-static python3-venv make
VM_RPM_PACKAGES = qemu-system-x86-core kernel-core kernel-devel busybox \
	python3 make

.PHONY: all deps deps-vm install-missing check check-vm test lint demo bench

all: check

# Install what is missing, and only that.
deps:
	@$(MAKE) -s install-missing DEB="$(DEB_PACKAGES)" RPM="$(RPM_PACKAGES)"

# Recommended packages are left out: qemu's would pull in a desktop.
deps-vm: deps
	@$(MAKE) -s install-missing DEB="$(VM_DEB_PACKAGES)" \
	    RPM="$(VM_RPM_PACKAGES)" APT_OPTS=--no-install-recommends
	@if [ ! -x $(VNG_VENV)/bin/vng ]; then \
	    echo "Installing virtme-ng $(VNG_VERSION) into $(VNG_VENV)"; \
	    rm -rf $(VNG_VENV) && $(PYTHON) -m venv $(VNG_VENV) && \
	    $(VNG_VENV)/bin/pip install -q virtme-ng==$(VNG_VERSION); \
	fi

install-missing:
	@if command -v apt-get >/dev/null 2>&1; then \
	    missing=$$(for pkg in $(DEB); do \
	        dpkg-query -W -f='$${Status}\n' $$pkg 2>/dev/null | \
	            grep -q 'ok installed' || echo $$pkg; done); \
	    if [ -n "$$missing" ]; then \
	        echo "Installing:" $$missing; \
	        apt-get update -q && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	            $(APT_OPTS) $$missing; \
	    fi; \
	elif command -v dnf >/dev/null 2>&1; then \
	    missing=$$(for pkg in $(RPM); do \
	        rpm -q $$pkg >/dev/null 2>&1 || echo $$pkg; done); \
	    if [ -n "$$missing" ]; then dnf install -y $$missing; fi; \
	else \
	    echo "ERROR: no apt-get or dnf; install by hand: bcc (python)," \
	         "pytest, jsonschema, hypothesis, flake8, gcc, sys/sdt.h," \
	         "openvswitch" >&2; \
	    exit 1; \
	fi

lint:
	$(FLAKE8) kernel_delay.py tests

test:
	$(PYTHON) -m pytest -v $(PYTEST_ARGS) tests

check: deps lint test

# Boots a second kernel once (software emulation, a few minutes) and runs
# the tests that need kprobes, the openvswitch module or matching headers.
check-vm: deps-vm
	@start=$$(date +%s); \
	PATH=$(abspath $(VNG_VENV))/bin:$$PATH VNG=$(abspath $(VNG_VENV))/bin/vng \
	    $(PYTHON) -m pytest -v $(PYTEST_ARGS) tests/check_vm.py; \
	code=$$?; echo "check-vm took $$(( $$(date +%s) - start )) s"; exit $$code

demo: deps
	$(PYTHON) tests/demo.py

bench: deps
	$(PYTHON) tests/bench.py
