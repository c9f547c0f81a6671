# SPDX-License-Identifier: Apache-2.0
"""Processes and threads as /proc shows them, on the real kernel: names
made of awkward bytes (live threads and the process itself), a library
mapped from a path that is not UTF-8 and replaced on disk, a leader that
called pthread_exit(), and a program named ovs-vswitchd.  Threads born
after the window closed: test_procfs_unit.py.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from hypothesis import example, given, settings, strategies as st

import report
import workload_ctl
from conftest import run_json, run_tool, unescape, wait_until

psutil = pytest.importorskip("psutil")

# Live threads (as the workload's tids command names them) renamed to one
# awkward byte class each, and how the report must show them: control
# characters and bytes that are not UTF-8 as \xNN, a backslash as \\.
AWKWARD = {
    "kd-sleep": (b"c\x01\x02\t\x0b", "c\\x01\\x02\\x09\\x0b"),
    "kd-poll": (b"e\x1b[31mred\x1b[0m", "e\\x1b[31mred\\x1b[0m"),
    "kd-burst": (b"del\x7f", "del\\x7f"),
    "kd-udp": (b"h\x80\xff\xfe", "h\\x80\\xff\\xfe"),
    "kd-op": (b"mb\xe2\x82-\xc3(", "mb\\xe2\\x82-\\xc3("),
    "kd-pollwait": (b"%s%n{}{0}\\x41\\", "%s%n{}{0}\\\\x41\\\\"),
    "kd-nap": (b" sp  ace ", " sp  ace "),
}
# The process itself (kd-main): the full 15 bytes, the last character cut
# in two.
PROCESS = (b"kd-proc-name-\xe2\x82", "kd-proc-name-\\xe2\\x82")


def visible(text):
    """Nothing a terminal acts on: printable characters and newlines."""
    return all(char.isprintable() or char == "\n" for char in text)


@pytest.fixture
def awkward(workload_bin):
    """The workload with its threads and itself named awkwardly; yields
    (workload, {tid: shown name})."""
    with workload_ctl.Workload(workload_bin) as load:
        tids = load.tids()
        shown = {}
        for thread, (raw, text) in AWKWARD.items():
            assert load.command("tname {} {}".format(thread, raw.hex())) \
                == "ok tname {}".format(tids[thread])
            shown[tids[thread]] = text
        assert load.command("rename " + PROCESS[0].hex()) == "ok rename"
        shown[load.pid] = PROCESS[1]
        yield load, shown


def shown_in_text(text, tid, name):
    """True when the text report shows thread tid under name: its table's
    first line, or its entry in the quiet list."""
    return "{:10} {:16} [SYSCALL STATISTICS]".format(tid, name) in text \
        or re.search(r"(^|, |:  ?|#   ){} \({}[,)]".format(
            re.escape(name), tid), text, re.M) is not None


def test_awkward_names_in_time_mode_with_events(awkward):
    """Time mode, -p, -s: every live thread and the process are shown with
    their names escaped, whether they recorded events or were quiet; the
    system call events name them the same way; no traceback."""
    load, shown = awkward
    code, text, err = run_tool(["-p", str(load.pid), "--sample-time", "0.5",
                                "-s"])
    assert (code, err) == (0, ""), text
    assert visible(text)
    # The header wraps at 80 columns (a long path goes to a line of its
    # own): read it whole.
    assert "# Process {}, PID {}: ".format(PROCESS[1], load.pid) in \
        report.unwrap(text)
    for tid, name in shown.items():
        assert shown_in_text(text, tid, name), (tid, name, text)
    events = text.split("# SYSCALL EVENTS", 1)[1]
    named = [name for name in shown.values() if name in events]
    assert named, events
    assert "<unknown" not in events


def test_awkward_names_in_json_with_process(awkward):
    """--process with the name's bytes finds the process; --format json
    shows every name as the text does."""
    load, shown = awkward
    code, docs, err = run_json([b"--process", PROCESS[0],
                                b"--sample-time", b"0.5"])
    assert code == 0, err
    sample = [doc for doc in docs if doc["type"] == "sample"][0]
    assert sample["target"]["pid"] == load.pid
    assert sample["target"]["name"] == PROCESS[1]
    names = {thread["tid"]: thread["name"] for thread in
             sample["threads"] + sample["quiet_threads"]}
    for tid, name in shown.items():
        assert names[tid] == name
    assert "Traceback" not in err


def test_awkward_names_in_trigger_mode(awkward):
    """Trigger mode (a USDT window) with -p: the same names."""
    load, shown = awkward
    code, text, err = run_tool(["-p", str(load.pid), "--start-trigger",
                                "u:kd_workload:op_start", "--stop-trigger",
                                "u:kd_workload:op_end"])
    assert (code, err) == (0, ""), text
    assert visible(text)
    op = [tid for tid, name in shown.items()
          if name == AWKWARD["kd-op"][1]][0]
    assert shown_in_text(text, op, AWKWARD["kd-op"][1]), text
    for tid, name in shown.items():
        assert shown_in_text(text, tid, name), (tid, name, text)


@pytest.fixture(scope="module")
def renamed(workload_bin):
    with workload_ctl.Workload(workload_bin) as load:
        yield load, load.tids()["kd-sleep"]


@settings(max_examples=80, deadline=None)
@example(raw=b"\xc2\x80")     # valid UTF-8, but U+0080 is a control
@given(raw=st.binary(min_size=1, max_size=15).filter(
    lambda raw: b"\0" not in raw))
def test_any_thread_name_reads_back_escaped(kd, renamed, raw):
    """Any bytes a live thread can be named (no NUL, at most 15): read
    from /proc, they come out printable, on one line, and stand for
    exactly those bytes, in the report's thread line and in JSON."""
    load, tid = renamed
    assert load.command("tname kd-sleep " + raw.hex()) == \
        "ok tname {}".format(tid)
    task = kd.task_snapshot(load.pid, tid)
    assert task.name.isprintable() and unescape(task.name) == raw
    stats = kd.ThreadStats(tid=tid, name=task.name)
    line = kd.format_thread(stats, {}, ())[0]
    assert line.isprintable() and task.name in line
    assert json.loads(json.dumps(kd.thread_json(stats, {}, ()),
                                 ensure_ascii=False))["name"] == task.name


# ---- A library mapped from a path that is not UTF-8, replaced on disk ------

LIBRARY = """
#include <unistd.h>
int kd_odd_%s(void) { usleep(20000); return 0; }
"""
TARGET = """
import ctypes, os, sys, time
lib = ctypes.CDLL(os.fsencode(sys.argv[1]))
print("ready", flush=True)
while True:
    lib.kd_odd_fn()
    time.sleep(0.01)
"""


def build_library(path, function):
    source = path + ".c"
    with open(source, "w") as out:
        out.write(LIBRARY % function)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", path, source],
                   check=True)
    os.unlink(source)


def test_library_trigger_odd_path_and_replaced(tmp_path):
    """up:LIB:FUNC on a library mapped from a directory whose name holds
    bytes that are not UTF-8 (and an escape): the window opens and closes.
    Then a package upgrade replaces the library on disk (a new file
    without the function): the trigger still attaches to the file the
    process maps, through /proc/PID/map_files (issue 18 case 13)."""
    where = os.path.join(str(tmp_path), os.fsdecode(b"lib\xff\x1b[1mdir"))
    os.mkdir(where)
    library = os.path.join(where, "libkdodd.so")
    build_library(library, "fn")
    target = subprocess.Popen([sys.executable, "-c", TARGET,
                               os.fsencode(library)],
                              stdout=subprocess.PIPE,
                              universal_newlines=True)
    try:
        assert target.stdout.readline() == "ready\n"
        args = ["-p", str(target.pid), "--start-trigger",
                "up:kdodd:kd_odd_fn", "--stop-trigger",
                "ur:kdodd:kd_odd_fn"]
        code, text, err = run_tool(args)
        assert (code, err) == (0, ""), text
        assert "# Triggered sample dump, stop-start delta" in text
        # Replaced: the path now names a new file, without kd_odd_fn.
        os.unlink(library)
        build_library(library, "other")
        code, text, err = run_tool(args)
        assert (code, err) == (0, ""), text
        delta = int(re.search(r"stop-start delta ([\d,]+) ns",
                              text).group(1).replace(",", ""))
        assert delta >= 20 * 10 ** 6
        # A library it does not map: the error escapes what it lists.
        code, text, err = run_tool(["-p", str(target.pid),
                                    "--start-trigger", "up:nothere:f"])
        assert code == os.EX_CONFIG and err.count("\n") == 1
        assert visible(err) and "\x1b" not in err
    finally:
        target.kill()
        target.wait()


# ---- A leader that called pthread_exit() (issue 18 case 8) -----------------

def test_leader_exited_process_is_alive_at_start(
        workload_bin):
    """The leader is a zombie, its threads run: -p takes the process, and
    the run reports and ends normally."""
    with workload_ctl.Workload(workload_bin) as load:
        answer = load.command("leaderexit")
        assert answer.startswith("ok leaderexit ")
        assert wait_until(lambda: task_state(load.pid) == "Z")
        code, text, err = run_tool(["-p", str(load.pid), "--sample-time",
                                    "0.3"])
        assert load.command("ping") == "pong"
    assert (code, err) == (0, ""), text
    assert "# Sample dump" in text and "(process exited)" not in text


def test_leader_exits_during_the_run(
        workload_bin):
    """The leader calls pthread_exit() inside the window: the window and
    the next are reported, and the run ends with 0, not 75."""
    with workload_ctl.Workload(workload_bin) as load:
        said = []

        def leave(_proc):
            if not said:
                said.append(load.command("leaderexit"))
                assert wait_until(lambda: task_state(load.pid) == "Z")
        code, text, err = run_tool(["-p", str(load.pid), "--sample-time",
                                    "0.5", "--sample-count", "2"],
                                   on_start=leave)
        assert load.command("ping") == "pong"
    assert said[0].startswith("ok leaderexit ")
    assert (code, err) == (0, ""), text
    assert text.count("# Sample dump") == 2
    assert "(process exited)" not in text and not re.search(
        r"^# Process \d+ \(.*\) exited", text, re.M)


def task_state(tid):
    with open("/proc/{}/stat".format(tid), "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[0].decode()


# ---- Nothing of the target is executed (issue 12, defect 2) ---------------

IMPOSTOR = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        FILE *f = fopen(MARK, "w");
        if (f)
            fprintf(f, "ran as uid %d\n", (int)getuid());
        return 0;
    }
    puts("ready");
    fflush(stdout);
    pause();
    return 0;
}
"""


def test_a_program_named_ovs_vswitchd_is_never_run(tmp_path):
    """A user's program named ovs-vswitchd, with no control socket: the
    header says why there is no version, and the program never ran (it
    would leave a mark, as root)."""
    where = tempfile.mkdtemp(prefix="kd-impostor.")
    try:
        os.chmod(where, 0o755)
        mark = os.path.join(where, "mark")
        source = os.path.join(where, "impostor.c")
        binary = os.path.join(where, "ovs-vswitchd")
        with open(source, "w") as out:
            out.write(IMPOSTOR)
        subprocess.run(["gcc", "-DMARK=\"{}\"".format(mark), "-o", binary,
                        source], check=True)
        os.chmod(where, 0o777)
        impostor = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             binary], stdout=subprocess.PIPE, universal_newlines=True)
        try:
            assert impostor.stdout.readline() == "ready\n"
            code, text, err = run_tool(["-p", str(impostor.pid),
                                        "--sample-time", "0.2"])
        finally:
            impostor.kill()
            impostor.wait()
        assert (code, err) == (0, ""), text
        assert not os.path.exists(mark), open(mark).read()
        assert "# Version: unknown (version asked over unixctl: no control " \
            "socket ovs-vswitchd.{}.ctl in ".format(impostor.pid) in \
            report.unwrap(text)
    finally:
        shutil.rmtree(where)
