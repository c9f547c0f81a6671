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
import re
import subprocess
import tempfile
import threading
import time

import pytest

import report
import workload_ctl
from conftest import (MSEC, NSEC, SCRIPT, TRIGGER_HEADER, deltas, leftovers,
                      run_tool)

if os.environ.get("KD_IN_GUEST") != "1":
    pytest.skip("runs inside the kernel that make check-vm boots",
                allow_module_level=True)

BURST = 997
SHORT_CALLS = 13
GAP = 2.0       # seconds between the burst that opens the window and the
#                 system call that closes it
RUN_TIMEOUT = 600   # a compile under emulation takes about 40 s


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
    """The kprobe window, the program compiled against this kernel's own
    headers; its task_struct offsets come from BTF, or (BTF hidden) from
    those headers."""
    assert headers_of_this_kernel() == [], "no headers for this kernel"
    kprobe_window(workload_bin, "kprobe-" + offsets,
                  without_btf() if offsets == "headers" else None)


def preempt_rt():
    return "PREEMPT_RT" in os.uname().version


def test_kprobe_window_on_preempt_rt(workload_bin):
    """The kprobe window on a PREEMPT_RT kernel, without its headers:
    the program compiles against the tool's generated include tree."""
    assert preempt_rt(), os.uname().version
    kprobe_window(workload_bin, "kprobe-rt")


def kprobe_window(workload_bin, name, cmd=None):
    """A kprobe on getsid() opens the window, a kretprobe on getpgid()
    closes it, GAP seconds later.  Two spinners share a CPU: their run and
    ready times agree with schedstat."""
    assert os.cpu_count() >= 2
    with workload_ctl.Workload(workload_bin,
                               spin_cpu=os.cpu_count() - 1) as load:
        tids = load.tids()
        load.wait_spinners_sharing()
        marks, stats, failures = {}, {}, []

        def schedstat():
            return {name: workload_ctl.read_schedstat(load.pid, tid)
                    for name, tid in tids.items()}

        def drive():
            try:
                # The waiting line follows arming; the pause is a margin.
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
    keep(name, out + err + "".join(
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
        # Always runnable, a spinner's schedstat run and wait grow with
        # the clock: what they hold beyond the window is time outside it
        # (read late, or a wait that began before it: schedstat adds a
        # wait when it ends).  Under emulation that was 0.19 s.
        outside = abs(on_cpu + waited - delta)
        assert abs(run["total"] - on_cpu) <= 0.10 * on_cpu + outside, out
        assert abs(ready["total"] - waited) <= 0.10 * waited + outside, \
            out
        # Always running or queued: together, the whole window.
        assert abs(run["total"] + ready["total"] - delta) < 0.03 * delta
    sleeps = window.threads["kd-sleep"]["SYSCALL"]["clock_nanosleep"]
    assert sleeps["total"] >= sleeps["count"] * 20 * MSEC
    assert 0.5 * delta / (20 * MSEC) <= sleeps["count"] <= \
        delta / (20 * MSEC)
    assert leftovers() == []


# ---- OVS kernel datapath --------------------------------------------------

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
# The guest's own tmpfs: the host's OVS database, logs and sockets
# (/etc/openvswitch is the host's, under a throw-away overlay) are not used.
OVS_STATE = "/run/kd-ovs"
OVS_ENV = dict(os.environ, OVS_DBDIR=OVS_STATE,
               OVS_SYSCONFDIR=OVS_STATE + "/etc",
               OVS_LOGDIR=OVS_STATE + "/log")
LOOKUPS = re.compile(r"lookups: hit:(\d+) missed:(\d+) lost:(\d+)")
FLOWS = re.compile(r"flows: (\d+)")
# One datagram from each source port, to an address with a static
# neighbour entry that no one answers: no replies, no ARP.
SEND = """
import socket, sys
count, first = int(sys.argv[1]), int(sys.argv[2])
for port in range(first, first + count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("10.77.0.1", port))
        sock.sendto(b"kd", ("10.77.0.99", 9))
"""


def sh(*cmd):
    res = subprocess.run(cmd, env=OVS_ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True)
    assert res.returncode == 0, "{}: {}".format(" ".join(cmd), res.stdout)
    return res.stdout


@pytest.fixture(scope="module")
def kernel_datapath():
    """ovs-vswitchd with the kernel datapath: bridge br-kd, whose ports
    kd-a and kd-b are veth pairs into network namespaces kd-a and kd-b.
    Megaflows are off, so every new UDP source port is a miss that goes
    up to userspace (one upcall per datagram)."""
    for sub in ("etc/openvswitch", "log"):
        os.makedirs(os.path.join(OVS_STATE, sub), exist_ok=True)
    sh("modprobe", "openvswitch")
    sh(OVS_CTL, "start", "--system-id=random")
    try:
        # IPv6 would add router and neighbour solicitations.
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        sh("ovs-vsctl", "add-br", "br-kd")
        for ns, address in (("kd-a", "10.77.0.1/24"),
                            ("kd-b", "10.77.0.2/24")):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", ns, "type", "veth", "peer", "name",
               "eth0", "netns", ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw",
               "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", address,
               "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "link", "set", ns, "up")
            sh("ovs-vsctl", "add-port", "br-kd", ns)
        sh("ip", "netns", "exec", "kd-a", "ip", "neigh", "add", "10.77.0.99",
           "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "permanent")
        sh("ovs-appctl", "upcall/disable-megaflows")
        yield
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", "br-kd"],
                       env=OVS_ENV)
        for ns in ("kd-a", "kd-b"):
            subprocess.run(["ip", "netns", "del", ns],
                           stderr=subprocess.DEVNULL)
        subprocess.run([OVS_CTL, "stop"], env=OVS_ENV,
                       stdout=subprocess.DEVNULL)


def datapath():
    """(hit, missed, lost, flows) of the kernel datapath."""
    text = sh("ovs-appctl", "dpctl/show")
    lookups, flows = LOOKUPS.search(text), FLOWS.search(text)
    assert lookups and flows, text
    return tuple(int(n) for n in lookups.groups() + flows.groups())


def send(cpu, count, first_port):
    sh("ip", "netns", "exec", "kd-a", "taskset", "-c", str(cpu),
       "/usr/bin/python3", "-c", SEND, str(count), str(first_port))


def test_upcall_statistics_on_the_kernel_datapath(kernel_datapath):
    """Datagrams sent from CPU 0, then from CPU 1, each a miss: the
    window's upcall statistics count them, per CPU, as the datapath's
    own miss counter does.  The window stays open until the test has
    read that counter: a kretprobe stop trigger on getsid(), which the
    test calls."""
    first, second = 37, 53      # primes: no other sum makes them
    counters = {}

    def traffic(_proc):
        counters["before"] = datapath()
        send(0, first, 20000)
        send(1, second, 30000)
        # Until the handlers have installed a flow for each miss.
        deadline = time.monotonic() + 30
        while True:
            counters["after"] = datapath()
            if counters["after"][3] - counters["before"][3] >= \
                    first + second or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        os.getsid(0)        # closes the window

    code, out, err = run_tool(["--stop-trigger", "kr:__x64_sys_getsid"],
                              on_start=traffic, timeout=RUN_TIMEOUT)
    keep("upcalls", out + err)
    assert code == 0, err
    assert "Traceback" not in err
    hit, missed, lost, flows = (after - before for after, before in
                                zip(counters["after"], counters["before"]))
    assert (hit, missed, lost, flows) == (0, first + second, 0, missed), \
        counters
    window = report.parse(out)[0]
    upcalls = window.upcalls
    assert upcalls is not None, out
    assert upcalls["total"] == (missed, {0: first, 1: second}), out
    assert upcalls["successful"] == (missed, {0: first, 1: second}), out
    assert upcalls["failed"][0] == lost
    # ovs-vswitchd's handler threads read each upcall from netlink with
    # a recvmsg() (and try more that find none), before they install
    # its flow.
    assert sum(thread["SYSCALL"].get("recvmsg", {"count": 0})["count"]
               for name, thread in window.threads.items()
               if name.startswith("handler")) >= missed, out
    assert leftovers() == []


# ---- PREEMPT_RT: a hard interrupt's thread takes the CPU -------------------

SPIN = "import os\nos.sched_setaffinity(0, {1})\nwhile True:\n    pass\n"
IRQ_CPU = 1


def interrupts():
    """IRQ number -> total count, from /proc/interrupts."""
    counts = {}
    with open("/proc/interrupts") as f:
        ncpu = len(f.readline().split())
        for line in f:
            fields = line.split()
            if fields and fields[0].rstrip(":").isdigit():
                counts[int(fields[0].rstrip(":"))] = sum(
                    int(n) for n in fields[1:1 + ncpu] if n.isdigit())
    return counts


def irq_threads():
    """IRQ number -> {pid: comm} of its irq/N-name threads."""
    found = {}
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/{}/comm".format(pid)) as f:
                comm = f.read().strip()
        except OSError:
            continue
        match = re.fullmatch(r"irq/(\d+)-.*", comm)
        if pid.isdigit() and match:
            found.setdefault(int(match.group(1)), {})[int(pid)] = comm
    return found


def file_io(where, seconds):
    """Requests to the host's file system (9p under virtme-ng): each
    completion is a virtio interrupt."""
    deadline = time.monotonic() + seconds
    path = os.path.join(where, "kd-io")
    n = 0
    while time.monotonic() < deadline:
        with open(path, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.stat(os.path.join(where, "kd-none-{}".format(n)))
        except OSError:
            pass
        n += 1
    os.unlink(path)


def test_irq_thread_takes_the_cpu_on_preempt_rt():
    """PREEMPT_RT runs the device interrupt's handler in its irq/N-name
    thread (SCHED_FIFO), which preempts a spinner on the IRQ's CPU.  The
    verdict names that thread by vector and device among the tasks that
    held the spinner's CPU, never as plain contention, and what it says
    the thread held is within what schedstat says the thread ran."""
    assert preempt_rt(), os.uname().version
    where = os.environ.get("KD_VM_OUT") or tempfile.mkdtemp()
    os.sched_setaffinity(0, {0})
    # Which threaded IRQ do file system requests raise?
    threads = irq_threads()
    before = interrupts()
    file_io(where, 0.5)
    grown = {irq: count - before.get(irq, 0)
             for irq, count in interrupts().items() if irq in threads}
    irq = max(grown, key=grown.get) if grown else None
    assert irq is not None and grown[irq] > 0, (grown, threads)
    pids = threads[irq]
    with open("/proc/irq/{}/smp_affinity_list".format(irq), "w") as f:
        f.write(str(IRQ_CPU))
    spinner = subprocess.Popen(["/usr/bin/python3", "-c", SPIN])
    stats = {}

    def thread_run():
        """Run time of each of the IRQ's threads."""
        ran = {}
        for pid in pids:
            with open("/proc/{}/schedstat".format(pid)) as f:
                ran[pid] = int(f.read().split()[0])
        return ran

    def load(_proc):
        stats["start"] = thread_run()
        file_io(where, 1.5)

    try:
        time.sleep(0.2)
        code, out, err = run_tool(
            ["-p", str(spinner.pid), "--sample-time", "2",
             "--ready-threshold", "0.01"],
            on_start=load, on_stop=lambda _proc: stats.setdefault(
                "stop", thread_run()), timeout=RUN_TIMEOUT)
    finally:
        spinner.kill()
        spinner.wait()
    keep("irq-thread", out + err + "irq {} threads {}: {}\n".format(
        irq, pids, stats))
    assert code == 0, err
    verdict = out[out.index("# VERDICT"):].replace("\n#   ", " ")
    label = re.search(r"(irq/{0}-\S*) \((\d+)\) \[hard IRQ {0} ([^\]]+)\] "
                      r"([\d,.]+) ms".format(irq), verdict)
    assert label, verdict
    pid = int(label.group(2))
    # /proc shows a kernel thread's whole name; the kernel's comm, which
    # the tool reads, keeps 15 characters.
    assert pids.get(pid, "").startswith(label.group(1)), (pids, verdict)
    assert label.group(1) == "irq/{}-{}".format(irq, label.group(3))
    held = float(label.group(4).replace(",", "")) * MSEC
    ran = stats["stop"][pid] - stats["start"][pid]
    assert 0 < held <= ran * 1.10 + MSEC, (held, ran)
    finding = re.search(r"python3 \({}\) waited ([\d,.]+) ms for a CPU "
                        r".*?\): ([^;]+);".format(spinner.pid), verdict)
    assert finding, verdict
    waited = float(finding.group(1).replace(",", "")) * MSEC
    if held * 2 > waited:
        # The IRQ thread alone held the CPU for most of the wait.
        assert finding.group(2) == "interrupt load, run in kernel " \
            "threads on this PREEMPT_RT kernel", verdict
    assert leftovers() == []
