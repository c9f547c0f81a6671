# SPDX-License-Identifier: Apache-2.0
"""Bad input and a broken environment, without root: the command line
fuzzed, trigger text that tries to reach the C program, thread names
that try to break the report, and environment errors faked at the
adapters (ring buffers, bcc, zombies), plus the signal policy.
"""

import contextlib
import errno
import io
import os
import re
import signal
import subprocess
import sys
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

import report
from conftest import SCRIPT, TOP

LAYOUT_ARGS = dict(pid_offset=2000, tgid_offset=2004, state_offset=24,
                   state_size=4, on_cpu_offset=52, regs_nr_offset=120)


@contextlib.contextmanager
def fast_adapters(kd):
    """main() without reading BTF or bcc's tables: a fixed layout and
    system call table, so that each fuzzed run takes a millisecond."""
    layout = kd.TaskLayout(**LAYOUT_ARGS)
    table = {7: "poll", 271: "ppoll", 219: "restart_syscall"}
    with mock.patch.object(kd, "choose_layout", lambda: layout), \
            mock.patch.object(kd, "syscall_table", lambda: table):
        yield


def run_main(kd, argv):
    """(exit code, report, stdout, stderr) of main(argv) in-process."""
    out, stdout, stderr = io.StringIO(), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        try:
            code = kd.main(argv, out=out)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), stdout.getvalue(), stderr.getvalue()


# ---- The command line, fuzzed -----------------------------------------------

def option_strings(kd):
    strings = []
    for action in kd.build_parser()._actions:
        strings += action.option_strings
    # argparse also takes unambiguous prefixes and --opt=value.
    return strings + [s[:5] for s in strings if len(s) > 5] + \
        [s + "=" for s in strings if s.startswith("--")] + ["--", "-"]


# Text a real argv can hold: anything but NUL, including lone surrogates
# (bytes that were not UTF-8, decoded with surrogateescape).
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=24)
NUMBERS = st.one_of(
    st.integers(-2 ** 70, 2 ** 70).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "0x10", "0X",
                     "\u0663", "1_000", " 7", "7 ", "", "0", "1e-320",
                     "16384", "16385", "32768", "32769", "2592001"]))
TRIGGERS = st.builds(
    lambda kind, rest: kind + ":" + rest,
    st.sampled_from(["u", "usdt", "t", "k", "kr", "up", "ur", "upr", "x",
                     ""]),
    st.one_of(TEXT, st.sampled_from(["a:b", "libc:malloc", "a.b",
                                     "sched:sched_switch", "a:b:c"])))


@pytest.fixture(scope="module")
def argv_strategy(kd):
    token = st.one_of(st.sampled_from(option_strings(kd)), NUMBERS,
                      TRIGGERS, TEXT)
    return st.lists(token, max_size=8)


def test_fuzzed_command_lines_give_a_report_or_a_usage_error(
        kd, argv_strategy):
    """Any argv, run to the end with --ebpf (the generated program is the
    report that needs no root): exit 0 with output, or the usage error
    (exit 2), never a traceback or another exit."""
    @settings(max_examples=400, deadline=None, database=None)
    @given(argv_strategy)
    def check(argv):
        code, out, stdout, stderr = run_main(kd, argv + ["--ebpf"])
        assert "Traceback" not in stderr
        if code == 2:
            assert re.search(r"^\S+: error: ", stderr, re.M), stderr
            assert out == ""
        else:
            assert code == 0, (code, stderr)
            assert stderr == ""
            assert "RAW_TRACEPOINT_PROBE(sys_enter)" in out or \
                '"$schema"' in out or "usage:" in stdout

    with fast_adapters(kd):
        check()


def test_fuzzed_command_lines_without_ebpf(kd, argv_strategy):
    """The same without --ebpf, up to the point where root is needed:
    argument errors are usage errors, the rest one ERROR line."""
    calls = []

    def fake_run(args, out, command=(), interrupts=None):
        calls.append(args)
        return 0

    @settings(max_examples=200, deadline=None, database=None)
    @given(argv_strategy)
    def check(argv):
        code, out, stdout, stderr = run_main(kd, argv)
        assert "Traceback" not in stderr
        assert code in (0, 2), (code, stderr)
        if code == 2:
            assert re.search(r"^\S+: error: ", stderr, re.M), stderr

    with mock.patch.object(kd, "run", fake_run):
        check()
    assert calls        # some command lines were valid


# ---- Trigger text cannot reach the C program --------------------------------

C_METACHARACTERS = "\"'\\;{}()[]#/*\n\r\t %<>=&|!?,+-.~^`$@"


@pytest.mark.parametrize("role", ["start", "stop"])
def test_trigger_text_never_changes_the_program(kd, role):
    """Whatever the trigger text, the generated program is the one any
    valid trigger of that role gives, or the text is refused (exit 2)."""
    option = "--{}-trigger".format(role)
    with fast_adapters(kd):
        code, baseline, _, _ = run_main(kd, ["--ebpf", "-p", "7", option,
                                             "t:sched:sched_switch"])
        assert code == 0
        assert "int kd_{}_trigger(void *ctx)".format(role) in baseline

        @settings(max_examples=300, deadline=None, database=None)
        @given(st.sampled_from(sorted(kd.TRIGGER_KINDS)),
               st.text(st.sampled_from(C_METACHARACTERS +
                                       "abcxyz_019:"), max_size=30))
        def check(kind, rest):
            text = kind + ":" + rest
            code, out, _, stderr = run_main(
                kd, ["--ebpf", "-p", "7", option, text])
            if code == 0:
                assert out == baseline
            else:
                assert code == 2 and "error:" in stderr

        check()
        # Accepted names with dots and library paths change nothing either.
        for text in ("up:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc",
                     "k:foo.isra.0", "u:a_b:c_d", "ur:kd_op"):
            code, out, _, _ = run_main(kd, ["--ebpf", "-p", "7", option,
                                            text])
            assert (code, out) == (0, baseline)


# ---- Thread names that try to break the report ------------------------------

ODD_NAMES = {
    11: b"with space",
    12: b"100%s%n%d",
    13: b"{0} {name} }{",
    14: b"\x1b[2J\x1b[31mred",
    15: b"bad\xff\xfeutf8",
    16: b"tab\there\nline",
    17: "caf\u00e9 \u2028".encode(),
    18: b"back\\slash",
}


def test_odd_thread_names_print_safely_in_the_text_report(kd):
    threads = {}
    for tid, raw in ODD_NAMES.items():
        stats = kd.ThreadStats(tid=tid, name=kd.printable(raw))
        stats.syscalls[39] = kd.Acc(1, 1000, 1000, 1000)
        threads[tid] = stats
    quiet = [(21, kd.printable(b"q\x07uiet\xc3"), "in poll")]
    lines = kd.format_report(threads, {39: "getpid"}, (7,), quiet)
    text = "\n".join(lines)
    # Nothing a terminal would act on, and valid UTF-8.
    assert all(char.isprintable() for line in text.splitlines()
               for char in line)
    text.encode("utf-8", "strict")
    window = report.parse("# Sample dump @x\n" + text)[0]
    assert {name: data["tid"] for name, data in window.threads.items()} == {
        "with space": 11, "100%s%n%d": 12, "{0} {name} }{": 13,
        "\\x1b[2J\\x1b[31mred": 14, "bad\\xff\\xfeutf8": 15,
        "tab\\x09here\\x0aline": 16, "caf\u00e9 \\u2028": 17,
        "back\\\\slash": 18}
    assert "q\\x07uiet\\xc3 (21, in poll)" in window.quiet
    # Every thread has its own line; no name spilled into another.
    assert len(re.findall(r"\[SYSCALL STATISTICS\]$", text, re.M)) == 8


def test_thread_names_from_the_kernel_are_read_as_bytes(
        kd, tmp_path, monkeypatch):
    comm = tmp_path / "comm"
    comm.write_bytes(b"bad\xff\x1b[0m\n")
    assert kd.read_proc(str(comm)) == b"bad\xff\x1b[0m\n"
    assert kd.read_proc(str(tmp_path / "missing")) is None
    monkeypatch.setattr(kd, "read_proc", lambda path, limit=0: {
        "/proc/1/task/2/comm": comm.read_bytes()}.get(path))
    assert kd.thread_name(1, 2) == "bad\\xff\\x1b[0m"
    assert kd.thread_name(1, 3) is None
    # Names of exited threads come from a BPF map (struct name_t).
    assert kd.plain(b"ex\xffit\x00junk") == "ex\\xffit"

    class Name(kd.ctypes.Structure):
        _fields_ = [("comm", kd.ctypes.c_char * 16)]

    rows = kd.unpack_rows(kd.ctypes.c_uint32, Name,
                          kd.struct.pack("<I", 42),
                          b"\x1b]0;title\x07\xff\x00\x00\x00\x00\x00", 1)
    assert rows == [(42, ("\\x1b]0;title\\x07\\xff",))]


# ---- Environment errors -----------------------------------------------------

def one_line_error(stderr):
    assert stderr.count("\n") == 1 and stderr.startswith("ERROR: "), stderr
    assert "; " in stderr, stderr


def test_ring_buffer_probe(kd):
    calls = []

    def works(cmd, attr):
        calls.append((cmd, attr))
        return os.open(os.devnull, os.O_RDONLY), 0

    assert kd.ringbuf_supported(works) is True
    cmd, attr = calls[0]
    assert cmd == 0 and len(attr) == 128
    # BPF_MAP_TYPE_RINGBUF, no key, no value, one page.
    assert attr[:16] == kd.struct.pack("<IIII", 27, 0, 0,
                                       os.sysconf("SC_PAGE_SIZE"))
    assert not any(attr[16:])
    assert kd.ringbuf_supported(lambda c, a: (-1, errno.EINVAL)) is False
    assert kd.ringbuf_supported(lambda c, a: (-1, errno.EPERM)) is None


def test_kernel_without_ring_buffers_is_refused(kd):
    kd.check_ringbuf(True)
    kd.check_ringbuf(None)      # unknown: loading will tell
    with pytest.raises(kd.Fatal) as exc:
        kd.check_ringbuf(False)
    assert exc.value.code == os.EX_UNAVAILABLE
    one_line_error("ERROR: {}\n".format(exc.value))
    assert "no BPF ring buffers" in str(exc.value)
    assert "Linux 5.8" in str(exc.value)


def test_bpf_syscall_reports_errno(kd):
    # An unknown command: EINVAL, without root.
    result, err = kd.bpf_syscall(9999, bytes(128))
    assert result == -1 and err in (errno.EINVAL, errno.EPERM)


def test_missing_bcc_names_both_packages(kd):
    with mock.patch.object(kd, "bcc", None):
        code, out, _, stderr = run_main(kd, ["-p", "1"])
    assert code == os.EX_OSFILE
    one_line_error(stderr)
    assert "python3-bpfcc (Debian/Ubuntu)" in stderr
    assert "python3-bcc (Fedora/RHEL)" in stderr


def test_missing_psutil_names_the_package(kd):
    """Without psutil: one line saying what to install, and the exit code
    of a missing module."""
    with mock.patch.object(kd, "psutil", None), \
            mock.patch.object(kd, "bcc", kd.bcc or object()):
        code, out, _, stderr = run_main(kd, ["-p", "1"])
    assert code == os.EX_OSFILE
    one_line_error(stderr)
    assert "the Python module psutil is missing" in stderr
    assert "install python3-psutil" in stderr


def test_importing_needs_neither_psutil_nor_pytz():
    """The module imports with psutil and pytz unusable (the unit tests
    run where psutil is missing), and pytz is not used at all: UTC comes
    from the standard library."""
    code = ("import sys; sys.modules['psutil'] = None; "
            "sys.modules['pytz'] = None; sys.path.insert(0, {!r}); "
            "from conftest import load_script; "
            "print(load_script().psutil)".format(os.path.join(TOP, "tests")))
    found = subprocess.run([sys.executable, "-c", code],
                           stdout=subprocess.PIPE, timeout=300,
                           universal_newlines=True)
    assert found.stdout.strip() == "None"
    with open(SCRIPT) as script:
        source = script.read()
    assert not re.search(r"^\s*(import|from) pytz", source, re.M)


def test_zombie_pid_is_refused(kd):
    pytest.importorskip("psutil")
    zombie = subprocess.Popen(["true"])
    try:
        while kd.process_alive(zombie.pid):
            pass
        with pytest.raises(kd.Fatal) as exc:
            kd.check_pid(zombie.pid)
    finally:
        zombie.wait()
    assert exc.value.code == os.EX_NOINPUT
    assert "has exited (a zombie" in str(exc.value)


def test_process_names_in_errors_are_one_line(kd):
    with pytest.raises(kd.Fatal) as exc:
        kd.pick_target([(5, "x")], "evil\nERROR: fake\x1b[2J")
    assert "\n" not in str(exc.value) and "\x1b" not in str(exc.value)
    assert "evil\\x0aERROR: fake\\x1b[2J" in str(exc.value)
    # Odd bytes in a name given on the command line still match.
    assert kd.pick_target([(5, "a\\xffb")], "a\udcffb") == 5


def test_same_pid_another_process(kd):
    """A PID reused by another process is not the target."""
    pytest.importorskip("psutil")
    start = kd.process_fact(os.getpid(), "create_time")
    assert kd.process_alive(os.getpid(), start)
    assert not kd.process_alive(os.getpid(), start + 0.01)
    assert kd.process_fact(999999999, "create_time") is None


def test_target_gone_errors(kd):
    target = kd.Target(pid=40, name="ovs-vswitchd", exe="/usr/sbin/x",
                       start_time=5)
    none = kd.target_gone_error(target, [])
    one = kd.target_gone_error(target, [77])
    two = kd.target_gone_error(target, [90, 77])
    for text in (none, one, two):
        one_line_error("ERROR: {}\n".format(text))
        assert text.startswith("process 40 (ovs-vswitchd) exited during "
                               "the run; ")
    assert one.endswith("it was restarted as process 77: run the tool "
                        "again with -p 77")
    assert two.endswith("processes 77, 90 now run the same program: run "
                        "the tool again and choose one with --pid")


def test_successors_of_this_process(kd):
    """Another process of the same name and executable counts as a
    restart; this one does not."""
    pytest.importorskip("psutil")
    me = kd.identify_target(os.getpid())
    assert me.exe == os.path.realpath(sys.executable) or me.exe
    twin = subprocess.Popen([sys.executable, "-c",
                             "import time; time.sleep(30)"])
    try:
        fake = kd.Target(pid=-1, name=kd.process_fact(twin.pid, "name"),
                         exe=kd.process_fact(twin.pid, "exe"), start_time=0)
        assert twin.pid in kd.successors(fake)
        assert os.getpid() not in kd.successors(me)
    finally:
        twin.kill()
        twin.wait()


def test_exit_codes_are_documented(kd):
    with open(os.path.join(TOP, "kernel_delay.rst")) as rst:
        text = rst.read()
    table = text.split("Warnings, errors and exit codes", 1)[1]
    documented = {int(code) for code in
                  re.findall(r"^(\d+) {2,}\S", table, re.M)}
    assert set(kd.EXIT_CODES) <= documented | {143}
    with open(SCRIPT) as script:
        source = script.read()
    used = {getattr(os, name) for name in
            re.findall(r"os\.(EX_[A-Z]+)", source)}
    assert used <= set(kd.EXIT_CODES)


# ---- Signals ----------------------------------------------------------------

def test_first_signal_stops_at_the_next_check(kd):
    interrupts = kd.Interrupts()
    interrupts.pending()                        # nothing yet
    # The handler only notes it: it may run inside a ctypes callback.
    interrupts.handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        interrupts.pending()
    # Already stopping: later signals are ignored outside a report.
    interrupts.handler(signal.SIGTERM, None)
    interrupts.pending()
    assert not interrupts.aborted


def test_signal_during_a_shielded_step_waits_for_its_end(kd):
    interrupts = kd.Interrupts()
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.shield():
            interrupts.handler(signal.SIGTERM, None)
            interrupts.handler(signal.SIGINT, None)
            steps.append("finished")
    assert steps == ["finished"]
    assert not interrupts.aborted


def test_report_finishes_on_the_first_signal_and_aborts_on_the_second(kd):
    interrupts = kd.Interrupts()
    with pytest.raises(KeyboardInterrupt):
        with interrupts.writing():
            interrupts.handler(signal.SIGINT, None)     # noted
            with interrupts.writing():
                pass            # nested: still writing
            assert interrupts.count == 1
    interrupts = kd.Interrupts()
    with pytest.raises(kd.Abort) as exc:
        with interrupts.writing():
            interrupts.handler(signal.SIGTERM, None)
            interrupts.handler(signal.SIGTERM, None)
    assert exc.value.signum == signal.SIGTERM and interrupts.aborted
    interrupts.handler(signal.SIGINT, None)     # after the abort: nothing


def test_window_interrupted_then_report_cut_short(kd):
    interrupts = kd.Interrupts()
    interrupts.handler(signal.SIGINT, None)         # inside the window
    with pytest.raises(KeyboardInterrupt):
        interrupts.pending()
    with pytest.raises(kd.Abort):
        with interrupts.writing():                  # its report
            interrupts.handler(signal.SIGINT, None)


def test_write_out_writes_everything_to_a_file_descriptor(kd, tmp_path):
    path = tmp_path / "out"
    with open(str(path), "w") as out:
        out.write("buffered ")
        kd.write_out(out, "x" * 100000 + "\n")
    assert path.read_text() == "buffered " + "x" * 100000 + "\n"
    with pytest.raises(kd.OutputError):
        with open("/dev/full", "w") as full:
            kd.write_out(full, "y\n")


def test_error_messages_are_documented(kd):
    """Every fixed part of every ERROR message is in the rst's table."""
    with open(os.path.join(TOP, "kernel_delay.rst")) as rst:
        docs = " ".join(rst.read().replace("``", "").split())
    with open(SCRIPT) as script:
        source = script.read()
    calls = re.findall(r'raise Fatal\(((?:\s*"(?:[^"\\]|\\.)*")+)', source)
    assert len(calls) >= 20
    for call in calls:
        text = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call))
        for fragment in re.split(r"\{[^}]*\}", text):
            fragment = " ".join(fragment.split())
            if len(fragment) >= 12:
                assert fragment in docs, fragment


def test_error_lines_stay_one_line(kd, capsys):
    def fail(*_args, **_kwargs):
        raise kd.Fatal("bcc said: line one\nline two\x1b[0m; fix it", 70)

    with mock.patch.object(kd, "run", fail):
        assert kd.main(["-p", "1"]) == 70
    err = capsys.readouterr().err
    assert err == "ERROR: bcc said: line one\\x0aline two\\x1b[0m; fix it\n"


def test_signal_inside_a_ring_buffer_callback_ends_the_window(kd):
    pytest.importorskip("psutil")       # the Sampler watches the target
    """The handler may run while bcc calls back into Python for a ring
    buffer event; the window still closes at the next check, reported."""
    from fakes import (POLL_NRS, SYSCALL_NAMES, Clock, FakeProbes,
                       report_rows)

    interrupts = kd.Interrupts()

    class SignalInPoll(FakeProbes):
        def poll(self, timeout_ms):
            interrupts.handler(signal.SIGINT, None)
            return []

    args = kd.parse_args(["-p", str(os.getpid()), "--sample-time", "60",
                          "--sample-count", "3"])
    out = io.StringIO()
    sampler = kd.Sampler(SignalInPoll(kd, report_rows(kd)), args, out,
                         kd.RunContext(kd.Target(args.pid), SYSCALL_NAMES,
                                       POLL_NRS), clock=Clock(),
                         interrupts=interrupts)
    with pytest.raises(KeyboardInterrupt):
        sampler.run()
    text = out.getvalue()
    assert re.search(r"^# Stop sampling \(interrupted\) @", text, re.M)
    assert text.count("# Sample dump @") == 1


class RefusingOutput(io.StringIO):
    """Standard output that fails every write with err."""

    def __init__(self, err):
        super().__init__()
        self.err = err

    def write(self, text):
        raise self.err


@pytest.mark.parametrize("argv", [["--json-schema"], ["--ebpf", "-p", "1"]])
def test_output_errors_of_the_printing_options(kd, argv, capsys):
    full = RefusingOutput(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert kd.main(argv, out=full) == os.EX_IOERR
    err = capsys.readouterr().err
    assert err.startswith("ERROR: cannot write the report") and \
        err.count("\n") == 1
    closed = RefusingOutput(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert kd.main(argv, out=closed) == os.EX_OK
    assert capsys.readouterr().err == ""
