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
tracepoint fields, and the three task_struct fields it needs (pid, tgid and
the scheduler state) at offsets read from the running kernel's BTF.

Dependencies: bcc (Debian python3-bpfcc, Fedora/RHEL python3-bcc).
Documentation: kernel_delay.rst next to this file.
"""

import argparse
import contextlib
import ctypes
import datetime
import enum
import errno
import json
import os
import platform
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__version__ = "1.0"

try:
    import bcc
except ImportError:
    bcc = None
except KeyboardInterrupt:
    # Ctrl-C while Python loads bcc (before main() handles signals).
    if __name__ != "__main__":
        raise
    sys.exit(128 + signal.SIGINT)


# ---- Exit codes (documented in kernel_delay.rst) ---------------------------

EXIT_CODES = {
    os.EX_OK: "success",
    2: "invalid command line (argparse)",
    os.EX_USAGE: "ambiguous target: several ovs-vswitchd, or a thread ID",
    os.EX_NOINPUT: "the target process does not exist",
    os.EX_TEMPFAIL: "the target exited or restarted during the run",
    os.EX_UNAVAILABLE: "the kernel or the environment lacks something the "
                       "tool needs",
    os.EX_SOFTWARE: "the eBPF program did not compile or load",
    os.EX_OSFILE: "the Python module bcc is missing",
    os.EX_OSERR: "attaching a probe failed",
    os.EX_IOERR: "the report could not be written",
    os.EX_NOPERM: "not running as root",
    os.EX_CONFIG: "a trigger names a probe, symbol or library that "
                  "does not exist",
    128 + signal.SIGINT: "a second Ctrl-C cut a report short",
    128 + signal.SIGTERM: "a second SIGTERM cut a report short",
}


class TargetExited(Exception):
    """The monitored process went away (noticed at when, a datetime)."""

    def __init__(self, when=None):
        super().__init__(when)
        self.when = when


class Abort(BaseException):
    """A second SIGINT or SIGTERM while a report is being written: stop
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


# ---- The eBPF program ------------------------------------------------------
#
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

/* Where pid, tgid and the scheduler state live inside struct task_struct
 * on the running kernel. */
#define TASK_PID_OFF    @TASK_PID_OFF@
#define TASK_TGID_OFF   @TASK_TGID_OFF@
#define TASK_STATE_OFF  @TASK_STATE_OFF@
typedef @TASK_STATE_TYPE@ task_state_t;
/* task_struct.on_cpu: set while the task is on a CPU (SMP kernels). */
#define HAVE_ON_CPU     @HAVE_ON_CPU@
#define TASK_ON_CPU_OFF @TASK_ON_CPU_OFF@
/* The system call number in struct pt_regs (x86 orig_ax, arm64
 * syscallno). */
#define HAVE_REGS_NR    @HAVE_REGS_NR@
#define REGS_NR_OFF     @REGS_NR_OFF@
typedef @REGS_NR_TYPE@ regs_nr_t;

/* __TASK_STOPPED (0x4, SIGSTOP and job control) and __TASK_TRACED (0x8,
 * ptrace stops) have had these values since Linux 2.6. */
#define STOPPED_STATE_MASK 0xc

/* poll() and ppoll(): their gaps are what OVS's "Unreasonably long ...ms
 * poll interval" message measures. */
#define IS_POLL(nr) (@POLL_TEST@)
/* restart_syscall(): how the kernel resumes an interrupted poll(). */
#define RESTART_NR      @RESTART_NR@

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
};

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
BPF_HASH(sys_stats, struct sys_key_t, struct acc_t, MAX_SYS_KEYS);
BPF_HASH(poll_stats, u32, struct acc_t, MAX_THREADS);
BPF_HASH(sched_state, u32, struct sched_t, MAX_THREADS);
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

static __always_inline u32 kd_task_tgid(void *task)
{
    u32 val = 0;

    bpf_probe_read_kernel(&val, sizeof(val), task + TASK_TGID_OFF);
    return val;
}

static __always_inline u32 kd_task_pid(void *task)
{
    u32 val = 0;

    bpf_probe_read_kernel(&val, sizeof(val), task + TASK_PID_OFF);
    return val;
}

/* pid and tgid of a task as bpf_get_current_pid_tgid() has them; one
 * read where the two fields are neighbours (they are). */
static __always_inline u64 kd_task_ids(void *task)
{
    if (TASK_TGID_OFF == TASK_PID_OFF + 4) {
        u64 val = 0;

        bpf_probe_read_kernel(&val, sizeof(val), task + TASK_PID_OFF);
        return val;
    }
    return (u64)kd_task_tgid(task) << 32 | kd_task_pid(task);
}

static __always_inline u64 kd_task_state(void *task)
{
    task_state_t val = 0;

    bpf_probe_read_kernel(&val, sizeof(val), task + TASK_STATE_OFF);
    return val;
}

static __always_inline long kd_regs_nr(void *regs)
{
    regs_nr_t val = -1;

    if (HAVE_REGS_NR)
        bpf_probe_read_kernel(&val, sizeof(val), regs + REGS_NR_OFF);
    return val;
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
    int val = 0;

    if (HAVE_ON_CPU)
        bpf_probe_read_kernel(&val, sizeof(val), task + TASK_ON_CPU_OFF);
    return val != 0;
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
static __always_inline struct sched_t *kd_sched_entry(u32 tid)
{
    struct sched_t *entry = sched_state.lookup(&tid);

    if (entry)
        return entry;

    struct sched_t zero = {};

    /* Another CPU may create it first (-EEXIST): only a failed lookup
     * afterwards means the table is full. */
    sched_state.insert(&tid, &zero);
    entry = sched_state.lookup(&tid);
    if (!entry)
        kd_bump(COUNTER_SCHED_FULL);
    return entry;
}

/* A thread seen on a CPU (system call, interrupt) before any switch of it
 * in the window has been on that CPU since the window opened. */
static __always_inline void kd_seen_running(u32 tid)
{
    if (sched_state.lookup(&tid))
        return;

    struct sched_t entry = { .run_start = kd_window_start(), .switched = 1 };

    sched_state.insert(&tid, &entry);   /* a racing switch's entry wins */
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

struct cpu_log_t {
    u64 last;           /* time of the last switch on this CPU */
    u64 idx;
    struct seg_t seg[CPU_SEGS];
};

struct holder_key_t {
    u32 tid;            /* the thread that waited */
    u32 pid;            /* the task that ran meanwhile */
};

struct holder_t {
    u64 ns;
    u32 tgid;
    u32 pad;
    char comm[16];
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
};

BPF_HASH(blocked_stats, struct sys_key_t, u64, MAX_SYS_KEYS);
BPF_PERCPU_ARRAY(cpu_log, struct cpu_log_t, 1);
BPF_HASH(holders, struct holder_key_t, struct holder_t, MAX_HOLDER_KEYS);
BPF_HASH(stop_signals, struct signal_key_t, struct signal_t, 64);

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

/* A target thread switched out, neither preempted nor stopped. */
static __always_inline void kd_budget_sleeps(u32 tid, struct sched_t *sched,
                                             u64 state, u64 now)
{
    if (!(state & SLEEP_STATE_MASK) || (state & DEAD_STATE_MASK))
        return;

    struct budget_t *entry = kd_budget_entry(sched);
    struct sys_start_t *call = sys_start.lookup(&tid);

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
    if (nr == NR_UNKNOWN)
        __sync_fetch_and_add(&entry->unknown, now - start);
    else
        kd_book_blocked(tid, nr, now - start);
}

/* The call a target thread was in when the window opened returns: its
 * sleep so far was in system call nr. */
static __always_inline void kd_budget_call_known(u32 tid, long nr)
{
    /* On a CPU: seen running, if this is its first event. */
    kd_seen_running(tid);

    struct budget_t *entry = kd_budget_entry(sched_state.lookup(&tid));

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

/* Every switch on this CPU while capturing: prev ran until now. */
static __always_inline struct cpu_log_t *kd_log_switch(u64 now,
                                                       u64 pid_tgid)
{
    u32 zero = 0;
    struct cpu_log_t *log = cpu_log.lookup(&zero);

    if (!log)
        return 0;

    struct seg_t *seg = &log->seg[log->idx & (CPU_SEGS - 1)];

    seg->start = log->last;
    seg->end = now;
    seg->pid = pid_tgid;
    seg->tgid = pid_tgid >> 32;
    bpf_get_current_comm(&seg->comm, sizeof(seg->comm));
    log->idx++;
    log->last = now;
    return log;
}

/* A target thread waited from start to now for this CPU: book who ran
 * on it meanwhile, as far as the log goes back. */
static __always_inline void kd_book_holders(u32 tid, struct cpu_log_t *log,
                                            u64 start, u64 now)
{
    if (!log)
        return;
#pragma unroll
    for (int i = 0; i < CPU_SEGS; i++) {
        struct seg_t *seg = &log->seg[i];
        u64 from = seg->start > start ? seg->start : start;
        u64 to = seg->end < now ? seg->end : now;

        if (to <= from || seg->pid == tid)
            continue;

        struct holder_key_t key = { .tid = tid, .pid = seg->pid };
        struct holder_t zero = {};
        struct holder_t *holder = holders.lookup_or_try_init(&key, &zero);

        if (!holder) {
            kd_bump(COUNTER_HOLDERS_FULL);
            continue;
        }
        __sync_fetch_and_add(&holder->ns, to - from);
        holder->tgid = seg->tgid;
        __builtin_memcpy(holder->comm, seg->comm, sizeof(holder->comm));
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
    if (target != MONITOR_TGID && !sched_state.lookup(&target))
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
    bpf_get_current_comm(&seen->comm, sizeof(seen->comm));
    return 0;
}

/* --histogram: log2 buckets of system call durations per thread and
 * call, and of waits for a CPU per thread (nr HIST_READY). */
#define HIST_READY      0xffffffff

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
    struct sys_start_t *entry = sys_start.lookup(&tid);

    if (entry && entry->window == window)
        return entry;
    kd_seen_running(tid);

    struct sys_start_t fresh = { .window = window };

    if (entry) {
        __builtin_memcpy(entry, &fresh, sizeof(fresh));
        return entry;
    }
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

    u64 now = bpf_ktime_get_ns();
    u64 nr = ctx->args[1];

    /* The rest of an interrupted poll() counts as poll(); its gap did
     * not start. */
    if (entry->restarting && (nr == RESTART_NR || IS_POLL(nr))) {
        if (nr == RESTART_NR)
            nr = entry->restart_nr;
        entry->restarting = 0;
    }
    entry->ts = now;
    entry->nr = nr;

    /* A poll gap runs from the return of the thread's last poll(). */
    if (IS_POLL(nr) && entry->poll_ret) {
        struct acc_t zero = {};
        u64 gap = now - entry->poll_ret;

        entry->poll_ret = 0;
        kd_account(poll_stats.lookup_or_try_init(&tid, &zero), gap,
                   COUNTER_POLL_FULL);
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
    struct sys_start_t *start = sys_start.lookup(&tid);

    /* Calls that entered before the window have no start stamp and are
     * not counted; but a poll() interrupted now resumes inside it. */
    if (!start || start->window != kd_window_start() || !start->ts) {
        long nr = kd_regs_nr((void *)ctx->args[0]);

        if (kd_restarting(ret) && IS_POLL(nr))
            kd_poll_restarts(kd_sys_entry(tid), nr);
        kd_budget_call_known(tid, nr);
        return 0;
    }

    u64 now = bpf_ktime_get_ns();
    struct sys_key_t key = { .tid = tid, .nr = start->nr };
    u64 entry = start->ts;
    u64 delta = now - entry;

    start->ts = 0;
    kd_count_call(tid, start, key.nr, delta);
    kd_hist(tid, key.nr, delta);
#if SYSCALL_EVENTS
    if (delta >= MIN_EVENT_NS && !(SKIP_POLL_EVENTS && IS_POLL(key.nr)))
        kd_syscall_event(ctx, tid, key.nr, entry, now);
#endif
    if (!IS_POLL(key.nr))
        return 0;
    if (kd_restarting(ret))
        kd_poll_restarts(start, key.nr);
    else
        start->poll_ret = now;
    return 0;
}

/* ---- Scheduler: on CPU, waiting for a CPU, stopped ------------------- */

static __always_inline void kd_ready_since(void *task, bool new_task)
{
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
    }
}

/* args: struct task_struct *p */
RAW_TRACEPOINT_PROBE(sched_wakeup)
{
    kd_ready_since((void *)ctx->args[0], false);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
    kd_ready_since((void *)ctx->args[0], true);
    return 0;
}

/* args: bool preempt, struct task_struct *prev, struct task_struct *next
 * (and unsigned int prev_state since 5.18).  It fires in __schedule()
 * before the switch, so current is still prev. */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    /* Every switch on the machine comes here: outside a window, leave
     * before reading anything of the tasks. */
    if (!kd_capturing())
        return 0;

    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 next_ids = kd_task_ids((void *)ctx->args[2]);

    if (!(kd_is_target(pid_tgid) || kd_is_target(next_ids))) {
        /* Other tasks' switches only go into the CPU log (time budget). */
        kd_log_switch(bpf_ktime_get_ns(), pid_tgid);
        return 0;
    }

    u64 now = bpf_ktime_get_ns();
    struct sched_t *entry;
    struct cpu_log_t *log = kd_log_switch(now, pid_tgid);

    if (kd_is_target(pid_tgid) && (entry = kd_sched_entry(pid_tgid))) {
        /* The state is read live rather than from the prev_state
         * argument: __schedule() resets it to TASK_RUNNING when a
         * signal is pending, and the task then stays queued. */
        u64 state = kd_task_state((void *)ctx->args[1]);
        bool preempted = ctx->args[0] & 1;

        kd_close_run(entry, now);
        /* Preempted, or yielding while runnable: still on the run
         * queue, so its wait for a CPU starts now. */
        entry->ready_start = preempted || state == 0 ? now : 0;
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
        kd_book_holders(next_ids, log, start, now);
        kd_hist(next_ids, HIST_READY, now - start);
    }
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

/* Keep the names of threads that exit inside the window, or while it is
 * being reported (before user space reads /proc). */
TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 state = kd_capture_state();

    if (!kd_is_target(pid_tgid) ||
        (state != CAPTURE_RUNNING && state != CAPTURE_HOLD))
        return 0;

    u32 tid = pid_tgid;
    struct name_t name = {};

    bpf_get_current_comm(&name.comm, sizeof(name.comm));
    kd_check_store(exit_names.update(&tid, &name), COUNTER_NAME_FULL);
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

        __builtin_memcpy(&key.name, start->name, sizeof(key.name));
        kd_account(hardirq_stats.lookup_or_try_init(&key, &zero),
                   bpf_ktime_get_ns() - start->ts, COUNTER_HARDIRQ_FULL);
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

        kd_account(softirq_stats.lookup_or_try_init(&key, &zero),
                   bpf_ktime_get_ns() - start->ts, COUNTER_SOFTIRQ_FULL);
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


# ---- Enums shared with the C program ----------------------------------------

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
    RUN_FULL = 5
    READY_FULL = 6
    STOP_FULL = 7
    HARDIRQ_FULL = 8
    SOFTIRQ_FULL = 9
    NAME_FULL = 10
    SCHED_FULL = 11
    SCHED_LOST = 12
    BUDGET_FULL = 13
    BLOCKED_FULL = 14
    HOLDERS_FULL = 15
    HIST_FULL = 16
    STACK_LOST = 17
    UPCALL_FULL = 18


def c_enum(enum_class, prefix):
    """The body of a C enum mirroring a Python IntEnum."""
    return "\n".join("    {}{} = {},".format(prefix, member.name, member.value)
                     for member in enum_class)


# What each table-full counter is about, for the warnings.
COUNTER_TABLES = {
    Counter.SYS_START_FULL: "system call start",
    Counter.SYS_STATS_FULL: "system call statistics",
    Counter.POLL_FULL: "poll gap",
    Counter.RUN_FULL: "run time",
    Counter.READY_FULL: "ready time",
    Counter.STOP_FULL: "stopped time",
    Counter.HARDIRQ_FULL: "hard IRQ",
    Counter.SOFTIRQ_FULL: "soft IRQ",
    Counter.NAME_FULL: "exited thread name",
    Counter.SCHED_FULL: "scheduler state",
    Counter.BUDGET_FULL: "time budget",
    Counter.BLOCKED_FULL: "blocked time",
    Counter.HOLDERS_FULL: "CPU holder",
    Counter.HIST_FULL: "histogram",
    Counter.UPCALL_FULL: "upcall statistics",
}

SOFTIRQ_NAMES = ("hi", "timer", "net_tx", "net_rx", "block", "irq_poll",
                 "tasklet", "sched", "hrtimer", "rcu")

# System call numbers of poll() and ppoll(), used when bcc's table is not
# at hand (--ebpf without bcc).
POLL_SYSCALLS = {"x86_64": (7, 271), "aarch64": (73,)}
RESTART_SYSCALL = {"x86_64": 219, "aarch64": 128}

DEFAULT_PROCESS = "ovs-vswitchd"

# Limits of the options: the tables are preallocated in kernel memory
# (about 80 bytes per entry; 16 system call entries per thread).
MAX_SECONDS = 30 * 24 * 3600
MAX_THREADS = 32768
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
OVS_MODULE = "openvswitch"


# ---- Data classes -----------------------------------------------------------

@dataclass
class Acc:
    """count, total, min and max of a set of durations (ns)."""
    count: int = 0
    total: int = 0
    min: int = 0
    max: int = 0

    @property
    def average(self):
        return self.total // self.count if self.count else 0

    def add(self, delta):
        self.count += 1
        self.total += delta
        self.min = delta if self.count == 1 else min(self.min, delta)
        self.max = max(self.max, delta)


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
    # --histogram: log2 slot -> count, per system call and for ready waits.
    sys_hist: Dict[int, Dict[int, int]] = field(default_factory=dict)
    ready_hist: Dict[int, int] = field(default_factory=dict)


# ---- Data classes: time budget and verdict ----------------------------------
#
# Plain data, computed by pure functions from ThreadStats (thread_budget(),
# make_verdict()) and formatted separately, so that other output formats
# can use them as they are.

NR_OUTSIDE = -1     # "system call" number of sleeps outside system calls


@dataclass
class Holder:
    """A task that ran on the CPU a thread was waiting for."""
    pid: int            # thread ID (0: the idle task)
    tgid: int           # its process
    comm: str
    ns: int             # time it ran while the thread waited


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
    """When the verdict speaks up: shares of the window, in percent."""
    ready: float = 5.0
    irq: float = 5.0
    stopped: float = 1.0


@dataclass
class StopSignal:
    """A stop signal sent to the target during the window."""
    sig: int
    name: str           # SIGSTOP, ...
    sender: int         # thread ID of the sender
    tgid: int
    comm: str
    count: int


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


# ---- Pure functions: arguments and triggers ---------------------------------

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


def seconds(text):
    """argparse type: a duration in seconds, >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("'{}' is not a number of seconds"
                                         .format(text))
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
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


def positive_seconds(text):
    """argparse type: a duration in seconds, > 0."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


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


# ---- Pure functions: BTF ----------------------------------------------------

BTF_KIND_INT, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 4, 5
BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST = 8, 9, 10
BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG, BTF_KIND_ENUM = 11, 18, 6
# Bytes that follow struct btf_type, per kind: fixed, and per vlen entry.
BTF_EXTRA_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
BTF_EXTRA_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
BTF_MODIFIERS = (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST,
                 BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG)


class BtfError(Exception):
    pass


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
    return TaskLayout(pid_offset=found["pid"][0] // 8,
                      tgid_offset=found["tgid"][0] // 8,
                      state_offset=state[0] // 8,
                      state_size=btf.size(state[1]),
                      on_cpu_offset=on_cpu[0] // 8 if on_cpu else None,
                      regs_nr_offset=regs_nr[0] // 8 if regs_nr else None,
                      regs_nr_size=btf.size(regs_nr[1]) if regs_nr else 8)


# ---- Pure functions: C source -----------------------------------------------

TOKEN = re.compile(r"@([A-Z_]+)@")


def render_template(template, values):
    """Replace every @TOKEN@ of template from values, in one pass."""
    missing = sorted(set(TOKEN.findall(template)) - set(values))
    assert not missing, "no value for template tokens: {}".format(missing)
    text = TOKEN.sub(lambda match: str(values[match.group(1)]), template)
    assert not TOKEN.search(text), "template token left in the C source"
    return text


def render_bpf_source(pid, layout, poll_nrs, page_count=1024,
                      max_threads=4096, triggers=(), restart_nr=-1,
                      histogram=False, event_min_ns=None,
                      skip_poll_events=False, stack_size=0,
                      upcall_keys=0):
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
    ovs_dp_upcall() return probe.
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
                       layout.regs_nr_size]}
    if not poll_nrs:
        raise ValueError("no poll() system call numbers")
    values = {
        "HEADERS": headers,
        "MONITOR_TGID": int(pid),
        "MAX_THREADS": int(max_threads),
        "MAX_SYS_KEYS": 16 * int(max_threads),
        "MAX_IRQ_KEYS": 4 * int(max_threads),
        "MAX_HOLDER_KEYS": 8 * int(max_threads),
        "HISTOGRAM": int(bool(histogram)),
        "RINGBUF_PAGES": round_up_pow2(int(page_count)),
        "POLL_TEST": " || ".join("(nr) == {}".format(int(nr))
                                 for nr in poll_nrs),
        "RESTART_NR": int(restart_nr),
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
        "UPCALL_PROBE": render_template(UPCALL_SOURCE, {
            "UPCALL_KEYS": int(upcall_keys)}) if upcall_keys else "",
    }
    values.update(offsets)
    return render_template(EBPF_SOURCE, values)


# ---- Pure functions: include tree for BCC without kernel headers -----------

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

# uname -m -> (kernel arch directory, multiarch triplet)
ARCHES = {"x86_64": ("x86", "x86_64-linux-gnu"),
          "aarch64": ("arm64", "aarch64-linux-gnu")}


def include_tree_files(machine, page_size=4096):
    """Generated files of the include tree, by path relative to its root.

    page_size is the kernel's (BCC sizes the ring buffer in pages; arm64
    kernels may use 16 or 64 KiB pages)."""
    if machine not in ARCHES:
        raise ValueError("no include tree recipe for {}".format(machine))
    if page_size < 4096 or page_size & (page_size - 1):
        raise ValueError("odd page size {}".format(page_size))
    arch = ARCHES[machine][0]
    return {
        "include/linux/kconfig.h": KCONFIG_H,
        "include/linux/log2.h": LOG2_H,
        # BCC brings its own bpf.h; the C library's may be older.
        "include/uapi/linux/bpf.h": "",
        "arch/{}/include/asm/page.h".format(arch): PAGE_H.format(
            shift=page_size.bit_length() - 1),
        "arch/{}/include/asm/ptrace.h".format(arch): PTRACE_H[arch],
    }


# ---- Pure functions: the report ---------------------------------------------

INDENT = " " * 28


def softirq_name(vec):
    if 0 <= vec < len(SOFTIRQ_NAMES):
        return SOFTIRQ_NAMES[vec]
    return "<unknown:{}>".format(vec)


def timestamp_line(message, now=None):
    """A header line: message, local time and UTC time."""
    now = now or datetime.datetime.now().astimezone()
    utc = now.astimezone(datetime.timezone.utc)
    return "{} @{} ({} UTC)".format(message,
                                    now.replace(tzinfo=None).isoformat(
                                        timespec="microseconds"),
                                    utc.strftime("%H:%M:%S"))


def _section(title):
    return "\n{:10} {:16} {}".format("", "", title)


def format_thread(stats, syscall_names, poll_nrs):
    """The report lines of one thread."""
    lines = ["{:10} {:16} {}".format(stats.tid, stats.name,
                                     "[SYSCALL STATISTICS]"),
             "{}{:20} {:>6}  {:>10}  {:>16}  {:>16}".format(
                 INDENT, "NAME", "NUMBER", "COUNT", "TOTAL ns", "MAX ns")]
    count = total = 0
    for nr, acc in sorted(stats.syscalls.items(),
                          key=lambda item: (-item[1].total, item[0])):
        lines.append("{}{:20.20} {:6}  {:10}  {:16,}  {:16,}".format(
            INDENT, syscall_names.get(nr, "<unknown:{}>".format(nr)), nr,
            acc.count, acc.total, acc.max))
        if nr not in poll_nrs:
            count += acc.count
            total += acc.total
    if count:
        lines.append("{}{:20.20} {:6}  {:10}  {:16,}".format(
            INDENT, "TOTAL( - poll):", "", count, total))

    if stats.poll:
        lines += [_section("[LONG POLL STATISTICS]"),
                  "{}{:10}  {:>16}  {:>16}  {:>16}".format(
                      INDENT, "COUNT", "AVERAGE ns", "MIN ns", "MAX ns"),
                  "{}{:10}  {:16,}  {:16,}  {:16,}".format(
                      INDENT, stats.poll.count, stats.poll.average,
                      stats.poll.min, stats.poll.max)]

    lines += [_section("[THREAD RUN STATISTICS]"),
              "{}{:10}  {:>16}  {:>16}  {:>16}".format(
                  INDENT, "SCHED_CNT", "TOTAL ns", "MIN ns", "MAX ns")]
    if stats.run:
        lines.append("{}{:10}  {:16,}  {:16,}  {:16,}".format(
            INDENT, stats.run.count, stats.run.total, stats.run.min,
            stats.run.max))

    lines += [_section("[THREAD READY STATISTICS]"),
              "{}{:10}  {:>16}  {:>16}".format(
                  INDENT, "SCHED_CNT", "TOTAL ns", "MAX ns")]
    if stats.ready:
        lines.append("{}{:10}  {:16,}  {:16,}".format(
            INDENT, stats.ready.count, stats.ready.total, stats.ready.max))

    if stats.lost:
        lines += textwrap.wrap(
            "NOTE: the kernel did not report {} switch{} of this thread; the "
            "run and ready periods around {} are left out.".format(
                stats.lost, "es" if stats.lost > 1 else "",
                "them" if stats.lost > 1 else "it"),
            width=105, initial_indent=INDENT, subsequent_indent=INDENT,
            break_on_hyphens=False)

    if stats.stopped:
        lines += [_section("[THREAD STOPPED STATISTICS]"),
                  "{}{:10}  {:>16}  {:>16}".format(
                      INDENT, "STOP_CNT", "TOTAL ns", "MAX ns"),
                  "{}{:10}  {:16,}  {:16,}".format(
                      INDENT, stats.stopped.count, stats.stopped.total,
                      stats.stopped.max)]

    if stats.hardirqs:
        lines += [_section("[HARD IRQ STATISTICS]"),
                  "{}{:20}  {:>10}  {:>16}  {:>16}".format(
                      INDENT, "NAME", "COUNT", "TOTAL ns", "MAX ns")]
        for name, acc in sorted(stats.hardirqs.items(),
                                key=lambda item: (-item[1].total, item[0])):
            lines.append("{}{:20.20}  {:10}  {:16,}  {:16,}".format(
                INDENT, name, acc.count, acc.total, acc.max))
        lines.append("{}{:20.20}  {:10}  {:16,}".format(
            INDENT, "TOTAL:", sum(a.count for a in stats.hardirqs.values()),
            sum(a.total for a in stats.hardirqs.values())))

    if stats.softirqs:
        lines += [_section("[SOFT IRQ STATISTICS]"),
                  "{}{:20} {:>7}  {:>10}  {:>16}  {:>16}".format(
                      INDENT, "NAME", "VECT_NR", "COUNT", "TOTAL ns",
                      "MAX ns")]
        for vec, acc in sorted(stats.softirqs.items(),
                               key=lambda item: (-item[1].total, item[0])):
            lines.append("{}{:20.20} {:>7}  {:10}  {:16,}  {:16,}".format(
                INDENT, softirq_name(vec), vec, acc.count, acc.total,
                acc.max))
        lines.append("{}{:20.20} {:7}  {:10}  {:16,}".format(
            INDENT, "TOTAL:", "",
            sum(a.count for a in stats.softirqs.values()),
            sum(a.total for a in stats.softirqs.values())))
    return lines


def format_report(threads, syscall_names, poll_nrs, quiet=(), budgets=None,
                  histogram=False):
    """The per-thread table, threads sorted by name then TID.

    quiet lists (tid, name, where) of threads alive at the end of the
    window that recorded nothing in it: blocked, or on a CPU, throughout;
    where says which ("in poll", "running") when known.  budgets (Budget
    by tid) adds each thread's [TIME BUDGET], histogram its histograms.
    """
    lines = ["{:10} {:16} {}".format("TID", "THREAD", "<RESOURCE SPECIFIC>"),
             "{:10} {:16} {}".format("-" * 10, "-" * 16, "-" * 76)]
    ordered = sorted(threads.values(), key=lambda t: (t.name, t.tid))
    for index, stats in enumerate(ordered):
        if index:
            lines.append("")
        lines += format_thread(stats, syscall_names, poll_nrs)
        if budgets and stats.tid in budgets:
            lines += format_budget(budgets[stats.tid])
        if histogram:
            lines += format_histograms(stats, syscall_names)
    if quiet:
        lines += [""] + wrap_items(
            "# No events from {} thread{} (blocked or on a CPU for the whole "
            "window):".format(len(quiet), "s" if len(quiet) > 1 else ""),
            ["{} ({})".format(name, ", ".join([str(tid)] + [where] * bool(
                where))) for tid, name, where in
             sorted(quiet, key=lambda item: (item[1], item[0]))])
    return lines


# ---- Pure functions: time budget, verdict and histograms as text ----------

def format_budget(budget, top=3):
    """The [TIME BUDGET] section of a thread: every part in ns and as a
    share of the window, the top system calls it slept in, and what was
    in flight when the window closed."""
    def row(label, ns):
        return "{}{:28.28} {:16,}  {:6.1f} %".format(
            INDENT, label, ns, budget.percent(ns))

    lines = [_section("[TIME BUDGET]"),
             "{}{:28} {:>16}  {:>8}".format(INDENT, "PART", "TOTAL ns",
                                            "SHARE"),
             row("on a CPU", budget.on_cpu),
             row("  in hard IRQs", budget.hardirq),
             row("  in soft IRQs", budget.softirq),
             row("waiting for a CPU", budget.ready),
             row("asleep in system calls", budget.blocked)]
    for item in budget.blocked_in[:top]:
        lines.append(row("  " + item.name, item.ns))
    rest = budget.blocked_in[top:]
    if rest:
        lines.append(row("  {} other call{}".format(
            len(rest), "s" if len(rest) > 1 else ""),
            sum(item.ns for item in rest)))
    lines += [row("stopped", budget.stopped), row("other", budget.other)]
    for item in budget.in_flight:
        lines.append("{}{} in flight {}{}".format(
            INDENT, item.name, _ms(item.ns),
            " (since before the window)" if item.before_window else ""))
    return lines


def log2_range(slot):
    """The values of a bpf_log2l() slot: [2^(slot-1), 2^slot - 1]."""
    if slot <= 0:
        return 0, 0
    return 1 << (slot - 1), (1 << slot) - 1


def format_log2_hist(title, hist, width=40):
    """A log2 histogram section: one row per slot from the lowest to the
    highest used one."""
    lines = [_section("[{}]".format(title)),
             "{}{:>33}  {:>10}  {}".format(INDENT, "ns range", "COUNT",
                                           "DISTRIBUTION")]
    if not hist:
        return lines
    peak = max(hist.values())
    for slot in range(min(hist), max(hist) + 1):
        low, high = log2_range(slot)
        count = hist.get(slot, 0)
        lines.append("{}{:>15,} -> {:<15,}  {:10}  |{:{width}}|".format(
            INDENT, low, high, count, "*" * (count * width // peak),
            width=width))
    return lines


def format_histograms(stats, syscall_names):
    lines = []
    for nr, hist in sorted(stats.sys_hist.items()):
        lines += format_log2_hist("SYSCALL HISTOGRAM: {}".format(
            syscall_names.get(nr, "<unknown:{}>".format(nr))), hist)
    if stats.ready_hist:
        lines += format_log2_hist("READY HISTOGRAM", stats.ready_hist)
    return lines


THRESHOLD_OPTIONS = "--ready-threshold, --irq-threshold, --stopped-threshold"


def format_verdict(verdict, top=5):
    """The # VERDICT section: the threads with the most kernel-caused delay,
    then one paragraph per finding, or a line saying there is none."""
    def para(text, first="# "):
        # Keep a number and its unit on one line.
        lines = textwrap.wrap(text.replace(" ms", "\0ms").replace(" %", "\0%"),
                              width=79, initial_indent=first,
                              subsequent_indent="#   ",
                              break_on_hyphens=False, break_long_words=False)
        return [line.replace("\0", " ") for line in lines]

    limits = verdict.thresholds
    lines = ["", "# VERDICT"]
    # Threads whose share would print as 0.0 % are left out of the text.
    shown = [r for r in verdict.ranking if r.percent >= 0.05]
    if shown:
        lines += para("Kernel-caused delay (waiting for a CPU, interrupts, "
                      "stopped) as a share of the {} window: {}{}.".format(
                          _ms(verdict.window), ", ".join(
                              "{} {:.1f} %".format(_task(r.name, r.tid),
                                                   r.percent)
                              for r in shown[:top]),
                          ", ..." if len(shown) > top else ""))
    stops = [f for f in verdict.findings if f.kind == "stopped"]
    for finding in verdict.findings:
        if finding.kind != "stopped" or len(stops) == 1:
            lines += para("{} Next: {}.".format(
                finding.text, finding.next_step), "# - ")
        elif finding is stops[0]:
            # A process is usually stopped as a whole: one paragraph.
            lines += para("{} threads were stopped{} (threshold {:g} % of "
                          "the window): {}. Next: {}.".format(
                              len(stops), stop_cause(finding.signals),
                              finding.threshold,
                              ", ".join("{} {} ({:.1f} %)".format(
                                  _task(f.name, f.tid), _ms(f.ns), f.percent)
                                  for f in stops),
                              finding.next_step), "# - ")
    if not verdict.findings:
        lines += para("The kernel shows no significant delay for this "
                      "window: no thread waited for a CPU for {:g} %, spent "
                      "{:g} % in interrupts or was stopped for {:g} % of "
                      "it.".format(limits.ready, limits.irq,
                                   limits.stopped))
    lines += para("Thresholds ({}): waiting for a CPU {:g} %, interrupts "
                  "{:g} %, stopped {:g} % of the window.".format(
                      THRESHOLD_OPTIONS, limits.ready, limits.irq,
                      limits.stopped))
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
            "{} event was dropped", "{} events were dropped",
            ": the ring buffer was full; increase --buffer-page-count."),
        Counter.TRIGGER_MISSED: (
            "{} start trigger was missed", "{} start triggers were missed",
            ": {they} fired while the previous window was being reported."),
        Counter.SCHED_LOST: (
            "{} context switch was not reported",
            "{} context switches were not reported",
            " by the kernel (a thread switched out without being seen "
            "switching in): the periods around {them} are left out."),
        Counter.STACK_LOST: (
            "{} stack trace was lost", "{} stack traces were lost",
            " (the stack map was full, or two stacks hashed to the same "
            "slot); increase --stack-trace-size."),
        Counter.UPCALL_FULL: (
            "{} upcall was not counted", "{} upcalls were not counted",
            ": the upcall table was full (unexpected: it has room for "
            "every CPU and error)."),
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
            text = ("{} update{} of the {} table failed (table full): some "
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
    index = 0
    while index < len(frames) and TRACING_FRAME.match(frames[index]):
        index += 1
    return frames[index:]


def errno_name(number):
    return errno.errorcode.get(number, "errno {}".format(number))


def format_syscall_events(log, syscall_names):
    """The # SYSCALL EVENTS table of one window (EventLog), each event
    followed by its kernel and user stacks when they were recorded."""
    frame_indent = " " * 10
    lines = ["", "", "# SYSCALL EVENTS:",
             "  {:>19} {:>19} {:>10} {:16} {:>10}  {}".format(
                 "ENTRY (ns)", "EXIT (ns)", "TID", "COMM", "DELTA (us)",
                 "SYSCALL"),
             "  {} {} {} {} {}  {}".format("-" * 19, "-" * 19, "-" * 10,
                                           "-" * 16, "-" * 10, "-" * 16)]
    for event in log.events:
        lines.append("  {:19} {:19} {:10} {:16.16} {:10,}  {}".format(
            event.entry, event.exit, event.tid,
            log.names.get(event.tid, "?"), (event.exit - event.entry) // 1000,
            syscall_names.get(event.nr, "<unknown:{}>".format(event.nr))))
        if not log.stacks:
            continue
        for kind, stack_id, table in (
                ("kernel", event.kernel_stack, log.kernel_stacks),
                ("user", event.user_stack, log.user_stacks)):
            if stack_id < 0:
                lines.append("{}[{} stack lost: {}]".format(
                    frame_indent, kind, errno_name(-stack_id)))
            else:
                lines += [frame_indent + frame
                          for frame in table.get(stack_id, ())]
    if log.more:
        lines += textwrap.wrap(
            "{:,} more event{} not shown: only the first {:,} of a window "
            "are kept; raise the DURATION_NS of --syscall-events to see "
            "fewer, longer calls.".format(
                log.more, "s" if log.more > 1 else "", MAX_SHOWN_EVENTS),
            width=79, initial_indent="# ", subsequent_indent="# ",
            break_on_hyphens=False)
    return lines


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


def format_upcalls(stats):
    """The # UPCALL STATISTICS section of one window (UpcallStats)."""
    lines = ["", "# UPCALL STATISTICS (ovs_dp_upcall() calls):",
             "  {:24} {:>14}  {}".format("RESULT", "COUNT",
                                         "PER CPU (CPU: COUNT)"),
             "  {} {}  {}".format("-" * 24, "-" * 14, "-" * 36)]
    rows = [("total", stats.total, stats.total_per_cpu),
            ("successful", stats.successful, stats.successful_per_cpu),
            ("failed", stats.failed, stats.failed_per_cpu)]
    for number, count in sorted(stats.errors.items(),
                                key=lambda item: (-item[1], item[0])):
        rows.append(("  {} ({})".format(errno_name(number), number), count,
                     stats.errors_per_cpu.get(number, {})))
    for label, count, per_cpu in rows:
        head = "  {:24} {:14,}".format(label, count)
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
        if name in irqs:    # two lines sharing a handler name
            old = irqs[name]
            acc = Acc(old.count + acc.count, old.total + acc.total,
                      min(old.min, acc.min), max(old.max, acc.max))
        irqs[name] = acc
    for (tid, vec), acc in rows.get("softirq_stats", ()):
        thread(tid).softirqs[vec] = acc
    return threads


def split_sched_state(entries):
    """Split the scheduler state entries [(tid, value)] into the rows of
    collect_threads() (run_stats, ready_stats, stop_stats), the open
    period starts of add_open_periods() and the switches lost, by tid.

    A value is (run_start, ready_start, stop_start, switched, lost, run,
    ready, stop), the last three (count, total, min, max) tuples.
    """
    rows = {table: [((tid,), Acc(*value[index])) for tid, value in entries
                    if value[index][0]]
            for table, index in (("run_stats", 5), ("ready_stats", 6),
                                 ("stop_stats", 7))}
    starts = {"run": {}, "ready": {}, "stopped": {}}
    lost = {}
    for tid, value in entries:
        for attr, start in zip(("run", "ready", "stopped"), value[:3]):
            if start:
                starts[attr][tid] = start
        if value[4]:
            lost[tid] = value[4]
    return rows, starts, lost


def add_pending_calls(stat_rows, entries, window):
    """The sys_stats rows [((tid, nr), Acc)] with the sums the threads'
    system call entries [(tid, value)] of this window still hold: value[0]
    is the window, value[6] the slots, (nr, pad, (count, total, min,
    max)) each."""
    merged = dict(stat_rows)
    for tid, value in entries:
        if value[0] != window:
            continue
        for nr, _, (count, total, low, high) in value[6]:
            if not count:
                continue
            old = merged.get((tid, nr))
            merged[(tid, nr)] = Acc(count, total, low, high) if old is None \
                else Acc(old.count + count, old.total + total,
                         min(old.min, low), max(old.max, high))
    return list(merged.items())


def budget_state_rows(entries):
    """The budget_state rows of add_budget_rows(), (tid,) -> (sleep start,
    sleep nr, unknown ns, stop_ready ns, call done), from the scheduler
    state entries [(tid, value)] whose time budget is in use."""
    return [((tid,), value[8][:5]) for tid, value in entries
            if value[8][5]]


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


@dataclass(frozen=True)
class Target:
    """The monitored process, as identified when the run starts."""
    pid: int
    name: str = "?"
    exe: Optional[str] = None
    start_time: Optional[int] = None    # clock ticks after boot


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


# ---- Pure functions: time budget and verdict --------------------------------

STOP_SIGNALS = {19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU",
                18: "SIGCONT"}
SIGCONT = 18
NR_UNKNOWN = -2     # budget_t.sleep_nr: a call the kernel side cannot name
HIST_READY = 0xffffffff     # hist_key_t.nr of the waits for a CPU


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


def syscall_label(nr, names):
    if nr == NR_OUTSIDE:
        return "(outside system calls)"
    return names.get(nr, "<unknown:{}>".format(nr))


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
                         for nr, ns in sorted(blocked.items(),
                                              key=lambda item: (-item[1],
                                                                item[0]))
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


def _ms(ns):
    return "{:,.1f} ms".format(ns / 1e6)


def _task(comm, pid):
    return "{} ({})".format(comm or "?", pid)


def cpu_finding(budget, stats, threshold):
    holders = sorted(stats.holders.values() if stats else (),
                     key=lambda h: (-h.ns, h.pid))
    unseen = budget.ready - sum(h.ns for h in holders)
    named = ["{} {}".format("idle" if h.pid == 0 else _task(h.comm, h.pid),
                            _ms(h.ns)) for h in holders[:4]]
    if len(holders) > 4:
        named.append("{} other task{} {}".format(
            len(holders) - 4, "s" if len(holders) > 5 else "",
            _ms(sum(h.ns for h in holders[4:]))))
    if unseen > budget.ready // 10:
        named.append("not recorded {}".format(_ms(unseen)))
    text = ("{} waited {} for a CPU ({:.1f} % of the window, threshold "
            "{:g} %): CPU contention".format(
                _task(budget.name, budget.tid), _ms(budget.ready),
                budget.percent(budget.ready), threshold))
    if named:
        text += "; meanwhile its CPU ran " + ", ".join(named)
    return Finding(
        tid=budget.tid, name=budget.name, kind="cpu", ns=budget.ready,
        percent=budget.percent(budget.ready), threshold=threshold,
        text=text + ".", holders=holders,
        next_step="what else runs on this thread's CPUs and why: CPU "
                  "affinity and isolation, cgroup CPU limits, priorities "
                  "(top -H, perf sched latency)")


def irq_finding(budget, stats, threshold):
    sources = [("hard IRQ " + name, acc.total)
               for name, acc in stats.hardirqs.items()]
    sources += [("soft IRQ " + softirq_name(vec), acc.total)
                for vec, acc in stats.softirqs.items()]
    sources.sort(key=lambda item: (-item[1], item[0]))
    ns = budget.hardirq + budget.softirq
    text = ("{} lost {} to interrupts ({:.1f} % of the window, threshold "
            "{:g} %): interrupt load, most of it {}.".format(
                _task(budget.name, budget.tid), _ms(ns), budget.percent(ns),
                threshold, ", ".join("{} {}".format(name, _ms(total))
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
                               _ms(budget.stopped),
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
                   states=None, signals=(), thresholds=None):
    """(Budget by tid, Verdict) of one window [start, end]; see
    window_budgets() and make_verdict()."""
    signals = list(signals)
    budgets = window_budgets(threads, quiet, start, end, names, current,
                             states, any(sig.sig == SIGCONT
                                         for sig in signals))
    return budgets, make_verdict(budgets, threads,
                                 thresholds or Thresholds(),
                                 [sig for sig in signals
                                  if sig.sig != SIGCONT])


def make_verdict(budgets, threads, thresholds, signals=()):
    """Rank threads by kernel-caused delay and state what crosses the
    thresholds.  budgets and threads are by tid; signals lists the
    StopSignal of the window."""
    window = max((b.window for b in budgets.values()), default=0)
    verdict = Verdict(window=window, thresholds=thresholds)
    ordered = sorted(budgets.values(),
                     key=lambda b: (-b.percent(b.kernel), b.name, b.tid))
    verdict.ranking = [Ranked(tid=b.tid, name=b.name, kernel=b.kernel,
                              percent=b.percent(b.kernel))
                       for b in ordered if b.kernel > 0]
    for budget in ordered:
        stats = threads.get(budget.tid)
        if budget.ready and budget.percent(budget.ready) >= thresholds.ready:
            verdict.findings.append(cpu_finding(budget, stats,
                                                thresholds.ready))
        irq = budget.hardirq + budget.softirq
        if irq and stats and budget.percent(irq) >= thresholds.irq:
            verdict.findings.append(irq_finding(budget, stats,
                                                thresholds.irq))
        if budget.stopped and \
                budget.percent(budget.stopped) >= thresholds.stopped:
            verdict.findings.append(stopped_finding(
                budget, [sig for sig in signals], thresholds.stopped))
    return verdict


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


# ---- Pure functions: report header and JSON ---------------------------------

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
        elif ord(char) < 0x100:
            out.append("\\x{:02x}".format(ord(char)))
        elif 0xdc80 <= ord(char) <= 0xdcff:     # a byte of invalid UTF-8
            out.append("\\x{:02x}".format(ord(char) - 0xdc00))
        else:
            out.append("\\u{:04x}".format(ord(char)))
    return "".join(out)


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
    lines = [
        "# kernel_delay {}: {}".format(
            header.tool_version,
            " ".join(shlex.quote(printable(arg)) for arg in header.command)),
        "# Host {}: Linux {} ({}), {} CPU{}, load average {}".format(
            printable(header.host), printable(header.kernel),
            header.machine, header.cpus, "s" if header.cpus != 1 else "",
            " ".join("{:.2f}".format(load) for load in header.load)),
        "# Process {}, PID {}{}".format(
            header.name, header.pid,
            ": " + printable(header.exe) if header.exe else "")]
    if header.started is not None:
        lines.append(timestamp_line("# Process started", header.started))
    if header.version is not None:
        lines.append("# Version: " + printable(header.version))
    elif header.version_error is not None:
        lines.append("# Version: unknown ({})".format(
            printable(header.version_error)))
    return lines


# Version of the JSON documents (--format json).  Adding a field keeps it;
# removing or changing the meaning of one increases it.
SCHEMA_VERSION = 1


def by_total(mapping):
    """Items of {key: Acc} in report order: largest total first."""
    return sorted(mapping.items(), key=lambda item: (-item[1].total, item[0]))


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
    syscalls = []
    for nr, acc in by_total(stats.syscalls):
        syscalls.append(dict({"nr": nr, "name": syscall_names.get(nr),
                              "poll": nr in poll_nrs}, **acc_json(acc)))
    return {
        "tid": stats.tid,
        "name": stats.name,
        "syscalls": syscalls,
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
                              nr=None if item.nr == NR_OUTSIDE else item.nr)
                         for item in budget.blocked_in]
    doc["in_flight"] = [{"nr": item.nr, "name": item.name, "ns": item.ns,
                         "before_window": item.before_window}
                        for item in budget.in_flight]
    return doc


def histogram_json(hist):
    """The rows of a log2 histogram, as the text shows them."""
    if not hist:
        return []
    rows = []
    for slot in range(min(hist), max(hist) + 1):
        low, high = log2_range(slot)
        rows.append({"low_ns": low, "high_ns": high,
                     "count": hist.get(slot, 0)})
    return rows


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
                       "stopped_percent": limits.stopped},
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
                   for number, count in sorted(
                       stats.errors.items(),
                       key=lambda item: (-item[1], item[0]))],
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
            "histogram": bool(getattr(args, "histogram", False)),
            "syscall_events_ns": getattr(args, "syscall_events", None),
            "skip_syscall_poll_events": bool(getattr(
                args, "skip_syscall_poll_events", False)),
            "stack_trace_size": getattr(args, "stack_trace_size", 0)}


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
                    notes=()):
    """The JSON document of one reported window."""
    doc = document("sample", header, options, notes)
    ordered = sorted(sample.threads.values(), key=lambda t: (t.name, t.tid))
    doc.update({
        "sample": sample.number,
        "window": window_json(sample.window),
        "threads": [thread_json(stats, syscall_names, poll_nrs,
                                sample.budgets.get(stats.tid),
                                options.get("histogram"))
                    for stats in ordered],
        "quiet_threads": [{"tid": tid, "name": name, "where": where or None,
                           "budget": budget_json(sample.budgets.get(tid))}
                          for tid, name, where in
                          sorted(sample.quiet,
                                 key=lambda item: (item[1], item[0]))],
        "verdict": verdict_json(sample.verdict),
        "syscall_events": events_json(sample.events, syscall_names),
        "upcalls": upcalls_json(sample.upcalls),
        "losses": losses_json(sample.losses),
        "warnings": warning_texts(sample.losses, options["sample_count"]),
    })
    return doc


def skipped_document(window, header, options, notes=()):
    """The JSON document of a window shorter than --trigger-delta."""
    doc = document("skipped", header, options, notes)
    doc["window"] = window_json(window)
    return doc


def end_document(header, options, counters, samples, skipped, end,
                 notes=()):
    """The last document of a run: how it ended, and what was lost."""
    doc = document("end", header, options, notes)
    doc.update({"end": end, "samples": samples, "skipped": skipped,
                "losses": losses_json(counters),
                "warnings": warning_texts(counters, options["sample_count"])})
    return doc


def _object(properties, description=None, nullable=False):
    """A JSON Schema object with exactly these properties, all required."""
    schema = {"type": ["object", "null"] if nullable else "object",
              "properties": properties,
              "required": sorted(properties),
              "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


def _json_schema():
    """The JSON Schema (draft-07) of the --format json documents."""
    def integer(description, nullable=False):
        return {"type": ["integer", "null"] if nullable else "integer",
                "minimum": 0, "description": description}

    def text(description, nullable=False):
        return {"type": ["string", "null"] if nullable else "string",
                "description": description}

    def time_of(description):
        return {"type": ["string", "null"], "format": "date-time",
                "description": description + " (ISO 8601, local time with "
                                             "its UTC offset)"}

    def acc(what, average=False):
        properties = {"count": integer("number of " + what),
                      "total_ns": integer("their total length"),
                      "min_ns": integer("the shortest"),
                      "max_ns": integer("the longest")}
        if average:
            properties["average_ns"] = integer("total_ns / count, rounded "
                                               "down")
        return _object(properties, what + "; null when there were none",
                       nullable=True)

    def total(what):
        return _object({"count": integer("number of " + what),
                        "total_ns": integer("their total length")},
                       "the TOTAL line of the section (" + what + ")")

    def entries(what, keys):
        properties = dict(keys)
        properties.update({"count": integer("number of " + what),
                           "total_ns": integer("their total length"),
                           "min_ns": integer("the shortest"),
                           "max_ns": integer("the longest")})
        return {"type": "array", "items": _object(properties),
                "description": what + ", largest total_ns first"}

    def number(description):
        return {"type": "number", "description": description}

    def part(description):
        return _object({"ns": {"type": "integer", "description": "ns"},
                        "percent": number("share of the window")},
                       description)

    budget = _object({
        "window_ns": integer("length of the window"),
        "quiet": {"type": "boolean",
                  "description": "no events: the thread was in one state "
                                 "(the one /proc showed at the end) for the "
                                 "whole window"},
        "on_cpu": part("on a CPU, interrupts included"),
        "hardirq": part("in hard interrupts (part of on_cpu)"),
        "softirq": part("in soft interrupts (part of on_cpu)"),
        "ready": part("waiting for a CPU"),
        "blocked": part("asleep in system calls (or outside them)"),
        "stopped": part("stopped"),
        "other": part("what no probe accounts for; on_cpu + ready + "
                      "blocked + stopped + other = window_ns"),
        "kernel": part("kernel-caused delay: ready + hardirq + softirq + "
                       "stopped"),
        "blocked_in": {
            "type": "array", "description": "where blocked went, largest "
                                            "first",
            "items": _object({
                "nr": integer("system call number; null: asleep outside "
                              "system calls", nullable=True),
                "name": text("its name"),
                "ns": integer("asleep in it"),
                "percent": number("share of the window")})},
        "in_flight": {
            "type": "array", "description": "system calls still in "
                                            "progress when the window "
                                            "closed",
            "items": _object({
                "nr": integer("system call number"),
                "name": text("its name"),
                "ns": integer("the part inside the window"),
                "before_window": {"type": "boolean",
                                  "description": "entered before the "
                                                 "window opened"}})},
    }, "the thread's time budget ([TIME BUDGET])", nullable=True)

    slots = {"type": "array",
             "description": "log2 slots from the lowest to the highest "
                            "used one",
             "items": _object({"low_ns": integer("slot's lowest value"),
                               "high_ns": integer("its highest value"),
                               "count": integer("values in it")})}
    histograms = _object({
        "syscalls": {"type": "array", "items": _object({
            "nr": integer("system call number"),
            "name": text("its name, null when unknown", nullable=True),
            "slots": slots})},
        "ready": slots,
    }, "--histogram: durations of system calls and of waits for a CPU; "
       "null without --histogram", nullable=True)

    finding = _object({
        "tid": integer("thread ID"),
        "name": text("thread name"),
        "kind": {"enum": ["cpu", "irq", "stopped"],
                 "description": "CPU contention, interrupt load, or "
                                "stopped"},
        "ns": integer("the delay found"),
        "percent": number("its share of the window"),
        "threshold_percent": number("the threshold it crossed"),
        "text": text("the finding in plain words"),
        "next_step": text("what to look at next"),
        "holders": {"type": "array", "description": "cpu: tasks that ran "
                                                    "on the CPU while the "
                                                    "thread waited",
                    "items": _object({
                        "pid": integer("thread ID (0: idle)"),
                        "tgid": integer("its process"),
                        "comm": text("its name"),
                        "ns": integer("how long it ran meanwhile")})},
        "sources": {"type": "array", "description": "irq: interrupts by "
                                                    "total time",
                    "items": _object({"name": text("hard or soft IRQ"),
                                      "ns": integer("time in it")})},
        "signals": {"type": "array", "description": "stopped: stop signals "
                                                    "sent in the window",
                    "items": _object({
                        "signal": integer("signal number"),
                        "name": text("signal name"),
                        "sender": integer("thread ID of the sender"),
                        "tgid": integer("its process"),
                        "comm": text("its name"),
                        "count": integer("signals sent")})},
    })
    verdict = _object({
        "window_ns": integer("length of the window"),
        "thresholds": _object({
            "ready_percent": number("--ready-threshold"),
            "irq_percent": number("--irq-threshold"),
            "stopped_percent": number("--stopped-threshold")}),
        "ranking": {"type": "array",
                    "description": "threads by kernel-caused delay, "
                                   "largest share first",
                    "items": _object({
                        "tid": integer("thread ID"),
                        "name": text("thread name"),
                        "kernel_ns": integer("kernel-caused delay"),
                        "percent": number("its share of the window")})},
        "findings": {"type": "array", "items": finding,
                     "description": "one per threshold crossed; empty: "
                                    "the kernel shows no significant "
                                    "delay"},
    }, "the # VERDICT section", nullable=True)

    def stack(which):
        return {"type": ["array", "null"], "items": {"type": "string"},
                "description": (which + " stack, innermost frame first; "
                                "null when lost or not recorded")}

    per_cpu = {"type": "array",
               "items": _object({"cpu": integer("CPU number"),
                                 "count": integer("upcalls on it")}),
               "description": "CPUs with a count, in CPU order"}
    event = _object({
        "entry_ns": integer("CLOCK_MONOTONIC entry"),
        "exit_ns": integer("CLOCK_MONOTONIC exit"),
        "duration_ns": integer("exit_ns - entry_ns"),
        "tid": integer("thread ID"),
        "name": text("thread name"),
        "nr": integer("system call number"),
        "syscall": text("its name, null when unknown", nullable=True),
        "kernel_stack": stack("kernel"),
        "kernel_stack_lost": text("why the kernel stack was lost (an "
                                  "errno name)", nullable=True),
        "user_stack": stack("user"),
        "user_stack_lost": text("why the user stack was lost",
                                nullable=True)})
    syscall_events = _object({
        "events": {"type": "array", "items": event,
                   "description": "in the order they ended"},
        "more": integer("events after the first ones, counted only"),
        "stacks": {"type": "boolean",
                   "description": "stacks were recorded"},
    }, "--syscall-events; null without it", nullable=True)
    upcalls = _object({
        "total": integer("ovs_dp_upcall() calls"),
        "successful": integer("that returned 0"),
        "failed": integer("that returned an error"),
        "total_per_cpu": per_cpu,
        "successful_per_cpu": per_cpu,
        "failed_per_cpu": per_cpu,
        "errors": {"type": "array", "items": _object({
            "errno": integer("error number"),
            "name": text("its name"),
            "count": integer("calls that returned it"),
            "per_cpu": per_cpu}),
            "description": "most frequent first"},
    }, "# UPCALL STATISTICS of the OVS kernel datapath; null when not "
       "collected", nullable=True)

    thread = _object({
        "tid": integer("thread ID"),
        "name": text("thread name (comm)"),
        "syscalls": entries("system calls", {
            "nr": integer("system call number"),
            "name": text("its name, null when unknown", nullable=True),
            "poll": {"type": "boolean",
                     "description": "poll() or ppoll(): left out of "
                                    "syscall_total"}}),
        "syscall_total": total("system calls but poll() and ppoll(): "
                               "TOTAL( - poll)"),
        "poll_gaps": acc("gaps between the end of a poll() and the start "
                         "of the next (LONG POLL STATISTICS)", average=True),
        "run": acc("periods on a CPU (THREAD RUN STATISTICS)"),
        "ready": acc("periods waiting for a CPU (THREAD READY STATISTICS)"),
        "stopped": acc("stops by a signal or ptrace (THREAD STOPPED "
                       "STATISTICS)"),
        "unreported_switches": integer("context switches the kernel did "
                                       "not report: run and ready periods "
                                       "around them are left out"),
        "hardirqs": entries("hard interrupts, by handler name", {
            "name": text("handler name")}),
        "hardirq_total": total("hard interrupts"),
        "softirqs": entries("soft interrupts, by vector", {
            "vector": integer("vector number"),
            "name": text("vector name")}),
        "softirq_total": total("soft interrupts"),
        "budget": budget,
        "histograms": histograms,
    }, "one thread that recorded something in the window")

    window = _object({
        "start_ns": integer("CLOCK_MONOTONIC instant the window opened",
                            nullable=True),
        "end_ns": integer("CLOCK_MONOTONIC instant it closed",
                          nullable=True),
        "duration_ns": integer("end_ns - start_ns", nullable=True),
        "start_time": time_of("wall clock when it opened"),
        "end_time": time_of("wall clock when it closed"),
        "dump_time": time_of("wall clock when it was reported"),
        "end": {"enum": ["time", "trigger", "interrupted", "process exited"],
                "description": "what closed the window"},
        "start_trigger_ns": integer("CLOCK_MONOTONIC instant of the start "
                                    "trigger", nullable=True),
        "stop_trigger_ns": integer("CLOCK_MONOTONIC instant of the stop "
                                   "trigger", nullable=True),
        "trigger_delta_ns": integer("stop_trigger_ns - start_trigger_ns, "
                                    "with both triggers", nullable=True),
    }, "the window")

    common = {
        "schema_version": {"const": SCHEMA_VERSION,
                           "description": "version of this schema"},
        "tool": _object({
            "name": {"const": "kernel_delay"},
            "version": text("version of kernel_delay.py"),
            "command": {"type": "array", "items": {"type": "string"},
                        "description": "the command line"}}),
        "host": _object({
            "name": text("host name"),
            "kernel": text("kernel release (uname -r)"),
            "machine": text("hardware name (uname -m)"),
            "cpus": integer("number of CPUs"),
            "load_average": {"type": "array", "items": {"type": "number"},
                             "minItems": 3, "maxItems": 3,
                             "description": "1, 5 and 15 minute load "
                                            "averages when the run "
                                            "started"}}),
        "target": _object({
            "pid": integer("process ID"),
            "name": text("process name as ps -e shows it, escaped like "
                         "thread names"),
            "exe": text("its executable", nullable=True),
            "start_time": time_of("when the process started"),
            "version": text("--version of an OVS or OVN daemon",
                            nullable=True),
            "version_error": text("why version is missing, when it was "
                                  "looked for", nullable=True)}),
        "options": _object({
            "sample_time_s": {"type": "number"},
            "sample_count": integer("--sample-count"),
            "sample_interval_s": {"type": "number"},
            "start_trigger": text("--start-trigger", nullable=True),
            "stop_trigger": text("--stop-trigger", nullable=True),
            "trigger_delta_ns": integer("--trigger-delta"),
            "histogram": {"type": "boolean",
                          "description": "--histogram"},
            "syscall_events_ns": integer("--syscall-events DURATION_NS; "
                                         "null without it", nullable=True),
            "skip_syscall_poll_events": {
                "type": "boolean",
                "description": "--skip-syscall-poll-events"},
            "stack_trace_size": integer("--stack-trace-size")}),
        "notes": {"type": "array", "items": {"type": "string"},
                  "description": "notes about the run, such as why upcall "
                                 "statistics are skipped"},
    }
    losses = {"type": "object",
              "additionalProperties": {"type": "integer", "minimum": 0},
              "propertyNames": {"enum": [counter.name.lower()
                                         for counter in Counter]},
              "description": "loss counters (the end-of-run warnings)"}

    def doc(kind, description, **properties):
        merged = dict(common)
        merged["type"] = {"const": kind}
        merged.update(properties)
        return _object(merged, description)

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "urn:kernel_delay:schema:{}".format(SCHEMA_VERSION),
        "title": "kernel_delay.py --format json",
        "description": "One document per line (JSON Lines): a 'sample' for "
                       "each reported window, a 'skipped' for each window "
                       "shorter than --trigger-delta, and an 'end' last.",
        "oneOf": [
            doc("sample", "one reported window",
                sample=integer("1 for the first reported window"),
                window=window,
                threads={"type": "array", "items": thread,
                         "description": "sorted by name, then tid"},
                quiet_threads={
                    "type": "array",
                    "items": _object({
                        "tid": integer("thread ID"),
                        "name": text("thread name"),
                        "where": text("'in NAME' (blocked in that system "
                                      "call) or 'running', when known",
                                      nullable=True),
                        "budget": budget}),
                    "description": "live threads that recorded nothing: "
                                   "blocked or on a CPU for the whole "
                                   "window"},
                verdict=verdict,
                syscall_events=syscall_events,
                upcalls=upcalls,
                losses=dict(losses, description="loss counters that grew "
                                                "since the previous report "
                                                "(this window and the pause "
                                                "before it)"),
                warnings={"type": "array", "items": {"type": "string"},
                          "description": "warnings for the losses of this "
                                         "window, one sentence each"}),
            doc("skipped", "a window shorter than --trigger-delta",
                window=window),
            doc("end", "the end of the run",
                end={"enum": ["completed", "interrupted", "process exited"],
                     "description": "how the run ended"},
                samples=integer("windows reported"),
                skipped=integer("windows skipped"),
                losses=dict(losses, description="loss counters of the "
                                                "whole run"),
                warnings={"type": "array", "items": {"type": "string"},
                          "description": "the end-of-run warnings, one "
                                         "sentence each"}),
        ],
    }


JSON_SCHEMA = _json_schema()


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


# ---- I/O adapters: /proc, tracefs, BTF, headers -----------------------------

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


# Where include trees go: a memory file system first, as a disk file
# system under load can take half a second for the tree's 600 symlinks.
SHM_DIR = "/dev/shm"


def tree_parents():
    """The directories an include tree may be made in, best first."""
    return [path for path in (SHM_DIR, tempfile.gettempdir())
            if os.path.isdir(path)]


def remove_stale_trees():
    """Remove include trees left by runs that were killed (SIGKILL)."""
    for tmp in tree_parents():
        try:
            names = os.listdir(tmp)
        except OSError:
            continue
        for name in names:
            match = re.match(r"kernel_delay\.(\d+)\.", name)
            if match and not os.path.exists("/proc/" + match.group(1)):
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def make_include_tree(root, machine=None):
    """Fill the empty directory root with an include tree for BCC."""
    machine = machine or platform.machine()
    files = include_tree_files(machine, os.sysconf("SC_PAGE_SIZE"))
    arch, triplet = ARCHES[machine]
    asm = next((path for path in ("/usr/include/{}/asm".format(triplet),
                                  "/usr/include/asm")
                if os.path.isdir(path)), None)
    if not os.path.isdir("/usr/include/linux") or asm is None:
        raise Fatal("no kernel headers for {} and no C library kernel "
                    "headers to build a stand-in; install linux-libc-dev "
                    "(Debian) or kernel-headers (Fedora)".format(
                        platform.release()), os.EX_UNAVAILABLE)
    uapi = os.path.join(root, "include/uapi")
    os.makedirs(os.path.join(uapi, "linux"))
    # The C library's uapi headers, one symlink per entry, so that the
    # generated files can sit beside them.
    for entry in os.listdir("/usr/include/linux"):
        os.symlink(os.path.join("/usr/include/linux", entry),
                   os.path.join(uapi, "linux", entry))
    os.symlink("/usr/include/asm-generic", os.path.join(uapi, "asm-generic"))
    arch_uapi = os.path.join(root, "arch", arch, "include", "uapi")
    os.makedirs(arch_uapi)
    os.symlink(asm, os.path.join(arch_uapi, "asm"))
    for path, text in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if os.path.lexists(full):
            os.unlink(full)
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
            return tempfile.mkdtemp(prefix=prefix, dir=parent)
        except OSError:
            pass        # read-only or full: the next one
    return tempfile.mkdtemp(prefix=prefix)


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
        """The last line worth showing of what was captured."""
        lines = [line.strip() for line in self.text.splitlines()
                 if line.strip() and not line.startswith(("In file",
                                                          "    "))]
        return lines[-1] if lines else default


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


def kernel_function_exists(name):
    """True if /proc/kallsyms lists a function of that name."""
    try:
        with open("/proc/kallsyms") as kallsyms:
            return any(len(fields) >= 3 and fields[2] == name
                       for fields in map(str.split, kallsyms))
    except OSError:
        return False


def upcall_problem():
    """Why upcall statistics cannot be collected here, or None."""
    kprobes = kprobes_supported(tracefs_path())
    module = os.path.isdir("/sys/module/" + OVS_MODULE)
    return upcall_skip_reason(
        kprobes, module,
        kprobes and module and kernel_function_exists(UPCALL_FUNCTION))


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


def proc_stat(pid):
    """(state letter, start time in clock ticks after boot) of process
    pid from /proc/PID/stat, or None when there is no such process."""
    try:
        with open("/proc/{}/stat".format(pid), "rb") as stat:
            # The name in parentheses may hold spaces and ')'.
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[0].decode("ascii", "replace"), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid, start_time=None):
    """False once process pid has exited, also while it is a zombie, and
    when start_time is given, once the PID belongs to another process."""
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start_time is None or stat[1] == start_time


def read_name(path):
    """A comm file (process or thread name) as printable text, or None."""
    try:
        with open(path, "rb") as comm:
            return printable(comm.read().rstrip(b"\n"))
    except OSError:
        return None


def thread_name(pid, tid):
    return read_name("/proc/{}/task/{}/comm".format(pid, tid))


def process_name(pid):
    """The name of process pid as ps -e shows it: its comm, which the
    kernel cuts at 15 bytes, completed from the command line as psutil
    does."""
    name = read_name("/proc/{}/comm".format(pid))
    if name is not None and len(name) >= 15:
        try:
            with open("/proc/{}/cmdline".format(pid), "rb") as cmdline:
                first = printable(os.path.basename(
                    cmdline.read().split(b"\0", 1)[0]))
        except OSError:
            first = ""
        if first.startswith(name):
            name = first
    return name


def process_exe(pid):
    """The executable of process pid, or None (kernel threads)."""
    try:
        path = os.readlink("/proc/{}/exe".format(pid))
    except OSError:
        return None
    # Replaced by a package upgrade since it started.
    return path[:-len(" (deleted)")] if path.endswith(" (deleted)") else path


def list_processes():
    """(pid, name) of every process (read from /proc: no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            name = process_name(int(entry))
            if name is not None:
                found.append((int(entry), name))
    return found


def thread_whereabouts(pid, tid, syscall_names):
    """"in NAME" for a thread blocked in a system call, "running" for one
    on a CPU, or "" (from /proc/PID/task/TID/syscall)."""
    try:
        with open("/proc/{}/task/{}/syscall".format(pid, tid)) as syscall:
            first = syscall.read().split(" ", 1)[0].strip()
    except OSError:
        return ""
    if first == "running":
        return first
    if first.isdigit():
        return "in " + syscall_names.get(int(first), "syscall " + first)
    return ""


# OVS and OVN daemons whose --version the report header shows.
VERSIONED_DAEMONS = ("ovs-vswitchd", "ovsdb-server", "ovn-controller",
                     "ovn-northd")
VERSION_TIMEOUT = 3     # seconds


def read_text(path):
    """A /proc file as text; bytes that are not UTF-8 stay recoverable
    (surrogateescape), or None."""
    try:
        with open(path, "rb") as data:
            return data.read().decode("utf-8", "surrogateescape")
    except OSError:
        return None


def process_start(stat_text, proc_stat_text, hz):
    """When a process started, in seconds since the epoch, from its
    /proc/PID/stat (field 22: clock ticks after boot) and /proc/stat
    (btime: boot time)."""
    ticks = int(stat_text.rsplit(")", 1)[1].split()[19])
    boot = int(re.search(r"^btime\s+(\d+)", proc_stat_text, re.M).group(1))
    return boot + ticks / hz


def version_lines(output):
    """The version part of a daemon's --version output (OVN daemons add
    OpenFlow and schema versions)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return "; ".join(lines[:1] + [line for line in lines[1:]
                                  if "Open vSwitch" in line])


def daemon_version(pid, name, run=subprocess.run):
    """(version, None) of an OVS or OVN daemon, (None, why) when it cannot
    be told, (None, None) for other processes.  Asks the executable the
    process runs (/proc/PID/exe --version), then, for ovs-vswitchd, the
    daemon itself (ovs-appctl version); each under a timeout."""
    if name not in VERSIONED_DAEMONS:
        return None, None
    # argv[0] is the name: OVS prints it in the version line.
    attempts = [([name, "--version"], "/proc/{}/exe".format(pid))]
    appctl = shutil.which("ovs-appctl")
    if appctl and name == "ovs-vswitchd":
        for rundir in ("/var/run/openvswitch", "/run/openvswitch"):
            control = "/proc/{}/root{}/ovs-vswitchd.{}.ctl".format(
                pid, rundir, pid)
            if os.path.exists(control):
                attempts.append(([appctl, "--timeout={}".format(
                    VERSION_TIMEOUT), "-t", control, "version"], appctl))
                break
    errors = []
    for command, executable in attempts:
        what = " ".join(command) if command[0] == name else \
            "ovs-appctl version"
        try:
            result = run(command, executable=executable,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=VERSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            errors.append("{}: no answer within {} s".format(
                what, VERSION_TIMEOUT))
            continue
        except OSError as err:
            errors.append("{}: {}".format(what, err.strerror))
            continue
        version = version_lines(result.stdout.decode("utf-8", "replace"))
        if result.returncode == 0 and version:
            return version, None
        reason = result.stderr.decode("utf-8", "replace").strip()
        errors.append("{}: {}".format(what, reason.splitlines()[-1] if reason
                                      else "exit code {}".format(
                                          result.returncode)))
    return None, "; ".join(errors)


def read_header(command, pid):
    """Header of the reports: this host and process pid."""
    name = process_name(pid) or "?"
    try:
        exe = os.readlink("/proc/{}/exe".format(pid))
    except OSError:
        exe = None
    started = None
    try:
        started = datetime.datetime.fromtimestamp(process_start(
            read_text("/proc/{}/stat".format(pid)) or "",
            read_text("/proc/stat") or "",
            os.sysconf("SC_CLK_TCK"))).astimezone()
    except (IndexError, ValueError, AttributeError, OSError):
        pass
    version, version_error = daemon_version(pid, name)
    uname = os.uname()
    return Header(command=tuple(command), host=uname.nodename,
                  kernel=uname.release, machine=uname.machine,
                  cpus=os.cpu_count() or 0,
                  load=tuple(round(load, 2) for load in os.getloadavg()),
                  pid=pid,
                  name=name, exe=exe, started=started, version=version,
                  version_error=version_error)


def current_syscall(pid, tid):
    """The number of the system call thread tid is blocked in, or None
    (running, not in a call, gone)."""
    try:
        with open("/proc/{}/task/{}/syscall".format(pid, tid)) as syscall:
            first = syscall.read().split(" ", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def thread_state(pid, tid):
    """The state letter of /proc/PID/task/TID/stat (R, S, D, T, ...), or
    ""."""
    try:
        with open("/proc/{}/task/{}/stat".format(pid, tid)) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def mapped_files(pid):
    """Paths of the files process pid has mapped."""
    paths = set()
    with open("/proc/{}/maps".format(pid)) as maps:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(parts[5].strip())
    return paths


def find_mapped_library(pid, library):
    """The path of library (a path, or a name like 'c' or 'libc') as mapped
    by process pid."""
    paths = mapped_files(pid)
    if "/" in library:
        wanted = os.path.realpath(library)
        matches = [p for p in paths if os.path.realpath(p) == wanted]
    else:
        names = {library, "lib" + library}
        matches = [p for p in paths if os.path.basename(p) in names or
                   re.match(r"(lib)?{}\.so(\.|$)".format(re.escape(library)),
                            os.path.basename(p))]
    if len(matches) != 1:
        libs = sorted(os.path.basename(p) for p in paths if ".so" in p)
        raise Fatal("library '{}' is {} mapped by process {}; it maps: {}"
                    .format(library, "not" if not matches else "ambiguously",
                            pid, ", ".join(libs) or "no libraries"),
                    os.EX_CONFIG)
    return matches[0]


UNISTD_HEADERS = {
    "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
               "/usr/include/asm/unistd_64.h"),
    "aarch64": ("/usr/include/asm-generic/unistd.h",),
}


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
    table = {nr: name.decode() for nr, name in syscalls.items()}
    for path in UNISTD_HEADERS.get(platform.machine(), ()):
        try:
            with open(path) as header:
                found = parse_unistd(header.read())
        except OSError:
            continue
        for nr, name in found.items():
            table.setdefault(nr, name)
        break
    return table


def restart_syscall(table):
    """The number of restart_syscall(), or -1."""
    return next((nr for nr, name in table.items()
                 if name == "restart_syscall"),
                RESTART_SYSCALL.get(platform.machine(), -1))


def poll_syscalls(table=None):
    if table:
        nrs = tuple(sorted(nr for nr, name in table.items()
                           if name in ("poll", "ppoll")))
        if nrs:
            return nrs
    return POLL_SYSCALLS.get(platform.machine(), ())


# ---- I/O adapter: the BPF program -------------------------------------------

def plain(value):
    """A ctypes key or value as plain Python."""
    if hasattr(value, "_fields_"):
        return tuple(plain(getattr(value, name)) for name, _ in value._fields_)
    if isinstance(value, bytes):
        return printable(value.split(b"\0", 1)[0])
    if hasattr(value, "value"):
        return value.value
    if hasattr(value, "_length_"):
        if getattr(value, "_type_", None) is not ctypes.c_char:
            return tuple(plain(item) for item in value)
        return printable(bytes(value).split(b"\0", 1)[0])
    return value


def _text(raw):
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
        return fmt, lambda flat: tuple(part(flat) for part in parts)
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
        keys_out = list(key_rows)
    else:
        keys_out = [key_rebuild(iter(key)) for key in key_rows]
    if _numbers_only(leaf_type):
        return list(zip(keys_out, leaf_rows))
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
    TABLES = STAT_TABLES + ("sys_start", "sched_state", "exit_names")
    BUDGET_TABLES = ("blocked_stats", "holders", "stop_signals")
    HIST_TABLES = ("hist",)

    def __init__(self, bpf, pid, histogram=False, stacks=False,
                 upcalls=False):
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
        for name in self.TABLES + self.BUDGET_TABLES + (
                self.HIST_TABLES if self.histogram else ()):
            self.clear(name)
        if self.stacks:
            self.bpf["stack_traces"].clear()
        if self.upcalls:
            self.bpf["upcall_stats"].clear()
        table = self.bpf["capture"]
        for key in (1, 2):
            table[table.Key(key)] = table.Leaf(0)
        # Events of an earlier window still in the ring buffer (one that
        # was skipped, say) must not count in the next.
        self.bpf.ring_buffer_consume()
        self.syscall_events, self.more_events = [], 0
        try:
            quota = self.bpf["event_quota"]     # with --syscall-events
        except KeyError:
            quota = None
        if quota is not None:
            quota.zero()

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
        for event in log.events:
            if event.tid not in log.names:
                stats = threads.get(event.tid)
                log.names[event.tid] = stats.name if stats else (
                    thread_name(self.pid, event.tid) or "?")
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
            if event.kernel_stack >= 0 and \
                    event.kernel_stack not in log.kernel_stacks:
                log.kernel_stacks[event.kernel_stack] = frames(
                    event.kernel_stack, -1)
            if event.user_stack >= 0 and \
                    event.user_stack not in log.user_stacks:
                log.user_stacks[event.user_stack] = frames(
                    event.user_stack, self.pid)
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
            rows[name] = [(key if isinstance(key, tuple) else (key,),
                           Acc(*value)) for key, value in self.rows(name)]
        opened = self.capture_values()[1]
        sys_entries = self.rows("sys_start")
        rows["sys_stats"] = add_pending_calls(rows["sys_stats"],
                                              sys_entries, opened)
        sched = self.rows("sched_state")
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
        tables = ("blocked_stats", "holders") \
            + (self.HIST_TABLES if self.histogram else ())
        for name in tables:
            budget_rows[name] = [(key if isinstance(key, tuple) else (key,),
                                  value) for key, value in self.rows(name)]
        # C fields the rows do not use: holder_t.pad; sys_start entries
        # of earlier windows or with no call in progress.
        budget_rows["holders"] = [(key, (ns, tgid, comm)) for key, (
            ns, tgid, _, comm) in budget_rows["holders"]]
        hist = budget_rows.pop("hist", [])
        budget_rows["sys_hist"] = [row for row in hist
                                   if row[0][1] != HIST_READY]
        budget_rows["ready_hist"] = [row for row in hist
                                     if row[0][1] == HIST_READY]
        # A thread that exited entered exit() and never left it: that is
        # no call in flight.
        exited = {key: value[0] for key, value in self.rows("exit_names")}
        budget_rows["sys_start"] = [
            ((tid,), (value[1], value[2])) for tid, value in sys_entries
            if value[0] == opened and value[1] and tid not in exited]
        add_budget_rows(threads, budget_rows, end_ns)
        for tid, stats in threads.items():
            stats.name = (thread_name(self.pid, tid) or exited.get(tid) or
                          "<unknown:{}/{}>".format(self.pid, tid))
        return threads

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
        found = []
        for (sig, sender), (count, tgid, _target, comm) in \
                self.rows("stop_signals"):
            found.append(StopSignal(sig=sig, name=STOP_SIGNALS.get(
                sig, "signal {}".format(sig)), sender=sender, tgid=tgid,
                comm=comm, count=count))
        return sorted(found, key=lambda item: (item.sig, item.sender))

    def whereabouts(self, tids):
        """({tid: system call nr or None}, {tid: state letter}) as /proc
        shows them now."""
        current, states = {}, {}
        for tid in tids:
            current[tid] = current_syscall(self.pid, tid)
            states[tid] = thread_state(self.pid, tid)
        return current, states

    def quiet_threads(self, threads, syscall_names):
        """(tid, name, where) of live threads that are not in threads."""
        try:
            tids = [int(tid) for tid in
                    os.listdir("/proc/{}/task".format(self.pid))]
        except OSError:
            return []
        return [(tid, thread_name(self.pid, tid) or "?",
                 thread_whereabouts(self.pid, tid, syscall_names))
                for tid in tids if tid not in threads]

    def counters(self):
        table = self.bpf["counters"]
        return {counter: int(table.sum(table.Key(counter)).value)
                for counter in Counter}


# ---- Sampling ---------------------------------------------------------------

class Interrupts:
    """What SIGINT (Ctrl-C) and SIGTERM do; handler() is the handler.

    The first signal ends the run: pending() raises KeyboardInterrupt
    where the run can stop cleanly, which the waiting loops call at least
    every 100 ms, and the end of a shield() (loading and attaching the
    program, which must not be cut in two) and of a writing() section (a
    report: it is what the user waits for).  The handler itself does not
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


class Sampler:
    """Runs the sample windows and writes their reports.

    out gets the report: text, or JSON Lines with --format json.  progress
    gets the lines that tell a reader what happens (window opened,
    closed, skipped): with a text report, they are part of it.
    """

    def __init__(self, probes, args, out, syscall_names, poll_nrs,
                 clock=time.monotonic_ns, header=None, progress=None,
                 wall=None, interrupts=None):
        self.probes = probes
        self.args = args
        self.out = out
        self.progress = progress or out
        self.syscall_names = syscall_names
        self.poll_nrs = poll_nrs
        self.clock = clock
        self.wall = wall or (lambda: datetime.datetime.now().astimezone())
        self.header = header
        self.json = getattr(args, "format", "text") == "json"
        self.interrupts = interrupts or Interrupts()
        self.target = getattr(args, "target", None) or Target(args.pid)
        self.pending = []       # ring buffer events not yet consumed
        self.said_waiting = False
        self.samples = self.skipped = 0
        self.reported = {}      # loss counters at the last report
        self.notes = []         # lines to print before the first window

    def write(self, stream, lines):
        if self.interrupts.aborted:
            return
        with self.interrupts.writing():
            write_out(stream, "".join(line + "\n" for line in lines))

    def say(self, lines):
        """Progress lines (the report's own lines with a text report)."""
        self.write(self.progress,
                   [lines] if isinstance(lines, str) else lines)

    def report(self, lines=(), doc=None):
        """Text lines of the report, or its JSON document."""
        if self.json:
            if doc is not None:
                self.write(self.out, [json_line(doc)])
        elif lines:
            self.write(self.out, lines)

    def options(self):
        return options_json(self.args)

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
            time.sleep(min(left, 0.1))

    def wait_for(self, event_type, deadline=None):
        """Poll until event_type arrives (returns its timestamp) or the
        deadline (CLOCK_MONOTONIC ns) passes (returns None).  Raises
        TargetExited when the process goes away meanwhile."""
        while True:
            self.interrupts.pending()
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
            timeout = 100
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
        if args.start_trigger:
            self.probes.set_state(Capture.ARMED)
            # Said once armed: whoever reads the line may fire the trigger
            # at once.
            if not self.said_waiting:
                self.said_waiting = True
                self.say(timestamp_line("# Waiting for start trigger '{}'"
                                        .format(args.start_trigger.text)))
            window.start_ts = self.wait_for(Event.START_TRIGGER)
            started = window.start_ts
        else:
            # Open the window before saying so: whoever reads the line
            # may act on it at once.
            started = self.clock()
            self.probes.open_window(started)
        window.opened = self.wall()
        window.open_ns = started
        interrupted = False
        try:
            if args.start_trigger:
                self.say(timestamp_line("# Start sampling (trigger@{})"
                                        .format(window.start_ts),
                                        window.opened))
            else:
                self.say(timestamp_line("# Start sampling", window.opened))
            if args.stop_trigger:
                window.stop_ts = self.wait_for(Event.STOP_TRIGGER)
            else:
                self.wait_for(None, started + int(args.sample_time * 1e9))
        except (KeyboardInterrupt, TargetExited) as err:
            # Inside a window: report what it holds, then stop.
            interrupted = err
        finally:
            self.probes.set_state(Capture.HOLD)
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
        ended = window.stop_ts or self.clock()
        window.close_ns = ended
        window.closed = self.wall()
        if window.stop_ts is not None:
            window.end = "trigger"
            self.say(timestamp_line("# Stop sampling (trigger@{})".format(
                window.stop_ts), window.closed))
        else:
            if interrupted:
                window.end = ("process exited" if isinstance(
                    interrupted, TargetExited) else "interrupted")
            self.say(timestamp_line("# Stop sampling{}".format(
                " ({})".format(window.end) if interrupted else ""),
                window.closed))

        delta = window.delta
        if delta is not None and delta < args.trigger_delta:
            window.dumped = self.wall()
            self.say(timestamp_line(
                "# Sample dump skipped, delta {:,} ns".format(delta),
                window.dumped))
            self.skipped += 1
            self.report(doc=skipped_document(window, self.header,
                                             self.options(), self.notes))
            return False
        threads = self.probes.collect(ended)
        quiet = self.probes.quiet_threads(threads, self.syscall_names)
        current, states = self.probes.whereabouts(
            list(threads) + [tid for tid, _, _ in quiet])
        budgets, verdict = analyse_window(
            threads, quiet, window.open_ns, ended, self.syscall_names,
            current,
            states, self.probes.stop_signals(), thresholds_of(args))
        window.dumped = self.wall()
        if delta is not None:
            title = "# Triggered sample dump, stop-start delta {:,} ns" \
                .format(delta)
        else:
            title = "# Sample dump"
        self.samples += 1
        # Losses since the last report: they include the start triggers
        # missed while it was being written, and a skipped window's.
        after, before = self.probes.counters(), self.reported
        self.reported = after
        sample = Sample(self.samples, window, threads, quiet,
                        {counter: after[counter] - before.get(counter, 0)
                         for counter in after}, budgets, verdict)
        if args.syscall_events is not None:
            sample.events = self.probes.collect_events(threads)
        if getattr(self.probes, "upcalls", False):
            sample.upcalls = self.probes.collect_upcalls()
        if self.json:
            self.report(doc=sample_document(sample, self.header,
                                            self.options(),
                                            self.syscall_names,
                                            self.poll_nrs, self.notes))
        else:
            lines = [timestamp_line(title, window.dumped)] + format_report(
                threads, self.syscall_names, self.poll_nrs, quiet, budgets,
                args.histogram) + format_verdict(verdict)
            if sample.events is not None:
                lines += format_syscall_events(sample.events,
                                               self.syscall_names)
            if sample.upcalls is not None:
                lines += format_upcalls(sample.upcalls)
            # With several windows, each says what it lost; the end of the
            # run sums it up.
            if args.sample_count > 1:
                lines += format_warnings(sample.losses, args.sample_count,
                                         window=True)
            self.say(lines)
        return True

    def run(self):
        if self.header is not None:
            self.report(format_header(self.header))
        if self.notes:
            self.say(self.notes)
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
        counters = self.probes.counters()
        if self.json:
            self.report(doc=end_document(
                self.header, self.options(), counters, self.samples,
                self.skipped, end, self.notes))
        else:
            self.say(format_warnings(counters, self.args.sample_count))


# ---- Setup: environment checks, compile, attach -----------------------------

# The inode of the initial PID namespace (PROC_PID_INIT_INO).
INIT_PID_NS_INODE = 0xeffffffc


def in_child_pid_namespace():
    """True inside a container with its own PID namespace: its PIDs are not
    the ones the kernel (and so the eBPF program) uses."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino != INIT_PID_NS_INODE
    except OSError:
        return False


def find_target_pid(name):
    return pick_target(list_processes(), name)


def check_pid(pid):
    """Fail unless pid is a running process (not one of its threads)."""
    try:
        with open("/proc/{}/status".format(pid)) as status:
            text = status.read()
        tgid = int(re.search(r"^Tgid:\s*(\d+)", text, re.M).group(1))
        state = re.search(r"^State:\s*(\S)", text, re.M).group(1)
    except (OSError, AttributeError):
        raise Fatal("process {} does not exist; check the --pid value"
                    .format(pid), os.EX_NOINPUT)
    if tgid != pid:
        raise Fatal("{} is a thread of process {}; use -p {}".format(
            pid, tgid, tgid), os.EX_USAGE)
    if state in ("Z", "X"):
        raise Fatal("process {} has exited (a zombie its parent has not "
                    "reaped); check the --pid value".format(pid),
                    os.EX_NOINPUT)


def identify_target(pid):
    """The Target of a checked pid, to tell later whether it is still the
    same process."""
    stat = proc_stat(pid)
    return Target(pid=pid, name=process_name(pid) or "?",
                  exe=process_exe(pid), start_time=stat and stat[1])


def successors(target):
    """PIDs of processes that run the same program under the same name as
    target, which has exited: a restarted daemon."""
    return [pid for pid, name in list_processes()
            if pid != target.pid and name == target.name and
            process_exe(pid) == target.exe]


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
    if trigger.target:
        try:
            return "/proc/{}/root{}".format(
                pid, find_mapped_library(pid, trigger.target))
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
        with open("/proc/kallsyms") as kallsyms:
            if not any(line.split()[2] == trigger.name
                       for line in kallsyms if len(line.split()) >= 3):
                raise Fatal("trigger '{}': no kernel function {} in "
                            "/proc/kallsyms".format(trigger.text,
                                                    trigger.name),
                            os.EX_CONFIG)
    elif trigger.kind in ("uprobe", "uretprobe"):
        binary = uprobe_binary(pid, trigger)
        try:
            bcc.BPF._check_path_symbol(binary.encode(), trigger.name.encode(),
                                       None, -1)
        except Exception:
            raise Fatal("trigger '{}': no symbol {} in {}; if the binary "
                        "is stripped, install its debug symbols (for OVS: "
                        "openvswitch-dbgsym or openvswitch-debuginfo)".format(
                            trigger.text, trigger.name,
                            os.path.realpath(binary)), os.EX_CONFIG)
    elif trigger.kind == "usdt":
        return verify_usdt(pid, trigger)
    return None


def attach_triggers(bpf, triggers, pid):
    for role, trigger in triggers:
        fn_name = "kd_{}_trigger".format(role)
        try:
            if trigger.kind == "tracepoint":
                bpf.attach_tracepoint(tp="{}:{}".format(trigger.target,
                                                        trigger.name),
                                      fn_name=fn_name)
            elif trigger.kind == "kprobe":
                bpf.attach_kprobe(event=trigger.name, fn_name=fn_name)
            elif trigger.kind == "kretprobe":
                bpf.attach_kretprobe(event=trigger.name, fn_name=fn_name)
            elif trigger.kind == "uprobe":
                bpf.attach_uprobe(name=uprobe_binary(pid, trigger),
                                  sym=trigger.name, fn_name=fn_name, pid=pid)
            elif trigger.kind == "uretprobe":
                bpf.attach_uretprobe(name=uprobe_binary(pid, trigger),
                                     sym=trigger.name, fn_name=fn_name,
                                     pid=pid)
        except Exception:
            raise AttachError(role, trigger)


class AttachError(Exception):
    """The kernel refused a trigger probe."""

    def __init__(self, role, trigger):
        super().__init__(role, trigger)
        self.role, self.trigger = role, trigger


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


class Session:
    """Owns everything a run sets up, and undoes it on close()."""

    def __init__(self, interrupts=None):
        self.tree = None
        self.mounted = None
        self.bpf = None
        self.upcall_note = None     # why the upcall probe did not attach
        self.interrupts = interrupts or Interrupts()

    def close(self):
        # A second Ctrl-C must not cut the teardown short.
        handlers = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
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

    def open(self, args, source, triggers):
        """Compile, load and attach; returns a Probes.  A signal meanwhile
        takes effect when this is done, so that whatever was set up has
        an owner that close() sees."""
        with self.interrupts.shield():
            return self._open(args, source, triggers)

    def remove_tree(self):
        if self.tree:
            shutil.rmtree(self.tree, ignore_errors=True)
            if os.environ.get("BCC_KERNEL_SOURCE") == self.tree:
                del os.environ["BCC_KERNEL_SOURCE"]
            self.tree = None

    def _open(self, args, source, triggers):
        self.mounted = ensure_tracefs()
        if bcc is not None:
            bcc.TRACEFS = tracefs_path()
        if args.layout.source == "btf" and not headers_available():
            self.tree = new_tree_dir()
            make_include_tree(self.tree)
            os.environ["BCC_KERNEL_SOURCE"] = self.tree
        verified = [verify_trigger(trigger, args.pid, tracefs_path())
                    for _, trigger in triggers]
        with CapturedStderr(args.debug) as errors:
            contexts = usdt_contexts(triggers, verified)
            try:
                self.bpf = bcc.BPF(text=source, usdt_contexts=contexts,
                                   debug=args.debug)
            except Exception as err:
                failure = (str(err).strip().splitlines() or
                           [type(err).__name__])[-1]
            else:
                failure = None
        # Only the compiler reads the include tree: remove it now, so
        # that even SIGKILL later leaves no tree behind.
        self.remove_tree()
        if failure:
            raise Fatal("loading the eBPF program failed: {}; it needs Linux "
                        "5.8 or RHEL 8.4 (BPF ring buffers); rerun with -D "
                        "to see the compiler's output".format(
                            errors.last_line(failure)), os.EX_SOFTWARE)
        with CapturedStderr(args.debug) as errors:
            try:
                attach_triggers(self.bpf, triggers, args.pid)
            except AttachError as err:
                failure = err
        if failure:
            raise Fatal("the kernel refused the {} trigger '{}' ({}); choose "
                        "another event (ftrace:* tracepoints, for one, take "
                        "no eBPF programs)".format(
                            failure.role, failure.trigger.text,
                            errors.last_line("no reason given")),
                        os.EX_OSERR)
        upcalls = args.upcalls
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
        return Probes(self.bpf, args.pid, args.histogram,
                      stacks=args.syscall_events is not None and
                      args.stack_trace_size > 0,
                      upcalls=upcalls)


# ---- Command line -----------------------------------------------------------

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
    # The first spelling of --process.
    target.add_argument("--process-name", dest="process",
                        help=argparse.SUPPRESS)
    parser.add_argument("--sample-time", type=positive_seconds, default=0.5,
                        metavar="SECONDS",
                        help="length of a window, default 0.5")
    parser.add_argument("--sample-count", type=positive_int, default=1,
                        metavar="RUNS", help="windows to report, default 1")
    parser.add_argument("--sample-interval", type=seconds, default=0,
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
    parser.add_argument("--buffer-page-count",
                        type=bounded(positive_int, MAX_PAGES),
                        default=1024, metavar="NUMBER",
                        help="ring buffer pages (rounded up to a power of "
                             "two), default 1024, at most {}".format(
                                 MAX_PAGES))
    parser.add_argument("--max-threads",
                        type=bounded(positive_int, MAX_THREADS),
                        default=4096, metavar="THREADS",
                        help="threads the tables hold, default 4096, at "
                             "most {}".format(MAX_THREADS))
    parser.add_argument("--format", choices=("text", "json"),
                        default="text",
                        help="report format: text tables, or JSON Lines "
                             "(one document per window), default text")
    parser.add_argument("--output", metavar="FILE",
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
    parser.add_argument("-D", "--debug", type=debug_flags, nargs="?",
                        const=0x3f, default=0, metavar="FLAGS",
                        help="BCC debug flags, default 0x3f when given")
    parser.add_argument("--ebpf", action="store_true",
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
    return args


def thresholds_of(args):
    return Thresholds(ready=args.ready_threshold, irq=args.irq_threshold,
                      stopped=args.stopped_threshold)


def triggers_of(args):
    return [(role, trigger) for role, trigger in
            (("start", args.start_trigger), ("stop", args.stop_trigger))
            if trigger is not None]


# ---- main -------------------------------------------------------------------

def open_output(path):
    """The --output file, opened for the report."""
    try:
        # Line buffered: each line reaches the file as it is written.
        return open(path, "w", buffering=1, encoding="utf-8",
                    errors="backslashreplace")
    except OSError as err:
        raise Fatal("cannot write the report to {} ({}); choose another "
                    "--output file".format(printable(path), err.strerror),
                    os.EX_IOERR)


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
        write_out(out, json.dumps(JSON_SCHEMA, indent=2) + "\n")
        return os.EX_OK
    if bcc is None and not args.ebpf:
        raise Fatal("the Python module bcc (BPF Compiler Collection) is "
                    "missing for {}; install python3-bpfcc (Debian/Ubuntu) "
                    "or python3-bcc (Fedora/RHEL)".format(sys.executable),
                    os.EX_OSFILE)
    if not args.ebpf and in_child_pid_namespace():
        raise Fatal("this runs in a PID namespace of its own, whose process "
                    "IDs are not the kernel's; run the container with "
                    "--pid=host", os.EX_UNAVAILABLE)
    if args.pid is None:
        args.pid = 0 if args.ebpf else find_target_pid(
            args.process or DEFAULT_PROCESS)
    elif not args.ebpf:
        check_pid(args.pid)
    if not args.ebpf:
        args.target = identify_target(args.pid)

    table = syscall_table() if bcc is not None else {}
    poll_nrs = poll_syscalls(table)
    args.layout = choose_layout()
    triggers = triggers_of(args)
    # Upcall statistics are for ovs-vswitchd only, and the probe is
    # compiled in only when it will be attached.
    upcall_note = None
    args.upcalls = not args.skip_upcall_stats and \
        thread_name(args.pid, args.pid) == DEFAULT_PROCESS
    if args.upcalls:
        upcall_note = upcall_problem()
        args.upcalls = upcall_note is None
    source = render_bpf_source(
        args.pid, args.layout, poll_nrs, args.buffer_page_count,
        args.max_threads, [role for role, _ in triggers],
        restart_syscall(table), args.histogram,
        event_min_ns=event_min_ns(args),
        skip_poll_events=args.skip_syscall_poll_events,
        stack_size=args.stack_trace_size,
        upcall_keys=upcall_keys() if args.upcalls else 0)
    if args.ebpf:
        write_out(out, source)
        return os.EX_OK
    if os.geteuid() != 0:
        raise Fatal("root privileges are needed to load eBPF programs; run "
                    "with sudo", os.EX_NOPERM)
    check_ringbuf()

    if args.output:
        out = open_output(args.output)
    progress = sys.stderr if args.format == "json" else out
    header = read_header(command, args.pid)
    session = Session(interrupts)
    try:
        try:
            probes = session.open(args, source, triggers)
        except KeyboardInterrupt:
            # Before the first window (compiling, attaching).
            say_interrupted(progress, interrupts)
            return os.EX_OK
        sampler = Sampler(probes, args, out, table, poll_nrs,
                          header=header, progress=progress,
                          interrupts=interrupts)
        upcall_note = upcall_note or session.upcall_note
        if upcall_note:
            sampler.notes.append("# Upcall statistics skipped: {}.".format(
                upcall_note))
        try:
            sampler.run()
        except KeyboardInterrupt:
            sampler.say("# Interrupted")
        except TargetExited as gone:
            target = args.target
            sampler.say(timestamp_line("# Process {} ({}) exited".format(
                target.pid, target.name), gone.when))
            raise Fatal(target_gone_error(target, successors(target)),
                        os.EX_TEMPFAIL)
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
                for sig in (signal.SIGINT, signal.SIGTERM)}
    command = sys.argv if argv is None else ["kernel_delay.py"] + list(argv)
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


def reexec_with_bcc():
    """Run under an interpreter that has bcc when this one lacks it.

    bcc comes from the distribution (python3-bpfcc, python3-bcc) and lives
    in the system Python, which pyenv, conda or a venv put behind another
    python3 on PATH.
    """
    if bcc is not None or os.environ.get("KERNEL_DELAY_REEXEC"):
        return
    # Compare paths, not what they resolve to: a venv's python3 is a
    # symlink to the system one, but does not see its packages.
    here = os.path.abspath(sys.executable)
    for candidate in ("/usr/bin/python3", "/usr/libexec/platform-python",
                      "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK) and candidate != here:
            os.environ["KERNEL_DELAY_REEXEC"] = "1"
            script = os.path.abspath(sys.argv[0])
            os.execv(candidate, [candidate, script] + sys.argv[1:])


if __name__ == "__main__":
    reexec_with_bcc()
    sys.exit(main())
