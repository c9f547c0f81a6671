# SPDX-License-Identifier: Apache-2.0
"""make check-vm: tests on a second kernel, booted once under qemu.

This machine's kernel may lack kprobes, the openvswitch module or matching
headers.  Debian's 6.1 kernel (linux-image-amd64, with linux-headers-amd64)
has all three.  virtme-ng (vng) boots it with the host's file system as
its root, so the script, bcc and the test workload are there, and runs
tests/guest_vm.py inside it: each guest test is reported here as a test
of its own, with the guest's output when it fails.  Software emulation
(no KVM): about 20 s to boot, about 40 s per compile of the eBPF program.

Also here: the task_struct offsets read from the guest kernel's BTF
against offsetof() compiled by kbuild against its headers.  Then a second
boot: Debian's PREEMPT_RT build of the same kernel (linux-image-rt-amd64,
no headers), with RT_GUEST_TESTS.

Environment: KD_VM_TESTS (the guest tests to run, by pytest node ID),
KD_VM_KERNEL (a vmlinuz to boot; default: the newest
/boot/vmlinuz-* with headers that is not the running kernel),
KD_VM_RT_TESTS and KD_VM_RT_KERNEL (the same for the PREEMPT_RT boot), VNG (the
vng command), KD_VM_KVM=1 (use KVM instead of emulation), KD_VM_TIMEOUT
(seconds per boot, its tests included; default 1200).  What the guest
leaves (its pytest output, the reports of its runs) stays in
build/check-vm.
Not collected by `pytest tests` (no test_ prefix).
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ElementTree

import pytest

import workload_ctl
from conftest import TOP

# What runs in the guest, in one boot; one host test each.
GUEST_TESTS = [
    "tests/guest_vm.py::test_kprobe_window_with_real_headers[btf]",
    "tests/guest_vm.py::test_kprobe_window_with_real_headers[headers]",
    "tests/test_triggers.py::test_trigger_errors"
    "[k:kd_no_such_function-kprobe-None]",
    "tests/test_triggers.py::test_trigger_errors"
    "[kr:kd_no_such_function-kprobe-None]",
    "tests/guest_vm.py::test_upcall_statistics_on_the_kernel_datapath",
]
# What runs on the PREEMPT_RT kernel (linux-image-rt-amd64, no headers).
RT_GUEST_TESTS = [
    "tests/test_e2e.py::test_exact_count_of_a_rare_syscall",
    "tests/test_e2e.py::test_udp_counts_and_net_rx_in_sender_context",
    "tests/test_e2e.py::test_run_and_ready_match_schedstat[kd-spin1]",
    "tests/test_e2e.py::test_run_and_ready_match_schedstat[kd-spin2]",
    "tests/guest_vm.py::test_kprobe_window_on_preempt_rt",
    "tests/guest_vm.py::test_upcall_statistics_on_the_kernel_datapath",
    "tests/guest_vm.py::test_irq_thread_takes_the_cpu_on_preempt_rt",
    "tests/test_long_poll.py::test_exactly_one_catch_for_the_long_interval",
    "tests/test_long_poll.py::test_length_agrees_with_the_workload_clock",
    "tests/test_long_poll.py::test_run_and_ready_agree_with_schedstat",
    "tests/test_long_poll.py::"
    "test_stop_is_timed_and_its_signal_and_sender_named",
]
# A developer may run fewer: KD_VM_TESTS="NODE_ID ...", KD_VM_RT_TESTS.
GUEST_TESTS = os.environ.get("KD_VM_TESTS", "").split() or GUEST_TESTS
RT_GUEST_TESTS = os.environ.get("KD_VM_RT_TESTS", "").split() or \
    RT_GUEST_TESTS
OUT_DIR = os.path.join(TOP, "build", "check-vm")
RT_OUT_DIR = os.path.join(TOP, "build", "check-vm-rt")
# seconds, boot included (KD_VM_TIMEOUT: more, on a loaded machine)
GUEST_TIMEOUT = int(os.environ.get("KD_VM_TIMEOUT") or 1200)
LOG_TAIL = 12000        # characters of guest output shown on a failure


def release_key(release):
    return [int(n) if n.isdigit() else n
            for n in re.split(r"(\d+)", release)]


def is_rt_release(release):
    """Debian's PREEMPT_RT kernels: 6.1.0-57-rt-amd64."""
    return "-rt-" in release or release.endswith("-rt")


def guest_kernel():
    """(vmlinuz path, release) of the kernel to boot, or None."""
    chosen = os.environ.get("KD_VM_KERNEL")
    if chosen:
        return chosen, os.path.basename(chosen).split("-", 1)[-1]
    running = os.uname().release
    found = [os.path.basename(path)[len("vmlinuz-"):]
             for path in glob.glob("/boot/vmlinuz-*")]
    found = [rel for rel in found if not is_rt_release(rel) and
             os.path.exists("/lib/modules/{}/build".format(rel))]
    found.sort(key=lambda rel: (rel != running, release_key(rel)))
    if not found:
        return None
    return "/boot/vmlinuz-" + found[-1], found[-1]


def rt_kernel():
    """(vmlinuz path, release) of the newest PREEMPT_RT kernel with its
    modules (openvswitch), or None.  Its headers are not needed."""
    chosen = os.environ.get("KD_VM_RT_KERNEL")
    if chosen:
        return chosen, os.path.basename(chosen).split("-", 1)[-1]
    found = [os.path.basename(path)[len("vmlinuz-"):]
             for path in glob.glob("/boot/vmlinuz-*")]
    found = sorted((rel for rel in found if is_rt_release(rel) and
                    os.path.isdir("/lib/modules/" + rel)), key=release_key)
    return ("/boot/vmlinuz-" + found[-1], found[-1]) if found else None


def vng_command():
    return os.environ.get("VNG") or shutil.which("vng")


def vm_problem():
    """Why the guest cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "not root (the guest's tests load eBPF programs as root)"
    if not vng_command():
        return "no vng (virtme-ng): run `make deps-vm`"
    if not shutil.which("qemu-system-x86_64"):
        return "no qemu-system-x86_64: run `make deps-vm`"
    if guest_kernel() is None:
        return ("no /boot/vmlinuz-* with headers in /lib/modules/*/build: "
                "run `make deps-vm`")
    return None


class Guest:
    """What one boot of the guest left in its output directory."""

    def __init__(self, out, release, console, code, seconds):
        self.out, self.release = out, release
        self.console, self.code, self.seconds = console, code, seconds

    def read(self, name, default=None):
        try:
            with open(os.path.join(self.out, name), errors="replace") as f:
                return f.read()
        except OSError:
            return default

    def log(self):
        """The guest's pytest output, else the console (boot messages)."""
        text = self.read("guest.log") or self.console
        return text[-LOG_TAIL:]

    def results(self):
        """junit testcase name -> (outcome, text)."""
        text = self.read("guest.xml")
        if text is None:
            return {}
        results = {}
        for case in ElementTree.fromstring(text).iter("testcase"):
            outcome, detail = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = child.tag
                    detail = "{}\n{}".format(child.get("message", ""),
                                             child.text or "")
            name = "{}::{}".format(case.get("classname"), case.get("name"))
            results[name] = (outcome, detail)
        return results


GUEST_SCRIPT = """\
export PATH=/usr/sbin:/usr/bin:/sbin:/bin KD_IN_GUEST=1 CI=true
export KD_WORKLOAD={workload} KD_VM_OUT={out} PYTHONDONTWRITEBYTECODE=1
# Unbuffered: a boot cut by the timeout still shows how far it got.
export PYTHONUNBUFFERED=1
cd {top} || exit 1
cut -d' ' -f1 /proc/uptime > {out}/booted
uname -r > {out}/release
uname -v > {out}/uname-v
cp /sys/kernel/btf/vmlinux {out}/vmlinux.btf
# For a run cut by the timeout: every 30 s over its last 150 s (earlier,
# the snapshots would cost the tests CPU under emulation), every thread's
# state, policy, CPU time and where it sleeps (threads.txt, the one
# before in threads.prev), from a real-time loop that a runaway thread
# cannot stop; shell built-ins only, no process per thread.
snapshot() {{
    sleep {quiet}
    while sleep 30; do
        mv -f {out}/threads.txt {out}/threads.prev 2>/dev/null
        {{
            echo "uptime $(cut -d' ' -f1 /proc/uptime) s," \
                "load $(cat /proc/loadavg)"
            echo "tid state policy rtprio utime stime wchan comm"
            for task in /proc/[0-9]*/task/[0-9]*; do
                {{ read -r stat < $task/stat; }} 2>/dev/null || continue
                wchan=
                {{ read -r wchan < $task/wchan; }} 2>/dev/null
                comm=${{stat#*(}}; comm=${{comm%)*}}
                set -- ${{stat##*) }}
                echo "${{task##*/}} $1 ${{39}} ${{38}} ${{12}} ${{13}}" \
                    "$wchan $comm"
            done
        }} > {out}/threads.txt
    done
}}
snapshot < /dev/null > /dev/null 2>&1 &
snapshots=$!
chrt -f -p 99 $snapshots >/dev/null 2>&1
/usr/bin/python3 -m pytest -v -p no:cacheprovider --durations=0 \\
    --junitxml={out}/guest.xml \\
    {tests} > {out}/guest.log 2>&1
echo $? > {out}/rc
kill $snapshots
cut -d' ' -f1 /proc/uptime > {out}/finished
"""


def no_vm(problem):
    if os.environ.get("CI") == "true":
        pytest.fail("make check-vm cannot run under CI=true: " + problem)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def guest():
    problem = vm_problem()
    if problem:
        no_vm(problem)
    image, release = guest_kernel()
    return boot(image, release, GUEST_TESTS, OUT_DIR)


@pytest.fixture(scope="module")
def rt_guest():
    """The PREEMPT_RT kernel, booted after the generic one."""
    problem = vm_problem()
    if problem is None and rt_kernel() is None:
        problem = ("no /boot/vmlinuz-*-rt-* with its modules: run `make "
                   "deps-vm` (linux-image-rt-amd64)")
    if problem:
        no_vm(problem)
    image, release = rt_kernel()
    return boot(image, release, RT_GUEST_TESTS, RT_OUT_DIR)


def boot(image, release, tests, out):
    """Boot image once, run the guest tests in it; a Guest."""
    # Kept after the run: the guest's pytest output, each run's report.
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    workload = workload_ctl.build(out)
    script = os.path.join(out, "run.sh")
    with open(script, "w") as f:
        f.write(GUEST_SCRIPT.format(workload=workload, top=TOP, out=out,
                                    quiet=max(0, GUEST_TIMEOUT - 150),
                                    tests=" ".join(
                                        "'{}'".format(test)
                                        for test in tests)))
    cmd = ["nice", "-n", "10", vng_command(), "-r", image, "--cpus", "2",
           "--memory", "2G", "--rwdir", out, "--", "sh " + script]
    if os.environ.get("KD_VM_KVM") != "1":
        # KVM hangs or aborts on some hosts: emulate.
        cmd.insert(cmd.index("--cpus"), "--disable-kvm")
    started = time.monotonic()
    console = os.path.join(out, "console.log")
    with open(console, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=TOP,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=GUEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    seconds = time.monotonic() - started
    with open(console, errors="replace") as log:
        text = log.read()
    print("guest {}: vng ran for {:.0f} s".format(release, seconds))
    return Guest(out, release, text, code, seconds)


def test_guest_boots_and_runs_its_tests(guest):
    check_boot(guest)


def check_boot(guest):
    booted = (guest.read("release") or "").strip()
    assert booted == guest.release, (
        "the guest did not boot {} (vng exit {}, {:.0f} s):\n{}".format(
            guest.release, guest.code, guest.seconds, guest.console[
                -LOG_TAIL:]))
    assert guest.read("rc") is not None, (
        "the guest's tests did not finish within {} s:\n{}\n"
        "---- the guest's threads, 30 s apart (state, policy, real-time "
        "priority, ticks in user and kernel mode) ----\n{}\n----\n{}"
        .format(GUEST_TIMEOUT, guest.log(),
                guest.read("threads.prev", "(none)"),
                guest.read("threads.txt", "(none)")))


def junit_name(node_id):
    path, name = node_id.split("::", 1)
    return "{}::{}".format(path[:-len(".py")].replace("/", "."), name)


@pytest.mark.parametrize("node_id", GUEST_TESTS)
def test_in_guest(guest, node_id):
    check_guest_test(guest, node_id)


def check_guest_test(guest, node_id):
    outcome, detail = guest.results().get(junit_name(node_id),
                                          ("not run", ""))
    if outcome != "passed":
        pytest.fail("{} in the guest ({}): {}\n---- guest output ----\n{}"
                    .format(outcome, guest.release, detail[-LOG_TAIL:],
                            guest.log()), pytrace=False)


# offsetof() and sizeof() as the kernel's own build sees them: kbuild's
# asm-offsets markers ("->NAME $VALUE") in the compiler's assembly output.
OFFSETS_C = """\
#include <linux/kbuild.h>
#include <linux/sched.h>
#include <asm/ptrace.h>

void kd_offsets(void);
void kd_offsets(void)
{
\tOFFSET(KD_PID, task_struct, pid);
\tOFFSET(KD_TGID, task_struct, tgid);
\tOFFSET(KD_STATE, task_struct, __state);
\tDEFINE(KD_STATE_SIZE, sizeof(((struct task_struct *)0)->__state));
\tOFFSET(KD_ON_CPU, task_struct, on_cpu);
\tOFFSET(KD_REGS_NR, pt_regs, orig_ax);
\tDEFINE(KD_REGS_NR_SIZE, sizeof(((struct pt_regs *)0)->orig_ax));
}
"""


def kbuild_offsets(release, workdir):
    with open(os.path.join(workdir, "kd_offsets.c"), "w") as f:
        f.write(OFFSETS_C)
    with open(os.path.join(workdir, "Kbuild"), "w") as f:
        f.write("obj-m := kd_offsets.o\n")
    res = subprocess.run(
        ["make", "-s", "-C", "/lib/modules/{}/build".format(release),
         "M=" + workdir, "kd_offsets.s"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True)
    assert res.returncode == 0, res.stdout
    with open(os.path.join(workdir, "kd_offsets.s")) as f:
        return {name: int(value) for name, value in
                re.findall(r"->(KD_\w+) \$(\d+)", f.read())}


def test_btf_offsets_of_the_guest_kernel(guest, kd, tmp_path):
    """The BTF reader on the guest kernel (its task_struct is laid out
    differently from this machine's) finds what its headers say."""
    blob = os.path.join(guest.out, "vmlinux.btf")
    assert os.path.exists(blob), guest.console[-LOG_TAIL:]
    with open(blob, "rb") as f:
        layout = kd.task_layout_from_btf(f.read())
    want = kbuild_offsets(guest.release, str(tmp_path))
    assert (layout.pid_offset, layout.tgid_offset, layout.state_offset,
            layout.state_size, layout.on_cpu_offset, layout.regs_nr_offset,
            layout.regs_nr_size) == (
        want["KD_PID"], want["KD_TGID"], want["KD_STATE"],
        want["KD_STATE_SIZE"], want["KD_ON_CPU"], want["KD_REGS_NR"],
        want["KD_REGS_NR_SIZE"])


# ---- The PREEMPT_RT kernel, booted second ----------------------------------

def test_rt_guest_boots_and_runs_its_tests(rt_guest):
    check_boot(rt_guest)
    with open(os.path.join(rt_guest.out, "uname-v")) as f:
        assert "PREEMPT_RT" in f.read()


@pytest.mark.parametrize("node_id", RT_GUEST_TESTS)
def test_in_rt_guest(rt_guest, node_id):
    check_guest_test(rt_guest, node_id)
