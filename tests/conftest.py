# SPDX-License-Identifier: Apache-2.0
"""What the tests share: fixtures, and the helpers that run the real tool.

Test files come in two kinds, told apart by name:
- tests/test_*_unit.py need neither root nor bcc: they call the script's
  functions on made-up data (tests/fakes.py) or run it where it stops
  before loading anything (usage errors, --help, --json-schema).
- every other tests/test_*.py is privileged: its tests load real eBPF
  programs on the running kernel.  They skip when that is not possible here
  (not root, no bcc, no BTF), except under CI=true, where a skip would hide
  a broken test bed: there they fail instead.  The privileged marker comes
  from the file name (pytest_collection_modifyitems below); `-m "not
  privileged"` and `tests/*_unit.py` select the same tests.
"""

import collections
import functools
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import report
import workload_ctl

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
SCRIPT = os.path.join(TOP, "kernel_delay.py")
sys.path.insert(0, HERE)

NSEC = 1000 * 1000 * 1000
MSEC = 1000 * 1000
# What the workload is told to do, in counts no rounding can produce.
BURST = 997         # a prime
DATAGRAMS = 101
SHORT_CALLS = 13


# ---- Map rows as Probes.rows() decodes them ---------------------------------
# kernel_delay.record_type() names a row's fields as the C struct does;
# the unit tests build rows from these (test_row_fixtures_match_the_c
# holds them to the C source).

def _row(struct, fields, **defaults):
    return collections.namedtuple(struct, fields, defaults=[
        defaults.get(name, 0) for name in fields.split()])


AccRow = _row("acc_t", "count total min max")
SysSlot = _row("sys_slot_t", "nr pad acc", acc=AccRow())
SysStart = _row("sys_start_t", "window ts nr poll_ret restart_nr restarting "
                "slots", slots=(SysSlot(),) * 4)
Budget = _row("budget_t", "sleep_start sleep_nr unknown stop_ready call_done "
              "in_use slept_nr slept")
Named = _row("named_t", "pid tgid ns comm", comm="")
Wait = _row("wait_t", "cpu pad snap held moved named since",
            snap=(0, 0, 0), held=(0, 0, 0), named=(Named(),) * 4)
Sched = _row("sched_t", "run_start ready_start stop_start switched lost run "
             "ready stop budget wait", run=AccRow(), ready=AccRow(),
             stop=AccRow(), budget=Budget(), wait=Wait())
CpuHold = _row("cpu_hold_t", "waiting window last cur_kind held idx known "
               "seg", held=(0, 0, 0), seg=())
LpSlot = _row("lp_slot_t", "ns key tgid name", name="")
Lp = _row("lp_t", "start run0 ready0 stop0 stop_ready0 gen rest softirq "
          "sleep holder hardirq", rest=(0, 0, 0), softirq=(0,) * 10,
          sleep=(), holder=(), hardirq=())
ROWS = (AccRow, SysSlot, SysStart, Budget, Named, Wait, Sched, CpuHold,
        LpSlot, Lp)


# ---- The script -------------------------------------------------------------

def load_script():
    """kernel_delay.py imported afresh (importing has no side effects)."""
    spec = importlib.util.spec_from_file_location("kernel_delay", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def script_module():
    """kernel_delay.py imported once for the run: the kd fixture, and the
    helpers that need it outside a test (run_json's schema)."""
    return load_script()


@pytest.fixture(scope="session")
def workload_bin(tmp_path_factory):
    """tests/workload.c, built once per run (in check-vm's guest, the
    binary its host built)."""
    return workload_ctl.build(str(tmp_path_factory.mktemp("workload")))


@pytest.fixture(scope="session")
def kd():
    """kernel_delay.py imported as a module."""
    return script_module()


@pytest.fixture(scope="session")
def script_for_nobody():
    """A copy of the script that user nobody can read: the clone may be in
    a directory only its owner can enter (/root, mktemp -d)."""
    where = tempfile.mkdtemp(prefix="kd-nobody.")
    try:
        os.chmod(where, 0o755)
        script = os.path.join(where, "kernel_delay.py")
        shutil.copy(SCRIPT, script)
        os.chmod(script, 0o755)
        yield script
    finally:
        shutil.rmtree(where)


# ---- The privileged gate: by file name --------------------------------------

def is_privileged(path):
    """Tests in tests/*_unit.py run anywhere; all others load eBPF."""
    return not os.path.basename(str(path)).endswith("_unit.py")


def privileged_problem():
    """Why privileged tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "the bcc Python module is missing for " + sys.executable
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "no kernel BTF"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_privileged(item.path):
            item.add_marker(pytest.mark.privileged)
        elif item.get_closest_marker("privileged"):
            raise pytest.UsageError(
                "{}: a privileged test in an unprivileged file; move it to "
                "a file whose name does not end in _unit.py".format(
                    item.nodeid))
    problem = privileged_problem()
    if problem is None:
        return
    for item in items:
        if "privileged" in item.keywords:
            if os.environ.get("CI") == "true":
                item.add_marker(pytest.mark.usefixtures("_ci_must_not_skip"))
            else:
                item.add_marker(pytest.mark.skip(
                    reason="privileged test: " + problem))


@pytest.fixture
def _ci_must_not_skip():
    pytest.fail("privileged test cannot run under CI=true: " +
                privileged_problem())


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "privileged: loads eBPF programs on the running kernel "
        "(every test of a file whose name does not end in _unit.py)")


# ---- Running the tool -------------------------------------------------------

# make check-vm's guest compiles under software emulation: 40 to 90 s.
DEFAULT_TIMEOUT = 600 if os.environ.get("KD_IN_GUEST") == "1" else 90

# Tools started by these tests (the script re-executes itself in place,
# so the PID stays the same).
RUN_PIDS = []


def run_tool(args, on_start=None, on_stop=None, timeout=DEFAULT_TIMEOUT,
             cmd=None, env=None, on_waiting=None, on_line=None):
    """Run kernel_delay.py; call on_start/on_stop(process) when the window
    opens and closes, on_waiting when it waits for a start trigger,
    on_line(line) on every line.  Returns (exit code, stdout, stderr)."""
    cmd = (cmd or [SCRIPT]) + list(args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True,
                            bufsize=1, cwd=TOP, env=env)
    RUN_PIDS.append(proc.pid)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line:
                on_line(line)
            if line.startswith("# Start sampling") and on_start:
                on_start(proc)
            elif line.startswith("# Stop sampling") and on_stop:
                on_stop(proc)
            elif line.startswith("# Waiting for start") and on_waiting:
                on_waiting(proc)
        stderr = proc.stderr.read()
        code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    return code, "".join(lines), stderr


def run_json(args, on_start=None, timeout=90):
    """Run the tool with --format json; on_start(proc) when the window
    opens (said on standard error).  Every document must validate.
    Returns (code, documents, stderr)."""
    proc = subprocess.Popen([SCRIPT, "--format", "json"] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, bufsize=1, cwd=TOP)
    RUN_PIDS.append(proc.pid)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    out = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    err = []
    try:
        for line in proc.stderr:
            err.append(line)
            if line.startswith("# Start sampling") and on_start:
                on_start(proc)
        code = proc.wait()
        reader.join()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert out[0].isascii()
    docs = documents(out[0])
    for doc in docs:
        validate(script_module(), doc)
    return code, docs, "".join(err)


def start_tool(args, cmd=None, **kwargs):
    """kernel_delay.py (or cmd) in the background, its pid noted for
    leftovers()."""
    proc = subprocess.Popen((cmd or [SCRIPT]) + list(args), cwd=TOP,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, **kwargs)
    RUN_PIDS.append(proc.pid)
    return proc


def stderr_line(proc, timeout=30):
    """The next line the tool writes to standard error, or ''."""
    if not select.select([proc.stderr], [], [], timeout)[0]:
        return ""
    return proc.stderr.readline()


def documents(text):
    """The JSON documents of --format json output, one a line."""
    return [json.loads(line) for line in text.splitlines()]


def validate(kd, doc):
    """doc is valid against the schema the script prints."""
    import jsonschema
    jsonschema.Draft7Validator(kd.json_schema()).validate(doc)


def one_error_line(code, err, expected_code, fragment):
    """The run ended with exit code expected_code and one line
    'ERROR: what; how to fix' holding fragment, no traceback."""
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("ERROR: "), err
    assert "Traceback" not in err
    assert "; " in err         # what; how to fix
    assert fragment in err


def wait_until(predicate, timeout=30, step=0.01):
    """Poll predicate until it holds (True) or timeout seconds pass
    (False).  predicate must be cheap: it runs every step seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def wait_named(procs, name, timeout=30):
    """Wait until every process of procs (Popen) runs under name (its
    exec done), as the tool's --process will find it."""
    assert wait_until(lambda: all(
        file_text("/proc/{}/comm".format(proc.pid)).strip() == name
        for proc in procs), timeout)


def file_text(path):
    """The text of path, or '' when it cannot be read (yet)."""
    try:
        with open(path) as text:
            return text.read()
    except OSError:
        return ""


def tracefs_mounts():
    with open("/proc/mounts") as mounts:
        return sorted(line.split()[1] for line in mounts
                      if line.split()[2] == "tracefs")


def leftovers():
    """Traces of the tests' runs: temporary trees, probe definitions."""
    prefixes = tuple("kernel_delay.{}.".format(pid) for pid in RUN_PIDS)
    found = [name for tmp in (tempfile.gettempdir(), "/dev/shm")
             if os.path.isdir(tmp)
             for name in os.listdir(tmp) if name.startswith(prefixes)]
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        for table in ("uprobe_events", "kprobe_events"):
            try:
                with open(os.path.join(path, table)) as events:
                    found += [line.strip() for line in events
                              if line.strip()]
            except OSError:
                pass
    return found


# ---- The workload under the tool --------------------------------------------

def assert_agrees(tool, kernel, share, slack=0, lost=0, context="",
                  before=0):
    """The tool's figure (ns) agrees with the kernel's own (schedstat)
    within share of it plus slack ns (how late schedstat was read).  A
    thread whose report says the kernel did not report some of its
    switches (lost) has the periods around them left out: then its figure
    can only be lower.  (A minimal bcc program on sched_switch, with none
    of the tool's code, sees the same gaps: two switch-outs of a spinner
    without the switch-in between, under a storm of short processes.)
    The kernel adds a wait for a CPU to schedstat in one piece when it
    ends: before (ns) is the first such piece after the window opened,
    which may have begun before it (see Capture.watch())."""
    message = "tool {:,} ns, kernel {:,} ns, slack {:,} ns, {} lost, " \
        "first wait {:,} ns\n{}".format(tool, kernel, slack, lost, before,
                                        context)
    assert tool <= kernel * (1 + share) + slack, message
    if not lost:
        assert tool >= (kernel - before) * (1 - share) - slack, message


def tool_policy(pid):
    """The scheduling policy of process pid (0 SCHED_OTHER, 1 SCHED_FIFO),
    field 41 of /proc/PID/stat."""
    with open("/proc/{}/stat".format(pid)) as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[38])


def spin_cpu():
    """The CPU the workload's two spinners share: the last one."""
    return os.cpu_count() - 1


class Capture:
    """One run of the tool over a workload, with schedstat at the window
    edges."""

    # The threads whose first wait in the window is watched (watch()).
    WATCHED = ("kd-sleep", "kd-poll", "kd-op", "kd-spin1", "kd-spin2")

    def __init__(self, workload, args, actions=()):
        self.workload = workload
        self.tids = workload.tids()
        self.start = self.stop = None
        self.actions = actions
        self.first_wait = {}
        self.closing = threading.Event()
        self.watcher = None
        self.before_mounts = tracefs_mounts()
        self.code, self.out, self.err = run_tool(
            ["-p", str(workload.pid)] + list(args),
            on_start=self._on_start, on_stop=self._on_stop)
        self.closing.set()
        if self.watcher:
            self.watcher.join()
        self.windows = report.parse(self.out)

    def schedstat(self):
        return {name: workload_ctl.read_schedstat(self.workload.pid, tid)
                for name, tid in self.tids.items()}

    def watch(self):
        """Record each watched thread's first wait for a CPU that schedstat
        counts after the start read.  The kernel adds a wait to run_delay
        when the thread gets its CPU (sched_info_arrive()), all of it: a
        wait that began before the window opened (behind the tool, which
        compiles as SCHED_FIFO) lands in the window's delta, while the tool
        counts it from the window's start.  That first piece bounds the
        difference."""
        left = {name: self.start[name] for name in self.WATCHED
                if name in self.start}
        while left and not self.closing.wait(0.002):
            for name, (_, waited, slices) in list(left.items()):
                now = workload_ctl.read_schedstat(self.workload.pid,
                                                  self.tids[name])
                if now[2] != slices:
                    self.first_wait[name] = now[1] - waited
                    del left[name]

    def before(self, name):
        return self.first_wait.get(name, 0)

    def _on_start(self, proc):
        self.policy = {"start": tool_policy(proc.pid)}
        self.start = self.schedstat()
        self.start_read = time.time()
        self.watcher = threading.Thread(target=self.watch)
        self.watcher.start()
        for action in self.actions:
            action(self.workload)

    def _on_stop(self, proc):
        self.policy["stop"] = tool_policy(proc.pid)
        self.closing.set()
        self.watcher.join()
        self.stop = self.schedstat()
        self.stop_read = time.time()

    def skew(self):
        """How late (ns) schedstat was read after the window opened, plus
        after it closed: a thread can gather at most that much run and
        wait time that the window does not cover (on a loaded machine the
        reads come milliseconds after the tool's lines)."""
        edges = [re.search(r"^# {} sampling @(\S+) ".format(edge), self.out,
                           re.M).group(1) for edge in ("Start", "Stop")]
        late = [read - (time.mktime(time.strptime(stamp[:19],
                                                  "%Y-%m-%dT%H:%M:%S")) +
                        float("0" + stamp[19:]))
                for read, stamp in zip((self.start_read, self.stop_read),
                                       edges)]
        return int(sum(max(0.0, seconds) for seconds in late) * NSEC)

    def thread(self, name):
        assert self.code == 0, self.err
        assert len(self.windows) == 1, self.out
        threads = self.windows[0].threads
        assert name in threads, "{} missing from:\n{}".format(name, self.out)
        return threads[name]

    def delta(self, name, column):
        return self.stop[name][column] - self.start[name][column]


def sigstop_window(workload_bin):
    """A 1 s window in which the workload is stopped (SIGSTOP) for 0.3 s:
    (Capture, ns from SIGSTOP to SIGCONT)."""
    times = {}

    def stop_and_continue(workload):
        time.sleep(0.1)
        times["stop"] = time.monotonic()
        os.kill(workload.pid, signal.SIGSTOP)
        time.sleep(0.3)
        times["cont"] = time.monotonic()
        os.kill(workload.pid, signal.SIGCONT)

    with workload_ctl.Workload(workload_bin) as load:
        capture = Capture(load, ["--sample-time", "1"], (stop_and_continue,))
    return capture, (times["cont"] - times["stop"]) * NSEC


# ---- Trigger mode -----------------------------------------------------------

# kd_op(ms) sleeps ms milliseconds between its kd_workload:op_start and
# op_end USDT probes: 5 ms, then 50 ms.
LONG, SHORT = 50 * MSEC, 5 * MSEC
TRIGGER_HEADER = re.compile(r"^# (Start|Stop) sampling \(trigger@(\d+)\)",
                            re.M)


def deltas(out):
    """The stop-start deltas (ns) of a text report's triggered windows."""
    return [int(d.replace(",", "")) for d in
            re.findall(r"^# Triggered sample dump, stop-start delta "
                       r"([\d,]+) ns", out, re.M)]


# ---- A real Open vSwitch ----------------------------------------------------

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
OVS_PIDFILE = "/var/run/openvswitch/ovs-vswitchd.pid"


@pytest.fixture(scope="session")
def ovs():
    """A running ovs-vswitchd with a userspace (netdev) bridge: its pid.
    Started once for the whole run (when it was not running) and stopped
    at its end."""
    if not os.path.exists(OVS_CTL):
        pytest.fail("openvswitch-switch is not installed (make deps)")
    started = subprocess.run([OVS_CTL, "status"],
                             stdout=subprocess.DEVNULL).returncode != 0
    if started:
        subprocess.run([OVS_CTL, "start", "--system-id=random"], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["ovs-vsctl", "--may-exist", "add-br", "br-kd", "--",
                    "set", "bridge", "br-kd", "datapath_type=netdev"],
                   check=True)
    with open(OVS_PIDFILE) as pidfile:
        pid = int(pidfile.read())
    # Ready once its handler and revalidator threads run.
    assert wait_until(lambda: {"handler", "revalidator"} <= {
        re.sub(r"\d+$", "", name) for name in thread_names(pid)},
        timeout=60), thread_names(pid)
    yield pid
    subprocess.run(["ovs-vsctl", "--if-exists", "del-br", "br-kd"])
    if started:
        subprocess.run([OVS_CTL, "stop"], stdout=subprocess.DEVNULL)


def thread_names(pid):
    names = []
    for tid in os.listdir("/proc/{}/task".format(pid)):
        try:
            with open("/proc/{}/task/{}/comm".format(pid, tid), "rb") as comm:
                names.append(comm.read().decode("ascii", "replace").strip())
        except OSError:
            pass        # exited meanwhile
    return names


# ---- Names ------------------------------------------------------------------

def unescape(text):
    """The bytes a name shown by the report stands for (the inverse of the
    report's escaping, written independently of it)."""
    out, index = bytearray(), 0
    while index < len(text):
        if text.startswith("\\\\", index):
            out += b"\\"
            index += 2
        elif text.startswith("\\x", index):
            out.append(int(text[index + 2:index + 4], 16))
            index += 4
        elif text.startswith("\\u", index):
            out += chr(int(text[index + 2:index + 6], 16)).encode("utf-8")
            index += 6
        elif text.startswith("\\U", index):
            out += chr(int(text[index + 2:index + 10], 16)).encode("utf-8")
            index += 10
        else:
            out += text[index].encode("utf-8")
            index += 1
    return bytes(out)
