# SPDX-License-Identifier: Apache-2.0
"""The real tool on the workload: every line it writes in its own words
fits an 80-column terminal (time mode with stacks, trigger mode,
--long-poll), the answer comes first, and the header shows the command
as typed after the interpreter re-exec (issue 19)."""

import os
import re
import signal
import subprocess
import time

import pytest

import report
import workload_ctl
from conftest import MSEC, run_tool
from fakes import own_lines


@pytest.fixture(scope="module")
def load(workload_bin):
    with workload_ctl.Workload(workload_bin) as workload:
        yield workload


def check_width(out):
    wide = [line for line in own_lines(out.splitlines()) if len(line) > 80]
    assert not wide, "\n".join(wide)


def check_order(out):
    """Each window: number and length, overview, verdict, details, the
    separator; the run ends with its summary."""
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("# WINDOW")]
    assert heads, out
    for number, first in enumerate(heads, 1):
        part = lines[first:]
        marks = [next(i for i, line in enumerate(part)
                      if line.startswith(mark))
                 for mark in ("# OVERVIEW", "# VERDICT", "TID        THREAD"
                              "           <RESOURCE", "# ---- end of window "
                              "{} ".format(number))]
        assert marks == sorted(marks), "\n".join(part)
    assert lines[-1].startswith("# End of run: {} window".format(len(heads)))


def test_time_mode_with_stacks_fits_80_columns(load):
    def act(_proc):
        load.command("burst 997", timeout=120)
        os.kill(load.pid, signal.SIGSTOP)
        time.sleep(0.1)
        os.kill(load.pid, signal.SIGCONT)

    code, out, err = run_tool(["-p", str(load.pid), "--sample-time", "0.5",
                               "--sample-count", "2", "--syscall-events",
                               str(10 * MSEC), "--ready-floor", "0"],
                              on_start=act)
    assert code == 0, err
    assert "# SYSCALL EVENTS:" in out
    check_width(out)
    check_order(out)
    # Stacks are details: after the verdict.
    for window in out.split("# WINDOW ")[1:]:
        assert window.index("# VERDICT") < window.index("# SYSCALL EVENTS:")
    assert len(report.parse(out)) == 2


def test_trigger_mode_fits_80_columns(load):
    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               "u:kd_workload:op_start", "--stop-trigger",
                               "u:kd_workload:op_end", "--trigger-delta",
                               str(20 * MSEC), "--sample-count", "2"])
    assert code == 0, err
    assert "# Triggered sample dump" in out
    check_width(out)
    check_order(out)


def test_long_poll_fits_80_columns(load):
    tid = int(load.command("lpoll -1", timeout=120).split()[2])

    def gap(line):
        if line.startswith("# Catching"):
            load.command("lpgap 150000", timeout=120)

    code, text, err = run_tool(["-p", str(load.pid), "--long-poll", "100",
                                "--sample-count", "1"], on_line=gap)
    assert code == 0, err
    assert "{} kd-lpoll".format(tid) in text and "# VERDICT" in text
    # A catch is the tool's own: every line of the run fits.
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, "\n".join(wide)
    # (On a busy machine the kernel may leave a switch unreported: a
    # warning says so, and the last line counts it.)
    assert re.fullmatch(r"# End of run: 1 long poll interval caught"
                        r"(; \d+ warnings? above)? \(completed\)",
                        text.splitlines()[-1]), text.splitlines()[-1]


def test_progress_on_stderr_with_output(load, tmp_path):
    path = str(tmp_path / "report.txt")
    code, out, err = run_tool(["-p", str(load.pid), "--sample-time", "0.2",
                               "--output", path])
    assert (code, out) == (0, ""), err
    said = [line.split(" @")[0] for line in err.splitlines()]
    assert said[:2] == ["# Start sampling", "# Stop sampling"], err
    assert said[-1].startswith("# End of run: 1 window reported")
    with open(path) as report_file:
        text = report_file.read()
    assert all(line in text.splitlines() for line in err.splitlines())
    assert "# VERDICT" in text and "# VERDICT" not in err


def test_header_shows_the_command_as_typed_after_the_reexec(load,
                                                            tmp_path):
    """A venv's python3 lacks bcc: the script re-executes itself with
    the system's, by its absolute path; the header still shows what was
    typed."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip",
                    str(venv)], check=True)
    python = str(venv / "bin" / "python3")
    code, out, err = run_tool(["-p", str(load.pid), "--sample-time", "0.1"],
                              cmd=[python, "kernel_delay.py"])
    assert code == 0, err
    assert out.splitlines()[0] == \
        "# kernel_delay {}: kernel_delay.py -p {} --sample-time 0.1".format(
            report_version(), load.pid)


def report_version():
    from conftest import load_script
    return load_script().__version__
