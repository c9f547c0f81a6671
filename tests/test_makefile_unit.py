# SPDX-License-Identifier: Apache-2.0
"""The Makefile's own targets, run with stand-ins for the real tools."""

import shutil
import subprocess

import pytest

from conftest import TOP

pytestmark = pytest.mark.skipif(shutil.which("make") is None,
                                reason="no make")


def make(*args):
    # No packages to install; the recipes say what they would run.
    return subprocess.run(
        ["make", "-s", "-C", TOP, "DEB_PACKAGES=", "RPM_PACKAGES="] +
        list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True)


def test_check_runs_lint_before_test_even_in_parallel():
    """make -j check: a lint error ends the run before the tests start
    (as prerequisites of check, lint and test would start together)."""
    result = make("-j4", "check", "FLAKE8=sh -c 'sleep 1; false'",
                  "PYTHON=echo")
    assert result.returncode != 0
    assert "pytest" not in result.stdout, result.stdout


def test_check_runs_the_tests_after_lint():
    result = make("-j4", "check", "FLAKE8=sh -c 'sleep 1; echo lint:'",
                  "PYTHON=echo test:")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["lint", "test"], lines


def test_clean_removes_the_build_directory(tmp_path):
    build = tmp_path / "build"
    (build / "vng" / "bin").mkdir(parents=True)
    (build / "check-vm" / "guest.log").parent.mkdir()
    (build / "check-vm" / "guest.log").write_text("x")
    result = make("clean", "BUILD=" + str(build))
    assert result.returncode == 0, result.stdout
    assert not build.exists() and tmp_path.exists()
