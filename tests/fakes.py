# SPDX-License-Identifier: Apache-2.0
"""Made-up kernel data for the unit tests: one fake of the probes, the
map rows it serves, a clock, and a report header.

The fake stands in for kernel_delay.Probes where the Sampler and the
LongPollSampler use it; everything it returns is decoded and rendered by
the script's own code (collect_threads, collect_upcalls, ...).
"""

import datetime
import io
import os
import re

from conftest import Lp, LpSlot, script_module

UTC = datetime.timezone.utc
POLL_NRS = (7, 271)
# System call names for the fake rows (report_rows() and the one-thread
# windows of FakeProbes without rows).
SYSCALL_NAMES = {0: "read", 1: "write", 7: "poll", 271: "ppoll"}
NAMES = {0: "read", 7: "poll", 202: "futex", 230: "clock_nanosleep"}


def report_rows(kd):
    """Map rows as Probes reads them: two threads with every section."""
    acc = kd.Acc
    return {
        "sys_stats": [
            ((2001, 7), acc(10, 5_000_000, 1_000, 900_000)),
            ((2001, 0), acc(3, 12_345, 1_000, 8_000)),
            ((2001, 999), acc(1, 100, 100, 100)),
            ((2001, 1), acc(2, 1_234_567, 234_567, 1_000_000)),
            ((2001, 271), acc(1, 2_000, 2_000, 2_000)),
            ((1002, 7), acc(1, 100, 100, 100)),
        ],
        "poll_stats": [((2001,), acc(4, 10_000_003, 1_000, 6_000_000))],
        "run_stats": [((2001,), acc(20, 3_000_000, 1_500, 400_000))],
        "ready_stats": [((2001,), acc(19, 45_000, 50, 9_999))],
        "stop_stats": [((1002,), acc(1, 2 * 10**9, 2 * 10**9, 2 * 10**9))],
        "hardirq_stats": [
            ((2001, 30, "nvme0q1"), acc(2, 4_000, 1_500, 2_500)),
            ((2001, 9, "acpi"), acc(1, 800, 800, 800)),
            ((2001, 31, "nvme0q1"), acc(1, 3_000, 3_000, 3_000)),
        ],
        "softirq_stats": [
            ((2001, 3), acc(5, 50_000, 2_000, 20_000)),
            ((2001, 42), acc(1, 1_000, 1_000, 1_000)),
            ((2001, 1), acc(2, 50_000, 10_000, 40_000)),
        ],
    }


# The quiet threads of report_rows()'s process: (tid, name, where).
QUIET = [(3003, "urcu3", ""), (2999, "ovs-vswitchd", "running"),
         (3001, "handler13", "in poll"), (3005, "revalidator14", ""),
         (3000, "handler13", "in poll"), (2998, "monitor", "")]


def stats(kd, tid=100, name="t", **kw):
    """A ThreadStats with the given attributes."""
    thread = kd.ThreadStats(tid=tid, name=name)
    for attr, value in kw.items():
        setattr(thread, attr, value)
    return thread


def event_log(kd, **kwargs):
    """Three system call events of two threads, with stacks."""
    log = kd.EventLog(
        events=[kd.SyscallEvent(1000000, 21100000, 42, 230, 3, 5),
                kd.SyscallEvent(2000000, 2000999, 43, 202, -17, 5),
                kd.SyscallEvent(5000000, 9000000, 42, 999, 3, -14)],
        stacks=True,
        kernel_stacks={3: ["do_syscall_64+0x22e [kernel]",
                           "entry_SYSCALL_64_after_hwframe+0x76 [kernel]"]},
        user_stacks={5: ["__GI___clock_nanosleep+0x65 [libc.so.6]",
                         "sleep_thread+0x1a [workload]",
                         "[unknown] 0x7f0012345678"]},
        names={42: "kd-sleep", 43: "a-very-long-thread-name"})
    for key, value in kwargs.items():
        setattr(log, key, value)
    return log


def header(kd, **changes):
    values = dict(command=("kernel_delay.py", "-p", "42"), host="node1",
                  kernel="6.18.0-test", machine="x86_64", cpus=2,
                  load=(0.5, 0.25, 0.0), pid=42, name="ovs-vswitchd",
                  exe="/usr/sbin/ovs-vswitchd",
                  started=datetime.datetime(2026, 11, 27, 10, 0, 1, 250000,
                                            tzinfo=UTC),
                  version="ovs-vswitchd (Open vSwitch) 3.1.0")
    values.update(changes)
    return kd.Header(**values)


class Clock:
    """CLOCK_MONOTONIC that advances step (1 ms) per reading."""

    def __init__(self, step=10 ** 6):
        self.now = 10 ** 12
        self.step = step

    def __call__(self):
        self.now += self.step
        return self.now


def wall():
    return datetime.datetime(2026, 11, 27, 11, 57, 25, 129152, tzinfo=UTC)


class FakeProbes:
    """Probes with canned data.

    Every window collects the same map rows (decoded by the script's
    collect_threads(); thread names by tid, "t<tid>" otherwise), quiet
    threads, whereabouts and stop signals.  The loss counters start at
    counters and grow by step as each window closes: by default one more
    event dropped for a full ring buffer.
    triggers: (start_ns, stop_ns) of the trigger pair of each window, in
    turn (the last one repeats), as the program's capture state shows them.
    events(probes): the EventLog of a window (--syscall-events).
    upcalls(probes): the upcall rows of a window; without it, no upcall
    statistics.
    """

    def __init__(self, kd, rows=None, names=None, quiet=(), counters=None,
                 budget_rows=None, signals=(), where=({}, {}), step=None,
                 triggers=(), events=None, upcalls=None):
        self.kd = kd
        self.rows = rows or {}
        self.names = names or {}
        self.quiet = list(quiet)
        self.total = {counter: 0 for counter in kd.Counter}
        self.total.update(counters or {})
        self.step = {kd.Counter.RINGBUF_FULL: 1} if step is None else step
        self.budget_rows = budget_rows
        self.signals = list(signals)
        self.where = where
        self.triggers = list(triggers)
        self.events = events
        self.upcalls = upcalls
        self.windows = 0    # windows collected
        self.resets = 0     # one before each window
        self.reads = 0      # readings of the capture state since

    def reset(self):
        self.resets += 1
        self.reads = 0

    def poll(self, timeout_ms):
        return []

    def set_state(self, state):
        if state == self.kd.Capture.HOLD:
            for counter, value in self.step.items():
                self.total[counter] += value

    def open_window(self, start_ns):
        pass

    def capture_values(self):
        """Without triggers, a running window; with them, first the start
        trigger, then both, as the program leaves them."""
        if not self.triggers:
            return self.kd.Capture.RUNNING, 0, 0
        start, stop = self.triggers[min(self.resets, len(self.triggers)) - 1]
        self.reads += 1
        if self.reads == 1:
            return self.kd.Capture.RUNNING, start, 0
        return self.kd.Capture.HOLD, start, stop

    def collect(self, end_ns):
        self.windows += 1
        threads = self.kd.collect_threads(self.rows)
        if self.budget_rows:
            # budget_rows(end) makes rows relative to the window's end.
            self.kd.add_budget_rows(threads, self.budget_rows(end_ns),
                                    end_ns)
        for tid, thread in threads.items():
            thread.name = self.names.get(tid, "t{}".format(tid))
        return threads

    def quiet_threads(self, threads, syscall_names, end_ns=None,
                      faults=None):
        return self.quiet

    def whereabouts(self, tids):
        return self.where

    def stop_signals(self):
        return self.signals

    def collect_events(self, threads):
        return self.events(self)

    def collect_upcalls(self):
        return self.kd.collect_upcalls(self.upcalls(self))

    def counters(self):
        return dict(self.total)


def run_sampler(kd, argv, probes=None, head=None, step=10 ** 6):
    """The report of a Sampler over FakeProbes: (out, progress) text.
    The clock moves step ns per reading."""
    args = kd.parse_args(["-p", str(os.getpid()),
                          "--sample-time", "0.001"] + argv)
    out, progress = io.StringIO(), io.StringIO()
    probes = probes or FakeProbes(
        kd, report_rows(kd), {2001: "handler12", 1002: "revalidator7"},
        QUIET)
    sampler = kd.Sampler(probes, args, out, kd.RunContext(
        kd.Target(args.pid), SYSCALL_NAMES, POLL_NRS),
                         clock=Clock(step), header=head or header(kd),
                         progress=progress if args.format == "json" else
                         None, wall=wall)
    sampler.run()
    return out.getvalue(), progress.getvalue()


# ---- --long-poll catches and the report's own lines ----------------------

MS = 10 ** 6


def slots(*items):
    """Four struct lp_slot_t (ns, key, tgid, name)."""
    return tuple(LpSlot(*item) for item in items) + (LpSlot(),) * (
        4 - len(items))


def record(start=1000 * MS, end=1822 * MS, gen=None, rest=(0, 0, 0)):
    """A catch as the kernel side sends it (plain()): on a CPU 54 ms of
    which soft IRQ net_rx 2 ms and hard IRQ virtio 1 ms, waiting 267 ms
    (kd-spin1 ran 200 ms of it), 200 ms in clock_nanosleep, 5 ms outside
    system calls, stopped 301 ms (plus 20 ms waiting after SIGCONT)."""
    softirq = [0] * 10
    softirq[3] = 2 * MS
    lp = Lp(start=start, run0=10 * MS, ready0=20 * MS, stop0=30 * MS,
            stop_ready0=1 * MS, gen=start if gen is None else gen,
            rest=tuple(rest), softirq=tuple(softirq),
            sleep=slots((200 * MS, 230, 0, ""), (5 * MS, 0xfffffffe, 0, "")),
            holder=slots((200 * MS, 4242, 4240, "kd-spin1"),
                         (7 * MS, 0, 0, "")),
            hardirq=slots((1 * MS, 24, 0, "virtio0-input")))
    return script_module().Catch(
        end=end, tid=77, long_nr=230, long_ns=200 * MS + 40000,
        run=64 * MS, ready=287 * MS, stop=351 * MS, stop_ready=21 * MS, lp=lp)


# Lines in the reference's format, kept as it has them (wider than 80).
REFERENCE_TABLE = re.compile(r"^(TID +THREAD +<RESOURCE|-{10} |\s*\d+ \S.*"
                             r"\[SYSCALL STATISTICS\]$| {28})")


def own_lines(lines):
    """The lines the tool writes in its own words: all but the
    reference's per-thread tables and the # SYSCALL EVENTS table."""
    own, events = [], False
    for line in lines:
        if line.startswith("# SYSCALL EVENTS:"):
            events = True
        elif line.startswith("# "):
            events = False
        if events and not line.startswith("#"):
            continue
        # [TIME BUDGET] is the tool's own, in the blocks' indent.
        if REFERENCE_TABLE.match(line) and not budget_line(line):
            continue
        own.append(line)
    return own


def budget_line(line):
    return re.match(r"^ {28}(\[TIME BUDGET\]|PART |\S.* \d+\.\d %$|"
                    r"\S+ in flight )", line)
