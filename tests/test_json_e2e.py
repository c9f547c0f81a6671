# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests of the report header, --format json, --output and
--process: real probes on the running kernel.

The JSON of a window over the workload must carry the exact counts the
workload made (a prime number of getsid() calls, of UDP datagrams) and
validate against the schema the script documents.  That the JSON carries
the same numbers as the text report of the same sample is tested in
test_json_unit.py, where one Sampler renders both from the same data.
"""

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time

import pytest

import report
import workload_ctl
from conftest import (BURST, DATAGRAMS, MSEC, NSEC, SCRIPT, SHORT_CALLS,
                      leftovers, run_json, run_tool, validate, wait_named)


def proc_start_seconds(pid):
    """When process pid started, from /proc (seconds since the epoch)."""
    with open("/proc/{}/stat".format(pid)) as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as proc_stat:
        boot = int(re.search(r"^btime (\d+)", proc_stat.read(),
                             re.M).group(1))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def json_run(workload_bin):
    """A 1 s JSON window over the workload with a burst of getsid() calls,
    UDP on loopback and a thread that exits."""
    actions = [("burst {}".format(BURST), "ok burst {}".format(BURST)),
               ("udp {}".format(DATAGRAMS), "ok udp {}".format(DATAGRAMS)),
               ("short {}".format(SHORT_CALLS), None)]
    with workload_ctl.Workload(workload_bin) as load:
        answers = []

        def act(_proc):
            for command, expected in actions:
                answers.append((load.command(command), expected))

        code, docs, err = run_json(["-p", str(load.pid), "--sample-time",
                                    "1", "--histogram"], on_start=act)
        yield load, code, docs, err, answers


def threads_of(doc):
    return {thread["name"]: thread for thread in doc["threads"]}


def calls(thread):
    return {call["name"]: call for call in thread["syscalls"]}


def test_json_exact_counts(json_run):
    load, code, docs, err, answers = json_run
    assert code == 0, err
    for answer, expected in answers:
        assert expected is None or answer == expected
    assert [doc["type"] for doc in docs] == ["sample", "end"]
    threads = threads_of(docs[0])
    assert calls(threads["kd-burst"])["getsid"]["count"] == BURST
    udp = calls(threads["kd-udp"])
    assert udp["sendto"]["count"] == udp["recvfrom"]["count"] == DATAGRAMS
    assert calls(threads["kd-short"])["getpgid"]["count"] == SHORT_CALLS
    net_rx = {irq["name"]: irq for irq in threads["kd-udp"]["softirqs"]}
    assert net_rx["net_rx"]["vector"] == 3
    assert 1 <= net_rx["net_rx"]["count"] <= 2 * DATAGRAMS
    # 20 ms sleeps in a 1 s window.
    sleeps = calls(threads["kd-sleep"])["clock_nanosleep"]
    assert 40 <= sleeps["count"] <= 50
    assert sleeps["min_ns"] >= 20 * MSEC
    assert sleeps["min_ns"] <= sleeps["total_ns"] // sleeps["count"] <= \
        sleeps["max_ns"]
    poll = threads["kd-poll"]
    assert 30 * MSEC <= poll["poll_gaps"]["min_ns"] <= \
        poll["poll_gaps"]["average_ns"] < 32 * MSEC
    assert poll["syscall_total"]["count"] == \
        calls(poll)["clock_nanosleep"]["count"]
    assert all(thread["stopped"] is None for thread in threads.values())
    # --histogram: every getsid() call is in one slot or another.
    getsid = [call for call in threads["kd-burst"]["histograms"]["syscalls"]
              if call["name"] == "getsid"][0]
    assert sum(row["count"] for row in getsid["slots"]) == BURST
    ready = threads["kd-sleep"]["histograms"]["ready"]
    assert sum(row["count"] for row in ready) == \
        threads["kd-sleep"]["ready"]["count"]


def test_json_budget_adds_up(json_run):
    load, code, docs, err, _ = json_run
    sample = docs[0]
    window = sample["window"]["duration_ns"]
    budgets = [thread["budget"] for thread in sample["threads"]] + \
        [thread["budget"] for thread in sample["quiet_threads"]]
    assert len(budgets) >= 8
    for budget in budgets:
        assert budget["window_ns"] == window
        parts = sum(budget[part]["ns"] for part in (
            "on_cpu", "ready", "blocked", "stopped", "other"))
        assert parts == window
    for thread in sample["threads"]:
        # Unaccounted time: before kd-short was created and after it
        # exited, and around switches the kernel did not report.
        if thread["name"] != "kd-short" and \
                not thread["unreported_switches"]:
            assert abs(thread["budget"]["other"]["ns"]) <= 0.01 * window, \
                thread
    # kd-short entered exit() and never returned: nothing in flight.
    assert threads_of(sample)["kd-short"]["budget"]["in_flight"] == []
    sleeper = threads_of(sample)["kd-sleep"]["budget"]
    assert sleeper["blocked_in"][0]["name"] == "clock_nanosleep"
    assert sleeper["blocked"]["percent"] > 90
    # An idle workload: nothing for the verdict.
    assert sample["verdict"]["findings"] == []
    assert sample["options"]["histogram"] is True


def test_json_window_and_progress(json_run):
    load, code, docs, err, _ = json_run
    window = docs[0]["window"]
    assert window["end"] == "time"
    assert window["duration_ns"] == window["end_ns"] - window["start_ns"]
    assert NSEC <= window["duration_ns"] < NSEC + 50 * MSEC
    # CLOCK_MONOTONIC, the clock of the probes.
    assert window["end_ns"] < time.monotonic_ns()
    assert window["start_time"] < window["end_time"] <= window["dump_time"]
    # Progress lines on standard error, nothing else there.
    lines = err.splitlines()
    assert [line.split(" @")[0] for line in lines] == [
        "# Start sampling", "# Stop sampling"]
    assert lines[0].split(" @")[1].split(" ")[0] == \
        window["start_time"][:26]
    end = docs[1]
    assert (end["end"], end["samples"], end["skipped"]) == \
        ("completed", 1, 0)
    # A warning for each counter that is not zero (missed triggers only
    # matter with several windows).
    assert len(end["warnings"]) == sum(
        1 for name, value in end["losses"].items()
        if value and name != "trigger_missed")


def test_json_header(kd, json_run, workload_bin):
    load, code, docs, err, _ = json_run
    uname = os.uname()
    for doc in docs:
        assert doc["host"] == dict(
            doc["host"], name=uname.nodename, kernel=uname.release,
            machine=uname.machine, cpus=os.cpu_count())
        assert len(doc["host"]["load_average"]) == 3
        target = doc["target"]
        assert (target["pid"], target["name"], target["exe"]) == \
            (load.pid, "kd-main", os.path.realpath(workload_bin))
        assert (target["version"], target["version_error"]) == (None, None)
        started = target["start_time"]
        assert abs(time.mktime(time.strptime(started[:19],
                                             "%Y-%m-%dT%H:%M:%S")) +
                   float("0" + started[19:26]) -
                   proc_start_seconds(load.pid)) < 0.02
        assert doc["tool"]["version"] == kd.__version__
        assert doc["tool"]["command"][1:] == [
            "--format", "json", "-p", str(load.pid), "--sample-time", "1",
            "--histogram"]


def test_json_verdict_names_cpu_contention(workload_bin):
    """Two spinners pinned to one CPU: each waits for the other."""
    cpu = os.cpu_count() - 1
    with workload_ctl.Workload(workload_bin, spin_cpu=cpu) as load:
        tids = load.tids()
        load.wait_spinners_sharing()
        code, docs, err = run_json(["-p", str(load.pid), "--sample-time",
                                    "1"])
    assert code == 0, err
    verdict = docs[0]["verdict"]
    cpu_findings = {f["name"]: f for f in verdict["findings"]
                    if f["kind"] == "cpu"}
    assert {"kd-spin1", "kd-spin2"} <= set(cpu_findings)
    for name, other in (("kd-spin1", "kd-spin2"), ("kd-spin2", "kd-spin1")):
        finding = cpu_findings[name]
        assert finding["tid"] == tids[name]
        assert finding["percent"] >= verdict["thresholds"]["ready_percent"]
        holders = {h["pid"]: h for h in finding["holders"]}
        assert tids[other] in holders
        assert holders[tids[other]]["tgid"] == load.pid
    ranked = [r["name"] for r in verdict["ranking"][:2]]
    assert sorted(ranked) == ["kd-spin1", "kd-spin2"]


def test_json_syscall_events(workload_bin):
    """-s: every 20 ms sleep of kd-sleep is an event, with its stacks."""
    with workload_ctl.Workload(workload_bin) as load:
        tids = load.tids()
        code, docs, err = run_json(["-p", str(load.pid), "--sample-time",
                                    "0.5", "-s", "15000000"])
    assert code == 0, err
    sample = docs[0]
    events = sample["syscall_events"]
    assert events["stacks"] is True and events["more"] == 0
    assert all(event["duration_ns"] > 15 * MSEC for event in events["events"])
    sleeps = [event for event in events["events"]
              if event["tid"] == tids["kd-sleep"]]
    assert len(sleeps) == \
        calls(threads_of(sample)["kd-sleep"])["clock_nanosleep"]["count"]
    assert all(event["syscall"] == "clock_nanosleep" and
               event["name"] == "kd-sleep" for event in sleeps)
    assert any(event["user_stack"] and event["kernel_stack"]
               for event in sleeps)
    window = sample["window"]
    assert all(window["start_ns"] <= event["entry_ns"] < event["exit_ns"] <=
               window["end_ns"] for event in events["events"])
    assert sample["options"]["syscall_events_ns"] == 15000000


def test_text_header(kd, workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        code, out, err = run_tool(["-p", str(load.pid), "--sample-time",
                                   "0.3"])
        started = proc_start_seconds(load.pid)
    assert code == 0, err
    # The header wraps at 80 columns; its lines whole again.
    lines = report.unwrap(out).splitlines()
    uname = os.uname()
    cpus = os.cpu_count()
    assert lines[0] == "# kernel_delay {}: {} -p {} --sample-time 0.3" \
        .format(kd.__version__, SCRIPT, load.pid)
    assert re.fullmatch(
        r"# Host {}: Linux {} \({}\), {} CPUs?, load average "
        r"\d+\.\d\d \d+\.\d\d \d+\.\d\d".format(
            re.escape(uname.nodename), re.escape(uname.release),
            platform.machine(), cpus), lines[1]), lines[1]
    assert lines[2] == "# Process kd-main, PID {}: {}".format(
        load.pid, os.path.realpath(workload_bin))
    stamp = re.fullmatch(r"# Process started @(\S+) \(\S+ UTC\)", lines[3])
    assert stamp, lines[3]
    assert abs(time.mktime(time.strptime(stamp.group(1)[:19],
                                         "%Y-%m-%dT%H:%M:%S")) +
               float("0" + stamp.group(1)[19:]) - started) < 0.02
    assert lines[4].startswith("# Start sampling @")
    # The tables are as before.
    assert "kd-sleep" in report.parse(out)[0].threads


def test_json_lines_for_several_samples(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        code, docs, err = run_json(["-p", str(load.pid), "--sample-time",
                                    "0.3", "--sample-count", "3",
                                    "--sample-interval", "0.2"])
    assert code == 0, err
    assert [doc["type"] for doc in docs] == ["sample"] * 3 + ["end"]
    assert [doc["sample"] for doc in docs[:3]] == [1, 2, 3]
    windows = [doc["window"] for doc in docs[:3]]
    for earlier, later in zip(windows, windows[1:]):
        assert later["start_ns"] - earlier["end_ns"] >= 190 * MSEC
    for doc in docs[:3]:
        sleeps = calls(threads_of(doc)["kd-sleep"])["clock_nanosleep"]
        assert 13 <= sleeps["count"] <= 15
    assert docs[3]["samples"] == 3
    assert err.count("# Start sampling") == 3


def test_output_file(kd, workload_bin, tmp_path):
    text_file, json_file = tmp_path / "report.txt", tmp_path / "r.json"
    with workload_ctl.Workload(workload_bin) as load:
        text = run_tool(["-p", str(load.pid), "--sample-time", "0.3",
                         "--output", str(text_file)])
        code, docs, err = run_json(["-p", str(load.pid), "--sample-time",
                                    "0.3", "--output", str(json_file)])
    assert text[0] == 0, text[2]
    # The report goes to the file; only the progress lines reach the
    # terminal, on stderr.
    assert text[1] == ""
    assert [line.split(" @")[0].split(":")[0]
            for line in text[2].splitlines()] == \
        ["# Start sampling", "# Stop sampling", "# End of run"]
    written = text_file.read_text()
    assert written.startswith("# kernel_delay ")
    assert "kd-sleep" in report.parse(written)[0].threads
    assert code == 0, err
    assert docs == []
    assert "# Start sampling" in err
    written = [json.loads(line) for line in
               json_file.read_text().splitlines()]
    for doc in written:
        validate(kd, doc)
    assert [doc["type"] for doc in written] == ["sample", "end"]
    assert "kd-sleep" in threads_of(written[0])


def test_output_file_error(tmp_path):
    code, out, err = run_tool(["-p", str(os.getpid()), "--output",
                               str(tmp_path / "no-such-dir" / "r.txt")])
    assert code == os.EX_IOERR, err
    assert err.count("\n") == 1 and err.startswith("ERROR: cannot write "
                                                   "the report to ")
    assert out == ""
    assert leftovers() == []


def test_json_interrupted(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        code, docs, err = run_json(
            ["-p", str(load.pid), "--sample-time", "60"],
            on_start=lambda proc: (time.sleep(0.3),
                                   proc.send_signal(signal.SIGINT)))
    assert code == 0, err
    assert [doc["type"] for doc in docs] == ["sample", "end"]
    assert docs[0]["window"]["end"] == "interrupted"
    assert 0.3 * NSEC <= docs[0]["window"]["duration_ns"] < 10 * NSEC
    assert docs[1]["end"] == "interrupted"
    assert err.rstrip().endswith("# Interrupted")


def test_json_triggers_and_skipped_windows(workload_bin):
    """kd_op() sleeps 5 ms, then 50 ms, alternately: with a 20 ms
    --trigger-delta the short calls are skipped windows, but for those
    that start while a window is being reported (20 ms after it closed;
    longer on a loaded machine): their triggers are missed, and said so."""
    with workload_ctl.Workload(workload_bin) as load:
        code, docs, err = run_json(
            ["-p", str(load.pid), "--start-trigger", "u:kd_workload:op_start",
             "--stop-trigger", "u:kd_workload:op_end", "--trigger-delta",
             "20000000", "--sample-count", "2"])
    assert code == 0, err
    kinds = [doc["type"] for doc in docs]
    assert kinds.count("sample") == 2 and kinds[-1] == "end"
    skipped = [doc for doc in docs if doc["type"] == "skipped"]
    missed = sum(doc["losses"].get("trigger_missed", 0) for doc in docs
                 if "losses" in doc)
    # (How many depends on how soon the tool is armed again after each
    # window: 1 on an idle machine, 7 in one run beside 30 busy loops.)
    assert 1 <= sum(doc["count"] for doc in skipped) + missed
    for doc in skipped:
        assert 5 * MSEC <= doc["shortest_ns"] <= doc["longest_ns"] < \
            20 * MSEC
    for doc in docs[:-1]:
        if doc["type"] == "skipped":
            continue
        window = doc["window"]
        assert window["trigger_delta_ns"] == \
            window["stop_trigger_ns"] - window["start_trigger_ns"]
        if doc["type"] == "sample":
            assert window["trigger_delta_ns"] >= 50 * MSEC
            assert window["end"] == "trigger"
            assert (window["start_ns"], window["end_ns"]) == \
                (window["start_trigger_ns"], window["stop_trigger_ns"])
            op = threads_of(doc)["kd-op"]
            assert calls(op)["clock_nanosleep"]["count"] == 1
        assert doc["options"]["start_trigger"] == "u:kd_workload:op_start"
        assert doc["options"]["trigger_delta_ns"] == 20000000
    assert docs[-1]["skipped"] == sum(doc["count"] for doc in skipped)


def test_process_by_name(workload_bin, tmp_path):
    """--process finds a process by its name: the workload, renamed to a
    name no other process has, and a program started under a name of its
    own (in the text report too)."""
    with workload_ctl.Workload(workload_bin) as load:
        assert load.command("rename " + b"kd-json-main".hex()) == \
            "ok rename"
        code, docs, err = run_json(["--process", "kd-json-main",
                                    "--sample-time", "0.3"])
    assert code == 0, err
    assert (docs[0]["target"]["pid"], docs[0]["target"]["name"]) == \
        (load.pid, "kd-json-main")
    assert "kd-sleep" in threads_of(docs[0])

    sleeper = tmp_path / "kd-json-sleeper"
    sleeper.symlink_to(shutil.which("sleep"))
    proc = subprocess.Popen([str(sleeper), "30"])
    try:
        wait_named([proc], "kd-json-sleeper")
        code, docs, err = run_json(["--process", "kd-json-sleeper",
                                    "--sample-time", "0.3"])
        text = run_tool(["--process", "kd-json-sleeper",
                         "--sample-time", "0.3"])
    finally:
        proc.kill()
        proc.wait()
    assert code == 0, err
    assert (docs[0]["target"]["pid"], docs[0]["target"]["name"]) == \
        (proc.pid, "kd-json-sleeper")
    # Blocked in one sleep for the whole window.
    assert docs[0]["threads"] == []
    quiet = docs[0]["quiet_threads"]
    assert [(q["tid"], q["name"], q["where"]) for q in quiet] == [
        (proc.pid, "kd-json-sleeper", "in clock_nanosleep")]
    assert quiet[0]["budget"]["blocked_in"][0]["name"] == "clock_nanosleep"
    assert quiet[0]["budget"]["blocked"]["percent"] == 100.0
    assert text[0] == 0, text[2]
    assert "# Process kd-json-sleeper, PID {}:".format(proc.pid) in \
        report.unwrap(text[1])


# ---- Real Open vSwitch ------------------------------------------------------

def ovs_version(program):
    return subprocess.run([program, "--version"], stdout=subprocess.PIPE,
                          universal_newlines=True,
                          check=True).stdout.splitlines()[0]


def test_ovs_header_and_version(ovs):
    code, out, err = run_tool(["--process", "ovs-vswitchd",
                               "--sample-time", "0.3"])
    assert code == 0, err
    lines = report.unwrap(out).splitlines()
    expected = ovs_version("ovs-vswitchd")
    assert expected.startswith("ovs-vswitchd (Open vSwitch) ")
    assert lines[2].startswith("# Process ovs-vswitchd, PID {}: ".format(
        ovs))
    assert lines[4] == "# Version: " + expected
    window = report.parse(out)[0]
    # The main thread may sleep in poll() through a short window.
    assert window.threads.get("ovs-vswitchd", {}).get("tid") == ovs or \
        "ovs-vswitchd ({}, in poll)".format(ovs) in window.quiet

    # A userspace datapath: no upcall statistics, and the note says why.
    code, docs, err = run_json(["--sample-time", "0.3"])
    assert code == 0, err
    assert docs[0]["target"]["pid"] == ovs
    assert docs[0]["upcalls"] is None
    assert [note for note in docs[0]["notes"]
            if note.startswith("Upcall statistics skipped: ")]
    assert "# Upcall statistics skipped: " in err

    code, docs, err = run_json(["--process", "ovsdb-server",
                                "--sample-time", "0.3"])
    assert code == 0, err
    target = docs[0]["target"]
    assert target["name"] == "ovsdb-server"
    assert target["version"] == ovs_version("ovsdb-server")
    names = [thread["name"] for thread in docs[0]["threads"]] + \
        [thread["name"] for thread in docs[0]["quiet_threads"]]
    assert "ovsdb-server" in names
