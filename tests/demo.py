#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make demo: run kernel_delay.py on the bundled workload.

The workload's threads sleep, poll, make a burst of system calls, send
loopback UDP traffic and compete for one CPU; during the window the whole
process is stopped for 100 ms.  The report then has data in its syscall,
long poll, run, ready, stopped and soft IRQ sections.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workload_ctl  # noqa: E402


def main():
    if os.geteuid() != 0:
        sys.exit("ERROR: the demo loads eBPF programs; run: sudo make demo")
    with tempfile.TemporaryDirectory() as tmp:
        binary = workload_ctl.build(tmp)
        with workload_ctl.Workload(binary,
                                   spin_cpu=os.cpu_count() - 1) as load:
            print("# Demo workload: pid {}, threads {}".format(
                load.pid, " ".join(sorted(load.tids()))), flush=True)
            tool = subprocess.Popen(
                [os.path.join(os.path.dirname(HERE), "kernel_delay.py"),
                 "-p", str(load.pid), "--sample-time", "1"],
                stdout=subprocess.PIPE, universal_newlines=True, bufsize=1)
            for line in tool.stdout:
                sys.stdout.write(line)
                if line.startswith("# Start sampling"):
                    load.command("burst 997")
                    load.command("udp 101")
                    os.kill(load.pid, signal.SIGSTOP)
                    time.sleep(0.1)
                    os.kill(load.pid, signal.SIGCONT)
            return tool.wait()


if __name__ == "__main__":
    sys.exit(main())
