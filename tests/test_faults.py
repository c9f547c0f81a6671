# SPDX-License-Identifier: Apache-2.0
"""Faults on the real kernel: the target exits or restarts, signals at
every stage of a run, SIGKILL, and environment errors.  After each, the
run must leave nothing behind: no BPF program, link or map it held, no
uprobe or kprobe definition in tracefs, no temporary directory.
"""

import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import bpf_objects
import report
import workload_ctl
from conftest import (RUN_PIDS, SCRIPT, TOP, file_text, leftovers,
                      one_error_line, run_json, run_tool, script_module,
                      start_tool, stderr_line, wait_until)

F_SETPIPE_SZ = 1031


@pytest.fixture(scope="module")
def workload_copy(tmp_path_factory):
    """The workload built under a name of its own: the restart test looks
    for a process running the same executable."""
    return workload_ctl.build(str(tmp_path_factory.mktemp("faults")))


@pytest.fixture
def load(workload_copy):
    with workload_ctl.Workload(workload_copy) as workload:
        yield workload


class Tool:
    """kernel_delay.py running in the background, read line by line."""

    def __init__(self, args, pipe_size=None):
        # Unbuffered: communicate() in finish() reads the pipe itself, and
        # would lose what a buffered readline() had read ahead (on a busy
        # machine the tool writes past the line awaited before we read).
        self.proc = subprocess.Popen(
            [SCRIPT] + list(args), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=TOP, bufsize=0)
        RUN_PIDS.append(self.proc.pid)
        if pipe_size:
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, pipe_size)
        self.lines = []
        self.held = set()

    def read_until(self, prefix, timeout=30):
        """Read lines until one starts with prefix; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise AssertionError("no line '{}' in:\n{}{}".format(
                    prefix, "".join(self.lines),
                    self.proc.stderr.read().decode()))
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError("timeout waiting for " + prefix)

    def note_held(self):
        """Record the BPF objects the tool holds now."""
        self.held |= bpf_objects.held_by(self.proc.pid)
        return self.held

    def finish(self, timeout=30):
        """(exit code, whole stdout, stderr) once the tool has exited."""
        out, err = self.proc.communicate(timeout=timeout)
        return (self.proc.returncode, "".join(self.lines) + out.decode(),
                err.decode())

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def trees_of(pid):
    return [path for parent in ("/dev/shm", tempfile.gettempdir())
            for path in glob.glob(os.path.join(
                parent, "kernel_delay.{}.*".format(pid)))]


@pytest.fixture(scope="module")
def headers(kd):
    """The kernel's headers are installed (no include tree is made)."""
    return kd.headers_available()


def compiling(pid, headers):
    """The tool is compiling: its include tree exists (when the kernel's
    headers are not installed), or it has mapped libbcc and holds no BPF
    object yet.  Cheap: wait_until() asks every 10 ms while the compiler
    runs, and compiling takes seconds."""
    if not headers:
        return bool(trees_of(pid))
    try:
        with open("/proc/{}/maps".format(pid)) as maps:
            return "libbcc" in maps.read()
    except OSError:
        return False


def assert_nothing_left(tool):
    """Nothing the tool held or made outlives it."""
    assert tool.held, "the test saw no BPF object of the tool"
    assert bpf_objects.still_there(tool.held) == set()
    assert trees_of(tool.proc.pid) == []
    assert leftovers() == []


def blocked_writing(pid):
    """The process sleeps in a write to a full pipe."""
    try:
        with open("/proc/{}/wchan".format(pid)) as wchan:
            return wchan.read().strip().endswith("pipe_write")
    except OSError:
        return False


# ---- The target exits or restarts -----------------------------------------

def test_target_exits_inside_a_window(load):
    """The window is reported, the run ends with when the target exited
    and exit code 75 (EX_TEMPFAIL)."""
    quit_at, held = {}, set()

    def quit_workload(proc):
        held.update(bpf_objects.held_by(proc.pid))
        time.sleep(0.2)
        quit_at["local"] = time.time()
        load.command("quit")

    code, out, err = run_tool(
        ["-p", str(load.pid), "--stop-trigger",
         "t:syscalls:sys_enter_getsid", "--sample-count", "3"],
        on_start=quit_workload, timeout=30)
    assert code == os.EX_TEMPFAIL, err
    assert err == "ERROR: process {} (kd-main) exited during the run; the " \
        "windows above are all that was captured; run the tool again " \
        "once it is back\n".format(load.pid)
    assert re.search(r"^# Stop sampling \(process exited\) @", out, re.M)
    window = report.parse(out)[0]
    assert "kd-sleep" in window.threads
    last = out.rstrip().splitlines()[-1]
    match = re.match(r"# Process {} \(kd-main\) exited @(\S+) ".format(
        load.pid), last)
    assert match, out
    # When: noticed within the polling period, WATCH_MS (more on a
    # loaded machine).
    noticed = time.mktime(time.strptime(match.group(1)[:19],
                                        "%Y-%m-%dT%H:%M:%S")) + \
        float("0" + match.group(1)[19:])
    assert 0 <= noticed - quit_at["local"] < \
        script_module().WATCH_MS / 1000 + 1
    assert out.count("# Sample dump @") == 1, out
    assert held and bpf_objects.still_there(held) == set()
    assert leftovers() == []


def test_normal_end_leaves_nothing(load):
    tool = Tool(["-p", str(load.pid), "--sample-time", "0.2"])
    try:
        tool.read_until("# Start sampling")
        tool.note_held()
        code, out, err = tool.finish()
    finally:
        tool.kill()
    assert (code, err) == (0, "")
    assert_nothing_left(tool)


def test_target_exits_while_waiting_for_a_trigger(load):
    def quit_workload(_proc):
        load.command("quit")

    code, out, err = run_tool(
        ["-p", str(load.pid), "--start-trigger",
         "t:syscalls:sys_enter_getsid"], on_waiting=quit_workload,
        timeout=30)
    assert code == os.EX_TEMPFAIL, err
    assert "exited during the run" in err and err.count("\n") == 1
    assert "# Start sampling" not in out
    assert re.search(r"^# Process \d+ \(kd-main\) exited @", out, re.M)


def test_target_restarts_between_windows(workload_copy):
    """A new process of the same program replaces the target between two
    windows: the run stops and names the new PID."""
    first = workload_ctl.Workload(workload_copy)
    second = []

    def restart(_proc):
        # As a supervisor would: the new process runs before the tool
        # notices that the old one is gone.
        if not second:
            second.append(workload_ctl.Workload(workload_copy))
            first.stop()

    try:
        code, out, err = run_tool(
            ["-p", str(first.pid), "--sample-time", "0.2",
             "--sample-count", "4", "--sample-interval", "1"],
            on_stop=restart, timeout=30)
    finally:
        first.stop()
        for load in second:
            load.stop()
    new = second[0].pid
    assert code == os.EX_TEMPFAIL, err
    assert err == "ERROR: process {} (kd-main) exited during the run; the " \
        "windows above are all that was captured; it was restarted as " \
        "process {}: run the tool again with -p {}\n".format(
            first.pid, new, new)
    assert out.count("# Sample dump @") == 1, out
    assert "# Start sampling" in out.split("# Sample dump")[0]
    assert out.count("# Start sampling") == 1
    assert leftovers() == []


# ---- Signals at every stage -----------------------------------------------

@pytest.mark.parametrize("signals", [
    (signal.SIGINT,), (signal.SIGTERM, signal.SIGINT)])
def test_signals_while_compiling(load, headers, signals):
    """A signal while the program compiles takes effect once it is loaded
    (a second one changes nothing): a clean end, nothing attached."""
    tool = Tool(["-p", str(load.pid), "--sample-time", "30"])
    try:
        assert wait_until(lambda: compiling(tool.proc.pid, headers))
        for signum in signals:
            tool.proc.send_signal(signum)
            time.sleep(0.02)
        code, out, err = tool.finish()
    finally:
        tool.kill()
    assert (code, err) == (0, "")
    assert out == "# Interrupted\n"
    assert trees_of(tool.proc.pid) == []
    assert leftovers() == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_waiting_for_a_trigger(load, signum):
    tool = Tool(["-p", str(load.pid), "--start-trigger",
                 "t:syscalls:sys_enter_getsid"])
    try:
        tool.read_until("# Waiting for start trigger")
        tool.note_held()
        tool.proc.send_signal(signum)
        code, out, err = tool.finish()
    finally:
        tool.kill()
    assert (code, err) == (0, "")
    assert "# Start sampling" not in out
    assert out.endswith("\n# Interrupted\n")
    assert_nothing_left(tool)


def big_report_run(load):
    """A run whose report cannot fit in its (small) output pipe."""
    assert load.command("crowd 40") == "ok crowd 40"
    tool = Tool(["-p", str(load.pid), "--sample-time", "0.3",
                 "--sample-count", "5"], pipe_size=4096)
    tool.read_until("# Stop sampling")
    tool.note_held()
    # The report does not fit: the tool waits for us to read.
    assert wait_until(lambda: blocked_writing(tool.proc.pid), timeout=10)
    return tool


def test_first_signal_during_a_report_lets_it_finish(load):
    """Ctrl-C while a report is being written: the report is written in
    full, then the run ends (no further window)."""
    tool = big_report_run(load)
    try:
        tool.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        code, out, err = tool.finish()
    finally:
        tool.kill()
    assert (code, err) == (0, "")
    windows = report.parse(out)
    assert len(windows) == 1
    # All 40 crowd threads (kd-cNNNNN) are there, with events or quiet.
    crowd = {name for name in windows[0].threads
             if re.match(r"kd-c\d{5}$", name)}
    crowd |= set(re.findall(r"kd-c\d{5}(?= \()", windows[0].quiet))
    assert len(crowd) == 40
    assert {"kd-sleep", "kd-poll", "kd-op"} <= set(windows[0].threads)
    assert out.endswith("\n# Interrupted\n")
    assert_nothing_left(tool)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_during_a_report_exits_at_once(load, signum):
    """A second one cuts the report short, even with nobody reading:
    exit code 128 + the signal number, nothing left behind."""
    tool = big_report_run(load)
    try:
        tool.proc.send_signal(signum)
        time.sleep(0.1)
        tool.proc.send_signal(signum)
        # Nobody reads, yet the tool ends.
        tool.proc.wait(timeout=5)
        code, out, err = tool.finish()
    finally:
        tool.kill()
    assert (code, err) == (128 + signum, "")
    assert "# Interrupted" not in out
    assert out.count("# Sample dump @") == 1, out
    assert_nothing_left(tool)


# ---- SIGKILL ----------------------------------------------------------------

def test_sigkill_in_a_window_leaves_nothing(load):
    """kill -9 of a run with uprobe triggers, inside a window: the kernel
    frees everything, and the include tree was already gone."""
    tool = Tool(["-p", str(load.pid), "--start-trigger", "up:kd_op",
                 "--stop-trigger", "ur:kd_op", "--sample-count", "1000"])
    try:
        tool.read_until("# Start sampling")
        held = tool.note_held()
        assert {kind for kind, _ in held} == {"prog", "link", "map"}
        assert trees_of(tool.proc.pid) == []
        os.kill(tool.proc.pid, signal.SIGKILL)
        tool.proc.wait(timeout=5)
    finally:
        tool.kill()
    assert_nothing_left(tool)


def test_sigkill_while_compiling_then_next_run_cleans_up(load, headers):
    """The one window where SIGKILL leaves a file: the include tree while
    the compiler reads it.  The next run removes it."""
    if headers:
        pytest.skip("kernel headers are installed: no include tree")
    tool = Tool(["-p", str(load.pid), "--sample-time", "30"])
    try:
        assert wait_until(lambda: compiling(tool.proc.pid, headers))
        os.kill(tool.proc.pid, signal.SIGKILL)
        tool.proc.wait(timeout=5)
    finally:
        tool.kill()
    assert trees_of(tool.proc.pid) != []
    code, out, err = run_tool(["-p", str(load.pid), "--sample-time", "0.1"])
    assert code == 0, err
    assert trees_of(tool.proc.pid) == []
    assert leftovers() == []


# ---- SIGHUP and --output FIFO ---------------------------------------------

def test_sighup_finishes_the_window_and_writes_the_report(tmp_path):
    """An ssh session that drops sends SIGHUP: the window open then is
    reported in full to --output, and the run ends cleanly."""
    path = str(tmp_path / "report.txt")
    proc = start_tool(["-p", str(os.getpid()), "--sample-time", "30",
                       "--output", path])
    try:
        assert wait_until(lambda: "# Start sampling" in file_text(path),
                          timeout=60)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    # Standard error has the progress lines only (no error).
    assert proc.returncode == 0, err
    assert "# Stop sampling (interrupted)" in err
    assert all(line.startswith("#") for line in err.splitlines()), err
    text = file_text(path)
    assert "# Stop sampling (interrupted)" in text
    assert "# Sample dump @" in text and "\n# VERDICT\n" in text
    assert text.endswith("\n# Interrupted\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT,
                                    signal.SIGHUP])
def test_fifo_without_reader_ends_on_a_signal(tmp_path, signum):
    """--output FIFO that no one opens: the tool waits, saying so, and a
    signal ends the wait (a blocking open() would hang for good)."""
    fifo = str(tmp_path / "report.fifo")
    os.mkfifo(fifo)
    proc = start_tool(["-p", str(os.getpid()), "--output", fifo])
    try:
        line = stderr_line(proc, timeout=20)
        proc.send_signal(signum)
        # Without the fix, the open() blocks and this times out.
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert line == "# Waiting for a reader of the FIFO {}\n".format(fifo)
    assert (proc.returncode, out, err) == (0, "# Interrupted\n", "")


def test_fifo_gets_the_report_once_read(tmp_path):
    fifo = str(tmp_path / "report.fifo")
    os.mkfifo(fifo)
    proc = start_tool(["-p", str(os.getpid()), "--sample-time", "0.1",
                       "--output", fifo])
    try:
        assert stderr_line(proc).startswith("# Waiting for a reader")
        with open(fifo) as reader:
            text = reader.read()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out) == (0, "")
    # Standard error has the progress lines only (no error).
    assert err.startswith("# Start sampling"), err
    assert all(line.startswith("#") for line in err.splitlines()), err
    assert "# Sample dump @" in text and "\n# VERDICT\n" in text


# ---- Environment errors -----------------------------------------------------

def in_private_mounts(setup, args, prefix=""):
    """Run the tool (behind prefix) after shell commands setup, in a
    mount namespace of its own."""
    script = "{}; exec {} {} {} {}".format(
        setup, prefix, sys.executable, SCRIPT, " ".join(args))
    return run_tool([], cmd=["unshare", "--mount", "sh", "-c", script])


def test_error_no_btf_and_no_headers(load, headers):
    if headers:
        pytest.skip("kernel headers are installed")
    code, out, err = in_private_mounts(
        "mount -t tmpfs none /sys/kernel/btf", ["-p", str(load.pid)])
    one_error_line(code, err, os.EX_UNAVAILABLE,
                   "this kernel has no BTF (/sys/kernel/btf/vmlinux) and "
                   "no headers are installed for it")
    assert out == ""


def test_no_headers_at_all(load):
    """Neither the kernel's headers nor the C library's copy of them (a
    bare container): the tool generates what BCC includes, USDT argument
    readers too."""
    hide = " && ".join("mount -t tmpfs none " + path for path in (
        "/usr/include", "/lib/modules", "/usr/src"))
    code, out, err = in_private_mounts(
        hide + " && ! test -e /usr/include/linux/types.h",
        ["-p", str(load.pid), "--start-trigger", "u:kd_workload:op_start",
         "--sample-time", "0.2"])
    assert code == 0, err
    assert re.search(r"^# Start sampling \(trigger@\d+\)", out, re.M), out
    assert "kd-sleep" in report.parse(out)[0].threads
    assert leftovers() == []


def test_error_tracefs_cannot_be_mounted(load):
    """A container without CAP_SYS_ADMIN, tracefs not mounted."""
    code, out, err = in_private_mounts(
        "umount /sys/kernel/tracing 2>/dev/null; "
        "umount /sys/kernel/debug/tracing 2>/dev/null",
        ["-p", str(load.pid)], prefix="{} --bounding-set=-sys_admin "
        "--inh-caps=-sys_admin".format(shutil.which("setpriv")))
    one_error_line(code, err, os.EX_UNAVAILABLE,
                   "tracefs is not mounted and mounting it failed; run "
                   "'mount -t tracefs nodev /sys/kernel/tracing'")
    assert out == ""


def test_ring_buffers_are_detected(kd):
    assert kd.ringbuf_supported() is True


def test_error_process_is_a_zombie(kd):
    zombie = subprocess.Popen(["true"])
    try:
        assert wait_until(lambda: not kd.process_alive(
            zombie.pid), timeout=5)
        code, out, err = run_tool(["-p", str(zombie.pid)])
    finally:
        zombie.wait()
    one_error_line(code, err, os.EX_NOINPUT,
                   "process {} has exited (a zombie".format(zombie.pid))


# ---- Thread names that try to break the report ---------------------------

LIVE_NAME = b"kd \x1b[31m%s{}"              # kd-main renamed
LIVE_SHOWN = "kd \\x1b[31m%s{}"
EXITED_NAME = b"ex\xff\xfe\n{%d}"           # a thread that exits
EXITED_SHOWN = "ex\\xff\\xfe\\x0a{%d}"


def test_odd_thread_names_from_the_kernel(load):
    """Names with escape sequences, format characters, braces, a newline
    and bytes that are not UTF-8, read from /proc (a live thread) and
    recorded by the kernel as a thread exits: escaped alike in the text
    report and in JSON, and nothing a terminal would act on."""
    assert load.command("rename " + LIVE_NAME.hex()) == "ok rename"
    main_tid = load.pid
    exited = []

    def exit_a_thread(_proc):
        answer = load.command("shortname {} 7".format(EXITED_NAME.hex()))
        exited.append(int(answer.split()[3]))

    code, text, err = run_tool(["-p", str(load.pid), "--sample-time",
                                "0.4"], on_start=exit_a_thread)
    assert (code, err) == (0, "")
    assert "\x1b" not in text and "\ufffd" not in text
    assert all(char.isprintable() for line in text.splitlines()
               for char in line)
    threads = report.parse(text)[0].threads
    assert threads[LIVE_SHOWN]["tid"] == main_tid
    assert threads[EXITED_SHOWN]["tid"] == exited[0]
    assert threads[EXITED_SHOWN]["SYSCALL"]["getpgid"]["count"] == 7

    # JSON Lines (checked against the schema, pure ASCII).
    code, docs, err = run_json(["-p", str(load.pid), "--sample-time",
                                "0.4"], on_start=exit_a_thread)
    assert code == 0, err
    sample = [doc for doc in docs if doc["type"] == "sample"][0]
    names = {thread["tid"]: thread["name"] for thread in sample["threads"]}
    assert names[main_tid] == LIVE_SHOWN
    assert names[exited[1]] == EXITED_SHOWN


# A program clang compiles and this kernel's verifier rejects: the pointer
# may walk 512 KiB past an 8-byte map value.
REJECTED_PROGRAM = r"""
BPF_ARRAY(kd_counts, u64, 4);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
    u32 slot = args->id & 3;
    u64 *value = kd_counts.lookup(&slot);
    if (!value)
        return 0;
    value += args->id & 0xffff;
    *value += 1;
    return 0;
}
"""


def test_a_rejected_program_is_told_in_the_verifiers_words(kd):
    """The load error names the program and the verifier's reason, as this
    kernel's verifier words it, and blames neither ring buffers nor the
    compiler."""
    import bcc
    tree = kd.new_tree_dir()
    kd.make_include_tree(tree)
    os.environ["BCC_KERNEL_SOURCE"] = tree
    try:
        with kd.CapturedStderr() as errors:
            with pytest.raises(Exception) as failure:
                bcc.BPF(text=REJECTED_PROGRAM)
    finally:
        del os.environ["BCC_KERNEL_SOURCE"]
        shutil.rmtree(tree)
    line = kd.load_failure(failure.value, errors.text, True)
    assert line.startswith("the kernel's verifier rejected the eBPF program "
                           "tracepoint__raw_syscalls__sys_enter: ")
    assert "invalid access to map value" in line
    assert "ring buffers" not in line and "\n" not in line


def test_a_compiler_that_exits_leaves_one_error_line(load, tmp_path):
    """LLVM ends the process with exit(1) on some errors (an eBPF program
    over the 512-byte stack): no exception reaches Python.  A copy of the
    script whose wakeup probe keeps a 900-byte struct on the stack still
    ends with one ERROR line, exit code 70, and no include tree left."""
    text = file_text(SCRIPT)
    probe = "KD_SCHED_PROBE(sched_wakeup)\n{\n"
    assert text.count(probe) == 1
    big = ("BPF_HASH(kd_big_map, u32, struct lp_t, 1);\n\n" + probe +
           "    struct lp_t kd_big = {};\n    u32 kd_key = 0;\n\n"
           "    kd_big.start = bpf_ktime_get_ns();\n"
           "    kd_big_map.update(&kd_key, &kd_big);\n")
    copy = tmp_path / "kernel_delay.py"
    copy.write_text(text.replace(probe, big))
    code, out, err = run_tool(["-p", str(load.pid), "--sample-time", "1"],
                              cmd=[sys.executable, str(copy)])
    one_error_line(code, err, os.EX_SOFTWARE, "BPF stack limit of 512 bytes")
    assert out == ""
    assert trees_of(RUN_PIDS[-1]) == []
    assert leftovers() == []
