#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make bench: what the probes cost a system call.

Times a burst of getsid() calls in two workload processes: the target of
kernel_delay.py and a bystander.  Each is timed with no tool running, with
the tool attached but idle (waiting for a start trigger that never fires),
and with the tool capturing.  All timings come from one run, interleaved,
best of several, so that the ratios hold on a noisy machine.
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

SCRIPT = os.path.join(os.path.dirname(HERE), "kernel_delay.py")
CALLS = 200003
ROUNDS = 5


def burst_ns(load):
    """Best time of ROUNDS bursts of CALLS getsid() calls."""
    best = None
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        load.command("burst {}".format(CALLS), timeout=60)
        elapsed = time.perf_counter_ns() - start
        best = elapsed if best is None else min(best, elapsed)
    return best


def with_tool(args, marker, target, bystander):
    """Time both workloads while kernel_delay.py runs with args, once its
    output shows marker."""
    tool = subprocess.Popen([SCRIPT, "-p", str(target.pid)] + args,
                            stdout=subprocess.PIPE, universal_newlines=True,
                            bufsize=1)
    try:
        for line in tool.stdout:
            if line.startswith(marker):
                break
        else:
            raise RuntimeError("kernel_delay.py ended early")
        return burst_ns(target), burst_ns(bystander)
    finally:
        tool.send_signal(signal.SIGINT)
        tool.communicate(timeout=30)


def main():
    if os.geteuid() != 0:
        sys.exit("ERROR: the benchmark loads eBPF programs; run: "
                 "sudo make bench")
    with tempfile.TemporaryDirectory() as tmp:
        binary = workload_ctl.build(tmp)
        with workload_ctl.Workload(binary) as target, \
                workload_ctl.Workload(binary) as bystander:
            results = {"no tool": (burst_ns(target), burst_ns(bystander))}
            results["attached, idle"] = with_tool(
                ["--start-trigger", "t:sched:sched_process_exec"],
                "# Waiting", target, bystander)
            results["capturing"] = with_tool(
                ["--sample-time", "3600"], "# Start sampling", target,
                bystander)
    base_target, base_other = results["no tool"]
    print("getsid() calls: {:,} per burst, best of {} bursts".format(
        CALLS, ROUNDS))
    print("{:16} {:>14} {:>10} {:>14} {:>10}".format(
        "", "target ns/call", "vs none", "other ns/call", "vs none"))
    for name, (target_ns, other_ns) in results.items():
        print("{:16} {:14.1f} {:9.2f}x {:14.1f} {:9.2f}x".format(
            name, target_ns / CALLS, target_ns / base_target,
            other_ns / CALLS, other_ns / base_other))


if __name__ == "__main__":
    main()
