# SPDX-License-Identifier: Apache-2.0
"""Trigger mode on the real kernel: USDT, uprobe, uretprobe, library
uprobes and tracepoints open and close windows around actions of known
length in the workload (kd_op(ms) sleeps ms milliseconds between its
kd_workload:op_start and op_end USDT probes: 5 ms, then 50 ms)."""

import os
import re
import signal
import threading
import time

import pytest

import report
import workload_ctl
from conftest import (LONG, MSEC, SHORT, TRIGGER_HEADER, deltas, documents,
                      leftovers, run_tool, start_tool, stderr_line, validate)


@pytest.fixture(scope="module")
def load(workload_bin):
    with workload_ctl.Workload(workload_bin) as workload:
        yield workload


def skipped(out):
    """(count, shortest, longest) of each summary of skipped windows."""
    return [(int(count.replace(",", "")), int(low.replace(",", "")),
             int((high or low).replace(",", ""))) for count, low, high in
            re.findall(r"^# Sample dump skipped for ([\d,]+) windows? in "
                       r"\S+ \S+, delta ([\d,]+)(?: to ([\d,]+))? ns @",
                       report.unwrap(out), re.M)]


def check_op_window(window, delta):
    """A window from kd_op's entry to its return holds its one 50 ms
    sleep, and no more."""
    thread = window.threads["kd-op"]
    sleeps = thread["SYSCALL"]["clock_nanosleep"]
    assert sleeps["count"] == 1
    assert LONG <= sleeps["total"] <= delta
    # The thread fired both triggers: it was on a CPU when the window
    # opened and when it closed.  Those cut periods count, so its time
    # on a CPU, queued and asleep covers the window.  (Asleep, not the
    # call's length: that also holds the wait for a CPU after the wakeup,
    # which on a busy machine is milliseconds.)
    run, ready = thread["THREAD RUN"], thread["THREAD READY"]
    if thread.get("LOST"):      # periods left out, and said so
        assert (run or {}).get("count", 0) < 2
        return
    # On a CPU when the window opens and when it closes: two periods, and
    # one more for each preemption, each after a wait (as is the run after
    # the wakeup).
    assert run["count"] >= 2
    assert run["count"] == ready["count"] + 1
    asleep = thread["TIME BUDGET"]["asleep in system calls"][0]
    assert LONG <= asleep <= sleeps["total"]
    covered = run["total"] + ready["total"] + asleep
    assert abs(covered - delta) < 0.02 * delta


@pytest.mark.parametrize("start,stop", [
    ("u:kd_workload:op_start", "u:kd_workload:op_end"),
    ("up:kd_op", "ur:kd_op"),
    ("uprobe:kd_op", "upr:kd_op"),
])
def test_window_between_two_triggers(load, start, stop):
    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               start, "--stop-trigger", stop,
                               "--trigger-delta", str(20 * MSEC),
                               "--sample-count", "2"])
    assert code == 0, err
    # Windows alternate 5 ms and 50 ms: the short ones are skipped and
    # do not count towards --sample-count.
    found = deltas(out)
    assert len(found) == 2, out
    for delta in found:
        assert LONG <= delta < LONG + 5 * MSEC, out
    summaries = skipped(out)
    assert sum(count for count, _, _ in summaries) <= 3, out
    for _, shortest, longest in summaries:
        assert SHORT <= shortest <= longest < SHORT + 5 * MSEC, out
    windows = [w for w in report.parse(out) if not w.skipped]
    assert len(windows) == 2
    for window, delta in zip(windows, found):
        check_op_window(window, delta)
    # The header's delta is the difference of the trigger timestamps.
    stamps = [int(ts) for _, ts in TRIGGER_HEADER.findall(out)]
    pairs = list(zip(stamps[::2], stamps[1::2]))
    assert [b - a for a, b in pairs if b - a >= 20 * MSEC] == found


def test_start_trigger_only_lasts_sample_time(load):
    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               "u:kd_workload:op_start", "--sample-time",
                               "0.3"])
    assert code == 0, err
    assert re.search(r"^# Start sampling \(trigger@\d+\)", out, re.M)
    assert re.search(r"^# Stop sampling @", out, re.M)
    assert re.search(r"^# Sample dump @", out, re.M)
    window = report.parse(out)[0]
    # 0.3 s of 20 ms sleeps
    assert 12 <= window.threads["kd-sleep"]["SYSCALL"]["clock_nanosleep"][
        "count"] <= 15


def test_tracepoint_stop_trigger_closes_the_window(load):
    """Stop only: the window opens at once and closes at the trigger, the
    entry of the first getsid() of a burst."""
    def burst(_proc):
        load.command("burst 997")

    code, out, err = run_tool(["-p", str(load.pid), "--stop-trigger",
                               "t:syscalls:sys_enter_getsid"],
                              on_start=burst)
    assert code == 0, err
    assert re.search(r"^# Start sampling @", out, re.M)
    assert re.search(r"^# Stop sampling \(trigger@\d+\)", out, re.M)
    window = report.parse(out)[0]
    # The window closed before any getsid() returned.
    assert "getsid" not in window.threads.get(
        "kd-burst", {"SYSCALL": {}})["SYSCALL"]


def test_library_uprobe_and_tracepoint_start_trigger(load):
    """A start trigger in libc, the window opened by a tracepoint of a
    system call of the workload; exact count inside."""
    stop = threading.Event()

    def poke():
        # Until the window opens, make the workload send a datagram.
        while not stop.wait(0.2):
            load.command("udp 1")

    def burst(_proc):
        stop.set()
        load.command("burst 997")

    helper = threading.Thread(target=poke)
    helper.start()
    try:
        code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                                   "t:syscalls:sys_enter_sendto",
                                   "--sample-time", "0.5"],
                                  on_start=burst)
    finally:
        stop.set()
        helper.join()
    assert code == 0, err
    window = report.parse(out)[0]
    assert window.threads["kd-burst"]["SYSCALL"]["getsid"]["count"] == 997

    libc = "up:c:clock_nanosleep"
    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               libc, "--sample-time", "0.1"])
    assert code == 0, err
    assert re.search(r"^# Start sampling \(trigger@\d+\)", out, re.M)
    # The same library by the path the process maps it from.
    with open("/proc/{}/maps".format(load.pid)) as maps:
        path = next(line.split()[-1] for line in maps
                    if re.search(r"/libc[.-][^/]*so", line))
    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               "ur:{}:clock_nanosleep".format(path),
                               "--sample-time", "0.1"])
    assert code == 0, err
    assert re.search(r"^# Start sampling \(trigger@\d+\)", out, re.M)


def test_internal_tracepoint_as_trigger_and_missed_starts(load):
    """raw_syscalls:sys_enter is also one of the tool's own probes; as a
    start trigger it fires constantly, also while a window is being
    reported: those starts are missed and the tool says so."""
    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               "t:raw_syscalls:sys_enter", "--sample-time",
                               "0.05", "--sample-count", "3"])
    assert code == 0, err
    assert out.count("# Sample dump @") == 3
    # (1,000 and more are written with a comma.)
    assert re.search(r"^# WARNING: [\d,]+ start triggers? w(as|ere) missed",
                     out, re.M), out


def test_start_and_stop_in_one_poll(load):
    """A window shorter than the sampling loop's wake-up: its start and
    stop events arrive together.  The stop trigger is also a tracepoint
    the tool uses itself, and fires right after the tool's own probe."""
    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               "up:kd_op", "--stop-trigger",
                               "t:sched:sched_switch", "--sample-count",
                               "3"], timeout=30)
    assert code == 0, err
    found = deltas(out)
    assert len(found) == 3, out
    assert all(0 < delta < LONG for delta in found)
    assert "were not reported by the kernel" not in out


def test_thread_busy_in_system_calls_for_the_whole_window(load):
    """kd-burst makes getsid() calls without pause; the first opens a
    20 ms window.  Whether or not it is ever switched out, the window
    holds 20 ms of its time on a CPU.  (The window closes when the tool
    gets to it: on a loaded machine a little later than asked.)"""
    burst = threading.Thread(target=load.command, args=("burst 3000017",),
                             kwargs={"timeout": 60})

    def start_burst(_proc):
        burst.start()

    code, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                               "t:syscalls:sys_enter_getsid",
                               "--sample-time", "0.02"],
                              on_waiting=start_burst)
    burst.join()
    assert code == 0, err
    thread = report.parse(out)[0].threads["kd-burst"]
    assert thread["SYSCALL"]["getsid"]["count"] > 1000
    running = thread["THREAD RUN"]["total"]
    waiting = (thread["THREAD READY"] or {}).get("total", 0)
    length = re.search(r"^# WINDOW 1 of 1: ([\d.]+) ms$", out, re.M)
    window_ns = float(length.group(1)) * MSEC
    assert 20 * MSEC <= window_ns, out
    # (The length is printed to 0.1 ms.)
    assert running + waiting <= window_ns + 0.05 * MSEC, out
    if not thread.get("LOST"):      # else periods are left out, and said so
        assert running + waiting >= 17 * MSEC, out


def test_ctrl_c_while_waiting_for_a_trigger(load):
    def interrupt(proc):
        proc.send_signal(signal.SIGINT)

    code, out, err = run_tool(
        ["-p", str(load.pid), "--start-trigger",
         "t:syscalls:sys_enter_getsid"], on_waiting=interrupt)
    assert code == 0, err
    assert "# Interrupted" in out
    assert "Traceback" not in err
    assert "Sample dump" not in out
    assert leftovers() == []


@pytest.mark.parametrize("trigger,code,fragment", [
    ("x:foo", 2, "unknown trigger type 'x'"),
    ("u:kd_workload", 2, "wrong number of fields"),
    ("k:foo-bar", 2, "not a valid name"),
    ("u:kd_workload:nope", os.EX_CONFIG,
     "has no USDT probe kd_workload:nope; it has: kd_workload:op_end, "
     "kd_workload:op_start"),
    ("up:no_such_function", os.EX_CONFIG, "no symbol no_such_function"),
    ("ur:c:no_such_function", os.EX_CONFIG, "no symbol no_such_function"),
    ("up:libnotmapped:f", os.EX_CONFIG, "is not mapped by process"),
    ("t:sched:no_such_event", os.EX_CONFIG, "no tracepoint"),
    ("k:kd_no_such_function", "kprobe", None),
    ("kr:kd_no_such_function", "kprobe", None),
])
def test_trigger_errors(load, trigger, code, fragment):
    if code == "kprobe":
        # This machine's kernel has no kprobes; elsewhere the function
        # name is what is wrong.
        if os.path.exists("/sys/bus/event_source/devices/kprobe"):
            code, fragment = os.EX_CONFIG, "no kernel function"
        else:
            code, fragment = os.EX_UNAVAILABLE, "does not support kprobes"
    got, out, err = run_tool(["-p", str(load.pid), "--start-trigger",
                              trigger])
    assert got == code, err
    assert "Traceback" not in err
    assert fragment in err
    if code != 2:
        assert err.count("\n") == 1 and err.startswith("ERROR: "), err
    assert out == ""


# ---- A frequent trigger with --trigger-delta (issue 18 case 12) -------------

def test_frequent_usdt_trigger_does_not_fill_the_disk(
        kd, workload_bin):
    """kd_op(0) fires its USDT probes microseconds apart, thousands of
    times a second; every window is under --trigger-delta.  Before, each
    wrote a JSON document and three progress lines (5.9 MB of JSON and
    1.3 MB of stderr in 4 s); now one summary a --skipped-interval."""
    with workload_ctl.Workload(workload_bin) as load:
        proc = start_tool([
            "-p", str(load.pid), "--format", "json", "--start-trigger",
            "u:kd_workload:op_start", "--stop-trigger", "u:kd_workload:op_end",
            "--trigger-delta", str(10 ** 9), "--skipped-interval", "1"])
        try:
            assert stderr_line(proc, 60).startswith("# Waiting for start")
            started = time.monotonic()
            while time.monotonic() - started < 3:
                assert load.command("ops 2000", timeout=60) == "ok ops 2000"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    docs = documents(out)
    skipped = [doc for doc in docs if doc["type"] == "skipped"]
    # The signal may come inside a window: that one is reported.
    kinds = [doc["type"] for doc in docs if doc["type"] != "skipped"]
    assert kinds in (["end"], ["sample", "end"])
    if kinds[0] == "sample":
        assert docs[-2]["window"]["end"] == "interrupted"
    total = sum(doc["count"] for doc in skipped)
    assert total == docs[-1]["skipped"] >= 20, err
    # One summary a second at most, plus the last one.
    assert 1 <= len(skipped) <= elapsed + 2
    for doc in skipped:
        validate(kd, doc)
        assert 0 < doc["shortest_ns"] <= doc["longest_ns"] < 10 ** 9
    assert err.count("# Start sampling") == kinds.count("sample")
    assert err.count("# Sample dump skipped for ") == len(skipped)
    assert len(out) + len(err) < 4000 * (len(skipped) + 2)
