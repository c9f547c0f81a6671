#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make demo: run kernel_delay.py on the bundled workload.

The workload's threads sleep, poll, make a burst of system calls, send
loopback UDP traffic and compete for one CPU; during the window the whole
process is stopped for 100 ms.  The report then has data in its syscall,
long poll, run, ready, stopped and soft IRQ sections.  make docs-examples
(tests/tools/docs_examples.py) takes the documents' excerpts from the same
run.
"""

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

# The tests' helper modules are one directory up.
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

import workload_ctl  # noqa: E402


def run(write, tool_args=()):
    """Run the tool on the workload for a one-second window, stimulating
    the workload as the window opens; write() gets each line the tool
    writes to standard output.  Returns the tool's exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = workload_ctl.build(tmp)
        with workload_ctl.Workload(binary,
                                   spin_cpu=os.cpu_count() - 1) as load:
            write("# Demo workload: pid {}, threads {}\n".format(
                load.pid, " ".join(sorted(load.tids()))))
            # The interpreter named, so that the report's first line reads
            # ./kernel_delay.py, as a user would type it.
            tool = subprocess.Popen(
                [sys.executable, "./kernel_delay.py", "-p", str(load.pid),
                 "--sample-time", "1"] + list(tool_args),
                cwd=TOP, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                universal_newlines=True, bufsize=1)
            # "# Start sampling" comes on standard output, or with --format
            # json on standard error: the workload is stirred once either
            # says the window is open.
            opened = threading.Event()
            stirrer = threading.Thread(target=lambda: opened.wait(60) and
                                       stimulate(load))
            stirrer.start()
            errors = threading.Thread(target=forward,
                                      args=(tool.stderr, sys.stderr, opened))
            errors.start()
            try:
                forward(tool.stdout, None, opened, write)
            finally:
                opened.set()
                errors.join()
                stirrer.join()
            return tool.wait()


def forward(stream, out, opened, write=None):
    """Copy stream's lines to out (or write()); set opened at the line
    that says the window opened."""
    for line in stream:
        if write:
            write(line)
        else:
            out.write(line)
            out.flush()
        if line.startswith("# Start sampling"):
            opened.set()


def stimulate(load):
    """What the demo's window shows: 997 getsid() calls, 101 UDP round
    trips, and a 100 ms stop of the whole process."""
    load.command("burst 997")
    load.command("udp 101")
    os.kill(load.pid, signal.SIGSTOP)
    time.sleep(0.1)
    os.kill(load.pid, signal.SIGCONT)


def main():
    if os.geteuid() != 0:
        sys.exit("ERROR: the demo loads eBPF programs; run: sudo make demo")

    def write(line):
        sys.stdout.write(line)
        sys.stdout.flush()
    return run(write)


if __name__ == "__main__":
    sys.exit(main())
