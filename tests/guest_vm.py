# SPDX-License-Identifier: Apache-2.0
"""Privileged tests that need a kernel this machine does not run: kprobes,
the openvswitch module, headers that match the running kernel.

tests/check_vm.py (`make check-vm`) boots a second kernel under qemu with
virtme-ng, which shares the host's file system, and runs this file inside
it.  Every run of the tool here compiles its eBPF program under software
emulation (about 40 s), so each test makes one run and checks as much of
it as is honest.  Not collected by `pytest tests` (no test_ prefix).
"""

import os
import tempfile
import threading
import time

import pytest

import report
import workload_ctl
from conftest import SCRIPT
from test_e2e import MSEC, NSEC, leftovers, run_tool
from test_triggers import TRIGGER_HEADER, deltas

pytestmark = pytest.mark.privileged

if os.environ.get("KD_IN_GUEST") != "1":
    pytest.skip("runs inside the kernel that make check-vm boots",
                allow_module_level=True)

BURST = 997
SHORT_CALLS = 13
GAP = 2.0       # seconds between the burst that opens the window and the
#                 system call that closes it
RUN_TIMEOUT = 600   # a compile under emulation takes about 40 s


@pytest.fixture(scope="module")
def workload_bin(tmp_path_factory):
    return workload_ctl.build(str(tmp_path_factory.mktemp("workload")))


def without_btf():
    """A command prefix that runs the tool where /sys/kernel/btf is an
    empty directory (in a private mount namespace): the tool must then
    take task_struct offsets from the kernel headers."""
    empty = tempfile.mkdtemp(prefix="kd-no-btf.")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /sys/kernel/btf && '
            '! test -e /sys/kernel/btf/vmlinux && exec "$@"', empty, SCRIPT]


def keep(name, out):
    """Leave a run's report where the host can read it."""
    where = os.environ.get("KD_VM_OUT")
    if where:
        with open(os.path.join(where, name + ".out"), "w") as f:
            f.write(out)


def headers_of_this_kernel():
    build = "/lib/modules/{}/build".format(os.uname().release)
    return [path for path in (build, build + "/Makefile")
            if not os.path.exists(path)]


@pytest.mark.parametrize("offsets", ["btf", "headers"])
def test_kprobe_window_with_real_headers(workload_bin, offsets):
    """A kprobe on getsid() opens the window, a kretprobe on getpgid()
    closes it, GAP seconds later.  The program is compiled against this
    kernel's own headers; its task_struct offsets come from BTF, or (BTF
    hidden) from those headers.  Two spinners share a CPU: their run and
    ready times agree with schedstat."""
    assert headers_of_this_kernel() == [], "no headers for this kernel"
    assert os.cpu_count() >= 2
    cmd = without_btf() if offsets == "headers" else None
    with workload_ctl.Workload(workload_bin,
                               spin_cpu=os.cpu_count() - 1) as load:
        tids = load.tids()
        time.sleep(0.3)     # let the spinners settle into sharing
        marks, stats, failures = {}, {}, []

        def schedstat():
            return {name: workload_ctl.read_schedstat(load.pid, tid)
                    for name, tid in tids.items()}

        def drive():
            try:
                # The tool says it waits just before it arms the trigger.
                time.sleep(1)
                marks["before"] = time.monotonic()
                assert load.command("burst {}".format(BURST)) == \
                    "ok burst {}".format(BURST)
                time.sleep(GAP)
                answer = load.command("short {}".format(SHORT_CALLS))
                marks["after"] = time.monotonic()
                assert answer.startswith("ok short {} ".format(SHORT_CALLS))
            except Exception as err:        # reported by the test below
                failures.append(err)

        driver = threading.Thread(target=drive)
        code, out, err = run_tool(
            ["-p", str(load.pid),
             "--start-trigger", "k:__x64_sys_getsid",
             "--stop-trigger", "kr:__x64_sys_getpgid"],
            cmd=cmd, timeout=RUN_TIMEOUT,
            on_waiting=lambda _proc: driver.start(),
            on_start=lambda _proc: stats.setdefault("start", schedstat()),
            on_stop=lambda _proc: stats.setdefault("stop", schedstat()))
        if driver.ident:
            driver.join()
    keep("kprobe-" + offsets, out + err + "".join(
        "schedstat {}: {} -> {}\n".format(name, stats.get("start", {}).get(
            name), stats.get("stop", {}).get(name)) for name in tids))
    assert failures == []
    assert code == 0, err
    assert "Traceback" not in err
    assert len(TRIGGER_HEADER.findall(out)) == 2, out
    found = deltas(out)
    assert len(found) == 1, out
    delta = found[0]
    # The window lies between the two commands, and spans the pause.
    assert GAP * NSEC <= delta <= (marks["after"] - marks["before"]) * NSEC
    window = report.parse(out)[0]
    # The kprobe fires inside the first getsid(), after its entry: that
    # call began before the window and is left out, the others count.
    getsid = window.threads["kd-burst"]["SYSCALL"]["getsid"]
    assert getsid["count"] == BURST - 1, out
    # The window closed in the first getpgid(), before it returned.
    short = window.threads.get("kd-short", {"SYSCALL": {}})
    assert "getpgid" not in short["SYSCALL"], out
    for name in ("kd-spin1", "kd-spin2"):
        thread = window.threads[name]
        run, ready = thread["THREAD RUN"], thread["THREAD READY"]
        on_cpu = stats["stop"][name][0] - stats["start"][name][0]
        waited = stats["stop"][name][1] - stats["start"][name][1]
        # Each spinner runs about half the time and waits the other half.
        assert on_cpu > 0.3 * delta and waited > 0.3 * delta, out
        assert abs(run["total"] - on_cpu) <= 0.10 * on_cpu, out
        assert abs(ready["total"] - waited) <= 0.10 * waited, out
        # Always running or queued: together, the whole window.
        assert abs(run["total"] + ready["total"] - delta) < 0.03 * delta
    sleeps = window.threads["kd-sleep"]["SYSCALL"]["clock_nanosleep"]
    assert sleeps["total"] >= sleeps["count"] * 20 * MSEC
    assert 0.5 * delta / (20 * MSEC) <= sleeps["count"] <= \
        delta / (20 * MSEC)
    assert leftovers() == []
