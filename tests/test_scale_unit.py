# SPDX-License-Identifier: Apache-2.0
"""Unit tests of what makes a report on thousands of threads readable:
the overview, --threads, the grouped verdict, the blocks shown by default
and the table sizes, from synthetic data (no root, no bcc)."""

import argparse
import json
import re

import pytest

from fakes import FakeProbes, run_sampler, stats

MS = 1000 * 1000
START, END = 10 * 1000 * MS, 11 * 1000 * MS     # a 1 s window
NAMES = {7: "poll", 39: "getpid", 230: "clock_nanosleep"}
CROWD = 2000
PID = 4000


def budgets_of(kd, threads):
    return {tid: kd.thread_budget(thread, START, END, NAMES)
            for tid, thread in threads.items()}


def crowd(kd, count=CROWD, holder_tgid=PID):
    """count threads that waited 50-86 % of the window for a CPU, which
    threads of holder_tgid held 97 % of that time, idle 3 %."""
    threads = {}
    for index in range(count):
        tid = PID + 1 + index
        ready = (500 + 360 * index // max(1, count - 1)) * MS
        held = ready * 97 // 100
        thread = stats(kd, tid, "kd-c{:05}".format(index),
                       run=kd.Acc(10, 1000 * MS - ready, 1, 1),
                       ready=kd.Acc(10, ready, 1, 1))
        thread.holders = {
            tid + 1: kd.Holder(pid=tid + 1, tgid=holder_tgid,
                               comm="kd-c", ns=held),
            0: kd.Holder(pid=0, tgid=0, comm="swapper/0", ns=ready - held)}
        threads[tid] = thread
    return threads


# ---- The overview ----------------------------------------------------------

def test_overview_marks_only_what_the_verdict_would_find(kd):
    """The * follows the verdict's rules: a share over its threshold, an
    amount over its floor, in a window long enough to judge."""
    threads = {2: stats(kd, 2, "handler1", run=kd.Acc(1, 800 * MS, 1, 1),
                        ready=kd.Acc(1, 200 * MS, 1, 1))}
    budgets = budgets_of(kd, threads).values()
    marked = kd.format_overview(budgets, kd.Thresholds(), END - START)[3]
    assert "20.0*" in marked
    floor = kd.format_overview(budgets, kd.Thresholds(
        ready_floor=300 * MS), END - START)[3]
    assert "20.0 " in floor and "*" not in floor
    short = kd.format_overview(budgets, kd.Thresholds(
        min_window=2 * (END - START)), END - START)[3]
    assert "*" not in short


def test_overview_lists_every_thread_most_delayed_first(kd):
    threads = {
        1: stats(kd, 1, "main", run=kd.Acc(1, 100 * MS, 1, 1),
                 blocked={7: 900 * MS}),
        2: stats(kd, 2, "handler1", run=kd.Acc(1, 800 * MS, 1, 1),
                 ready=kd.Acc(1, 200 * MS, 1, 1)),
        3: stats(kd, 3, "revalidator-with-a-long-name",
                 run=kd.Acc(1, 900 * MS, 1, 1),
                 softirqs={3: kd.Acc(1, 60 * MS, 1, 1)},
                 ready=kd.Acc(1, 40 * MS, 1, 1))}
    budgets = budgets_of(kd, threads)
    lines = kd.format_overview(budgets.values(), kd.Thresholds(),
                               END - START)
    assert all(len(line) <= 79 for line in lines)
    assert "3 threads" in lines[0] and "1.00 s window" in lines[1]
    assert lines[2].split() == ["TID", "THREAD", "ON", "CPU", "READY", "IRQ",
                                "STOPPED", "ASLEEP", "TOP", "CALL"]
    rows = [line.split() for line in lines[3:]]
    # Kernel-caused delay: 200 ms, 100 ms (60 + 40), 0.
    assert [row[0] for row in rows] == ["2", "3", "1"]
    assert rows[0] == ["2", "handler1", "80.0", "20.0*", "0.0", "0.0",
                       "0.0"]
    # Interrupts over 5 %, waiting under it; names cut at 16 columns.
    assert rows[1] == ["3", "revalidator-with", "90.0", "4.0", "6.0*",
                       "0.0", "0.0"]
    assert rows[2][-2:] == ["90.0", "poll"]


def test_overview_shares_are_the_json_budget(kd):
    """The text and JSON of one window give the same shares."""
    threads = crowd(kd, 20)
    text, _ = run_sampler(kd, [], FakeProbes(kd, rows_of(threads), {
        tid: stats.name for tid, stats in threads.items()}), step=10 ** 9)
    docs, _ = run_sampler(kd, ["--format", "json"], FakeProbes(
        kd, rows_of(threads), {tid: stats.name for tid, stats in
                               threads.items()}), step=10 ** 9)
    doc = [json.loads(line) for line in docs.splitlines()][0]
    rows = overview_rows(text)
    assert len(rows) == 20
    for thread in doc["threads"]:
        row = rows[thread["tid"]]
        budget = thread["budget"]
        shares = {part: budget[part]["percent"] for part in
                  ("on_cpu", "ready", "stopped", "blocked")}
        shares["irq"] = budget["hardirq"]["percent"] + \
            budget["softirq"]["percent"]
        assert [float(cell.rstrip("*")) for cell in row[1:6]] == [
            round(shares[part], 1) for part in
            ("on_cpu", "ready", "irq", "stopped", "blocked")]
        assert row[2].endswith("*") == (shares["ready"] >= 5)


def rows_of(threads):
    """FakeProbes rows (ThreadStats by tid): run and ready."""
    return {"run_stats": [((tid,), s.run) for tid, s in threads.items()],
            "ready_stats": [((tid,), s.ready) for tid, s in threads.items()]}


def overview_rows(text):
    """{tid: [name, shares...]} of the overview of a text report."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines)
                 if line.startswith("# OVERVIEW"))
    rows = {}
    for line in lines[first + 3:]:
        if not line.strip():
            break
        cells = line.split()
        rows[int(cells[0])] = cells[1:]
    return rows


# ---- --threads -------------------------------------------------------------

def test_threads_option_takes_tids_and_globs(kd):
    chosen = kd.parse_args(["--threads", "handler*, 42,ovs-vswitchd"]).threads
    assert chosen.tids == {42}
    assert chosen.globs == ("handler*", "ovs-vswitchd")
    assert chosen.matches(42, "x") and chosen.matches(7, "handler12")
    assert chosen.matches(1, "ovs-vswitchd")
    assert not chosen.matches(7, "revalidator3")
    assert not chosen.matches(7, "Handler1")    # case counts
    for bad in ("", ",", "a,,b"):
        with pytest.raises(argparse.ArgumentTypeError):
            kd.thread_selection(bad)


def test_threads_option_limits_text_and_json(kd):
    threads = crowd(kd, 30)
    names = {tid: s.name for tid, s in threads.items()}
    argv = ["--threads", "kd-c0000*,{}".format(PID + 21)]
    text, _ = run_sampler(kd, argv, FakeProbes(kd, rows_of(threads), names),
                          step=10 ** 9)
    docs, _ = run_sampler(kd, argv + ["--format", "json"], FakeProbes(
        kd, rows_of(threads), names), step=10 ** 9)
    doc = json.loads(docs.splitlines()[0])
    expected = {PID + 1 + index for index in range(10)} | {PID + 21}
    assert {t["tid"] for t in doc["threads"]} == expected
    assert doc["quiet_threads"] == []
    assert {f["tid"] for f in doc["verdict"]["findings"]} == expected
    assert doc["options"]["threads"] == argv[1]
    assert set(overview_rows(text)) == expected
    # Every chosen thread has its block, with --threads.
    blocks = set(map(int, re.findall(r"^ +(\d+) \S+ +\[SYSCALL STATISTICS\]",
                                     text, re.M)))
    assert blocks == expected
    assert "are left out" not in text


def test_threads_option_that_matches_nothing_says_so(kd):
    text, _ = run_sampler(kd, ["--threads", "nosuch*"])
    assert "# No thread matches --threads 'nosuch*'" in text
    assert "[SYSCALL STATISTICS]" not in text


# ---- What a report on 2,000 threads shows -----------------------------------

def test_two_thousand_threads_text_shows_blocks_of_the_most_affected(kd):
    """Default text report: the overview lists all threads, blocks follow
    for the BLOCKS_SHOWN most affected, a line says how many are left out
    and which option shows them; the verdict stays under 40 lines; the
    JSON has every thread and every finding."""
    threads = crowd(kd)
    names = {tid: s.name for tid, s in threads.items()}
    text, _ = run_sampler(kd, [], FakeProbes(kd, rows_of(threads), names),
                          step=10 ** 9)
    rows = overview_rows(text)
    assert len(rows) == CROWD
    blocks = [int(tid) for tid in re.findall(
        r"^ +(\d+) \S+ +\[SYSCALL STATISTICS\]", text, re.M)]
    assert len(blocks) == kd.BLOCKS_SHOWN
    # The most affected: the last crowd threads waited longest.
    assert set(blocks) == set(range(PID + CROWD + 1 - kd.BLOCKS_SHOWN,
                                    PID + CROWD + 1))
    assert "# The blocks of {:,} more threads are left out".format(
        CROWD - kd.BLOCKS_SHOWN) in text
    assert "--threads '*' shows every thread's block" in text
    # The verdict: from its title to the blank line that ends it.
    verdict = text[text.index("# VERDICT"):].split("\n\n")[0].splitlines()
    assert len(verdict) < 40, "\n".join(verdict)
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines)
                 if line.startswith("# OVERVIEW"))
    assert all(len(line) <= 79 for line in
               lines[first:first + 3 + CROWD] + verdict)
    docs, _ = run_sampler(kd, ["--format", "json"], FakeProbes(
        kd, rows_of(threads), names), step=10 ** 9)
    doc = json.loads(docs.splitlines()[0])
    assert len(doc["threads"]) == CROWD
    assert len(doc["verdict"]["findings"]) == CROWD
    # --threads '*': every block.
    text, _ = run_sampler(kd, ["--threads", "*"], FakeProbes(
        kd, rows_of(threads), names), step=10 ** 9)
    assert text.count("[SYSCALL STATISTICS]") == CROWD


# ---- The grouped verdict ---------------------------------------------------

def test_verdict_groups_two_thousand_threads_in_one_paragraph(kd):
    threads = crowd(kd)
    verdict = kd.make_verdict(budgets_of(kd, threads), threads,
                              kd.Thresholds())
    assert len(verdict.findings) == CROWD      # every finding is kept
    lines = kd.format_verdict(verdict, pid=PID, process="manythreads")
    assert len(lines) < 40
    assert all(len(line) <= 79 for line in lines)
    text = " ".join(line[2:].strip() for line in lines[2:])
    assert "- 2,000 threads of manythreads waited 50.0-86.0 % of the " \
        "window for a CPU (threshold 5 %): CPU contention; their CPUs ran " \
        "other threads of the same process 97 %, idle 3 % of that time; " \
        "the most affected: kd-c01999 ({}) 860.0 ms (86.0 %),".format(
            PID + CROWD) in text
    named = re.findall(r"kd-c\d{5} \(\d+\) [\d.,]+ ms", text)
    assert len(named) == kd.NAMED_IN_GROUP
    assert ", and 1,990 more. Next: what else runs" in text


def test_verdict_groups_by_cause(kd):
    """Threads held off by their own process and threads held off by
    another process are two findings, each said once."""
    threads = crowd(kd, 5)
    others = crowd(kd, 5, holder_tgid=777)
    for tid in list(others):
        thread = others.pop(tid)
        thread.tid = tid + 100
        thread.name = "other{}".format(tid)
        for holder in thread.holders.values():
            holder.comm = "stress" if holder.pid else holder.comm
        others[tid + 100] = thread
    threads.update(others)
    verdict = kd.make_verdict(budgets_of(kd, threads), threads,
                              kd.Thresholds())
    groups = kd.group_findings(verdict.findings, PID)
    assert sorted(len(group) for group in groups) == [5, 5]
    text = " ".join(kd.format_verdict(verdict, pid=PID, process="p"))
    assert "5 threads of p waited" in text
    assert "their CPUs ran other processes 97 % (stress 97 %), idle 3 %" \
        in text.replace("\n#   ", " ")
    assert text.count("CPU contention") == 2


def test_verdict_below_group_size_keeps_one_paragraph_per_thread(kd):
    threads = crowd(kd, kd.GROUP_AT - 1)
    verdict = kd.make_verdict(budgets_of(kd, threads), threads,
                              kd.Thresholds())
    text = "\n".join(kd.format_verdict(verdict, pid=PID, process="p"))
    assert text.count("# - kd-c") == kd.GROUP_AT - 1
    assert "meanwhile its CPU ran" in text


# ---- Tables sized from the target ------------------------------------------

@pytest.mark.parametrize("count, room", [
    (0, 4096), (10, 4096), (2000, 4096), (2049, 8192), (8000, 16384),
    (20000, 32768)])
def test_tables_sized_from_the_target(kd, count, room):
    assert kd.table_threads(count) == room


def test_table_warning_before_the_run(kd):
    assert kd.table_warning(2000, 4096) is None
    text = kd.table_warning(2000, 500)
    assert "the target has 2,000 threads and the tables have room for 500: " \
        "1,500 of them will not fit" in text
    assert text.endswith("avoid it with --max-threads 4096.")
    assert "threads it starts during the run may not fit" in \
        kd.table_warning(3000, 4096)
    assert kd.table_warning(20000, 32768).endswith(
        "the tables hold 32,768 threads at most.")
