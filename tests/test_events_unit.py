# SPDX-License-Identifier: Apache-2.0
"""Unit tests of --syscall-events, the upcall statistics and the loss
warnings: options, generated C, and formatting from synthetic data.

None of them needs root or bcc.
"""

import argparse
import io
import os
import re
import types

import pytest

from fakes import NAMES, POLL_NRS, FakeProbes, event_log


def layout(kd):
    return kd.TaskLayout(1264, 1268, 24, 4, on_cpu_offset=52,
                         regs_nr_offset=120)


def define(source, name):
    match = re.search(r"^#define {} +(\S+)$".format(name), source, re.M)
    return match.group(1) if match else None


# ---- Options ----------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    ([], (None, False, 4096, False)),
    (["-s"], (0, False, 4096, False)),
    (["--syscall-events"], (0, False, 4096, False)),
    (["-s", "50000"], (50000, False, 4096, False)),
    (["-s", "7", "--skip-syscall-poll-events"], (7, True, 4096, False)),
    (["-s", "--stack-trace-size", "0"], (0, False, 0, False)),
    (["-s", "--stack-trace-size", "65536"], (0, False, 65536, False)),
    (["--skip-upcall-stats"], (None, False, 4096, True)),
])
def test_event_options(kd, argv, expected):
    args = kd.parse_args(argv)
    assert (args.syscall_events, args.skip_syscall_poll_events,
            args.stack_trace_size, args.skip_upcall_stats) == expected


@pytest.mark.parametrize("argv, message", [
    (["--skip-syscall-poll-events"],
     "--skip-syscall-poll-events needs --syscall-events"),
    (["--stack-trace-size", "10"],
     "--stack-trace-size needs --syscall-events"),
    (["-s", "--stack-trace-size", "65537"], "must be at most 65536"),
    (["-s", "--stack-trace-size", "-1"], "must not be negative"),
    (["-s", "1e6"], "is not an integer"),
    (["-s", "-5"], "must not be negative"),
])
def test_event_option_errors(kd, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        kd.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_options(kd):
    text = kd.build_parser().format_help()
    for option in ("-s [DURATION_NS], --syscall-events [DURATION_NS]",
                   "--skip-syscall-poll-events", "--stack-trace-size N",
                   "--skip-upcall-stats"):
        assert option in text


@pytest.mark.parametrize("value, expected", [(None, None), (0, 0),
                                             (1000, 1001)])
def test_event_threshold_is_longer_than(kd, value, expected):
    args = argparse.Namespace(syscall_events=value)
    assert kd.event_min_ns(args) == expected


# ---- Generated C ------------------------------------------------------------

def test_source_without_events_has_no_event_or_stack_code(kd):
    source = kd.render_bpf_source(1, layout(kd), POLL_NRS)
    assert define(source, "SYSCALL_EVENTS") == "0"
    assert define(source, "STACK_TRACES") == "0"
    # The map and the stack walks are only inside #if STACK_TRACES.
    before, after = source.split("#if STACK_TRACES\nBPF_STACK_TRACE", 1)
    assert "get_stackid" not in before
    assert "kd_upcall_return" not in source
    assert "upcall_stats" not in source


def test_source_with_events_and_stacks(kd):
    source = kd.render_bpf_source(1, layout(kd), POLL_NRS, event_min_ns=1001,
                                  stack_size=300)
    assert define(source, "SYSCALL_EVENTS") == "1"
    assert define(source, "MIN_EVENT_NS") == "1001ULL"
    assert define(source, "SKIP_POLL_EVENTS") == "0"
    assert define(source, "STACK_TRACES") == "1"
    assert "BPF_STACK_TRACE(stack_traces, 300);" in source
    assert "delta >= MIN_EVENT_NS" in source


def test_source_events_without_stacks(kd):
    source = kd.render_bpf_source(1, layout(kd), POLL_NRS, event_min_ns=0,
                                  skip_poll_events=True, stack_size=0)
    assert define(source, "SYSCALL_EVENTS") == "1"
    assert define(source, "SKIP_POLL_EVENTS") == "1"
    assert define(source, "STACK_TRACES") == "0"


def test_source_with_upcall_probe(kd):
    source = kd.render_bpf_source(1, layout(kd), POLL_NRS, upcall_keys=270)
    assert "BPF_HASH(upcall_stats, struct upcall_key_t, u64, 270);" in source
    assert source.count("int kd_upcall_return(struct pt_regs *ctx)") == 1
    assert "bpf_get_smp_processor_id()" in source
    assert "(int)PT_REGS_RC(ctx)" in source
    assert not re.search(r"@[A-Z_]+@", source)


def test_upcall_table_has_room_for_every_cpu_and_errno(kd):
    assert kd.upcall_keys() >= kd.possible_cpus() * (
        max(kd.errno.errorcode) + 1)


# ---- Event formatting -------------------------------------------------------

def test_format_syscall_events(kd):
    lines = kd.format_syscall_events(event_log(kd), NAMES)
    assert lines == [
        "",
        "",
        "# SYSCALL EVENTS:",
        "           ENTRY (ns)           EXIT (ns)        TID COMM"
        "             DELTA (us)  SYSCALL",
        "  ------------------- ------------------- ---------- "
        "---------------- ----------  ----------------",
        "              1000000            21100000         42 kd-sleep"
        "             20,100  clock_nanosleep",
        "          do_syscall_64+0x22e [kernel]",
        "          entry_SYSCALL_64_after_hwframe+0x76 [kernel]",
        "          __GI___clock_nanosleep+0x65 [libc.so.6]",
        "          sleep_thread+0x1a [workload]",
        "          [unknown] 0x7f0012345678",
        "              2000000             2000999         43 "
        "a-very-long-thre          0  futex",
        "          [kernel stack lost: EEXIST]",
        "          __GI___clock_nanosleep+0x65 [libc.so.6]",
        "          sleep_thread+0x1a [workload]",
        "          [unknown] 0x7f0012345678",
        "              5000000             9000000         42 kd-sleep"
        "              4,000  <unknown:999>",
        "          do_syscall_64+0x22e [kernel]",
        "          entry_SYSCALL_64_after_hwframe+0x76 [kernel]",
        "          [user stack lost: EFAULT]",
    ]


def test_format_syscall_events_without_stacks(kd):
    lines = kd.format_syscall_events(event_log(kd, stacks=False), NAMES)
    assert len(lines) == 5 + 3
    assert [line.split()[-1] for line in lines[5:]] == [
        "clock_nanosleep", "futex", "<unknown:999>"]


def test_format_syscall_events_says_how_many_were_not_kept(kd):
    lines = kd.format_syscall_events(
        event_log(kd, stacks=False, more=12345), NAMES)
    text = " ".join(line[2:] for line in lines[8:])
    assert all(line.startswith("# ") and len(line) <= 79
               for line in lines[8:])
    assert text == ("12,345 more events not shown: only the first 10,000 of "
                    "a window are kept; raise the DURATION_NS of "
                    "--syscall-events to see fewer, longer calls.")
    one = kd.format_syscall_events(event_log(kd, stacks=False, more=1),
                                   NAMES)
    assert one[8].startswith("# 1 more event not shown:")


def test_format_syscall_events_empty(kd):
    lines = kd.format_syscall_events(kd.EventLog(), NAMES)
    assert lines[2:] == ["# SYSCALL EVENTS: none in this window"]


@pytest.mark.parametrize("addr, symbol, expected", [
    (0x1234, "sleep_thread+0x1a [workload]", "sleep_thread+0x1a [workload]"),
    (0x7f00aa, "[unknown]", "[unknown] 0x7f00aa"),
    (0x7f00aa, "[unknown] [libc.so.6]", "[unknown] 0x7f00aa [libc.so.6]"),
    (0xffffffffc0a1b2c3, "ovs_dp_upcall+0x3 [openvswitch]",
     "ovs_dp_upcall+0x3 [openvswitch]"),
])
def test_stack_frame(kd, addr, symbol, expected):
    assert kd.stack_frame(addr, symbol) == expected


def test_trim_kernel_stack(kd):
    frames = ["bpf_prog_46c6c4a3d83ab8f6_raw_tracepoint__sys_exit+0x3af [bpf]",
              "bpf_trace_run2+0xf2 [kernel]",
              "__bpf_trace_sys_exit+0xc [kernel]",
              "syscall_exit_work+0xbc [kernel]",
              "do_syscall_64+0x22e [kernel]",
              "__bpf_trace_sys_exit+0xc [kernel]"]
    assert kd.trim_kernel_stack(frames) == frames[3:]
    assert kd.trim_kernel_stack(frames[3:]) == frames[3:]
    assert kd.trim_kernel_stack(frames[:3]) == []
    assert kd.trim_kernel_stack([]) == []


# ---- Upcall statistics ------------------------------------------------------

UPCALL_ROWS = [(0, 0, 5945), (2, 0, 9000), (3, 0, 0),
               (0, -11, 2992), (2, -11, 8), (2, -105, 1), (1, -11, 0)]


def test_collect_upcalls(kd):
    stats = kd.collect_upcalls(UPCALL_ROWS)
    assert (stats.total, stats.successful, stats.failed) == \
        (17946, 14945, 3001)
    assert stats.total_per_cpu == {0: 8937, 2: 9009}
    assert stats.successful_per_cpu == {0: 5945, 2: 9000}
    assert stats.failed_per_cpu == {0: 2992, 2: 9}
    assert stats.errors == {11: 3000, 105: 1}
    assert stats.errors_per_cpu == {11: {0: 2992, 2: 8}, 105: {2: 1}}


def test_collect_upcalls_none(kd):
    assert kd.collect_upcalls([]) == kd.UpcallStats()


def test_format_upcalls(kd):
    lines = kd.format_upcalls(kd.collect_upcalls(UPCALL_ROWS))
    assert lines == [
        "",
        "# UPCALL STATISTICS (ovs_dp_upcall() calls):",
        "  RESULT                            COUNT  PER CPU (CPU: COUNT)",
        "  ------------------------ --------------  "
        "------------------------------------",
        "  total                            17,946  0: 8,937, 2: 9,009",
        "  successful                       14,945  0: 5,945, 2: 9,000",
        "  failed                            3,001  0: 2,992, 2: 9",
        "    EAGAIN (11)                     3,000  0: 2,992, 2: 8",
        "    ENOBUFS (105)                       1  2: 1",
    ]


def test_format_upcalls_zero(kd):
    lines = kd.format_upcalls(kd.UpcallStats())
    assert [line.split() for line in lines[4:]] == [
        ["total", "0"], ["successful", "0"], ["failed", "0"]]


def test_format_upcalls_wraps_many_cpus(kd):
    rows = [(cpu, 0, 1000 + cpu) for cpu in range(64)]
    lines = kd.format_upcalls(kd.collect_upcalls(rows))
    total = [line for line in lines[4:] if not line.startswith(" " * 43)]
    assert [line.split()[0] for line in total] == ["total", "successful",
                                                   "failed"]
    assert all(len(line) <= 79 for line in lines)
    continued = [line for line in lines if line.startswith(" " * 43)]
    assert continued and all(line[43] != " " for line in continued)
    # Every CPU once in the total row and once in the successful one.
    cpus = re.findall(r"(\d+): [\d,]+", " ".join(lines[4:]))
    assert sorted(map(int, cpus)) == sorted(list(range(64)) * 2)


@pytest.mark.parametrize("facts, fragment", [
    ((False, True, True), "the kernel has no kprobe support (CONFIG_KPROBES, "
                          "CONFIG_KPROBE_EVENTS), which the return probe on "
                          "ovs_dp_upcall() needs"),
    ((False, False, False), "no kprobe support"),
    ((True, False, False),
     "the openvswitch kernel module is not loaded (a userspace datapath"),
    ((True, True, False), "ovs_dp_upcall() is not in /proc/kallsyms"),
])
def test_upcall_skip_reason(kd, facts, fragment):
    assert fragment in kd.upcall_skip_reason(*facts)


def test_upcall_skip_reason_none_when_all_is_there(kd):
    assert kd.upcall_skip_reason(True, True, True) is None


# ---- Loss warnings ----------------------------------------------------------

def unwrap(lines, head="# WARNING: "):
    assert lines[0].startswith(head)
    assert all(line.startswith("#" + " " * (len(head) - 1))
               for line in lines[1:])
    assert all(len(line) <= 79 for line in lines)
    return " ".join(line[len(head):] for line in lines)


def test_warning_lost_stacks_names_the_option(kd):
    assert unwrap(kd.format_warnings({kd.Counter.STACK_LOST: 3}, 1)) == (
        "3 stack traces were lost (the stack map was full, or two stacks "
        "hashed to the same slot); increase --stack-trace-size.")
    assert unwrap(kd.format_warnings({kd.Counter.STACK_LOST: 1}, 1)) \
        .startswith("1 stack trace was lost (")


def test_warning_upcall_table_full(kd):
    assert unwrap(kd.format_warnings({kd.Counter.UPCALL_FULL: 2}, 1)) \
        .startswith("2 upcalls were not counted: the upcall table was full")


def test_window_warnings_say_so(kd):
    head = "# WARNING (this window): "
    lines = kd.format_warnings({kd.Counter.RINGBUF_FULL: 5,
                                kd.Counter.STACK_LOST: 2}, 3, window=True)
    first = [i for i, line in enumerate(lines) if line.startswith(head)]
    assert first == [0, next(i for i in range(1, len(lines))
                             if lines[i].startswith(head))]
    assert unwrap(lines[:first[1]], head) == (
        "5 events were dropped: the ring buffer was full; increase "
        "--buffer-page-count.")
    assert "increase --stack-trace-size" in unwrap(lines[first[1]:], head)


# ---- The sampling loop, with fake probes ------------------------------------

def one_sleep(kd):
    """Map rows: thread 42 made one 20 ms clock_nanosleep()."""
    return {"sys_stats": [((42, 230), kd.Acc(1, 20000000, 20000000,
                                             20000000))]}


def fake_probes(kd, upcalls=True, step=None):
    """one_sleep() and its event each window; upcalls: one success on
    CPU 0, and as many EAGAIN failures on CPU 1 as windows so far."""
    def events(probes):
        return kd.EventLog(events=[kd.SyscallEvent(1, 20000001, 42, 230)],
                           names={42: "kd-sleep"})

    def upcall_rows(probes):
        return [(0, 0, 3), (1, -11, probes.windows)]
    return FakeProbes(kd, one_sleep(kd), {42: "kd-sleep"}, step=step or {},
                      events=events, upcalls=upcall_rows if upcalls else None)


def report_lines(kd, argv, probes):
    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time",
                          "0.001"] + argv)
    out = io.StringIO()
    sampler = kd.Sampler(probes, args, out, kd.RunContext(
        kd.Target(args.pid), NAMES, POLL_NRS))
    sampler.notes.append("# Upcall statistics skipped: a reason.")
    sampler.run()
    return out.getvalue().splitlines()


def test_sampler_prints_events_upcalls_and_window_warnings(kd):
    probes = fake_probes(kd, step={kd.Counter.RINGBUF_FULL: 4})
    lines = report_lines(kd, ["-s", "--sample-count", "2"], probes)
    assert lines[0] == "# Upcall statistics skipped: a reason."
    assert sum(line.startswith("# Upcall statistics skipped")
               for line in lines) == 1
    assert lines.count("# SYSCALL EVENTS:") == 2
    assert lines.count("# UPCALL STATISTICS (ovs_dp_upcall() calls):") == 2
    # Each window says what it lost, and the end sums it up.
    window = [line for line in lines
              if line.startswith("# WARNING (this window): ")]
    assert window == ["# WARNING (this window): 4 events were dropped: the "
                      "ring buffer was full;"] * 2
    end = [line for line in lines if line.startswith("# WARNING: ")]
    assert end == ["# WARNING: 8 events were dropped: the ring buffer was "
                   "full; increase"]
    assert lines[-2:] == ["#          --buffer-page-count.",
                          "# End of run: 2 windows reported; 1 warning "
                          "above (completed)"]
    failed = [line.split() for line in lines if "EAGAIN" in line]
    assert failed == [["EAGAIN", "(11)", "1", "1:", "1"],
                      ["EAGAIN", "(11)", "2", "1:", "2"]]


def test_sampler_one_window_no_window_warnings(kd):
    probes = fake_probes(kd, upcalls=False,
                         step={kd.Counter.STACK_LOST: 2})
    lines = report_lines(kd, [], probes)
    assert "# SYSCALL EVENTS:" not in lines
    assert not any("UPCALL STATISTICS" in line for line in lines)
    assert not any("(this window)" in line for line in lines)
    assert any(line.startswith("# WARNING: 2 stack traces were lost")
               for line in lines)


# ---- Frames of a fake bcc ---------------------------------------------------

class FakeStackTable:
    def __init__(self, stacks):
        self.stacks = stacks

    def walk(self, stack_id):
        if stack_id not in self.stacks:
            raise KeyError(stack_id)
        return iter(self.stacks[stack_id])

    def clear(self):
        pass


class FakeQuota:
    """event_quota: per-CPU [sent, counted only] of the kernel side."""

    def __init__(self, per_cpu):
        self.per_cpu = per_cpu

    def Key(self, index):
        return index

    def sum(self, index):
        return types.SimpleNamespace(value=sum(cpu[index]
                                               for cpu in self.per_cpu))

    def zero(self):
        self.per_cpu = [[0, 0] for _ in self.per_cpu]


class FakeEventBpf:
    """Just what Probes.collect_events() uses."""

    def __init__(self, stacks, unsent=(0, 0)):
        self.tables = {"stack_traces": FakeStackTable(stacks),
                       "events": types.SimpleNamespace(
                           event=None, open_ring_buffer=lambda fn: None),
                       "event_quota": FakeQuota([[10, count]
                                                 for count in unsent])}
        self.resolved = []

    def __getitem__(self, name):
        return self.tables[name]

    def ring_buffer_consume(self):
        pass

    def ksym(self, addr, show_module, show_offset):
        self.resolved.append(("k", addr))
        names = {1: b"bpf_trace_run2+0xf2 [kernel]",
                 2: b"do_syscall_64+0x22e [kernel]"}
        return names.get(addr, b"[unknown]")

    def sym(self, addr, pid, show_module, show_offset):
        self.resolved.append(("u", addr, pid))
        return b"kd_op+0x10 [workload]" if addr == 0x401000 else \
            b"[unknown]"


def test_collect_events_symbolizes_each_stack_once(kd):
    bpf = FakeEventBpf({7: [1, 2, 3], 8: [0x401000, 0xdead]})
    probes = kd.Probes(bpf, 99, stacks=True)
    probes.syscall_events = [kd.SyscallEvent(1, 2, 42, 230, 7, 8),
                             kd.SyscallEvent(3, 4, 42, 230, 7, 8),
                             kd.SyscallEvent(5, 6, 42, 230, 9, -17)]
    probes.more_events = 4
    threads = {42: kd.ThreadStats(tid=42, name="kd-op")}
    log = probes.collect_events(threads)
    assert log.more == 4 and log.stacks and len(log.events) == 3
    assert log.names == {42: "kd-op"}
    assert log.kernel_stacks == {7: ["do_syscall_64+0x22e [kernel]",
                                     "[unknown] 0x3"],
                                 9: ["[stack not found]"]}
    assert log.user_stacks == {8: ["kd_op+0x10 [workload]",
                                   "[unknown] 0xdead"]}
    assert sorted(bpf.resolved) == sorted([("k", 1), ("k", 2), ("k", 3),
                                           ("u", 0x401000, 99),
                                           ("u", 0xdead, 99)])
    # Taken: the next window starts empty.
    assert probes.syscall_events == [] and probes.more_events == 0


def test_collect_events_adds_what_the_kernel_only_counted(kd):
    # Past MAX_SHOWN_EVENTS sent from a CPU, events are only counted there.
    bpf = FakeEventBpf({}, unsent=(5, 7))
    probes = kd.Probes(bpf, 99)
    probes.more_events = 4
    assert probes.collect_events({}).more == 4 + 5 + 7


def test_on_event_keeps_a_bounded_number(kd, monkeypatch):
    monkeypatch.setattr(kd, "MAX_SHOWN_EVENTS", 3)
    bpf = FakeEventBpf({})
    probes = kd.Probes(bpf, 99)
    for ts in range(5):
        probes._event = lambda data, ts=ts: types.SimpleNamespace(
            type=kd.Event.SYSCALL, entry_ts=ts, ts=ts + 1, tid=42, nr=230,
            kernel_stack=-1, user_stack=-1)
        probes._on_event(None, None, 0)
    probes._event = lambda data: types.SimpleNamespace(
        type=kd.Event.STOP_TRIGGER, ts=77)
    probes._on_event(None, None, 0)
    assert [e.entry for e in probes.syscall_events] == [0, 1, 2]
    assert probes.more_events == 2
    assert probes.events == [(kd.Event.STOP_TRIGGER, 77)]


class MissingTriggers(FakeProbes):
    """Start triggers missed while a window is being reported: after its
    counters were read, before the next window opens."""

    def __init__(self, kd):
        super().__init__(kd, one_sleep(kd), {42: "kd-sleep"}, step={})

    def reset(self):
        if self.resets:
            self.total[self.kd.Counter.TRIGGER_MISSED] += 3
        super().reset()


def test_losses_between_windows_go_to_the_next_window(kd):
    lines = report_lines(kd, ["--sample-count", "3"], MissingTriggers(kd))
    windows = "\n".join(lines).split("# Sample dump")[1:]
    assert ["3 start triggers were missed" in text for text in windows] == \
        [False, True, True]
    assert lines[-3:-1] == [
        "# WARNING: 6 start triggers were missed: they fired while the "
        "previous window", "#          was being reported."]
