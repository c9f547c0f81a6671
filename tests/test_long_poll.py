# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests of --long-poll: real probes on the workload's kd-lpoll
thread, checked against the workload's own clock and schedstat, against
the test's clock for stops, and on a real ovs-vswitchd."""

import json
import os
import queue
import signal
import subprocess
import threading
import time

import pytest

import workload_ctl
from conftest import (MSEC, RUN_PIDS, SCRIPT, TOP, script_module, spin_cpu,
                      validate)

THRESHOLD_MS = 150
SOAK_SECONDS = int(os.environ.get("KD_SOAK_SECONDS", "60"))
# Workload commands: on a loaded machine the pinned thread can be kept off
# its CPU for seconds.
COMMAND_S = 120


class LongPollRun:
    """kernel_delay.py --long-poll --format json in the background: its
    documents as they come, its progress lines (stderr) as they come."""

    def __init__(self, pid, *options):
        self.proc = subprocess.Popen(
            [SCRIPT, "-p", str(pid), "--format", "json"] + list(options),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, bufsize=1, cwd=TOP)
        RUN_PIDS.append(self.proc.pid)
        self.docs, self.stderr = queue.Queue(), queue.Queue()
        self.seen = []
        self.err = []
        for stream, sink in ((self.proc.stdout, self.docs),
                             (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink),
                             daemon=True).start()
        # Wait for the window to open: catches count from there.
        self.progress("# Catching")

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink.put(line)
        sink.put(None)

    def _line(self, sink, deadline):
        line = sink.get(timeout=max(0, deadline - time.monotonic()))
        assert line is not None, "tool ended: " + "".join(self.err)
        return line

    def progress(self, prefix, timeout=600):
        """Wait for a progress line starting with prefix."""
        deadline = time.monotonic() + timeout
        while True:
            self.err.append(self._line(self.stderr, deadline))
            if self.err[-1].startswith(prefix):
                return self.err[-1]

    def catch_of(self, tid, timeout=60):
        """Wait for the next long_poll document of thread tid."""
        deadline = time.monotonic() + timeout
        while True:
            doc = json.loads(self._line(self.docs, deadline))
            self.seen.append(doc)
            if doc["type"] == "long_poll" and doc["tid"] == tid:
                return doc

    def catch_over(self, tid, start, end):
        """Wait for the catch of thread tid that covers [start, end] (on a
        loaded machine the thread can make other long intervals)."""
        while True:
            doc = self.catch_of(tid)
            if doc["interval"]["start_ns"] < end and \
                    doc["interval"]["end_ns"] > start:
                return doc

    def finish(self, sig=signal.SIGINT, timeout=60):
        """End the run (sig, or None: it ends by itself); returns (exit
        code, every document)."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        while True:
            line = self.docs.get(timeout=timeout)
            if line is None:
                break
            self.seen.append(json.loads(line))
        while True:
            line = self.stderr.get(timeout=timeout)
            if line is None:
                break
            self.err.append(line)
        for doc in self.seen:
            validate(script_module(), doc)
        return code, self.seen

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ask(load, line):
    """A workload command, with time for a loaded machine."""
    return load.command(line, timeout=COMMAND_S)


def catches(docs, tid=None):
    return [doc for doc in docs if doc["type"] == "long_poll" and
            (tid is None or doc["tid"] == tid)]


def thread_state(pid, tid):
    with open("/proc/{}/task/{}/stat".format(pid, tid)) as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def gap_below(load, threshold_ms):
    """One interval of kd-lpoll just below the threshold, by the workload's
    own clock (a loaded machine can stretch one: then try again)."""
    for share in (0.93, 0.93, 0.9, 0.9, 0.85, 0.85, 0.8, 0.8, 0.8, 0.8):
        start, end = map(int, ask(load, "lpgap {}".format(
            int(threshold_ms * share * 1000))).split()[2:4])
        if end - start < (threshold_ms - 1) * MSEC:
            return start, end
    pytest.fail("no interval just below the threshold could be made")


@pytest.fixture(scope="module")
def long_one(workload_bin):
    """One long interval of kd-lpoll, shared with two pinned spinners: a
    busy loop of 300 ms, a nanosleep of 200 ms and a stop of 300 ms; and
    intervals below the threshold before and after it."""
    cpu = spin_cpu()
    with workload_ctl.Workload(workload_bin, spin_cpu=cpu) as load:
        tids = load.tids()
        tid = int(ask(load, "lpoll {}".format(cpu)).split()[2])
        run = LongPollRun(load.pid, "--long-poll", str(THRESHOLD_MS))
        try:
            below = [gap_below(load, THRESHOLD_MS)]
            assert ask(load, "lplong 300 200") == "ok lplong {}".format(
                tid)
            os.kill(load.pid, signal.SIGSTOP)
            # The thread stops when it next gets its (shared) CPU: time
            # the stop from then.  The test's clock brackets each end: the
            # last look that saw it running and the first that saw it
            # stopped; before and after kill(SIGCONT).
            running = time.monotonic_ns()
            while thread_state(load.pid, tid) != "T":
                running = time.monotonic_ns()
                time.sleep(0.0002)
            stop_seen = time.monotonic_ns()
            time.sleep(0.3)
            before = time.monotonic_ns()
            os.kill(load.pid, signal.SIGCONT)
            stopped = (before - stop_seen, time.monotonic_ns() - running)
            start, end, ran, waited, late = map(
                int, ask(load, "lpend").split()[2:7])
            doc = run.catch_over(tid, start, end)
            below.append(gap_below(load, THRESHOLD_MS))
            # The last interval below the threshold has ended when the
            # next one of the thread does: make one more, caught.
            run.catch_over(tid, *map(int, ask(load, "lpgap {}".format(
                2 * THRESHOLD_MS * 1000)).split()[2:4]))
            code, docs = run.finish()
        finally:
            run.kill()
    return dict(doc=doc, docs=docs, code=code, tid=tid, tids=tids,
                start=start, end=end, ran=ran, waited=waited, late=late,
                stopped=stopped, below=below)


def test_exactly_one_catch_for_the_long_interval(long_one):
    assert long_one["code"] == 0
    mine = catches(long_one["docs"], long_one["tid"])
    # One catch covers the long interval; none starts where an interval
    # below the threshold did.  (On a loaded machine the thread, which
    # shares its CPU with two spinners, can wait that long between two
    # polls by itself: such catches are real and allowed.)
    assert len([doc for doc in mine
                if doc["interval"]["start_ns"] < long_one["end"] and
                doc["interval"]["end_ns"] > long_one["start"]]) == 1
    for start, _end in long_one["below"]:
        assert not [doc for doc in mine
                    if abs(doc["interval"]["start_ns"] - start) < MSEC]
    for doc in catches(long_one["docs"]):
        assert doc["interval"]["duration_ns"] >= THRESHOLD_MS * MSEC
    assert long_one["docs"][-1]["type"] == "end"
    assert long_one["docs"][-1]["samples"] == len(catches(long_one["docs"]))


def test_length_agrees_with_the_workload_clock(long_one):
    interval = long_one["doc"]["interval"]
    own = long_one["end"] - long_one["start"]
    assert abs(interval["duration_ns"] - own) <= 0.01 * own + MSEC
    assert interval["end_ns"] - interval["start_ns"] == \
        interval["duration_ns"]
    assert abs(interval["start_ns"] - long_one["start"]) <= MSEC
    assert interval["start_time"] < interval["end_time"]


def test_run_and_ready_agree_with_schedstat(long_one):
    budget = long_one["doc"]["budget"]
    # The workload reads schedstat just inside the interval's edges; on a
    # loaded machine those reads come late, by the measured "late" ns.
    late = long_one["late"]
    assert abs(budget["on_cpu"]["ns"] - long_one["ran"]) <= \
        0.05 * long_one["ran"] + late, (budget, late)
    assert abs(budget["ready"]["ns"] - long_one["waited"]) <= \
        0.05 * long_one["waited"] + late, (budget, late)
    # The parts add up to the interval.
    parts = sum(budget[part]["ns"] for part in (
        "on_cpu", "ready", "blocked", "stopped", "other"))
    assert parts == budget["window_ns"] == \
        long_one["doc"]["interval"]["duration_ns"]


def test_stop_is_timed_and_its_signal_and_sender_named(long_one):
    doc = long_one["doc"]
    low, high = long_one["stopped"]
    assert low - 10 * MSEC <= doc["budget"]["stopped"]["ns"] <= \
        high + 10 * MSEC, (doc["budget"], low, high)
    stops = [f for f in doc["verdict"]["findings"] if f["kind"] == "stopped"]
    assert len(stops) == 1
    assert [(s["name"], s["sender"]) for s in stops[0]["signals"]] == \
        [("SIGSTOP", os.getpid())]
    assert "SIGSTOP from" in stops[0]["text"]


def test_nanosleep_is_the_top_system_call(long_one):
    doc = long_one["doc"]
    top = doc["budget"]["blocked_in"][0]
    assert top["name"] == "clock_nanosleep"
    assert 200 * MSEC <= top["ns"] <= 230 * MSEC
    assert doc["longest_call"]["name"] == "clock_nanosleep"
    assert doc["longest_call"]["ns"] >= 200 * MSEC


def test_verdict_names_the_spinner_as_cpu_holder(long_one):
    spinners = {long_one["tids"]["kd-spin1"], long_one["tids"]["kd-spin2"]}
    cpu = [f for f in long_one["doc"]["verdict"]["findings"]
           if f["kind"] == "cpu"]
    assert len(cpu) == 1
    named = {h["pid"] for h in cpu[0]["holders"]}
    assert spinners & named, cpu[0]
    assert "kd-spin" in cpu[0]["text"]


def test_text_report_and_target_exit(workload_bin):
    """Text: a catch shows its interval, budget and verdict; the run ends
    with exit 75 when the target exits, the catch reported."""
    with workload_ctl.Workload(workload_bin) as load:
        tid = int(ask(load, "lpoll -1").split()[2])
        proc = subprocess.Popen(
            [SCRIPT, "-p", str(load.pid), "--long-poll", "100"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, bufsize=1, cwd=TOP)
        RUN_PIDS.append(proc.pid)
        try:
            out = []
            for line in proc.stdout:
                out.append(line)
                if line.startswith("# Catching"):
                    ask(load, "lpgap 150000")
                elif "kd-lpoll" in line and "[LONG POLL INTERVAL]" in line:
                    load.stop()
            err = proc.stderr.read()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = "".join(out)
    assert code == os.EX_TEMPFAIL, err
    assert "{} kd-lpoll".format(tid) in text
    for part in ("[TIME BUDGET]", "on a CPU", "# VERDICT",
                 "long poll interval caught (process exited)"):
        assert part in text, text
    assert "exited during the run" in err


def lpoll_run(binary, commands, *options):
    """(kd-lpoll's tid, exit code, documents) of a run with options that
    ends by itself, with the workload commands sent once it started."""
    with workload_ctl.Workload(binary) as load:
        tid = int(ask(load, "lpoll -1").split()[2])
        run = LongPollRun(load.pid, *options)
        try:
            for command in commands:
                ask(load, command)
            code, docs = run.finish(sig=None)
        finally:
            run.kill()
    return tid, code, docs


def test_rate_limit_counts_what_it_does_not_show(kd, workload_bin):
    _, code, docs = lpoll_run(workload_bin, ["lpsoak 2000 3600 0"],
                              "--long-poll", "0", "--sample-count",
                              str(3 * kd.LONG_POLL_RATE))
    assert code == 0
    shown = catches(docs)
    assert len(shown) == 3 * kd.LONG_POLL_RATE
    # 2,000 intervals a second: most were over the limit, and counted.
    assert sum(doc["not_shown"] for doc in shown) > 1000
    assert docs[-1]["losses"]["long_poll_unshown"] >= \
        sum(doc["not_shown"] for doc in shown)


def test_histogram_of_all_poll_intervals(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        tid = int(ask(load, "lpoll -1").split()[2])
        run = LongPollRun(load.pid, "--long-poll", "100", "--histogram")
        try:
            for gap in [20000] * 5 + [120000]:
                ask(load, "lpgap {}".format(gap))
            run.catch_of(tid)
            code, docs = run.finish()
        finally:
            run.kill()
    assert code == 0
    hists = {h["tid"]: h for h in docs[-1]["poll_histograms"]}
    counts = sum(slot["count"] for slot in hists[tid]["slots"])
    # Every interval of the thread: the long one, the five of 20 ms and
    # those of the 1 ms poll loop between them.
    assert counts >= 7
    assert hists[tid]["slots"][-1]["high_ns"] >= 120 * MSEC


def test_soak(workload_bin):
    """SOAK_SECONDS (make soak: 600) of 5,000 short intervals a second and
    one long interval every 10 s: every long one caught and no other of
    the thread, nothing dropped, the tool's memory flat."""
    with workload_ctl.Workload(workload_bin) as load:
        tid = int(ask(load, "lpoll -1").split()[2])
        run = LongPollRun(load.pid, "--long-poll", "100")
        try:
            ask(load, "lpsoak 5000 10 150")
            rss = [rss_kib(run.proc.pid)]
            while len(soaked(run.seen, tid)) < SOAK_SECONDS // 10:
                run.catch_of(tid, timeout=60)
                if len(rss) == 1:
                    rss.append(rss_kib(run.proc.pid))
            # The next long interval is 10 s away.
            shorts, longs = map(int, ask(load, "lpcount").split()[2:4])
            rss.append(rss_kib(run.proc.pid))
            code, docs = run.finish()
        finally:
            run.kill()
    assert code == 0
    assert len(soaked(docs, tid)) == longs == SOAK_SECONDS // 10
    # Any other catch of the thread is a real wait for a CPU (a machine
    # loaded by other work), not a short interval let through.
    for doc in catches(docs, tid):
        if doc not in soaked(docs, tid):
            assert doc["budget"]["ready"]["percent"] >= 50, doc["budget"]
    assert shorts >= 0.9 * 5000 * (SOAK_SECONDS - 10)
    losses = docs[-1]["losses"]
    for counter in ("ringbuf_full", "long_poll_unshown", "long_poll_full",
                    "sched_full", "sys_start_full"):
        assert losses.get(counter, 0) == 0, losses
    # From the first catch on (the first one loads Python code).
    assert rss[-1] - rss[1] < 5 * 1024, rss
    print("soak: {} s, {} short and {} long intervals, {} catches, RSS "
          "{} -> {} -> {} KiB".format(SOAK_SECONDS, shorts, longs,
                                      len(catches(docs, tid)), *rss))


def soaked(docs, tid):
    """The catches of the soak's long intervals: a 150 ms nanosleep."""
    return [doc for doc in catches(docs, tid)
            if doc["longest_call"] and
            doc["longest_call"]["name"] == "clock_nanosleep" and
            doc["longest_call"]["ns"] >= 150 * MSEC]


def rss_kib(pid):
    with open("/proc/{}/status".format(pid)) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_stock_ovs_main_loop(ovs):
    run = LongPollRun(ovs, "--long-poll", "0", "--sample-count", "12")
    try:
        code, docs = run.finish(sig=None, timeout=120)
    finally:
        run.kill()
    assert code == 0, "".join(run.err)
    names = {doc["name"] for doc in catches(docs)}
    assert len(catches(docs)) == 12
    assert "ovs-vswitchd" in names or any(
        name.startswith(("handler", "revalidator", "urcu"))
        for name in names), names
    for doc in catches(docs):
        assert doc["budget"]["window_ns"] == doc["interval"]["duration_ns"]
