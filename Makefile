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

# The tool needs bcc and psutil; make demo needs them and what builds the
# workload (tests/workload.c): a C compiler, the C library's headers and
# sys/sdt.h for its USDT probes.  Nothing else: no test tooling.
DEMO_DEB_PACKAGES = python3-bpfcc python3-psutil gcc libc6-dev \
	linux-libc-dev systemtap-sdt-dev
DEMO_RPM_PACKAGES = python3-bcc python3-psutil gcc glibc-devel \
	kernel-headers systemtap-sdt-devel
# The tests need more.  python3-jsonschema: they validate --format json
# against its schema; python3-hypothesis: they fuzz the command line and
# thread names; python3-tz (pytz): make bench runs the original script,
# which imports it; python3-docutils: the documents are checked to render.
# The tool needs none of these.  debootstrap: the container test builds a
# bare Debian root file system.
DEB_PACKAGES = $(DEMO_DEB_PACKAGES) bpfcc-tools python3-tz \
	python3-pytest python3-jsonschema python3-hypothesis flake8 \
	openvswitch-switch util-linux debootstrap python3-docutils
RPM_PACKAGES = $(DEMO_RPM_PACKAGES) bcc-tools python3-pytz \
	python3-pytest python3-jsonschema python3-hypothesis python3-flake8 \
	openvswitch util-linux python3-docutils
# The second kernel of check-vm, its headers, the PREEMPT_RT kernel
# booted after it (no headers: the tool generates what it needs), and
# what virtme-ng needs.
VM_DEB_PACKAGES = qemu-system-x86 linux-image-amd64 linux-headers-amd64 \
	linux-image-rt-amd64 busybox-static python3-venv make
VM_RPM_PACKAGES = qemu-system-x86-core kernel-core kernel-devel busybox \
	python3 make

.PHONY: all deps deps-demo deps-vm install-missing check check-vm check-vm-rt test lint demo bench \
	soak docs-examples clean

all: check

# Install what is missing, and only that.
deps:
	@$(MAKE) -s install-missing DEB="$(DEB_PACKAGES)" RPM="$(RPM_PACKAGES)"

# What make demo needs, and only that.
deps-demo:
	@$(MAKE) -s install-missing DEB="$(DEMO_DEB_PACKAGES)" \
	    RPM="$(DEMO_RPM_PACKAGES)"

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
	    echo "ERROR: no apt-get or dnf; install by hand: bcc (python), psutil," \
	         "pytest, jsonschema, hypothesis, flake8, gcc, sys/sdt.h," \
	         "openvswitch" >&2; \
	    exit 1; \
	fi

lint:
	$(FLAKE8) kernel_delay.py tests

test:
	$(PYTHON) -m pytest -v $(PYTEST_ARGS) tests

# One after the other, also under make -j: the tests need what deps
# installs, and a lint error stops the run before the long tests start.
check: deps
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory test

# What make made: the VM's virtualenv, the container's root file system,
# check-vm's logs.
clean:
	rm -rf $(BUILD)

# Boots two more kernels under qemu, each once (software emulation, a few
# minutes each), and runs the tests that need kprobes, the openvswitch
# module or matching headers: Debian's 6.1, then its PREEMPT_RT build
# (RT_GUEST_TESTS in tests/check_vm.py).  check-vm-rt boots only the
# PREEMPT_RT one.
VM_RUN = start=$$(date +%s); \
	PATH=$(abspath $(VNG_VENV))/bin:$$PATH VNG=$(abspath $(VNG_VENV))/bin/vng \
	    $(PYTHON) -m pytest -v $(PYTEST_ARGS) tests/check_vm.py
check-vm: deps-vm
	@$(VM_RUN); \
	code=$$?; echo "check-vm took $$(( $$(date +%s) - start )) s"; exit $$code

check-vm-rt: deps-vm
	@$(VM_RUN) -k rt_guest; \
	code=$$?; echo "check-vm-rt took $$(( $$(date +%s) - start )) s"; \
	exit $$code

demo: deps-demo
	$(PYTHON) tests/tools/demo.py

# Rewrite the report excerpts of kernel_delay.rst and README.md from real
# runs of the demo (tests/test_docs_examples.py fails when they drift).
docs-examples: deps-demo
	$(PYTHON) tests/tools/docs_examples.py

bench: deps
	$(PYTHON) tests/tools/bench.py

# --long-poll for 10 minutes: 5,000 short poll intervals a second and one
# long one every 10 s; exactly 60 caught, nothing dropped, RSS flat.  (The
# suite runs the same test for 60 s.)
soak: deps
	KD_SOAK_SECONDS=600 $(PYTHON) -m pytest -v -s $(PYTEST_ARGS) \
	    tests/test_long_poll.py -k test_soak
