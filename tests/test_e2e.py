# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests: real probes on the running kernel.

A workload (tests/workload.c) whose threads do things we control runs
under the tool; the report is parsed back and checked against exact counts,
known durations and the kernel's own accounting in
/proc/PID/task/TID/schedstat.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import report
import workload_ctl
from conftest import (BURST, DATAGRAMS, MSEC, NSEC, SCRIPT, SHORT_CALLS,
                      Capture, assert_agrees, file_text, leftovers,
                      one_error_line, run_tool, script_module, sigstop_window,
                      spin_cpu, start_tool, tool_policy, tracefs_mounts,
                      wait_named)


@pytest.fixture(scope="module")
def busy(workload_bin):
    """A 2 s window over the workload with two spinners sharing a CPU, a
    burst of getsid() calls and loopback UDP traffic."""
    def burst(workload):
        assert workload.command("burst {}".format(BURST)) == \
            "ok burst {}".format(BURST)

    def udp(workload):
        assert workload.command("udp {}".format(DATAGRAMS)) == \
            "ok udp {}".format(DATAGRAMS)

    short_tids = []

    def short(workload):
        answer = workload.command("short {}".format(SHORT_CALLS)).split()
        assert answer[:3] == ["ok", "short", str(SHORT_CALLS)]
        short_tids.append(int(answer[3]))

    with workload_ctl.Workload(workload_bin, spin_cpu=spin_cpu()) as load:
        load.wait_spinners_sharing()
        capture = Capture(load, ["--sample-time", "2"], (burst, udp, short))
        capture.short_tid = short_tids[0]
        yield capture


@pytest.mark.parametrize("slots", ["1", "0"])
def test_exact_counts_wherever_the_entries_live(workload_bin, slots):
    """A thread's system call entry lives in the direct-mapped table or,
    when another thread holds its slot, in the hash table.  The hidden
    --direct-slots 1 leaves one slot, so all threads but one are in the
    hash table (0: all of them): the counts stay exact."""
    def burst(workload):
        workload.command("burst {}".format(BURST))

    def udp(workload):
        workload.command("udp {}".format(DATAGRAMS))

    with workload_ctl.Workload(workload_bin) as load:
        capture = Capture(load, ["--sample-time", "1", "--direct-slots",
                                 slots], (burst, udp))
    assert capture.code == 0, capture.err
    assert capture.thread("kd-burst")["SYSCALL"]["getsid"]["count"] == \
        BURST, capture.out
    calls = capture.thread("kd-udp")["SYSCALL"]
    assert calls["sendto"]["count"] == calls["recvfrom"]["count"] == \
        DATAGRAMS, capture.out
    poll = capture.thread("kd-poll")
    assert abs(poll["SYSCALL"]["poll"]["count"] -
               poll["LONG POLL"]["count"]) <= 1, capture.out


def test_exact_count_of_a_rare_syscall(busy):
    calls = busy.thread("kd-burst")["SYSCALL"]
    assert calls["getsid"]["count"] == BURST
    assert calls["getsid"]["max"] <= calls["getsid"]["total"]
    others = [name for name, thread in busy.windows[0].threads.items()
              if name != "kd-burst" and "getsid" in thread["SYSCALL"]]
    assert others == []


def test_udp_counts_and_net_rx_in_sender_context(busy):
    thread = busy.thread("kd-udp")
    assert thread["SYSCALL"]["sendto"]["count"] == DATAGRAMS
    assert thread["SYSCALL"]["recvfrom"]["count"] == DATAGRAMS
    # Loopback transmit raises NET_RX and runs it on local_bh_enable(),
    # in the sending thread.
    net_rx = thread["SOFT IRQ"]["net_rx"]
    assert net_rx["vec"] == 3
    assert 1 <= net_rx["count"] <= 2 * DATAGRAMS
    assert thread["SOFT IRQ TOTAL"][0] >= net_rx["count"]


def test_sleeps_of_known_length(busy):
    sleeps = busy.thread("kd-sleep")["SYSCALL"]["clock_nanosleep"]
    # 20 ms sleeps in a 2 s window: at most 100 complete ones.
    assert 80 <= sleeps["count"] <= 100
    assert sleeps["total"] >= sleeps["count"] * 20 * MSEC
    assert sleeps["total"] / sleeps["count"] < 22 * MSEC
    assert 20 * MSEC <= sleeps["max"] < 40 * MSEC


def test_long_poll_is_the_gap_between_polls(busy):
    thread = busy.thread("kd-poll")
    gaps = thread["LONG POLL"]
    # Each gap is one 30 ms sleep between a poll() return and the next.
    assert 30 * MSEC <= gaps["min"] <= gaps["average"] <= gaps["max"]
    assert gaps["average"] < 32 * MSEC
    assert gaps["max"] < 60 * MSEC
    polls = thread["SYSCALL"]["poll"]
    assert abs(polls["count"] - gaps["count"]) <= 1
    assert 45 <= gaps["count"] <= 57      # 2 s / (5 ms + 30 ms)
    assert 5 * MSEC <= polls["max"] < 15 * MSEC
    # TOTAL( - poll) leaves poll() out.
    assert thread["SYSCALL TOTAL"] == (
        thread["SYSCALL"]["clock_nanosleep"]["count"],
        thread["SYSCALL"]["clock_nanosleep"]["total"])
    # Threads that never poll have no LONG POLL section.
    assert busy.thread("kd-sleep").get("LONG POLL") is None


def sched_links(pid):
    """How the scheduler probes of the tool (pid) are attached: {event:
    "tp_btf" or "raw"}, from its links' fdinfo (a tp_btf program's link is
    a raw tracepoint link too) and its programs' types."""
    kd = script_module()
    links, types = {}, {}
    for fd in os.listdir("/proc/{}/fdinfo".format(pid)):
        fields = {key: value.strip() for key, value in (
            line.split(":", 1) for line in file_text(
                "/proc/{}/fdinfo/{}".format(pid, fd)).splitlines()
            if ":" in line)}
        if fields.get("tp_name") in kd.SCHED_EVENTS:
            links[fields["tp_name"]] = int(fields["prog_id"])
        elif "prog_type" in fields and "prog_id" in fields:
            types[int(fields["prog_id"])] = int(fields["prog_type"])
    kinds = {kd.BPF_PROG_TYPE_TRACING: "tp_btf",
             kd.BPF_PROG_TYPE_RAW_TRACEPOINT: "raw"}
    return {event: kinds.get(types.get(prog)) for event, prog in
            links.items()}


@pytest.mark.parametrize("option, kind", [([], "tp_btf"),
                                          (["--no-task-btf"], "raw")])
def test_scheduler_probes_are_tp_btf_programs_unless_told(option, kind):
    """On a kernel with BTF the scheduler probes are tp_btf programs,
    which read their task arguments with plain loads; the hidden
    --no-task-btf keeps the raw tracepoints of older kernels."""
    kd = script_module()
    assert kd.task_btf_supported(kd.choose_layout())
    seen = {}
    code, out, err = run_tool(["-p", str(os.getpid()), "--sample-time",
                               "1"] + option,
                              on_start=lambda proc: seen.update(
                                  sched_links(proc.pid)))
    assert code == 0, err
    assert seen == {event: kind for event in kd.SCHED_EVENTS}
    assert leftovers() == []


@pytest.fixture(scope="module")
def busy_raw(workload_bin):
    """Two spinners sharing a CPU for 2 s, with the scheduler probes as
    raw tracepoints (--no-task-btf)."""
    with workload_ctl.Workload(workload_bin, spin_cpu=spin_cpu()) as load:
        load.wait_spinners_sharing()
        yield Capture(load, ["--sample-time", "2", "--no-task-btf"])


@pytest.mark.parametrize("name", ["kd-spin1", "kd-spin2"])
def test_raw_tracepoints_match_schedstat_too(busy_raw, name):
    """The raw tracepoint probes (kernels without tp_btf) read the tasks
    with bpf_probe_read_kernel(): their run and ready times agree with
    the kernel's within 10 % as well."""
    thread = busy_raw.thread(name)
    lost = thread.get("LOST", 0)
    assert lost <= 3 + 0.05 * thread["THREAD RUN"]["count"], busy_raw.out
    assert_agrees(thread["THREAD RUN"]["total"], busy_raw.delta(name, 0),
                  0.10, busy_raw.skew(), lost, busy_raw.out)
    assert_agrees(thread["THREAD READY"]["total"], busy_raw.delta(name, 1),
                  0.10, busy_raw.skew(), lost, busy_raw.out,
                  busy_raw.before(name))


@pytest.mark.parametrize("name", ["kd-spin1", "kd-spin2"])
def test_run_and_ready_match_schedstat(busy, name):
    """Two spinners on one CPU: each runs about half the time, and waits
    the other half; the tool's run and ready periods agree with the
    kernel's own totals within 10 %.  A switch the kernel did not report
    (the thread's NOTE says so) leaves a period out: then the report can
    only be lower."""
    thread = busy.thread(name)
    run, ready = thread["THREAD RUN"], thread["THREAD READY"]
    on_cpu, waited = busy.delta(name, 0), busy.delta(name, 1)
    # On a loaded machine other tasks take their turns too.
    assert on_cpu > 0.05 * NSEC and waited > 0.05 * NSEC
    skew = busy.skew()      # schedstat is read a little after the edges
    lost = thread.get("LOST", 0)
    # Unreported switches are rare next to the hundreds of periods.
    assert lost <= 3 + 0.05 * run["count"], busy.out
    assert_agrees(run["total"], on_cpu, 0.10, skew, lost, busy.out)
    assert_agrees(ready["total"], waited, 0.10, skew, lost, busy.out,
                  busy.before(name))
    assert abs(run["count"] - ready["count"]) <= 1 + lost
    assert run["min"] <= run["max"] <= run["total"]
    # Always running or queued: with the periods cut by the window edges
    # counted, the two add up to the 2 s window (less any period left out).
    both = run["total"] + ready["total"]
    assert both <= 2.02 * NSEC, busy.out
    assert lost or both > 1.98 * NSEC, busy.out
    assert ready["max"] <= ready["total"]


@pytest.mark.parametrize("name", ["kd-sleep", "kd-poll", "kd-op"])
def test_sleeper_run_and_ready_match_schedstat(busy, name):
    """Threads that sleep run for microseconds per wakeup.  The kernel
    skips the run queue clock update when a wakeup preempts the CPU's
    current task (rq_clock_skip_update()), so schedstat charges the
    wakeup-to-switch latency to run time while the tracepoints see it as
    waiting.  The number of periods agrees, and so does their sum, within
    10 %.  A switch the kernel did not report (the thread's NOTE says so)
    leaves periods out: then the report can only be lower.  So can a wait
    for a CPU that began before the window (behind the tool while it
    compiled): schedstat adds all of it as it ends."""
    thread = busy.thread(name)
    run, ready = thread["THREAD RUN"], thread["THREAD READY"]
    on_cpu, waited, slices = (busy.delta(name, column)
                              for column in range(3))
    lost = thread.get("LOST", 0)
    assert abs(run["count"] - slices) <= 2 + lost
    assert_agrees(run["total"] + ready["total"], on_cpu + waited, 0.10,
                  busy.skew(), lost, busy.out, busy.before(name))
    assert run["total"] <= on_cpu, busy.out


def test_report_lists_every_active_thread_sorted(busy):
    names = list(busy.windows[0].threads)
    assert names == sorted(names)
    assert {"kd-burst", "kd-udp", "kd-sleep", "kd-poll", "kd-op",
            "kd-spin1", "kd-spin2"} <= set(names)
    for name in names:
        if name != "kd-short":      # exited; see the next test
            assert busy.windows[0].threads[name]["tid"] == busy.tids[name]


def test_thread_that_exits_inside_the_window_keeps_its_name(busy):
    thread = busy.thread("kd-short")
    assert thread["tid"] == busy.short_tid
    assert not os.path.exists("/proc/{}/task/{}".format(busy.workload.pid,
                                                        busy.short_tid))
    assert thread["SYSCALL"]["getpgid"]["count"] == SHORT_CALLS
    # glibc's pthread_create() uses clone3 (435), which bcc 0.26's own
    # table does not name.
    assert busy.thread("kd-main")["SYSCALL"]["clone3"]["count"] == 1


def test_no_stopped_section_without_stops(busy):
    assert all(thread.get("THREAD STOPPED") is None
               for thread in busy.windows[0].threads.values())


def test_nothing_left_behind(busy):
    assert busy.code == 0
    assert leftovers() == []
    assert tracefs_mounts() == busy.before_mounts


def test_several_windows(workload_bin):
    """Each window starts from empty tables."""
    with workload_ctl.Workload(workload_bin) as load:
        code, out, err = run_tool(["-p", str(load.pid), "--sample-time",
                                   "0.3", "--sample-count", "3",
                                   "--sample-interval", "0.2"])
    assert code == 0, err
    windows = report.parse(out)
    assert len(windows) == 3
    for window in windows:
        sleeps = window.threads["kd-sleep"]["SYSCALL"]["clock_nanosleep"]
        assert 13 <= sleeps["count"] <= 15         # 0.3 s / 20 ms
        assert sleeps["total"] < 0.3 * NSEC


def test_sigstop_sigcont_is_stopped_time(workload_bin):
    capture, stopped_for = sigstop_window(workload_bin)
    for name in ("kd-main", "kd-sleep", "kd-poll", "kd-op", "kd-burst",
                 "kd-udp", "kd-pollwait"):
        thread = capture.thread(name)
        stopped = thread["THREAD STOPPED"]
        if thread.get("LOST") and not stopped:
            continue            # the kernel did not report its switch
        assert stopped["count"] == 1, name
        assert stopped["total"] == stopped["max"]
        assert abs(stopped["total"] - stopped_for) < 30 * MSEC, name
    # The stop interrupted kd-pollwait inside poll(), which the kernel
    # then resumed as restart_syscall(): still one poll, no gap.
    pollwait = capture.thread("kd-pollwait")
    assert "restart_syscall" not in pollwait["SYSCALL"]
    assert pollwait["LONG POLL"]["max"] < 5 * MSEC
    # Only polls: nothing in TOTAL( - poll).
    assert "SYSCALL TOTAL" not in pollwait


def test_sigterm_ends_a_window_cleanly_and_reports_it(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        started = {}

        def terminate(proc):
            time.sleep(0.3)
            started["at"] = time.monotonic()
            proc.send_signal(signal.SIGTERM)

        code, out, err = run_tool(["-p", str(load.pid), "--sample-time",
                                   "60"], on_start=terminate)
    assert code == 0, err
    assert time.monotonic() - started["at"] < 10
    # The window closes early and is reported.
    assert re.search(r"^# Stop sampling \(interrupted\) @", out, re.M)
    assert "kd-sleep" in report.parse(out)[0].threads
    assert out.rstrip().endswith("# Interrupted")
    assert err == ""
    assert leftovers() == []


def test_output_errors(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        head = subprocess.run("{} -p {} --sample-time 0.3 | head -1".format(
            SCRIPT, load.pid), shell=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        full = subprocess.run("{} -p {} --sample-time 0.3 >/dev/full".format(
            SCRIPT, load.pid), shell=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    # A reader that stops early is no error.
    assert head.stdout.startswith("# kernel_delay ")
    assert head.stderr == ""
    one_error_line(full.returncode, full.stderr, os.EX_IOERR,
                   "cannot write the report (No space left on device)")


def test_runs_from_an_interpreter_without_bcc(workload_bin, tmp_path):
    """pyenv, conda and venv interpreters lack the distribution's bcc: the
    script moves itself to one that has it."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip",
                    str(venv)], check=True)
    python = str(venv / "bin" / "python3")
    assert subprocess.run([python, "-c", "import bcc"],
                          stderr=subprocess.DEVNULL).returncode != 0
    policies = []
    with workload_ctl.Workload(workload_bin) as load:
        code, out, err = run_tool(["-p", str(load.pid), "--sample-time",
                                   "0.3"], cmd=[python, SCRIPT],
                                  on_start=lambda proc: policies.append(
                                      tool_policy(proc.pid)))
        assert code == 0, err
        assert "kd-sleep" in report.parse(out)[0].threads
        # Boosted in both interpreters; --long-poll catches at the policy
        # the first one was started with, which the second one was told.
        proc = start_tool(["-p", str(load.pid), "--long-poll", "1000"],
                          cmd=[python, SCRIPT])
        try:
            for line in proc.stdout:
                if line.startswith("# Catching"):
                    policies.append(tool_policy(proc.pid))
                    break
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
    assert policies == [1, 0]

    env = dict(os.environ, KERNEL_DELAY_REEXEC="1")
    code, out, err = run_tool(["-p", "1"], cmd=[python, SCRIPT], env=env)
    assert code == os.EX_OSFILE
    assert err.count("\n") == 1 and err.startswith("ERROR: ")
    assert "python3-bpfcc" in err


def test_mounts_tracefs_when_needed_and_restores(workload_bin):
    """On a fresh machine tracefs is not mounted: the tool mounts it and
    unmounts it again.  Runs in a private mount namespace."""
    with workload_ctl.Workload(workload_bin) as load:
        script = ("umount /sys/kernel/tracing 2>/dev/null; "
                  "umount /sys/kernel/debug/tracing 2>/dev/null; "
                  "grep -c tracefs /proc/mounts; "
                  "{} {} -p {} --sample-time 0.3 >/dev/null || exit 9; "
                  "grep -c tracefs /proc/mounts").format(
                      sys.executable, SCRIPT, load.pid)
        result = subprocess.run(["unshare", "--mount", "sh", "-c", script],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
    assert result.returncode == 1, result.stderr   # grep -c found 0
    assert result.stdout.split() == ["0", "0"], result.stderr


def test_error_no_such_pid():
    code, out, err = run_tool(["-p", "999999999"])
    one_error_line(code, err, os.EX_NOINPUT, "does not exist")
    assert out == ""


def test_error_no_such_process_name():
    code, out, err = run_tool(["--process", "kd-no-such-process"])
    one_error_line(code, err, os.EX_NOINPUT,
                   "no running kd-no-such-process process")


def test_error_in_a_pid_namespace_of_its_own():
    """A container without --pid=host sees PIDs the kernel does not use;
    with or without --pid, the tool says so first."""
    for args in (["-p", "1"], []):
        code, out, err = run_tool(
            args, cmd=["unshare", "--pid", "--fork", "--mount-proc",
                       sys.executable, SCRIPT])
        one_error_line(code, err, os.EX_UNAVAILABLE, "--pid=host")


def test_error_several_processes_of_that_name(tmp_path):
    twin = tmp_path / "kd-twin"
    twin.symlink_to("/bin/sleep")
    sleepers = [subprocess.Popen([str(twin), "30"]) for _ in range(2)]
    try:
        wait_named(sleepers, "kd-twin")
        code, out, err = run_tool(["--process", "kd-twin"])
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    one_error_line(code, err, os.EX_USAGE, "--pid")
    assert ", ".join(str(pid) for pid in sorted(s.pid for s in sleepers)) \
        in err


def test_error_thread_id_instead_of_process_id(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        tid = load.tids()["kd-poll"]
        code, out, err = run_tool(["-p", str(tid)])
    one_error_line(code, err, os.EX_USAGE,
                   "{} is a thread of process {}; use -p {}".format(
                       tid, load.pid, load.pid))


def test_error_not_root(script_for_nobody):
    code, out, err = run_tool(
        ["-p", "1"], cmd=["setpriv", "--reuid=65534", "--regid=65534",
                          "--clear-groups", sys.executable,
                          script_for_nobody])
    one_error_line(code, err, os.EX_NOPERM, "sudo")


# ---- Real Open vSwitch ------------------------------------------------------

def test_finds_ovs_vswitchd_and_reports_its_threads(ovs):
    code, out, err = run_tool(["--sample-time", "2"])
    assert code == 0, err
    window = report.parse(out)[0]
    assert window.threads["ovs-vswitchd"]["tid"] == ovs
    names = list(window.threads) + [window.quiet]
    assert any("handler" in name for name in names), out
    revalidators = [thread for name, thread in window.threads.items()
                    if name.startswith("revalidator")]
    assert revalidators, out
    # Revalidators wake up at least every 500 ms to poll again.
    assert any(thread["SYSCALL"].get("poll", {}).get("count", 0) >= 2 and
               thread.get("LONG POLL") for thread in revalidators), out
    main = window.threads["ovs-vswitchd"]
    assert main["SYSCALL"]["poll"]["count"] >= 1
    assert main["THREAD RUN"]["count"] >= 1
