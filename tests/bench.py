#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make bench: what kernel_delay.py costs the machine it runs on.

One run, three set-ups, interleaved round by round so that a noisy machine
hits them alike, and the minimum of the rounds kept:

  bare   nothing attached;
  floor  empty eBPF programs, loaded by this script through bcc, on the
         hook points the tool uses: what any tool on those hooks costs;
  tool   kernel_delay.py capturing a window on the target workload.

Cases (tests/workload.c commands):

  getppid() in a process the tool does not monitor, and in the one it
  monitors (ns per call); a pipe ping-pong between two threads pinned to
  one CPU in the monitored process, and in the other one (ns per round
  trip: two wakeups, two context switches, four system calls); the time
  from launching the tool to its "# Start sampling" line (the floor:
  starting Python, importing bcc, compiling, loading and attaching the
  empty programs); the time from "# Stop sampling" to the end of the
  report for a target with 2,000 threads that each make 12 distinct
  system calls in the window, and a check that the report lists all of
  them; and, when the tool has --syscall-events, the system call events
  per second it delivers.

This is a benchmark, not a test: it prints figures and the targets of
issue 5 next to them, and fails only when something does not work.
"""

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import report  # noqa: E402
import workload_ctl  # noqa: E402

TOP = os.path.dirname(HERE)
SCRIPT = os.path.join(TOP, "kernel_delay.py")
PYTHON = sys.executable

GETPPID_CALLS = 300000
PINGPONG_TRIPS = 40000
BURSTS = 3          # per round and set-up; the minimum is kept
CROWD = 2000
EVENT_CALLS = 1000000
CROWD_SYSCALLS = ("getpid", "getppid", "getuid", "geteuid", "getgid",
                  "getegid", "getpgid", "getsid", "gettid", "getpriority",
                  "getrusage", "sched_getscheduler")

# The hook points of the tool's default probes, with empty programs.
FLOOR_RAW = ("sys_enter", "sys_exit", "sched_switch", "sched_wakeup",
             "sched_wakeup_new", "softirq_entry", "softirq_exit")
FLOOR_TP = ("sched:sched_process_exit", "irq:irq_handler_entry",
            "irq:irq_handler_exit")


def floor_source():
    text = ""
    for name in FLOOR_RAW:
        text += "RAW_TRACEPOINT_PROBE({}) {{ return 0; }}\n".format(name)
    for name in FLOOR_TP:
        text += "int tp_{}(void *ctx) {{ return 0; }}\n".format(
            name.split(":")[1])
    return text


FLOOR_LAUNCH = """
import bcc, sys
bpf = bcc.BPF(text=sys.argv[1])
for name in {tp!r}:
    bpf.attach_tracepoint(tp=name, fn_name="tp_" + name.split(":")[1])
print("# Start sampling", flush=True)
sys.stdin.read()
""".format(tp=FLOOR_TP)


def load_kd():
    spec = importlib.util.spec_from_file_location("kernel_delay", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Floor:
    """The empty programs, compiled once, attached for the floor rows."""

    def __init__(self):
        import bcc
        self.bpf = bcc.BPF(text=floor_source())
        # RAW_TRACEPOINT_PROBE programs attach themselves at load.
        for name in FLOOR_RAW:
            self.bpf.detach_raw_tracepoint(tp=name)

    def attach(self):
        for name in FLOOR_TP:
            self.bpf.attach_tracepoint(tp=name,
                                       fn_name="tp_" + name.split(":")[1])
        for name in FLOOR_RAW:
            self.bpf.attach_raw_tracepoint(
                tp=name, fn_name="raw_tracepoint__" + name)

    def detach(self):
        for name in FLOOR_TP:
            self.bpf.detach_tracepoint(tp=name)
        for name in FLOOR_RAW:
            self.bpf.detach_raw_tracepoint(tp=name)

    def close(self):
        self.bpf.cleanup()


class Tool:
    """kernel_delay.py capturing a long window on pid."""

    def __init__(self, pid, extra=()):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [PYTHON, SCRIPT, "-p", str(pid), "--sample-time", "3600"] +
            list(extra), stdout=subprocess.PIPE, universal_newlines=True,
            bufsize=1)
        for line in self.proc.stdout:
            if line.startswith("# Start sampling"):
                self.launch = time.monotonic() - self.started
                break
        else:
            raise RuntimeError("kernel_delay.py ended before its window")

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=120)


def timed(load, command, count):
    """ns per unit of the best of BURSTS runs of a workload command whose
    answer ends with its own count and elapsed ns."""
    best = None
    for _ in range(BURSTS):
        answer = load.command(command.format(count), timeout=120)
        words = answer.split()
        if words[0] != "ok":
            raise RuntimeError("workload: " + answer)
        per = int(words[-1]) / count
        best = per if best is None else min(best, per)
    return best


def measure(target, other):
    cpu = os.cpu_count() - 1
    return {
        "getppid_other": timed(other, "getppid {}", GETPPID_CALLS),
        "getppid_target": timed(target, "getppid {}", GETPPID_CALLS),
        "pingpong": timed(target, "pingpong {} " + str(cpu),
                          PINGPONG_TRIPS),
        "pingpong_other": timed(other, "pingpong {} " + str(cpu),
                                PINGPONG_TRIPS),
    }


def floor_launch():
    """Seconds from starting Python to empty programs attached."""
    started = time.monotonic()
    proc = subprocess.Popen([PYTHON, "-c", FLOOR_LAUNCH, floor_source()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            universal_newlines=True)
    line = proc.stdout.readline()
    elapsed = time.monotonic() - started
    proc.communicate("")
    if not line.startswith("# Start sampling"):
        raise RuntimeError("the empty programs did not load")
    return elapsed


def crowd_report(binary):
    """(seconds from '# Stop sampling' to the end of the report, problems)
    for a target with CROWD busy threads."""
    with workload_ctl.Workload(binary) as load:
        answer = load.command("crowd {}".format(CROWD), timeout=60)
        if answer != "ok crowd {}".format(CROWD):
            raise RuntimeError("workload: " + answer)
        time.sleep(0.5)     # every thread through its first round
        proc = subprocess.Popen(
            [PYTHON, SCRIPT, "-p", str(load.pid), "--sample-time", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, bufsize=1)
        stamped = [(time.monotonic(), line) for line in proc.stdout]
        err = proc.stderr.read()
        code = proc.wait()
    if code:
        raise RuntimeError("kernel_delay.py failed: " + err)
    stop = next(t for t, line in stamped if line.startswith("# Stop"))
    # The report and its warnings go out in one write each.
    end = max(t for t, _ in stamped)
    text = "".join(line for _, line in stamped)
    problems = []
    windows = report.parse(text)
    threads = windows[0].threads if windows else {}
    crowd = {name: thread for name, thread in threads.items()
             if re.match(r"kd-c\d{5}$", name)}
    if len(crowd) != CROWD:
        problems.append("{} of {} crowd threads reported".format(
            len(crowd), CROWD))
    short = [name for name, thread in crowd.items()
             if not set(CROWD_SYSCALLS) <= set(thread["SYSCALL"])]
    if short:
        problems.append("{} crowd threads lack some of their system "
                        "calls".format(len(short)))
    # Lost data: full tables or a full ring buffer (switches the kernel
    # did not report are the kernel's, not the tool's).
    warnings = " ".join(line.strip("# ") for line in text.splitlines()
                        if line.startswith("# WARNING") or
                        line.startswith("#          "))
    for match in re.finditer(r"([\d,]+) (?:updates? of the ([a-z ]+) "
                             r"table failed|events? (?:was|were) dropped)",
                             warnings):
        problems.append(match.group(0))
    return end - stop, problems


def has_option(option):
    helptext = subprocess.run([PYTHON, SCRIPT, "--help"],
                              stdout=subprocess.PIPE,
                              universal_newlines=True).stdout
    return option in helptext


def events_rate(binary):
    """--syscall-events with no threshold on a loop of EVENT_CALLS
    getppid() calls in the target: (calls per second, events listed,
    events counted as not shown, events reported dropped, system calls in
    the window by the report's own counts)."""
    with workload_ctl.Workload(binary) as load:
        proc = subprocess.Popen(
            [PYTHON, SCRIPT, "-p", str(load.pid), "--sample-time", "600",
             "--syscall-events"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, bufsize=1)
        result = {}

        def drive():
            answer = load.command("getppid {}".format(EVENT_CALLS),
                                  timeout=300)
            result["ns"] = int(answer.split()[-1])
            proc.send_signal(signal.SIGINT)     # ends the window

        lines, driver = [], None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("# Start sampling") and driver is None:
                driver = threading.Thread(target=drive)
                driver.start()
        err = proc.stderr.read()
        if proc.wait() or driver is None:
            raise RuntimeError("kernel_delay.py -s failed: " + err)
        driver.join()
    text = "".join(lines)
    listed = 0
    in_events = False
    for line in lines:
        if line.startswith("# SYSCALL EVENTS"):
            in_events = True
        elif in_events and re.match(r"\s+\d+\s+\d+\s+\d+ ", line):
            listed += 1
    more = re.search(r"([\d,]+) more events? not shown", text)
    dropped = re.search(r"([\d,]+) events? (?:was|were) dropped", text)
    calls = sum(call["count"] for thread in report.parse(text)[0]
                .threads.values() for call in thread["SYSCALL"].values())
    return (EVENT_CALLS / (result["ns"] / 1e9), listed,
            int(more.group(1).replace(",", "")) if more else 0,
            int(dropped.group(1).replace(",", "")) if dropped else 0, calls)


def fmt(value, unit):
    if value is None:
        return "-"
    if unit == "s":
        return "{:.2f}".format(value)
    return "{:,.0f}".format(value) if value >= 1000 else \
        "{:.1f}".format(value)


def table(best, launch, crowd, targets):
    """The result lines."""
    rows = [
        ("getppid(), other process", "ns/call", "getppid_other"),
        ("getppid(), monitored", "ns/call", "getppid_target"),
        ("ping-pong, monitored", "ns/trip", "pingpong"),
        ("ping-pong, other process", "ns/trip", "pingpong_other"),
    ]
    head = "{:26} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7}  {}".format(
        "case", "unit", "bare", "floor", "tool", "+floor", "+tool",
        "tool/", "+tool/", "target")
    lines = [head, "{:26} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7}"
             .format("", "", "", "", "", "", "", "bare", "+floor")]
    lines.append("-" * len(head))
    for title, unit, key in rows:
        bare, floor, tool = (best[setup][key] for setup in
                             ("bare", "floor", "tool"))
        added_floor, added_tool = floor - bare, tool - bare
        limit = targets.get(key)
        verdict = ""
        if limit is not None:
            verdict = "+{} {}".format(fmt(limit, unit), "met" if added_tool
                                      <= limit else "MISSED")
            if added_floor > limit:
                verdict += " (floor over it)"
        lines.append("{:26} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7}  "
                     "{}".format(title, unit, fmt(bare, unit),
                                 fmt(floor, unit), fmt(tool, unit),
                                 fmt(added_floor, unit),
                                 fmt(added_tool, unit),
                                 "{:.2f}".format(tool / bare),
                                 "{:.2f}".format(added_tool / added_floor)
                                 if added_floor > 0 else "-", verdict))
    floor_launch_s, tool_launch_s = launch
    lines.append("{:26} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7}  {}"
                 .format("launch to Start sampling", "s", "-",
                         fmt(floor_launch_s, "s"), fmt(tool_launch_s, "s"),
                         "", "", "", "{:.2f}".format(tool_launch_s /
                                                     floor_launch_s),
                         "{} {}".format("1.00", "met" if tool_launch_s <= 1.0
                                        else "MISSED")))
    if crowd is not None:
        latency, problems = crowd
        lines.append("{:26} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>7}  "
                     "{}".format("{:,}-thread report".format(CROWD), "s",
                                 "-", "-", fmt(latency, "s"), "", "", "", "",
                                 "2.00 {}".format(
                                     "met" if latency <= 2.0 and not problems
                                     else "MISSED")))
        for problem in problems:
            lines.append("  ! " + problem)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every set-up, default 3")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("ERROR: the benchmark loads eBPF programs; run: "
                 "sudo make bench")
    kd = load_kd()
    tree = None
    if not kd.headers_available():
        # The same stand-in include tree the tool builds for itself.
        tree = kd.new_tree_dir()
        kd.make_include_tree(tree)
        os.environ["BCC_KERNEL_SOURCE"] = tree
    tmp = tempfile.mkdtemp(prefix="kd-bench.")
    try:
        run(args, workload_ctl.build(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if tree:
            shutil.rmtree(tree, ignore_errors=True)


def run(args, binary):
    floor = Floor()
    best = {"bare": {}, "floor": {}, "tool": {}}
    launches = {"floor": [], "tool": []}
    try:
        with workload_ctl.Workload(binary) as target, \
                workload_ctl.Workload(binary) as other:
            for rnd in range(args.rounds):
                for setup in ("bare", "floor", "tool"):
                    tool = None
                    if setup == "floor":
                        floor.attach()
                    elif setup == "tool":
                        tool = Tool(target.pid)
                        launches["tool"].append(tool.launch)
                    try:
                        got = measure(target, other)
                    finally:
                        if setup == "floor":
                            floor.detach()
                        elif tool:
                            tool.stop()
                    for key, value in got.items():
                        best[setup][key] = min(best[setup].get(key, value),
                                               value)
                launches["floor"].append(floor_launch())
                print("# round {} of {} done".format(rnd + 1, args.rounds),
                      file=sys.stderr, flush=True)
    finally:
        floor.close()
    crowds = [crowd_report(binary) for _ in range(args.rounds)]
    crowd = (min(latency for latency, _ in crowds),
             sorted({problem for _, problems in crowds
                     for problem in problems}))
    events = None
    if has_option("--syscall-events"):
        events = events_rate(binary)
    print("kernel_delay.py overhead: {} rounds, best of {} bursts each; "
          "{:,} getppid() calls, {:,} ping-pong round trips per burst"
          .format(args.rounds, BURSTS, GETPPID_CALLS, PINGPONG_TRIPS))
    targets = {"getppid_other": 100, "getppid_target": 160,
               "pingpong": 1500}
    print("\n".join(table(best, (min(launches["floor"]),
                                 min(launches["tool"])), crowd, targets)))
    if events is None:
        print("--syscall-events: not in this version of the tool")
    else:
        rate, listed, more, dropped, calls = events
        print("--syscall-events, no threshold: {:,.0f} system calls/s in "
              "the target; of {:,} events {:,} listed, {:,} counted only, "
              "{:,} dropped: {}; target 300,000/s without drops {}".format(
                  rate, calls, listed, more, dropped,
                  "all accounted for" if listed + more + dropped == calls
                  else "{:,} unaccounted".format(
                      calls - listed - more - dropped),
                  "met" if rate >= 300000 and not dropped and
                  listed + more == calls else "MISSED"))


if __name__ == "__main__":
    main()
