# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests of --syscall-events, the loss warnings and the upcall
statistics: real probes on the running kernel, against tests/workload.c
(built with frame pointers) and a real ovs-vswitchd.
"""

import os
import re

import pytest

import report
import workload_ctl
from conftest import MSEC, Capture, leftovers, run_tool

NAPS = 7            # kd-nap sleeps of a known length (tests/workload.c)
NAP_MS = 25
# A burst large enough that one page of ring buffer (85 events) must
# overflow, however fast the tool reads it: a prime, counted exactly.
BIG_BURST = 9973


def nap(workload):
    assert workload.command("nap {}".format(NAPS)) == "ok nap {}".format(NAPS)


def burst(workload, count=BIG_BURST):
    assert workload.command("burst {}".format(count)) == \
        "ok burst {}".format(count)


def events_of(window, thread, syscall=None):
    return [event for event in window.events
            if event["comm"] == thread and
            (syscall is None or event["syscall"] == syscall)]


def warnings_of(out, head="# WARNING: "):
    """The warnings in out, each unwrapped into one line of text."""
    found, inside = [], False
    for line in out.splitlines():
        if line.startswith(head):
            found.append(line[len(head):])
            inside = True
        elif inside and line.startswith("#" + " " * (len(head) - 1)):
            found[-1] += " " + line[len(head):]
        else:
            inside = False
    return found


def dropped(out, head="# WARNING: "):
    """The counts of the ring buffer warnings in out."""
    return [report.number(match.group(1)) for match in (
        re.match(r"([\d,]+) events? (?:was|were) dropped: the ring buffer "
                 r"was full; increase --buffer-page-count\.$", text)
        for text in warnings_of(out, head)) if match]


def kprobes_here():
    return os.path.exists("/sys/bus/event_source/devices/kprobe") or any(
        os.path.exists(os.path.join(path, "kprobe_events"))
        for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))


@pytest.fixture(scope="module")
def naps(workload_bin):
    """A 1 s window with events over 22 ms and their stacks, while kd-nap
    sleeps 7 times 25 ms."""
    with workload_ctl.Workload(workload_bin) as load:
        yield Capture(load, ["--sample-time", "1", "-s", str(22 * MSEC)],
                      (nap,))


def test_one_event_per_known_sleep(naps):
    window = naps.windows[0]
    assert naps.code == 0, naps.err
    stats = naps.thread("kd-nap")["SYSCALL"]["clock_nanosleep"]
    assert stats["count"] == NAPS
    events = events_of(window, "kd-nap")
    assert len(events) == NAPS
    for event in events:
        assert event["tid"] == naps.tids["kd-nap"]
        assert event["syscall"] == "clock_nanosleep"
        assert event["delta_us"] == (event["exit"] - event["entry"]) // 1000
        assert NAP_MS * 1000 <= event["delta_us"] < (NAP_MS + 10) * 1000
    # One after the other, in the order they ended.
    assert all(a["exit"] <= b["entry"] for a, b in zip(events, events[1:]))
    assert sum(e["exit"] - e["entry"] for e in events) <= stats["total"]


def test_only_calls_over_the_threshold(naps):
    window = naps.windows[0]
    assert all(event["delta_us"] >= 22000 for event in window.events)
    # kd-sleep's 20 ms sleeps stay under 22 ms, but for the few a loaded
    # machine stretches; kd-poll's 30 ms ones never do, and each of them is
    # one event.
    sleeps = naps.thread("kd-sleep")["SYSCALL"]["clock_nanosleep"]["count"]
    assert sleeps >= 20
    assert len(events_of(window, "kd-sleep")) < sleeps / 4
    polls = naps.thread("kd-poll")["SYSCALL"]
    assert len(events_of(window, "kd-poll", "clock_nanosleep")) == \
        polls["clock_nanosleep"]["count"]
    # Polls of kd-pollwait time out after 200 ms: those are events too.
    assert len(events_of(window, "kd-pollwait", "poll")) == \
        naps.thread("kd-pollwait")["SYSCALL"]["poll"]["count"] >= 3


def test_stacks_show_the_workloads_functions(naps):
    for event in events_of(naps.windows[0], "kd-nap"):
        frames = event["frames"]
        kernel = [f for f in frames if f.endswith("[kernel]")]
        user = frames[len(kernel):]
        assert kernel and all(f.endswith("[kernel]") for f in kernel), frames
        assert not any(f.startswith("bpf_prog_") for f in frames)
        assert any("syscall" in f.lower() for f in kernel), frames
        # sleep_ms() calls the C library's wrapper, which makes no frame,
        # so the frame pointer walk goes on with sleep_ms()'s caller.
        assert any(f.startswith("nap_thread+0x") and f.endswith(
            "[workload]") for f in user), frames
        assert any("clock_nanosleep" in f for f in user), frames
        for frame in frames:
            assert re.match(r"(\S+\+0x[0-9a-f]+ \[\S+\]|"
                            r"\[unknown\] 0x[0-9a-f]+( \[\S+\])?)$",
                            frame), frame


def test_no_upcalls_for_another_process(naps):
    # Only ovs-vswitchd gets them, without a word for other processes.
    assert "Upcall statistics" not in naps.out
    assert "UPCALL STATISTICS" not in naps.out
    assert "dropped" not in naps.out and "stack traces" not in naps.out
    assert leftovers() == []


def test_poll_events_can_be_left_out(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        capture = Capture(load, ["--sample-time", "0.5", "-s",
                                 str(22 * MSEC), "--skip-syscall-poll-events",
                                 "--skip-upcall-stats"])
    window = capture.windows[0]
    assert capture.code == 0, capture.err
    assert "poll" in capture.thread("kd-pollwait")["SYSCALL"]
    assert [e for e in window.events if e["syscall"] in ("poll", "ppoll")] \
        == []
    assert events_of(window, "kd-poll", "clock_nanosleep")
    assert "Upcall statistics" not in capture.out


def test_events_without_stacks(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        capture = Capture(load, ["--sample-time", "0.5", "-s",
                                 str(22 * MSEC), "--stack-trace-size", "0"],
                          (nap,))
    window = capture.windows[0]
    assert capture.code == 0, capture.err
    assert len(events_of(window, "kd-nap")) == NAPS
    assert all(event["frames"] == [] for event in window.events)
    assert "stack lost" not in capture.out
    assert "stack traces were lost" not in capture.out


def test_lost_stacks_are_marked_and_counted(workload_bin):
    """A stack map of one entry: the threads' user stacks differ, so all
    but one of them collide.  Each event says which stack it lost, and the
    warning counts exactly those."""
    with workload_ctl.Workload(workload_bin) as load:
        capture = Capture(load, ["--sample-time", "0.5", "-s",
                                 str(22 * MSEC), "--stack-trace-size", "1"],
                          (nap,))
    window = capture.windows[0]
    assert capture.code == 0, capture.err
    marks = [frame for event in window.events for frame in event["frames"]
             if re.match(r"\[(kernel|user) stack lost: [A-Z0-9]+\]$", frame)]
    assert len(events_of(window, "kd-nap")) == NAPS
    assert window.more_events == 0
    texts = [text for text in warnings_of(capture.out)
             if "stack trace" in text]
    assert len(texts) == 1, capture.out
    match = re.match(r"([\d,]+) stack traces? (?:was|were) lost \(the stack "
                     r"map was full, or two stacks hashed to the same slot\); "
                     r"increase --stack-trace-size\.$", texts[0])
    assert match, texts[0]
    assert report.number(match.group(1)) == len(marks) > 0


def test_tiny_ring_buffer_drops_are_counted_and_statistics_stay_right(
        workload_bin):
    """One page of ring buffer, every system call an event, and a burst:
    events are dropped, the warning says how many, and every completed
    call is either shown or counted as dropped."""
    with workload_ctl.Workload(workload_bin) as load:
        capture = Capture(load, ["--sample-time", "1", "-s",
                                 "--buffer-page-count", "1"], (burst,))
    window = capture.windows[0]
    assert capture.code == 0, capture.err
    assert capture.thread("kd-burst")["SYSCALL"]["getsid"]["count"] == \
        BIG_BURST
    counts = dropped(capture.out)
    assert len(counts) == 1 and counts[0] > 0, capture.out
    shown = len(window.events) + window.more_events
    calls = sum(call["count"] for thread in window.threads.values()
                for call in thread["SYSCALL"].values())
    assert shown + counts[0] == calls
    getsid = events_of(window, "kd-burst", "getsid")
    assert 0 < len(getsid) < BIG_BURST
    assert not any("stack traces were lost" in line
                   for line in capture.out.splitlines())


def test_events_past_the_shown_ones_are_counted_exactly(
        workload_bin, kd):
    """Far more events than a window shows, at the default ring buffer
    size: the first MAX_SHOWN_EVENTS are listed, every other completed
    call is counted (in the kernel, without a record), none is dropped."""
    calls = 4 * kd.MAX_SHOWN_EVENTS + 7
    with workload_ctl.Workload(workload_bin) as load:
        capture = Capture(load, ["--sample-time", "1", "-s"],
                          (lambda load: burst(load, calls),))
    window = capture.windows[0]
    assert capture.code == 0, capture.err
    assert capture.thread("kd-burst")["SYSCALL"]["getsid"]["count"] == calls
    assert len(window.events) == kd.MAX_SHOWN_EVENTS
    completed = sum(call["count"] for thread in window.threads.values()
                    for call in thread["SYSCALL"].values())
    assert len(window.events) + window.more_events == completed
    assert dropped(capture.out) == []


def test_several_windows_report_their_own_drops(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        def burst_each_window(proc):
            burst(load)
        code, out, err = run_tool(
            ["-p", str(load.pid), "--sample-time", "0.3", "--sample-count",
             "2", "-s", "--stack-trace-size", "0", "--buffer-page-count",
             "1"], on_start=burst_each_window)
    assert code == 0, err
    per_window = dropped(out, "# WARNING (this window): ")
    assert len(per_window) == 2 and all(per_window), out
    assert dropped(out) == [sum(per_window)]


def test_upcall_statistics_or_one_line_why_not(ovs):
    code, out, err = run_tool(["--sample-time", "0.3"])
    assert code == 0 and err == "", err
    assert "Traceback" not in out + err
    skipped = [line for line in report.unwrap(out).splitlines()
               if line.startswith("# Upcall statistics skipped")]
    if not kprobes_here():
        assert skipped == ["# Upcall statistics skipped: the kernel has no "
                           "kprobe support (CONFIG_KPROBES, "
                           "CONFIG_KPROBE_EVENTS), which the return probe "
                           "on ovs_dp_upcall() needs."]
    elif not os.path.isdir("/sys/module/openvswitch"):
        assert len(skipped) == 1 and "module is not loaded" in skipped[0]
    else:
        assert skipped == []
        upcalls = report.parse(out)[0].upcalls
        total, ok, failed = (upcalls[name][0] for name in
                             ("total", "successful", "failed"))
        assert total == ok + failed
        assert sum(upcalls["total"][1].values()) == total
    if skipped:
        assert "UPCALL STATISTICS" not in out
    code, out, err = run_tool(["--sample-time", "0.3",
                               "--skip-upcall-stats"])
    assert code == 0, err
    assert "Upcall statistics" not in out and "UPCALL" not in out
