# SPDX-License-Identifier: Apache-2.0
"""The edges of a run found by trying to break it (issue 18), on made-up
data: verdicts on short windows, durations in units that fit, skipped
windows with --trigger-delta, missed-trigger counts, the quiet line of a
stopped thread and a standard error that has gone.  The privileged ones
(SIGHUP, a FIFO with no reader, a frequent USDT trigger) are in
test_faults.py and test_triggers.py."""

import errno
import io
import os
import signal
import subprocess

import pytest

from conftest import documents, validate, wait_until
from fakes import (NAMES, Clock, FakeProbes, header, report_rows, run_sampler,
                   stats, wall)

US = 1000
MS = 1000 * US


# ---- Case 1: verdicts on short windows, durations in units that fit -------

@pytest.mark.parametrize("ns, text", [
    (0, "0.0 µs"), (349, "0.3 µs"), (999, "1.0 µs"), (5 * US, "5.0 µs"),
    (999_949, "999.9 µs"), (999_950, "1.0 ms"), (12_345_678, "12.3 ms"),
    (999_949_999, "999.9 ms"), (2_689_000_000, "2.69 s"),
    (90_061 * 10 ** 9, "90,061.00 s")])
def test_durations_in_units_that_fit(kd, ns, text):
    assert kd.duration(ns) == text


def verdict_of(kd, window, thresholds=None, **parts):
    """The Verdict of one thread (tid 1) in a window of window ns."""
    threads = {1: stats(kd, 1, "revalidator7", **parts)}
    budgets = {1: kd.thread_budget(threads[1], 10 * 10 ** 9,
                                   10 * 10 ** 9 + window, NAMES)}
    return kd.make_verdict(budgets, threads, thresholds or kd.Thresholds())


def test_short_window_is_too_short_to_judge(kd):
    """The README's revalidator example: a 64 µs window with 5.3 µs of
    ordinary wakeup latency (8.3 %) was called CPU contention, 'waited
    0.0 ms'."""
    verdict = verdict_of(kd, 64 * US, ready=kd.Acc(1, 5300, 5300, 5300))
    assert verdict.too_short and verdict.findings == []
    text = " ".join(line.lstrip("# ") for line in kd.format_verdict(verdict))
    assert "0.0 ms" not in text and "contention" not in text
    assert "share of the 64.0 µs window: revalidator7 (1) 8.3 %" in text
    assert "The 64.0 µs window is too short to judge (under 5.0 ms, " \
        "--min-window)" in text
    # A window of --min-window is judged.
    verdict = verdict_of(kd, 5 * MS, ready=kd.Acc(1, 2 * MS, 1, 1))
    assert not verdict.too_short and len(verdict.findings) == 1


@pytest.mark.parametrize("part, kind, floor", [
    ({"ready": (1, 1)}, "cpu", "--ready-floor"),
    ({"softirqs": {3: (1, 1)}}, "irq", "--irq-floor"),
    ({"stopped": (1, 1)}, "stopped", "--stopped-floor")])
def test_finding_needs_an_amount_that_matters(kd, part, kind, floor):
    """9 % of a 10 ms window is over every threshold, yet 0.9 ms is under
    the 1 ms floors: no finding, until the floor is lowered."""
    def parts(ns):
        name, value = next(iter(part.items()))
        if isinstance(value, dict):
            return {name: {key: kd.Acc(1, ns, ns, ns) for key in value}}
        return {name: kd.Acc(1, ns, ns, ns)}

    assert verdict_of(kd, 10 * MS, **parts(900 * US)).findings == []
    (finding,) = verdict_of(kd, 10 * MS, **parts(MS)).findings
    assert finding.kind == kind
    lower = kd.thresholds_of(kd.parse_args([floor, "0.5"]))
    (finding,) = verdict_of(kd, 10 * MS, lower, **parts(900 * US)).findings
    assert finding.kind == kind and "900.0 µs" in finding.text


def test_floor_options(kd, capsys):
    args = kd.parse_args(["--ready-floor", "2.5", "--irq-floor", "0",
                          "--stopped-floor", "0.001", "--min-window", "20"])
    assert kd.thresholds_of(args) == kd.Thresholds(
        ready_floor=2_500_000, irq_floor=0, stopped_floor=1000,
        min_window=20 * MS)
    defaults = kd.thresholds_of(kd.parse_args([]))
    assert (defaults.ready_floor, defaults.irq_floor,
            defaults.stopped_floor, defaults.min_window) == \
        (MS, MS, MS, 5 * MS)
    for value, message in (("-1", "must be a number from 0 to"),
                           ("x", "'x' is not a number of milliseconds"),
                           ("nan", "must be a number from 0 to")):
        with pytest.raises(SystemExit):
            kd.parse_args(["--ready-floor", value])
        assert message in capsys.readouterr().err


# ---- Case 12: --trigger-delta with a frequent trigger ---------------------

def frequent_trigger(kd):
    """Trigger pairs whose deltas are 1, 2, ... 999 µs (skipped with
    --trigger-delta 1 ms), then ones of 50 ms, reported."""
    starts = [7 * 10 ** 9 + pair * 10 ** 6 for pair in range(1, 1001)]
    return FakeProbes(kd, report_rows(kd), triggers=[
        (start, start + (pair * US if pair < 1000 else 50 * MS))
        for pair, start in enumerate(starts, 1)])


def test_skipped_windows_are_summed_up(kd, monkeypatch):
    """999 skipped windows give a few summaries (one per
    --skipped-interval), not 999 lines and documents; the counts add up
    and the shortest and longest are right."""
    ticks = iter(range(10 ** 9))
    # Each reading of the clock is 10 ms later: 100 readings a second.
    monkeypatch.setattr(kd.time, "monotonic", lambda: next(ticks) / 100)
    argv = ["--start-trigger", "u:p:a", "--stop-trigger", "u:p:b",
            "--trigger-delta", str(MS), "--skipped-interval", "2"]
    out, progress = run_sampler(kd, argv + ["--format", "json"],
                                frequent_trigger(kd))
    docs = documents(out)
    for doc in docs:
        validate(kd, doc)
    skipped = [doc for doc in docs if doc["type"] == "skipped"]
    assert 2 <= len(skipped) <= 20
    assert sum(doc["count"] for doc in skipped) == 999 == docs[-1]["skipped"]
    assert min(doc["shortest_ns"] for doc in skipped) == US
    assert max(doc["longest_ns"] for doc in skipped) == 999 * US
    assert [doc["type"] for doc in docs][-2:] == ["sample", "end"]
    lines = progress.splitlines()
    assert sum(line.startswith("# Sample dump skipped for ") for line in
               lines) == len(skipped)
    assert sum(line.startswith("# Start sampling") for line in lines) == 1
    assert len(progress) < 8000
    text, _ = run_sampler(kd, argv, frequent_trigger(kd))
    summaries = [line for line in text.splitlines()
                 if line.startswith("# Sample dump skipped for ")]
    assert len(summaries) == len(skipped)
    assert summaries[0].startswith("# Sample dump skipped for {:,} windows "
                                   "in ".format(skipped[0]["count"]))
    assert ", delta 1,000 to " in summaries[0]


# ---- Small ones -----------------------------------------------------------

def test_stopped_thread_is_not_said_to_be_in_a_call(kd):
    """A stopped thread still shows the call the stop interrupted in
    /proc/PID/syscall; its quiet line says stopped, as its budget does."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert wait_until(lambda: kd.task_stat(proc.pid, proc.pid)[0] == "S")
        os.kill(proc.pid, signal.SIGSTOP)
        assert wait_until(lambda: kd.task_stat(proc.pid, proc.pid)[0] == "T")
        tasks = kd.snapshot_tasks(proc.pid, [proc.pid])
        assert isinstance(tasks[proc.pid].syscall, int)
        assert kd.quiet_of(tasks, {}, {}) == [(proc.pid, "sleep", "stopped")]
    finally:
        proc.kill()
        proc.wait()


class MissingTriggers(FakeProbes):
    """Two start triggers fire while each window is being reported
    (collect() is part of the report)."""

    def __init__(self, kd):
        super().__init__(kd, report_rows(kd))
        self.missed = 0

    def collect(self, end_ns):
        threads = super().collect(end_ns)
        self.missed += 2
        return threads

    def counters(self):
        counters = super().counters()
        counters[self.kd.Counter.TRIGGER_MISSED] = self.missed
        return counters


def test_missed_triggers_count_in_the_next_window(kd):
    """Triggers that fire while a window is reported are the next
    window's loss: the first window has none, and the run's total is the
    sum of the windows'."""
    out, _ = run_sampler(kd, ["--format", "json", "--sample-count", "3"],
                         MissingTriggers(kd))
    docs = documents(out)
    for doc in docs:
        validate(kd, doc)
    missed = [doc["losses"].get("trigger_missed", 0) for doc in docs
              if doc["type"] == "sample"]
    assert missed == [0, 2, 2]
    assert docs[-1]["losses"]["trigger_missed"] == sum(missed)
    text, _ = run_sampler(kd, ["--sample-count", "3"], MissingTriggers(kd))
    assert text.count("# WARNING (this window): 2 start triggers were "
                      "missed") == 2
    assert "\n# WARNING: 4 start triggers were missed" in text


# ---- A standard error that has gone ----------------------------------------

class GoneTerminal:
    """A standard error whose terminal has gone (EIO on every write)."""

    def write(self, _text):
        raise OSError(errno.EIO, "Input/output error")

    def flush(self):
        pass


def test_json_report_survives_a_gone_standard_error(kd):
    """With --format json, progress goes to standard error; when that
    terminal is gone (ssh dropped), the JSON report is still written."""
    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "0.001",
                          "--format", "json", "--sample-count", "2"])
    out = io.StringIO()
    sampler = kd.Sampler(FakeProbes(kd, report_rows(kd)), args, out,
                         kd.RunContext(kd.Target(args.pid), {}, (7, 271)),
                         clock=Clock(), header=header(kd),
                         progress=GoneTerminal(), wall=wall)
    sampler.run()
    docs = documents(out.getvalue())
    assert [doc["type"] for doc in docs] == ["sample", "sample", "end"]
