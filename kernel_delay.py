#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
#
# Copyright (c) 2026 The kernel_delay authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at:
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""kernel_delay: is it Open vSwitch, or is the Linux kernel to blame?

Attaches eBPF probes to the threads of one process (by default the single
running ovs-vswitchd) and reports, per thread, where the time went during a
sample window: system calls, the gaps between poll() calls, time on a CPU,
time waiting for a CPU, time stopped, and hard and soft interrupts.  The
window is either a fixed time or the interval between two trigger events.

The eBPF program takes no kernel struct layout from headers: it uses
tracepoint fields, and the few task_struct fields it needs (pid, tgid, the
scheduler state, on_cpu, the CPU, the ia32 flag) at offsets read from the
running kernel's BTF, which also names the tracepoints its tp_btf programs
attach to.

Dependencies: bcc (Debian python3-bpfcc, Fedora/RHEL python3-bcc) and
psutil (python3-psutil).
Documentation: kernel_delay.rst next to this file.

Map of this file: its sections in order, as their "# ---- " banners name
them (data flows down the file).
  Constants and exceptions: exit codes, limits, Fatal and the other errors
  The eBPF program: the C template, the enums it shares, rendering
  Data model: the dataclasses every later section passes around
  Command line: argparse types, trigger syntax, the parser
  Kernel facts: BTF, kallsyms, tracefs, syscall tables, include tree
  Processes: /proc and psutil: threads, names, the target, OVS version
  Reading the BPF maps into plain data: the Probes object and its rows
  Analysis: time budget, verdict, --long-poll catches (pure functions)
  Text output: the report as lines
  JSON output: the same data as JSON Lines, and the schema
  The sample loop: windows, signals, faults, the tool's own priority
  The session: compile, attach, clean up
  main: run() and main()
"""

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import datetime
import enum
import errno
import fnmatch
import functools
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__version__ = "1.0"

# Run as a script, go ahead of a saturated node's threads from the start:
# importing bcc alone can otherwise wait seconds for a CPU (see Priority,
# which gets the policy and parameters it found: _STARTED_WITH).  An
# interpreter started by reexec_with_bcc() is boosted already, and finds
# the policy its caller found in the environment (STARTED_WITH_ENV).
STARTED_WITH_ENV = "KERNEL_DELAY_STARTED_WITH"
_STARTED_WITH = None
if __name__ == "__main__" and "--keep-priority" not in sys.argv[1:]:
    try:
        _inherited = os.environ.pop(STARTED_WITH_ENV, "")
        if _inherited:
            _STARTED_WITH = (int(_inherited.split()[0]),
                             os.sched_param(int(_inherited.split()[1])))
        elif os.sched_getscheduler(0) == os.SCHED_OTHER:
            _STARTED_WITH = (os.SCHED_OTHER, os.sched_getparam(0))
            os.sched_setscheduler(0, os.SCHED_FIFO |
                                  os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except (OSError, AttributeError, ValueError, IndexError):
        _STARTED_WITH = None

try:
    import psutil
except ImportError:
    psutil = None

try:
    import bcc
except ImportError:
    bcc = None
except KeyboardInterrupt:
    # Ctrl-C while Python loads bcc (before main() handles signals).
    if __name__ != "__main__":
        raise
    sys.exit(128 + signal.SIGINT)


# ---- Constants and exceptions -----------------------------------------------

EXIT_CODES = {
    os.EX_OK: "success",
    2: "invalid command line (argparse)",
    os.EX_USAGE: "ambiguous target: several ovs-vswitchd, or a thread ID",
    os.EX_NOINPUT: "the target process does not exist",
    os.EX_TEMPFAIL: "the target exited or restarted during the run",
    os.EX_UNAVAILABLE: "the kernel or the environment lacks something the "
                       "tool needs",
    os.EX_SOFTWARE: "the eBPF program did not compile or load",
    os.EX_DATAERR: "a part of a report could not be collected or shown (a "
                   "bug: the rest was written, the traceback is on stderr)",
    os.EX_OSFILE: "a Python module the tool needs (bcc, psutil) is "
                  "missing",
    os.EX_OSERR: "attaching a probe failed",
    os.EX_IOERR: "the report could not be written",
    os.EX_NOPERM: "not running as root",
    os.EX_CONFIG: "a trigger names a probe, symbol or library that "
                  "does not exist",
    128 + signal.SIGINT: "a second Ctrl-C cut a report short",
    128 + signal.SIGHUP: "a second SIGHUP cut a report short",
    128 + signal.SIGTERM: "a second SIGTERM cut a report short",
}

# The signals that end a run cleanly: the window open is reported first.
# SIGHUP is among them: an ssh session that drops sends it, and the report
# (to --output FILE) must survive that.
END_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class TargetExited(Exception):
    """The monitored process went away (noticed at when, a datetime)."""

    def __init__(self, when=None):
        super().__init__(when)
        self.when = when


class Abort(BaseException):
    """A second stop signal while a report is being written: stop
    writing at once."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class OutputError(Exception):
    """Writing the report failed (closed pipe, full disk)."""


class Fatal(Exception):
    """An error that ends the run: one line for stderr and an exit code."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class TemplateError(ValueError):
    """A bug in a C template: a token without a value, or one left."""


class BtfError(Exception):
    pass


class AttachError(Exception):
    """The kernel refused a trigger probe."""

    def __init__(self, role, trigger):
        super().__init__(role, trigger)
        self.role, self.trigger = role, trigger


SOFTIRQ_NAMES = ("hi", "timer", "net_tx", "net_rx", "block", "irq_poll",
                 "tasklet", "sched", "hrtimer", "rcu")

# ia32 system calls of x86-64 kernels are counted as COMPAT_NR plus their
# ia32 number, and named "ia32:NAME".
COMPAT_NR = 0x40000000
COMPAT_PREFIX = "ia32:"
POLL_NAMES = ("poll", "ppoll", "ppoll_time64")

# System call numbers of poll() and ppoll(), used when bcc's table is not
# at hand (--ebpf without bcc).
POLL_SYSCALLS = {"x86_64": (7, 271, COMPAT_NR + 168, COMPAT_NR + 309,
                            COMPAT_NR + 414),
                 "aarch64": (73,)}
RESTART_SYSCALL = {"x86_64": 219, "aarch64": 128}
# uretprobe() and uprobe(): the kernel's uprobe trampolines enter them
# (x86-64 since Linux 6.11 and 6.16), so they are not the target's work.
TRACER_SYSCALLS = {"x86_64": (335, 336)}

DEFAULT_PROCESS = "ovs-vswitchd"

# Limits of the options: the tables are preallocated in kernel memory
# (about 80 bytes per entry; 16 system call entries per thread).
MAX_SECONDS = 30 * 24 * 3600
MAX_THREADS = 32768
# Without --max-threads, the tables hold twice the threads the target has
# when the run starts (threads it starts later need room too), rounded up
# to a power of two, and at least this many.
MIN_TABLE_THREADS = 4096
MAX_PAGES = 16384
# Stack map entries (about 1 KiB each, preallocated).
MAX_STACKS = 65536
DEFAULT_STACKS = 4096
# System call events kept per window (about 200 bytes each, plus the
# distinct stacks); the rest are only counted.
MAX_SHOWN_EVENTS = 10000
# The function whose return the upcall statistics count, and the module
# that has it.
UPCALL_FUNCTION = "ovs_dp_upcall"
# --long-poll: catches sent per second at most (the rest are counted).
LONG_POLL_RATE = 10
# While it waits (in a window, for a trigger, between windows) the tool
# wakes this often (ms) to see whether the target still runs.  Each
# wake-up takes a CPU from a thread it measures (about 0.5 ms here, some
# 35 times more under emulation), and it runs as SCHED_FIFO (Priority).
WATCH_MS = 1000
OVS_MODULE = "openvswitch"


# ---- The eBPF program: the C template, the enums it shares, rendering -------

# Tokens look like @NAME@ (never valid C) and are all replaced in a single
# pass by render_bpf_source(), which then checks that none is left.

EBPF_SOURCE = r"""
@HEADERS@
#define MONITOR_TGID    @MONITOR_TGID@
#define MAX_THREADS     @MAX_THREADS@
#define MAX_SYS_KEYS    @MAX_SYS_KEYS@
#define MAX_IRQ_KEYS    @MAX_IRQ_KEYS@

/* --syscall-events: report each system call that took at least
 * MIN_EVENT_NS (poll() and ppoll() left out with SKIP_POLL_EVENTS), with
 * its stacks if STACK_TRACES. */
#define SYSCALL_EVENTS   @SYSCALL_EVENTS@
#define MIN_EVENT_NS     @MIN_EVENT_NS@ULL
#define SKIP_POLL_EVENTS @SKIP_POLL_EVENTS@
#define STACK_TRACES     @STACK_TRACES@

/* --long-poll: catch a thread's intervals between two poll() calls that
 * last at least LONG_POLL_NS, at most LONG_POLL_RATE a second. */
#define LONG_POLL        @LONG_POLL@
#define LONG_POLL_NS     @LONG_POLL_NS@ULL
#define LONG_POLL_RATE   @LONG_POLL_RATE@

/* Where pid, tgid and the scheduler state live inside struct task_struct
 * on the running kernel. */
#define TASK_PID_OFF    @TASK_PID_OFF@
#define TASK_TGID_OFF   @TASK_TGID_OFF@
#define TASK_STATE_OFF  @TASK_STATE_OFF@
typedef @TASK_STATE_TYPE@ task_state_t;
/* task_struct.on_cpu: set while the task is on a CPU (SMP kernels). */
#define HAVE_ON_CPU     @HAVE_ON_CPU@
#define TASK_ON_CPU_OFF @TASK_ON_CPU_OFF@
/* The CPU whose run queue a task is on (task_struct.cpu before 5.16,
 * thread_info.cpu since); without it (UP kernels) that is CPU 0. */
#define HAVE_TASK_CPU   @HAVE_TASK_CPU@
#define TASK_CPU_OFF    @TASK_CPU_OFF@
#define MAX_CPUS        @MAX_CPUS@
/* The current task's own fields: with CURRENT_BTF (the kernel has
 * bpf_get_current_task_btf(), Linux 5.11 with BTF) a plain load that the
 * verifier checks against the kernel's BTF; else a bpf_probe_read_kernel()
 * call, some 25 ns more per read here (make bench).  Other tasks: see
 * TASK_BTF. */
#define CURRENT_BTF     @CURRENT_BTF@
/* Other tasks, the scheduler probes' task arguments: with TASK_BTF those
 * probes are loaded as BTF-typed tracepoint programs (tp_btf, Linux 5.5
 * with BTF), whose task arguments the verifier knows, so that their
 * fields are plain loads too; else raw tracepoints and
 * bpf_probe_read_kernel(), some 20 ns a read (make bench). */
#define TASK_BTF        @TASK_BTF@
/* The system call number in struct pt_regs (x86 orig_ax, arm64
 * syscallno). */
#define HAVE_REGS_NR    @HAVE_REGS_NR@
#define REGS_NR_OFF     @REGS_NR_OFF@
typedef @REGS_NR_TYPE@ regs_nr_t;
/* x86-64: a task's thread_info.status has TS_COMPAT (0x2) set from the
 * entry of an ia32 system call (int $0x80, sysenter, 32-bit syscall) to
 * its return to user space: what syscall_get_arch() tests.  Such calls
 * are counted as COMPAT_NR + their ia32 number. */
#define HAVE_COMPAT     @HAVE_COMPAT@
#define TASK_COMPAT_OFF @TASK_COMPAT_OFF@
#define TS_COMPAT       0x2
#define COMPAT_NR       @COMPAT_NR@
/* uretprobe() and uprobe() (x86-64, 6.11 and 6.16): entered by the
 * kernel's own uprobe trampolines, not by the program; -1: none. */
#define URETPROBE_NR    @URETPROBE_NR@
#define UPROBE_NR       @UPROBE_NR@

/* __TASK_STOPPED (0x4, SIGSTOP and job control) and __TASK_TRACED (0x8,
 * ptrace stops) have had these values since Linux 2.6. */
#define STOPPED_STATE_MASK 0xc

/* poll() and ppoll(): their gaps are what OVS's "Unreasonably long ...ms
 * poll interval" message measures. */
#define IS_POLL(nr) (@POLL_TEST@)
/* restart_syscall(): how the kernel resumes an interrupted poll(). */
#define RESTART_NR      @RESTART_NR@
/* (restart_syscall() is number 0 on ia32.) */
#define IS_RESTART(nr)  ((nr) == RESTART_NR || \
                         (HAVE_COMPAT && (nr) == COMPAT_NR))

enum event_type {
@EVENT_ENUM@
};

enum counter {
@COUNTER_ENUM@
};

enum capture_state {
@CAPTURE_ENUM@
};

/* One record for every event type; triggers use the first three fields. */
struct event_t {
    u64 ts;             /* trigger time, or system call exit */
    u32 tid;
    u32 type;
    u64 entry_ts;       /* EVENT_SYSCALL: entry, number, stack ids */
    u32 nr;
    s32 kernel_stack;   /* stack_traces id, or -errno if it was lost */
    s32 user_stack;
    u32 pad;
};

/* count, total, min and max of a set of durations in ns */
struct acc_t {
    u64 count;
    u64 total;
    u64 min;
    u64 max;
};

/* A thread's system call state, updated in place: no insert or delete
 * per call.  Entries outlive windows; window says which one the rest
 * belongs to. */
/* Sums of a thread's recent calls of one number, not yet in sys_stats. */
struct sys_slot_t {
    u32 nr;
    u32 pad;
    struct acc_t acc;
};

#define SYS_SLOTS 4         /* a power of two */

struct sys_start_t {
    u64 window;         /* start of the window of the fields below */
    u64 ts;             /* entry of the call in progress, 0: none */
    u64 nr;
    u64 poll_ret;       /* return of the last poll(), 0: none */
    u32 restart_nr;     /* an interrupted poll() that resumes */
    u32 restarting;     /* in the next call, if set */
    struct sys_slot_t slots[SYS_SLOTS];     /* by nr % SYS_SLOTS */
#if LONG_POLL
    u64 lp_long_ns;     /* the longest call since poll_ret, and its nr */
    u64 lp_long_nr;
#endif
};

struct sys_key_t {
    u32 tid;
    u32 nr;
};

struct hardirq_start_t {
    u64 ts;
    u32 irq;
    char name[32];
};

struct hardirq_key_t {
    u32 tid;
    u32 irq;
    char name[32];
};

struct softirq_start_t {
    u64 ts;
    u32 vec;
};

struct softirq_key_t {
    u32 tid;
    u32 vec;
};

struct name_t {
    char comm[16];
};

/* A thread's time budget (see kd_budget_entry()). */
struct budget_t {
    u64 sleep_start;    /* asleep since (0: not asleep) */
    s64 sleep_nr;       /* in this system call, or NR_UNKNOWN */
    u64 unknown;        /* ns asleep in a call not known yet */
    u64 stop_ready;     /* stopped time also counted as ready */
    u64 call_done;      /* the call of the window's start has returned */
    u64 in_use;         /* the fields above are set */
    u64 slept_nr;       /* sleeps in this system call, summed in slept */
    u64 slept;          /* (ns) and not in blocked_stats yet */
};

/* Who held the CPU while a thread waited (see kd_wait_begins()): the
 * classes of holders, and a few of them by name. */
enum hold_kind {
    HOLD_TARGET,        /* another thread of the target process */
    HOLD_OTHER,         /* a task of another process */
    HOLD_IDLE,          /* the idle task */
    HOLD_KINDS
};

#define HOLDER_SLOTS    4           /* holders named per thread */
_Static_assert((HOLDER_SLOTS & (HOLDER_SLOTS - 1)) == 0,
               "HOLDER_SLOTS is a power of two");

struct named_t {
    u32 pid;
    u32 tgid;
    u64 ns;
    char comm[16];
};

struct wait_t {
    u32 cpu;            /* CPU + 1 of the wait in progress, 0: none */
    u32 pad;
    u64 snap[HOLD_KINDS];       /* that CPU's held[] when it began */
    u64 held[HOLD_KINDS];       /* ns its CPUs ran others, by class */
    u64 moved;          /* ns waited on a CPU other than the one queued on */
    struct named_t named[HOLDER_SLOTS];
    u64 since;          /* the count (and snap) is from then */
};

/* ---- --long-poll: one interval of a thread (begin) ---------------- */
/* From the return of a thread's poll() to its next poll().  The run,
 * ready and stopped sums of the thread's scheduler entry are read at both
 * ends, so a short interval costs a snapshot at its start and a
 * comparison at its end.  What needs names goes to a few slots, cleared
 * at their first use in an interval (gen): sleeps by system call, holders
 * of the CPU, hard IRQs; the ns that find no slot go to rest[].  (An entry
 * of its own: it would make sched_t, which every thread has, twice as
 * large.) */
#define LP_SLOTS 8

struct lp_slot_t {
    u64 ns;
    u32 key;            /* system call nr, pid or IRQ number */
    u32 tgid;           /* holders: the process */
    char name[16];      /* holders: comm; hard IRQs: handler name */
};

struct lp_t {
    u64 start;          /* the interval began (0: none yet) */
    u64 run0;           /* sums of sched_t at the start */
    u64 ready0;
    u64 stop0;
    u64 stop_ready0;
    u64 gen;            /* start of the interval the slots belong to */
    u64 rest[3];        /* sleep, holders, hard IRQs without a slot */
    u64 softirq[10];    /* ns by vector */
    struct lp_slot_t sleep[LP_SLOTS];
    struct lp_slot_t holder[LP_SLOTS];
    struct lp_slot_t hardirq[LP_SLOTS];
};
/* ---- --long-poll (end) ---------------------------------------------- */

struct sched_t {
    u64 run_start;
    u64 ready_start;
    u64 stop_start;
    u64 switched;       /* a switch of this thread was seen */
    u64 lost;           /* switches the kernel did not report */
    /* The periods themselves: kept here, a switch costs two lookups. */
    struct acc_t run;
    struct acc_t ready;
    struct acc_t stop;
    struct budget_t budget;     /* here too, for the same reason */
    struct wait_t wait;         /* and who held the CPU meanwhile */
};

BPF_RINGBUF_OUTPUT(events, @RINGBUF_PAGES@);
#if STACK_TRACES
BPF_STACK_TRACE(stack_traces, @STACK_TRACE_SIZE@);
#endif
BPF_PERCPU_ARRAY(counters, u64, @COUNTER_COUNT@);
/* [0]: enum capture_state; [1]: when the window opened, [2]: when a
 * stop trigger closed it (ns). */
BPF_ARRAY(capture, u64, 3);

BPF_HASH(sys_start, u32, struct sys_start_t, MAX_THREADS);
/*
 * A thread's sys_start_t is in one of two places.  First a direct-mapped
 * array of DIRECT_SLOTS entries indexed by the low bits of the thread ID,
 * each naming the thread that holds it: an array lookup costs about 1 ns
 * here, a hash lookup about 35 (make bench's primitives), and a monitored
 * system call needs two.  A thread whose slot another thread holds keeps
 * its entry in sys_start.  A thread never has both: it takes a free slot
 * only when sys_start has no entry for it, and only the thread itself
 * takes it.  Slots outlive windows (their window field says which one
 * they hold); user space frees those of threads that are gone before each
 * window, and every few seconds with --long-poll.  0: sys_start only.
 *
 * The slot holds the thread's scheduler entry too (sched, valid in the
 * window sched_window), which a switch or a wakeup on any CPU looks up:
 * one switch needs two.  A thread without a slot has it in sched_state.
 * Its entry goes to its slot only when kd_sched_find() found none in
 * sched_state, so one made there before the thread took its slot stays
 * there for the rest of the window (for a race, see kd_sched_new()).
 */
#define DIRECT_SLOTS @DIRECT_SLOTS@
#if DIRECT_SLOTS
struct sys_direct_t {
    u32 tid;            /* the holder, 0: free */
    u32 claims;         /* claims counted on a free slot */
    struct sys_start_t entry;
    u64 sched_window;   /* the window of sched (0: none) */
    struct sched_t sched;
};
BPF_ARRAY(sys_direct, struct sys_direct_t, DIRECT_SLOTS);
#endif
BPF_HASH(sys_stats, struct sys_key_t, struct acc_t, MAX_SYS_KEYS);
BPF_HASH(poll_stats, u32, struct acc_t, MAX_THREADS);
BPF_HASH(sched_state, u32, struct sched_t, MAX_THREADS);
/* What a new entry of sched_state starts from: a sched_t does not fit on
 * the BPF stack beside what the programs keep there. */
BPF_PERCPU_ARRAY(sched_zero, struct sched_t, 1);        /* never written */
BPF_PERCPU_ARRAY(hardirq_start, struct hardirq_start_t, 1);
BPF_HASH(hardirq_stats, struct hardirq_key_t, struct acc_t, MAX_IRQ_KEYS);
BPF_PERCPU_ARRAY(softirq_start, struct softirq_start_t, 1);
BPF_HASH(softirq_stats, struct softirq_key_t, struct acc_t, MAX_IRQ_KEYS);
BPF_HASH(exit_names, u32, struct name_t, MAX_THREADS);

static __always_inline void kd_bump(u32 idx)
{
    u64 *val = counters.lookup(&idx);

    if (val)
        (*val)++;   /* per-CPU slot: no atomic needed */
}

static __always_inline u64 kd_capture_state(void)
{
    u32 key = 0;
    u64 *val = capture.lookup(&key);

    return val ? *val : CAPTURE_PAUSED;
}

static __always_inline u64 kd_window_start(void)
{
    u32 key = 1;
    u64 *val = capture.lookup(&key);

    return val ? *val : 0;
}

static __always_inline bool kd_capturing(void)
{
    return kd_capture_state() == CAPTURE_RUNNING;
}

static __always_inline bool kd_is_target(u64 pid_tgid)
{
    return (pid_tgid >> 32) == MONITOR_TGID;
}

/* A 32-bit field of a task a scheduler probe was given (see TASK_BTF).
 * The verifier takes such loads one member at a time. */
static __always_inline u32 kd_task_u32(void *task, int off)
{
#if TASK_BTF
    return *(u32 *)(task + off);
#else
    u32 val = 0;

    bpf_probe_read_kernel(&val, sizeof(val), task + off);
    return val;
#endif
}

/* pid and tgid of a task as bpf_get_current_pid_tgid() has them; one
 * read where the two fields are neighbours (they are), unless loads. */
static __always_inline u64 kd_task_ids(void *task)
{
    if (!TASK_BTF && TASK_TGID_OFF == TASK_PID_OFF + 4) {
        u64 val = 0;

        bpf_probe_read_kernel(&val, sizeof(val), task + TASK_PID_OFF);
        return val;
    }
    return (u64)kd_task_u32(task, TASK_TGID_OFF) << 32 |
           kd_task_u32(task, TASK_PID_OFF);
}

static __always_inline u64 kd_task_state(void *task)
{
    task_state_t val = 0;

    bpf_probe_read_kernel(&val, sizeof(val), task + TASK_STATE_OFF);
    return val;
}

static __always_inline u64 kd_current_state(void)
{
#if CURRENT_BTF
    return *(task_state_t *)((void *)bpf_get_current_task_btf() +
                             TASK_STATE_OFF);
#else
    return kd_task_state((void *)bpf_get_current_task());
#endif
}

/* The number under which a call of the current task is counted: an ia32
 * call's is COMPAT_NR + its number. */
static __always_inline u64 kd_call_nr(u64 nr)
{
    u32 status = 0;

    if (!HAVE_COMPAT)
        return nr;
#if CURRENT_BTF
    status = *(u32 *)((void *)bpf_get_current_task_btf() + TASK_COMPAT_OFF);
#else
    bpf_probe_read_kernel(&status, sizeof(status),
                          (void *)bpf_get_current_task() + TASK_COMPAT_OFF);
#endif
    return status & TS_COMPAT ? COMPAT_NR + (u32)nr : nr;
}

static __always_inline bool kd_tracer_call(u64 nr)
{
    return (URETPROBE_NR >= 0 && nr == URETPROBE_NR) ||
           (UPROBE_NR >= 0 && nr == UPROBE_NR);
}

static __always_inline long kd_regs_nr(void *regs)
{
    regs_nr_t val = -1;

    if (HAVE_REGS_NR)
        bpf_probe_read_kernel(&val, sizeof(val), regs + REGS_NR_OFF);
    return val < 0 ? val : kd_call_nr(val);
}

/* -ERESTARTSYS .. -ERESTART_RESTARTBLOCK (-512 .. -516, but -515): a
 * signal or a stop interrupted the call and the kernel resumes it (ppoll()
 * as itself, poll() and sleeps as restart_syscall()). */
static __always_inline bool kd_restarting(long ret)
{
    return ret <= -512 && ret >= -516 && ret != -515;
}

static __always_inline bool kd_task_on_cpu(void *task)
{
    return HAVE_ON_CPU && kd_task_u32(task, TASK_ON_CPU_OFF) != 0;
}

static __always_inline void kd_acc_add(struct acc_t *acc, u64 delta)
{
    acc->count++;
    acc->total += delta;
    if (acc->count == 1 || delta < acc->min)
        acc->min = delta;
    if (delta > acc->max)
        acc->max = delta;
}

/* BCC rewrites map calls, but not inside macros: these helpers take the
 * result of a map call instead. */
static __always_inline void kd_account(struct acc_t *acc, u64 delta,
                                       u32 full)
{
    if (acc)
        kd_acc_add(acc, delta);
    else
        kd_bump(full);     /* lookup_or_try_init() failed: table full */
}

static __always_inline void kd_check_store(int err, u32 full)
{
    if (err)
        kd_bump(full);
}

static __always_inline void kd_emit(u32 type, u64 now)
{
    struct event_t *event = events.ringbuf_reserve(sizeof(*event));

    if (!event) {
        kd_bump(COUNTER_RINGBUF_FULL);
        return;
    }
    event->ts = now;
    event->tid = bpf_get_current_pid_tgid();
    event->type = type;
    event->entry_ts = 0;
    event->nr = 0;
    event->kernel_stack = -1;
    event->user_stack = -1;
    event->pad = 0;
    events.ringbuf_submit(event, 0);
}

/* ---- Scheduler state of a thread ------------------------------------ */
/*
 * One entry per thread seen by the scheduler probes in this window, with
 * the start of its open run, ready and stopped periods (0: none).  A
 * thread's first switch in the window may close a period that began
 * before it: one it was on a CPU for, or queued for.  After that, a
 * missing start means the kernel did not report an event: the period
 * is left out and counted (COUNTER_SCHED_LOST).
 */
#if DIRECT_SLOTS
/* Thread tid's slot of sys_direct if it holds one, else NULL. */
static __always_inline struct sys_direct_t *kd_direct_of(u32 tid)
{
    u32 slot = tid & (DIRECT_SLOTS - 1);
    struct sys_direct_t *direct = sys_direct.lookup(&slot);

    return direct && direct->tid == tid ? direct : 0;
}
#endif

/* Thread tid's scheduler entry of this window (see sys_direct), or
 * NULL. */
static __always_inline struct sched_t *kd_sched_find(u32 tid)
{
#if DIRECT_SLOTS
    struct sys_direct_t *direct = kd_direct_of(tid);

    if (direct && direct->sched_window == kd_window_start())
        return &direct->sched;
#endif
    return sched_state.lookup(&tid);
}

/* A new scheduler entry for thread tid, which kd_sched_find() did not
 * find: in its slot if it holds one, else in sched_state.  The scheduler
 * serializes a thread's events (its wakeup, its switches in and out)
 * under its run queue's lock, so only a rare race (a system call's first
 * sight of the thread against a wakeup on another CPU) makes two at
 * once: the first one made is kept where the second one can see it (the
 * slot's window, sched_state's key).  A race across the two places, the
 * thread taking its slot meanwhile, leaves it one entry in each, of which
 * user space keeps the slot's. */
static __always_inline struct sched_t *kd_sched_new(u32 tid, u64 run_start,
                                                    u64 switched)
{
#if DIRECT_SLOTS
    struct sys_direct_t *direct = kd_direct_of(tid);

    if (direct) {
        if (direct->sched_window == kd_window_start())
            return &direct->sched;
        __builtin_memset(&direct->sched, 0, sizeof(direct->sched));
        direct->sched.run_start = run_start;
        direct->sched.switched = switched;
        direct->sched_window = kd_window_start();
        return &direct->sched;
    }
#endif
    u32 key = 0;
    struct sched_t *zero = sched_zero.lookup(&key);

    if (!zero)
        return 0;
    /* -EEXIST if another CPU made it first: only a failed lookup
     * afterwards means the table is full. */
    int err = sched_state.insert(&tid, zero);
    struct sched_t *entry = sched_state.lookup(&tid);

    if (entry && !err) {
        entry->run_start = run_start;
        entry->switched = switched;
    }
    return entry;
}

static __always_inline struct sched_t *kd_sched_entry(u32 tid)
{
    struct sched_t *entry = kd_sched_find(tid);

    if (entry)
        return entry;
    entry = kd_sched_new(tid, 0, 0);
    if (!entry)
        kd_bump(COUNTER_SCHED_FULL);
    return entry;
}

/* A thread seen on a CPU (system call, interrupt) before any switch of it
 * in the window has been on that CPU since the window opened. */
static __always_inline void kd_seen_running(u32 tid)
{
    if (!kd_sched_find(tid))
        kd_sched_new(tid, kd_window_start(), 1);
}

/* Start of a period that ends now: the stamp, else the window start for
 * a thread's first switch, else 0 (lost event). */
static __always_inline u64 kd_period_start(struct sched_t *entry, u64 stamp)
{
    if (stamp)
        return stamp;
    if (!entry->switched)
        return kd_window_start();
    entry->lost++;
    kd_bump(COUNTER_SCHED_LOST);
    return 0;
}

static __always_inline void kd_close_run(struct sched_t *entry, u64 now)
{
    u64 start = kd_period_start(entry, entry->run_start);

    if (start && now >= start)
        kd_acc_add(&entry->run, now - start);
    entry->run_start = 0;
    entry->switched = 1;
}

/* ---- Time budget: asleep, stopped, and who held the CPU -------------- */
/*
 * Besides on a CPU, waiting for one or stopped, a thread can be asleep:
 * switched out in TASK_INTERRUPTIBLE or TASK_UNINTERRUPTIBLE until its
 * wakeup.  Sleeps are booked to the system call the thread slept in.  For
 * a call that entered before the window, the number is known only when
 * it returns (from the registers, in sys_exit): until then its sleep
 * waits in budget_t.unknown.  Only target threads inside a window get here.
 */
#define SLEEP_STATE_MASK 0x3        /* TASK_(UN)INTERRUPTIBLE */
#define DEAD_STATE_MASK 0x80        /* TASK_DEAD: the final switch out */
#define NR_UNKNOWN      -2          /* a call entered before the window,
                                     * or none */
#define NR_HISTOGRAM    @HISTOGRAM@
#define MAX_HOLDER_KEYS @MAX_HOLDER_KEYS@
#define CPU_SEGS        8           /* switches remembered per CPU */

/* Who ran on a CPU, from start to end: the last CPU_SEGS switches. */
struct seg_t {
    u64 start;
    u64 end;
    u32 pid;
    u32 tgid;
    char comm[16];
};

/*
 * Who held a CPU, kept only while a target thread waits for it: a count
 * of the target threads queued on the CPU, checked first, so that other
 * processes' switches cost nothing more while nobody waits.  held[] sums
 * the time each class of task ran on the CPU while it was counted; a
 * thread's share of it is held[] at the end of its wait less held[] at
 * its start (complete however many tasks ran meanwhile), and the last
 * CPU_SEGS switches name the tasks.  Written by the CPU itself, except
 * waiting (atomic, by the CPU that wakes a thread) and known (see
 * kd_wait_begins()).
 *
 * held[] runs without a gap from the CPU's first switch in the window:
 * a switch left out while nobody waited is booked with the next one
 * kept.  A thread queued before the window opened is counted nowhere,
 * and its wait is the CPU's account since then, so a gap would be
 * time of its wait that nobody held (issue 14: one thread of 2,000 at
 * 94.96 % when a wakeup restarted the account).  Only switches between
 * two tasks of other processes are left out, so the turns booked late
 * are theirs: of the class other (or idle), but of no task by name.
 */
struct cpu_hold_t {
    s64 waiting;        /* target threads queued on this CPU */
    u64 window;         /* window of the fields below */
    u64 last;           /* the current task, or a switch left out, since */
    u64 cur_kind;       /* enum hold_kind of the task that took it then */
    u64 held[HOLD_KINDS];
    u64 idx;
    u64 known;          /* the current task holds the CPU since (0: a
                         * switch was left out since last) */
    struct seg_t seg[CPU_SEGS];
};

struct signal_key_t {
    u32 sig;
    u32 sender;
};

struct signal_t {
    u64 count;
    u32 tgid;
    u32 target;
    char comm[16];
    u64 last;           /* when the last one was sent (--long-poll) */
};

BPF_HASH(blocked_stats, struct sys_key_t, u64, MAX_SYS_KEYS);
/* By CPU: a wakeup counts the thread on its CPU's entry. */
BPF_ARRAY(cpu_hold, struct cpu_hold_t, MAX_CPUS);
BPF_HASH(stop_signals, struct signal_key_t, struct signal_t, 64);

/* ---- --long-poll: one interval of a thread (begin) ---------------- */
#if LONG_POLL
/* A catch: the interval [lp.start, end] of thread tid. */
struct lp_event_t {
    u64 end;
    u32 tid;
    u32 long_nr;        /* the longest system call in the interval */
    u64 long_ns;
    u64 run;            /* sums of sched_t at the end */
    u64 ready;
    u64 stop;
    u64 stop_ready;
    struct lp_t lp;
};

BPF_RINGBUF_OUTPUT(long_polls, 16);
BPF_HASH(lp_state, u32, struct lp_t, MAX_THREADS);
BPF_PERCPU_ARRAY(lp_zero, struct lp_t, 1);      /* never written */
/* The rate limit: [0] the current second, [1] catches sent in it. */
BPF_ARRAY(lp_quota, u64, 2);

/* Time on a CPU up to now, the open period included. */
static __always_inline u64 kd_lp_run(struct sched_t *s, u64 now)
{
    return s->run.total + (s->run_start && now > s->run_start ?
                           now - s->run_start : 0);
}

/* The slots of the thread's current interval, cleared at their first use
 * in it.  (Bookings while the thread is inside poll() go to the slots of
 * the interval that ended there, already sent: harmless.) */
static __always_inline struct lp_t *kd_lp(u32 tid)
{
    struct lp_t *lp = lp_state.lookup(&tid);

    if (!lp || !lp->start)
        return 0;
    if (lp->gen != lp->start) {
        __builtin_memset(&lp->rest, 0, sizeof(*lp) -
                         __builtin_offsetof(struct lp_t, rest));
        lp->gen = lp->start;
    }
    return lp;
}

static __always_inline void kd_lp_book(struct lp_slot_t *slots, u64 *rest,
                                       u32 key, u64 ns, u32 tgid,
                                       const char *name)
{
    for (int i = 0; i < LP_SLOTS; i++) {
        if (slots[i].ns && slots[i].key != key)
            continue;
        if (!slots[i].ns) {
            slots[i].key = key;
            slots[i].tgid = tgid;
            if (name)
                __builtin_memcpy(slots[i].name, name, 16);
        }
        slots[i].ns += ns;
        return;
    }
    *rest += ns;
}

/* The thread's poll() returned at now: an interval begins. */
static __always_inline void kd_lp_begin(u32 tid, struct sys_start_t *call,
                                        u64 now)
{
    struct sched_t *s = kd_sched_entry(tid);
    struct lp_t *lp = lp_state.lookup(&tid);

    call->lp_long_ns = 0;
    if (!lp) {
        u32 zero_key = 0;
        struct lp_t *zero = lp_zero.lookup(&zero_key);

        if (zero)
            lp_state.insert(&tid, zero);    /* only tid inserts tid */
        lp = lp_state.lookup(&tid);
    }
    if (!s || !lp) {
        kd_bump(COUNTER_LONG_POLL_FULL);
        return;
    }
    lp->start = now;
    lp->run0 = kd_lp_run(s, now);
    lp->ready0 = s->ready.total;
    lp->stop0 = s->stop.total;
    lp->stop_ready0 = s->budget.stop_ready;
}

/* The interval ended at now (poll() entry) and lasted LONG_POLL_NS or
 * more: send it, unless this second's quota is spent. */
static __always_inline void kd_lp_catch(u32 tid, struct sys_start_t *call,
                                        u64 now)
{
    u32 sec_key = 0, sent_key = 1;
    u64 *sec = lp_quota.lookup(&sec_key);
    u64 *sent = lp_quota.lookup(&sent_key);

    if (!sec || !sent)
        return;
    if (*sec != now / 1000000000) {
        *sec = now / 1000000000;
        *sent = 0;
    }
    if (*sent >= LONG_POLL_RATE) {
        kd_bump(COUNTER_LONG_POLL_UNSHOWN);
        return;
    }
    __sync_fetch_and_add(sent, 1);

    struct sched_t *s = kd_sched_find(tid);
    struct lp_t *lp = lp_state.lookup(&tid);
    struct lp_event_t *ev = long_polls.ringbuf_reserve(sizeof(*ev));

    if (!ev) {
        kd_bump(COUNTER_RINGBUF_FULL);
        return;
    }
    ev->end = now;
    ev->tid = tid;
    ev->long_nr = call->lp_long_nr;
    ev->long_ns = call->lp_long_ns;
    if (s && lp && lp->start == call->poll_ret) {
        ev->run = kd_lp_run(s, now);
        ev->ready = s->ready.total;
        ev->stop = s->stop.total;
        ev->stop_ready = s->budget.stop_ready;
        bpf_probe_read_kernel(&ev->lp, sizeof(ev->lp), lp);
    } else {
        /* No scheduler entry (table full): only the length is known. */
        __builtin_memset(ev, 0, __builtin_offsetof(struct lp_event_t, lp));
        __builtin_memset(&ev->lp, 0, sizeof(ev->lp));
        ev->end = now;
        ev->tid = tid;
        ev->lp.start = call->poll_ret;
    }
    long_polls.ringbuf_submit(ev, 0);
}

/* Hooks in the budget's probes: they book into the current interval. */
static __always_inline void kd_lp_slept(u32 tid, s64 nr, u64 ns)
{
    struct lp_t *lp = kd_lp(tid);

    if (lp)
        kd_lp_book(lp->sleep, &lp->rest[0], (u32)nr, ns, 0, 0);
}

static __always_inline void kd_lp_waited(u32 tid, struct cpu_hold_t *log,
                                         u64 start, u64 now)
{
    struct lp_t *lp = kd_lp(tid);

    if (!lp || !log)
        return;
    for (int i = 0; i < CPU_SEGS; i++) {
        struct seg_t *seg = &log->seg[i];
        u64 from = seg->start > start ? seg->start : start;
        u64 to = seg->end < now ? seg->end : now;

        if (to > from && seg->pid != tid)
            kd_lp_book(lp->holder, &lp->rest[1], seg->pid, to - from,
                       seg->tgid, seg->comm);
    }
}

static __always_inline void kd_lp_irq(u32 tid, s32 irq, const char *name,
                                      u64 ns)
{
    struct lp_t *lp = kd_lp(tid);

    if (!lp)
        return;
    if (name)
        kd_lp_book(lp->hardirq, &lp->rest[2], irq, ns, 0, name);
    else if (irq >= 0 && irq < 10)
        lp->softirq[irq] += ns;
}
#else
#define kd_lp_slept(tid, nr, ns)
#define kd_lp_waited(tid, hold, start, now)
#define kd_lp_irq(tid, irq, name, ns)
#endif
/* ---- --long-poll (end) ---------------------------------------------- */

/* The budget of a thread, from its scheduler entry (sched may be 0): set
 * up at its first use in the window. */
static __always_inline struct budget_t *kd_budget_entry(struct sched_t *sched)
{
    if (!sched)
        return 0;
    if (!sched->budget.in_use) {
        sched->budget.sleep_nr = NR_UNKNOWN;
        sched->budget.in_use = 1;
    }
    return &sched->budget;
}

static __always_inline void kd_book_blocked(u32 tid, u32 nr, u64 ns)
{
    struct sys_key_t key = { .tid = tid, .nr = nr };
    u64 zero = 0;
    u64 *total = blocked_stats.lookup_or_try_init(&key, &zero);

    if (total)
        __sync_fetch_and_add(total, ns);
    else
        kd_bump(COUNTER_BLOCKED_FULL);
}

/* Thread tid's system call entry, where it is (see sys_direct), or NULL;
 * only in tid's own context. */
static __always_inline struct sys_start_t *kd_sys_lookup(u32 tid)
{
#if DIRECT_SLOTS
    struct sys_direct_t *direct = kd_direct_of(tid);

    if (direct)
        return &direct->entry;
#endif
    return sys_start.lookup(&tid);
}

/* A target thread switched out, neither preempted nor stopped. */
static __always_inline void kd_budget_sleeps(u32 tid, struct sched_t *sched,
                                             u64 state, u64 now)
{
    if (!(state & SLEEP_STATE_MASK) || (state & DEAD_STATE_MASK))
        return;

    struct budget_t *entry = kd_budget_entry(sched);
    struct sys_start_t *call = kd_sys_lookup(tid);

    if (!entry)
        return;
    entry->sleep_start = now;
    entry->sleep_nr = call && call->ts && call->window == kd_window_start() ?
                      (s64)call->nr : NR_UNKNOWN;
}

/* A target thread's wait for a CPU starts with a wakeup: its sleep ends.
 * A thread first seen at its wakeup (not a new one) slept since the
 * window opened, or was stopped. */
static __always_inline void kd_budget_wakes(u32 tid, struct sched_t *sched,
                                            u64 now, bool new_task)
{
    struct budget_t *entry = sched->budget.in_use ? &sched->budget : 0;
    u64 start = 0;
    s64 nr = NR_UNKNOWN;

    if (entry && entry->sleep_start) {
        start = entry->sleep_start;
        nr = entry->sleep_nr;
        entry->sleep_start = 0;
    } else if (!entry && !sched->switched && !new_task) {
        start = kd_window_start();
        entry = kd_budget_entry(sched);
    }
    if (!entry || !start || now < start)
        return;
    kd_lp_slept(tid, nr, now - start);
    if (nr == NR_UNKNOWN) {
        __sync_fetch_and_add(&entry->unknown, now - start);
        return;
    }
    /* Summed in the entry while the thread sleeps in the same call (a
     * poll() loop, a wait on one pipe); moved to blocked_stats when it
     * sleeps in another.  User space adds what the entry holds. */
    if (entry->slept && entry->slept_nr != (u32)nr) {
        kd_book_blocked(tid, entry->slept_nr, entry->slept);
        entry->slept = 0;
    }
    entry->slept_nr = (u32)nr;
    entry->slept += now - start;
}

/* The call a target thread was in when the window opened returns: its
 * sleep so far was in system call nr. */
static __always_inline void kd_budget_call_known(u32 tid, long nr)
{
    /* On a CPU: seen running, if this is its first event. */
    kd_seen_running(tid);

    struct budget_t *entry = kd_budget_entry(kd_sched_find(tid));

    if (!entry)
        return;
    if (entry->unknown) {
        kd_book_blocked(tid, nr, entry->unknown);
        entry->unknown = 0;
    }
    entry->call_done = 1;
}

/* A stopped thread is back on a CPU: the part of its stop after SIGCONT
 * woke it was also a wait for a CPU. */
static __always_inline void kd_budget_stop_ends(u32 tid, struct sched_t *sched,
                                                u64 now)
{
    if (!sched->stop_start || sched->ready_start <= sched->stop_start ||
        now < sched->ready_start)
        return;

    struct budget_t *entry = kd_budget_entry(sched);

    if (entry)
        entry->stop_ready += now - sched->ready_start;
}

static __always_inline u32 kd_hold_kind(u64 ids)
{
    if (!(u32)ids)
        return HOLD_IDLE;
    return kd_is_target(ids) ? HOLD_TARGET : HOLD_OTHER;
}

/* A switch on a CPU that keeps account (see struct cpu_hold_t): prev
 * (current) held it until now, next holds it from now. */
static __always_inline void kd_hold_switch(struct cpu_hold_t *hold, u64 now,
                                           u64 prev_ids, u64 next_ids,
                                           u64 window)
{
    /* At a CPU's first switch in a window its task took the CPU at the
     * window's start at the latest (user space zeroes the entries
     * between windows). */
    u64 from = hold->last > window ? hold->last : window;
    u32 kind = kd_hold_kind(prev_ids);
    struct seg_t *seg = &hold->seg[hold->idx & (CPU_SEGS - 1)];

    if (now > from && kind < HOLD_KINDS)
        hold->held[kind] += now - from;
    /* After a switch left out, prev is named from when it was known to
     * hold the CPU only (a wakeup counted a waiter here), if ever. */
    u64 named = hold->known > from ? hold->known : from;

    if (hold->window == window && !hold->known)
        named = now;
    seg->start = named;
    seg->end = now;
    seg->pid = prev_ids;
    seg->tgid = prev_ids >> 32;
    bpf_get_current_comm(&seg->comm, sizeof(seg->comm));
    hold->idx++;
    hold->last = now;
    hold->known = now;
    hold->cur_kind = kd_hold_kind(next_ids);
    hold->window = window;
}

static __always_inline u32 kd_task_cpu(void *task)
{
    return HAVE_TASK_CPU ? kd_task_u32(task, TASK_CPU_OFF) : 0;
}

/* The thread's wait ends (it is on a CPU): uncount it; returns CPU + 1
 * of the count, 0 if none. */
static __always_inline u32 kd_wait_ends(struct wait_t *wait)
{
    u32 queued = wait->cpu;

    wait->cpu = 0;
    if (queued) {
        u32 idx = queued - 1;
        struct cpu_hold_t *there = cpu_hold.lookup(&idx);

        if (there)
            __sync_fetch_and_add(&there->waiting, -1);
    }
    return queued;
}

/* A target thread starts waiting for CPU cpu at now: count it there and
 * note how long each class has held that CPU so far. */
static __always_inline void kd_wait_begins(struct sched_t *entry, u32 cpu,
                                           u64 now)
{
    struct cpu_hold_t *hold = cpu_hold.lookup(&cpu);
    u64 window = kd_window_start();

    kd_wait_ends(&entry->wait);     /* a count whose end was not seen */
    if (!hold)
        return;
    __sync_fetch_and_add(&hold->waiting, 1);
    /* The CPU's account keeps its last (see struct cpu_hold_t); but
     * after a switch left out, its task is known to hold it from now
     * on, for the names.  (Before the CPU's first switch in the window,
     * its task has held it since the window opened.) */
    if (hold->window != window)
        hold->known = window;
    else if (!hold->known)
        hold->known = now;
#pragma unroll
    for (int k = 0; k < HOLD_KINDS; k++)
        entry->wait.snap[k] = hold->held[k];
    /* The current task's turn so far was before the wait. */
    u64 kind = hold->cur_kind;

    if (hold->window == window && now > hold->last && kind < HOLD_KINDS)
        entry->wait.snap[kind] += now - hold->last;
    entry->wait.cpu = cpu + 1;
    entry->wait.since = now;
}

/* What each class held of CPU hold from the thread's snapshot to now,
 * added to its wait (at most the time since the snapshot); running: the
 * CPU's current turn, not closed by a switch yet, counts up to now. */
static __always_inline void kd_wait_share(struct wait_t *wait,
                                          struct cpu_hold_t *hold, u64 now,
                                          bool running)
{
    u64 room = now > wait->since ? now - wait->since : 0;

#pragma unroll
    for (int k = 0; k < HOLD_KINDS; k++) {
        u64 got = hold->held[k] > wait->snap[k] ?
                  hold->held[k] - wait->snap[k] : 0;

        if (running && k == hold->cur_kind && now > hold->last)
            got += now - hold->last;
        if (got > room)
            got = room;
        room -= got;
        wait->held[k] += got;
    }
}

/* Name a task that ran while the thread waited, in one of its few
 * slots: the same task, else a free slot, else the smallest if this
 * turn is larger (whatever is not named stays in its class's total). */
static __always_inline void kd_name_holder(struct wait_t *wait,
                                           struct seg_t *seg, u64 ns)
{
    int free = -1, small = 0;

#pragma unroll
    for (int i = 0; i < HOLDER_SLOTS; i++) {
        if (wait->named[i].ns && wait->named[i].pid == seg->pid) {
            wait->named[i].ns += ns;
            return;
        }
        if (!wait->named[i].ns && free < 0)
            free = i;
        if (wait->named[i].ns < wait->named[small].ns)
            small = i;
    }
    if (free < 0) {
        if (wait->named[small].ns >= ns)
            return;
        free = small;
    }
    if (free < 0 || free >= HOLDER_SLOTS)
        return;
    /* Older verifiers (6.1) lose the bound checked above once clang has
     * reshaped it ("unbounded memory access"): mask the index, behind a
     * barrier so that clang keeps the mask (HOLDER_SLOTS is a power of
     * two). */
    u32 slot = free;

    asm volatile("" : "+r"(slot));
    slot &= HOLDER_SLOTS - 1;
    wait->named[slot].pid = seg->pid;
    wait->named[slot].tgid = seg->tgid;
    wait->named[slot].ns = ns;
    __builtin_memcpy(wait->named[slot].comm, seg->comm,
                     sizeof(wait->named[slot].comm));
}

/* A target thread waited from start to now and runs on this CPU now
 * (hold: its entry, just updated by the switch): book who held the CPU
 * meanwhile, by class and, as far as the log goes back, by name. */
static __always_inline void kd_book_holders(u32 tid, struct sched_t *entry,
                                            struct cpu_hold_t *hold, u32 cpu,
                                            u64 start, u64 now)
{
    struct wait_t *wait = &entry->wait;
    u32 queued = kd_wait_ends(wait);

    if (!hold)
        return;
    /* Without a count (queued before the window opened), the CPU's
     * account since the window opened, as far as it kept one. */
    if (!queued) {
        __builtin_memset(wait->snap, 0, sizeof(wait->snap));
        wait->since = start;
    }
    /* The part of the wait spent on this CPU's queue (since a move). */
    u64 here = wait->since > start ? wait->since : start;

    if (queued && queued != cpu + 1) {
        /* Moved to another CPU's queue unseen: the account is the other
         * CPU's, and does not cover this part of the wait. */
        wait->moved += now > here ? now - here : 0;
        return;
    }
    kd_wait_share(wait, hold, now, false);
#pragma unroll
    for (int i = 0; i < CPU_SEGS; i++) {
        struct seg_t *seg = &hold->seg[i];
        u64 from = seg->start > here ? seg->start : here;
        u64 to = seg->end < now ? seg->end : now;

        if (to <= from || seg->pid == tid)
            continue;
        kd_name_holder(wait, seg, to - from);
    }
}

/* Stop signals (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) and SIGCONT sent to
 * the target: by whom. */
TRACEPOINT_PROBE(signal, signal_generate)
{
    u32 target = args->pid;
    int sig = args->sig;

    if (sig < 18 || sig > 22 || !kd_capturing())
        return 0;
    if (target != MONITOR_TGID && !kd_sched_find(target))
        return 0;

    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct signal_key_t key = { .sig = sig, .sender = (u32)pid_tgid };
    struct signal_t zero = {};
    struct signal_t *seen = stop_signals.lookup_or_try_init(&key, &zero);

    if (!seen)
        return 0;
    seen->count++;
    seen->tgid = pid_tgid >> 32;
    seen->target = target;
    seen->last = bpf_ktime_get_ns();
    bpf_get_current_comm(&seen->comm, sizeof(seen->comm));
    return 0;
}

/* --histogram: log2 buckets of system call durations per thread and
 * call, and of waits for a CPU per thread (nr HIST_READY). */
#define HIST_READY      0xffffffff
#define HIST_POLL       0xfffffffe  /* --long-poll: the poll intervals */

#if NR_HISTOGRAM
struct hist_key_t {
    u32 tid;
    u32 nr;
    u32 slot;
};

BPF_HASH(hist, struct hist_key_t, u64, 2 * MAX_HOLDER_KEYS);
#endif

static __always_inline void kd_hist(u32 tid, u32 nr, u64 ns)
{
#if NR_HISTOGRAM
    /* --long-poll --histogram shows the poll intervals only. */
    if (LONG_POLL && nr != HIST_POLL)
        return;
    struct hist_key_t key = { .tid = tid, .nr = nr, .slot = bpf_log2l(ns) };
    u64 zero = 0;
    u64 *count = hist.lookup_or_try_init(&key, &zero);

    if (count)
        __sync_fetch_and_add(count, 1);
    else
        kd_bump(COUNTER_HIST_FULL);
#endif
}

/* ---- System calls and poll() gaps ---------------------------------- */
/* Raw tracepoints: every system call of every process passes here, and
 * they skip the copy of the arguments into a trace record.  Other
 * processes leave at the first test, before any map access. */

/* The thread's entry for this window: reset at its first use in the
 * window, which also tells that the thread is on a CPU. */
static __always_inline struct sys_start_t *kd_sys_entry(u32 tid)
{
    u64 window = kd_window_start();
    struct sys_start_t *entry = kd_sys_lookup(tid);

    if (entry && entry->window == window)
        return entry;
    kd_seen_running(tid);

    struct sys_start_t fresh = { .window = window };

    if (entry) {
        __builtin_memcpy(entry, &fresh, sizeof(fresh));
        return entry;
    }
#if DIRECT_SLOTS
    u32 slot = tid & (DIRECT_SLOTS - 1);
    struct sys_direct_t *direct = sys_direct.lookup(&slot);

    /* Threads whose IDs share the slot may race for it.  Each counts a
     * claim, then reads the count: a claim that reads 1 is the only one
     * counted, and takes the slot.  One that reads more takes its claim
     * back, so that claims that all read 2 leave the slot free rather
     * than claimed by nobody.  (Without using the add's result, which
     * needs Linux 5.12.) */
    if (direct && !direct->tid) {
        __sync_fetch_and_add(&direct->claims, 1);
        if (direct->claims == 1) {
            __builtin_memcpy(&direct->entry, &fresh, sizeof(fresh));
            direct->tid = tid;
            return &direct->entry;
        }
        __sync_fetch_and_add(&direct->claims, -1);
    }
#endif
    /* Only this thread inserts its key: no race to lose. */
    kd_check_store(sys_start.update(&tid, &fresh), COUNTER_SYS_START_FULL);
    return sys_start.lookup(&tid);
}

/* A finished call of the thread: summed in its entry's slot for the
 * number, which first moves what it holds for another number to
 * sys_stats.  A loop of one call, or of a few that do not share a slot,
 * updates no hash table.  User space adds what the slots hold at the end
 * of the window. */
static __always_inline void kd_count_call(u32 tid, struct sys_start_t *entry,
                                          u32 nr, u64 delta)
{
    struct sys_slot_t *slot = &entry->slots[nr & (SYS_SLOTS - 1)];

    if (slot->acc.count && slot->nr != nr) {
        struct sys_key_t key = { .tid = tid, .nr = slot->nr };
        struct acc_t zero = {};
        struct acc_t *acc = sys_stats.lookup_or_try_init(&key, &zero);

        if (acc) {
            if (!acc->count || slot->acc.min < acc->min)
                acc->min = slot->acc.min;
            if (slot->acc.max > acc->max)
                acc->max = slot->acc.max;
            acc->count += slot->acc.count;
            acc->total += slot->acc.total;
        } else {
            kd_bump(COUNTER_SYS_STATS_FULL);
        }
        slot->acc.count = 0;
        slot->acc.total = 0;
        slot->acc.max = 0;
    }
    slot->nr = nr;
    kd_acc_add(&slot->acc, delta);
}

/* The thread's interrupted poll() resumes in its next system call. */
static __always_inline void kd_poll_restarts(struct sys_start_t *entry,
                                             u32 nr)
{
    if (!entry)
        return;
    entry->restart_nr = nr;
    entry->restarting = 1;
}

/* args: struct pt_regs *regs, long id */
RAW_TRACEPOINT_PROBE(sys_enter)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();

    if (!kd_is_target(pid_tgid) || !kd_capturing())
        return 0;

    u32 tid = pid_tgid;
    struct sys_start_t *entry = kd_sys_entry(tid);

    if (!entry)
        return 0;

    u64 nr = kd_call_nr(ctx->args[1]);

    /* The tool's own uprobes: not the target's work. */
    if (kd_tracer_call(nr))
        return 0;

    u64 now = bpf_ktime_get_ns();

    /* The rest of an interrupted poll() counts as poll(); its gap did
     * not start. */
    if (entry->restarting && (IS_RESTART(nr) || IS_POLL(nr))) {
        if (IS_RESTART(nr))
            nr = entry->restart_nr;
        entry->restarting = 0;
    }
    entry->ts = now;
    entry->nr = nr;

    /* A poll gap runs from the return of the thread's last poll(). */
    if (IS_POLL(nr) && entry->poll_ret) {
        u64 gap = now - entry->poll_ret;

#if LONG_POLL
        /* --long-poll: the one test a short interval costs. */
        if (gap >= LONG_POLL_NS)
            kd_lp_catch(tid, entry, now);
        kd_hist(tid, HIST_POLL, gap);
#else
        struct acc_t zero = {};

        kd_account(poll_stats.lookup_or_try_init(&tid, &zero), gap,
                   COUNTER_POLL_FULL);
#endif
        entry->poll_ret = 0;
    }
    return 0;
}

/* ---- System call events (--syscall-events) ------------------------- */
/* Only for the target's calls that completed inside the window and took
 * long enough: the stack walks are the expensive part. */
#if SYSCALL_EVENTS
/* A window shows its first MAX_SHOWN_EVENTS events only: past that many
 * sent from one CPU, an event is counted here, without a stack walk or a
 * ring buffer record.  Per CPU, zeroed by user space for each window:
 * [0] events sent, [1] events only counted. */
#define MAX_SHOWN_EVENTS @MAX_SHOWN_EVENTS@
BPF_PERCPU_ARRAY(event_quota, u64, 2);

static __always_inline void kd_syscall_event(
    struct bpf_raw_tracepoint_args *ctx, u32 tid, u32 nr, u64 entry, u64 now)
{
    u32 sent_key = 0;
    u64 *sent = event_quota.lookup(&sent_key);

    if (sent && *sent >= MAX_SHOWN_EVENTS) {
        u32 unsent_key = 1;
        u64 *unsent = event_quota.lookup(&unsent_key);

        if (unsent)
            (*unsent)++;
        return;
    }

    struct event_t *event = events.ringbuf_reserve(sizeof(*event));

    if (!event) {
        kd_bump(COUNTER_RINGBUF_FULL);
        return;
    }
    if (sent)
        (*sent)++;
    event->ts = now;
    event->tid = tid;
    event->type = EVENT_SYSCALL;
    event->entry_ts = entry;
    event->nr = nr;
    event->pad = 0;
#if STACK_TRACES
    /* Negative: the stack map is full, or another stack hashed to the
     * same slot (-EEXIST). */
    event->kernel_stack = stack_traces.get_stackid(ctx, 0);
    event->user_stack = stack_traces.get_stackid(ctx, BPF_F_USER_STACK);
    if (event->kernel_stack < 0)
        kd_bump(COUNTER_STACK_LOST);
    if (event->user_stack < 0)
        kd_bump(COUNTER_STACK_LOST);
#else
    event->kernel_stack = -1;
    event->user_stack = -1;
#endif
    events.ringbuf_submit(event, 0);
}
#endif

/* args: struct pt_regs *regs, long ret */
RAW_TRACEPOINT_PROBE(sys_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();

    if (!kd_is_target(pid_tgid) || !kd_capturing())
        return 0;

    u32 tid = pid_tgid;
    long ret = ctx->args[1];
    struct sys_start_t *start = kd_sys_lookup(tid);

    /* Calls that entered before the window have no start stamp and are
     * not counted; but a poll() interrupted now resumes inside it. */
    if (!start || start->window != kd_window_start() || !start->ts) {
        long nr = kd_regs_nr((void *)ctx->args[0]);

        if (kd_tracer_call(nr)) {
            kd_seen_running(tid);
            return 0;
        }
        if (kd_restarting(ret) && IS_POLL(nr))
            kd_poll_restarts(kd_sys_entry(tid), nr);
#if LONG_POLL
        /* --long-poll: the first interval begins here. */
        else if (IS_POLL(nr) && (start = kd_sys_entry(tid))) {
            start->poll_ret = bpf_ktime_get_ns();
            kd_lp_begin(tid, start, start->poll_ret);
        }
#endif
        kd_budget_call_known(tid, nr);
        return 0;
    }

    u64 now = bpf_ktime_get_ns();
    struct sys_key_t key = { .tid = tid, .nr = start->nr };
    u64 entry = start->ts;
    u64 delta = now - entry;

    start->ts = 0;
#if LONG_POLL
    if (delta > start->lp_long_ns) {
        start->lp_long_ns = delta;
        start->lp_long_nr = key.nr;
    }
#endif
    kd_count_call(tid, start, key.nr, delta);
    kd_hist(tid, key.nr, delta);
#if SYSCALL_EVENTS
    if (delta >= MIN_EVENT_NS && !(SKIP_POLL_EVENTS && IS_POLL(key.nr)))
        kd_syscall_event(ctx, tid, key.nr, entry, now);
#endif
    if (!IS_POLL(key.nr))
        return 0;
    if (kd_restarting(ret)) {
        kd_poll_restarts(start, key.nr);
    } else {
        start->poll_ret = now;
#if LONG_POLL
        kd_lp_begin(tid, start, now);
#endif
    }
    return 0;
}

/* ---- Scheduler: on CPU, waiting for a CPU, stopped ------------------- */
/* Attached by user space (Session.attach_scheduler()): as tp_btf programs
 * with TASK_BTF, else as raw tracepoints.  Either way ctx->args[] holds the
 * tracepoint's arguments. */
#define KD_SCHED_PROBE(event) \
    int kd_##event(struct bpf_raw_tracepoint_args *ctx)


static __always_inline void kd_ready_since(void *task, bool new_task)
{
    if (!task)          /* (never; but a tp_btf argument may be NULL) */
        return;

    u64 ids = kd_task_ids(task);

    if (!kd_is_target(ids) || !kd_capturing())
        return;
    /* A wakeup also fires for a task still on its CPU (it set its state
     * to sleep, then found its condition met): it is not waiting. */
    if (kd_task_on_cpu(task))
        return;

    u32 tid = ids;
    struct sched_t *entry = kd_sched_entry(tid);

    /* Keep an older stamp: a wakeup of a task that is already queued
     * (preempted while going to sleep) does not restart its wait. */
    if (entry && !entry->ready_start) {
        u64 now = bpf_ktime_get_ns();

        kd_budget_wakes(tid, entry, now, new_task);
        entry->ready_start = now;
        kd_wait_begins(entry, kd_task_cpu(task), now);
    }
}

/* args: struct task_struct *p */
KD_SCHED_PROBE(sched_wakeup)
{
    kd_ready_since((void *)ctx->args[0], false);
    return 0;
}

KD_SCHED_PROBE(sched_wakeup_new)
{
    kd_ready_since((void *)ctx->args[0], true);
    return 0;
}

/* args: struct task_struct *p, int dest_cpu.  The load balancer moves a
 * queued thread to another CPU's queue: its wait goes on there, so its
 * count and account move too (what its first CPU held it for so far is
 * booked now).  Migrations are rare next to switches; other tasks leave
 * at the test. */
KD_SCHED_PROBE(sched_migrate_task)
{
    if (!kd_capturing())
        return 0;

    void *task = (void *)ctx->args[0];

    if (!task)
        return 0;

    u64 ids = kd_task_ids(task);

    if (!kd_is_target(ids))
        return 0;

    u32 tid = ids;
    struct sched_t *entry = kd_sched_find(tid);

    /* A wakeup places a sleeping thread first: it waits nowhere yet. */
    if (!entry || !entry->wait.cpu)
        return 0;

    u32 from = entry->wait.cpu - 1;
    struct cpu_hold_t *there = cpu_hold.lookup(&from);
    u64 now = bpf_ktime_get_ns();

    if (there && there->window == kd_window_start())
        kd_wait_share(&entry->wait, there, now, true);
    kd_wait_ends(&entry->wait);
    kd_wait_begins(entry, (u32)ctx->args[1], now);
    return 0;
}

/* args: bool preempt, struct task_struct *prev, struct task_struct *next
 * (and unsigned int prev_state since 5.18).  It fires in __schedule()
 * before the switch, so current is still prev. */
KD_SCHED_PROBE(sched_switch)
{
    /* Every switch on the machine comes here: outside a window, leave
     * before reading anything of the tasks. */
    if (!kd_capturing())
        return 0;

    void *next = (void *)ctx->args[2];

    if (!next)
        return 0;

    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 next_ids = kd_task_ids(next);
    u32 cpu = bpf_get_smp_processor_id();
    struct cpu_hold_t *hold = cpu_hold.lookup(&cpu);
    u64 window = kd_window_start();

    if (!(kd_is_target(pid_tgid) || kd_is_target(next_ids))) {
        /* Other tasks' switches only matter to a target thread waiting
         * for this CPU (and the first one in a window, which starts the
         * CPU's account). */
        if (!hold)
            return 0;
        if (hold->waiting > 0 || hold->window != window)
            kd_hold_switch(hold, bpf_ktime_get_ns(), pid_tgid, next_ids,
                           window);
        else if (hold->known)
            hold->known = 0;    /* left out (one store, then none) */
        return 0;
    }

    u64 now = bpf_ktime_get_ns();
    struct sched_t *entry;

    if (hold)
        kd_hold_switch(hold, now, pid_tgid, next_ids, window);

    if (kd_is_target(pid_tgid) && (entry = kd_sched_entry(pid_tgid))) {
        /* The state is read live rather than from the prev_state
         * argument: __schedule() resets it to TASK_RUNNING when a
         * signal is pending, and the task then stays queued.  prev is
         * current here. */
        u64 state = kd_current_state();
        bool preempted = ctx->args[0] & 1;

        kd_close_run(entry, now);
        /* Preempted, or yielding while runnable: still on the run
         * queue, so its wait for a CPU starts now. */
        entry->ready_start = preempted || state == 0 ? now : 0;
        if (entry->ready_start)
            kd_wait_begins(entry, cpu, now);
        /* (An older stop stamp means its end was not reported.) */
        entry->stop_start = !preempted && (state & STOPPED_STATE_MASK) ?
                            now : 0;
        if (!preempted)
            kd_budget_sleeps(pid_tgid, entry, state, now);
    }

    if (!kd_is_target(next_ids))
        return 0;

    u64 start;

    entry = kd_sched_entry(next_ids);
    if (!entry)
        return 0;
    /* Without a stamp at its first switch, next was queued before the
     * window opened: every way onto a run queue inside the window
     * (wakeup, new task, preemption) leaves one. */
    start = kd_period_start(entry, entry->ready_start);
    if (start && now >= start) {
        kd_acc_add(&entry->ready, now - start);
        kd_book_holders(next_ids, entry, hold, cpu, start, now);
        kd_lp_waited(next_ids, hold, start, now);
        kd_hist(next_ids, HIST_READY, now - start);
    }
    kd_wait_ends(&entry->wait);     /* a wait whose start was lost */
    kd_budget_stop_ends(next_ids, entry, now);
    if (entry->stop_start && now >= entry->stop_start)
        kd_acc_add(&entry->stop, now - entry->stop_start);
    entry->ready_start = 0;
    entry->stop_start = 0;
    /* A sleep still open here lost its wakeup: it ended before now, at
     * a time nobody saw, so it is left to "other" rather than booked up
     * to the window's end. */
    entry->budget.sleep_start = 0;
    entry->run_start = now;
    entry->switched = 1;
    return 0;
}

/* Keep the name of thread tid, which is gone from /proc once user space
 * reads it. */
static __always_inline void kd_keep_name(u32 tid)
{
    struct name_t name = {};

    bpf_get_current_comm(&name.comm, sizeof(name.comm));
    kd_check_store(exit_names.update(&tid, &name), COUNTER_NAME_FULL);
}

/* Keep the names of threads that exit inside the window, or while it is
 * being reported (before user space reads /proc). */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 state = kd_capture_state();

    if (!kd_is_target(pid_tgid))
        return 0;

    u32 tid = pid_tgid;
    struct sys_start_t *call = kd_sys_lookup(tid);

    /* Its exit() never returns: a new thread given the same ID in this
     * window must not take that call, or a poll, for its own (its first
     * sys_exit is its return from clone(), with no entry). */
    if (call) {
        call->ts = 0;
        call->poll_ret = 0;
        call->restarting = 0;
    }
    if (state != CAPTURE_RUNNING && state != CAPTURE_HOLD)
        return 0;
    kd_keep_name(tid);
    return 0;
}

/* A thread other than the leader called execve(): the kernel ended the
 * other threads, then gave this one the leader's ID (de_thread()).  Its
 * state moves from its old ID (old_pid) to the new one: the execve() in
 * progress and, in a window, its time on the CPU from now on. */
TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = pid_tgid, old = args->old_pid;

    if (!kd_is_target(pid_tgid) || old == tid)
        return 0;

    struct sys_start_t *from = kd_sys_lookup(old);

    if (from && from->ts) {
        struct sys_start_t *to = kd_sys_entry(tid);

        if (to && to->window == from->window) {
            to->ts = from->ts;
            to->nr = from->nr;
        }
        from->ts = 0;
    }
    if (!kd_capturing())
        return 0;

    u64 now = bpf_ktime_get_ns();
    struct sched_t *entry;

    /* The old ID ran until now, and is gone. */
    kd_seen_running(old);
    entry = kd_sched_find(old);
    if (entry && (entry->run_start || !entry->switched))
        kd_close_run(entry, now);
    /* The new ID (the leader's, which has exited) runs from now on. */
    entry = kd_sched_entry(tid);
    if (entry) {
        entry->run_start = now;
        entry->ready_start = 0;
        entry->stop_start = 0;
        entry->budget.sleep_start = 0;
        entry->switched = 1;
    }
    kd_keep_name(old);
    return 0;
}

/* ---- Interrupts taken while a target thread was on the CPU ----------- */
/* Handlers do not nest on one CPU, so one per-CPU start slot suffices. */

TRACEPOINT_PROBE(irq, irq_handler_entry)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 slot = 0;

    if (!kd_is_target(pid_tgid) || !kd_capturing())
        return 0;

    struct hardirq_start_t *start = hardirq_start.lookup(&slot);

    if (!start)
        return 0;
    kd_seen_running(pid_tgid);
    start->ts = bpf_ktime_get_ns();
    start->irq = args->irq;
    TP_DATA_LOC_READ_STR(&start->name, name, sizeof(start->name));
    return 0;
}

TRACEPOINT_PROBE(irq, irq_handler_exit)
{
    u32 slot = 0;
    struct hardirq_start_t *start = hardirq_start.lookup(&slot);

    if (!start || !start->ts)
        return 0;

    u64 pid_tgid = bpf_get_current_pid_tgid();

    if (kd_is_target(pid_tgid) && kd_capturing()) {
        struct hardirq_key_t key = { .tid = (u32)pid_tgid,
                                     .irq = start->irq };
        struct acc_t zero = {};

        u64 ns = bpf_ktime_get_ns() - start->ts;

        __builtin_memcpy(&key.name, start->name, sizeof(key.name));
        kd_account(hardirq_stats.lookup_or_try_init(&key, &zero), ns,
                   COUNTER_HARDIRQ_FULL);
        kd_lp_irq(key.tid, key.irq, start->name, ns);
    }
    start->ts = 0;
    return 0;
}

/* Soft interrupts run often on every CPU: raw tracepoints, whose only
 * argument is the vector number. */

/* args: unsigned int vec_nr */
RAW_TRACEPOINT_PROBE(softirq_entry)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 slot = 0;

    if (!kd_is_target(pid_tgid) || !kd_capturing())
        return 0;

    struct softirq_start_t *start = softirq_start.lookup(&slot);

    if (!start)
        return 0;
    kd_seen_running(pid_tgid);
    start->ts = bpf_ktime_get_ns();
    start->vec = ctx->args[0];
    return 0;
}

/* args: unsigned int vec_nr */
RAW_TRACEPOINT_PROBE(softirq_exit)
{
    u32 slot = 0;
    struct softirq_start_t *start = softirq_start.lookup(&slot);

    if (!start || !start->ts)
        return 0;

    u64 pid_tgid = bpf_get_current_pid_tgid();

    if (kd_is_target(pid_tgid) && kd_capturing()) {
        struct softirq_key_t key = { .tid = (u32)pid_tgid,
                                     .vec = start->vec };
        struct acc_t zero = {};

        u64 ns = bpf_ktime_get_ns() - start->ts;

        kd_account(softirq_stats.lookup_or_try_init(&key, &zero), ns,
                   COUNTER_SOFTIRQ_FULL);
        kd_lp_irq(key.tid, key.vec, 0, ns);
    }
    start->ts = 0;
    return 0;
}

/* ---- Triggers -------------------------------------------------------- */

static __always_inline int kd_start_trigger_fired(void)
{
    u32 key = 0;
    u64 *state = capture.lookup(&key);

    if (!state)
        return 0;
    if (*state == CAPTURE_HOLD) {
        /* The previous window is still being reported. */
        kd_bump(COUNTER_TRIGGER_MISSED);
        return 0;
    }
    if (*state != CAPTURE_ARMED)
        return 0;

    u32 start_key = 1;
    u64 now = bpf_ktime_get_ns();

    capture.update(&start_key, &now);
    *state = CAPTURE_RUNNING;
    kd_emit(EVENT_START_TRIGGER, now);
    return 0;
}

static __always_inline int kd_stop_trigger_fired(void)
{
    u32 key = 0;
    u64 *state = capture.lookup(&key);

    if (!state || *state != CAPTURE_RUNNING)
        return 0;

    u64 now = bpf_ktime_get_ns();
    u64 pid_tgid = bpf_get_current_pid_tgid();

    /* The window closes with this thread on a CPU: close its run period
     * here, as user space cannot tell one that spans the whole window.
     * (With a stop trigger on sched_switch, prev's period is already
     * closed: nothing to do, and nothing lost.) */
    if (kd_is_target(pid_tgid)) {
        struct sched_t *entry = kd_sched_entry(pid_tgid);

        if (entry && (entry->run_start || !entry->switched))
            kd_close_run(entry, now);
    }

    u32 stop_key = 2;

    /* Stamp before state: user space that sees HOLD can trust the stamp
     * even if the event was lost. */
    capture.update(&stop_key, &now);
    *state = CAPTURE_HOLD;
    kd_emit(EVENT_STOP_TRIGGER, now);
    return 0;
}

@UPCALL_PROBE@
@TRIGGER_FUNCTIONS@
"""

# OVS kernel datapath upcalls, compiled in only when the probe will be
# attached (a kretprobe on ovs_dp_upcall(), which returns 0 or -errno).
UPCALL_SOURCE = """
/* ---- OVS kernel datapath upcalls ------------------------------------- */
/* Upcalls run in the context of whatever received the packet (soft
 * interrupts on any CPU), not in the target's threads: count them all,
 * per CPU and result, while a window is open. */
#include <asm/ptrace.h>     /* struct pt_regs, for PT_REGS_RC() */

struct upcall_key_t {
    u32 cpu;
    s32 result;         /* 0 or -errno */
};

BPF_HASH(upcall_stats, struct upcall_key_t, u64, @UPCALL_KEYS@);

int kd_upcall_return(struct pt_regs *ctx)
{
    if (!kd_capturing())
        return 0;

    struct upcall_key_t key = { .cpu = bpf_get_smp_processor_id(),
                                .result = (int)PT_REGS_RC(ctx) };
    u64 zero = 0;
    u64 *count = upcall_stats.lookup_or_try_init(&key, &zero);

    if (count)
        __sync_fetch_and_add(count, 1);     /* the key is shared */
    else
        kd_bump(COUNTER_UPCALL_FULL);
    return 0;
}
"""

# Generated C for one trigger: the function name is fixed, so no text from
# the command line ever reaches the C source.
TRIGGER_FUNCTION = """
int kd_{role}_trigger(void *ctx)
{{
    return kd_{role}_trigger_fired();
}}
"""


class Event(enum.IntEnum):
    """Ring buffer event types (C: enum event_type)."""
    START_TRIGGER = 0
    STOP_TRIGGER = 1
    SYSCALL = 2


class Capture(enum.IntEnum):
    """Values of the capture map (C: enum capture_state)."""
    PAUSED = 0      # between windows (and at load): triggers are ignored
    ARMED = 1       # waiting for a start trigger to open a window
    RUNNING = 2     # inside a window
    HOLD = 3        # window being reported: start triggers count as missed


class Counter(enum.IntEnum):
    """Per-CPU loss counters (C: enum counter)."""
    RINGBUF_FULL = 0
    TRIGGER_MISSED = 1
    SYS_START_FULL = 2
    SYS_STATS_FULL = 3
    POLL_FULL = 4
    HARDIRQ_FULL = 5
    SOFTIRQ_FULL = 6
    NAME_FULL = 7
    SCHED_FULL = 8
    SCHED_LOST = 9
    BLOCKED_FULL = 10
    HIST_FULL = 11
    STACK_LOST = 12
    UPCALL_FULL = 13
    LONG_POLL_UNSHOWN = 14      # --long-poll: over the rate limit
    LONG_POLL_FULL = 15
    # Not bumped by the program: the kernel's count of calls to the tool's
    # programs that it skipped (recursion_misses, read from their fdinfo).
    PROGRAM_SKIPPED = 16


def c_enum(enum_class, prefix):
    """The body of a C enum mirroring a Python IntEnum."""
    return "\n".join("    {}{} = {},".format(prefix, member.name, member.value)
                     for member in enum_class)


# What each table-full counter is about, for the warnings.
COUNTER_TABLES = {
    Counter.SYS_START_FULL: "system call start",
    Counter.SYS_STATS_FULL: "system call statistics",
    Counter.POLL_FULL: "poll gap",
    Counter.HARDIRQ_FULL: "hard IRQ",
    Counter.SOFTIRQ_FULL: "soft IRQ",
    Counter.NAME_FULL: "exited thread name",
    Counter.SCHED_FULL: "scheduler state",
    Counter.BLOCKED_FULL: "blocked time",
    Counter.HIST_FULL: "histogram",
    Counter.UPCALL_FULL: "upcall statistics",
    Counter.LONG_POLL_FULL: "long poll interval",
}


TOKEN = re.compile(r"@([A-Z_]+)@")


def render_template(template, values):
    """Replace every @TOKEN@ of template from values, in one pass."""
    missing = sorted(set(TOKEN.findall(template)) - set(values))
    if missing:
        raise TemplateError("no value for template tokens: {}".format(
            missing))
    text = TOKEN.sub(lambda match: str(values[match.group(1)]), template)
    if TOKEN.search(text):
        raise TemplateError("template token left in the C source")
    return text


def render_bpf_source(pid, layout, poll_nrs, page_count=1024,
                      max_threads=4096, triggers=(), restart_nr=-1,
                      histogram=False, event_min_ns=None,
                      skip_poll_events=False, stack_size=0,
                      upcall_keys=0, tracer_nrs=(-1, -1), cpus=None,
                      long_poll_ns=None, current_btf=False,
                      task_btf=False, direct_slots=None):
    """The complete eBPF C program.

    layout is a TaskLayout; with source "headers" the offsets come from
    the kernel headers at compile time instead.  triggers lists the roles
    ("start", "stop") that get a trigger function; restart_nr is the number
    of restart_syscall(), -1 if there is none; histogram adds the
    --histogram tables.

    event_min_ns: None, or emit an event for each system call that took at
    least that long (poll() and ppoll() left out with skip_poll_events),
    with its stacks when stack_size (entries of the stack map) is not 0.
    upcall_keys: 0, or the size of the upcall table, which adds the
    ovs_dp_upcall() return probe.  tracer_nrs: the numbers of uretprobe()
    and uprobe() (-1: none), which are never counted.  cpus: the number of
    possible CPUs (their highest number + 1), by default this machine's.
    long_poll_ns: None, or catch the intervals between two poll() calls
    of a thread this long (--long-poll).  current_btf: read the current
    task's fields with plain loads through bpf_get_current_task_btf()
    (see current_task_btf_supported()).  task_btf: the scheduler probes
    are tp_btf programs (see task_btf_supported()).  direct_slots: the
    entries of the direct-mapped table of system call entries (a power of
    two, or 0 for none), by default max_threads rounded up to a power of
    two.
    """
    if layout.source == "headers":
        headers = "#include <linux/sched.h>"
        offsets = {"TASK_PID_OFF": "offsetof(struct task_struct, pid)",
                   "TASK_TGID_OFF": "offsetof(struct task_struct, tgid)",
                   "TASK_STATE_OFF": "offsetof(struct task_struct, "
                                     "TASK_STATE_MEMBER)",
                   "TASK_STATE_TYPE": "u64"}
        headers += ("\n#include <linux/version.h>\n"
                    "#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 14, 0)\n"
                    "#define TASK_STATE_MEMBER __state\n#else\n"
                    "#define TASK_STATE_MEMBER state\n#endif\n"
                    "#ifdef CONFIG_SMP\n#define KD_ON_CPU 1\n"
                    "#define KD_ON_CPU_OFF offsetof(struct task_struct, "
                    "on_cpu)\n#else\n#define KD_ON_CPU 0\n"
                    "#define KD_ON_CPU_OFF 0\n#endif")
        offsets["HAVE_ON_CPU"] = "KD_ON_CPU"
        offsets["TASK_ON_CPU_OFF"] = "KD_ON_CPU_OFF"
        headers += ("\n#ifndef CONFIG_SMP\n#define KD_TASK_CPU_OFF 0\n"
                    "#elif LINUX_VERSION_CODE >= KERNEL_VERSION(5, 16, 0)\n"
                    "#define KD_TASK_CPU_OFF offsetof(struct task_struct, "
                    "thread_info.cpu)\n#else\n#define KD_TASK_CPU_OFF "
                    "offsetof(struct task_struct, cpu)\n#endif")
        offsets["HAVE_TASK_CPU"] = "KD_ON_CPU"
        offsets["TASK_CPU_OFF"] = "KD_TASK_CPU_OFF"
        headers += ("\n#if defined(__TARGET_ARCH_x86)\n#define KD_REGS_NR 1\n"
                    "#define KD_REGS_NR_OFF offsetof(struct pt_regs, "
                    "orig_ax)\n#elif defined(__TARGET_ARCH_arm64)\n"
                    "#define KD_REGS_NR 1\n#define KD_REGS_NR_OFF "
                    "offsetof(struct pt_regs, syscallno)\n#else\n"
                    "#define KD_REGS_NR 0\n#define KD_REGS_NR_OFF 0\n"
                    "#endif")
        offsets["HAVE_REGS_NR"] = "KD_REGS_NR"
        offsets["REGS_NR_OFF"] = "KD_REGS_NR_OFF"
        offsets["REGS_NR_TYPE"] = "long"
        headers += ("\n#if defined(__TARGET_ARCH_x86)\n#define KD_COMPAT 1\n"
                    "#define KD_COMPAT_OFF offsetof(struct task_struct, "
                    "thread_info.status)\n#else\n#define KD_COMPAT 0\n"
                    "#define KD_COMPAT_OFF 0\n#endif")
        offsets["HAVE_COMPAT"] = "KD_COMPAT"
        offsets["TASK_COMPAT_OFF"] = "KD_COMPAT_OFF"
        offsets["TASK_STATE_TYPE"] = (
            "typeof(((struct task_struct *)0)->TASK_STATE_MEMBER)")
    else:
        state_types = {4: "u32", 8: "u64"}
        if layout.state_size not in state_types:
            raise ValueError("unexpected task state size {}"
                             .format(layout.state_size))
        headers = ""
        offsets = {"TASK_PID_OFF": layout.pid_offset,
                   "TASK_TGID_OFF": layout.tgid_offset,
                   "TASK_STATE_OFF": layout.state_offset,
                   "TASK_STATE_TYPE": state_types[layout.state_size],
                   "HAVE_ON_CPU": int(layout.on_cpu_offset is not None),
                   "TASK_ON_CPU_OFF": layout.on_cpu_offset or 0,
                   "HAVE_REGS_NR": int(layout.regs_nr_offset is not None),
                   "REGS_NR_OFF": layout.regs_nr_offset or 0,
                   "REGS_NR_TYPE": {4: "s32", 8: "s64"}[
                       layout.regs_nr_size],
                   "HAVE_COMPAT": int(layout.compat_offset is not None),
                   "TASK_COMPAT_OFF": layout.compat_offset or 0,
                   "HAVE_TASK_CPU": int(layout.cpu_offset is not None),
                   "TASK_CPU_OFF": layout.cpu_offset or 0}
    if not poll_nrs:
        raise ValueError("no poll() system call numbers")
    values = {
        "HEADERS": headers,
        "MONITOR_TGID": int(pid),
        "MAX_THREADS": int(max_threads),
        "MAX_SYS_KEYS": 16 * int(max_threads),
        "MAX_IRQ_KEYS": 4 * int(max_threads),
        "MAX_HOLDER_KEYS": 8 * int(max_threads),
        "MAX_CPUS": int(cpus or possible_cpus()),
        "CURRENT_BTF": int(bool(current_btf)),
        "TASK_BTF": int(bool(task_btf)),
        "DIRECT_SLOTS": (round_up_pow2(int(max_threads))
                         if direct_slots is None else int(direct_slots)),
        "HISTOGRAM": int(bool(histogram)),
        "RINGBUF_PAGES": round_up_pow2(int(page_count)),
        "POLL_TEST": " || ".join("(nr) == {}".format(int(nr))
                                 for nr in poll_nrs),
        "RESTART_NR": int(restart_nr),
        "COMPAT_NR": "0x{:x}".format(COMPAT_NR),
        "URETPROBE_NR": int(tracer_nrs[0]),
        "UPROBE_NR": int(tracer_nrs[1]),
        "EVENT_ENUM": c_enum(Event, "EVENT_"),
        "COUNTER_ENUM": c_enum(Counter, "COUNTER_"),
        "CAPTURE_ENUM": c_enum(Capture, "CAPTURE_"),
        "COUNTER_COUNT": len(Counter),
        "TRIGGER_FUNCTIONS": "".join(TRIGGER_FUNCTION.format(role=role)
                                     for role in triggers),
        "SYSCALL_EVENTS": int(event_min_ns is not None),
        "MAX_SHOWN_EVENTS": MAX_SHOWN_EVENTS,
        "MIN_EVENT_NS": int(event_min_ns or 0),
        "SKIP_POLL_EVENTS": int(bool(skip_poll_events)),
        "STACK_TRACES": int(event_min_ns is not None and stack_size > 0),
        "STACK_TRACE_SIZE": max(1, int(stack_size)),
        "LONG_POLL": int(long_poll_ns is not None),
        "LONG_POLL_NS": int(long_poll_ns or 0),
        "LONG_POLL_RATE": LONG_POLL_RATE,
        "UPCALL_PROBE": render_template(UPCALL_SOURCE, {
            "UPCALL_KEYS": int(upcall_keys)}) if upcall_keys else "",
    }
    values.update(offsets)
    return render_template(EBPF_SOURCE, values)


# ---- Data model -------------------------------------------------------------

@dataclass
class Acc:
    """count, total, min and max of a set of durations (ns)."""
    count: int = 0
    total: int = 0
    min: int = 0
    max: int = 0

    @classmethod
    def of(cls, row):
        """The Acc of a struct acc_t record, by field name."""
        return cls(row.count, row.total, row.min, row.max)

    @property
    def average(self):
        return self.total // self.count if self.count else 0

    def add(self, delta):
        self.count += 1
        self.total += delta
        self.min = delta if self.count == 1 else min(self.min, delta)
        self.max = max(self.max, delta)

    def __add__(self, other):
        """Both sets of durations in one (two rows of one key)."""
        return Acc(self.count + other.count, self.total + other.total,
                   min(self.min, other.min), max(self.max, other.max))


@dataclass
class ThreadStats:
    """Everything recorded for one thread during one window."""
    tid: int
    name: str = ""
    syscalls: Dict[int, Acc] = field(default_factory=dict)
    poll: Optional[Acc] = None
    run: Optional[Acc] = None
    ready: Optional[Acc] = None
    stopped: Optional[Acc] = None
    lost: int = 0       # switches the kernel did not report
    hardirqs: Dict[str, Acc] = field(default_factory=dict)
    softirqs: Dict[int, Acc] = field(default_factory=dict)
    # Time budget inputs (see thread_budget()).
    blocked: Dict[int, int] = field(default_factory=dict)  # nr -> ns asleep
    unknown: int = 0        # ns asleep in a call the kernel side did not name
    stop_ready: int = 0     # stopped time also counted as ready
    in_call: Optional[Tuple[int, int]] = None   # (nr, entry ns) at the end
    call_done: bool = False     # left the call it was in at the start
    holders: Dict[int, "Holder"] = field(default_factory=dict)  # by pid
    # Who held its CPUs while it waited, besides the named holders: ns by
    # class of task (HELD_KINDS); and waits spent queued on a CPU other
    # than the one it was counted on, which no account covers.
    held: Dict[str, int] = field(default_factory=dict)
    moved: int = 0
    # --histogram: log2 slot -> count, per system call and for ready waits.
    sys_hist: Dict[int, Dict[int, int]] = field(default_factory=dict)
    ready_hist: Dict[int, int] = field(default_factory=dict)


# Plain data, computed by pure functions from ThreadStats (thread_budget(),
# make_verdict()) and formatted separately, so that other output formats
# can use them as they are.

NR_OUTSIDE = -1     # "system call" number of sleeps outside system calls

# The classes of tasks that hold a CPU a thread waits for, in the order of
# the C enum hold_kind.
HELD_KINDS = ("target", "other", "idle")


@dataclass
class Holder:
    """A task that ran on the CPU a thread was waiting for."""
    pid: int            # thread ID (0: the idle task)
    tgid: int           # its process
    comm: str
    ns: int             # time it ran while the thread waited
    kind: str = ""      # its class (HELD_KINDS), "" if not known


@dataclass
class BlockedIn:
    """Time a thread slept inside one system call."""
    nr: int             # NR_OUTSIDE: asleep outside system calls
    name: str
    ns: int


@dataclass
class InFlight:
    """A system call still in progress when the window closed."""
    nr: int
    name: str
    ns: int                 # the part inside the window
    before_window: bool     # entered before the window opened


@dataclass
class Budget:
    """Where one thread's time went during one window (ns).

    on_cpu + ready + blocked + stopped + other == window; hardirq and
    softirq are parts of on_cpu.  other is what no probe accounts for: the
    time before a thread was created or after it exited, and periods the
    kernel did not report.
    """
    tid: int
    name: str
    window: int
    on_cpu: int = 0
    hardirq: int = 0
    softirq: int = 0
    ready: int = 0
    blocked: int = 0
    stopped: int = 0
    other: int = 0
    blocked_in: List[BlockedIn] = field(default_factory=list)  # largest 1st
    in_flight: List[InFlight] = field(default_factory=list)
    quiet: bool = False     # no events: one state for the whole window

    @property
    def kernel(self):
        """Delay the kernel caused: waiting for a CPU, interrupts, stops."""
        return self.ready + self.hardirq + self.softirq + self.stopped

    def percent(self, ns):
        return 100.0 * ns / self.window if self.window > 0 else 0.0


@dataclass
class Thresholds:
    """When the verdict speaks up: a share of the window, in percent, and
    an amount (the floor, in ns), both reached.  A few microseconds of
    ordinary wakeup latency are a large share of a 64 us window, and no
    one's problem.  Windows shorter than min_window are not judged."""
    ready: float = 5.0
    irq: float = 5.0
    stopped: float = 1.0
    ready_floor: int = 1000000
    irq_floor: int = 1000000
    stopped_floor: int = 1000000
    min_window: int = 5000000


@dataclass(frozen=True)
class ThreadSelection:
    """--threads: the threads a report covers, by TID or by a glob on
    the name (as the report prints it)."""
    text: str
    tids: frozenset = frozenset()
    globs: Tuple[str, ...] = ()

    def matches(self, tid, name):
        return tid in self.tids or any(fnmatch.fnmatchcase(name, glob)
                                       for glob in self.globs)


@dataclass
class StopSignal:
    """A stop signal sent to the target during the window."""
    sig: int
    name: str           # SIGSTOP, ...
    sender: int         # thread ID of the sender
    tgid: int
    comm: str
    count: int
    last: int = 0       # CLOCK_MONOTONIC ns of the last one (--long-poll)


@dataclass
class Finding:
    """One thing the verdict says about one thread."""
    tid: int
    name: str
    kind: str           # "cpu", "irq" or "stopped"
    ns: int
    percent: float      # of the window
    threshold: float    # percent that fired
    text: str           # the finding in plain words
    next_step: str      # what to look at next
    holders: List[Holder] = field(default_factory=list)         # cpu
    # cpu: ns by class of holder (HELD_KINDS) beyond the named holders,
    # and the share of the wait nobody was recorded for (moved: of it,
    # while queued on another CPU than counted on).
    rest: Dict[str, int] = field(default_factory=dict)
    unattributed: int = 0
    moved: int = 0
    sources: List[Tuple[str, int]] = field(default_factory=list)  # irq
    signals: List[StopSignal] = field(default_factory=list)     # stopped


@dataclass
class Ranked:
    tid: int
    name: str
    kernel: int         # ns of kernel-caused delay
    percent: float


@dataclass
class Verdict:
    window: int
    thresholds: Thresholds
    ranking: List[Ranked] = field(default_factory=list)
    findings: List[Finding] = field(default_factory=list)
    too_short: bool = False     # shorter than thresholds.min_window


@dataclass(frozen=True)
class TaskLayout:
    """Where the task_struct fields the program reads are."""
    pid_offset: int
    tgid_offset: int
    state_offset: int
    state_size: int
    source: str = "btf"
    on_cpu_offset: Optional[int] = None     # absent on UP kernels
    # The system call number in struct pt_regs.
    regs_nr_offset: Optional[int] = None
    regs_nr_size: int = 8
    # thread_info.status in task_struct (x86), whose TS_COMPAT bit marks
    # an ia32 system call.
    compat_offset: Optional[int] = None
    # The CPU whose run queue the task is on (absent on UP kernels).
    cpu_offset: Optional[int] = None
    # (event, BTF id of its btf_trace_<event> typedef) of SCHED_EVENTS,
    # what a tp_btf program names to attach; () when BTF lacks one.
    sched_btf_ids: Tuple[Tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Trigger:
    """A parsed --start-trigger / --stop-trigger."""
    text: str
    kind: str            # usdt, tracepoint, kprobe, kretprobe, uprobe, ...
    target: str          # provider, system, library or "" (executable)
    name: str            # probe, event or function


@dataclass
class SyscallEvent:
    """One system call reported by --syscall-events."""
    entry: int          # CLOCK_MONOTONIC ns
    exit: int
    tid: int
    nr: int
    kernel_stack: int = -1      # id in the stack map; < 0: -errno, lost
    user_stack: int = -1


@dataclass
class EventLog:
    """The --syscall-events of one window, with their stacks symbolized."""
    events: List[SyscallEvent] = field(default_factory=list)
    more: int = 0               # events after the first MAX_SHOWN_EVENTS,
    #                             counted only (in the kernel or here)
    stacks: bool = False        # stacks were recorded
    kernel_stacks: Dict[int, List[str]] = field(default_factory=dict)
    user_stacks: Dict[int, List[str]] = field(default_factory=dict)
    names: Dict[int, str] = field(default_factory=dict)     # tid -> name


@dataclass
class UpcallStats:
    """ovs_dp_upcall() results in one window, in total and per CPU."""
    total: int = 0
    successful: int = 0
    failed: int = 0
    total_per_cpu: Dict[int, int] = field(default_factory=dict)
    successful_per_cpu: Dict[int, int] = field(default_factory=dict)
    failed_per_cpu: Dict[int, int] = field(default_factory=dict)
    errors: Dict[int, int] = field(default_factory=dict)    # errno -> n
    errors_per_cpu: Dict[int, Dict[int, int]] = field(default_factory=dict)


@dataclass
class Window:
    """One sample window as seen by the sampling loop."""
    start_ts: Optional[int] = None    # trigger timestamps (CLOCK_MONOTONIC)
    stop_ts: Optional[int] = None
    # Where the window really opened and closed (CLOCK_MONOTONIC ns), and
    # the wall clock of the report lines that said so.
    open_ns: Optional[int] = None
    close_ns: Optional[int] = None
    opened: Optional[datetime.datetime] = None
    closed: Optional[datetime.datetime] = None
    dumped: Optional[datetime.datetime] = None
    # Why it closed: "time", "trigger", "interrupted" or "process exited".
    end: str = "time"

    @property
    def delta(self):
        if self.start_ts is None or self.stop_ts is None:
            return None
        return self.stop_ts - self.start_ts


@dataclass
class Skipped:
    """Windows shorter than --trigger-delta since the last summary of them.
    A frequent trigger makes thousands a second: one line (or JSON
    document) per window filled the disk, one per --skipped-interval does
    not."""
    count: int = 0
    shortest: int = 0       # stop-start deltas, ns
    longest: int = 0
    first: Optional[datetime.datetime] = None   # the first one opened
    last: Optional[datetime.datetime] = None    # the last one closed
    first_ns: int = 0       # ... on CLOCK_MONOTONIC
    last_ns: int = 0
    since: float = 0.0      # time.monotonic() of the first one


@dataclass
class Header:
    """What makes a report stand alone: tool, host and target process."""
    command: tuple                      # argv, program name first
    host: str
    kernel: str                         # uname -r
    machine: str                        # uname -m
    cpus: int
    load: tuple                         # 1, 5 and 15 minute load averages
    pid: int
    name: str                           # as ps -e shows it, printable
    exe: Optional[str] = None
    started: Optional[datetime.datetime] = None
    version: Optional[str] = None       # of an OVS or OVN daemon
    version_error: Optional[str] = None     # why version is missing
    tool_version: str = __version__


@dataclass
class Sample:
    """One reported window: everything both report formats show."""
    number: int                         # 1 for the first reported window
    window: Window
    threads: Dict[int, ThreadStats]
    quiet: list = field(default_factory=list)   # (tid, name, where)
    losses: Dict[str, int] = field(default_factory=dict)   # in the window
    budgets: Dict[int, Budget] = field(default_factory=dict)   # by tid
    verdict: Optional[Verdict] = None
    events: Optional["EventLog"] = None     # with --syscall-events
    upcalls: Optional["UpcallStats"] = None     # when the probe is attached
    notes: List[str] = field(default_factory=list)  # parts that failed


@dataclass(frozen=True)
class Target:
    """The monitored process, as identified when the run starts."""
    pid: int
    name: str = "?"
    exe: Optional[str] = None
    start_time: Optional[float] = None  # its psutil create_time


@dataclass
class RunContext:
    """What one run learns before it compiles, passed to what needs it
    (the options stay on the argparse namespace, as parsed)."""
    target: Target          # pid 0 for --ebpf without -p
    syscall_names: Dict[int, str] = field(default_factory=dict)   # by nr
    poll_nrs: Tuple[int, ...] = ()      # the poll() calls (poll_syscalls())
    layout: Optional[TaskLayout] = None     # where task_struct's fields are
    triggers: List[Tuple[str, "Trigger"]] = field(default_factory=list)
    upcalls: bool = False   # the upcall probe is compiled in, to attach
    # The scheduler probes are tp_btf programs (task_btf_supported()).
    task_btf: bool = False
    max_threads: int = 0    # entries of the per-thread tables

    @property
    def pid(self):
        return self.target.pid


@dataclass(frozen=True)
class Task:
    """One thread as /proc showed it at one moment (task_snapshot())."""
    tid: int
    name: Optional[str]         # printable
    state: str                  # R, S, D, T, ... or ""
    syscall: object             # nr it is blocked in, "running" or None
    started: Optional[float] = None     # seconds after boot


# A --long-poll catch as the kernel side sent it (struct lp_event_t, its
# shared u64 split into tid and long_nr); lp is a struct lp_t record.
Catch = collections.namedtuple("Catch", "end tid long_nr long_ns run ready "
                               "stop stop_ready lp")


@dataclass
class LongPoll:
    """One caught interval between two poll() calls of a thread."""
    number: int             # 1 for the first one reported
    tid: int
    name: str
    start: int              # CLOCK_MONOTONIC ns: its poll() returned
    end: int                # its next poll() entered
    budget: Budget
    verdict: Verdict
    longest: Optional[BlockedIn] = None     # its longest system call
    start_time: Optional[datetime.datetime] = None
    end_time: Optional[datetime.datetime] = None
    not_shown: int = 0      # intervals over the rate limit before it


# ---- Command line -----------------------------------------------------------

def unsigned_int(text):
    """argparse type: an integer >= 0, in ASCII decimal digits."""
    if not re.match(r"-?[0-9]+\Z", text.strip()):
        raise argparse.ArgumentTypeError("'{}' is not an integer"
                                         .format(text))
    value = int(text, 10)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def bounded(kind, limit):
    """argparse type: kind, at most limit."""
    def check(text):
        value = kind(text)
        if value > limit:
            raise argparse.ArgumentTypeError("must be at most {}".format(
                limit))
        return value
    return check


def debug_flags(text):
    """argparse type: BCC debug flags, decimal or 0x hexadecimal."""
    if re.match(r"0[xX][0-9a-fA-F]+\Z", text.strip()):
        return int(text, 16)
    return unsigned_int(text)


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = unsigned_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text, positive=False):
    """argparse type: a duration in seconds, >= 0 (> 0 with positive: then
    -1, 0 and nan break one rule and get one message)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("'{}' is not a number of seconds"
                                         .format(text))
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number {} 0"
                                         .format(">" if positive else ">="))
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError("must be at most {} (30 days)"
                                         .format(MAX_SECONDS))
    return value


def percent(text):
    """argparse type: a share in percent, 0 to 100."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("'{}' is not a number".format(text))
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("must be between 0 and 100")
    return value


def milliseconds(text):
    """argparse type: a duration in milliseconds, >= 0; returns ns."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("'{}' is not a number of "
                                         "milliseconds".format(text))
    if not 0 <= value <= MAX_SECONDS * 1000:
        raise argparse.ArgumentTypeError("must be a number from 0 to {}"
                                         .format(MAX_SECONDS * 1000))
    return int(round(value * 10 ** 6))


def positive_seconds(text):
    """argparse type: a duration in seconds, > 0."""
    return seconds(text, positive=True)


def file_name(text):
    """argparse type: a file name; an empty one is a mistake (a variable
    that was not set), not standard output."""
    if not text:
        raise argparse.ArgumentTypeError("must name a file")
    return text


def direct_slots(text):
    """argparse type: 0 or a power of two up to MAX_THREADS."""
    value = unsigned_int(text)
    if value > MAX_THREADS or value & (value - 1):
        raise argparse.ArgumentTypeError(
            "must be 0 or a power of two up to {}".format(MAX_THREADS))
    return value


def table_threads(count):
    """The threads the tables hold (--max-threads by default) for a
    target that has count threads when the run starts."""
    return min(MAX_THREADS, max(MIN_TABLE_THREADS, round_up_pow2(2 * count)))


def table_warning(count, room):
    """The warning, before the first window, that a target of count
    threads may not fit in tables of room threads; None if it fits."""
    if 2 * count <= room:
        return None
    if count <= room:
        risk = "threads it starts during the run may not fit"
    else:
        risk = "{:,} of them will not fit".format(count - room)
    enough = min(MAX_THREADS, round_up_pow2(2 * count))
    if enough > room:
        fix = "avoid it with --max-threads {}".format(enough)
    else:
        fix = "the tables hold {:,} threads at most".format(MAX_THREADS)
    return ("# WARNING: the target has {:,} threads and the tables have "
            "room for {:,}: {}; what does not fit is missing from the "
            "report and counted at the end; {}.".format(count, room, risk,
                                                        fix))


def thread_selection(text):
    """argparse type: --threads, comma separated TIDs and name globs."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise argparse.ArgumentTypeError(
            "'{}' is not a list of thread IDs and name patterns".format(
                text))
    tids = [item for item in items if re.match(r"[0-9]+\Z", item)]
    return ThreadSelection(text=text, tids=frozenset(map(int, tids)),
                           globs=tuple(item for item in items
                                       if item not in tids))


def round_up_pow2(value):
    """The smallest power of two >= value (value >= 1)."""
    return 1 << (max(1, value) - 1).bit_length()


TRIGGER_KINDS = {
    "u": "usdt", "usdt": "usdt",
    "t": "tracepoint", "trace": "tracepoint",
    "k": "kprobe", "kprobe": "kprobe",
    "kr": "kretprobe", "kretprobe": "kretprobe",
    "up": "uprobe", "uprobe": "uprobe",
    "ur": "uretprobe", "upr": "uretprobe", "uretprobe": "uretprobe",
}

C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Kernel and user symbols: identifiers plus compiler suffixes such as
# foo.isra.0, foo.constprop.0 or foo.cold.
SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\Z")
LIBRARY = re.compile(r"[A-Za-z0-9_.+/-]+\Z")


def parse_trigger(text):
    """Parse a trigger specification; raises ArgumentTypeError."""
    fields = text.split(":")
    kind = TRIGGER_KINDS.get(fields[0])
    if kind is None:
        raise argparse.ArgumentTypeError(
            "'{}': unknown trigger type '{}'; use one of u, t, k, kr, up, ur"
            .format(text, fields[0]))
    shapes = {
        "usdt": ((3, "u:PROVIDER:PROBE"),),
        "tracepoint": ((3, "t:SYSTEM:EVENT"),),
        "kprobe": ((2, "k:FUNCTION"),),
        "kretprobe": ((2, "kr:FUNCTION"),),
        "uprobe": ((2, "up:FUNCTION"), (3, "up:LIBRARY:FUNCTION")),
        "uretprobe": ((2, "ur:FUNCTION"), (3, "ur:LIBRARY:FUNCTION")),
    }[kind]
    if len(fields) not in [count for count, _ in shapes]:
        raise argparse.ArgumentTypeError(
            "'{}': wrong number of fields; expected {}".format(
                text, " or ".join(form for _, form in shapes)))

    if kind in ("usdt", "tracepoint"):
        target, name = fields[1], fields[2]
        checks = ((target, C_IDENT), (name, C_IDENT))
    elif len(fields) == 3:
        target, name = fields[1], fields[2]
        checks = ((target, LIBRARY), (name, SYMBOL))
    else:
        target, name = "", fields[1]
        checks = ((name, SYMBOL),)
    for value, pattern in checks:
        if not pattern.match(value):
            raise argparse.ArgumentTypeError(
                "'{}': '{}' is not a valid name".format(text, value))
    return Trigger(text=text, kind=kind, target=target, name=name)


EXAMPLES = """examples:
  ./kernel_delay.py                      # 0.5 s window on ovs-vswitchd
  ./kernel_delay.py -p 1234 --sample-time 2
                                         # 2 s window on process 1234
  ./kernel_delay.py --process ovsdb-server
                                         # on the ovsdb-server
  ./kernel_delay.py --format json --output kd.json --sample-count 10
                                         # ten windows as JSON Lines
  ./kernel_delay.py --sample-count 5 --sample-interval 1
                                         # five windows, 1 s apart
  ./kernel_delay.py --start-trigger u:udpif_revalidator:start_dump \\
                    --stop-trigger u:udpif_revalidator:sweep_done
                                         # one revalidator round
  ./kernel_delay.py --start-trigger up:bridge_run \\
                    --stop-trigger ur:bridge_run --trigger-delta 1000000
                                         # bridge_run() calls over 1 ms
  ./kernel_delay.py --long-poll 1000     # explain each poll interval of
                                         # 1 s or more, as it happens
  ./kernel_delay.py -s 1000000 --skip-syscall-poll-events
                                         # and each system call over 1 ms,
                                         # with its stacks

triggers:
  u:PROVIDER:PROBE      USDT probe        t:SYSTEM:EVENT    tracepoint
  k:FUNCTION            kprobe            kr:FUNCTION       kretprobe
  up:[LIBRARY:]FUNCTION uprobe            ur:[LIBRARY:]FUNCTION  uretprobe

exit codes:
""" + "".join("  {:3}  {}\n".format(code, text)
              for code, text in sorted(EXIT_CODES.items()))


def build_parser():
    parser = argparse.ArgumentParser(
        description="Show where the threads of ovs-vswitchd (or any "
                    "process) spend their time:\nsystem calls, poll() gaps, "
                    "CPU, run queue, stops and interrupts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("-p", "--pid", type=positive_int, metavar="PID",
                        help="process to monitor, by process ID")
    target.add_argument("--process", metavar="NAME",
                        help="process to monitor, by name (the single one "
                             "running), default ovs-vswitchd")
    parser.add_argument("--sample-time", type=positive_seconds, default=None,
                        metavar="SECONDS",
                        help="length of a window, default 0.5")
    parser.add_argument("--sample-count", type=unsigned_int, default=None,
                        metavar="RUNS", help="windows to report, default 1 "
                                             "(--long-poll: intervals, "
                                             "default 0: until Ctrl-C)")
    parser.add_argument("--sample-interval", type=seconds, default=None,
                        metavar="SECONDS",
                        help="pause between windows, default 0")
    parser.add_argument("--start-trigger", type=parse_trigger,
                        metavar="TRIGGER",
                        help="open a window when TRIGGER fires")
    parser.add_argument("--stop-trigger", type=parse_trigger,
                        metavar="TRIGGER",
                        help="close the window when TRIGGER fires")
    parser.add_argument("--trigger-delta", type=unsigned_int, nargs="?",
                        const=0, default=0, metavar="DURATION_NS",
                        help="skip (and do not count) triggered windows "
                             "shorter than DURATION_NS, default 0")
    parser.add_argument("--skipped-interval", type=positive_seconds,
                        default=10, metavar="SECONDS",
                        help="sum up the windows --trigger-delta skips "
                             "every SECONDS, default 10")
    parser.add_argument("--buffer-page-count",
                        type=bounded(positive_int, MAX_PAGES),
                        default=1024, metavar="NUMBER",
                        help="ring buffer pages (rounded up to a power of "
                             "two), default 1024, at most {}".format(
                                 MAX_PAGES))
    parser.add_argument("--max-threads",
                        type=bounded(positive_int, MAX_THREADS),
                        metavar="THREADS",
                        help="threads the tables hold, default twice the "
                             "target's (at least {}), at most {}".format(
                                 MIN_TABLE_THREADS, MAX_THREADS))
    parser.add_argument("--threads", type=thread_selection,
                        metavar="PATTERN",
                        help="report only these threads: comma separated "
                             "thread IDs and name globs, such as "
                             "'ovs-vswitchd,handler*'; with it, every "
                             "chosen thread gets its block (without it, "
                             "the {} most affected do)".format(BLOCKS_SHOWN))
    parser.add_argument("--format", choices=("text", "json"),
                        default="text",
                        help="report format: text tables, or JSON Lines "
                             "(one document per window), default text")
    parser.add_argument("--output", type=file_name, metavar="FILE",
                        help="write the report to FILE instead of standard "
                             "output")
    parser.add_argument("--json-schema", action="store_true",
                        help="print the JSON Schema of --format json and "
                             "exit")
    parser.add_argument("--histogram", action="store_true",
                        help="add log2 histograms of system call durations "
                             "and waits for a CPU, per thread")
    parser.add_argument("--ready-threshold", type=percent, default=5.0,
                        metavar="PCT",
                        help="verdict: waiting for a CPU for PCT %% of the "
                             "window is CPU contention, default 5")
    parser.add_argument("--irq-threshold", type=percent, default=5.0,
                        metavar="PCT",
                        help="verdict: PCT %% of the window in hard and soft "
                             "interrupts is interrupt load, default 5")
    parser.add_argument("--stopped-threshold", type=percent, default=1.0,
                        metavar="PCT",
                        help="verdict: stopped for PCT %% of the window is "
                             "worth a line, default 1")
    floors = Thresholds()
    for option, ns, what in (
            ("--ready-floor", floors.ready_floor, "waiting for a CPU"),
            ("--irq-floor", floors.irq_floor, "time in interrupts"),
            ("--stopped-floor", floors.stopped_floor, "time stopped")):
        parser.add_argument(option, type=milliseconds, default=ns,
                            metavar="MS",
                            help="verdict: {} must also reach MS "
                                 "milliseconds to be a finding, default "
                                 "{:g}".format(what, ns / 1e6))
    parser.add_argument("--min-window", type=milliseconds,
                        default=floors.min_window, metavar="MS",
                        help="verdict: windows shorter than MS "
                             "milliseconds are too short to judge, "
                             "default {:g}".format(floors.min_window / 1e6))
    parser.add_argument("-s", "--syscall-events", type=unsigned_int,
                        nargs="?", const=0, default=None,
                        metavar="DURATION_NS",
                        help="also list each system call that took longer "
                             "than DURATION_NS (every one without a value), "
                             "with its stacks")
    parser.add_argument("--skip-syscall-poll-events", action="store_true",
                        help="leave poll() and ppoll() out of "
                             "--syscall-events")
    parser.add_argument("--stack-trace-size",
                        type=bounded(unsigned_int, MAX_STACKS),
                        metavar="N",
                        help="distinct stacks --syscall-events can record "
                             "in a window, default {}, at most {}; 0: no "
                             "stacks".format(DEFAULT_STACKS, MAX_STACKS))
    parser.add_argument("--skip-upcall-stats", action="store_true",
                        help="do not count the OVS kernel datapath's "
                             "upcalls (ovs_dp_upcall())")
    parser.add_argument("--long-poll", type=milliseconds, metavar="MS",
                        help="report each interval of a thread between two "
                             "poll() calls that lasts MS ms or more, as it "
                             "ends")
    parser.add_argument("--keep-priority", action="store_true",
                        help="do not run as SCHED_FIFO 1 (by default the "
                             "whole run, windows included, but --long-poll)")
    parser.add_argument("-D", "--debug", type=debug_flags, nargs="?",
                        const=0x3f, default=0, metavar="FLAGS",
                        help="BCC debug flags, default 0x3f when given")
    parser.add_argument("--ebpf", action="store_true",
                        help=argparse.SUPPRESS)
    # For tests and make bench: the direct-mapped system call table's size
    # (0: the hash table only).
    parser.add_argument("--direct-slots", type=direct_slots,
                        help=argparse.SUPPRESS)
    # The scheduler probes as raw tracepoints even where tp_btf programs
    # work: make bench compares the two, the tests keep both honest.
    parser.add_argument("--no-task-btf", action="store_true",
                        help=argparse.SUPPRESS)
    return parser


def parse_args(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.buffer_page_count = round_up_pow2(args.buffer_page_count)
    if args.trigger_delta and not (args.start_trigger and
                                   args.stop_trigger):
        parser.error("--trigger-delta needs both --start-trigger and "
                     "--stop-trigger")
    if args.syscall_events is None:
        for given, option in ((args.skip_syscall_poll_events,
                               "--skip-syscall-poll-events"),
                              (args.stack_trace_size is not None,
                               "--stack-trace-size")):
            if given:
                parser.error("{} needs --syscall-events".format(option))
    if args.stack_trace_size is None:
        args.stack_trace_size = DEFAULT_STACKS
    if args.long_poll is not None:
        # One window for the whole run: nothing else shapes windows.
        for given, option in ((args.start_trigger, "--start-trigger"),
                              (args.stop_trigger, "--stop-trigger"),
                              (args.trigger_delta, "--trigger-delta"),
                              (args.sample_time is not None,
                               "--sample-time"),
                              (args.sample_interval is not None,
                               "--sample-interval"),
                              (args.syscall_events is not None,
                               "--syscall-events")):
            if given:
                parser.error("{} makes no sense with --long-poll, which "
                             "reports intervals, not windows".format(option))
        if args.sample_count is None:
            args.sample_count = 0
    elif args.sample_count == 0:
        parser.error("--sample-count 0 (no end) needs --long-poll")
    if args.sample_count is None:
        args.sample_count = 1
    if args.sample_time is None:
        args.sample_time = 0.5
    if args.sample_interval is None:
        args.sample_interval = 0
    return args


def thresholds_of(args):
    return Thresholds(ready=args.ready_threshold, irq=args.irq_threshold,
                      stopped=args.stopped_threshold,
                      ready_floor=args.ready_floor, irq_floor=args.irq_floor,
                      stopped_floor=args.stopped_floor,
                      min_window=args.min_window)


def triggers_of(args):
    return [(role, trigger) for role, trigger in
            (("start", args.start_trigger), ("stop", args.stop_trigger))
            if trigger is not None]


# ---- Kernel facts: BTF, kallsyms, tracefs, syscall tables, include tree -----

BTF_KIND_INT, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 4, 5
BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST = 8, 9, 10
BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG, BTF_KIND_ENUM = 11, 18, 6
# Bytes that follow struct btf_type, per kind: fixed, and per vlen entry.
BTF_EXTRA_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
BTF_EXTRA_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
BTF_MODIFIERS = (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST,
                 BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG)


class Btf:
    """A minimal reader of a BTF blob: enough to find struct members."""

    def __init__(self, data):
        if len(data) < 24:
            raise BtfError("BTF data is truncated")
        magic, _, _, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != 0xeb9f:
            raise BtfError("not little-endian BTF data (magic 0x{:x})"
                           .format(magic))
        self.data = data
        self.strings = hdr_len + str_off
        self.str_end = self.strings + str_len
        start, end = hdr_len + type_off, hdr_len + type_off + type_len
        if end > len(data) or self.str_end > len(data):
            raise BtfError("BTF data is truncated")
        self.offsets = [None]       # type id -> offset of its btf_type
        header = struct.Struct("<III").unpack_from
        pos = start
        while pos < end:
            _, info, _ = header(data, pos)
            kind, vlen = (info >> 24) & 0x1f, info & 0xffff
            self.offsets.append(pos)
            pos += (12 + BTF_EXTRA_FIXED.get(kind, 0) +
                    vlen * BTF_EXTRA_VLEN.get(kind, 0))

    def _type(self, type_id):
        name_off, info, size_or_type = struct.unpack_from(
            "<III", self.data, self.offsets[type_id])
        return name_off, (info >> 24) & 0x1f, info & 0xffff, \
            bool(info >> 31), size_or_type

    def _name(self, name_off):
        start = self.strings + name_off
        return self.data[start:self.data.index(b"\0", start)].decode()

    def find(self, kind, name):
        """The id of the first type of this kind and name."""
        needle = b"\0" + name.encode() + b"\0"
        idx = self.data.find(needle, self.strings - 1, self.str_end)
        wanted = set()
        while idx != -1:
            wanted.add(idx + 1 - self.strings)
            idx = self.data.find(needle, idx + 1, self.str_end)
        for type_id in range(1, len(self.offsets)):
            name_off, type_kind, _, _, _ = self._type(type_id)
            if type_kind == kind and name_off in wanted:
                return type_id
        raise BtfError("no {} named '{}' in BTF".format(
            "struct" if kind == BTF_KIND_STRUCT else "type", name))

    def members(self, type_id, base_bits=0):
        """(name, bit offset, type id, bit field size or 0) of the members,
        anonymous struct and union members flattened."""
        _, kind, vlen, kflag, _ = self._type(type_id)
        pos = self.offsets[type_id] + 12
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from(
                "<III", self.data, pos + 12 * i)
            # With kind_flag, the top 8 bits hold a bit field's size.
            bits = base_bits + (offset & 0xffffff if kflag else offset)
            bitfield = offset >> 24 if kflag else 0
            inner = self.resolve(member_type)
            if name_off == 0 and self._type(inner)[1] in (BTF_KIND_STRUCT,
                                                          BTF_KIND_UNION):
                yield from self.members(inner, bits)
            else:
                yield self._name(name_off), bits, member_type, bitfield

    def resolve(self, type_id):
        """Skip typedefs and qualifiers."""
        while self._type(type_id)[1] in BTF_MODIFIERS:
            type_id = self._type(type_id)[4]
        return type_id

    def size(self, type_id):
        _, kind, _, _, size = self._type(self.resolve(type_id))
        if kind not in (BTF_KIND_INT, BTF_KIND_ENUM, BTF_KIND_STRUCT,
                        BTF_KIND_UNION):
            raise BtfError("type {} has no plain size".format(type_id))
        return size


def task_cpu_offset(btf, members):
    """Byte offset of the task's CPU: task_struct.cpu before Linux 5.16,
    task_struct.thread_info.cpu since; None if neither (UP kernels)."""
    cpu = members.get("cpu")
    if cpu is None and "thread_info" in members:
        info_bits, info_type, _ = members["thread_info"]
        inner = {name: (bits, type_id, bitfield) for name, bits, type_id,
                 bitfield in btf.members(btf.resolve(info_type))}
        if "cpu" in inner:
            bits, type_id, bitfield = inner["cpu"]
            cpu = (info_bits + bits, type_id, bitfield)
    if cpu is None or cpu[0] % 8 or cpu[2] or btf.size(cpu[1]) != 4:
        return None
    return cpu[0] // 8


def task_layout_from_btf(data):
    """The TaskLayout of the kernel described by a vmlinux BTF blob."""
    btf = Btf(data)
    task = btf.find(BTF_KIND_STRUCT, "task_struct")
    members = {name: (bits, type_id, bitfield)
               for name, bits, type_id, bitfield in btf.members(task)}
    found = {}
    for wanted in ("pid", "tgid"):
        if wanted not in members:
            raise BtfError("task_struct has no '{}' member".format(wanted))
        found[wanted] = members[wanted]
    # Linux 5.14 renamed the volatile long 'state' to unsigned int '__state'.
    state = members.get("__state") or members.get("state")
    if state is None:
        raise BtfError("task_struct has no '__state' or 'state' member")
    for bits, _, bitfield in list(found.values()) + [state]:
        if bits % 8 or bitfield:
            raise BtfError("task_struct member is a bit field")
    if btf.size(found["pid"][1]) != 4 or btf.size(found["tgid"][1]) != 4:
        raise BtfError("task_struct pid/tgid are not 32-bit")
    on_cpu = members.get("on_cpu")
    if on_cpu and (on_cpu[0] % 8 or on_cpu[2] or btf.size(on_cpu[1]) != 4):
        on_cpu = None
    regs_nr = None
    try:
        regs = {name: (bits, type_id) for name, bits, type_id, _ in
                btf.members(btf.find(BTF_KIND_STRUCT, "pt_regs"))}
        regs_nr = regs.get("orig_ax") or regs.get("syscallno")
    except BtfError:
        pass
    if regs_nr and (regs_nr[0] % 8 or btf.size(regs_nr[1]) not in (4, 8)):
        regs_nr = None
    compat = None
    if "thread_info" in members and regs_nr and "orig_ax" in regs:
        info = {name: (bits, type_id) for name, bits, type_id, _ in
                btf.members(btf.resolve(members["thread_info"][1]))}
        status = info.get("status")
        if status and not status[0] % 8 and btf.size(status[1]) == 4:
            compat = (members["thread_info"][0] + status[0]) // 8
    return TaskLayout(pid_offset=found["pid"][0] // 8,
                      tgid_offset=found["tgid"][0] // 8,
                      state_offset=state[0] // 8,
                      state_size=btf.size(state[1]),
                      on_cpu_offset=on_cpu[0] // 8 if on_cpu else None,
                      regs_nr_offset=regs_nr[0] // 8 if regs_nr else None,
                      regs_nr_size=btf.size(regs_nr[1]) if regs_nr else 8,
                      compat_offset=compat,
                      cpu_offset=task_cpu_offset(btf, members),
                      sched_btf_ids=sched_btf_ids(btf))


def sched_btf_ids(btf):
    """((event, type id), ...) of the btf_trace_<event> typedefs of
    SCHED_EVENTS, () if BTF lacks one (before Linux 5.5)."""
    try:
        return tuple((event, btf.find(BTF_KIND_TYPEDEF, "btf_trace_" + event))
                     for event in SCHED_EVENTS)
    except BtfError:
        return ()


BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def read_task_layout(btf_path=BTF_PATH):
    with open(btf_path, "rb") as btf:
        return task_layout_from_btf(btf.read())


def headers_available():
    """True when BCC will find kernel headers for the running kernel."""
    release = platform.release()
    return bool(os.environ.get("BCC_KERNEL_SOURCE")) or any(
        os.path.exists(path) for path in (
            "/lib/modules/{}/build/include/linux/sched.h".format(release),
            "/lib/modules/{}/source/include/linux/sched.h".format(release),
            "/sys/kernel/kheaders.tar.xz"))


def choose_layout(btf_path=BTF_PATH):
    """The TaskLayout to use; refuses when neither BTF nor headers exist."""
    if os.path.exists(btf_path):
        try:
            return read_task_layout(btf_path)
        except (OSError, BtfError) as err:
            if not headers_available():
                raise Fatal("cannot read task_struct from {}: {}; install "
                            "the kernel headers of {}".format(
                                btf_path, err, platform.release()),
                            os.EX_UNAVAILABLE)
    elif not headers_available():
        raise Fatal("this kernel has no BTF ({}) and no headers are "
                    "installed for it, so task_struct offsets are unknown; "
                    "install the kernel-devel/linux-headers package of {}"
                    .format(btf_path, platform.release()), os.EX_UNAVAILABLE)
    return TaskLayout(0, 0, 0, 0, source="headers")


def kernel_function_exists(name):
    """True if /proc/kallsyms lists a function of that name."""
    wanted = name.encode("utf-8", "surrogateescape")
    try:
        with open("/proc/kallsyms", "rb") as kallsyms:
            return any(len(fields) >= 3 and fields[2] == wanted
                       for fields in map(bytes.split, kallsyms))
    except OSError:
        return False


def tracefs_path():
    for path in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def quiet_run(command):
    """Run command without output; its exit status (127: not found)."""
    try:
        return subprocess.run(command, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode
    except OSError:
        return 127


def ensure_tracefs():
    """Mount tracefs if needed; returns the mount point we made, or None."""
    if tracefs_path():
        return None
    target = TRACEFS_DIRS[0]
    if quiet_run(["mount", "-t", "tracefs", "nodev", target]):
        raise Fatal("tracefs is not mounted and mounting it failed; run "
                    "'mount -t tracefs nodev /sys/kernel/tracing' (in a "
                    "container: add -v /sys/kernel/tracing:"
                    "/sys/kernel/tracing)", os.EX_UNAVAILABLE)
    return target


def upcall_problem():
    """Why upcall statistics cannot be collected here, or None."""
    kprobes = kprobes_supported(tracefs_path())
    module = os.path.isdir("/sys/module/" + OVS_MODULE)
    return upcall_skip_reason(
        kprobes, module,
        kprobes and module and kernel_function_exists(UPCALL_FUNCTION))


def kernel_is_realtime():
    """True on a PREEMPT_RT kernel: /sys/kernel/realtime (the RT patch
    set) or "PREEMPT_RT" in uname -v (mainline since 6.12 too)."""
    try:
        with open("/sys/kernel/realtime") as flag:
            if flag.read().strip() == "1":
                return True
    except OSError:
        pass
    return "PREEMPT_RT" in platform.version()


def possible_cpus():
    """How many CPUs the kernel can have (ids 0 .. n - 1)."""
    try:
        with open("/sys/devices/system/cpu/possible") as possible:
            last = possible.read().strip().split(",")[-1]
        return int(last.split("-")[-1]) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def kprobes_supported(tracefs):
    return (os.path.exists("/sys/bus/event_source/devices/kprobe") or
            os.path.exists(os.path.join(tracefs or "", "kprobe_events")))


BPF_MAP_CREATE = 0
BPF_MAP_TYPE_RINGBUF = 27       # Linux 5.8
SYS_BPF = {"x86_64": 321, "aarch64": 280}


def bpf_syscall(cmd, attr):
    """bpf(cmd, attr, len(attr)) through the C library: (result, errno)."""
    number = SYS_BPF.get(platform.machine())
    if number is None:
        return -1, errno.ENOSYS
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    result = libc.syscall(ctypes.c_long(number), ctypes.c_long(cmd), buf,
                          ctypes.c_uint(len(attr)))
    return result, ctypes.get_errno() if result < 0 else 0


def ringbuf_supported(syscall=bpf_syscall):
    """Whether the kernel has BPF ring buffers, found by creating (and
    closing) a one-page one: True, False (an unknown map type: EINVAL), or
    None when the attempt failed for another reason (EPERM in a container
    without CAP_BPF), which loading the program will report."""
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    # max_entries (bytes, a power-of-two number of pages); the rest zero.
    attr = struct.pack("<IIII", BPF_MAP_TYPE_RINGBUF, 0, 0,
                       os.sysconf("SC_PAGE_SIZE")) + bytes(112)
    fd, err = syscall(BPF_MAP_CREATE, attr)
    if fd >= 0:
        os.close(fd)
        return True
    return False if err == errno.EINVAL else None


def check_ringbuf(supported=None):
    """Fail before compiling on a kernel without BPF ring buffers."""
    if supported is None:
        supported = ringbuf_supported()
    if supported is False:
        raise Fatal("the running kernel ({}) has no BPF ring buffers; run "
                    "the tool on Linux 5.8 or newer, or RHEL 8.4 or newer"
                    .format(platform.release()), os.EX_UNAVAILABLE)


BPF_PROG_LOAD = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_FUNC_GET_CURRENT_TASK_BTF = 158     # Linux 5.11


def bpf_insn(code, dst=0, src=0, off=0, imm=0):
    """One struct bpf_insn."""
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def current_task_btf_supported(layout, syscall=bpf_syscall):
    """Whether a raw tracepoint program may read the current task's fields
    with plain loads: the kernel has bpf_get_current_task_btf() and BTF,
    and its verifier accepts loads of the fields the program reads that
    way (the scheduler state; thread_info.status where ia32 calls exist)
    at the offsets in layout.  Found by loading (and closing) a small
    program that does just that; False also when loading is not allowed
    (not root), and for a layout from kernel headers, whose offsets are
    not known here."""
    if layout.source != "btf":
        return False
    loads = [(layout.state_offset, layout.state_size)]
    if layout.compat_offset is not None:
        loads.append((layout.compat_offset, 4))
    sizes = {4: 0x00, 8: 0x18}          # BPF_W, BPF_DW
    if any(size not in sizes or not 0 <= offset < 1 << 15
           for offset, size in loads):
        return False
    insns = [bpf_insn(0x85, imm=BPF_FUNC_GET_CURRENT_TASK_BTF),  # call
             bpf_insn(0xbf, dst=6, src=0)]                        # r6 = r0
    for offset, size in loads:
        # r1 = *(size *)(r6 + offset): BPF_LDX | BPF_MEM | size
        insns.append(bpf_insn(0x61 | sizes[size], dst=1, src=6, off=offset))
    insns += [bpf_insn(0xb7, dst=0, imm=0),                       # r0 = 0
              bpf_insn(0x95)]                                     # exit
    fd, _, _ = load_program(BPF_PROG_TYPE_RAW_TRACEPOINT, b"".join(insns),
                            b"kd_probe_btf", syscall=syscall)
    if fd < 0:
        return False
    os.close(fd)
    return True


BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23
SCHED_EVENTS = ("sched_switch", "sched_wakeup", "sched_wakeup_new",
                "sched_migrate_task")


def load_program(prog_type, insns, name, attach_btf_id=0, log_size=0,
                 syscall=bpf_syscall):
    """Load eBPF instructions (GPL): (fd, errno, verifier log).  With
    attach_btf_id, a tp_btf program for that btf_trace_* typedef."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size or 1)
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns,
    # license, log_level, log_size, log_buf, kern_version, prog_flags,
    # prog_name, prog_ifindex, expected_attach_type, prog_btf_fd,
    # func_info_rec_size, func_info, func_info_cnt, line_info_rec_size,
    # line_info, line_info_cnt, attach_btf_id; the rest zero.
    attr = struct.pack(
        "<IIQQIIQII16sIIIIQIIQII", prog_type, len(insns) // 8,
        ctypes.addressof(code), ctypes.addressof(license),
        1 if log_size else 0, log_size, ctypes.addressof(log) if log_size
        else 0, 0, 0, name[:15], 0,
        BPF_TRACE_RAW_TP if attach_btf_id else 0, 0, 0, 0, 0, 0, 0, 0,
        attach_btf_id)
    fd, err = syscall(BPF_PROG_LOAD, attr + bytes(128 - len(attr)))
    return fd, err, log.value.decode("utf-8", "replace")


def task_btf_supported(layout, syscall=bpf_syscall):
    """Whether the scheduler probes can be tp_btf programs that read
    their task arguments' fields with plain loads (TASK_BTF): the BTF
    names their attach points, and the verifier accepts loads of the
    fields they read at the offsets in layout.  Found by loading (and
    closing) a small sched_switch program that loads them from next;
    False also when loading is not allowed, and for a layout from kernel
    headers."""
    if layout.source != "btf" or not layout.sched_btf_ids:
        return False
    offsets = [layout.pid_offset, layout.tgid_offset]
    offsets += [offset for offset in (layout.on_cpu_offset,
                                      layout.cpu_offset) if offset is not None]
    if any(not 0 <= offset < 1 << 15 for offset in offsets):
        return False
    # r6 = ctx->args[2] (next); if r6 == 0 skip the loads; r1 = *(u32 *)
    # (r6 + offset) for each; r0 = 0; exit.
    insns = [bpf_insn(0x79, dst=6, src=1, off=16),
             bpf_insn(0x15, dst=6, off=len(offsets))]
    insns += [bpf_insn(0x61, dst=1, src=6, off=offset) for offset in offsets]
    insns += [bpf_insn(0xb7, dst=0, imm=0), bpf_insn(0x95)]
    fd, _, _ = load_program(BPF_PROG_TYPE_TRACING, b"".join(insns),
                            b"kd_probe_tp_btf",
                            dict(layout.sched_btf_ids)["sched_switch"],
                            syscall=syscall)
    if fd < 0:
        return False
    os.close(fd)
    return True


UNISTD_HEADERS = {
    "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
               "/usr/include/asm/unistd_64.h"),
    "aarch64": ("/usr/include/asm-generic/unistd.h",),
}
# ia32 numbers, for the ia32 system calls of x86-64 kernels.
COMPAT_UNISTD_HEADERS = {
    "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
               "/usr/include/asm/unistd_32.h"),
}

# Numbers newer than the C library's headers may know (Debian 12's stop at
# 450), checked against Linux 6.18's syscall tracepoints.  Since 424 every
# architecture uses the same numbers, ia32 included.
LATE_SYSCALLS = {
    451: "cachestat", 452: "fchmodat2", 453: "map_shadow_stack",
    454: "futex_wake", 455: "futex_wait", 456: "futex_requeue",
    457: "statmount", 458: "listmount", 459: "lsm_get_self_attr",
    460: "lsm_set_self_attr", 461: "lsm_list_modules", 462: "mseal",
    463: "setxattrat", 464: "getxattrat", 465: "listxattrat",
    466: "removexattrat", 467: "open_tree_attr", 468: "file_getattr",
    469: "file_setattr",
}
LATE_X86_64_SYSCALLS = {335: "uretprobe", 336: "uprobe"}


def parse_unistd(text):
    """System call number -> name from a unistd header's __NR_ defines."""
    return {int(nr): name for name, nr in re.findall(
        r"^#define __NR_(\w+)\s+(\d+)\s*$", text, re.M)
        if name != "syscalls"}     # asm-generic's count of them


def syscall_table():
    """System call number -> name: bcc's table, completed from the C
    library's kernel headers (bcc 0.26 stops at rseq, 334 on x86_64, and
    would not name clone3, which glibc's pthread_create() uses)."""
    from bcc.syscall import syscalls
    machine = platform.machine()
    table = {nr: name.decode() for nr, name in syscalls.items()}
    table.update(complete_syscall_table(
        table, read_unistd(UNISTD_HEADERS.get(machine, ())), machine))
    if machine in COMPAT_UNISTD_HEADERS:
        compat = read_unistd(COMPAT_UNISTD_HEADERS[machine])
        compat.update({nr: name for nr, name in LATE_SYSCALLS.items()
                       if nr not in compat})
        table.update({COMPAT_NR + nr: COMPAT_PREFIX + name
                      for nr, name in compat.items()})
    return table


def read_unistd(paths):
    """Number -> name from the first of these unistd headers that exists."""
    for path in paths:
        try:
            with open(path) as header:
                return parse_unistd(header.read())
        except OSError:
            continue
    return {}


def complete_syscall_table(table, header, machine):
    """The numbers that bcc's table lacks, from the headers' table and the
    ones newer than both."""
    late = dict(LATE_SYSCALLS)
    if machine == "x86_64":
        late.update(LATE_X86_64_SYSCALLS)
    added = {}
    for source in (header, late):
        for nr, name in source.items():
            if nr not in table and nr not in added:
                added[nr] = name
    return added


def tracer_syscalls(table):
    """The numbers of uretprobe() and uprobe(), -1 where there is none."""
    numbers = {name: nr for nr, name in table.items()}
    fallback = TRACER_SYSCALLS.get(platform.machine(), (-1, -1))
    return (numbers.get("uretprobe", fallback[0]),
            numbers.get("uprobe", fallback[1]))


def restart_syscall(table):
    """The number of restart_syscall(), or -1."""
    return next((nr for nr, name in table.items()
                 if name == "restart_syscall"),
                RESTART_SYSCALL.get(platform.machine(), -1))


def poll_syscalls(table=None):
    if table:
        names = POLL_NAMES + tuple(COMPAT_PREFIX + name
                                   for name in POLL_NAMES)
        nrs = tuple(sorted(nr for nr, name in table.items()
                           if name in names))
        if nrs:
            return nrs
    return POLL_SYSCALLS.get(platform.machine(), ())


KCONFIG_H = """\
/* Generated by kernel_delay.py: just enough for BCC's helpers. */
#ifndef __KERNEL_DELAY_KCONFIG_H
#define __KERNEL_DELAY_KCONFIG_H
#define CONFIG_BPF_SYSCALL 1
typedef unsigned char u8;
typedef signed char s8;
typedef unsigned short u16;
typedef signed short s16;
typedef unsigned int u32;
typedef signed int s32;
typedef unsigned long long u64;
typedef signed long long s64;
typedef _Bool bool;
enum { false = 0, true = 1 };
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef int pid_t;
/* USDT argument readers use the C99 names. */
typedef s8 int8_t;
typedef s16 int16_t;
typedef s32 int32_t;
typedef s64 int64_t;
typedef u8 uint8_t;
typedef u16 uint16_t;
typedef u32 uint32_t;
typedef u64 uint64_t;
#define EEXIST 17
#ifndef offsetof
#define offsetof(type, member) __builtin_offsetof(type, member)
#endif
#endif
"""

# The kernel API types that BCC's own bpf.h and helpers.h use (the
# kernel's uapi <linux/types.h> and <linux/stddef.h>, as far as needed).
TYPES_H = """\
#ifndef _UAPI_LINUX_TYPES_H
#define _UAPI_LINUX_TYPES_H
typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;
typedef __u16 __le16;
typedef __u16 __be16;
typedef __u32 __le32;
typedef __u32 __be32;
typedef __u64 __le64;
typedef __u64 __be64;
typedef __u16 __sum16;
typedef __u32 __wsum;
typedef unsigned __poll_t;
#define __aligned_u64 __u64 __attribute__((aligned(8)))
#define __aligned_be64 __be64 __attribute__((aligned(8)))
#define __aligned_le64 __le64 __attribute__((aligned(8)))
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#endif
"""

# The running kernel's version, as the kernel's build generates it: BCC
# stores it in the program's "version" section, which kernels before 5.0
# compare with their own for kprobe programs.
VERSION_H = """\
#define LINUX_VERSION_CODE {code}
#define KERNEL_VERSION(a, b, c) \\
    (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))
"""

LOG2_H = """\
#ifndef __KERNEL_DELAY_LOG2_H
#define __KERNEL_DELAY_LOG2_H
/* Folds to a constant: BCC sizes BPF_STACK_TRACE maps with it. */
#define roundup_pow_of_two(n) \\
    ((n) <= 1 ? 1ULL : 1ULL << (64 - __builtin_clzll((n) - 1ULL)))
#endif
"""

PAGE_H = """\
#ifndef __KERNEL_DELAY_PAGE_H
#define __KERNEL_DELAY_PAGE_H
#define PAGE_SHIFT {shift}
#define PAGE_SIZE (1UL << PAGE_SHIFT)
#endif
"""

# struct pt_regs with the kernel's layout and member names, which BCC's
# PT_REGS_* macros use (the C library's copy renames them).
PTRACE_H = {
    "x86": """\
#ifndef _ASM_X86_PTRACE_H
#define _ASM_X86_PTRACE_H
struct pt_regs {
    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
    unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#endif
""",
    "arm64": """\
#ifndef __ASM_PTRACE_H
#define __ASM_PTRACE_H
struct user_pt_regs {
    unsigned long long regs[31];
    unsigned long long sp, pc, pstate;
};
struct pt_regs {
    union {
        struct user_pt_regs user_regs;
        struct {
            unsigned long long regs[31];
            unsigned long long sp, pc, pstate;
        };
    };
    unsigned long long orig_x0;
    int syscallno;
};
#endif
""",
}

# uname -m -> kernel arch directory
ARCHES = {"x86_64": "x86", "aarch64": "arm64"}


def kernel_version_code(release):
    """LINUX_VERSION_CODE of a kernel release such as 6.1.0-57-rt-amd64
    or 4.18.0-553.el8_10.x86_64 (the sublevel saturates at 255, as the
    kernel's own does)."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        raise ValueError("unexpected kernel release {!r}".format(release))
    major, minor, sub = (int(n or 0) for n in match.groups())
    return (major << 16) + (minor << 8) + min(sub, 255)


def include_tree_files(machine, page_size=4096, release="5.8.0"):
    """Every file of the include tree, by path relative to its root.

    page_size is the kernel's (BCC sizes the ring buffer in pages; arm64
    kernels may use 16 or 64 KiB pages); release is the running kernel's
    (uname -r)."""
    if machine not in ARCHES:
        raise ValueError("no include tree recipe for {}".format(machine))
    if page_size < 4096 or page_size & (page_size - 1):
        raise ValueError("odd page size {}".format(page_size))
    arch = ARCHES[machine]
    return {
        "include/linux/kconfig.h": KCONFIG_H,
        "include/linux/log2.h": LOG2_H,
        "include/uapi/linux/types.h": TYPES_H,
        "include/generated/uapi/linux/version.h": VERSION_H.format(
            code=kernel_version_code(release)),
        # BCC brings its own bpf.h; helpers.h includes these two, for
        # nothing the program uses.
        "include/uapi/linux/bpf.h": "",
        "include/uapi/linux/bpf_common.h": "",
        "include/uapi/linux/if_packet.h": "",
        # BCC puts it above USDT argument readers.
        "include/uapi/linux/ptrace.h": "#include <asm/ptrace.h>\n",
        "arch/{}/include/asm/page.h".format(arch): PAGE_H.format(
            shift=page_size.bit_length() - 1),
        "arch/{}/include/asm/ptrace.h".format(arch): PTRACE_H[arch],
    }


# Where include trees go: a memory file system first, as a disk file
# system under load can take half a second for the tree's 600 symlinks.
SHM_DIR = "/dev/shm"


def tree_parents():
    """The directories an include tree may be made in, best first."""
    return [path for path in (SHM_DIR, tempfile.gettempdir())
            if os.path.isdir(path)]


# An include tree is kernel_delay.PID.XXXXXXXX (tempfile.mkdtemp()) and
# holds this file, written when it was made, with this text.
TREE_NAME = re.compile(r"kernel_delay\.(\d+)\.[a-z0-9_]{8}\Z")
TREE_MARKER = ".kernel_delay-include-tree"
TREE_MARKER_TEXT = b"include tree of kernel_delay.py; removed at its exit\n"


def is_stale_tree(path):
    """True only for what a run of this tool that is gone provably made:
    the exact name, a directory (not a link) owned by this user, holding
    the marker file (owned by this user, with its exact text), and no
    process with its PID."""
    match = TREE_NAME.match(os.path.basename(path))
    if not match or os.path.exists("/proc/" + match.group(1)):
        return False
    try:
        info = os.lstat(path)
        marker = os.open(os.path.join(path, TREE_MARKER),
                         os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        mark = os.fstat(marker)
        text = os.read(marker, len(TREE_MARKER_TEXT) + 1)
    finally:
        os.close(marker)
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and \
        stat.S_ISREG(mark.st_mode) and mark.st_uid == os.geteuid() and \
        text == TREE_MARKER_TEXT


def remove_stale_trees():
    """Remove include trees left by runs that were killed (SIGKILL), and
    nothing else (see is_stale_tree())."""
    for tmp in tree_parents():
        try:
            names = os.listdir(tmp)
        except OSError:
            continue
        for name in names:
            if is_stale_tree(os.path.join(tmp, name)):
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def make_include_tree(root, machine=None):
    """Fill the empty directory root with an include tree for BCC, all
    of it generated: no kernel or C library headers are needed."""
    machine = machine or platform.machine()
    files = include_tree_files(machine, os.sysconf("SC_PAGE_SIZE"),
                               platform.release())
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as out:
            out.write(text)


def new_tree_dir():
    """A private temporary directory for the include tree, named after
    this process so that a later run can remove it if this one is
    killed."""
    remove_stale_trees()
    prefix = "kernel_delay.{}.".format(os.getpid())
    for parent in tree_parents()[:-1]:
        try:
            return mark_tree(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError:
            pass        # read-only or full: the next one
    return mark_tree(tempfile.mkdtemp(prefix=prefix))


def mark_tree(root):
    """Write the marker that proves root is an include tree of this tool
    (is_stale_tree()); returns root."""
    try:
        with open(os.path.join(root, TREE_MARKER), "xb") as marker:
            marker.write(TREE_MARKER_TEXT)
    except OSError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


# ---- Processes: /proc and psutil --------------------------------------------
#
# psutil reads what it knows about processes.  The tool reads these /proc
# files itself, for what psutil does not offer.  One rule for all of them:
# the file is read as bytes, and what leaves this section is numbers parsed
# from those bytes, names made printable() (the report's escaping), or paths
# decoded losslessly (os.fsdecode: bytes that are not UTF-8 survive as
# surrogates, which printable() shows as \xNN).

def printable(raw):
    """Text from the kernel or the command line (any bytes) made safe to
    print on one line: invalid UTF-8 (str decoded with surrogateescape),
    control characters (terminal escape sequences, newlines) and
    backslashes become backslash escapes."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:      # a surrogate no decoder made
            raw = raw.encode("utf-8", "surrogatepass")
    out = []
    for char in raw.decode("utf-8", "surrogateescape"):
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable() or char == " ":
            out.append(char)
        elif ord(char) < 0x80:
            # \x always stands for one byte; U+0080..U+00FF are two bytes
            # in UTF-8 (c2 80 for U+0080), so they take \u below.
            out.append("\\x{:02x}".format(ord(char)))
        elif 0xdc80 <= ord(char) <= 0xdcff:     # a byte of invalid UTF-8
            out.append("\\x{:02x}".format(ord(char) - 0xdc00))
        elif ord(char) < 0x10000:
            out.append("\\u{:04x}".format(ord(char)))
        else:
            out.append("\\U{:08x}".format(ord(char)))
    return "".join(out)


def read_proc(path, limit=1 << 16):
    """The first limit bytes of a /proc file, or None (gone, not allowed)."""
    try:
        with open(path, "rb") as data:
            return data.read(limit)
    except OSError:
        return None


def thread_name(pid, tid):
    """The name (comm) of thread tid of process pid, printable, or None."""
    comm = read_proc("/proc/{}/task/{}/comm".format(pid, tid))
    if comm is None:
        return None
    # The kernel ends the name with a newline; the name may end in one too.
    return printable(comm[:-1] if comm.endswith(b"\n") else comm)


def task_syscall(pid, tid):
    """What thread tid is doing, from /proc/PID/task/TID/syscall: the number
    of the system call it is blocked in, "running" (on a CPU), or None (not
    in a call, gone, or not allowed)."""
    text = read_proc("/proc/{}/task/{}/syscall".format(pid, tid), 64)
    first = text.split(b" ", 1)[0].strip() if text else b""
    if first == b"running":
        return "running"
    return int(first) if first.isdigit() else None


def task_stat(pid, tid):
    """(state letter, start in seconds after boot) of thread tid of process
    pid, from /proc/PID/task/TID/stat, or None once it is gone.  Read here,
    not through psutil.Process(tid): psutil reads /proc/TID/stat, where the
    kernel adds up the times of every thread of the process, so that one
    look at each of 2,000 threads took 8-20 s instead of about 1 s."""
    stat = read_proc("/proc/{}/task/{}/stat".format(pid, tid), 4096)
    try:
        # The name in parentheses may hold any bytes, ')' too.
        fields = stat.rsplit(b")", 1)[1].split()
        return (fields[0].decode("ascii", "replace"),
                int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (AttributeError, IndexError, ValueError):
        return None


def task_snapshot(pid, tid):
    """Thread tid of process pid as /proc shows it now (a Task), or None
    once it is gone."""
    stat = task_stat(pid, tid)
    if stat is None:
        return None
    return Task(tid=tid, name=thread_name(pid, tid), state=stat[0],
                syscall=task_syscall(pid, tid), started=stat[1])


def task_list(pid):
    """The thread IDs of process pid, from /proc/PID/task ([] once it is
    gone).  psutil's thread list reads each thread's stat file too: the
    window's one look at the threads (task_snapshot()) reads it anyway."""
    try:
        return [int(tid) for tid in os.listdir("/proc/{}/task".format(pid))
                if tid.isdigit()]
    except OSError:
        return []


def task_ids(tid):
    """(thread group ID, innermost namespace PID) of task tid, from
    /proc/TID/status, or None."""
    status = read_proc("/proc/{}/status".format(tid))
    tgid = re.search(rb"^Tgid:\s*(\d+)", status or b"", re.M)
    if tgid is None:
        return None
    nspid = re.search(rb"^NSpid:.*?(\d+)\s*$", status, re.M)
    return int(tgid.group(1)), int((nspid or tgid).group(1))


def mapped_files(pid):
    """{path: /proc/PID/map_files/RANGE} of the files process pid maps.
    The map_files link opens the very file mapped, even one that a package
    upgrade has since replaced or deleted (the path then ends in
    " (deleted)")."""
    maps = read_proc("/proc/{}/maps".format(pid), 1 << 24)
    if maps is None:
        raise Fatal("cannot read the mappings of process {} (/proc/{}/maps)"
                    "; check that it still runs".format(pid, pid),
                    os.EX_NOINPUT)
    files = {}
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith(b"/"):
            files.setdefault(os.fsdecode(parts[5]), "/proc/{}/map_files/{}"
                             .format(pid, os.fsdecode(parts[0])))
    return files


DELETED = " (deleted)"


def find_mapped_library(pid, library):
    """(path, link) of library (a path, or a name like 'c' or 'libc') as
    mapped by process pid: its path as the process sees it, and a link that
    opens that very file (see mapped_files())."""
    files = mapped_files(pid)
    paths = {(path[:-len(DELETED)] if path.endswith(DELETED) else path): path
             for path in files}
    if "/" in library:
        wanted = os.path.realpath(library)
        matches = [p for p in paths if os.path.realpath(p) == wanted]
    else:
        names = {library, "lib" + library}
        matches = [p for p in paths if os.path.basename(p) in names or
                   re.match(r"(lib)?{}\.so(\.|$)".format(re.escape(library)),
                            os.path.basename(p))]
    if len(matches) != 1:
        libs = sorted(printable(os.path.basename(p)) for p in paths
                      if ".so" in p)
        raise Fatal("library '{}' is {} mapped by process {}; it maps: {}"
                    .format(printable(library),
                            "not" if not matches else "ambiguously",
                            pid, ", ".join(libs) or "no libraries"),
                    os.EX_CONFIG)
    return paths[matches[0]], files[paths[matches[0]]]


def process_fact(pid, fact):
    """What psutil tells of process (or thread) pid, or None (gone; a kernel
    thread has no exe): "name" as ps -e shows it (its comm, which the
    kernel cuts at 15 bytes, completed from its command line), printable;
    "exe" without the " (deleted)" of one replaced since it started;
    "create_time" in seconds since the epoch."""
    try:
        value = getattr(psutil.Process(pid), fact)()
    except psutil.Error:
        return None
    return (printable(value) if fact == "name" else value) or None


def list_processes():
    """(pid, printable name) of every process."""
    return [(proc.pid, printable(proc.info["name"]))
            for proc in psutil.process_iter(["name"])
            if proc.info["name"] is not None]


def process_alive(pid, start_time=None):
    """False once process pid has exited (also while a zombie) and, with
    start_time (its "create_time", process_fact()), once the PID is another
    process's.  A leader that called pthread_exit() is a zombie while the
    other threads run on: the process lives while any of its tasks is not a
    zombie."""
    try:
        leader = psutil.Process(pid)
        if start_time is not None and leader.create_time() != start_time:
            return False
        if leader.status() not in ("zombie", "dead"):
            return True
        tids = [thread.id for thread in leader.threads()]
    except psutil.Error:
        return False
    return any((task_stat(pid, tid) or ("Z",))[0] not in ("Z", "X")
               for tid in tids if tid != pid)


def snapshot_tasks(pid, tids, faults=None):
    """{tid: Task} of the threads tids of process pid that still exist.  A
    failure on one thread (with faults: a Faults) costs that thread only."""
    tasks = {}
    for tid in sorted(tids):
        try:
            task = task_snapshot(pid, tid)
        except Exception:
            if faults is None:
                raise
            faults.loose.append(faults.note(
                "the /proc snapshot of thread {}".format(tid)))
            continue
        if task is not None:
            tasks[tid] = task
    return tasks


def monotonic_since_boot(monotonic_ns):
    """A CLOCK_MONOTONIC time (the eBPF program's clock) as seconds after
    boot: CLOCK_BOOTTIME also counts the time the machine was suspended."""
    offset = time.clock_gettime(time.CLOCK_BOOTTIME) - \
        time.clock_gettime(time.CLOCK_MONOTONIC)
    return monotonic_ns / 1e9 + offset


# The inode of the initial PID namespace (PROC_PID_INIT_INO).
INIT_PID_NS_INODE = 0xeffffffc


def in_child_pid_namespace():
    """True inside a container with its own PID namespace: its PIDs are not
    the ones the kernel (and so the eBPF program) uses."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino != INIT_PID_NS_INODE
    except OSError:
        return False


def check_pid(pid):
    """Fail unless pid is a running process (not one of its threads)."""
    ids = task_ids(pid)
    if ids is None:
        raise Fatal("process {} does not exist; check the --pid value"
                    .format(pid), os.EX_NOINPUT)
    if ids[0] != pid:
        raise Fatal("{} is a thread of process {}; use -p {}".format(
            pid, ids[0], ids[0]), os.EX_USAGE)
    if not process_alive(pid):
        raise Fatal("process {} has exited (a zombie its parent has not "
                    "reaped); check the --pid value".format(pid),
                    os.EX_NOINPUT)


def identify_target(pid):
    """The Target of a checked pid, to tell later whether it is still the
    same process."""
    return Target(pid=pid, name=process_fact(pid, "name") or "?",
                  exe=process_fact(pid, "exe"),
                  start_time=process_fact(pid, "create_time"))


def pick_target(candidates, name=DEFAULT_PROCESS):
    """The single pid in candidates [(pid, name)] whose name matches;
    names are compared as printable() makes them."""
    name = printable(name)
    pids = sorted(pid for pid, comm in candidates if comm == name)
    if not pids:
        raise Fatal("no running {} process found; start it or pass --pid"
                    .format(name), os.EX_NOINPUT)
    if len(pids) > 1:
        raise Fatal("{} {} processes are running ({}); choose one with "
                    "--pid".format(len(pids), name,
                                   ", ".join(map(str, pids))),
                    os.EX_USAGE)
    return pids[0]


def successors(target):
    """PIDs of processes that run the same program under the same name as
    target, which has exited: a restarted daemon."""
    return [pid for pid, name in list_processes()
            if pid != target.pid and name == target.name and
            process_fact(pid, "exe") == target.exe]


def target_gone_error(target, successors):
    """The error line for a target that exited during the run; successors
    lists PIDs now running the same program under the same name."""
    text = "process {} ({}) exited during the run; the windows above are " \
        "all that was captured".format(target.pid, target.name)
    if len(successors) == 1:
        return text + "; it was restarted as process {}: run the tool " \
            "again with -p {}".format(successors[0], successors[0])
    if successors:
        return text + "; processes {} now run the same program: run the " \
            "tool again and choose one with --pid".format(
                ", ".join(map(str, sorted(successors))))
    return text + "; run the tool again once it is back"


# OVS and OVN daemons whose version the report header shows, and the run
# directories where they make their control (unixctl) sockets.
OVS_RUN_DIRS = ("/var/run/openvswitch", "/run/openvswitch")
OVN_RUN_DIRS = ("/var/run/ovn", "/run/ovn") + OVS_RUN_DIRS
VERSIONED_DAEMONS = {"ovs-vswitchd": OVS_RUN_DIRS,
                     "ovsdb-server": OVS_RUN_DIRS + OVN_RUN_DIRS[:2],
                     "ovn-controller": OVN_RUN_DIRS,
                     "ovn-northd": OVN_RUN_DIRS}
VERSION_TIMEOUT = 3         # seconds, for the whole exchange
VERSION_LIMIT = 4096        # bytes of the daemon's answer


def version_lines(output):
    """The version part of a daemon's version text (OVN daemons add
    OpenFlow and schema versions)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return "; ".join(lines[:1] + [line for line in lines[1:]
                                  if "Open vSwitch" in line])


def control_socket(pid, name):
    """The path of the unixctl socket of daemon pid, seen through its
    /proc/PID/root (a container's files), or (None, why).  The daemon
    names it after its PID in its own PID namespace."""
    ids = task_ids(pid)
    nspid = ids[1] if ids else pid
    basename = "{}.{}.ctl".format(name, nspid)
    for rundir in VERSIONED_DAEMONS[name]:
        path = "/proc/{}/root{}/{}".format(pid, rundir, basename)
        if os.path.lexists(path):
            return path, None
    return None, "no control socket {} in {}".format(
        basename, " or ".join(VERSIONED_DAEMONS[name]))


def unixctl_call(path, owner, method, timeout=VERSION_TIMEOUT,
                 limit=VERSION_LIMIT):
    """Call method (no parameters) of the OVS unixctl server at path, as
    ovs-appctl does: one JSON-RPC request, one reply.  Returns (result
    text, None) or (None, why).  The socket must be a socket owned by uid
    owner (the daemon's): a symbolic link the target planted cannot send
    the request elsewhere.  The answer is untrusted: at most limit bytes,
    within timeout seconds, and only a string result is taken."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    except OSError as err:
        return None, "cannot open its control socket ({})".format(
            err.strerror)
    deadline = time.monotonic() + timeout
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != owner:
            return None, "its control socket is not a socket of the " \
                "daemon's user"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            # Through the descriptor: the very file checked above.
            conn.connect("/proc/self/fd/{}".format(fd))
            conn.sendall(json.dumps({"id": 0, "method": method,
                                     "params": []}).encode())
            data = b""
            while True:
                try:
                    reply = json.loads(data.decode("utf-8"))
                    break
                except ValueError:
                    pass
                if len(data) >= limit:
                    return None, "its answer is longer than {} bytes" \
                        .format(limit)
                conn.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = conn.recv(limit - len(data))
                if not chunk:
                    return None, "it closed the connection without an " \
                        "answer"
                data += chunk
    except socket.timeout:
        return None, "no answer within {} s".format(timeout)
    except OSError as err:
        return None, "its control socket: {}".format(
            err.strerror or err)
    finally:
        os.close(fd)
    if not isinstance(reply, dict):
        return None, "its answer is not a JSON-RPC reply"
    if reply.get("error") is not None:
        return None, "it answered with an error: {}".format(
            printable(str(reply["error"]))[:200])
    if not isinstance(reply.get("result"), str):
        return None, "its answer has no version text"
    return reply["result"], None


def daemon_version(pid, name):
    """(version, None) of an OVS or OVN daemon, (None, why) when it cannot
    be told, (None, None) for other processes.  Asks the running daemon
    over its control socket (what `ovs-appctl version` does), so the
    version is the one running, not the one installed since.  Nothing of
    the target is ever executed: any user can name a program
    ovs-vswitchd."""
    if name not in VERSIONED_DAEMONS:
        return None, None
    path, why = control_socket(pid, name)
    if path is not None:
        try:
            owner = psutil.Process(pid).uids().effective
        except psutil.Error:
            return None, "the process exited"
        text, why = unixctl_call(path, owner, "version", VERSION_TIMEOUT,
                                 VERSION_LIMIT)
        if text is not None:
            version = printable(version_lines(text))[:200]
            if version:
                return version, None
            why = "its answer has no version text"
    return None, "version asked over unixctl: " + why


def read_header(command, pid):
    """Header of the reports: this host and process pid."""
    target = identify_target(pid)
    version, version_error = daemon_version(pid, target.name)
    uname = os.uname()
    return Header(command=tuple(command), host=uname.nodename,
                  kernel=uname.release, machine=uname.machine,
                  cpus=os.cpu_count() or 0,
                  load=tuple(round(load, 2) for load in os.getloadavg()),
                  pid=pid, name=target.name, exe=target.exe,
                  started=None if target.start_time is None else
                  datetime.datetime.fromtimestamp(
                      target.start_time).astimezone(),
                  version=version, version_error=version_error)


# ---- Reading the BPF maps into plain data -----------------------------------

@functools.lru_cache(maxsize=None)
def record_type(ctype):
    """The namedtuple a row of struct ctype is decoded into, its fields
    named as bcc's ctypes _fields_ name them (the C struct's), so readers
    say entry.budget.in_use, never a position a reordered C struct would
    shift."""
    name = ctype.__name__ if ctype.__name__.isidentifier() else "record"
    return collections.namedtuple(name, [field for field, *_ in
                                         ctype._fields_], rename=True)


def plain(value):
    """A ctypes key or value as plain Python: structs as record_type()
    records."""
    if hasattr(value, "_fields_"):
        return record_type(type(value))._make(
            plain(getattr(value, name)) for name, *_ in value._fields_)
    if isinstance(value, bytes):
        return _text(value)
    if hasattr(value, "value"):
        return value.value
    if hasattr(value, "_length_"):
        if getattr(value, "_type_", None) is not ctypes.c_char:
            return tuple(plain(item) for item in value)
        return _text(bytes(value))
    return value


def _text(raw):
    """A C string (NUL-terminated bytes), printable."""
    return printable(raw.split(b"\0", 1)[0])


def ctypes_layout(ctype):
    """(struct format, rebuild) for a ctypes key or value type of a map:
    the format unpacks one item of raw map data into a flat tuple, and
    rebuild(iterator over that tuple) returns what plain() returns."""
    if hasattr(ctype, "_fields_"):
        fmt, parts, offset = "", [], 0
        for name, member in ctype._fields_:
            start = getattr(ctype, name).offset
            fmt += "{}x".format(start - offset) if start > offset else ""
            member_fmt, rebuild = ctypes_layout(member)
            fmt += member_fmt
            parts.append(rebuild)
            offset = start + ctypes.sizeof(member)
        tail = ctypes.sizeof(ctype) - offset
        fmt += "{}x".format(tail) if tail else ""
        make = record_type(ctype)._make
        return fmt, lambda flat: make(part(flat) for part in parts)
    if hasattr(ctype, "_length_"):
        if ctype._type_ is ctypes.c_char:
            return "{}s".format(ctype._length_), lambda flat: _text(
                next(flat))
        item_fmt, item = ctypes_layout(ctype._type_)
        length = ctype._length_
        return item_fmt * length, lambda flat: tuple(
            item(flat) for _ in range(length))
    code = getattr(ctype, "_type_", None)
    if code == "?":
        return "?", next
    if code == "c":
        return "s", lambda flat: _text(next(flat))
    if code in ("b", "B", "h", "H", "i", "I", "l", "L", "q", "Q"):
        # By size: ctypes' long is 8 bytes on 64-bit, struct's '<L' 4.
        letter = "BHIQ"[ctypes.sizeof(ctype).bit_length() - 1]
        return letter if code.isupper() else letter.lower(), next
    raise ValueError("no layout for {}".format(ctype))


def unpack_rows(key_type, leaf_type, keys, leaves, count):
    """count (key, value) pairs as plain() gives them, from the raw
    buffers keys and leaves of a batch lookup."""
    key_fmt, key_rebuild = ctypes_layout(key_type)
    leaf_fmt, leaf_rebuild = ctypes_layout(leaf_type)
    key_size, leaf_size = ctypes.sizeof(key_type), ctypes.sizeof(leaf_type)
    key_rows = struct.iter_unpack("<" + key_fmt, keys[:count * key_size])
    leaf_rows = struct.iter_unpack("<" + leaf_fmt,
                                   leaves[:count * leaf_size])
    # Shortcuts for the common shapes: a number, a struct of numbers.
    if key_rebuild is next:
        keys_out = [key[0] for key in key_rows]
    elif _numbers_only(key_type):
        keys_out = list(map(record_type(key_type)._make, key_rows))
    else:
        keys_out = [key_rebuild(iter(key)) for key in key_rows]
    if _numbers_only(leaf_type):
        return list(zip(keys_out, map(record_type(leaf_type)._make,
                                      leaf_rows)))
    return [(key, leaf_rebuild(iter(leaf)))
            for key, leaf in zip(keys_out, leaf_rows)]


def _numbers_only(ctype):
    """A struct whose members are all numbers."""
    return hasattr(ctype, "_fields_") and all(
        ctypes_layout(member)[1] is next for _, member in ctype._fields_)


class Probes:
    """The compiled and attached eBPF program of one run."""

    STAT_TABLES = ("sys_stats", "poll_stats", "hardirq_stats",
                   "softirq_stats")
    # The key fields of collect_threads()' rows, by table (poll_stats: tid).
    STAT_KEYS = {"sys_stats": ("tid", "nr"),
                 "hardirq_stats": ("tid", "irq", "name"),
                 "softirq_stats": ("tid", "vec")}
    TABLES = STAT_TABLES + ("sys_start", "sched_state", "exit_names")
    BUDGET_TABLES = ("blocked_stats", "stop_signals")
    HIST_TABLES = ("hist",)

    def __init__(self, bpf, pid, histogram=False, stacks=False,
                 upcalls=False, long_poll=False):
        self.bpf = bpf
        self.pid = pid
        self.histogram = histogram
        self.stacks = stacks        # the program records stacks
        self.upcalls = upcalls      # the upcall probe is attached
        self.events = []
        self.syscall_events = []
        self.more_events = 0
        self._event = bpf["events"].event
        bpf["events"].open_ring_buffer(self._on_event)
        self.long_polls = []        # --long-poll catch records (plain)
        # (slot, tid) of the sys_direct slots the last report read.
        self.direct_seen = []
        if long_poll:
            # struct lp_event_t (bcc cannot type a record with a struct
            # inside: its lp_t comes from the lp_state map).
            fields = [(name, ctypes.c_uint64) for name in (
                "end", "tid_nr", "long_ns", "run", "ready", "stop",
                "stop_ready")] + [("lp", bpf["lp_state"].Leaf)]
            self._long_poll = type("LpEvent", (ctypes.Structure,),
                                   {"_fields_": fields})
            bpf["long_polls"].open_ring_buffer(self._on_long_poll)

    def _on_long_poll(self, _ctx, data, _size):
        event = plain(ctypes.cast(data, ctypes.POINTER(
            self._long_poll)).contents)
        # tid and long_nr share a u64 (little-endian: tid first).
        self.long_polls.append(Catch(
            end=event.end, tid=event.tid_nr & 0xffffffff,
            long_nr=event.tid_nr >> 32, long_ns=event.long_ns, run=event.run,
            ready=event.ready, stop=event.stop, stop_ready=event.stop_ready,
            lp=event.lp))

    def catches(self, timeout_ms):
        """--long-poll: wait up to timeout_ms for catches; returns their
        records."""
        self.poll(timeout_ms)
        caught, self.long_polls = self.long_polls, []
        return caught

    # Tables --long-poll does not read: emptied now and then (tidy()).
    UNREAD_TABLES = STAT_TABLES + ("blocked_stats", "exit_names")

    def tidy(self, now_ns, keep_ns):
        """--long-poll runs for hours: empty the tables it does not read,
        forget threads that are gone and stop signals older than keep_ns."""
        for name in self.UNREAD_TABLES:
            self.clear(name)
        # The rows first, then the live threads: a thread born in between
        # keeps its entries.
        rows = {name: [tid for tid, _ in self.rows(name)]
                for name in ("sched_state", "sys_start", "lp_state")}
        direct = self.direct_holders()
        alive = set(task_list(self.pid))
        if not alive:
            return          # gone: the run ends, the tables stay as they are
        self.free_direct_slots(direct, alive)
        for name, tids in rows.items():
            table = self.bpf[name]
            for tid in tids:
                if tid not in alive:
                    with contextlib.suppress(KeyError):
                        del table[table.Key(tid)]
        table = self.bpf["stop_signals"]
        for sig in self.stop_signals():
            if sig.last < now_ns - keep_ns:
                with contextlib.suppress(KeyError):
                    del table[table.Key(sig.sig, sig.sender)]

    def poll_histograms(self):
        """--long-poll --histogram: {tid: {slot: count}} of the poll
        intervals."""
        found = {}
        for key, count in self.rows("hist"):
            if key.nr == HIST_POLL:
                found.setdefault(key.tid, {})[key.slot] = count
        return found

    def _on_event(self, _ctx, data, _size):
        # Called for every system call event: keep it cheap.
        event = self._event(data)
        if event.type == Event.SYSCALL:
            if len(self.syscall_events) < MAX_SHOWN_EVENTS:
                self.syscall_events.append(SyscallEvent(
                    event.entry_ts, event.ts, event.tid, event.nr,
                    event.kernel_stack, event.user_stack))
            else:
                self.more_events += 1
        else:
            self.events.append((Event(event.type), event.ts))

    def poll(self, timeout_ms):
        """Wait up to timeout_ms for ring buffer events; returns them."""
        self.bpf.ring_buffer_poll(timeout=max(0, int(timeout_ms)))
        events, self.events = self.events, []
        return events

    def set_state(self, state):
        table = self.bpf["capture"]
        table[table.Key(0)] = table.Leaf(int(state))

    def open_window(self, start_ns):
        """Start capturing; start_ns is now on CLOCK_MONOTONIC, the clock
        of bpf_ktime_get_ns()."""
        table = self.bpf["capture"]
        table[table.Key(1)] = table.Leaf(start_ns)
        self.set_state(Capture.RUNNING)

    def capture_values(self):
        """(state, window start, stop trigger time) as the program has
        them; the state is read first (the program writes it last)."""
        table = self.bpf["capture"]
        state = Capture(table[table.Key(0)].value)
        return state, table[table.Key(1)].value, table[table.Key(2)].value

    def reset(self):
        self.free_gone_slots()
        for name in self.TABLES + self.BUDGET_TABLES + (
                self.HIST_TABLES if self.histogram else ()):
            self.clear(name)
        if self.stacks:
            self.bpf["stack_traces"].clear()
        if self.upcalls:
            self.bpf["upcall_stats"].clear()
        self.bpf["cpu_hold"].clear()     # an array: zeroes its entries
        table = self.bpf["capture"]
        for key in (1, 2):
            table[table.Key(key)] = table.Leaf(0)
        # Events of an earlier window still in the ring buffer (one that
        # was skipped, say) must not count in the next.
        self.bpf.ring_buffer_consume()
        self.syscall_events, self.more_events = [], 0
        with contextlib.suppress(KeyError):     # with --syscall-events
            self.bpf["event_quota"].zero()

    def collect_events(self, threads):
        """The window's system call events (drained from the ring buffer)
        as an EventLog, stacks symbolized; threads gives the names."""
        self.bpf.ring_buffer_consume()
        quota = self.bpf["event_quota"]
        # Each CPU sends MAX_SHOWN_EVENTS at most and counts the rest.
        unsent = int(quota.sum(quota.Key(1)).value)
        log = EventLog(events=self.syscall_events,
                       more=self.more_events + unsent, stacks=self.stacks)
        self.syscall_events, self.more_events = [], 0
        for tid in {event.tid for event in log.events}:
            log.names[tid] = threads[tid].name if tid in threads else (
                thread_name(self.pid, tid) or "?")
        if not self.stacks:
            return log
        table = self.bpf["stack_traces"]
        symbols = {}

        def frames(stack_id, pid):
            try:
                addrs = list(table.walk(stack_id))
            except KeyError:
                return ["[stack not found]"]
            result = []
            for addr in addrs:
                key = (addr, pid)
                if key not in symbols:
                    if pid < 0:
                        text = self.bpf.ksym(addr, show_module=True,
                                             show_offset=True)
                    else:
                        text = self.bpf.sym(addr, pid, show_module=True,
                                            show_offset=True)
                    symbols[key] = stack_frame(
                        addr, text.decode("utf-8", "replace"))
                result.append(symbols[key])
            return trim_kernel_stack(result) if pid < 0 else result

        for event in log.events:
            for stack_id, stacks, pid in (
                    (event.kernel_stack, log.kernel_stacks, -1),
                    (event.user_stack, log.user_stacks, self.pid)):
                if stack_id >= 0 and stack_id not in stacks:
                    stacks[stack_id] = frames(stack_id, pid)
        return log

    def collect_upcalls(self):
        """The window's UpcallStats."""
        return collect_upcalls([
            (key.cpu, key.result, value.value)
            for key, value in self.bpf["upcall_stats"].items()])

    def collect(self, end_ns):
        """Read the tables once into ThreadStats; the window closed at
        end_ns."""
        rows = {}
        for name in self.STAT_TABLES:
            fields = self.STAT_KEYS.get(name)
            rows[name] = [
                (tuple(getattr(key, field) for field in fields) if fields
                 else (key,), Acc.of(value)) for key, value in self.rows(name)]
        opened = self.capture_values()[1]
        sys_entries, sched = self.thread_entries(opened)
        rows["sys_stats"] = add_pending_calls(rows["sys_stats"],
                                              sys_entries, opened)
        sched_rows, starts, lost = split_sched_state(sched)
        rows.update(sched_rows)
        threads = collect_threads(rows)
        for tid, count in lost.items():
            threads.setdefault(tid, ThreadStats(tid=tid)).lost = count
        open_stops = [((tid,), (start, starts["ready"].get(tid, 0)))
                      for tid, start in starts["stopped"].items()]
        add_open_periods(threads, starts, end_ns)
        budget_rows = {"open_stops": open_stops,
                       "budget_state": budget_state_rows(sched)}
        budget_rows["blocked_stats"] = add_pending_sleeps(
            [((key.tid, key.nr), ns)
             for key, ns in self.rows("blocked_stats")], sched)
        hist = self.rows("hist") if self.histogram else []
        # (sys_start entries of earlier windows or with no call in
        # progress are left out below.)
        budget_rows["sys_hist"] = [((key.tid, key.nr, key.slot), count)
                                   for key, count in hist
                                   if key.nr < HIST_POLL]
        budget_rows["ready_hist"] = [((key.tid, key.nr, key.slot), count)
                                     for key, count in hist
                                     if key.nr == HIST_READY]
        # A thread that exited entered exit() and never left it: that is
        # no call in flight.
        exited = {tid: value.comm for tid, value in self.rows("exit_names")}
        budget_rows["sys_start"] = [
            ((tid,), (value.ts, value.nr)) for tid, value in sys_entries
            if value.window == opened and value.ts and tid not in exited]
        add_budget_rows(threads, budget_rows, end_ns)
        add_wait_rows(threads, sched, dict(self.rows("cpu_hold")), self.pid,
                      opened, end_ns)
        for tid, stats in threads.items():
            stats.name = (thread_name(self.pid, tid) or exited.get(tid) or
                          "<unknown:{}/{}>".format(self.pid, tid))
        return threads

    def thread_entries(self, window):
        """([(tid, struct sys_start_t)], [(tid, struct sched_t)]): the
        system call entry of every thread that has one, and the scheduler
        entry of the window that opened at window: those in sys_start and
        sched_state, and those in the slots of sys_direct (see the C).  A
        thread's entry is in one of the two."""
        calls, sched = self.rows("sys_start"), self.rows("sched_state")
        try:
            direct = self.rows("sys_direct")
        except KeyError:        # --direct-slots 0: no such table
            return calls, sched
        held = [value for _, value in direct if value.tid]
        self.direct_seen = [(index, value.tid) for index, value in direct
                            if value.tid]
        slotted = [(value.tid, value.sched) for value in held
                   if value.sched_window == window]
        # (Both only after a rare race: see kd_sched_new().)
        mine = {tid for tid, _ in slotted}
        return (calls + [(value.tid, value.entry) for value in held],
                [row for row in sched if row[0] not in mine] + slotted)

    def direct_holders(self):
        """[(slot, tid)] of the sys_direct slots that a thread holds."""
        try:
            rows = self.rows("sys_direct")
        except KeyError:        # --direct-slots 0: no such table
            return []
        return [(index, value.tid) for index, value in rows if value.tid]

    def free_gone_slots(self):
        """Between windows: free the slots that the last report read (so
        before the threads are listed, as tidy() explains) of threads that
        have exited.  Read there, not again here: decoding every slot
        takes longer than the gap between two triggers may leave."""
        holders, self.direct_seen = self.direct_seen, []
        alive = set(task_list(self.pid)) if holders else set()
        if alive:
            self.free_direct_slots(holders, alive)

    def free_direct_slots(self, holders, alive):
        """Free the slots among holders (direct_holders(), read before
        alive) of threads not in alive: zeroed (holder, claims and both
        entries), so that another thread can take them.  A thread born
        after the read cannot lose its slot: it is not among holders."""
        if not holders:
            return
        table = self.bpf["sys_direct"]
        for index, tid in holders:
            if tid not in alive:
                table[table.Key(index)] = table.Leaf()

    def rows(self, name):
        """All (key, value) pairs of hash map name, as plain() gives them:
        in one batch lookup (Linux 5.6), else one lookup per entry."""
        return self._batch(name, bcc.libbcc.lib.bpf_lookup_batch)

    def clear(self, name):
        """Empty hash map name: in one batch (Linux 5.6), else one
        deletion per entry."""
        self._batch(name, bcc.libbcc.lib.bpf_lookup_and_delete_batch, False)

    def _batch(self, name, operation, unpack=True):
        """The rows of hash map name (with unpack), read by the batch
        operation: lookup, or lookup and delete."""
        table = self.bpf[name]
        key_size = ctypes.sizeof(table.Key)
        leaf_size = ctypes.sizeof(table.Leaf)
        room = table.max_entries
        keys = ctypes.create_string_buffer(room * key_size)
        leaves = ctypes.create_string_buffer(room * leaf_size)
        token, count = ctypes.c_uint32(0), ctypes.c_uint32(0)
        total = 0
        while total < room:
            count.value = room - total
            failed = operation(
                table.map_fd, ctypes.byref(token) if total else None,
                ctypes.byref(token), ctypes.byref(keys, total * key_size),
                ctypes.byref(leaves, total * leaf_size), ctypes.byref(count))
            error = ctypes.get_errno()
            total += count.value
            if failed and error == errno.ENOENT:
                break           # the whole map has been read
            if failed and not unpack:
                table.clear()
                return None
            if failed:
                return [(plain(key), plain(value))
                        for key, value in table.items()]
            if not count.value:
                break
        if not unpack:
            return None
        return unpack_rows(table.Key, table.Leaf, keys.raw, leaves.raw,
                           total)

    def stop_signals(self):
        """The StopSignal list of the window."""
        return sorted((StopSignal(
            sig=key.sig, name=STOP_SIGNALS.get(
                key.sig, "signal {}".format(key.sig)), sender=key.sender,
            tgid=value.tgid, comm=value.comm, count=value.count,
            last=value.last) for key, value in self.rows("stop_signals")),
            key=lambda item: (item.sig, item.sender))

    def quiet_threads(self, threads, syscall_names, end_ns=None,
                      faults=None):
        """(tid, name, where) of the live threads that are not in threads,
        leaving out those born after the window closed at end_ns.  Takes
        the window's one look at every thread in /proc, which
        whereabouts() reads too: the quiet line and the budget agree."""
        self.tasks = snapshot_tasks(
            self.pid, set(task_list(self.pid)) | set(threads), faults)
        closed = None if end_ns is None else monotonic_since_boot(end_ns)
        return quiet_of(self.tasks, threads, syscall_names, closed)

    def whereabouts(self, tids):
        """({tid: system call nr or None}, {tid: state letter}) as
        quiet_threads() saw them."""
        return whereabouts_of(getattr(self, "tasks", {}), tids)

    def counters(self):
        table = self.bpf["counters"]
        values = {counter: int(table.sum(table.Key(counter)).value)
                  for counter in Counter}
        values[Counter.PROGRAM_SKIPPED] = self.programs_skipped()
        return values

    def programs_skipped(self):
        """How many times the kernel skipped one of the tool's programs
        (summed over them, since they were loaded), from /proc/self/fdinfo.
        A TRACEPOINT_PROBE program (attached through perf) is not run while
        any eBPF program runs on that CPU or a bpf() call there holds them
        off (bpf_prog_active); a raw tracepoint program, while the same
        program already runs on that CPU.  Kernels before 5.12 count none."""
        return sum(fdinfo_recursion_misses(
            read_proc("/proc/self/fdinfo/{}".format(func.fd)))
            for func in list(self.bpf.funcs.values()))


def fdinfo_recursion_misses(data):
    """recursion_misses of an eBPF program's fdinfo (bytes or None), 0
    when the kernel does not count them (before 5.12) or it is gone."""
    for line in (data or b"").splitlines():
        key, _, value = line.partition(b":")
        if key == b"recursion_misses" and value.strip().isdigit():
            return int(value)
    return 0


def collect_upcalls(rows):
    """UpcallStats from the upcall table's rows, (cpu, result, count)
    with result 0 or -errno."""
    stats = UpcallStats()

    def bump(table, key, count):
        table[key] = table.get(key, 0) + count

    for cpu, result, count in rows:
        if not count:
            continue
        stats.total += count
        bump(stats.total_per_cpu, cpu, count)
        if result == 0:
            stats.successful += count
            bump(stats.successful_per_cpu, cpu, count)
        else:
            stats.failed += count
            bump(stats.failed_per_cpu, cpu, count)
            bump(stats.errors, -result, count)
            bump(stats.errors_per_cpu.setdefault(-result, {}), cpu, count)
    return stats


def collect_threads(rows):
    """Build ThreadStats from plain map rows.

    rows maps a table name to a list of (key, Acc) pairs, keys being
    plain tuples: sys_stats (tid, nr), poll/run/ready/stop_stats (tid,),
    hardirq_stats (tid, irq, name), softirq_stats (tid, vec).
    """
    threads = {}

    def thread(tid):
        return threads.setdefault(tid, ThreadStats(tid=tid))

    for (tid, nr), acc in rows.get("sys_stats", ()):
        thread(tid).syscalls[nr] = acc
    for table, attr in (("poll_stats", "poll"), ("run_stats", "run"),
                        ("ready_stats", "ready"), ("stop_stats", "stopped")):
        for (tid,), acc in rows.get(table, ()):
            setattr(thread(tid), attr, acc)
    for (tid, _irq, name), acc in rows.get("hardirq_stats", ()):
        irqs = thread(tid).hardirqs
        # Two lines sharing a handler name add up.
        irqs[name] = irqs[name] + acc if name in irqs else acc
    for (tid, vec), acc in rows.get("softirq_stats", ()):
        thread(tid).softirqs[vec] = acc
    return threads


def split_sched_state(entries):
    """Split the scheduler state entries [(tid, value)] into the rows of
    collect_threads() (run_stats, ready_stats, stop_stats), the open
    period starts of add_open_periods() and the switches lost, by tid.

    A value is a struct sched_t record (run_start, ready_start, stop_start,
    lost; run, ready, stop: struct acc_t records).
    """
    rows = {table: [((tid,), Acc.of(getattr(value, field)))
                    for tid, value in entries if getattr(value, field).count]
            for table, field in (("run_stats", "run"),
                                 ("ready_stats", "ready"),
                                 ("stop_stats", "stop"))}
    starts = {"run": {}, "ready": {}, "stopped": {}}
    lost = {}
    for tid, value in entries:
        for attr, start in (("run", value.run_start),
                            ("ready", value.ready_start),
                            ("stopped", value.stop_start)):
            if start:
                starts[attr][tid] = start
        if value.lost:
            lost[tid] = value.lost
    return rows, starts, lost


def add_pending_calls(stat_rows, entries, window):
    """The sys_stats rows [((tid, nr), Acc)] with the sums the threads'
    system call entries [(tid, struct sys_start_t)] of this window (its
    field window) still hold in their slots (struct sys_slot_t: nr,
    acc)."""
    merged = dict(stat_rows)
    for tid, value in entries:
        if value.window != window:
            continue
        for slot in value.slots:
            acc = Acc.of(slot.acc)
            if not acc.count:
                continue
            old = merged.get((tid, slot.nr))
            merged[(tid, slot.nr)] = acc if old is None else old + acc
    return list(merged.items())


def budget_state_rows(entries):
    """The budget_state rows of add_budget_rows(), (tid,) -> (sleep start,
    sleep nr, unknown ns, stop_ready ns, call done), from the scheduler
    state entries [(tid, struct sched_t)] whose time budget is in use."""
    return [((tid,), (budget.sleep_start, budget.sleep_nr, budget.unknown,
                      budget.stop_ready, budget.call_done))
            for tid, budget in ((tid, value.budget) for tid, value in entries)
            if budget.in_use]


def add_pending_sleeps(rows, entries):
    """The blocked_stats rows [((tid, nr), ns)] with the sleeps that the
    scheduler entries [(tid, struct sched_t)] still hold (their budget's
    slept ns in call slept_nr)."""
    merged = dict(rows)
    for tid, value in entries:
        budget = value.budget
        if budget.in_use and budget.slept:
            key = (tid, budget.slept_nr)
            merged[key] = merged.get(key, 0) + budget.slept
    return list(merged.items())


def add_open_periods(threads, starts, end):
    """Count the periods still open when the window closed at end.

    starts maps a ThreadStats attribute ("run", "ready", "stopped") to
    {tid: start ns} as left in the start tables.
    """
    for attr, table in starts.items():
        for tid, start in table.items():
            if start > end:         # stamped as the window was closing
                continue
            stats = threads.setdefault(tid, ThreadStats(tid=tid))
            if getattr(stats, attr) is None:
                setattr(stats, attr, Acc())
            getattr(stats, attr).add(end - start)
    return threads


def add_budget_rows(threads, rows, end):
    """Add the time budget tables, as plain rows, to threads (by tid).

    rows maps a table name to (key, value) tuples: budget_state (tid,) ->
    (sleep start, sleep nr, unknown ns, stop_ready ns, call done),
    blocked_stats (tid, nr) -> ns, holders (tid, pid) -> (ns, tgid, comm),
    sys_start (tid,) -> (entry ns, nr), sys_hist and ready_hist
    (tid, nr, slot) -> count, and open_stops (tid,) -> (stop start, ready
    start) for stops still open at end.  A sleep still open at end is
    closed there.
    """
    def thread(tid):
        return threads.setdefault(tid, ThreadStats(tid=tid))

    for (tid, nr), ns in rows.get("blocked_stats", ()):
        blocked = thread(tid).blocked
        blocked[nr] = blocked.get(nr, 0) + ns
    for (tid,), (sleep_start, sleep_nr, unknown, stop_ready, done) in \
            rows.get("budget_state", ()):
        stats = thread(tid)
        stats.unknown += unknown
        stats.stop_ready += stop_ready
        stats.call_done = stats.call_done or bool(done)
        if sleep_start and sleep_start < end:
            if sleep_nr == NR_UNKNOWN:
                stats.unknown += end - sleep_start
            else:
                stats.blocked[sleep_nr] = stats.blocked.get(sleep_nr, 0) + \
                    end - sleep_start
    for (tid,), (stop_start, ready_start) in rows.get("open_stops", ()):
        if stop_start and ready_start > stop_start and ready_start < end:
            thread(tid).stop_ready += end - ready_start
    for (tid, pid), (ns, tgid, comm) in rows.get("holders", ()):
        thread(tid).holders[pid] = Holder(pid=pid, tgid=tgid, comm=comm,
                                          ns=ns)
    for (tid,), (entered, nr) in rows.get("sys_start", ()):
        if entered < end:
            thread(tid).in_call = (nr, entered)
    for (tid, nr, slot), count in rows.get("sys_hist", ()):
        hist = thread(tid).sys_hist.setdefault(nr, {})
        hist[slot] = hist.get(slot, 0) + count
    for (tid, _nr, slot), count in rows.get("ready_hist", ()):
        hist = thread(tid).ready_hist
        hist[slot] = hist.get(slot, 0) + count
    return threads


def add_wait_rows(threads, entries, cpus, tgid, opened, end):
    """Add who held the CPU while the threads waited (ThreadStats holders,
    held, moved) to threads (by tid).

    entries are the scheduler state entries [(tid, struct sched_t)]:
    ready_start is the start of a wait still open, wait the struct wait_t
    (cpu: CPU + 1 of the open wait's count, snap, held, moved, named,
    since) with snap and held by HELD_KINDS, named struct named_t records
    (pid, tgid, ns, comm), and since the time of snap.  cpus maps a CPU
    to its struct cpu_hold_t (window, last, cur_kind, held) as the window
    that opened at opened left it; a wait still open at end is booked up
    to end from it.  tgid is the target's.
    """
    for tid, value in entries:
        ready_start, wait = value.ready_start, value.wait
        got = list(wait.held)
        hold = cpus.get(wait.cpu - 1)
        if ready_start and wait.cpu and hold and ready_start < end:
            room = max(0, end - max(ready_start, wait.since))
            for kind in range(len(HELD_KINDS)):
                part = max(0, hold.held[kind] - wait.snap[kind])
                if hold.window == opened and kind == hold.cur_kind and \
                        hold.last < end:
                    part += end - hold.last     # the turn still running
                part = min(part, room)
                room -= part
                got[kind] += part
        named = [item for item in wait.named if item.ns]
        if not (any(got) or wait.moved or named):
            continue
        stats = threads.setdefault(tid, ThreadStats(tid=tid))
        for item in named:
            kind = 2 if item.pid == 0 else 0 if item.tgid == tgid else 1
            stats.holders[item.pid] = Holder(pid=item.pid, tgid=item.tgid,
                                             comm=item.comm, ns=item.ns,
                                             kind=HELD_KINDS[kind])
            got[kind] -= item.ns
        stats.held = {name: max(0, ns) for name, ns in zip(HELD_KINDS, got)}
        stats.moved = wait.moved
    return threads


# ---- Analysis: time budget, verdict, --long-poll catches --------------------

STOP_SIGNALS = {19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU",
                18: "SIGCONT"}
SIGCONT = 18
NR_UNKNOWN = -2     # budget_t.sleep_nr: a call the kernel side cannot name
HIST_READY = 0xffffffff     # hist_key_t.nr of the waits for a CPU
HIST_POLL = 0xfffffffe      # and of the poll intervals (--long-poll)


def syscall_label(nr, names):
    if nr == NR_OUTSIDE:
        return "(outside system calls)"
    return names.get(nr, "<unknown:{}>".format(nr))


def by_total(mapping):
    """Items of {key: Acc} in report order: largest total first."""
    return sorted(mapping.items(), key=lambda item: (-item[1].total, item[0]))


def largest_first(pairs):
    """(key, number) pairs in report order: largest number first."""
    return sorted(pairs, key=lambda item: (-item[1], item[0]))


def by_kernel_delay(budgets):
    """Budgets most kernel-caused delay first (then by name and TID)."""
    return sorted(budgets, key=lambda b: (-b.kernel, b.name, b.tid))


# Without --threads, a report on more threads than this has the per-thread
# blocks of this many of them only: the most affected (the overview lists
# every thread).
BLOCKS_SHOWN = 50


def select_threads(threads, quiet, selection):
    """(threads, quiet) of format_report() cut down to the ThreadSelection
    (None: all of them)."""
    if selection is None:
        return threads, quiet
    return ({tid: stats for tid, stats in threads.items()
             if selection.matches(tid, stats.name)},
            [item for item in quiet if selection.matches(item[0], item[1])])


def pick_blocks(budgets, limit=BLOCKS_SHOWN):
    """The TIDs whose per-thread blocks a report shows: every one, or the
    limit most affected when there are more (budgets by tid)."""
    if limit is None or len(budgets) <= limit:
        return set(budgets)
    return {b.tid for b in by_kernel_delay(budgets.values())[:limit]}


def duration(ns):
    """A duration in the unit that fits it (0.3 µs, 5.0 µs, 12.3 ms,
    2.50 s): the one way the tool's own words give time (the tables of
    the reference stay in ns)."""
    for unit, size, digits in (("s", 10 ** 9, 2), ("ms", 10 ** 6, 1)):
        # 999,960 ns is 1.0 ms, not 1,000.0 µs.
        if abs(ns) >= size - size // 20000:
            return "{:,.{}f} {}".format(ns / size, digits, unit)
    return "{:,.1f} µs".format(ns / 1000)


def _task(comm, pid):
    return "{} ({})".format(comm or "?", pid)


def thread_budget(stats, start, end, names, current_nr=None,
                  continued=False):
    """The Budget of a thread that recorded events in window [start, end].

    current_nr is the system call the thread was in when the window closed
    (from /proc), or None.  Sleep the kernel side could not attach to a
    call (budget_t.unknown) belongs to the call the thread was in when the
    window opened, if it is still in it, else it was outside any call (a
    page fault, say), or, when a SIGCONT came in the window (continued),
    it was the end of a stop that began before the window.
    """
    window = end - start
    budget = Budget(tid=stats.tid, name=stats.name, window=window)
    budget.on_cpu = stats.run.total if stats.run else 0
    budget.hardirq = sum(acc.total for acc in stats.hardirqs.values())
    budget.softirq = sum(acc.total for acc in stats.softirqs.values())
    budget.ready = stats.ready.total if stats.ready else 0
    if stats.stopped:
        budget.stopped = max(0, stats.stopped.total - stats.stop_ready)
    blocked = dict(stats.blocked)
    if stats.in_call is not None:
        nr, entered = stats.in_call
        budget.in_flight.append(InFlight(
            nr=nr, name=syscall_label(nr, names),
            ns=end - max(entered, start), before_window=False))
    # Still in the call it was in when the window opened?
    before = (current_nr is not None and stats.in_call is None and
              not stats.syscalls and not stats.call_done)
    if before:
        budget.in_flight.append(InFlight(
            nr=current_nr, name=syscall_label(current_nr, names),
            ns=window, before_window=True))
    if stats.unknown and not before and continued:
        budget.stopped += stats.unknown
    elif stats.unknown:
        nr = current_nr if before else NR_OUTSIDE
        blocked[nr] = blocked.get(nr, 0) + stats.unknown
    budget.blocked_in = [BlockedIn(nr=nr, name=syscall_label(nr, names),
                                   ns=ns)
                         for nr, ns in largest_first(blocked.items())
                         if ns > 0]
    budget.blocked = sum(item.ns for item in budget.blocked_in)
    budget.other = window - (budget.on_cpu + budget.ready + budget.blocked +
                             budget.stopped)
    return budget


def quiet_budget(tid, name, start, end, names, state="", current_nr=None):
    """The Budget of a thread that recorded nothing in the window: it was
    in one state throughout, the one /proc shows at the end (state is the
    letter of /proc/PID/task/TID/stat).  A thread that is "running" there
    without a switch in the window was on a CPU throughout; one that
    waited for a CPU throughout would look the same."""
    window = end - start
    budget = Budget(tid=tid, name=name, window=window, quiet=True)
    if state in ("T", "t"):
        budget.stopped = window
    elif current_nr is not None:
        budget.blocked = window
        label = syscall_label(current_nr, names)
        budget.blocked_in = [BlockedIn(nr=current_nr, name=label, ns=window)]
        budget.in_flight = [InFlight(nr=current_nr, name=label, ns=window,
                                     before_window=True)]
    elif state == "R":
        budget.on_cpu = window
    elif state in ("S", "D", "I"):
        budget.blocked = window
        budget.blocked_in = [BlockedIn(nr=NR_OUTSIDE, ns=window,
                                       name=syscall_label(NR_OUTSIDE, names))]
    else:
        budget.other = window
    return budget


def window_budgets(threads, quiet, start, end, names, current=None,
                   states=None, continued=False):
    """Budgets of every thread of the window, by tid.

    threads: ThreadStats by tid; quiet: (tid, name, where) of threads with
    no events; current: {tid: nr or None} and states: {tid: state letter}
    as /proc showed them when the window closed; continued: a SIGCONT
    came in the window.
    """
    current = current or {}
    states = states or {}
    budgets = {tid: thread_budget(stats, start, end, names,
                                  current.get(tid), continued)
               for tid, stats in threads.items()}
    for tid, name, _where in quiet:
        budgets[tid] = quiet_budget(tid, name, start, end, names,
                                    states.get(tid, ""), current.get(tid))
    return budgets


def where_text(syscall, syscall_names):
    """"in NAME" for a thread blocked in a system call, "running" for one
    on a CPU, else "" (syscall as Task has it)."""
    if syscall == "running":
        return syscall
    if isinstance(syscall, int):
        return "in " + syscall_names.get(syscall, "syscall {}".format(
            syscall))
    return ""


def quiet_of(tasks, threads, syscall_names, closed=None):
    """(tid, name, where) of the tasks (Task by tid) not in threads.  A
    thread that started after the window closed (closed: seconds after
    boot) was not there to be quiet: it is left out.  Start times count in
    clock ticks, so one born in the tick the window closed in stays."""
    # A stopped thread still shows the call the stop interrupted (it stops
    # on its way out of it); its budget counts the window as stopped.
    return [(tid, task.name or "?", "stopped" if task.state in ("T", "t")
             else where_text(task.syscall, syscall_names))
            for tid, task in sorted(tasks.items()) if tid not in threads and
            (closed is None or task.started is None or
             task.started <= closed)]


def whereabouts_of(tasks, tids):
    """({tid: system call nr or None}, {tid: state letter}) of tids, from
    the tasks (Task by tid) seen; a thread not seen (exited) has None and
    ""."""
    seen = {tid: tasks.get(tid) for tid in tids}
    return ({tid: task.syscall if task is not None and isinstance(
                task.syscall, int) else None for tid, task in seen.items()},
            {tid: "" if task is None else task.state
             for tid, task in seen.items()})


# PREEMPT_RT runs hard interrupt handlers in kernel threads named
# irq/VECTOR-DEVICE (the name cut to 15 characters), and softirqs in the
# thread that raised them or in ksoftirqd/CPU and ktimers/CPU (timers).
# Those threads take the CPU from others like any task.
IRQ_THREAD = re.compile(r"irq/(\d+)-(.*)")
SOFTIRQ_THREADS = (("ksoftirqd/", "soft IRQs"),
                   ("ktimers/", "timer soft IRQs"))


def interrupt_work(comm):
    """The interrupt work a kernel thread does on PREEMPT_RT, in words
    ("hard IRQ 24 virtio0", "soft IRQs"), or None for any other task."""
    match = IRQ_THREAD.fullmatch(comm or "")
    if match:
        return "hard IRQ {} {}".format(match.group(1), match.group(2))
    return next((work for prefix, work in SOFTIRQ_THREADS
                 if (comm or "").startswith(prefix)), None)


def cpu_finding(budget, stats, threshold, realtime=False):
    """Waiting for a CPU.  On a PREEMPT_RT kernel (realtime), the holders
    that are interrupt threads are named as such, and when they held the
    CPU for most of the wait the finding is interrupt load, not CPU
    contention."""
    holders = sorted(stats.holders.values() if stats else (),
                     key=lambda h: (-h.ns, h.pid))
    rest = dict(stats.held if stats else {})
    # A task named for a sliver of the wait says less than its class.
    small = [h for h in holders if h.kind and h.ns * 100 < budget.ready]
    for holder in small:
        rest[holder.kind] = rest.get(holder.kind, 0) + holder.ns
    holders = [h for h in holders if h not in small]
    rest = {kind: ns for kind, ns in rest.items() if ns}
    moved = stats.moved if stats else 0
    unseen = max(0, budget.ready - sum(h.ns for h in holders) -
                 sum(rest.values()))
    works = {h.pid: interrupt_work(h.comm) if realtime and h.pid else None
             for h in holders}

    def label(h):
        if h.pid == 0:
            return "idle"
        if works[h.pid]:
            return "{} [{}]".format(_task(h.comm, h.pid), works[h.pid])
        return _task(h.comm, h.pid)

    named = ["{} {}".format(label(h), duration(h.ns)) for h in holders[:4]]
    if len(holders) > 4:
        named.append("{} other task{} {}".format(
            len(holders) - 4, "s" if len(holders) > 5 else "",
            duration(sum(h.ns for h in holders[4:]))))
    for kind, words in (("target", "other threads of this process"),
                        ("other", "other processes"), ("idle", "idle")):
        if rest.get(kind):
            named.append("{} {}".format(words, duration(rest[kind])))
    # Each wait is accounted in full (see kd_book_holders() and struct
    # cpu_hold_t) but for one queued on another CPU than it was counted
    # on.
    if unseen > budget.ready // 20:
        why = (" ({} of it queued on another CPU than first)".format(
            duration(min(moved, unseen))) if moved else "")
        unrecorded = (" Who held the CPU for {} of that wait was not "
                      "recorded{}.".format(duration(unseen), why) if named
                      else " Who held the CPU meanwhile was not recorded{}."
                      .format(why))
    else:
        unrecorded = ""
    sources = [(works[h.pid], h.ns) for h in holders if works[h.pid]]
    interrupts = sum(ns for _, ns in sources) * 2 > budget.ready
    text = ("{} waited {} for a CPU ({:.1f} % of the window, threshold "
            "{:g} %): {}".format(
                _task(budget.name, budget.tid), duration(budget.ready),
                budget.percent(budget.ready), threshold,
                "interrupt load, run in kernel threads on this PREEMPT_RT "
                "kernel" if interrupts else "CPU contention"))
    if named:
        text += "; meanwhile its CPU ran " + ", ".join(named)
    text += "." + unrecorded
    if not interrupts:
        step = ("what else runs on this thread's CPUs and why: CPU "
                "affinity and isolation, cgroup CPU limits, priorities "
                "(top -H, perf sched latency)")
    elif sources[0][0].startswith("hard"):
        step = ("/proc/interrupts for that IRQ and its affinity "
                "(/proc/irq/N/smp_affinity): move it off this thread's CPU, "
                "or compare the irq thread's priority (chrt -p PID) with "
                "this thread's")
    else:
        step = ("/proc/softirqs on this thread's CPU and what raises them "
                "(timers, network); the priority of ksoftirqd and ktimers "
                "(chrt -p PID) against this thread's")
    return Finding(
        tid=budget.tid, name=budget.name,
        kind="irq" if interrupts else "cpu", ns=budget.ready,
        percent=budget.percent(budget.ready), threshold=threshold,
        text=text, holders=holders, rest=rest, unattributed=unseen,
        moved=min(moved, unseen), next_step=step,
        sources=sources if interrupts else [])


def irq_finding(budget, stats, threshold):
    sources = largest_first(
        [("hard IRQ " + name, acc.total)
         for name, acc in stats.hardirqs.items()] +
        [("soft IRQ " + softirq_name(vec), acc.total)
         for vec, acc in stats.softirqs.items()])
    ns = budget.hardirq + budget.softirq
    text = ("{} lost {} to interrupts ({:.1f} % of the window, threshold "
            "{:g} %): interrupt load, most of it {}.".format(
                _task(budget.name, budget.tid), duration(ns),
                budget.percent(ns), threshold,
                ", ".join("{} {}".format(name, duration(total))
                          for name, total in sources[:3])))
    top = sources[0][0] if sources else ""
    if top.startswith("hard"):
        step = ("/proc/interrupts for that IRQ, and its CPU affinity "
                "(/proc/irq/N/smp_affinity, irqbalance): move it off this "
                "thread's CPU")
    elif top == "soft IRQ net_rx" or top == "soft IRQ net_tx":
        step = ("/proc/softirqs and the network load on this CPU; packets "
                "this thread sends on loopback or veth are received in its "
                "own context; RPS/RFS and IRQ affinity move the rest away")
    else:
        step = "/proc/softirqs, and what raises it on this thread's CPU"
    return Finding(tid=budget.tid, name=budget.name, kind="irq", ns=ns,
                   percent=budget.percent(ns), threshold=threshold,
                   text=text, next_step=step, sources=sources)


def stop_cause(signals):
    """What stopped the threads: the stop signals of the window."""
    if not signals:
        return (" by a signal sent before the window opened, or by a "
                "debugger (ptrace)")
    return " by " + ", ".join(
        "{}{} from {}".format(sig.name, "" if sig.count == 1 else
                              " x{}".format(sig.count),
                              _task(sig.comm, sig.sender))
        for sig in signals)


def stopped_finding(budget, signals, threshold):
    text = ("{} was stopped for {} ({:.1f} % of the window, threshold "
            "{:g} %){}".format(_task(budget.name, budget.tid),
                               duration(budget.stopped),
                               budget.percent(budget.stopped), threshold,
                               stop_cause(signals)))
    if signals:
        step = ("who sends that signal: a debugger, job control (Ctrl-Z), "
                "a watchdog or monitoring script")
    else:
        step = ("who stops the process: a debugger attached to it, job "
                "control (Ctrl-Z), a watchdog")
    return Finding(tid=budget.tid, name=budget.name, kind="stopped",
                   ns=budget.stopped, percent=budget.percent(budget.stopped),
                   threshold=threshold, text=text + ".", next_step=step,
                   signals=list(signals))


def analyse_window(threads, quiet, start, end, names, current=None,
                   states=None, signals=(), thresholds=None, realtime=False):
    """(Budget by tid, Verdict) of one window [start, end]; see
    window_budgets() and make_verdict()."""
    signals = list(signals)
    budgets = window_budgets(threads, quiet, start, end, names, current,
                             states, any(sig.sig == SIGCONT
                                         for sig in signals))
    return budgets, make_verdict(budgets, threads,
                                 thresholds or Thresholds(),
                                 [sig for sig in signals
                                  if sig.sig != SIGCONT], realtime)


def make_verdict(budgets, threads, thresholds, signals=(), realtime=False):
    """Rank threads by kernel-caused delay and state what crosses the
    thresholds.  budgets and threads are by tid; signals lists the
    StopSignal of the window; realtime: the kernel is PREEMPT_RT."""
    window = max((b.window for b in budgets.values()), default=0)
    verdict = Verdict(window=window, thresholds=thresholds)
    ordered = sorted(budgets.values(),
                     key=lambda b: (-b.percent(b.kernel), b.name, b.tid))
    verdict.ranking = [Ranked(tid=b.tid, name=b.name, kernel=b.kernel,
                              percent=b.percent(b.kernel))
                       for b in ordered if b.kernel > 0]
    if window < thresholds.min_window:
        verdict.too_short = True
        return verdict

    def crosses(budget, ns, share, floor):
        # A share of the window that matters, and an amount that does.
        return ns and ns >= floor and budget.percent(ns) >= share

    for budget in ordered:
        stats = threads.get(budget.tid)
        if crosses(budget, budget.ready, thresholds.ready,
                   thresholds.ready_floor):
            verdict.findings.append(cpu_finding(budget, stats,
                                                thresholds.ready, realtime))
        irq = budget.hardirq + budget.softirq
        if stats and crosses(budget, irq, thresholds.irq,
                             thresholds.irq_floor):
            verdict.findings.append(irq_finding(budget, stats,
                                                thresholds.irq))
        if crosses(budget, budget.stopped, thresholds.stopped,
                   thresholds.stopped_floor):
            verdict.findings.append(stopped_finding(
                budget, [sig for sig in signals], thresholds.stopped))
    return verdict


def holder_classes(finding, pid):
    """ns of a CPU finding's wait by who held the CPU: "same" (other
    threads of process pid), "other" (other processes), "idle", and
    "unseen" (not recorded)."""
    parts = {"same": 0, "other": 0, "idle": 0}
    for holder in finding.holders:
        part = "idle" if holder.pid == 0 else \
            "same" if holder.tgid == pid else "other"
        parts[part] += holder.ns
    # What the named holders leave, by class (Finding.rest).
    rest = getattr(finding, "rest", None) or {}
    for part, kind in (("same", "target"), ("other", "other"),
                       ("idle", "idle")):
        parts[part] += rest.get(kind, 0)
    parts["unseen"] = max(0, finding.ns - sum(parts.values()))
    return parts


def finding_cause(finding, pid):
    """What a finding blames, for grouping: for CPU contention the
    largest class of holder_classes(), for interrupts the top source, for
    a stop the signals."""
    if finding.kind == "cpu":
        parts = holder_classes(finding, pid)
        return max(sorted(parts), key=lambda part: parts[part])
    if finding.kind == "irq":
        return finding.sources[0][0] if finding.sources else ""
    return tuple((sig.sig, sig.sender) for sig in finding.signals)


def group_findings(findings, pid=None):
    """The findings in groups [[Finding]] of one kind and cause, in the
    order of their first finding, largest share first inside a group.
    Kept apart from the rules that make findings."""
    groups = {}
    for finding in findings:
        groups.setdefault((finding.kind, finding_cause(finding, pid)),
                          []).append(finding)
    return [sorted(group, key=lambda f: (-f.percent, f.name, f.tid))
            for group in groups.values()]


# A catch is one interval of one thread, from the return of a poll() to its
# next poll(), as the kernel side sends it (struct lp_event_t).  It becomes
# a ThreadStats of that interval, so that the time budget and the verdict
# are the ones of a window.

NR_OTHER_CALLS = -3     # sleeps in system calls beyond the record's slots


def long_poll_stats(record, name):
    """(ThreadStats of the interval, start ns) from a Catch record, its lp
    a struct lp_t record (start, run0, ready0, stop0, stop_ready0, gen,
    rest, softirq; sleep, holder, hardirq: struct lp_slot_t records, ns,
    key, tgid, name)."""
    lp = record.lp
    start, rest = lp.start, lp.rest
    stats = ThreadStats(tid=record.tid, name=name)
    stats.call_done = True
    if record.run > lp.run0:
        run = record.run - lp.run0
        stats.run = Acc(1, run, run, run)
    if record.ready > lp.ready0:
        stats.ready = Acc(1, record.ready - lp.ready0, 0, 0)
    if record.stop > lp.stop0:
        stats.stopped = Acc(1, record.stop - lp.stop0, 0, 0)
    stats.stop_ready = max(0, record.stop_ready - lp.stop_ready0)
    if lp.gen != start or not start:
        return stats, start     # nothing with a name in this interval
    for slot in lp.sleep:
        if slot.ns:
            key = slot.key
            nr = key - (1 << 32) if key >= 1 << 31 else key
            nr = NR_OUTSIDE if nr == NR_UNKNOWN else nr
            stats.blocked[nr] = stats.blocked.get(nr, 0) + slot.ns
    if rest[0]:
        stats.blocked[NR_OTHER_CALLS] = rest[0]
    stats.holders = {slot.key: Holder(pid=slot.key, tgid=slot.tgid,
                                      comm=slot.name, ns=slot.ns)
                     for slot in lp.holder if slot.ns}
    stats.hardirqs = {slot.name: Acc(1, slot.ns, slot.ns, slot.ns)
                      for slot in lp.hardirq if slot.ns}
    if rest[2]:
        stats.hardirqs["(other IRQs)"] = Acc(1, rest[2], rest[2], rest[2])
    stats.softirqs = {vec: Acc(1, ns, ns, ns)
                      for vec, ns in enumerate(lp.softirq) if ns}
    return stats, start


def as_interval(text):
    """The verdict's words for a window, said of an interval."""
    return text.replace("window", "interval")


def analyse_long_poll(record, name, names, signals=(), thresholds=None,
                      number=1, realtime=False):
    """The LongPoll of a catch record (see long_poll_stats()); signals
    lists the StopSignal of the run (those sent in the interval count).
    A catch is as long as the user asked for: --min-window, which is for
    windows, does not apply."""
    stats, start = long_poll_stats(record, name)
    end = record.end
    names = dict(names)
    names[NR_OTHER_CALLS] = "(other system calls)"
    budget = thread_budget(stats, start, end, names)
    sent = [sig for sig in signals
            if sig.sig != SIGCONT and start <= sig.last <= end]
    verdict = make_verdict({stats.tid: budget}, {stats.tid: stats},
                           dataclasses.replace(thresholds or Thresholds(),
                                               min_window=0),
                           sent, realtime=realtime)
    for finding in verdict.findings:
        finding.text = as_interval(finding.text)
    longest = BlockedIn(nr=record.long_nr, ns=record.long_ns,
                        name=syscall_label(record.long_nr, names)) \
        if record.long_ns else None
    return LongPoll(number=number, tid=stats.tid, name=name, start=start,
                    end=end, budget=budget, verdict=verdict,
                    longest=longest)


# ---- Text output ------------------------------------------------------------

INDENT = " " * 28


def softirq_name(vec):
    return SOFTIRQ_NAMES[vec] if 0 <= vec < len(SOFTIRQ_NAMES) else \
        "<unknown:{}>".format(vec)


def timestamp_line(message, now=None):
    """A header line: message, local time and UTC time."""
    now = now or datetime.datetime.now().astimezone()
    utc = now.astimezone(datetime.timezone.utc)
    return "{} @{} ({} UTC)".format(message,
                                    now.replace(tzinfo=None).isoformat(
                                        timespec="microseconds"),
                                    utc.strftime("%H:%M:%S"))


def one_line(text):
    """text with its control characters (newlines from a library's error,
    say) escaped, so that it stays one line."""
    return re.sub(r"[\x00-\x1f\x7f]",
                  lambda match: "\\x{:02x}".format(ord(match.group())), text)


def iso_time(when):
    """An aware datetime in ISO 8601 with its UTC offset, or None."""
    if when is None:
        return None
    return when.isoformat(timespec="microseconds")


def format_header(header):
    """The first lines of a text report: tool, command line, host, target."""
    lines = wrap("kernel_delay {}: {}".format(
        header.tool_version, " ".join(
            keep_together(shlex.quote(printable(arg)))
            for arg in header.command)), cut=True)
    lines += wrap("Host {}: Linux {} ({}), {} CPU{}, load average {}".format(
        printable(header.host), printable(header.kernel), header.machine,
        header.cpus, "s" if header.cpus != 1 else "",
        keep_together(" ".join("{:.2f}".format(load)
                               for load in header.load))))
    lines += wrap("Process {}, PID {}{}".format(
        header.name, header.pid,
        ": " + keep_together(printable(header.exe)) if header.exe else ""),
        cut=True)
    if header.started is not None:
        lines += stamped("# Process started", header.started)
    if header.version is not None:
        lines += wrap("Version: " + printable(header.version))
    elif header.version_error is not None:
        lines += wrap("Version: unknown ({})".format(
            printable(header.version_error)))
    return lines


def _section(title):
    return "\n{:10} {:16} {}".format("", "", title)


WIDTH = 79      # the tool's own lines fit an 80-column terminal


def keep_together(text):
    """text whose spaces never break a line in wrap()."""
    return text.replace(" ", "\0")


def wrap(text, first="# ", rest="#   ", width=WIDTH, cut=False):
    """The lines of one of the tool's sentences: at most width columns,
    first before the first line and rest before the others; a number
    never parts from its unit, nor what keep_together() holds, unless it
    is wider than a line and cut says to cut it (paths)."""
    kept = re.sub(r"(\d) (%|ns|µs|ms|s)(?!\w)", "\\1\0\\2", text)
    lines = textwrap.wrap(kept, width=width, initial_indent=first,
                          subsequent_indent=rest, break_on_hyphens=False,
                          break_long_words=cut)
    return [line.replace("\0", " ") for line in lines] or [first.rstrip()]


def stamped(message, now=None):
    """timestamp_line() in lines of the tool's width: a message too long
    for the time goes on with it on a line of its own."""
    line = timestamp_line(message, now)
    if len(line) <= WIDTH:
        return [line]
    stamp = line[len(message) + 1:]
    return wrap(message[2:] if message.startswith("# ") else message) + \
        ["#   " + stamp]


@dataclass(frozen=True)
class Column:
    """A column of table(): its title, its width, the spaces before it,
    and how its cells read: "," a number with thousands separators, "d"
    a number as it is (an ID), "<" text (cut to the width, unless cut is
    False), ">" text aligned right.  The title aligns as its cells, unless
    align says."""
    title: str
    width: int
    kind: str = ","
    gap: int = 2
    align: str = ""
    cut: bool = True


def table_row(columns, cells, indent=""):
    """One line of a table: cells (as many as columns, or fewer: the
    columns on the right are left out); a title line when cells are the
    titles (None)."""
    parts = []
    for index, column in enumerate(columns):
        if cells is None:
            align = column.align or ("<" if column.kind == "<" else ">")
            cell = "{:{}{}}".format(column.title, align, column.width)
        elif index >= len(cells):
            break
        else:
            value = cells[index]
            if column.kind == "<":
                cell = "{:<{w}.{p}}".format(
                    value, w=column.width,
                    p=column.width if column.cut else len(str(value)))
            elif column.kind == "," and isinstance(value, int):
                cell = "{:>{},}".format(value, column.width)
            else:
                cell = "{:>{}}".format(value, column.width)
        parts.append(" " * column.gap * bool(index) + cell)
    return (indent + "".join(parts)).rstrip()


def table(columns, rows, indent=INDENT, rule=False,
          empty="none in this window"):
    """A table section's lines: its column titles (and a rule of dashes
    under them), then a line per row; with no rows, one line that says
    so (empty) instead of the titles."""
    if not rows and empty:
        return [indent + empty]
    lines = [table_row(columns, None, indent)]
    if rule:
        lines.append(table_row(columns, ["-" * c.width for c in columns],
                               indent))
    return lines + [table_row(columns, row, indent) for row in rows]


# The reference's per-thread tables: columns and their widths.
NAME_COLUMN = Column("NAME", 20, "<", 1)


SYSCALL_COLUMNS = (NAME_COLUMN, Column("NUMBER", 6, "d", 1),
                   Column("COUNT", 10), Column("TOTAL ns", 16),
                   Column("MAX ns", 16))


HARDIRQ_COLUMNS = (NAME_COLUMN, Column("COUNT", 10), Column("TOTAL ns", 16),
                   Column("MAX ns", 16))


SOFTIRQ_COLUMNS = (NAME_COLUMN, Column("VECT_NR", 7, "d", 1),
                   Column("COUNT", 10), Column("TOTAL ns", 16),
                   Column("MAX ns", 16))


POLL_COLUMNS = (Column("COUNT", 10, align="<"), Column("AVERAGE ns", 16),
                Column("MIN ns", 16), Column("MAX ns", 16))


RUN_COLUMNS = (Column("SCHED_CNT", 10, align="<"), Column("TOTAL ns", 16),
               Column("MIN ns", 16), Column("MAX ns", 16))


READY_COLUMNS = RUN_COLUMNS[:2] + RUN_COLUMNS[3:]


STOPPED_COLUMNS = (Column("STOP_CNT", 10, align="<"),) + READY_COLUMNS[1:]


def acc_rows(accs, label):
    """Table rows of {key: Acc}, largest total first: label(key) gives
    the cells before the count."""
    return [label(key) + [acc.count, acc.total, acc.max]
            for key, acc in by_total(accs)]


def wrap_note(note):
    """A one-line note ("# NOTE: ...", as JSON keeps it) in lines."""
    return wrap(note[2:] if note.startswith("# ") else note)


OVERVIEW_COLUMNS = (
    Column("TID", 10, "d", align="<"), Column("THREAD", 16, "<", 1),
    Column("ON CPU", 6, ">", 1), Column("READY ", 6, ">", 1),
    Column("IRQ   ", 6, ">", 1), Column("STOPPED", 7, ">", 1),
    Column("ASLEEP", 6, ">", 1), Column("TOP CALL", 15, "<", 1))


BUDGET_COLUMNS = (Column("PART", 24, "<"), Column("TOTAL ns", 16, gap=1),
                  Column("SHARE", 8, ">"))


HISTOGRAM_COLUMNS = (Column("ns range", 33, ">"), Column("COUNT", 10),
                     Column("DISTRIBUTION", 0, ">"))


EVENT_COLUMNS = (Column("ENTRY (ns)", 19, "d"),
                 Column("EXIT (ns)", 19, "d", 1), Column("TID", 10, "d", 1),
                 Column("COMM", 16, "<", 1), Column("DELTA (us)", 10, ",", 1),
                 Column("SYSCALL", 16, "<", cut=False))


UPCALL_COLUMNS = (Column("RESULT", 24, "<"), Column("COUNT", 14, gap=1),
                  Column("PER CPU (CPU: COUNT)", 36, "<"))


INTERVAL_COLUMNS = (Column("", 10, "<"), Column("START ns", 16, "d"),
                    Column("END ns", 16, "d"))


def window_head(number, count, length, end=None):
    """The first line of a window's report: its number (of count; count
    0: no limit) and length (ns), and how it ended if not as planned."""
    return "# WINDOW {:,}{}: {}{}".format(
        number, " of {:,}".format(count) if count else "", duration(length),
        " ({})".format(end) if end else "")


def window_foot(number, count):
    """The separator that ends a window's report."""
    return "{} ".format(window_head(number, count, 0).split(":")[0].replace(
        "# WINDOW", "# ---- end of window")).ljust(WIDTH, "-")


def run_summary(what, end, skipped=0, warnings=0):
    """The last line of a run: what it reported ("3 windows reported"),
    windows skipped, warnings, and how it ended."""
    return "# End of run: {}{}{} ({})".format(
        what, ", {:,} skipped".format(skipped) if skipped else "",
        "; {:,} warning{} above".format(warnings, "s" * (warnings > 1))
        if warnings else "", end)


def format_thread(stats, syscall_names, poll_nrs):
    """The report lines of one thread: the reference's tables."""
    rows = acc_rows(stats.syscalls, lambda nr: [
        syscall_label(nr, syscall_names), nr % COMPAT_NR])
    calls = [acc for nr, acc in stats.syscalls.items() if nr not in poll_nrs]
    if calls:
        rows.append(["TOTAL( - poll):", "", sum(a.count for a in calls),
                     sum(a.total for a in calls)])
    lines = ["{:10} {:16} {}".format(stats.tid, stats.name,
                                     "[SYSCALL STATISTICS]")]
    lines += table(SYSCALL_COLUMNS, rows)
    if stats.poll:
        lines += [_section("[LONG POLL STATISTICS]")] + table(
            POLL_COLUMNS, [[stats.poll.count, stats.poll.average,
                            stats.poll.min, stats.poll.max]])
    lines += [_section("[THREAD RUN STATISTICS]")] + table(
        RUN_COLUMNS, [[stats.run.count, stats.run.total, stats.run.min,
                       stats.run.max]] if stats.run else [])
    lines += [_section("[THREAD READY STATISTICS]")] + table(
        READY_COLUMNS, [[stats.ready.count, stats.ready.total,
                         stats.ready.max]] if stats.ready else [])
    if stats.lost:
        lines += wrap(
            "NOTE: the kernel did not report {} of this thread; the run "
            "and ready periods around {} are left out.".format(
                keep_together("{:,} switch{}".format(
                    stats.lost, "es" if stats.lost > 1 else "")),
                "them" if stats.lost > 1 else "it"), INDENT, INDENT)
    if stats.stopped:
        lines += [_section("[THREAD STOPPED STATISTICS]")] + table(
            STOPPED_COLUMNS, [[stats.stopped.count, stats.stopped.total,
                               stats.stopped.max]])
    for title, columns, accs, label in (
            ("[HARD IRQ STATISTICS]", HARDIRQ_COLUMNS, stats.hardirqs,
             lambda name: [name]),
            ("[SOFT IRQ STATISTICS]", SOFTIRQ_COLUMNS, stats.softirqs,
             lambda vec: [softirq_name(vec), vec])):
        if accs:
            rows = acc_rows(accs, label)
            rows.append(["TOTAL:"] + [""] * (len(columns) - 4) + [
                sum(a.count for a in accs.values()),
                sum(a.total for a in accs.values())])
            lines += [_section(title)] + table(columns, rows)
    return lines


def format_report(threads, syscall_names, poll_nrs, quiet=(), budgets=None,
                  histogram=False, faults=None):
    """The per-thread table, threads sorted by name then TID.

    quiet lists (tid, name, where) of threads alive at the end of the
    window that recorded nothing in it: blocked, or on a CPU, throughout;
    where says which ("in poll", "running") when known.  budgets (Budget
    by tid) adds each thread's [TIME BUDGET], histogram its histograms.
    With faults (a Faults), a thread whose block fails to format gets a
    note in its place, and the others are shown.
    """
    lines = ["{:10} {:16} {}".format("TID", "THREAD", "<RESOURCE SPECIFIC>"),
             "{:10} {:16} {}".format("-" * 10, "-" * 16, "-" * 76)]
    ordered = sorted(threads.values(), key=lambda t: (t.name, t.tid))
    for index, stats in enumerate(ordered):
        if index:
            lines.append("")
        try:
            block = format_thread(stats, syscall_names, poll_nrs)
            if budgets and stats.tid in budgets:
                block += format_budget(budgets[stats.tid])
            if histogram:
                block += format_histograms(stats, syscall_names)
        except Exception:
            if faults is None:
                raise
            block = wrap_note(faults.note("thread {}".format(stats.tid)))
        lines += block
    if quiet:
        lines += [""] + wrap_items(
            "# No events from {:,} thread{} (blocked or on a CPU for the "
            "whole window):".format(len(quiet), "s" if len(quiet) > 1
                                    else ""),
            ["{} ({})".format(name, ", ".join([str(tid)] + [where] * bool(
                where))) for tid, name, where in
             sorted(quiet, key=lambda item: (item[1], item[0]))])
    return lines


def format_overview(budgets, thresholds, window):
    """The overview that opens a window's report: one line per thread
    (Budget), most kernel-caused delay first, every part of its time
    budget as a share of the window; * marks a share that crosses a
    verdict threshold (Thresholds): its share and its floor, in a window
    long enough to judge (as make_verdict() decides).  79 columns."""
    judged = window >= thresholds.min_window

    def cell(ns, limit, floor=0, width=6):
        share = 100.0 * ns / window if window > 0 else 0.0
        return "{:{}.1f}{}".format(share, width - 1,
                                   "*" if judged and ns and ns >= floor and
                                   limit is not None and share >= limit
                                   else " ")

    ordered = by_kernel_delay(budgets)
    rows = [[budget.tid, budget.name, cell(budget.on_cpu, None),
             cell(budget.ready, thresholds.ready, thresholds.ready_floor),
             cell(budget.hardirq + budget.softirq, thresholds.irq,
                  thresholds.irq_floor),
             cell(budget.stopped, thresholds.stopped,
                  thresholds.stopped_floor, 7),
             cell(budget.blocked, None),
             budget.blocked_in[0].name if budget.blocked_in else ""]
            for budget in ordered]
    return ["# OVERVIEW: {:,} thread{}, most kernel-caused delay first; "
            "shares of the".format(len(ordered),
                                   "s" if len(ordered) != 1 else ""),
            "# {} window, * where a verdict threshold is crossed".format(
                duration(window))] + \
        table(OVERVIEW_COLUMNS, rows, "")


def blocks_left_out(count):
    """The line saying how many threads' blocks a report leaves out."""
    if not count:
        return []
    return [""] + wrap(
        "The blocks of {:,} more thread{} are left out (the overview "
        "lists {}); --threads '*' shows every thread's block.".format(
            count, "s" if count > 1 else "",
            "them" if count > 1 else "it"))


def format_budget(budget, top=3):
    """The [TIME BUDGET] section of a thread: every part in ns and as a
    share of the window, the top system calls it slept in, and what was
    in flight when the window closed."""
    def row(label, ns):
        return [label, ns, "{:.1f} %".format(budget.percent(ns))]

    rows = [row("on a CPU", budget.on_cpu),
            row("  in hard IRQs", budget.hardirq),
            row("  in soft IRQs", budget.softirq),
            row("waiting for a CPU", budget.ready),
            row("asleep in system calls", budget.blocked)]
    for item in budget.blocked_in[:top]:
        rows.append(row("  " + item.name, item.ns))
    rest = budget.blocked_in[top:]
    if rest:
        rows.append(row("  {:,} other call{}".format(
            len(rest), "s" if len(rest) > 1 else ""),
            sum(item.ns for item in rest)))
    rows += [row("stopped", budget.stopped), row("other", budget.other)]
    lines = [_section("[TIME BUDGET]")] + table(BUDGET_COLUMNS, rows)
    for item in budget.in_flight:
        lines += wrap("{} in flight {}{}".format(
            item.name, duration(item.ns),
            " (since before the window)" if item.before_window else ""),
            INDENT, INDENT + "  ")
    return lines


def log2_range(slot):
    """The values of a bpf_log2l() slot: [2^(slot-1), 2^slot - 1]."""
    if slot <= 0:
        return 0, 0
    return 1 << (slot - 1), (1 << slot) - 1


def log2_rows(hist):
    """(low, high, count) of each slot of a log2 histogram {slot: count},
    from the lowest to the highest used one."""
    return [log2_range(slot) + (hist.get(slot, 0),)
            for slot in range(min(hist or [0]), max(hist or [-1]) + 1)]


def format_log2_hist(title, hist, width=40):
    """A log2 histogram section (log2_rows())."""
    peak = max(hist.values()) if hist else 0
    rows = [["{:>15,} -> {:<15,}".format(low, high), count,
             "|{:{}}|".format("*" * (count * width // peak), width)]
            for low, high, count in log2_rows(hist)]
    return [_section("[{}]".format(title))] + table(HISTOGRAM_COLUMNS, rows)


def format_histograms(stats, syscall_names):
    lines = []
    for nr, hist in sorted(stats.sys_hist.items()):
        lines += format_log2_hist("SYSCALL HISTOGRAM: {}".format(
            syscall_label(nr, syscall_names)), hist)
    if stats.ready_hist:
        lines += format_log2_hist("READY HISTOGRAM", stats.ready_hist)
    return lines


THRESHOLD_OPTIONS = ("--ready-threshold, --irq-threshold, "
                     "--stopped-threshold and their --*-floor")


# A verdict says findings that share a kind and a cause once for all their
# threads when there are at least this many (a stop: two), and names the
# NAMED_IN_GROUP most affected of them.
GROUP_AT = 4
NAMED_IN_GROUP = 10


def _share(ns, total):
    return "{:.0f} %".format(100.0 * ns / total if total else 0.0)


def group_text(group, pid, process):
    """The verdict's sentence on a group of findings (more than one)."""
    first = group[0]
    low, high = min(f.percent for f in group), max(f.percent for f in group)
    who = "{:,} threads{}".format(len(group), " of " + process
                                  if process else "")
    span = "{:.1f}-{:.1f} %".format(low, high) if high - low >= 0.05 else \
        "{:.1f} %".format(high)
    total = sum(f.ns for f in group)
    if first.kind == "cpu":
        parts = {"same": 0, "other": 0, "idle": 0, "unseen": 0}
        others = {}
        for finding in group:
            for part, ns in holder_classes(finding, pid).items():
                parts[part] += ns
            for holder in finding.holders:
                if holder.pid and holder.tgid != pid:
                    others[holder.comm] = others.get(holder.comm, 0) + \
                        holder.ns
        named = []
        for part, label in (("same", "other threads of the same process"),
                            ("other", "other processes"), ("idle", "idle"),
                            ("unseen", "not recorded")):
            # (Parts under 0.5 % would read "0 %".)
            if 200 * parts[part] >= total:
                text = "{} {}".format(label, _share(parts[part], total))
                if part == "other":
                    text += " ({})".format(", ".join(
                        "{} {}".format(comm or "?", _share(ns, total))
                        for comm, ns in largest_first(others.items())[:3]
                        if 200 * ns >= total))
                named.append(text)
        text = ("{} waited {} of the window for a CPU (threshold {:g} %): "
                "CPU contention".format(who, span, first.threshold))
        if named:
            text += "; their CPUs ran {} of that time".format(
                ", ".join(named))
    elif first.kind == "irq":
        sources = {}
        for finding in group:
            for name, ns in finding.sources:
                sources[name] = sources.get(name, 0) + ns
        # On PREEMPT_RT, cpu_finding() makes a wait for a CPU that
        # interrupt threads held an "irq" finding: it has holders.
        lost = ("waited {} of the window for a CPU (threshold {:g} %): "
                "interrupt load, run in kernel threads on this PREEMPT_RT "
                "kernel" if first.holders else
                "lost {} of the window to interrupts (threshold {:g} %): "
                "interrupt load").format(span, first.threshold)
        text = ("{} {}, most of it {} of that time".format(
                    who, lost, ", ".join(
                        "{} {}".format(name, _share(ns, total))
                        for name, ns in largest_first(sources.items())[:3])))
    else:
        text = "{:,} threads were stopped{} (threshold {:g} % of the " \
            "window)".format(len(group), stop_cause(first.signals),
                             first.threshold)
    shown = group[:NAMED_IN_GROUP]
    text += "{}: {}{}.".format(
        "; the most affected" if len(group) > len(shown) else "",
        ", ".join("{} {} ({:.1f} %)".format(_task(f.name, f.tid),
                                            duration(f.ns), f.percent)
                  for f in shown),
        ", and {:,} more".format(len(group) - len(shown))
        if len(group) > len(shown) else "")
    return text + " Next: {}.".format(first.next_step)


def format_verdict(verdict, top=5, pid=None, process=None, interval=False):
    """The # VERDICT section: the threads with the most kernel-caused delay,
    then one paragraph per finding, or a line saying there is none.
    Findings of one kind and cause (group_findings()) share a paragraph
    when there are GROUP_AT or more (stops: two or more); pid and
    process (name) are the target's; interval: the verdict of a
    --long-poll catch (as_interval())."""
    def para(text, first="# "):
        return wrap(as_interval(text) if interval else text, first)

    limits = verdict.thresholds
    lines = ["", "# VERDICT"]
    # Threads whose share would print as 0.0 % are left out of the text.
    shown = [r for r in verdict.ranking if r.percent >= 0.05]
    if shown:
        lines += para("Kernel-caused delay (waiting for a CPU, interrupts, "
                      "stopped) as a share of the {} window: {}{}.".format(
                          duration(verdict.window), ", ".join(
                              "{} {:.1f} %".format(_task(r.name, r.tid),
                                                   r.percent)
                              for r in shown[:top]),
                          ", and {:,} more".format(len(shown) - top)
                          if len(shown) > top else ""))
    for group in group_findings(verdict.findings, pid):
        if len(group) >= (2 if group[0].kind == "stopped" else GROUP_AT):
            lines += para(group_text(group, pid, process), "# - ")
        else:
            for finding in group:
                lines += para("{} Next: {}.".format(
                    finding.text, finding.next_step), "# - ")
    if verdict.too_short:
        lines += para("The {} window is too short to judge (under {}, "
                      "--min-window): ordinary wakeup latency or one "
                      "interrupt is a large share of it. Judge a longer "
                      "window (--sample-time, or triggers further "
                      "apart).".format(duration(verdict.window),
                                       duration(limits.min_window)))
        return lines
    if not verdict.findings:
        lines += para("The kernel shows no significant delay for this "
                      "window: no thread waited for a CPU for {:g} % and "
                      "{}, spent {:g} % and {} in interrupts or was stopped "
                      "for {:g} % and {} of it.".format(
                          limits.ready, duration(limits.ready_floor),
                          limits.irq, duration(limits.irq_floor),
                          limits.stopped, duration(limits.stopped_floor)))
    lines += para("Thresholds ({}): waiting for a CPU {:g} % of the window "
                  "and {}, interrupts {:g} % and {}, stopped {:g} % and "
                  "{}.".format(THRESHOLD_OPTIONS, limits.ready,
                               duration(limits.ready_floor), limits.irq,
                               duration(limits.irq_floor), limits.stopped,
                               duration(limits.stopped_floor)))
    return lines


def wrap_items(head, items, width=79, indent="#   "):
    """head followed by comma separated items, wrapped between items."""
    lines, line = [], head
    for index, item in enumerate(items):
        text = item + ("," if index < len(items) - 1 else "")
        if len(line) + 1 + len(text) > width and line.strip("# "):
            lines.append(line)
            line = indent + text
        else:
            line += " " + text
    return lines + [line]


def format_warnings(counters, sample_count, window=False):
    """End-of-run warnings for non-zero loss counters, wrapped at 79.
    With window, the warnings of one window (counters of that window)."""
    head = "# WARNING (this window): " if window else "# WARNING: "
    lines = []
    for text in warning_texts(counters, sample_count):
        lines += textwrap.wrap(text, width=79, initial_indent=head,
                               subsequent_indent="#" + " " * (len(head) - 1),
                               break_on_hyphens=False,
                               break_long_words=False)
    return lines


def warning_texts(counters, sample_count):
    """One sentence per non-zero loss counter."""
    # (singular, plural) of each message; {} is the count.
    fixes = {
        Counter.RINGBUF_FULL: (
            "{:,} event was dropped", "{:,} events were dropped",
            ": the ring buffer was full; increase --buffer-page-count."),
        Counter.TRIGGER_MISSED: (
            "{:,} start trigger was missed",
            "{:,} start triggers were missed",
            ": {they} fired while the previous window was being reported."),
        Counter.SCHED_LOST: (
            "{:,} context switch was not reported",
            "{:,} context switches were not reported",
            " by the kernel (a thread switched out without being seen "
            "switching in): the periods around {them} are left out."),
        Counter.STACK_LOST: (
            "{:,} stack trace was lost", "{:,} stack traces were lost",
            " (the stack map was full, or two stacks hashed to the same "
            "slot); increase --stack-trace-size."),
        Counter.UPCALL_FULL: (
            "{:,} upcall was not counted", "{:,} upcalls were not counted",
            ": the upcall table was full (unexpected: it has room for "
            "every CPU and error)."),
        Counter.PROGRAM_SKIPPED: (
            "{:,} call of the tool's eBPF programs was skipped",
            "{:,} calls of the tool's eBPF programs were skipped",
            " by the kernel, because another eBPF program or a bpf() call "
            "was running on that CPU (its recursion guard): events inside "
            "a window may be missing."),
        Counter.LONG_POLL_UNSHOWN: (
            "{:,} long poll interval was not shown",
            "{:,} long poll intervals were not shown",
            ": more than {} a second were caught (the rate limit of "
            "--long-poll).".format(LONG_POLL_RATE)),
    }
    texts = []
    for counter in Counter:
        value = counters.get(counter, 0)
        if not value:
            continue
        if counter in fixes:
            if counter == Counter.TRIGGER_MISSED and sample_count <= 1:
                continue
            one, many, rest = fixes[counter]
            text = (one if value == 1 else many).format(value) + rest.format(
                they="it" if value == 1 else "they",
                them="it" if value == 1 else "them")
        else:
            text = ("{:,} update{} of the {} table failed (table full): some "
                    "data is missing; increase --max-threads.".format(
                        value, "" if value == 1 else "s",
                        COUNTER_TABLES[counter]))
        texts.append(text)
    return texts


def stack_frame(addr, symbol):
    """How a stack frame reads: bcc's "name+0xoff [module]", or, for an
    address bcc could not resolve, "[unknown] 0xADDR" (and the module if
    known)."""
    if symbol.startswith("[unknown]"):
        return "[unknown] 0x{:x}{}".format(addr, symbol[len("[unknown]"):])
    return symbol


# Frames of the tracing machinery on top of every kernel stack taken in a
# tracepoint program: the eBPF program itself and the tracepoint glue.
TRACING_FRAME = re.compile(r"(bpf_prog_|bpf_trace_run\d|__bpf_trace_|"
                           r"__traceiter_|perf_trace_)")


def trim_kernel_stack(frames):
    """A kernel stack without the tracing frames it starts with."""
    return list(itertools.dropwhile(TRACING_FRAME.match, frames))


def errno_name(number):
    return errno.errorcode.get(number, "errno {}".format(number))


def format_syscall_events(log, syscall_names):
    """The # SYSCALL EVENTS table of one window (EventLog), each event
    followed by its kernel and user stacks when they were recorded."""
    if not log.events:
        return ["", "", "# SYSCALL EVENTS: none in this window"]
    frame_indent = " " * 10
    lines = ["", "", "# SYSCALL EVENTS:"] + table(EVENT_COLUMNS, [], "  ",
                                                  rule=True, empty=None)
    for event in log.events:
        lines.append(table_row(EVENT_COLUMNS, [
            event.entry, event.exit, event.tid, log.names.get(event.tid, "?"),
            (event.exit - event.entry) // 1000,
            syscall_label(event.nr, syscall_names)], "  "))
        if not log.stacks:
            continue
        for kind, stack_id, stacks in (
                ("kernel", event.kernel_stack, log.kernel_stacks),
                ("user", event.user_stack, log.user_stacks)):
            if stack_id < 0:
                lines.append("{}[{} stack lost: {}]".format(
                    frame_indent, kind, errno_name(-stack_id)))
            else:
                lines += [frame_indent + frame
                          for frame in stacks.get(stack_id, ())]
    if log.more:
        lines += wrap(
            "{:,} more event{} not shown: only the first {:,} of a window "
            "are kept; raise the DURATION_NS of --syscall-events to see "
            "fewer, longer calls.".format(
                log.more, "s" if log.more > 1 else "", MAX_SHOWN_EVENTS),
            rest="# ")
    return lines


def format_upcalls(stats):
    """The # UPCALL STATISTICS section of one window (UpcallStats)."""
    lines = ["", "# UPCALL STATISTICS (ovs_dp_upcall() calls):"] + table(
        UPCALL_COLUMNS, [], "  ", rule=True, empty=None)
    rows = [("total", stats.total, stats.total_per_cpu),
            ("successful", stats.successful, stats.successful_per_cpu),
            ("failed", stats.failed, stats.failed_per_cpu)]
    for number, count in largest_first(stats.errors.items()):
        rows.append(("  {} ({})".format(errno_name(number), number), count,
                     stats.errors_per_cpu.get(number, {})))
    for label, count, per_cpu in rows:
        head = table_row(UPCALL_COLUMNS, [label, count], "  ")
        cpus = ["{}: {:,}".format(cpu, n)
                for cpu, n in sorted(per_cpu.items()) if n]
        if cpus:
            # Under PER CPU, two spaces after the count.
            head += " "
        lines += wrap_items(head, cpus, indent=" " * (len(head) + 1))
    return lines


def upcall_skip_reason(kprobes, module_loaded, function_found):
    """Why upcall statistics cannot be collected, or None if they can.

    kprobes: the kernel supports them; module_loaded: the openvswitch
    module is loaded; function_found: ovs_dp_upcall() can be probed."""
    if not kprobes:
        return ("the kernel has no kprobe support (CONFIG_KPROBES, "
                "CONFIG_KPROBE_EVENTS), which the return probe on {}() "
                "needs".format(UPCALL_FUNCTION))
    if not module_loaded:
        return ("the {} kernel module is not loaded (a userspace "
                "datapath makes no kernel upcalls)".format(OVS_MODULE))
    if not function_found:
        return ("{}() is not in /proc/kallsyms or cannot be probed"
                .format(UPCALL_FUNCTION))
    return None


def format_long_poll(catch, threshold_ms):
    """The report of one catch: the interval, its [TIME BUDGET] and its
    verdict."""
    lines = stamped("# Long poll interval {:,} ({} or more)".format(
        catch.number, duration(round(threshold_ms * 10 ** 6))),
        catch.end_time)
    if catch.not_shown:
        lines += wrap("{:,} more interval{} over the rate limit ({} a "
                      "second) not shown before this one".format(
                          catch.not_shown, "s" * (catch.not_shown > 1),
                          LONG_POLL_RATE))
    rows = [["monotonic", catch.start, catch.end]]
    if catch.start_time and catch.end_time:
        rows.append(["local time", catch.start_time.strftime("%H:%M:%S.%f"),
                     catch.end_time.strftime("%H:%M:%S.%f")])
    rows.append(["length ns", "{:,}".format(catch.end - catch.start)])
    lines += ["{:10} {:16} {}".format(catch.tid, catch.name,
                                      "[LONG POLL INTERVAL]")] + \
        table(INTERVAL_COLUMNS, rows) + format_budget(catch.budget)
    if catch.longest:
        lines += wrap("longest system call: {} {}".format(
            catch.longest.name, duration(catch.longest.ns)), INDENT, INDENT)
    return lines + format_verdict(catch.verdict, interval=True)


# ---- JSON output ------------------------------------------------------------

# Version of the JSON documents (--format json).  Adding a field keeps it;
# removing or changing the meaning of one increases it.
# 2: long_poll documents, skipped summaries, floors.  3: the losses of
# the run_full, ready_full, stop_full, budget_full and holders_full
# counters are gone (no table has them since run, ready and stop merged).
SCHEMA_VERSION = 3


def acc_json(acc, average=False):
    if acc is None:
        return None
    doc = {"count": acc.count, "total_ns": acc.total, "min_ns": acc.min,
           "max_ns": acc.max}
    if average:
        doc["average_ns"] = acc.average
    return doc


def total_json(accs):
    return {"count": sum(acc.count for acc in accs),
            "total_ns": sum(acc.total for acc in accs)}


def thread_json(stats, syscall_names, poll_nrs, budget=None,
                histogram=False):
    """One thread of a sample document: the numbers of its text block."""
    return {
        "tid": stats.tid,
        "name": stats.name,
        "syscalls": [dict({"nr": nr, "name": syscall_names.get(nr),
                           "poll": nr in poll_nrs}, **acc_json(acc))
                     for nr, acc in by_total(stats.syscalls)],
        "syscall_total": total_json([acc for nr, acc in stats.syscalls.items()
                                     if nr not in poll_nrs]),
        "poll_gaps": acc_json(stats.poll, average=True),
        "run": acc_json(stats.run),
        "ready": acc_json(stats.ready),
        "stopped": acc_json(stats.stopped),
        "unreported_switches": stats.lost,
        "hardirqs": [dict({"name": name}, **acc_json(acc))
                     for name, acc in by_total(stats.hardirqs)],
        "hardirq_total": total_json(stats.hardirqs.values()),
        "softirqs": [dict({"vector": vec, "name": softirq_name(vec)},
                          **acc_json(acc))
                     for vec, acc in by_total(stats.softirqs)],
        "softirq_total": total_json(stats.softirqs.values()),
        "budget": budget_json(budget),
        "histograms": (histograms_json(stats, syscall_names) if histogram
                       else None),
    }


def share(ns, window):
    """ns and its share of the window in percent."""
    return {"ns": ns,
            "percent": round(100.0 * ns / window, 3) if window > 0 else 0.0}


def budget_json(budget):
    """The time budget of a thread ([TIME BUDGET]), or None."""
    if budget is None:
        return None
    window = budget.window
    doc = {"window_ns": window, "quiet": budget.quiet}
    for part in ("on_cpu", "hardirq", "softirq", "ready", "blocked",
                 "stopped", "other"):
        doc[part] = share(getattr(budget, part), window)
    doc["kernel"] = share(budget.kernel, window)
    doc["blocked_in"] = [dict(share(item.ns, window), name=item.name,
                              nr=None if item.nr in (NR_OUTSIDE,
                                                     NR_OTHER_CALLS)
                              else item.nr)
                         for item in budget.blocked_in]
    doc["in_flight"] = [{"nr": item.nr, "name": item.name, "ns": item.ns,
                         "before_window": item.before_window}
                        for item in budget.in_flight]
    return doc


def histogram_json(hist):
    """The rows of a log2 histogram, as the text shows them."""
    return [{"low_ns": low, "high_ns": high, "count": count}
            for low, high, count in log2_rows(hist)]


def histograms_json(stats, syscall_names):
    return {"syscalls": [{"nr": nr, "name": syscall_names.get(nr),
                          "slots": histogram_json(hist)}
                         for nr, hist in sorted(stats.sys_hist.items())],
            "ready": histogram_json(stats.ready_hist)}


def verdict_json(verdict):
    """The # VERDICT section, or None."""
    if verdict is None:
        return None
    limits = verdict.thresholds
    return {
        "window_ns": verdict.window,
        "thresholds": {"ready_percent": limits.ready,
                       "irq_percent": limits.irq,
                       "stopped_percent": limits.stopped,
                       "ready_floor_ns": limits.ready_floor,
                       "irq_floor_ns": limits.irq_floor,
                       "stopped_floor_ns": limits.stopped_floor,
                       "min_window_ns": limits.min_window},
        "too_short": verdict.too_short,
        "ranking": [{"tid": r.tid, "name": r.name, "kernel_ns": r.kernel,
                     "percent": round(r.percent, 3)}
                    for r in verdict.ranking],
        "findings": [finding_json(f) for f in verdict.findings],
    }


def finding_json(finding):
    """One finding of the verdict, with what backs it up."""
    return {
        "tid": finding.tid, "name": finding.name, "kind": finding.kind,
        "ns": finding.ns, "percent": round(finding.percent, 3),
        "threshold_percent": finding.threshold, "text": finding.text,
        "next_step": finding.next_step,
        "holders": [{"pid": h.pid, "tgid": h.tgid, "comm": h.comm,
                     "ns": h.ns} for h in finding.holders],
        "held_by": None if finding.kind != "cpu" else {
            "target_ns": finding.rest.get("target", 0),
            "other_ns": finding.rest.get("other", 0),
            "idle_ns": finding.rest.get("idle", 0),
            "unattributed_ns": finding.unattributed,
            "moved_ns": finding.moved},
        "sources": [{"name": name, "ns": ns}
                    for name, ns in finding.sources],
        "signals": [{"signal": sig.sig, "name": sig.name,
                     "sender": sig.sender, "tgid": sig.tgid,
                     "comm": sig.comm, "count": sig.count}
                    for sig in finding.signals]}


def events_json(log, syscall_names):
    """The # SYSCALL EVENTS of a window (EventLog), or None."""
    if log is None:
        return None

    def stack(stack_id, table):
        # (frames, why lost): both None when no stacks were recorded.
        if not log.stacks:
            return None, None
        if stack_id < 0:
            return None, errno_name(-stack_id)
        return list(table.get(stack_id, ())), None

    events = []
    for event in log.events:
        kernel, kernel_lost = stack(event.kernel_stack, log.kernel_stacks)
        user, user_lost = stack(event.user_stack, log.user_stacks)
        events.append({
            "entry_ns": event.entry, "exit_ns": event.exit,
            "duration_ns": event.exit - event.entry, "tid": event.tid,
            "name": log.names.get(event.tid, "?"), "nr": event.nr,
            "syscall": syscall_names.get(event.nr),
            "kernel_stack": kernel, "kernel_stack_lost": kernel_lost,
            "user_stack": user, "user_stack_lost": user_lost})
    return {"events": events, "more": log.more, "stacks": log.stacks}


def per_cpu_json(counts):
    return [{"cpu": cpu, "count": count}
            for cpu, count in sorted(counts.items()) if count]


def upcalls_json(stats):
    """The # UPCALL STATISTICS of a window (UpcallStats), or None."""
    if stats is None:
        return None
    return {
        "total": stats.total, "successful": stats.successful,
        "failed": stats.failed,
        "total_per_cpu": per_cpu_json(stats.total_per_cpu),
        "successful_per_cpu": per_cpu_json(stats.successful_per_cpu),
        "failed_per_cpu": per_cpu_json(stats.failed_per_cpu),
        "errors": [{"errno": number, "name": errno_name(number),
                    "count": count,
                    "per_cpu": per_cpu_json(stats.errors_per_cpu.get(
                        number, {}))}
                   for number, count in largest_first(stats.errors.items())],
    }


def window_json(window):
    duration = None
    if window.open_ns is not None and window.close_ns is not None:
        duration = window.close_ns - window.open_ns
    return {"start_ns": window.open_ns, "end_ns": window.close_ns,
            "duration_ns": duration,
            "start_time": iso_time(window.opened),
            "end_time": iso_time(window.closed),
            "dump_time": iso_time(window.dumped),
            "end": window.end,
            "start_trigger_ns": window.start_ts,
            "stop_trigger_ns": window.stop_ts,
            "trigger_delta_ns": window.delta}


def options_json(args):
    """The options that shape the windows."""
    return {"sample_time_s": args.sample_time,
            "sample_count": args.sample_count,
            "sample_interval_s": args.sample_interval,
            "start_trigger": (args.start_trigger.text
                              if args.start_trigger else None),
            "stop_trigger": (args.stop_trigger.text
                             if args.stop_trigger else None),
            "trigger_delta_ns": args.trigger_delta,
            "skipped_interval_s": getattr(args, "skipped_interval", 10),
            "histogram": bool(getattr(args, "histogram", False)),
            "syscall_events_ns": getattr(args, "syscall_events", None),
            "skip_syscall_poll_events": bool(getattr(
                args, "skip_syscall_poll_events", False)),
            "stack_trace_size": getattr(args, "stack_trace_size", 0),
            "long_poll_ms": None if getattr(args, "long_poll", None) is None
            else args.long_poll / 1e6,
            "threads": (args.threads.text if getattr(args, "threads", None)
                        else None)}


def document(kind, header, options, notes=()):
    """The fields every document has: it stands alone.  notes are the
    run's notes (the text's "# ..." lines before the first window)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "type": kind,
        "tool": {"name": "kernel_delay", "version": header.tool_version,
                 "command": list(header.command)},
        "host": {"name": header.host, "kernel": header.kernel,
                 "machine": header.machine, "cpus": header.cpus,
                 "load_average": list(header.load)},
        "target": {"pid": header.pid, "name": header.name,
                   "exe": header.exe,
                   "start_time": iso_time(header.started),
                   "version": header.version,
                   "version_error": header.version_error},
        "options": options,
        "notes": [note[2:] if note.startswith("# ") else note
                  for note in notes],
    }


def losses_json(counters):
    """Loss counters by name (Counter members in lower case)."""
    return {Counter(counter).name.lower(): int(value)
            for counter, value in sorted(counters.items())}


def sample_document(sample, header, options, syscall_names, poll_nrs,
                    notes=(), faults=None):
    """The JSON document of one reported window.  With faults (a Faults),
    a thread that fails to convert is left out, with a warning saying so;
    so is a part of the document (see Sampler.report_window())."""
    doc = document("sample", header, options, notes)
    ordered = sorted(sample.threads.values(), key=lambda t: (t.name, t.tid))
    threads, failed = [], []
    for stats in ordered:
        try:
            threads.append(thread_json(stats, syscall_names, poll_nrs,
                                       sample.budgets.get(stats.tid),
                                       options.get("histogram")))
        except Exception:
            if faults is None:
                raise
            failed.append(faults.note("thread {}".format(stats.tid))[2:])
    doc.update({
        "sample": sample.number,
        "window": window_json(sample.window),
        "threads": threads,
        "quiet_threads": [{"tid": tid, "name": name, "where": where or None,
                           "budget": budget_json(sample.budgets.get(tid))}
                          for tid, name, where in
                          sorted(sample.quiet,
                                 key=lambda item: (item[1], item[0]))],
        "verdict": verdict_json(sample.verdict),
        "syscall_events": events_json(sample.events, syscall_names),
        "upcalls": upcalls_json(sample.upcalls),
        "losses": losses_json(sample.losses),
        "warnings": warning_texts(sample.losses, options["sample_count"]) +
        sample.notes + failed,
    })
    return doc


def skipped_document(skips, when, header, options, notes=()):
    """The JSON document that sums up windows shorter than
    --trigger-delta (a Skipped), written at when."""
    doc = document("skipped", header, options, notes)
    doc.update({"count": skips.count, "shortest_ns": skips.shortest,
                "longest_ns": skips.longest,
                "first_start_time": iso_time(skips.first),
                "last_end_time": iso_time(skips.last),
                "time": iso_time(when)})
    return doc


def end_document(header, options, counters, samples, skipped, end,
                 notes=(), poll_histograms=None):
    """The last document of a run: how it ended, and what was lost.
    poll_histograms: --long-poll --histogram, [(tid, name, hist)]."""
    doc = document("end", header, options, notes)
    doc.update({"end": end, "samples": samples, "skipped": skipped,
                "losses": losses_json(counters),
                "warnings": warning_texts(counters, options["sample_count"]),
                "poll_histograms": None if poll_histograms is None else [
                    {"tid": tid, "name": name, "slots": histogram_json(hist)}
                    for tid, name, hist in poll_histograms]})
    return doc


def long_poll_document(catch, header, options, notes=()):
    """The JSON document of one --long-poll catch."""
    doc = document("long_poll", header, options, notes)
    doc.update({
        "catch": catch.number,
        "tid": catch.tid,
        "name": catch.name,
        "interval": {"start_ns": catch.start, "end_ns": catch.end,
                     "duration_ns": catch.end - catch.start,
                     "start_time": iso_time(catch.start_time),
                     "end_time": iso_time(catch.end_time)},
        "budget": budget_json(catch.budget),
        "longest_call": None if catch.longest is None else {
            "nr": catch.longest.nr, "name": catch.longest.name,
            "ns": catch.longest.ns},
        "verdict": verdict_json(catch.verdict),
        "not_shown": catch.not_shown,
    })
    return doc


# Leaves of the compact schema of json_schema(): ns, counts and IDs are
# never negative; "?" is nullable.
_SCHEMA_LEAVES = {
    "int": {"type": "integer", "minimum": 0},
    "int?": {"type": ["integer", "null"], "minimum": 0},
    "sint": {"type": "integer"},
    "num": {"type": "number"},
    "num?": {"type": ["number", "null"]},
    "str": {"type": "string"},
    "str?": {"type": ["string", "null"]},
    "bool": {"type": "boolean"},
    "time": {"type": ["string", "null"], "format": "date-time"},
}


def _object(properties, nullable=False):
    """A JSON Schema object with exactly these properties, all required."""
    return {"type": ["object", "null"] if nullable else "object",
            "properties": properties,
            "required": sorted(properties),
            "additionalProperties": False}


def _schema(spec):
    """The JSON Schema of a compact spec: a leaf name (_SCHEMA_LEAVES),
    [item] for an array ("?", item: or null), {name: spec} for an object
    with exactly these properties ({"?": {...}}: or null), {"$": schema}
    for a schema as it is."""
    if isinstance(spec, str):
        return dict(_SCHEMA_LEAVES[spec])
    if isinstance(spec, list):
        return {"type": ["array", "null"] if len(spec) == 2 else "array",
                "items": _schema(spec[-1])}
    if "$" in spec:
        return spec["$"]
    return _object({name: _schema(item) for name, item
                    in spec.get("?", spec).items()}, nullable="?" in spec)


@functools.lru_cache(maxsize=None)
def json_schema():
    """The JSON Schema (draft-07) of the --format json documents: built
    when asked for (--json-schema, the tests), not at import.  What each
    field means is in kernel_delay.rst ("JSON output")."""
    part = {"ns": "sint", "percent": "num"}
    budget = {"?": {
        "window_ns": "int", "quiet": "bool", "on_cpu": part, "hardirq": part,
        "softirq": part, "ready": part, "blocked": part, "stopped": part,
        "other": part, "kernel": part,
        "blocked_in": [{"nr": "int?", "name": "str", "ns": "int",
                        "percent": "num"}],
        "in_flight": [{"nr": "int", "name": "str", "ns": "int",
                       "before_window": "bool"}]}}
    slots = [{"low_ns": "int", "high_ns": "int", "count": "int"}]
    finding = {
        "tid": "int", "name": "str",
        "kind": {"$": {"enum": ["cpu", "irq", "stopped"]}},
        "ns": "int", "percent": "num", "threshold_percent": "num",
        "text": "str", "next_step": "str",
        "holders": [{"pid": "int", "tgid": "int", "comm": "str", "ns": "int"}],
        "held_by": {"?": {"target_ns": "int", "other_ns": "int",
                          "idle_ns": "int", "unattributed_ns": "int",
                          "moved_ns": "int"}},
        "sources": [{"name": "str", "ns": "int"}],
        "signals": [{"signal": "int", "name": "str", "sender": "int",
                     "tgid": "int", "comm": "str", "count": "int"}]}
    verdict = {"?": {
        "window_ns": "int",
        "thresholds": {"ready_percent": "num", "irq_percent": "num",
                       "stopped_percent": "num", "ready_floor_ns": "int",
                       "irq_floor_ns": "int", "stopped_floor_ns": "int",
                       "min_window_ns": "int"},
        "too_short": "bool",
        "ranking": [{"tid": "int", "name": "str", "kernel_ns": "int",
                     "percent": "num"}],
        "findings": [finding]}}
    stack = ["?", "str"]
    event = {"entry_ns": "int", "exit_ns": "int", "duration_ns": "int",
             "tid": "int", "name": "str", "nr": "int", "syscall": "str?",
             "kernel_stack": stack, "kernel_stack_lost": "str?",
             "user_stack": stack, "user_stack_lost": "str?"}
    per_cpu = [{"cpu": "int", "count": "int"}]
    upcalls = {"?": {
        "total": "int", "successful": "int", "failed": "int",
        "total_per_cpu": per_cpu, "successful_per_cpu": per_cpu,
        "failed_per_cpu": per_cpu,
        "errors": [{"errno": "int", "name": "str", "count": "int",
                    "per_cpu": per_cpu}]}}
    acc = {"count": "int", "total_ns": "int", "min_ns": "int",
           "max_ns": "int"}
    total = {"count": "int", "total_ns": "int"}
    thread = {
        "tid": "int", "name": "str",
        "syscalls": [dict(acc, nr="int", name="str?", poll="bool")],
        "syscall_total": total,
        "poll_gaps": {"?": dict(acc, average_ns="int")},
        "run": {"?": acc}, "ready": {"?": acc}, "stopped": {"?": acc},
        "unreported_switches": "int",
        "hardirqs": [dict(acc, name="str")], "hardirq_total": total,
        "softirqs": [dict(acc, vector="int", name="str")],
        "softirq_total": total,
        "budget": budget,
        "histograms": {"?": {"syscalls": [{"nr": "int", "name": "str?",
                                           "slots": slots}],
                             "ready": slots}}}
    window = {"start_ns": "int?", "end_ns": "int?", "duration_ns": "int?",
              "start_time": "time", "end_time": "time", "dump_time": "time",
              "end": {"$": {"enum": ["time", "trigger", "interrupted",
                                     "process exited"]}},
              "start_trigger_ns": "int?", "stop_trigger_ns": "int?",
              "trigger_delta_ns": "int?"}
    common = {
        "schema_version": {"$": {"const": SCHEMA_VERSION}},
        "tool": {"name": {"$": {"const": "kernel_delay"}}, "version": "str",
                 "command": ["str"]},
        "host": {"name": "str", "kernel": "str", "machine": "str",
                 "cpus": "int",
                 "load_average": {"$": {"type": "array",
                                        "items": {"type": "number"},
                                        "minItems": 3, "maxItems": 3}}},
        "target": {"pid": "int", "name": "str", "exe": "str?",
                   "start_time": "time", "version": "str?",
                   "version_error": "str?"},
        "options": {
            "sample_time_s": "num", "sample_count": "int",
            "sample_interval_s": "num", "start_trigger": "str?",
            "stop_trigger": "str?", "trigger_delta_ns": "int",
            "skipped_interval_s": "num", "histogram": "bool",
            "syscall_events_ns": "int?", "skip_syscall_poll_events": "bool",
            "stack_trace_size": "int", "long_poll_ms": "num?",
            "threads": "str?"},
        "notes": ["str"]}
    losses = {"$": {"type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                    "propertyNames": {"enum": [counter.name.lower()
                                               for counter in Counter]}}}

    def doc(kind, **properties):
        return _schema(dict(common, type={"$": {"const": kind}},
                            **properties))

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "urn:kernel_delay:schema:{}".format(SCHEMA_VERSION),
        "title": "kernel_delay.py --format json",
        "description": "One document per line (JSON Lines): a 'sample' for "
                       "each reported window, a 'skipped' that sums up the "
                       "windows shorter than --trigger-delta (with "
                       "--long-poll, a 'long_poll' for each interval "
                       "caught), and an 'end' last.",
        "oneOf": [
            doc("sample", sample="int", window=window, threads=[thread],
                quiet_threads=[{"tid": "int", "name": "str", "where": "str?",
                                "budget": budget}],
                verdict=verdict,
                syscall_events={"?": {"events": [event], "more": "int",
                                      "stacks": "bool"}},
                upcalls=upcalls, losses=losses, warnings=["str"]),
            doc("skipped", count="int", shortest_ns="int", longest_ns="int",
                first_start_time="time", last_end_time="time", time="time"),
            doc("end", end={"$": {"enum": ["completed", "interrupted",
                                           "process exited"]}},
                samples="int", skipped="int", losses=losses,
                warnings=["str"],
                poll_histograms=["?", {"tid": "int", "name": "str",
                                       "slots": slots}]),
            doc("long_poll", catch="int", tid="int", name="str",
                interval={"start_ns": "int", "end_ns": "int",
                          "duration_ns": "int", "start_time": "time",
                          "end_time": "time"},
                budget=budget,
                longest_call={"?": {"nr": "int", "name": "str", "ns": "int"}},
                verdict=verdict, not_shown="int"),
        ],
    }


def json_clean(value):
    """value with every string valid Unicode: bytes that were not UTF-8
    (surrogateescape) become \\xNN escapes, as in the text report."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join(printable(char) if 0xd800 <= ord(char) <= 0xdfff
                           else char for char in value)
        return value
    if isinstance(value, dict):
        return {key: json_clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_clean(item) for item in value]
    return value


def json_line(doc):
    """One line of JSON Lines, pure ASCII."""
    return json.dumps(json_clean(doc), ensure_ascii=True, allow_nan=False,
                      separators=(",", ":"))


# ---- The sample loop --------------------------------------------------------

class Interrupts:
    """What SIGINT (Ctrl-C), SIGTERM and SIGHUP (END_SIGNALS) do;
    handler() is the handler.

    The first signal ends the run: pending() raises KeyboardInterrupt
    where the run can stop cleanly, which the waiting loops call when a
    signal wakes them or at least every WATCH_MS, and the end of a
    shield() (loading and attaching the program, which must not be cut in
    two) and of a writing() section (a report: it is what the user waits
    for).  The handler itself does not
    raise it: it may run inside a ctypes callback (ring buffer events),
    which would swallow the exception.  A second signal while a report is
    being written cuts it short: the handler raises Abort, which also
    ends a write blocked on a full pipe.  Other signals after the first
    are ignored: the run is already ending.
    """

    def __init__(self):
        self.count = 0
        self.delivered = False      # KeyboardInterrupt raised
        self.aborted = False
        self.shielded = 0
        self.writers = 0

    def handler(self, signum, _frame):
        self.count += 1
        if self.writers and self.count > 1 and not self.aborted:
            self.aborted = True
            raise Abort(signum)

    def pending(self):
        """Raise KeyboardInterrupt for a signal not yet acted on, unless
        inside a shield or a report."""
        if self.count and not self.delivered and not self.shielded and \
                not self.writers:
            self.delivered = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self):
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
        self.pending()

    @contextlib.contextmanager
    def writing(self):
        self.writers += 1
        try:
            yield
        finally:
            self.writers -= 1
        self.pending()


class Faults:
    """Exceptions that cost one thread or one section of a report, not the
    report: each leaves a one-line note where its part would have been,
    the run ends with a warning and exit code EX_DATAERR, and the
    tracebacks go to stderr after the report, for a bug report."""

    def __init__(self):
        self.tracebacks = []
        self.loose = []         # notes with no place of their own

    def note(self, what):
        """Record the exception being handled, which cost what; returns
        the note for the report."""
        kind, err, _ = sys.exc_info()
        self.tracebacks.append("{} failed:\n{}".format(
            what, traceback.format_exc()))
        return "# NOTE: {} not shown: {}: {} (a bug in kernel_delay; its " \
            "traceback follows the report on stderr)".format(
                what, kind.__name__, one_line(str(err))[:200])

    def section(self, what, function, *args):
        """(function(*args), None), or (None, note) when it raises."""
        try:
            return function(*args), None
        except Exception:
            return None, self.note(what)

    def lines(self, what, function, *args):
        """The lines function(*args) returns, or the note when it
        raises."""
        shown, note = self.section(what, function, *args)
        return shown if note is None else wrap_note(note)

    def tell(self, stream):
        """After the report: the tracebacks, for a bug report, on stream;
        returns the run's exit code for them (0: none)."""
        for text in self.tracebacks:
            stream.write(text)
        return os.EX_DATAERR if self.tracebacks else os.EX_OK

    def warning(self):
        """The end-of-run warning, or None."""
        if not self.tracebacks:
            return None
        count = len(self.tracebacks)
        return "WARNING: {} part{} of the report could not be shown (a bug " \
            "in kernel_delay); {} traceback{} follow{} on stderr: please " \
            "report {}".format(count, "s" * (count > 1),
                               "their" if count > 1 else "its",
                               "s" * (count > 1), "" if count > 1 else "s",
                               "them" if count > 1 else "it")


class Priority:
    """The tool's own scheduling priority.

    On a saturated node a process at the default priority waits for a CPU
    behind every runnable thread: compiling and reporting took seconds
    of waiting for well under a second of work, and with 8,000 busy
    threads a 1 s window closed 15 to 18 s late, when the tool got a CPU
    back.  boost() makes the calling thread SCHED_FIFO at the lowest
    real-time priority (1) for the whole run, windows included: inside
    one the tool sleeps, waking once a second (WATCH_MS) for well under a
    millisecond, which the threads it measures pay at any priority.
    normal() puts back what it had (--long-poll, which runs for hours,
    catches at that priority).  Children do not inherit the boost
    (SCHED_RESET_ON_FORK).  Without the right to do it (a restricted
    container), or started with another policy than SCHED_OTHER (chrt),
    the tool runs as it was.
    """

    def __init__(self, enabled=True, saved=None):
        self.enabled = enabled
        # (policy, param) to go back to while boosted; given when the
        # script boosted itself before its imports.
        self.saved = saved if enabled else None

    def boost(self):
        if not self.enabled or self.saved is not None:
            return
        try:
            saved = (os.sched_getscheduler(0), os.sched_getparam(0))
            # A real-time policy given by the user stays.
            if saved[0] != os.SCHED_OTHER:
                return
            os.sched_setscheduler(0, os.SCHED_FIFO |
                                  os.SCHED_RESET_ON_FORK,
                                  os.sched_param(1))
        except (OSError, AttributeError):
            return
        self.saved = saved

    def normal(self):
        if self.saved is None:
            return
        policy, param = self.saved
        self.saved = None
        os.sched_setscheduler(0, policy, param)


def write_out(out, text):
    """Write all of text to out, or raise OutputError.  A real file gets
    the bytes through os.write(): Python's buffered writer drops the rest
    of its data when a signal handler runs while it waits on a full
    pipe."""
    try:
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            out.write(text)
            out.flush()
            return
        out.flush()
        data = memoryview(text.encode(getattr(out, "encoding", None) or
                                      "utf-8", "backslashreplace"))
        while data:
            data = data[os.write(fd, data):]
    except OSError as err:
        raise OutputError(err)


class Sampler:
    """Runs the sample windows and writes their reports.

    out gets the report: text, or JSON Lines with --format json.  The
    lines that tell a reader what happens (window opened, closed,
    skipped; the end of the run) are part of a text report, and go to
    progress as well when it is another stream (standard error with
    --output, or with JSON).
    """

    def __init__(self, probes, args, out, ctx, clock=time.monotonic_ns,
                 header=None, progress=None, wall=None, interrupts=None,
                 priority=None):
        self.probes = probes
        self.priority = priority or Priority(enabled=False)
        self.args = args
        self.out = out
        self.progress = progress or out
        self.target = ctx.target
        self.syscall_names = ctx.syscall_names
        self.poll_nrs = ctx.poll_nrs
        self.clock = clock
        self.wall = wall or (lambda: datetime.datetime.now().astimezone())
        self.header = header
        self.json = getattr(args, "format", "text") == "json"
        self.interrupts = interrupts or Interrupts()
        self.pending = []       # ring buffer events not yet consumed
        self.said_waiting = False
        self.samples = self.skipped = 0
        self.reported = {}      # loss counters at the last report
        self.closed_counters = None     # ... when the last window closed
        self.skips = None       # Skipped, not yet summarised
        self.progress_lost = False      # progress could not be written
        self.start_line = None  # a start line held back (--trigger-delta)
        self.notes = []         # lines to print before the first window
        self.faults = Faults()
        self.realtime = kernel_is_realtime()

    def write(self, stream, lines):
        if self.interrupts.aborted:
            return
        with self.interrupts.writing():
            write_out(stream, "".join(line + "\n" for line in lines))

    def say(self, lines):
        """Progress lines: in a text report, and on progress."""
        lines = [lines] if isinstance(lines, str) else lines
        if not self.json:
            self.write(self.out, lines)
        if self.progress is not self.out and not self.progress_lost:
            try:
                self.write(self.progress, lines)
            except OutputError:
                # Standard error went with the terminal (an ssh session
                # that dropped): that must not cost the report.
                self.progress_lost = True

    def report(self, lines=(), doc=None):
        """Text lines of the report, or its JSON document."""
        if self.json:
            if doc is not None:
                self.write(self.out, [json_line(doc)])
        elif lines:
            self.write(self.out, lines)

    def options(self):
        return options_json(self.args)

    def begin(self):
        """The start of the report: the header, then the notes."""
        if self.header is not None:
            self.report(format_header(self.header))
        if self.notes:
            self.say([line for note in self.notes
                      for line in wrap_note(note)])

    def check_target(self):
        """Raise TargetExited once the target is gone (or its PID is
        another process's)."""
        if not process_alive(self.target.pid, self.target.start_time):
            raise TargetExited(self.wall())

    def pause(self, seconds):
        """Sleep between windows, watching the target."""
        deadline = time.monotonic() + seconds
        while True:
            self.interrupts.pending()
            self.check_target()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # Short naps: a signal does not cut time.sleep() short (the
            # handler only notes it).  No window is open here.
            time.sleep(min(left, 0.1))

    def wait_for(self, event_type, deadline=None):
        """Poll until event_type arrives (returns its timestamp) or the
        deadline (CLOCK_MONOTONIC ns) passes (returns None).  Raises
        TargetExited when the process goes away meanwhile."""
        while True:
            self.interrupts.pending()
            self.summarise_skipped()
            # One poll can bring a start and a stop event: keep the rest.
            while self.pending:
                event, ts = self.pending.pop(0)
                if event == event_type:
                    return ts
            # Without its event (ring buffer full), a trigger still shows
            # in the capture state.
            state, started, stopped = self.probes.capture_values()
            if event_type == Event.START_TRIGGER and started and \
                    state in (Capture.RUNNING, Capture.HOLD):
                return started
            if event_type == Event.STOP_TRIGGER and stopped and \
                    state == Capture.HOLD:
                return stopped
            self.check_target()
            timeout = WATCH_MS
            if deadline is not None:
                left = (deadline - self.clock()) / 1e6
                if left <= 0:
                    return None
                timeout = min(timeout, left)
            self.pending += self.probes.poll(timeout)

    def one_window(self):
        """Capture one window; returns it, or None when it was skipped."""
        args = self.args
        window = Window()
        self.check_target()
        self.probes.reset()
        self.probes.poll(0)     # drop events of earlier windows
        self.pending = []
        # The tool stays boosted inside a window (see Priority).
        if args.start_trigger:
            self.probes.set_state(Capture.ARMED)
            # Said once armed: whoever reads the line may fire the trigger
            # at once.
            if not self.said_waiting:
                self.said_waiting = True
                self.say(stamped("# Waiting for start trigger '{}'"
                                 .format(args.start_trigger.text)))
            window.start_ts = self.wait_for(Event.START_TRIGGER)
            started = window.start_ts
            window.opened = self.wall()
        else:
            # Open the window before saying so: whoever reads the line
            # may act on it at once.  The line's time is the window's
            # start, taken with it: on a busy CPU the tool may wait a
            # while before its write opens the window, and that wait is
            # inside the window (periods open then are counted from the
            # start).
            window.opened = self.wall()
            started = self.clock()
            self.probes.open_window(started)
        window.open_ns = started
        interrupted = False
        try:
            line = stamped("# Start sampling{}".format(
                " (trigger@{})".format(window.start_ts)
                if args.start_trigger else ""), window.opened)
            if args.trigger_delta:
                # Said once the window is known to be reported.
                self.start_line = line
            else:
                self.say(line)
            if args.stop_trigger:
                window.stop_ts = self.wait_for(Event.STOP_TRIGGER)
            else:
                self.wait_for(None, started + int(args.sample_time * 1e9))
        except (KeyboardInterrupt, TargetExited) as err:
            # Inside a window: report what it holds, then stop.
            interrupted = err
        finally:
            self.probes.set_state(Capture.HOLD)
            # The end of the periods still open: the close, as the start
            # is the open (not when the report is written).
            window.close_ns = self.clock()
            window.closed = self.wall()
            # The window's losses, read as it closes: a start trigger that
            # fires while it is being reported is the next window's loss.
            self.closed_counters = self.probes.counters()
        # A signal from here on lets the report finish (see Interrupts).
        with self.interrupts.writing():
            if not self.report_window(window, interrupted):
                return None
        if interrupted:
            raise interrupted
        return window

    def report_window(self, window, interrupted):
        """Write the report of a closed window; False if it was skipped."""
        args = self.args
        ended = window.stop_ts or window.close_ns
        window.close_ns = ended
        delta = window.delta
        if delta is not None and delta < args.trigger_delta:
            window.end = "trigger"
            self.skip(window, delta)
            return False
        self.summarise_skipped(now=True)
        if self.start_line:
            self.say(self.start_line)
            self.start_line = None
        if window.stop_ts is not None:
            window.end = "trigger"
            self.say(stamped("# Stop sampling (trigger@{})".format(
                window.stop_ts), window.closed))
        else:
            if interrupted:
                window.end = ("process exited" if isinstance(
                    interrupted, TargetExited) else "interrupted")
            self.say(stamped("# Stop sampling{}".format(
                " ({})".format(window.end) if interrupted else ""),
                window.closed))

        faults, notes = self.faults, []
        threads = self.probes.collect(ended)
        quiet, note = faults.section(
            "the list of quiet threads", self.probes.quiet_threads, threads,
            self.syscall_names, ended, faults)
        notes += [note] + faults.loose
        faults.loose = []
        quiet = quiet or []
        selection = getattr(args, "threads", None)
        threads, quiet = select_threads(threads, quiet, selection)
        current, states = self.probes.whereabouts(
            list(threads) + [tid for tid, _, _ in quiet])
        analysed, note = faults.section(
            "the time budgets and the verdict", analyse_window,
            threads, quiet, window.open_ns, ended, self.syscall_names,
            current, states, self.probes.stop_signals(), thresholds_of(args),
            self.realtime)
        notes.append(note)
        budgets, verdict = analysed or ({}, None)
        window.dumped = self.wall()
        title = "# Sample dump" if delta is None else \
            "# Triggered sample dump, stop-start delta {:,} ns".format(delta)
        self.samples += 1
        # Losses since the last report: they include the start triggers
        # missed while it was being written, and a skipped window's.
        after, before = self.closed_counters, self.reported
        self.reported = after
        sample = Sample(self.samples, window, threads, quiet,
                        {counter: after[counter] - before.get(counter, 0)
                         for counter in after}, budgets, verdict)
        if args.syscall_events is not None:
            sample.events, note = faults.section(
                "the system call events", self.probes.collect_events,
                threads)
            notes.append(note)
        if getattr(self.probes, "upcalls", False):
            sample.upcalls, note = faults.section(
                "the upcall statistics", self.probes.collect_upcalls)
            notes.append(note)
        if self.json:
            sample.notes = [note[2:] for note in notes if note]
            self.report(doc=sample_document(sample, self.header,
                                            self.options(),
                                            self.syscall_names,
                                            self.poll_nrs, self.notes,
                                            faults))
        else:
            # The overview lists every thread; blocks follow for all of
            # them with --threads, else for the most affected.
            if budgets:
                blocks = pick_blocks(budgets, None if selection else
                                     BLOCKS_SHOWN)
            else:
                blocks = set(threads) | {item[0] for item in quiet}
            # The answer first: the window, the overview and the verdict,
            # what the report lacks; then the details.
            lines = [window_head(self.samples, args.sample_count,
                                 ended - window.open_ns,
                                 window.end if interrupted else None)]
            lines += stamped(title, window.dumped)
            if selection and not threads and not quiet:
                lines += wrap("No thread matches --threads '{}'".format(
                    selection.text))
            target = self.target
            sections = []
            if budgets:
                sections.append(("the overview", format_overview,
                                 budgets.values(), thresholds_of(args),
                                 ended - window.open_ns))
            if verdict:
                sections.append(("the verdict", format_verdict, verdict, 5,
                                 target.pid, target.name))
            for what, function, *data in sections:
                lines += faults.lines(what, function, *data)
            for note in notes:
                if note:
                    lines += wrap_note(note)
            # With several windows, each says what it lost; the end of the
            # run sums it up.
            if args.sample_count > 1:
                lines += format_warnings(sample.losses, args.sample_count,
                                         window=True)
            lines += [""] + format_report(
                {tid: stats for tid, stats in threads.items()
                 if tid in blocks}, self.syscall_names, self.poll_nrs,
                [item for item in quiet if item[0] in blocks], budgets,
                args.histogram, faults) + \
                blocks_left_out(max(0, len(budgets) - len(blocks)))
            sections = []
            if sample.events is not None:
                sections.append(("the system call events",
                                 format_syscall_events, sample.events,
                                 self.syscall_names))
            if sample.upcalls is not None:
                sections.append(("the upcall statistics", format_upcalls,
                                 sample.upcalls))
            for what, function, *data in sections:
                lines += faults.lines(what, function, *data)
            self.report(lines + ["", window_foot(self.samples,
                                                 args.sample_count)])
        return True

    def skip(self, window, delta):
        """Count a window shorter than --trigger-delta."""
        self.skipped += 1
        self.start_line = None
        skips = self.skips
        if skips is None:
            skips = self.skips = Skipped(shortest=delta, longest=delta,
                                         first=window.opened,
                                         first_ns=window.open_ns,
                                         since=time.monotonic())
        skips.count += 1
        skips.shortest = min(skips.shortest, delta)
        skips.longest = max(skips.longest, delta)
        skips.last, skips.last_ns = window.closed, window.close_ns
        self.summarise_skipped()

    def summarise_skipped(self, now=False):
        """Say how many windows were skipped, once --skipped-interval has
        passed since the first of them (or now: before a report, at the
        end of the run)."""
        skips = self.skips
        if skips is None or not now and time.monotonic() - skips.since < \
                self.args.skipped_interval:
            return
        self.skips = None
        when = self.wall()
        self.say(stamped(
            "# Sample dump skipped for {:,} window{} in {}, delta {}".format(
                skips.count, "" if skips.count == 1 else "s",
                duration(skips.last_ns - skips.first_ns),
                "{:,} ns".format(skips.shortest)
                if skips.shortest == skips.longest else
                "{:,} to {:,} ns".format(skips.shortest, skips.longest)),
            when))
        self.report(doc=skipped_document(skips, when, self.header,
                                         self.options(), self.notes))

    def run(self):
        self.begin()
        done = 0
        end = "interrupted"
        try:
            while done < self.args.sample_count:
                if self.one_window() is None:
                    continue
                done += 1
                if done < self.args.sample_count and \
                        self.args.sample_interval:
                    self.probes.set_state(Capture.PAUSED)
                    self.pause(self.args.sample_interval)
            end = "completed"
        except TargetExited:
            end = "process exited"
            raise
        finally:
            if not self.interrupts.aborted:
                with self.interrupts.writing():
                    self.finish(end)

    def finish(self, end):
        """The end of the run: loss warnings (text), or the end document
        (JSON)."""
        self.summarise_skipped(now=True)
        counters = self.probes.counters()
        warning = self.faults.warning()
        if self.closed_counters is not None:
            # Start triggers missed while the last window was reported cost
            # no window: the run's total is the sum of the windows'.
            counters[Counter.TRIGGER_MISSED] = self.closed_counters.get(
                Counter.TRIGGER_MISSED, 0)
        if self.json:
            doc = end_document(self.header, self.options(), counters,
                               self.samples, self.skipped, end, self.notes)
            doc["warnings"] += [warning] if warning else []
            self.report(doc=doc)
        else:
            self.say(self.summary("{:,} window{} reported".format(
                self.samples, "s" * (self.samples != 1)), end, counters,
                warning, self.skipped))

    def summary(self, what, end, counters, warning=None, skipped=0):
        """The end of a text report: the run's warnings, then one line on
        what it reported and how it ended (run_summary())."""
        lines = format_warnings(counters, self.args.sample_count)
        if warning:
            lines += wrap(warning)
        warnings = len(warning_texts(counters, self.args.sample_count)) + \
            bool(warning)
        return lines + [run_summary(what, end, skipped, warnings)]


class LongPollSampler(Sampler):
    """--long-poll: one window that stays open, and a report for each
    interval between two poll() calls of a thread that the kernel side
    catches.  The run ends after --sample-count catches (0: never), at
    Ctrl-C or SIGTERM, or when the target exits."""

    TIDY_S = 10             # tables are tidied this often (seconds)
    KEEP_SIGNALS_S = 600    # stop signals are remembered this long

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.catches = 0
        self.unshown = 0        # rate limit counter at the last catch

    def run(self):
        self.begin()
        args = self.args
        end = "interrupted"
        try:
            self.check_target()
            self.probes.reset()
            self.probes.open_window(self.clock())
            # The catching runs for hours: never as SCHED_FIFO, which
            # would take CPUs from the threads it measures.
            self.priority.normal()
            self.say(stamped(
                "# Catching poll intervals of {} or more{}".format(
                    duration(args.long_poll),
                    ", {} of them".format(args.sample_count)
                    if args.sample_count else " (Ctrl-C ends)")))
            tidied = self.clock()
            while not args.sample_count or self.catches < args.sample_count:
                self.interrupts.pending()
                try:
                    self.check_target()
                except TargetExited:
                    # What the target did before it exited still counts.
                    self.report_catches(self.probes.catches(0))
                    raise
                self.report_catches(self.probes.catches(100))
                if self.clock() - tidied > self.TIDY_S * 10**9:
                    tidied = self.clock()
                    self.probes.tidy(tidied, self.KEEP_SIGNALS_S * 10**9)
            end = "completed"
        except TargetExited:
            end = "process exited"
            raise
        finally:
            self.probes.set_state(Capture.HOLD)
            if not self.interrupts.aborted:
                with self.interrupts.writing():
                    self.finish(end)

    def report_catches(self, records):
        if not records:
            return
        # CLOCK_MONOTONIC to wall clock, once for the batch.
        mono, wall = self.clock(), self.wall()
        signals = self.probes.stop_signals()
        for record in records:
            if self.args.sample_count and \
                    self.catches >= self.args.sample_count:
                return
            tid = record.tid
            name = thread_name(self.target.pid, tid) or \
                "<unknown:{}/{}>".format(self.target.pid, tid)
            if self.args.threads and not self.args.threads.matches(tid,
                                                                   name):
                continue
            self.catches += 1
            catch = analyse_long_poll(record, name, self.syscall_names,
                                      signals, thresholds_of(self.args),
                                      self.catches, self.realtime)
            catch.start_time, catch.end_time = (wall - datetime.timedelta(
                microseconds=(mono - ns) // 1000)
                for ns in (catch.start, catch.end))
            unshown = self.probes.counters()[Counter.LONG_POLL_UNSHOWN]
            catch.not_shown, self.unshown = unshown - self.unshown, unshown
            with self.interrupts.writing():
                if self.json:
                    self.report(doc=long_poll_document(
                        catch, self.header, self.options(), self.notes))
                else:
                    self.report(format_long_poll(
                        catch, self.args.long_poll / 1e6) + [""])

    def finish(self, end):
        counters = self.probes.counters()
        hists = None
        if self.args.histogram:
            hists = sorted(
                ((tid, thread_name(self.target.pid, tid) or "?", hist)
                 for tid, hist in self.probes.poll_histograms().items()),
                key=lambda item: (item[1], item[0]))
        if self.json:
            self.report(doc=end_document(
                self.header, self.options(), counters, self.catches, 0, end,
                self.notes, hists))
            return
        lines = []
        for tid, name, hist in hists or ():
            lines += ["{:10} {}".format(tid, name)] + \
                format_log2_hist("POLL INTERVAL HISTOGRAM", hist)
        self.report(lines)
        self.say(self.summary("{:,} long poll interval{} caught".format(
            self.catches, "s" * (self.catches != 1)), end, counters))


# ---- The session: compile, attach, clean up ---------------------------------

class CapturedStderr:
    """Collect what C code (libbcc, clang) writes to file descriptor 2, so
    that a failure can be told in one line.  With passthrough, leave it
    alone (-D)."""

    def __init__(self, passthrough=False):
        self.passthrough = passthrough
        self.text = ""

    def __enter__(self):
        if not self.passthrough:
            sys.stderr.flush()
            self.file = tempfile.TemporaryFile(mode="w+")
            self.saved = os.dup(2)
            os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        if not self.passthrough:
            sys.stderr.flush()
            os.dup2(self.saved, 2)
            os.close(self.saved)
            self.file.seek(0)
            self.text = self.file.read()
            self.file.close()
        return False

    def last_line(self, default):
        return last_line_of(self.text, default)


class CompilerExit:
    """Some compiler errors (an eBPF program over the 512-byte stack, say)
    end the process inside bcc: LLVM calls exit(1), no exception reaches
    Python, and the run would end with nothing said.  While armed (around
    the compile), a handler registered with the C library's exit handlers
    (through ctypes) turns that exit into the tool's ERROR line and exit
    code (70), after the cleanup given.  Disarming takes the handler off
    the C library's list (__cxa_finalize() of its own handle): a normal
    exit comes after Python has shut down, when no Python code may run.
    Only with glibc (musl's __cxa_finalize() removes nothing)."""

    def __init__(self, cleanup, errors):
        self.cleanup, self.errors = cleanup, errors
        self.armed = False
        self.handle = ctypes.create_string_buffer(1)    # our DSO handle
        self.handler = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._on_exit)
        self.register = None
        # musl has both functions, but its __cxa_finalize() removes
        # nothing: the handler would outlive Python.
        if platform.libc_ver()[0] != "glibc":
            return
        try:
            libc = ctypes.CDLL(None)
            register = getattr(libc, "__cxa_atexit")
            self.finalize = getattr(libc, "__cxa_finalize")
        except (AttributeError, OSError):
            return
        register.argtypes = [ctypes.c_void_p] * 3
        register.restype = ctypes.c_int
        self.finalize.argtypes = [ctypes.c_void_p]
        self.finalize.restype = None
        self.register = register

    def __enter__(self):
        if self.register is not None:
            self.armed = self.register(
                ctypes.cast(self.handler, ctypes.c_void_p), None,
                ctypes.addressof(self.handle)) == 0
        return self

    def __exit__(self, *exc):
        if self.armed:
            self.armed = False
            # Runs the handler (now a no-op) and removes it.
            self.finalize(ctypes.addressof(self.handle))
        return False

    def _on_exit(self, _arg):
        if not self.armed:
            return
        self.armed = False
        try:
            text, fd = "", 2
            if not self.errors.passthrough:
                self.errors.file.seek(0)
                text = self.errors.file.read()
                fd = self.errors.saved
            self.cleanup()
            message = load_failure(Exception("the compiler exited"), text,
                                   True)
            os.write(fd, "ERROR: {}\n".format(one_line(message)).encode(
                "utf-8", "replace"))
        finally:
            os._exit(os.EX_SOFTWARE)


def last_line_of(text, default):
    """The last line worth showing of what C code wrote (clang's context
    lines, "In file included from" and indented source, are not)."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(("In file", "    "))]
    return lines[-1] if lines else default


def verifier_reason(log):
    """The verifier's own words for why it rejected a program, from the log
    bcc writes on a failed load: the lines after the last instruction it
    walked ("14: (79) r1 = ...") and before its "processed N insns" summary
    (Linux 6.x adds "verification time" and "stack depth" lines there).
    None when the log holds no verifier run (a compiler error, say)."""
    lines = [line.strip() for line in log.splitlines()]
    ends = [n for n, line in enumerate(lines)
            if re.match(r"processed \d+ insns", line)]
    if not ends:
        return None
    reason = []
    for line in reversed(lines[:ends[-1]]):
        if re.match(r"\d+: ", line) or line.startswith(
                ("bpf: Failed", ";")):
            break
        summary = ("verification time", "stack depth")
        if line and not line.startswith(summary):
            reason.insert(0, line)
    return "; ".join(reason) or None


def load_failure(err, log, ringbuf):
    """The one line for a failed compile or load: the program and the
    verifier's reason when the kernel rejected it, the compiler's last
    line otherwise.  Ring buffers are named as the cause only when the
    kernel's support for them could not be told before compiling (ringbuf
    None); a kernel known to lack them has already been refused."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    program = re.search(r"Failed to load BPF program b?'?([A-Za-z0-9_]+)",
                        text)
    reason = verifier_reason(log)
    if program and reason:
        return ("the kernel's verifier rejected the eBPF program {}: {}; "
                "this is a bug of kernel_delay on this kernel ({}): report "
                "it with the output of -D".format(
                    program.group(1), one_line(reason), platform.release()))
    why = one_line(last_line_of(log, text))
    if ringbuf is None:
        return ("loading the eBPF program failed: {}; it needs Linux 5.8 "
                "or RHEL 8.4 (BPF ring buffers); rerun with -D to see the "
                "compiler's output".format(why))
    return ("loading the eBPF program failed: {}; rerun with -D to see the "
            "compiler's output".format(why))


def verify_usdt(pid, trigger):
    """Fail unless process pid has the USDT probe of trigger."""
    try:
        usdt = bcc.USDT(pid=pid)
        probes = sorted({"{}:{}".format(p.provider.decode(), p.name.decode())
                         for p in usdt.enumerate_probes()})
    except Exception as err:      # bcc raises plain Exception here
        raise Fatal("cannot read the USDT probes of process {}: {}; check "
                    "that its executable is still there (/proc/{}/exe)"
                    .format(pid, err, pid), os.EX_CONFIG)
    wanted = "{}:{}".format(trigger.target, trigger.name)
    if wanted not in probes:
        raise Fatal("trigger '{}': process {} has no USDT probe {}; it has: "
                    "{}".format(trigger.text, pid, wanted,
                                ", ".join(probes) or "none (OVS needs "
                                "./configure --enable-usdt-probes)"),
                    os.EX_CONFIG)
    return usdt


def uprobe_binary(pid, trigger):
    """The file to attach the uprobe of trigger to: a link that opens the
    very file the process maps, even after an upgrade replaced it."""
    if trigger.target:
        try:
            return find_mapped_library(pid, trigger.target)[1]
        except Fatal as err:
            err.args = ("trigger '{}': {}".format(trigger.text, err),)
            raise
    return "/proc/{}/exe".format(pid)


def verify_trigger(trigger, pid, tracefs):
    """Check that trigger can be attached, before compiling anything.
    Returns the USDT context of a USDT trigger, else None."""
    if trigger.kind == "tracepoint":
        if not os.path.isdir(os.path.join(tracefs, "events", trigger.target,
                                          trigger.name)):
            raise Fatal("trigger '{}': there is no tracepoint {}:{}; "
                        "tracefs lists them under events/ (mount -t "
                        "tracefs nodev /sys/kernel/tracing)".format(
                            trigger.text, trigger.target, trigger.name),
                        os.EX_CONFIG)
    elif trigger.kind in ("kprobe", "kretprobe"):
        if not kprobes_supported(tracefs):
            raise Fatal("trigger '{}': the running kernel does not support "
                        "kprobes (CONFIG_KPROBES/CONFIG_KPROBE_EVENTS); use "
                        "a tracepoint, USDT or uprobe trigger".format(
                            trigger.text), os.EX_UNAVAILABLE)
        if not kernel_function_exists(trigger.name):
            raise Fatal("trigger '{}': no kernel function {} in "
                        "/proc/kallsyms".format(trigger.text, trigger.name),
                        os.EX_CONFIG)
    elif trigger.kind in ("uprobe", "uretprobe"):
        binary = uprobe_binary(pid, trigger)
        try:
            bcc.BPF._check_path_symbol(binary.encode(), trigger.name.encode(),
                                       None, -1)
        except Exception:
            # The links under /proc/PID name the file they open.
            try:
                shown = os.readlink(binary)
            except OSError:
                shown = binary
            raise Fatal("trigger '{}': no symbol {} in {}; if the binary "
                        "is stripped, install its debug symbols (for OVS: "
                        "openvswitch-dbgsym or openvswitch-debuginfo)".format(
                            trigger.text, trigger.name, printable(shown)),
                        os.EX_CONFIG)
    elif trigger.kind == "usdt":
        return verify_usdt(pid, trigger)
    return None


def attach_triggers(bpf, triggers, pid):
    for role, trigger in triggers:
        fn_name = "kd_{}_trigger".format(role)
        # bcc's attach_kprobe, attach_kretprobe, attach_uprobe, ...
        attach = getattr(bpf, "attach_" + trigger.kind, None)
        try:
            if trigger.kind == "tracepoint":
                attach(tp="{}:{}".format(trigger.target, trigger.name),
                       fn_name=fn_name)
            elif trigger.kind in ("kprobe", "kretprobe"):
                attach(event=trigger.name, fn_name=fn_name)
            elif trigger.kind in ("uprobe", "uretprobe"):
                attach(name=uprobe_binary(pid, trigger), sym=trigger.name,
                       fn_name=fn_name, pid=pid)
        except Exception:
            raise AttachError(role, trigger)


def usdt_contexts(triggers, verified):
    """Enable the USDT triggers on the contexts verify_trigger() made."""
    contexts = []
    for (role, trigger), usdt in zip(triggers, verified):
        if usdt is None:
            continue
        try:
            usdt.enable_probe(probe="{}:{}".format(trigger.target,
                                                   trigger.name),
                              fn_name="kd_{}_trigger".format(role))
        except Exception as err:
            raise Fatal("enabling USDT probe for '{}' failed: {}; rerun "
                        "with -D to see why, or choose another trigger"
                        .format(trigger.text, err), os.EX_OSERR)
        contexts.append(usdt)
    return contexts


def attach_scheduler(bpf, btf_ids, fds):
    """Attach the scheduler probes (KD_SCHED_PROBE, kd_<event>): as tp_btf
    programs when btf_ids (TaskLayout.sched_btf_ids, compiled with
    TASK_BTF), else as raw tracepoints through bcc.  bcc loads neither
    kind itself: it knows no tp_btf programs, and would load kd_<event>
    as raw tracepoints on its own only by their name.  The descriptors of
    the tp_btf programs and links are appended to fds, whose closing
    detaches them.  Returns None, or why the kernel refused one: a line
    for a tp_btf program, bcc's exception for a raw tracepoint."""
    for event in SCHED_EVENTS:
        fn_name = ("kd_" + event).encode()
        if not btf_ids:
            try:
                bpf.attach_raw_tracepoint(tp=event.encode(), fn_name=fn_name)
            except Exception as err:
                return err
            continue
        start = bcc.lib.bpf_function_start(bpf.module, fn_name)
        insns = ctypes.string_at(start, bcc.lib.bpf_function_size(
            bpf.module, fn_name))
        btf_id = dict(btf_ids)[event]
        fd, err, _ = load_program(BPF_PROG_TYPE_TRACING, insns,
                                  event.encode(), btf_id)
        if fd < 0:
            # Again with the verifier's log, for the reason.
            again, _, log = load_program(BPF_PROG_TYPE_TRACING, insns,
                                         event.encode(), btf_id, 1 << 24)
            if again >= 0:
                os.close(again)
            reason = verifier_reason(log) or last_line_of(log, "")
            return "{}: {}{}".format(event, os.strerror(err),
                                     ": " + one_line(reason) if reason
                                     else "")
        fds.append(fd)
        # union bpf_attr for BPF_RAW_TRACEPOINT_OPEN: name (NULL: the
        # program's attach point), prog_fd.
        link, err = bpf_syscall(BPF_RAW_TRACEPOINT_OPEN,
                                struct.pack("<QI", 0, fd) + bytes(52))
        if link < 0:
            return "{}: {}".format(event, os.strerror(err))
        fds.append(link)
    return None


class Session:
    """Owns everything a run sets up, and undoes it on close()."""

    def __init__(self, interrupts=None):
        self.tree = None
        self.mounted = None
        self.bpf = None
        self.fds = []       # tp_btf programs and links (attach_scheduler())
        self.upcall_note = None     # why the upcall probe did not attach
        self.interrupts = interrupts or Interrupts()

    def close(self):
        # A second Ctrl-C must not cut the teardown short.
        handlers = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in END_SIGNALS}
        try:
            while self.fds:
                os.close(self.fds.pop())
            if self.bpf is not None:
                self.bpf.cleanup()
                self.bpf = None
            self.remove_tree()
            if self.mounted:
                quiet_run(["umount", self.mounted])
                self.mounted = None
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def open(self, args, ctx, source):
        """Compile, load and attach; returns a Probes.  A signal meanwhile
        takes effect when this is done, so that whatever was set up has
        an owner that close() sees."""
        with self.interrupts.shield():
            return self._open(args, ctx, source)

    def remove_tree(self):
        if self.tree:
            shutil.rmtree(self.tree, ignore_errors=True)
            if os.environ.get("BCC_KERNEL_SOURCE") == self.tree:
                del os.environ["BCC_KERNEL_SOURCE"]
            self.tree = None

    def _open(self, args, ctx, source):
        self.mounted = ensure_tracefs()
        if bcc is not None:
            bcc.TRACEFS = tracefs_path()
        if ctx.layout.source == "btf" and not headers_available():
            self.tree = new_tree_dir()
            make_include_tree(self.tree)
            os.environ["BCC_KERNEL_SOURCE"] = self.tree
        verified = [verify_trigger(trigger, ctx.pid, tracefs_path())
                    for _, trigger in ctx.triggers]
        with CapturedStderr(args.debug) as errors:
            contexts = usdt_contexts(ctx.triggers, verified)
            try:
                with CompilerExit(self.close, errors):
                    self.bpf = bcc.BPF(text=source, usdt_contexts=contexts,
                                       debug=args.debug)
            except Exception as err:
                failure = err
            else:
                failure = None
        # Only the compiler reads the include tree: remove it now, so
        # that even SIGKILL later leaves no tree behind.
        self.remove_tree()
        if failure:
            raise Fatal(load_failure(failure, errors.text,
                                     ringbuf_supported()), os.EX_SOFTWARE)
        with CapturedStderr(args.debug) as errors:
            refused = attach_scheduler(
                self.bpf, ctx.layout.sched_btf_ids if ctx.task_btf else (),
                self.fds)
        if refused and ctx.task_btf:
            raise Fatal("the kernel refused the scheduler probe {} as a "
                        "tp_btf program; run the tool with --no-task-btf "
                        "(raw tracepoints), and report this with the output "
                        "of uname -a".format(refused), os.EX_SOFTWARE)
        if refused:
            raise Fatal(load_failure(refused, errors.text, True),
                        os.EX_SOFTWARE)
        with CapturedStderr(args.debug) as errors:
            try:
                attach_triggers(self.bpf, ctx.triggers, ctx.pid)
            except AttachError as err:
                failure = err
        if failure:
            raise Fatal("the kernel refused the {} trigger '{}' ({}); choose "
                        "another event (ftrace:* tracepoints, for one, take "
                        "no eBPF programs)".format(
                            failure.role, failure.trigger.text,
                            errors.last_line("no reason given")),
                        os.EX_OSERR)
        upcalls = ctx.upcalls
        if upcalls:
            with CapturedStderr(args.debug) as errors:
                try:
                    self.bpf.attach_kretprobe(event=UPCALL_FUNCTION,
                                              fn_name="kd_upcall_return")
                except Exception:
                    upcalls = False
            if not upcalls:
                self.upcall_note = "attaching a return probe to {}() " \
                    "failed ({})".format(UPCALL_FUNCTION,
                                         errors.last_line("no reason given"))
        return Probes(self.bpf, ctx.pid, args.histogram,
                      stacks=args.syscall_events is not None and
                      args.stack_trace_size > 0,
                      upcalls=upcalls,
                      long_poll=args.long_poll is not None)


# ---- main -------------------------------------------------------------------

def open_output(path, interrupts):
    """The --output file, opened for the report.

    A FIFO without a reader would block a plain open() in the kernel for
    good: Python retries the open after each signal handler, so no signal
    but SIGKILL ends it.  O_NONBLOCK fails at once instead (ENXIO) and the
    loop retries every 100 ms, checking for a signal in between."""
    said = False
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                         os.O_NONBLOCK, 0o666)
            break
        except OSError as err:
            if err.errno != errno.ENXIO:
                raise Fatal("cannot write the report to {} ({}); choose "
                            "another --output file".format(
                                printable(path), err.strerror), os.EX_IOERR)
        if not said:
            said = True
            with interrupts.writing():
                write_out(sys.stderr, "# Waiting for a reader "
                          "of the FIFO {}\n".format(printable(path)))
        interrupts.pending()
        time.sleep(0.1)
    os.set_blocking(fd, True)
    # Line buffered: each line reaches the file as it is written.
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8",
                     errors="backslashreplace")


def event_min_ns(args):
    """The shortest system call --syscall-events reports (None: off)."""
    if args.syscall_events is None:
        return None
    # "Longer than" N; without a value (or 0), every call.
    return args.syscall_events + 1 if args.syscall_events else 0


def upcall_keys():
    """Room in the upcall table for every CPU with success and every
    errno."""
    return possible_cpus() * (max(errno.errorcode) + 2)


def run(args, out, command=(), interrupts=None):
    """Everything after argument parsing; raises Fatal on errors."""
    interrupts = interrupts or Interrupts()
    if args.json_schema:
        write_out(out, json.dumps(json_schema(), indent=2) + "\n")
        return os.EX_OK
    if bcc is None and not args.ebpf:
        raise Fatal("the Python module bcc (BPF Compiler Collection) is "
                    "missing for {}; install python3-bpfcc (Debian/Ubuntu) "
                    "or python3-bcc (Fedora/RHEL)".format(sys.executable),
                    os.EX_OSFILE)
    if psutil is None and not args.ebpf:
        raise Fatal("the Python module psutil is missing for {}; install "
                    "python3-psutil (Debian/Ubuntu, Fedora/RHEL)".format(
                        sys.executable), os.EX_OSFILE)
    if not args.ebpf and in_child_pid_namespace():
        raise Fatal("this runs in a PID namespace of its own, whose process "
                    "IDs are not the kernel's; run the container with "
                    "--pid=host", os.EX_UNAVAILABLE)
    pid = args.pid
    if pid is None:
        pid = 0 if args.ebpf else pick_target(
            list_processes(), args.process or DEFAULT_PROCESS)
    elif not args.ebpf:
        check_pid(pid)
    target = Target(pid) if args.ebpf else identify_target(pid)
    # Tables sized from the target as it is now, unless told otherwise.
    count = len(task_list(pid)) if pid else 0
    table = syscall_table() if bcc is not None else {}
    ctx = RunContext(
        target=target, syscall_names=table, poll_nrs=poll_syscalls(table),
        layout=choose_layout(), triggers=triggers_of(args),
        max_threads=(table_threads(count) if args.max_threads is None
                     else args.max_threads))
    table_note = table_warning(count, ctx.max_threads)
    ctx.task_btf = not args.no_task_btf and task_btf_supported(ctx.layout)
    # Upcall statistics are for ovs-vswitchd only, and the probe is
    # compiled in only when it will be attached.
    upcall_note = None
    if not args.skip_upcall_stats and \
            thread_name(pid, pid) == DEFAULT_PROCESS:
        upcall_note = upcall_problem()
        ctx.upcalls = upcall_note is None
    source = render_bpf_source(
        pid, ctx.layout, ctx.poll_nrs, args.buffer_page_count,
        ctx.max_threads, [role for role, _ in ctx.triggers],
        restart_syscall(table), args.histogram,
        event_min_ns=event_min_ns(args),
        skip_poll_events=args.skip_syscall_poll_events,
        stack_size=args.stack_trace_size,
        upcall_keys=upcall_keys() if ctx.upcalls else 0,
        tracer_nrs=tracer_syscalls(table),
        long_poll_ns=args.long_poll,
        current_btf=current_task_btf_supported(ctx.layout),
        task_btf=ctx.task_btf, direct_slots=args.direct_slots)
    if args.ebpf:
        write_out(out, source)
        return os.EX_OK
    if os.geteuid() != 0:
        raise Fatal("root privileges are needed to load eBPF programs; run "
                    "with sudo", os.EX_NOPERM)
    check_ringbuf()

    if args.output:
        out = open_output(args.output, interrupts)
    # With --output, the progress lines still reach the terminal.
    progress = sys.stderr if args.format == "json" or args.output else out
    # Compiling and reporting go ahead of a saturated node's threads.
    priority = Priority(enabled=not args.keep_priority,
                        saved=_STARTED_WITH)
    priority.boost()
    header = read_header(command, pid)
    session = Session(interrupts)
    try:
        try:
            probes = session.open(args, ctx, source)
        except KeyboardInterrupt:
            # Before the first window (compiling, attaching).
            say_interrupted(progress, interrupts)
            return os.EX_OK
        kind = Sampler if args.long_poll is None else LongPollSampler
        sampler = kind(probes, args, out, ctx, header=header,
                       progress=progress, interrupts=interrupts,
                       priority=priority)
        upcall_note = upcall_note or session.upcall_note
        if table_note:
            sampler.notes += textwrap.wrap(
                table_note, width=79, subsequent_indent="#   ",
                break_on_hyphens=False)
        if upcall_note:
            sampler.notes.append("# Upcall statistics skipped: {}.".format(
                upcall_note))
        try:
            sampler.run()
        except KeyboardInterrupt:
            sampler.say("# Interrupted")
        except TargetExited as gone:
            target = ctx.target
            sampler.say(stamped("# Process {} ({}) exited".format(
                target.pid, target.name), gone.when))
            raise Fatal(target_gone_error(target, successors(target)),
                        os.EX_TEMPFAIL)
        finally:
            code = sampler.faults.tell(sys.stderr)
        if code:
            return code
    finally:
        session.close()
        if args.output:
            out.close()
    return os.EX_OK


def say_interrupted(out, interrupts):
    """The last line of a run stopped before its first window."""
    with interrupts.writing():
        write_out(out, "# Interrupted\n")


def main(argv=None, out=None):
    interrupts = Interrupts()
    previous = {sig: signal.signal(sig, interrupts.handler)
                for sig in END_SIGNALS}
    command = typed_command(sys.argv) if argv is None else \
        ["kernel_delay.py"] + list(argv)
    args = None
    out = out or sys.stdout
    try:
        try:
            args = parse_args(command[1:])
            return run(args, out, command, interrupts)
        except KeyboardInterrupt:
            # Before anything was set up.
            say_interrupted(sys.stderr if args and args.format == "json"
                            else out, interrupts)
            return os.EX_OK
    except Fatal as err:
        sys.stderr.write("ERROR: {}\n".format(one_line(str(err))))
        return err.code
    except (OutputError, Abort) as err:
        output = args and args.output
        if not output and out is sys.stdout:
            # Nothing more can go out there, not even Python's last flush.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(err, Abort):
            return 128 + err.signum     # the shell's code for a signal
        if isinstance(err.args[0], BrokenPipeError):
            return os.EX_OK         # | head: the reader has enough
        sys.stderr.write("ERROR: cannot write the report ({}); check {}\n"
                         .format(err.args[0].strerror,
                                 "the --output file" if args.output else
                                 "where standard output goes"))
        return os.EX_IOERR
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Set by reexec_with_bcc() to the script's path as typed.
REEXEC = "KERNEL_DELAY_REEXEC"


def typed_command(argv):
    """argv as the user typed it: after reexec_with_bcc(), argv[0] is
    the script's absolute path, and the typed one is in REEXEC."""
    typed = os.environ.get(REEXEC, "")
    if argv and typed and os.path.abspath(typed) == argv[0]:
        return [typed] + list(argv[1:])
    return list(argv)


def reexec_with_bcc():
    """Run under an interpreter that has bcc when this one lacks it.

    bcc comes from the distribution (python3-bpfcc, python3-bcc) and lives
    in the system Python, which pyenv, conda or a venv put behind another
    python3 on PATH.
    """
    if bcc is not None or os.environ.get(REEXEC):
        return
    # Compare paths, not what they resolve to: a venv's python3 is a
    # symlink to the system one, but does not see its packages.
    here = os.path.abspath(sys.executable)
    for candidate in ("/usr/bin/python3", "/usr/libexec/platform-python",
                      "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK) and candidate != here:
            # The command as typed, for the report's header.
            os.environ[REEXEC] = sys.argv[0] or "1"
            script = os.path.abspath(sys.argv[0])
            # The other interpreter starts boosted (a saturated node would
            # keep it waiting minutes for a CPU before its first line):
            # it is told the policy found here.
            if _STARTED_WITH:
                os.environ[STARTED_WITH_ENV] = "{} {}".format(
                    _STARTED_WITH[0], _STARTED_WITH[1].sched_priority)
            os.execv(candidate, [candidate, script] + sys.argv[1:])


if __name__ == "__main__":
    reexec_with_bcc()
    sys.exit(main())
