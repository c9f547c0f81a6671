# SPDX-License-Identifier: Apache-2.0
"""Unit tests of the report header, --format json, --output and --process.

None of them needs root or bcc.  The JSON documents are checked against
the schema the script prints (--json-schema) with python3-jsonschema, a
test dependency only; and against the text report of the same sample:
both are rendered by the real Sampler from one set of collected data.
"""

import datetime
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jsonschema
import pytest
from hypothesis import example, given, settings, strategies as st

import report
from conftest import documents, unescape, validate
from fakes import (POLL_NRS, QUIET, SYSCALL_NAMES, UTC, Clock, FakeProbes,
                   event_log, header, report_rows, run_sampler, wall)


# ---- The schema ------------------------------------------------------------

def test_schema_is_a_valid_draft7_schema(kd):
    jsonschema.Draft7Validator.check_schema(kd.json_schema())
    assert kd.json_schema()["oneOf"][0]["properties"]["schema_version"] == \
        {"const": kd.SCHEMA_VERSION}


def test_every_schema_object_is_closed_and_complete(kd):
    """Every object of the schema built from its compact spec refuses
    unknown properties and requires all of its own."""
    objects = []

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node:
                objects.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(kd.json_schema())
    assert len(objects) > 90
    for node in objects:
        assert node["additionalProperties"] is False
        assert node["required"] == sorted(node["properties"])


def test_json_schema_option_prints_it_without_root(script_for_nobody):
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, script_for_nobody, "--json-schema"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["title"] == \
        "kernel_delay.py --format json"


def test_schema_rejects_what_it_does_not_describe(kd):
    out, _ = run_sampler(kd, ["--format", "json"])
    sample = documents(out)[0]
    validate(kd, sample)
    broken = [
        ("unknown field", lambda d: d.update(extra=1)),
        ("missing field", lambda d: d["window"].pop("end_ns")),
        ("string count", lambda d: d["threads"][0]["run"].update(
            count="20")),
        ("negative total", lambda d: d["threads"][0]["syscalls"][0].update(
            total_ns=-1)),
        ("unknown loss counter", lambda d: d["losses"].update(nope=1)),
        ("other schema version", lambda d: d.update(
            schema_version=kd.SCHEMA_VERSION + 1)),
        ("unknown window end", lambda d: d["window"].update(end="later")),
    ]
    for what, change in broken:
        doc = json.loads(json.dumps(sample))
        change(doc)
        with pytest.raises(jsonschema.ValidationError):
            validate(kd, doc)
            pytest.fail("schema accepts a document with " + what)


# ---- Same sample, same numbers ---------------------------------------------

def json_as_report(doc):
    """A JSON sample in the shape tests/report.py parses text into."""
    threads = {}
    for thread in doc["threads"]:
        parsed = {"tid": thread["tid"], "SYSCALL": {}}
        for call in thread["syscalls"]:
            name = call["name"] or "<unknown:{}>".format(call["nr"])
            parsed["SYSCALL"][name] = {key: call[key + "_ns" if key in (
                "total", "max") else key] for key in ("nr", "count",
                                                      "total", "max")}
        total = thread["syscall_total"]
        if total["count"]:
            parsed["SYSCALL TOTAL"] = (total["count"], total["total_ns"])
        sections = (("LONG POLL", "poll_gaps",
                     ("count", "average", "min", "max")),
                    ("THREAD RUN", "run", ("count", "total", "min", "max")),
                    ("THREAD READY", "ready", ("count", "total", "max")),
                    ("THREAD STOPPED", "stopped", ("count", "total", "max")))
        for section, key, columns in sections:
            acc = thread[key]
            if acc is not None:
                parsed[section] = {column: acc[column if column == "count"
                                               else column + "_ns"]
                                   for column in columns}
            elif section in ("THREAD RUN", "THREAD READY"):
                parsed[section] = None      # the heading is always there
        if thread["hardirqs"]:
            parsed["HARD IRQ"] = {irq["name"]: {
                "count": irq["count"], "total": irq["total_ns"],
                "max": irq["max_ns"]} for irq in thread["hardirqs"]}
            parsed["HARD IRQ TOTAL"] = (thread["hardirq_total"]["count"],
                                        thread["hardirq_total"]["total_ns"])
        if thread["softirqs"]:
            parsed["SOFT IRQ"] = {irq["name"]: {
                "vec": irq["vector"], "count": irq["count"],
                "total": irq["total_ns"], "max": irq["max_ns"]}
                for irq in thread["softirqs"]}
            parsed["SOFT IRQ TOTAL"] = (thread["softirq_total"]["count"],
                                        thread["softirq_total"]["total_ns"])
        if thread["unreported_switches"]:
            parsed["LOST"] = thread["unreported_switches"]
        if thread["budget"] is not None:
            parsed["TIME BUDGET"] = budget_as_report(thread["budget"])
        if thread["histograms"] is not None:
            for call in thread["histograms"]["syscalls"]:
                parsed.setdefault("SYSCALL HISTOGRAM", {})[
                    call["name"] or "<unknown:{}>".format(call["nr"])] = [
                    (row["low_ns"], row["high_ns"], row["count"])
                    for row in call["slots"]]
            if thread["histograms"]["ready"]:
                parsed["READY HISTOGRAM"] = {"ready": [
                    (row["low_ns"], row["high_ns"], row["count"])
                    for row in thread["histograms"]["ready"]]}
        threads[thread["name"]] = parsed
    return threads


def budget_as_report(budget, top=3):
    """A JSON time budget in the shape tests/report.py parses."""
    window = budget["window_ns"]

    def row(ns):
        return (ns, float("{:.1f}".format(100.0 * ns / window)))

    parsed = {"in flight": [
        (item["name"], report.shown_ms(item["ns"]), item["before_window"])
        for item in budget["in_flight"]]}
    for label, key in (("on a CPU", "on_cpu"), ("in hard IRQs", "hardirq"),
                       ("in soft IRQs", "softirq"),
                       ("waiting for a CPU", "ready"),
                       ("asleep in system calls", "blocked"),
                       ("stopped", "stopped"), ("other", "other")):
        parsed[label] = row(budget[key]["ns"])
        # The JSON's percent is the same share, unrounded.
        assert abs(budget[key]["percent"] - parsed[label][1]) <= 0.05
    for item in budget["blocked_in"][:top]:
        parsed[item["name"]] = row(item["ns"])
    rest = budget["blocked_in"][top:]
    if rest:
        parsed["{} other call{}".format(len(rest), "s" if len(rest) > 1
                                        else "")] = \
            row(sum(item["ns"] for item in rest))
    return parsed


def test_json_carries_the_numbers_of_the_text_report(kd):
    rows = report_rows(kd)
    rows["sys_stats"].append(((1002, 0), kd.Acc(7, 700, 1, 300)))
    probes = dict(kd=kd, rows=rows, quiet=QUIET,
                  names={2001: "handler12", 1002: "revalidator7"})
    text, _ = run_sampler(kd, [], FakeProbes(**probes))
    out, _ = run_sampler(kd, ["--format", "json"], FakeProbes(**probes))
    doc = documents(out)[0]
    validate(kd, doc)
    windows = report.parse(text)
    assert len(windows) == 1
    assert windows[0].threads == json_as_report(doc)
    # Same order of threads and of lines within them.
    assert list(windows[0].threads) == [t["name"] for t in doc["threads"]]
    assert [list(t["SYSCALL"]) for t in windows[0].threads.values()] == \
        [[c["name"] or "<unknown:{}>".format(c["nr"]) for c in t["syscalls"]]
         for t in doc["threads"]]
    # min_ns is in JSON only; it comes from the same tables.
    assert doc["threads"][0]["syscalls"][0]["min_ns"] == 1_000
    # The quiet threads, as the text names them.
    quiet = ["{} ({})".format(q["name"], ", ".join(
        [str(q["tid"])] + ([q["where"]] if q["where"] else [])))
        for q in doc["quiet_threads"]]
    assert windows[0].quiet.endswith(" " + ", ".join(quiet))


def budget_rows(end):
    """Time budget tables of handler12 (2001) and revalidator7 (1002)."""
    return {
        "blocked_stats": [((2001, 7), 600_000_000), ((2001, 0), 50_000),
                          ((2001, 1), 40_000), ((2001, 271), 30_000),
                          ((2001, -1), 20_000), ((1002, 7), 100)],
        "budget_state": [((2001,), (end - 700_000, 7, 0, 0, 1))],
        "holders": [((2001, 0), (20_000, 0, "swapper/1")),
                    ((2001, 4242), (25_000, 4242, "stress"))],
        "sys_start": [((2001,), (end - 700_000, 7))],
        "sys_hist": [((2001, 7, 10), 3), ((2001, 7, 13), 7),
                     ((2001, 0, 5), 3)],
        "ready_hist": [((2001, 0, 8), 12), ((2001, 0, 12), 7)],
    }


def test_budget_verdict_and_histograms_match_the_text(kd):
    """The [TIME BUDGET], histogram and # VERDICT numbers of a 2 s window,
    with a finding of each kind, in both formats."""
    signal = kd.StopSignal(sig=19, name="SIGSTOP", sender=777, tgid=777,
                           comm="kill", count=1)

    def probes():
        return FakeProbes(kd, report_rows(kd),
                          {2001: "handler12", 1002: "revalidator7"}, QUIET,
                          budget_rows=budget_rows, signals=[signal],
                          where=({3000: 7, 3001: 7}, {2999: "R"}))
    argv = ["--sample-time", "1", "--histogram", "--ready-threshold",
            "0.001", "--irq-threshold", "0.005", "--ready-floor", "0",
            "--irq-floor", "0", "--stopped-floor", "0.002"]
    text, _ = run_sampler(kd, argv, probes(), step=10 ** 9)
    out, _ = run_sampler(kd, argv + ["--format", "json"], probes(),
                         step=10 ** 9)
    doc = documents(out)[0]
    validate(kd, doc)
    window = report.parse(text)[0]
    assert window.threads == json_as_report(doc)
    threads = {thread["tid"]: thread for thread in doc["threads"]}
    handler = threads[2001]
    # What the comparison covers is there.
    assert handler["budget"]["window_ns"] == 2 * 10 ** 9
    assert [item["name"] for item in handler["budget"]["blocked_in"]] == [
        "poll", "read", "write", "ppoll", "(outside system calls)"]
    assert handler["budget"]["blocked_in"][-1]["nr"] is None
    assert handler["budget"]["in_flight"] == [
        {"nr": 7, "name": "poll", "ns": 700_000, "before_window": False}]
    assert "4 other calls" not in window.threads["handler12"]["TIME BUDGET"]
    assert "2 other calls" in window.threads["handler12"]["TIME BUDGET"]
    assert handler["histograms"]["ready"][0] == \
        {"low_ns": 128, "high_ns": 255, "count": 12}
    assert len(handler["histograms"]["ready"]) == 5
    # Budget parts add up to the window.
    budget = handler["budget"]
    assert sum(budget[part]["ns"] for part in (
        "on_cpu", "ready", "blocked", "stopped", "other")) == \
        budget["window_ns"]
    # Quiet threads have a budget in JSON (one state all along).
    quiet = {q["tid"]: q["budget"] for q in doc["quiet_threads"]}
    assert quiet[3000]["blocked_in"] == [{"nr": 7, "name": "poll",
                                          "ns": 2 * 10 ** 9,
                                          "percent": 100.0}]
    assert quiet[2999]["on_cpu"] == {"ns": 2 * 10 ** 9, "percent": 100.0}

    verdict = doc["verdict"]
    assert verdict["thresholds"] == {"ready_percent": 0.001,
                                     "irq_percent": 0.005,
                                     "stopped_percent": 1.0,
                                     "ready_floor_ns": 0, "irq_floor_ns": 0,
                                     "stopped_floor_ns": 2000,
                                     "min_window_ns": 5 * 10 ** 6}
    assert verdict["too_short"] is False
    assert [(f["tid"], f["kind"]) for f in verdict["findings"]] == [
        (1002, "stopped"), (2001, "cpu"), (2001, "irq")]
    stopped, cpu, irq = verdict["findings"]
    assert cpu["holders"] == [
        {"pid": 4242, "tgid": 4242, "comm": "stress", "ns": 25_000},
        {"pid": 0, "tgid": 0, "comm": "swapper/1", "ns": 20_000}]
    # Equal totals: by name.
    assert irq["sources"][:2] == [{"name": "soft IRQ net_rx", "ns": 50_000},
                                  {"name": "soft IRQ timer", "ns": 50_000}]
    assert stopped["signals"] == [{"signal": 19, "name": "SIGSTOP",
                                   "sender": 777, "tgid": 777,
                                   "comm": "kill", "count": 1}]
    # The text says the same, finding by finding.
    for finding in verdict["findings"]:
        assert "- {} Next: {}.".format(finding["text"],
                                       finding["next_step"]) in \
            window.verdict
    ranking = ", ".join("{} ({}) {:.1f} %".format(r["name"], r["tid"],
                                                  r["percent"])
                        for r in verdict["ranking"] if r["percent"] >= 0.05)
    assert ranking in window.verdict[0]


def test_no_findings(kd):
    rows = report_rows(kd)
    del rows["stop_stats"]
    out, _ = run_sampler(kd, ["--format", "json", "--sample-time", "1"],
                         FakeProbes(kd, rows), step=10 ** 9)
    doc = documents(out)[0]
    assert doc["verdict"]["findings"] == []
    assert doc["options"]["histogram"] is False
    assert all(thread["histograms"] is None for thread in doc["threads"])


def test_lost_switches_in_both_formats(kd):
    rows = {"run_stats": [((5,), kd.Acc(2, 300, 100, 200))]}
    probes = FakeProbes(kd, rows, {5: "lossy"})
    original = probes.collect

    def collect(end_ns):
        threads = original(end_ns)
        threads[5].lost = 3
        return threads
    probes.collect = collect
    text, _ = run_sampler(kd, [], probes)
    probes.windows = 0
    out, _ = run_sampler(kd, ["--format", "json"], probes)
    thread = documents(out)[0]["threads"][0]
    assert thread["unreported_switches"] == 3
    assert report.parse(text)[0].threads["lossy"]["LOST"] == 3


def test_window_bounds_and_times(kd):
    out, progress = run_sampler(kd, ["--format", "json"])
    sample = documents(out)[0]
    window = sample["window"]
    assert window["end_ns"] - window["start_ns"] == window["duration_ns"]
    # --sample-time 0.001 on a clock that moves 1 ms a reading: the
    # window closes at the first reading past its end.
    assert window["duration_ns"] == 2 * 10 ** 6
    assert window["start_time"] == "2026-11-27T11:57:25.129152+00:00"
    assert (window["end"], window["start_trigger_ns"],
            window["stop_trigger_ns"], window["trigger_delta_ns"]) == \
        ("time", None, None, None)
    # Progress lines go to the other stream; the report is JSON only.
    assert progress.splitlines() == [
        "# Start sampling @2026-11-27T11:57:25.129152 (11:57:25 UTC)",
        "# Stop sampling @2026-11-27T11:57:25.129152 (11:57:25 UTC)"]


def test_json_lines_for_several_samples(kd):
    out, _ = run_sampler(kd, ["--format", "json", "--sample-count", "3"])
    docs = documents(out)
    for doc in docs:
        validate(kd, doc)
    assert [doc["type"] for doc in docs] == ["sample"] * 3 + ["end"]
    assert [doc["sample"] for doc in docs[:3]] == [1, 2, 3]
    # Each window lost one event (FakeProbes), the run three.
    assert [doc["losses"]["ringbuf_full"] for doc in docs[:3]] == [1, 1, 1]
    end = docs[-1]
    assert (end["end"], end["samples"], end["skipped"]) == \
        ("completed", 3, 0)
    assert end["losses"]["ringbuf_full"] == 3
    assert end["warnings"] == [
        "3 events were dropped: the ring buffer was full; increase "
        "--buffer-page-count."]
    # Every document stands alone.
    for doc in docs:
        assert doc["target"]["pid"] == 42
        assert doc["host"]["name"] == "node1"
        assert doc["options"]["sample_count"] == 3


def test_warnings_are_the_texts_of_the_text_report(kd):
    counters = {kd.Counter.SCHED_LOST: 2, kd.Counter.POLL_FULL: 1}
    text, _ = run_sampler(kd, [], FakeProbes(kd, {}, counters=counters))
    out, _ = run_sampler(kd, ["--format", "json"],
                         FakeProbes(kd, {}, counters=counters))
    end = documents(out)[-1]
    assert end["losses"]["sched_lost"] == 2
    wrapped = [line for line in text.splitlines()
               if line.startswith("# WARNING") or
               line.startswith("#          ")]
    assert " ".join(line[11:] for line in wrapped) == \
        " ".join(end["warnings"])
    assert len(end["warnings"]) == 3


def test_skipped_and_triggered_windows(kd):
    # Start triggers 5 ms apart from their stops, then 50 ms.
    start = 7 * 10 ** 9
    probes = FakeProbes(kd, report_rows(kd), triggers=[
        (start + 1, start + 1 + 5 * 10 ** 6), (start, start + 50 * 10 ** 6)])
    argv = ["--format", "json", "--start-trigger", "u:p:a",
            "--stop-trigger", "u:p:b", "--trigger-delta", "20000000"]
    out, progress = run_sampler(kd, argv, probes)
    docs = documents(out)
    for doc in docs:
        validate(kd, doc)
    assert [doc["type"] for doc in docs] == ["skipped", "sample", "end"]
    skipped, sample, end = docs
    assert (skipped["count"], skipped["shortest_ns"],
            skipped["longest_ns"]) == (1, 5 * 10 ** 6, 5 * 10 ** 6)
    assert skipped["first_start_time"] <= skipped["last_end_time"]
    assert sample["window"]["trigger_delta_ns"] == 50 * 10 ** 6
    assert sample["window"]["end"] == "trigger"
    assert sample["window"]["start_ns"] == \
        sample["window"]["start_trigger_ns"]
    assert sample["window"]["end_ns"] == sample["window"]["stop_trigger_ns"]
    assert sample["options"]["start_trigger"] == "u:p:a"
    assert sample["options"]["trigger_delta_ns"] == 20000000
    assert (end["samples"], end["skipped"]) == (1, 1)
    assert "# Sample dump skipped for 1 window in 5.0 ms, delta 5,000,000 " \
        "ns @" in report.unwrap(progress)
    # The skipped window's start line is not said; the reported one's is.
    assert progress.count("# Start sampling") == 1


def test_interrupted_window_and_run(kd):
    class Interrupting(FakeProbes):
        def poll(self, timeout_ms):
            if timeout_ms:      # Ctrl-C while waiting in the window
                raise KeyboardInterrupt
            return []

    args = kd.parse_args(["-p", str(os.getpid()), "--format", "json",
                          "--sample-time", "5"])
    out = io.StringIO()
    sampler = kd.Sampler(Interrupting(kd, report_rows(kd)), args, out,
                         kd.RunContext(kd.Target(args.pid), SYSCALL_NAMES,
                                       POLL_NRS), header=header(kd),
                         progress=io.StringIO(), wall=wall)
    with pytest.raises(KeyboardInterrupt):
        sampler.run()
    sample, end = documents(out.getvalue())
    assert sample["window"]["end"] == "interrupted"
    assert end["end"] == "interrupted"
    assert end["samples"] == 1


# ---- Names that are not plain text -----------------------------------------

ODD_NAMES = {
    11: "with space",
    12: "100% {x} {}",
    13: "\x1b[31mred\x1b[0m",
    14: "bad\udcff\udcfebytes",
    15: "tab\tnl\n",
    16: "ünïcode",
}


def test_odd_thread_names_in_json(kd):
    rows = {"run_stats": [((tid,), kd.Acc(1, tid, tid, tid))
                          for tid in ODD_NAMES]}
    out, _ = run_sampler(kd, ["--format", "json"],
                         FakeProbes(kd, rows, ODD_NAMES,
                                    [(20, "\x07q\udc80", "in poll")]))
    assert out.isascii()
    lines = out.splitlines()
    assert len(lines) == 2
    sample = json.loads(lines[0])
    validate(kd, sample)
    names = {t["tid"]: t["name"] for t in sample["threads"]}
    # Valid text comes out as it is; bytes that were not UTF-8 as \xNN.
    assert names == {**ODD_NAMES, 14: "bad\\xff\\xfebytes"}
    assert [dict(quiet, budget=None) for quiet in sample["quiet_threads"]] \
        == [{"tid": 20, "name": "\x07q\\x80", "where": "in poll",
             "budget": None}]
    # A strict UTF-8 decoder accepts every byte.
    out.encode("ascii").decode("utf-8", "strict")


def test_printable(kd):
    assert kd.printable("plain name-1") == "plain name-1"
    assert kd.printable("\x1b[31m\t\n\x7f\x85") == \
        "\\x1b[31m\\x09\\x0a\\x7f\\u0085"
    assert kd.printable("bad\udcff") == "bad\\xff"
    assert kd.printable(b"bad\xff") == "bad\\xff"
    assert kd.printable("a\\xff") == "a\\\\xff"
    assert kd.printable("\ud800") == "\\xed\\xa0\\x80"
    assert kd.printable("ünï 100% {}") == "ünï 100% {}"


@settings(max_examples=2000, deadline=None)
@example(raw=b"\xc2\x80")     # valid UTF-8, but U+0080 is a control
@given(raw=st.binary(max_size=40))
def test_printable_stands_for_exactly_its_bytes(kd, raw):
    """Any bytes come out printable, on one line, and escaped so that they
    can be read back: \\x is always one byte, never a code point."""
    text = kd.printable(raw)
    assert text.isprintable() and unescape(text) == raw


# ---- The header ------------------------------------------------------------

def test_format_header(kd):
    lines = kd.format_header(header(kd))
    started = datetime.datetime(2026, 11, 27, 10, 0, 1, 250000, tzinfo=UTC)
    assert lines == [
        "# kernel_delay {}: kernel_delay.py -p 42".format(kd.__version__),
        "# Host node1: Linux 6.18.0-test (x86_64), 2 CPUs, load average "
        "0.50 0.25 0.00",
        "# Process ovs-vswitchd, PID 42: /usr/sbin/ovs-vswitchd",
        kd.timestamp_line("# Process started", started),
        "# Version: ovs-vswitchd (Open vSwitch) 3.1.0"]


def test_format_header_quotes_and_escapes(kd):
    lines = kd.format_header(header(
        kd, command=("./kernel_delay.py", "--process", "a b",
                     "--output", "x\ny"), cpus=1, name="w\\x1bx",
        exe=None, started=None, version=None,
        version_error="ovs-vswitchd --version: no answer within 3 s"))
    assert lines == [
        "# kernel_delay {}: ./kernel_delay.py --process 'a b' --output "
        "'x\\x0ay'".format(kd.__version__),
        "# Host node1: Linux 6.18.0-test (x86_64), 1 CPU, load average "
        "0.50 0.25 0.00",
        "# Process w\\x1bx, PID 42",
        "# Version: unknown (ovs-vswitchd --version: no answer within 3 s)"]
    plain = kd.format_header(header(kd, version=None))
    assert not any(line.startswith("# Version") for line in plain)


def test_load_average_stays_on_one_line(kd):
    # A long kernel release pushes the load average to the next line, all
    # three numbers together.
    lines = kd.format_header(header(
        kd, kernel="5.14.0-284.30.1.el9_2.x86_64",
        load=(1.38, 129.55, 828.3)))
    assert lines[1:3] == [
        "# Host node1: Linux 5.14.0-284.30.1.el9_2.x86_64 (x86_64), 2 CPUs, "
        "load average",
        "#   1.38 129.55 828.30"]
    assert all(len(line) <= 79 for line in lines)


def test_text_report_starts_with_the_header(kd):
    text, _ = run_sampler(kd, [])
    lines = text.splitlines()
    assert lines[:5] == kd.format_header(header(kd))
    assert lines[5].startswith("# Start sampling @")


def test_read_header_of_this_process(kd):
    head = kd.read_header(["kernel_delay.py", "-p", str(os.getpid())],
                          os.getpid())
    uname = os.uname()
    with open("/proc/self/comm") as comm:
        name = comm.read().strip()
    assert (head.host, head.kernel, head.machine, head.cpus, head.pid,
            head.name) == (uname.nodename, uname.release, uname.machine,
                           os.cpu_count(), os.getpid(), name)
    assert head.exe == os.path.realpath(sys.executable)
    assert len(head.load) == 3
    assert head.started.tzinfo is not None
    assert (head.version, head.version_error) == (None, None)


class FakeDaemon:
    """A unixctl server in a thread: records what it was sent, answers
    with answer (bytes, or None to stay silent)."""

    def __init__(self, path, answer):
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server_path = path
        self.server.listen(1)
        self.answer = answer
        self.received = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.server.accept()
        except OSError:
            return              # closed: nobody came
        with conn:
            while True:
                self.received += conn.recv(4096)
                try:
                    json.loads(self.received)
                    break
                except ValueError:
                    pass
            if self.answer is None:
                conn.recv(1)        # until the client gives up
            else:
                conn.sendall(self.answer)

    def close(self):
        self.server.close()
        self.thread.join(5)
        os.unlink(self.server_path)


@pytest.fixture
def rundir(kd, monkeypatch):
    """A run directory of this process's for daemon_version(): it finds
    sockets there, through /proc/PID/root, as for any daemon."""
    pytest.importorskip("psutil")
    path = tempfile.mkdtemp(prefix="kd-run.")
    monkeypatch.setitem(kd.VERSIONED_DAEMONS, "ovs-vswitchd", (path,))
    yield path
    shutil.rmtree(path)


def ask(kd, rundir, answer, name="ovs-vswitchd"):
    """daemon_version() of this process, answered by a FakeDaemon."""
    daemon = FakeDaemon(os.path.join(rundir, "{}.{}.ctl".format(
        name, os.getpid())), answer)
    try:
        return kd.daemon_version(os.getpid(), name), daemon.received
    finally:
        daemon.close()


def test_daemon_version_asks_the_running_daemon(kd, rundir, monkeypatch):
    """The version comes from the daemon's unixctl socket, in one
    JSON-RPC request as ovs-appctl sends it; nothing is executed."""
    def no_run(*args, **kwargs):
        raise AssertionError("executed {}".format(args))
    monkeypatch.setattr(kd.subprocess, "run", no_run)
    monkeypatch.setattr(kd.subprocess, "Popen", no_run)
    reply = b'{"id":0,"result":"ovs-vswitchd (Open vSwitch) 3.1.0\\n",' \
        b'"error":null}'
    version, sent = ask(kd, rundir, reply)
    assert version == ("ovs-vswitchd (Open vSwitch) 3.1.0", None)
    assert json.loads(sent) == {"id": 0, "method": "version",
                                "params": []}
    # An answer in several pieces, and OVN's longer text.
    monkeypatch.setitem(kd.VERSIONED_DAEMONS, "ovn-controller", (rundir,))
    reply = json.dumps({"id": 0, "error": None, "result": (
        "ovn-controller 24.03.2\nOpen vSwitch Library 3.3.0\nOpenFlow "
        "versions 0x6:0x6\nSB DB Schema 20.33.0\n")}).encode()
    assert ask(kd, rundir, reply, "ovn-controller")[0] == (
        "ovn-controller 24.03.2; Open vSwitch Library 3.3.0", None)
    # Not an OVS or OVN daemon: nothing is asked.
    assert kd.daemon_version(os.getpid(), "kd-main") == (None, None)


def test_daemon_version_answer_is_untrusted(kd, rundir, monkeypatch):
    """Escape sequences are escaped, and a long, silent, broken or
    failing answer gives a reason instead of a version."""
    reply = json.dumps({"id": 0, "error": None,
                        "result": "evil\x1b[2J 1.0\r"}).encode()
    assert ask(kd, rundir, reply)[0] == ("evil\\x1b[2J 1.0", None)
    monkeypatch.setattr(kd, "VERSION_LIMIT", 64)
    version = ask(kd, rundir, b'{"result": "' + b"x" * 100 + b'"}')[0]
    assert version == (None, "version asked over unixctl: its answer is "
                       "longer than 64 bytes")
    assert ask(kd, rundir, b"not json")[0] == (
        None, "version asked over unixctl: it closed the connection "
              "without an answer")
    assert ask(kd, rundir, b'{"id":0,"result":null,"error":"no"}')[0] == (
        None, "version asked over unixctl: it answered with an error: no")
    assert ask(kd, rundir, b'[1]')[0] == (
        None, "version asked over unixctl: its answer is not a JSON-RPC "
              "reply")
    monkeypatch.setattr(kd, "VERSION_TIMEOUT", 0.3)
    started = time.monotonic()
    assert ask(kd, rundir, None)[0] == (
        None, "version asked over unixctl: no answer within 0.3 s")
    assert time.monotonic() - started < 3


def test_daemon_version_without_a_socket(kd, rundir):
    """No socket, or a link a process planted: no version, and why."""
    name = "ovs-vswitchd.{}.ctl".format(os.getpid())
    assert kd.daemon_version(os.getpid(), "ovs-vswitchd") == (
        None, "version asked over unixctl: no control socket {} in {}"
        .format(name, rundir))
    other = os.path.join(rundir, "elsewhere.ctl")
    daemon = FakeDaemon(other, b'{"result": "stolen"}')
    os.symlink(other, os.path.join(rundir, name))
    try:
        version = kd.daemon_version(os.getpid(), "ovs-vswitchd")
    finally:
        daemon.server.close()
    assert version == (None, "version asked over unixctl: its control "
                       "socket is not a socket of the daemon's user")
    assert daemon.received == b""


# ---- A fault costs its part of the report only ------------------------------

def test_a_failing_thread_costs_only_that_thread(kd, monkeypatch):
    """An exception while formatting one thread: a one-line note in its
    place, every other thread and the verdict shown, a warning at the end,
    the traceback kept for stderr and exit code EX_DATAERR."""
    format_thread = kd.format_thread
    thread_json = kd.thread_json

    def broken(stats, *args, **kwargs):
        if stats.tid == 2001:
            raise ValueError("injected")
        return format_thread(stats, *args, **kwargs)

    def broken_json(stats, *args, **kwargs):
        if stats.tid == 2001:
            raise ValueError("injected")
        return thread_json(stats, *args, **kwargs)
    healthy, _ = run_sampler(kd, [])
    monkeypatch.setattr(kd, "format_thread", broken)
    monkeypatch.setattr(kd, "thread_json", broken_json)
    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "0.001"])
    out = io.StringIO()
    sampler = kd.Sampler(FakeProbes(kd, report_rows(kd), {
        2001: "handler12", 1002: "revalidator7"}, QUIET), args, out,
        kd.RunContext(kd.Target(args.pid), SYSCALL_NAMES, POLL_NRS),
        clock=Clock(10 ** 6), header=header(kd),
        wall=wall)
    sampler.run()
    text = out.getvalue()
    note = ("# NOTE: thread 2001 not shown: ValueError: injected (a bug in "
            "kernel_delay; its traceback follows the report on stderr)")
    # (The note is in 80 columns: its lines are joined for the check.)
    assert note in report.unwrap(text).splitlines()
    window = report.parse(text)[0]
    assert "handler12" not in window.threads
    assert window.threads["revalidator7"] == \
        report.parse(healthy)[0].threads["revalidator7"]
    assert "# VERDICT" in text
    assert report.unwrap(text).splitlines()[-2] == (
        "# WARNING: 1 part of the report could not be shown (a bug in "
        "kernel_delay); its traceback follows on stderr: please report it")
    assert text.splitlines()[-1] == "# End of run: 1 window reported; 2 " \
        "warnings above (completed)"
    stderr = io.StringIO()
    assert sampler.faults.tell(stderr) == os.EX_DATAERR
    assert stderr.getvalue().startswith("thread 2001 failed:\nTraceback")
    assert 'raise ValueError("injected")' in stderr.getvalue()
    assert kd.Faults().tell(stderr) == os.EX_OK

    # JSON: the thread is left out, and the warnings say so.
    out, _ = run_sampler(kd, ["--format", "json"])
    sample, end = documents(out)
    assert [thread["tid"] for thread in sample["threads"]] == [1002]
    assert note[2:] in sample["warnings"]
    assert end["warnings"][-1].startswith("WARNING: 1 part of the report")
    validate(kd, sample)
    validate(kd, end)


def test_a_failing_section_costs_only_that_section(kd, monkeypatch):
    """The verdict fails to format: a note in its place, the threads
    shown."""
    def broken(*args):
        raise KeyError("injected")
    monkeypatch.setattr(kd, "format_verdict", broken)
    text, _ = run_sampler(kd, [])
    assert "# NOTE: the verdict not shown: KeyError: 'injected' (a bug in " \
        "kernel_delay; its traceback follows the report on stderr)" in \
        report.unwrap(text).splitlines()
    assert set(report.parse(text)[0].threads) == {"handler12",
                                                  "revalidator7"}


# ---- Command line ----------------------------------------------------------

def test_pid_and_process_exclude_each_other(kd, capsys):
    for argv in (["-p", "1", "--process", "x"],
                 ["--pid", "1", "--process", "x"]):
        with pytest.raises(SystemExit) as exc:
            kd.parse_args(argv)
        assert exc.value.code == 2
        assert "not allowed with argument" in capsys.readouterr().err


def test_help_documents_process_not_the_old_spelling(kd, capsys):
    with pytest.raises(SystemExit):
        kd.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--process NAME" in out
    assert "--process-name" not in out
    assert "--format {text,json}" in out and "--output FILE" in out


def test_output_file_that_cannot_be_written(kd, capsys, tmp_path):
    missing = str(tmp_path / "no" / "such" / "dir" / "r.txt")
    with pytest.raises(kd.Fatal) as exc:
        kd.open_output(missing, kd.Interrupts())
    assert exc.value.code == os.EX_IOERR
    assert str(exc.value) == ("cannot write the report to {} (No such file "
                              "or directory); choose another --output file"
                              .format(missing))


# ---- System call events and upcalls ----------------------------------------

def event_probes(kd, **args):
    """FakeProbes with --syscall-events and upcall statistics."""
    return FakeProbes(kd, events=lambda probes: event_log(kd),
                      upcalls=lambda probes: [
                          (0, 0, 3), (1, 0, 5), (1, -11, 2), (0, -105, 4),
                          (1, -105, 1)], **args)


def event_as_report(event):
    """A JSON system call event as tests/report.py parses the text."""
    frames = []
    for kind in ("kernel", "user"):
        frames += event[kind + "_stack"] or [
            "[{} stack lost: {}]".format(kind, event[kind + "_stack_lost"])]
    return {"entry": event["entry_ns"], "exit": event["exit_ns"],
            "tid": event["tid"], "comm": event["name"][:16],
            "delta_us": event["duration_ns"] // 1000,
            "syscall": event["syscall"] or "<unknown:{}>".format(
                event["nr"]),
            "frames": frames}


def test_events_and_upcalls_match_the_text(kd):
    argv = ["-s", "--sample-count", "2"]
    args = dict(rows=report_rows(kd),
                names={2001: "handler12", 1002: "revalidator7"},
                counters={kd.Counter.STACK_LOST: 2})
    text, _ = run_sampler(kd, argv, event_probes(kd, **args))
    out, progress = run_sampler(kd, argv + ["--format", "json"],
                                event_probes(kd, **args))
    docs = documents(out)
    for doc in docs:
        validate(kd, doc)
    windows = report.parse(text)
    assert len(windows) == 2
    for window, doc in zip(windows, docs):
        events = doc["syscall_events"]
        assert events["stacks"] is True
        assert [event_as_report(e) for e in events["events"]] == \
            window.events
        assert events["more"] == window.more_events == 0
        upcalls = doc["upcalls"]
        parsed = {"total": (upcalls["total"], {
            c["cpu"]: c["count"] for c in upcalls["total_per_cpu"]})}
        for key in ("successful", "failed"):
            parsed[key] = (upcalls[key], {c["cpu"]: c["count"]
                                          for c in upcalls[key + "_per_cpu"]})
        for error in upcalls["errors"]:
            parsed["  {} ({})".format(error["name"], error["errno"])] = (
                error["count"], {c["cpu"]: c["count"]
                                 for c in error["per_cpu"]})
        assert {label.strip(): value for label, value in parsed.items()} == \
            {label.strip(): value for label, value in window.upcalls.items()}
        assert upcalls["errors"][0] == {
            "errno": 105, "name": "ENOBUFS", "count": 5,
            "per_cpu": [{"cpu": 0, "count": 4}, {"cpu": 1, "count": 1}]}
    # The lost stacks: an errno name, no frames.
    event = docs[0]["syscall_events"]["events"][1]
    assert (event["kernel_stack"], event["kernel_stack_lost"]) == \
        (None, "EEXIST")
    assert docs[0]["options"]["syscall_events_ns"] == 0


def test_notes_in_every_document(kd):
    probes = FakeProbes(kd, report_rows(kd))
    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "0.001",
                          "--format", "json"])
    out, progress = io.StringIO(), io.StringIO()
    sampler = kd.Sampler(probes, args, out, kd.RunContext(
        kd.Target(args.pid), SYSCALL_NAMES, POLL_NRS),
                         clock=Clock(), header=header(kd), progress=progress,
                         wall=wall)
    sampler.notes.append("# Upcall statistics skipped: a reason.")
    sampler.run()
    docs = documents(out.getvalue())
    assert [doc["notes"] for doc in docs] == \
        [["Upcall statistics skipped: a reason."]] * 2
    assert docs[0]["syscall_events"] is None and docs[0]["upcalls"] is None
    # People read the note on standard error.
    assert progress.getvalue().startswith(
        "# Upcall statistics skipped: a reason.\n")


def test_waiting_line_comes_after_arming(kd):
    """Whoever reads "# Waiting for start trigger" may fire the trigger at
    once: the program must be armed by then, and the line said once."""
    class Recording(FakeProbes):
        def __init__(self, kd, rows, out):
            super().__init__(kd, rows)
            self.out = out
            self.armed_when = []

        def set_state(self, state):
            if state == self.kd.Capture.ARMED:
                self.armed_when.append(self.out.getvalue())

        def capture_values(self):
            return self.kd.Capture.HOLD, 10 ** 12, 10 ** 12 + 10 ** 6

    args = kd.parse_args(["-p", str(os.getpid()), "--start-trigger", "u:p:a",
                          "--stop-trigger", "u:p:b", "--sample-count", "2"])
    out = io.StringIO()
    probes = Recording(kd, report_rows(kd), out)
    kd.Sampler(probes, args, out, kd.RunContext(
        kd.Target(args.pid), SYSCALL_NAMES, POLL_NRS), clock=Clock(),
               header=header(kd), wall=wall).run()
    assert len(probes.armed_when) == 2
    assert "# Waiting for start trigger" not in probes.armed_when[0]
    assert out.getvalue().count("# Waiting for start trigger 'u:p:a'") == 1
