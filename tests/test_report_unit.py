# SPDX-License-Identifier: Apache-2.0
"""The text report's layout (issue 19) and its one table helper (issue 13),
without root: the answer first, 80 columns, empty sections, units."""

import datetime
import io
import os
import re

import report
from fakes import (POLL_NRS, QUIET, SYSCALL_NAMES, UTC, Clock, FakeProbes,
                   header, own_lines, record, report_rows, run_sampler, wall)


def wide(lines):
    return [line for line in own_lines(lines) if len(line) > 80]


# ---- The table helper -------------------------------------------------------

def test_table_cells_titles_and_rule(kd):
    columns = (kd.Column("NAME", 6, "<"), kd.Column("ID", 4, "d", 1),
               kd.Column("COUNT", 8), kd.Column("NOTE", 3, "<", cut=False))
    assert kd.table(columns, [["averylongname", 4321, 1234567, "whole"],
                              ["x", 7, 5]], "  ", rule=True) == [
        "  NAME     ID     COUNT  NOTE",
        "  ------ ----  --------  ---",
        "  averyl 4321  1,234,567  whole",
        "  x         7         5"]
    assert kd.table(columns, [], "  ") == ["  none in this window"]
    assert kd.table(columns, [], "  ", empty=None) == [
        "  NAME     ID     COUNT  NOTE"]


def test_counts_have_thousands_separators(kd):
    stats = kd.ThreadStats(
        tid=7, name="t", syscalls={0: kd.Acc(136_299, 99_397_508, 1, 49_896),
                                   7: kd.Acc(4_068, 1_202_883, 1, 2_907)},
        run=kd.Acc(12_345, 5_000_000, 1, 2), ready=kd.Acc(2_001, 9, 1, 2),
        stopped=kd.Acc(1_000, 10, 1, 10),
        hardirqs={"eth0": kd.Acc(54_321, 7, 1, 1)},
        softirqs={3: kd.Acc(65_432, 7, 1, 1)})
    text = "\n".join(kd.format_thread(stats, {0: "read", 7: "poll"},
                                      POLL_NRS))
    for row in ("read                      0     136,299        99,397,508",
                "poll                      7       4,068         1,202,883",
                "TOTAL( - poll):                 136,299        99,397,508",
                "    12,345         5,000,000", "     2,001                 9",
                "     1,000                10",
                "eth0                      54,321",
                "net_rx                     3      65,432"):
        assert row in text, text
    hist = kd.format_log2_hist("READY HISTOGRAM", {3: 1_234})
    assert hist[-1].split("|")[0].split()[-1] == "1,234"


def test_one_table_helper_serves_every_section(kd):
    """No hand-written row formats left in the per-thread sections."""
    source = open(kd.__file__).read()
    body = source[source.index("def format_thread("):]
    body = body[:body.index("\ndef ")]
    # (Only the thread's title line, "{:10} {:16}", has widths.)
    assert re.findall(r"\{:[^}]*\d[^}]*\}", body) == ["{:10}", "{:16}"]


# ---- Empty sections ---------------------------------------------------------

def test_empty_sections_say_so_in_one_line(kd):
    spinner = kd.ThreadStats(tid=5, name="kd-spin1")
    lines = kd.format_thread(spinner, {}, POLL_NRS)
    assert lines[:2] == [
        "         5 kd-spin1         [SYSCALL STATISTICS]",
        " " * 28 + "none in this window"]
    assert lines.count(" " * 28 + "none in this window") == 3
    assert not any("SCHED_CNT" in line or "NUMBER" in line for line in lines)
    assert kd.format_syscall_events(kd.EventLog(), {}) == [
        "", "", "# SYSCALL EVENTS: none in this window"]
    window = report.parse("# Sample dump @x\n" + "\n".join(lines))[0]
    assert window.threads["kd-spin1"]["SYSCALL"] == {}
    assert window.threads["kd-spin1"]["THREAD RUN"] is None


# ---- Units ------------------------------------------------------------------

def test_ranking_has_no_doubled_ellipsis(kd):
    ranking = [kd.Ranked(tid=tid, name="t{}".format(tid), kernel=10 ** 6,
                         percent=10.0 - tid / 10) for tid in range(8)]
    verdict = kd.Verdict(window=10 ** 9, ranking=ranking, findings=[],
                         thresholds=kd.Thresholds())
    text = " ".join(line[2:] for line in kd.format_verdict(verdict)[2:])
    assert "...." not in text and "..." not in text
    assert "t4 (4) 9.6 %, and 3 more." in text.replace("#   ", "")


def test_one_adaptive_unit_outside_the_ns_tables(kd):
    assert [kd.duration(ns) for ns in (400, 5_000, 2_500_000, 3 * 10 ** 9)] \
        == ["0.4 µs", "5.0 µs", "2.5 ms", "3.00 s"]
    catch = kd.analyse_long_poll(long_poll_record(), "kd-lpoll", {230: "x"})
    text = "\n".join(kd.format_long_poll(catch, 150))
    assert "(150.0 ms or more)" in text
    assert not re.search(r"\d ms or more", text.replace(".0 ms", ""))


def long_poll_record():
    return record()


# ---- 80 columns -------------------------------------------------------------

def test_wrap_keeps_numbers_units_and_timestamps_whole(kd):
    now = datetime.datetime(2026, 11, 27, 11, 57, 25, 129152, tzinfo=UTC)
    lines = kd.stamped("# Triggered sample dump, stop-start delta "
                       "1,187,986,454 ns", now)
    assert lines == ["# Triggered sample dump, stop-start delta "
                     "1,187,986,454 ns",
                     "#   @2026-11-27T11:57:25.129152 (11:57:25 UTC)"]
    assert kd.stamped("# Start sampling", now) == [
        "# Start sampling @2026-11-27T11:57:25.129152 (11:57:25 UTC)"]
    lines = kd.wrap("x" * 70 + " waited 12.5 ms for a CPU")
    assert lines == ["# " + "x" * 70 + " waited", "#   12.5 ms for a CPU"]


def test_header_fits_80_columns(kd):
    head = header(kd, command=("/usr/local/share/ovs/scripts/" + "d" * 40 +
                               "/kernel_delay.py", "--start-trigger",
                               "u:/usr/lib64/libofproto-3.1.so:start_dump",
                               "--stop-trigger", "a b c"),
                  load=(1443.34, 1870.33, 1775.21),
                  exe="/var/lib/containers/storage/overlay/" + "e" * 60 +
                  "/usr/sbin/ovs-vswitchd")
    lines = kd.format_header(head)
    assert all(len(line) <= 79 for line in lines), lines
    assert all(line.startswith("#") for line in lines)
    text = report.unwrap("\n".join(lines))
    assert "'a b c'" in text and "load average 1443.34 1870.33 1775.21" \
        in text


def test_command_line_as_typed_after_the_reexec(kd, monkeypatch, tmp_path):
    script = str(tmp_path / "kernel_delay.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERNEL_DELAY_REEXEC", "./kernel_delay.py")
    assert kd.typed_command([script, "-p", "1"]) == \
        ["./kernel_delay.py", "-p", "1"]
    # Not this script's re-exec (an inherited variable): argv as it is.
    assert kd.typed_command(["/other/kernel_delay.py", "-p", "1"]) == \
        ["/other/kernel_delay.py", "-p", "1"]
    monkeypatch.setenv("KERNEL_DELAY_REEXEC", "1")
    assert kd.typed_command([script]) == [script]
    monkeypatch.delenv("KERNEL_DELAY_REEXEC")
    assert kd.typed_command([script]) == [script]


def test_catch_fits_80_columns(kd):
    catch = kd.analyse_long_poll(long_poll_record(), "kd-lpoll",
                                 {230: "clock_nanosleep"}, number=12_345)
    catch.start_time = wall()
    catch.end_time = wall() + datetime.timedelta(milliseconds=822)
    catch.not_shown = 1_234
    lines = kd.format_long_poll(catch, 150)
    assert max(len(line) for line in lines) <= 79, "\n".join(lines)
    text = "\n".join(lines)
    assert "# 1,234 more intervals over the rate limit" in text
    assert "# Long poll interval 12,345 (150.0 ms or more)" in text


def test_sampler_lines_fit_80_columns(kd):
    # (Windows of 10 s and more: the canned threads stop for 2 s.)
    out, _ = run_sampler(kd, ["--sample-count", "2"], head=header(
        kd, command=("kernel_delay.py",) + ("--syscall-events",) * 20),
        step=10 ** 10)
    assert not wide(out.splitlines()), "\n".join(wide(out.splitlines()))
    lines = run_events(kd, ["-s", "--sample-count", "2"])
    assert "# SYSCALL EVENTS:" in lines
    assert not wide(lines), "\n".join(wide(lines))


# ---- The answer first -------------------------------------------------------

def test_window_order_answer_first(kd):
    out, _ = run_sampler(kd, ["--sample-count", "2", "--ready-floor", "0"],
                         step=10 ** 8)
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines)
             if line.startswith("# WINDOW ")]
    assert [re.sub(r"[\d.]+ ms$", "N ms", lines[i]) for i in heads] == [
        "# WINDOW 1 of 2: N ms", "# WINDOW 2 of 2: N ms"]
    for first in heads:
        part = lines[first:]
        order = [next(i for i, line in enumerate(part) if line.startswith(
            start)) for start in ("# WINDOW", "# Sample dump @", "# OVERVIEW",
                                  "# VERDICT", "TID        THREAD      "
                                  "     <RESOURCE",
                                  "# ---- end of window")]
        assert order == sorted(order), part
        assert part[order[-1]] == "# ---- end of window {} of 2 ".format(
            heads.index(first) + 1).ljust(79, "-")
    assert lines[-1] == "# End of run: 2 windows reported; 1 warning " \
        "above (completed)"
    # The parser still finds both windows and their threads.
    windows = report.parse(out)
    assert len(windows) == 2
    assert all(set(w.threads) == {"handler12", "revalidator7"} and
               w.verdict and w.overview for w in windows)


def test_stacks_come_after_the_verdict(kd):
    lines = [line for line in run_events(kd, ["-s", "--sample-count", "1"])]
    assert lines.index("# SYSCALL EVENTS:") > lines.index("# VERDICT") > \
        next(i for i, line in enumerate(lines) if line.startswith("# WINDOW"))


def context(kd, args):
    return kd.RunContext(kd.Target(args.pid), SYSCALL_NAMES, POLL_NRS)


def run_events(kd, argv):
    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "0.001"]
                         + argv)
    out = io.StringIO()

    def events(probes):
        return kd.EventLog(events=[kd.SyscallEvent(1, 20000001, 42, 230)],
                           names={42: "kd-sleep"})
    probes = FakeProbes(kd, {"sys_stats": [((42, 230), kd.Acc(
        1, 20000000, 20000000, 20000000))]}, {42: "kd-sleep"}, step={},
        events=events, upcalls=lambda probes: [(0, 0, 3)])
    kd.Sampler(probes, args, out, context(kd, args), clock=Clock()).run()
    return out.getvalue().splitlines()


def test_progress_reaches_stderr_with_output(kd):
    """With --output FILE, run() gives the Sampler standard error as its
    progress stream: the progress lines go there as well as into the
    report; the report itself does not."""
    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "0.001",
                          "--sample-count", "2"])
    out, progress = io.StringIO(), io.StringIO()
    probes = FakeProbes(kd, report_rows(kd), {2001: "handler12"}, QUIET)
    kd.Sampler(probes, args, out, context(kd, args), clock=Clock(),
               header=header(kd), progress=progress, wall=wall).run()
    said = progress.getvalue().splitlines()
    assert [line.split(" @")[0] for line in said] == [
        "# Start sampling", "# Stop sampling", "# Start sampling",
        "# Stop sampling", "# WARNING: 2 events were dropped: the ring "
        "buffer was full; increase", "#          --buffer-page-count.",
        "# End of run: 2 windows reported; 1 warning above (completed)"]
    text = out.getvalue()
    assert all(line in text.splitlines() for line in said)
    assert "# VERDICT" not in progress.getvalue()
    assert "# kernel_delay" not in progress.getvalue()


def test_start_and_stop_lines_carry_the_window_edges(kd):
    """The Start and Stop lines give the times of the window's own edges
    (the wall clock read as it opens and closes), not the time the line is
    printed: on a busy CPU the tool may wait between the two, and a reader
    comparing the report with other clocks (the tests, with schedstat)
    needs the edges."""
    steps = []

    def ticking_wall():
        steps.append("wall")
        return wall() + datetime.timedelta(seconds=steps.count("wall"))

    class Recording(FakeProbes):
        def open_window(self, start_ns):
            steps.append("open")

        def set_state(self, state):
            if state == self.kd.Capture.HOLD:
                steps.append("hold")
            super().set_state(state)

        def counters(self):
            steps.append("counters")
            return super().counters()

    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "0.001"])
    out = io.StringIO()
    probes = Recording(kd, report_rows(kd), {2001: "handler12"}, QUIET)
    kd.Sampler(probes, args, out, context(kd, args), clock=Clock(),
               header=header(kd), wall=ticking_wall).run()

    def stamp(edge):
        match = re.search(r"^# {} sampling @(\S+) ".format(edge),
                          out.getvalue(), re.M)
        return datetime.datetime.fromisoformat(match.group(1))

    opened = steps.index("open")
    held = steps.index("hold")
    # The wall clock was read right before the open, and right after the
    # hold, before anything else (the loss counters) is read.
    assert steps[opened - 1] == "wall"
    assert steps[held + 1] == "wall"
    assert steps.index("counters", held) > held + 1
    base = wall().replace(tzinfo=None)
    assert stamp("Start") == base + datetime.timedelta(
        seconds=steps[:opened].count("wall"))
    assert stamp("Stop") == base + datetime.timedelta(
        seconds=steps[:held + 2].count("wall"))


def test_the_boost_is_kept_through_the_windows(kd):
    """The sampler never drops the tool's boost around a window: at the
    default priority, on a saturated node, the tool would wait for a CPU
    to close the window (a 1 s window over 8,000 busy threads closed 15 to
    18 s late), and between a window's time stamp and the write that
    opens or closes it."""
    steps = []

    class Recording(FakeProbes):
        def open_window(self, start_ns):
            steps.append("open")

        def set_state(self, state):
            if state == self.kd.Capture.HOLD:
                steps.append("hold")
            super().set_state(state)

    class Priority:
        def boost(self):
            steps.append("boost")

        def normal(self):
            steps.append("normal")

    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "0.001",
                          "--sample-count", "2"])
    probes = Recording(kd, report_rows(kd), {2001: "handler12"}, QUIET)
    kd.Sampler(probes, args, io.StringIO(), context(kd, args), clock=Clock(),
               header=header(kd), wall=wall, priority=Priority()).run()
    assert steps == ["open", "hold"] * 2
