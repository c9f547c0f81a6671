# SPDX-License-Identifier: Apache-2.0
"""Edges of the kernel side: the uprobe trampolines' own system calls,
ia32 processes, a thread ID reused inside a window, execve() by a
thread that is not the leader, and the programs the kernel skipped (issue
18, cases 2 to 6).  The system
call table and the tracer calls' C, without a kernel: test_unit.py."""

import json
import os
import re
import subprocess

import pytest

import report
import workload_ctl
from conftest import run_tool

HERE = os.path.dirname(os.path.abspath(__file__))
MSEC = 1000 * 1000

# tests/ia32.S: what its window does, in ia32 numbers.
IA32_GETPPID = 97
IA32_WAITPID = 11
IA32_POLLS = 7


@pytest.fixture(scope="module")
def ia32_bin(tmp_path_factory):
    binary = str(tmp_path_factory.mktemp("ia32") / "ia32")
    # No C library: only the assembler and linker's 32-bit support.
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-o", binary,
                    os.path.join(HERE, "ia32.S")], check=True)
    return binary


def only_window(out):
    windows = [w for w in report.parse(out) if not w.skipped]
    assert len(windows) == 1, out
    return windows[0]


def thread_lines(out, tid):
    """The report lines of one thread, from its first line to the next
    thread's."""
    lines = out.splitlines()
    # The overview's rows (up to its blank line) are not the thread's.
    skip = set()
    for i, line in enumerate(lines):
        if line.startswith("# OVERVIEW"):
            j = i
            while j < len(lines) and lines[j].strip():
                skip.add(j)
                j += 1
    first = next(i for i, line in enumerate(lines)
                 if i not in skip and re.match(r"^ *{} ".format(tid), line))
    end = next((i for i in range(first + 1, len(lines))
                if re.match(r"^ *\d+ \S", lines[i])
                or lines[i].startswith("# ")), len(lines))
    return lines[first:end]


def test_every_syscall_tracepoint_of_this_kernel_is_named(kd):
    """The names of this kernel's syscall tracepoints are all in the table
    (bcc 0.26's stops at 334, Debian 12's headers at 450)."""
    table = set(kd.syscall_table().values())
    tracefs = kd.tracefs_path() or "/sys/kernel/tracing"
    events = os.listdir(os.path.join(tracefs, "events", "syscalls"))
    # The kernel's own function names for five old calls.
    aliases = {"newfstat", "newlstat", "newstat", "newuname", "sendfile64",
               "umount"}
    missing = sorted(name[len("sys_enter_"):] for name in events
                     if name.startswith("sys_enter_")
                     and name[len("sys_enter_"):] not in table | aliases)
    assert missing == []


def test_uretprobe_syscall_is_not_the_targets(workload_bin):
    """A window that a uretprobe closes ends inside the uretprobe() call
    the return probe's trampoline makes: not the target's call."""
    with workload_ctl.Workload(workload_bin) as load:
        code, out, err = run_tool(
            ["-p", str(load.pid), "--start-trigger", "up:kd_op",
             "--stop-trigger", "ur:kd_op",
             "--trigger-delta", str(20 * MSEC)])
    assert code == 0, err
    only_window(out)
    # (Not the number as such: a TID or a duration may contain it.)
    assert "uretprobe" not in out and "<unknown:335>" not in out, out
    assert not re.search(r"^ +\S+ +335 ", out, re.M), out


def test_ia32_process_gets_ia32_names_and_poll_gaps(ia32_bin):
    proc = subprocess.Popen([ia32_bin], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"

        def go(_tool):
            proc.stdin.write(b"g")
            proc.stdin.flush()
            assert proc.stdout.readline() == b"done\n"

        code, out, err = run_tool(["-p", str(proc.pid), "--sample-time",
                                   "1"], on_start=go)
    finally:
        proc.kill()
        proc.wait()
    assert code == 0, err
    calls = only_window(out).threads["ia32"]["SYSCALL"]
    assert calls["ia32:getppid"]["count"] == IA32_GETPPID
    assert calls["ia32:waitpid"]["count"] == IA32_WAITPID
    assert calls["ia32:poll"]["count"] == IA32_POLLS
    for name in ("semget", "swapoff", "poll"):   # the x86-64 meanings
        assert name not in calls, out
    text = "\n".join(thread_lines(out, proc.pid))
    assert re.search(r"ia32:getppid +64 +97 ", text), text
    # Seven polls, six gaps between them; waitpid (7) is not a poll.
    assert re.search(r"LONG POLL STATISTICS\]\n +COUNT.*\n +6 ", text), text


def test_reused_tid_does_not_take_the_old_threads_exit(workload_bin):
    """A thread exits (its exit() never returns), a new one gets its TID:
    the new thread's return from clone() is not an exit() call."""
    answers = []
    with workload_ctl.Workload(workload_bin) as load:
        def reuse(_tool):
            answers.append(load.command("reuse", timeout=30))
        code, out, err = run_tool(["-p", str(load.pid), "--sample-time",
                                   "1"], on_start=reuse)
    assert code == 0, err
    assert answers[0].startswith("ok reuse "), answers
    tid = int(answers[0].split()[2])
    lines = thread_lines(out, tid)
    calls = [line.split()[0] for line in lines[2:]
             if re.match(r"^ +[a-z_0-9:]+ +\d+ +\d+ ", line)]
    assert "exit" not in calls, "\n".join(lines)
    assert "getpgid" in calls, "\n".join(lines)


def test_exec_by_a_non_leader_leaves_no_phantom(workload_bin):
    """execve() in a thread that is not the leader: afterwards that thread
    has the leader's TID.  Its old TID is not still on a CPU or in
    execve(), and the leader has no switch the kernel did not report."""
    answers = []
    with workload_ctl.Workload(workload_bin) as load:
        def exec_(_tool):
            answers.append(load.command("exec"))
        code, out, err = run_tool(["-p", str(load.pid), "--sample-time",
                                   "1.5"], on_start=exec_)
        pid = load.pid
    assert code == 0, err
    old = int(answers[0].split()[2])
    assert old != pid
    phantom = "\n".join(thread_lines(out, old))
    assert "in flight" not in phantom, phantom
    share = re.search(r"on a CPU +[\d,]+ +([\d.]+) %", phantom)
    assert share and float(share.group(1)) < 20, phantom
    leader = "\n".join(thread_lines(out, pid))
    assert "did not report" not in leader, leader
    # The execve() is counted once, in the thread that made it, which
    # the leader's ID now names.
    assert re.search(r"^ +execve +59 +1 ", leader, re.M), leader


# ---- Programs the kernel skipped (issue 18, case 3) ---------------------

# A target whose thread is mostly inside bpf() map updates (the kernel holds
# eBPF tracepoint programs off meanwhile: bpf_prog_active) while its own
# interval timer raises SIGALRM from a hard interrupt every 100 µs: the
# tool's signal_generate program is then skipped, and the kernel counts it.
BPF_CALLER = r"""
import ctypes, signal, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF, MAP_CREATE, MAP_UPDATE, HASH = 321, 0, 2, 1
attr = ctypes.create_string_buffer(struct.pack("IIII", HASH, 4, 8, 64), 128)
fd = libc.syscall(SYS_BPF, MAP_CREATE, attr, 128)
if fd < 0:
    sys.exit("map: errno %d" % ctypes.get_errno())
key, value = ctypes.c_uint32(1), ctypes.c_uint64(2)
update = ctypes.create_string_buffer(struct.pack(
    "IIQQQ", fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0), 128)
signal.signal(signal.SIGALRM, lambda *_: None)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
print("ready", flush=True)
while True:
    for _ in range(1000):
        libc.syscall(SYS_BPF, MAP_UPDATE, update, 128)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64",
                    reason="the bpf() number in the target is x86-64's")
def test_programs_the_kernel_skipped_are_reported():
    proc = subprocess.Popen(["/usr/bin/python3", "-c", BPF_CALLER],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        code, out, err = run_tool(["-p", str(proc.pid), "--sample-time",
                                   "1", "--format", "json"])
    finally:
        proc.kill()
        proc.wait()
    assert code == 0, err
    end = [doc for doc in map(json.loads, out.splitlines())
           if doc.get("type") == "end"][0]
    assert end["losses"]["program_skipped"] > 0, out
    assert any("of the tool's eBPF programs were skipped by the kernel"
               in warning
               for warning in end["warnings"]), end["warnings"]


def test_current_task_reads_are_plain_loads_only_where_verified(kd):
    """The kernel, not a default, answers whether the current task's fields
    can be plain loads: yes for its own layout (Linux 5.11 and later with
    BTF: this machine and check-vm's), no for a load straddling the state.
    The program loads both ways."""
    import dataclasses
    import shutil
    import bcc
    layout = kd.read_task_layout()
    assert kd.current_task_btf_supported(layout)
    assert not kd.current_task_btf_supported(dataclasses.replace(
        layout, state_offset=layout.state_offset + 2))
    tree = kd.new_tree_dir()
    kd.make_include_tree(tree)
    mounted = kd.ensure_tracefs()
    os.environ["BCC_KERNEL_SOURCE"] = tree
    try:
        for current_btf in (True, False):
            # Its own process as the target: the programs leave at once.
            source = kd.render_bpf_source(os.getpid(), layout, (7, 271),
                                          current_btf=current_btf)
            bcc.BPF(text=source).cleanup()
    finally:
        del os.environ["BCC_KERNEL_SOURCE"]
        shutil.rmtree(tree)
        if mounted:
            subprocess.run(["umount", mounted], check=True)
