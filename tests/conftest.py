# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: the script as a module, and the privileged gate.

Privileged tests load real eBPF programs.  They skip when that is not
possible here (not root, no bcc), except under CI=true, where a skip would
hide a broken test bed: there they fail instead.
"""

import importlib.util
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SCRIPT = os.path.join(TOP, "kernel_delay.py")
sys.path.insert(0, HERE)


def load_script():
    spec = importlib.util.spec_from_file_location("kernel_delay", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def kd():
    """kernel_delay.py imported as a module."""
    return load_script()


def privileged_problem():
    """Why privileged tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "the bcc Python module is missing for " + sys.executable
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "no kernel BTF"
    return None


def pytest_collection_modifyitems(config, items):
    problem = privileged_problem()
    if problem is None:
        return
    for item in items:
        if "privileged" in item.keywords:
            if os.environ.get("CI") == "true":
                item.add_marker(pytest.mark.usefixtures("_ci_must_not_skip"))
            else:
                item.add_marker(pytest.mark.skip(
                    reason="privileged test: " + problem))


@pytest.fixture
def _ci_must_not_skip():
    pytest.fail("privileged test cannot run under CI=true: " +
                privileged_problem())


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "privileged: loads eBPF programs on the running kernel")
