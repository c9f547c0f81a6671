# SPDX-License-Identifier: Apache-2.0
"""Unit tests of kernel_delay.py's pure functions and of --ebpf.

None of them needs root or bcc.
"""

import argparse
import ctypes
import datetime
import errno
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time

import pytest

import btf_builder
from conftest import (ROWS, SCRIPT, AccRow, Budget, Sched, SysSlot,
                      SysStart)
from fakes import POLL_NRS, QUIET, report_rows

VMLINUX = "/sys/kernel/btf/vmlinux"
needs_btf = pytest.mark.skipif(not os.access(VMLINUX, os.R_OK),
                               reason="no readable kernel BTF")


# ---- 1. Argument parsing ---------------------------------------------------

def test_defaults(kd):
    args = kd.parse_args([])
    assert (args.pid, args.sample_time, args.sample_count,
            args.sample_interval, args.buffer_page_count, args.trigger_delta,
            args.max_threads, args.debug, args.start_trigger,
            args.stop_trigger, args.ebpf) == \
        (None, 0.5, 1, 0, 1024, 0, None, 0, None, None, False)


def test_the_unreleased_process_name_spelling_is_refused(kd, capsys):
    with pytest.raises(SystemExit) as exc:
        kd.parse_args(["--process-name", "ovsdb-server"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --process-name" in capsys.readouterr().err


@pytest.mark.parametrize("argv, attr, expected", [
    (["--trigger-delta"], "trigger_delta", 0),
    (["--trigger-delta", "5000", "--start-trigger", "u:a:b",
      "--stop-trigger", "u:a:c"], "trigger_delta", 5000),
    (["--process", "ovn-controller"], "process", "ovn-controller"),
    (["--format", "json"], "format", "json"),
    (["--output", "r.txt"], "output", "r.txt"),
    (["--buffer-page-count", "1000"], "buffer_page_count", 1024),
    (["--buffer-page-count", "1"], "buffer_page_count", 1),
    (["--buffer-page-count", "1024"], "buffer_page_count", 1024),
    (["--buffer-page-count", "1025"], "buffer_page_count", 2048),
    (["-p", "010"], "pid", 10),
    (["-D", "0x10"], "debug", 16),
    (["--pid", "4242"], "pid", 4242),
    (["--sample-time", "2.5"], "sample_time", 2.5),
    (["--sample-time", "0.001"], "sample_time", 0.001),
    (["--sample-interval", "1"], "sample_interval", 1.0),
    (["-D"], "debug", 0x3f),
    (["--ebpf"], "ebpf", True),
])
def test_parse_args_values(kd, argv, attr, expected):
    assert getattr(kd.parse_args(argv), attr) == expected


def test_parse_args_trigger(kd):
    args = kd.parse_args(["--start-trigger", "up:bridge_run",
                          "--stop-trigger", "ur:bridge_run"])
    assert args.start_trigger == kd.Trigger("up:bridge_run", "uprobe", "",
                                            "bridge_run")
    assert args.stop_trigger.kind == "uretprobe"
    assert kd.triggers_of(args) == [("start", args.start_trigger),
                                    ("stop", args.stop_trigger)]


@pytest.mark.parametrize("argv, message", [
    (["-p", "-5"], "argument -p/--pid: must not be negative"),
    (["-p", "0"], "argument -p/--pid: must be at least 1"),
    (["--pid", "abc"], "argument -p/--pid: 'abc' is not an integer"),
    (["-p", "1.5"], "argument -p/--pid: '1.5' is not an integer"),
    (["--sample-count", "0"], "--sample-count 0 (no end) needs --long-poll"),
    (["--long-poll", "-1"],
     "argument --long-poll: must be a number from 0 to 2592000000"),
    (["--long-poll", "x"],
     "argument --long-poll: 'x' is not a number of milliseconds"),
    (["--long-poll", "5", "--sample-time", "1"],
     "--sample-time makes no sense with --long-poll, which reports "
     "intervals, not windows"),
    (["--long-poll", "5", "--start-trigger", "up:f"],
     "--start-trigger makes no sense with --long-poll, which reports "
     "intervals, not windows"),
    (["--long-poll", "5", "-s"],
     "--syscall-events makes no sense with --long-poll, which reports "
     "intervals, not windows"),
    (["--long-poll", "5", "--sample-interval", "1"],
     "--sample-interval makes no sense with --long-poll, which reports "
     "intervals, not windows"),
    # -1 and 0 break one rule: one message.
    (["--sample-time", "-1"],
     "argument --sample-time: must be a finite number > 0"),
    (["--sample-time", "0"],
     "argument --sample-time: must be a finite number > 0"),
    (["--sample-time", "nan"],
     "argument --sample-time: must be a finite number > 0"),
    (["--sample-time", "inf"],
     "argument --sample-time: must be a finite number > 0"),
    (["--sample-time", "abc"],
     "argument --sample-time: 'abc' is not a number of seconds"),
    (["--output", ""], "argument --output: must name a file"),
    (["-p", "0x10"], "argument -p/--pid: '0x10' is not an integer"),
    (["-D", "zz"], "argument -D/--debug: 'zz' is not an integer"),
    (["--sample-interval", "-0.5"],
     "argument --sample-interval: must be a finite number >= 0"),
    (["--buffer-page-count", "0"],
     "argument --buffer-page-count: must be at least 1"),
    (["--trigger-delta", "-1"],
     "argument --trigger-delta: must not be negative"),
    (["--start-trigger", "x:foo"], "argument --start-trigger: 'x:foo': "
     "unknown trigger type 'x'; use one of u, t, k, kr, up, ur"),
    (["--stop-trigger", "k:a:b"], "argument --stop-trigger: 'k:a:b': "
     "wrong number of fields; expected k:FUNCTION"),
    (["--max-threads", "0"], "argument --max-threads: must be at least 1"),
])
def test_parse_args_errors(kd, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        kd.parse_args(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: ")
    assert err.splitlines()[-1].endswith("error: " + message)


def test_help_epilog(kd, capsys):
    with pytest.raises(SystemExit) as exc:
        kd.parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "\nexamples:\n" in out
    assert "  ./kernel_delay.py -p 1234 --sample-time 2\n" in out
    table = out.split("\nexit codes:\n", 1)[1].splitlines()
    assert [int(line.split()[0]) for line in table] == \
        [0, 2, 64, 65, 66, 69, 70, 71, 72, 74, 75, 77, 78, 129, 130, 143]
    assert table[0] == "    0  success"
    assert table[1] == "    2  invalid command line (argparse)"
    assert table[2] == \
        "   64  ambiguous target: several ovs-vswitchd, or a thread ID"
    assert "   66  the target process does not exist" in table
    assert "   77  not running as root" in table


# ---- 2. Triggers -----------------------------------------------------------

@pytest.mark.parametrize("spec, kind, target, name", [
    ("u:udpif_revalidator:start_dump", "usdt", "udpif_revalidator",
     "start_dump"),
    ("usdt:main:run_start", "usdt", "main", "run_start"),
    ("t:sched:sched_switch", "tracepoint", "sched", "sched_switch"),
    ("trace:irq:softirq_entry", "tracepoint", "irq", "softirq_entry"),
    ("k:do_sys_poll", "kprobe", "", "do_sys_poll"),
    ("kprobe:_raw_spin_lock", "kprobe", "", "_raw_spin_lock"),
    ("k:foo.isra.0", "kprobe", "", "foo.isra.0"),
    ("kr:foo.constprop.0", "kretprobe", "", "foo.constprop.0"),
    ("kretprobe:ksys_read", "kretprobe", "", "ksys_read"),
    ("up:bridge_run", "uprobe", "", "bridge_run"),
    ("uprobe:bridge_run", "uprobe", "", "bridge_run"),
    ("up:libc:nanosleep", "uprobe", "libc", "nanosleep"),
    ("uprobe:libstdc++.so.6:_Znwm", "uprobe", "libstdc++.so.6", "_Znwm"),
    ("ur:bridge_run", "uretprobe", "", "bridge_run"),
    ("upr:poll_block", "uretprobe", "", "poll_block"),
    ("uretprobe:libofproto-3.1.so.0:run", "uretprobe",
     "libofproto-3.1.so.0", "run"),
    ("ur:/usr/lib/x86_64-linux-gnu/libc.so.6:nanosleep", "uretprobe",
     "/usr/lib/x86_64-linux-gnu/libc.so.6", "nanosleep"),
])
def test_parse_trigger(kd, spec, kind, target, name):
    assert kd.parse_trigger(spec) == kd.Trigger(spec, kind, target, name)


@pytest.mark.parametrize("spec, message", [
    ("x:foo", "unknown trigger type 'x'; use one of u, t, k, kr, up, ur"),
    ("U:a:b", "unknown trigger type 'U'; use one of u, t, k, kr, up, ur"),
    ("bridge_run",
     "unknown trigger type 'bridge_run'; use one of u, t, k, kr, up, ur"),
    ("u:prov", "wrong number of fields; expected u:PROVIDER:PROBE"),
    ("usdt:a:b:c", "wrong number of fields; expected u:PROVIDER:PROBE"),
    ("t:a:b:c", "wrong number of fields; expected t:SYSTEM:EVENT"),
    ("k:a:b", "wrong number of fields; expected k:FUNCTION"),
    ("kr:a:b", "wrong number of fields; expected kr:FUNCTION"),
    ("up:a:b:c",
     "wrong number of fields; expected up:FUNCTION or up:LIBRARY:FUNCTION"),
    ("ur:a:b:c",
     "wrong number of fields; expected ur:FUNCTION or ur:LIBRARY:FUNCTION"),
    ("t:sched:sched_switch;rm", "'sched_switch;rm' is not a valid name"),
    ("k:foo-bar", "'foo-bar' is not a valid name"),
    ("u:prov:pro be", "'pro be' is not a valid name"),
    ("k:1abc", "'1abc' is not a valid name"),
    ("k:foo.", "'foo.' is not a valid name"),
    ("k:foo\n", "'foo\n' is not a valid name"),
    ("up:lib:na$me", "'na$me' is not a valid name"),
    ("up:lib;rm:foo", "'lib;rm' is not a valid name"),
    ("u::probe", "'' is not a valid name"),
    ("t:sched:", "'' is not a valid name"),
    ("kr:", "'' is not a valid name"),
    ("up::foo", "'' is not a valid name"),
])
def test_parse_trigger_invalid(kd, spec, message):
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        kd.parse_trigger(spec)
    assert str(exc.value) == "'{}': {}".format(spec, message)


# ---- 3. The C source -------------------------------------------------------

LAYOUTS = {
    "btf": ((1264, 1268, 24, 4), "btf"),
    "btf-long-state": ((1232, 1236, 16, 8), "btf"),
    "headers": ((0, 0, 0, 0), "headers"),
}
TRIGGER_SETS = [(), ("start",), ("stop",), ("start", "stop")]


def layout(kd, name):
    fields, source = LAYOUTS[name]
    return kd.TaskLayout(*fields, source=source)


def c_define(source, name):
    match = re.search(r"^#define {} +(.+)$".format(name), source, re.M)
    return match and match.group(1)


def c_enum_members(source, name):
    body = re.search(r"^enum %s \{\n(.*?)^\};" % name, source,
                     re.M | re.S).group(1)
    return [(m, int(v)) for m, v in
            re.findall(r"^    ([A-Z_]+) = (\d+),$", body, re.M)]


@pytest.mark.parametrize("triggers", TRIGGER_SETS)
@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_render_common(kd, layout_name, triggers):
    source = kd.render_bpf_source(1234, layout(kd, layout_name), POLL_NRS,
                                  triggers=triggers)
    assert not re.search(r"@[A-Z_]+@", source)
    assert re.search(r"^#define MONITOR_TGID +1234$", source, re.M)
    assert "\n#define IS_POLL(nr) ((nr) == 7 || (nr) == 271)\n" in source
    assert "BPF_PERCPU_ARRAY(counters, u64, {});".format(len(kd.Counter)) in \
        source
    for role in ("start", "stop"):
        assert source.count("int kd_{}_trigger(void *ctx)\n{{\n"
                            "    return kd_{}_trigger_fired();\n}}\n".format(
                                role, role)) == (role in triggers)
    assert len(re.findall(r"^int kd_", source, re.M)) == len(triggers)
    # Helpers carry a prefix: kernel headers, when BCC uses them, define
    # functions such as task_pid().
    helpers = re.findall(r"^static __always_inline [\w ]+?\**(\w+)\(",
                         source, re.M)
    assert len(helpers) > 10
    assert [name for name in helpers if not name.startswith("kd_")] == []


def test_render_enums_match_python(kd):
    source = kd.render_bpf_source(1, layout(kd, "btf"), POLL_NRS)
    for c_name, enum_class, prefix in (("event_type", kd.Event, "EVENT_"),
                                       ("counter", kd.Counter, "COUNTER_"),
                                       ("capture_state", kd.Capture,
                                        "CAPTURE_")):
        assert c_enum_members(source, c_name) == \
            [(prefix + m.name, m.value) for m in enum_class]
    # Every enum constant the C code uses is declared.
    declared = {m for name in ("event_type", "counter", "capture_state")
                for m, _ in c_enum_members(source, name)}
    used = set(re.findall(r"\b(?:EVENT|COUNTER|CAPTURE)_[A-Z_]+\b", source))
    assert "COUNTER_RINGBUF_FULL" in used and used <= declared


@pytest.mark.parametrize("layout_name, pid_off, tgid_off, state_off, "
                         "state_type", [
                             ("btf", "1264", "1268", "24", "u32"),
                             ("btf-long-state", "1232", "1236", "16", "u64"),
                         ])
def test_render_btf_offsets(kd, layout_name, pid_off, tgid_off, state_off,
                            state_type):
    source = kd.render_bpf_source(99, layout(kd, layout_name), (73,))
    assert (c_define(source, "TASK_PID_OFF"), c_define(source,
                                                       "TASK_TGID_OFF"),
            c_define(source, "TASK_STATE_OFF")) == \
        (pid_off, tgid_off, state_off)
    assert "\ntypedef {} task_state_t;\n".format(state_type) in source
    assert "#include" not in source
    assert "\n#define IS_POLL(nr) ((nr) == 73)\n" in source


def test_render_headers_variant(kd):
    source = kd.render_bpf_source(99, layout(kd, "headers"), POLL_NRS)
    assert source.startswith("\n#include <linux/sched.h>\n")
    assert c_define(source, "TASK_PID_OFF") == \
        "offsetof(struct task_struct, pid)"
    assert c_define(source, "TASK_TGID_OFF") == \
        "offsetof(struct task_struct, tgid)"
    assert c_define(source, "TASK_STATE_OFF") == \
        "offsetof(struct task_struct, TASK_STATE_MEMBER)"
    assert "\ntypedef typeof(((struct task_struct *)0)->TASK_STATE_MEMBER) " \
        "task_state_t;\n" in source
    assert "#define TASK_STATE_MEMBER __state\n" in source


@pytest.mark.parametrize("pages, expected", [
    (1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024), (1025, 2048)])
def test_render_ringbuf_pages(kd, pages, expected):
    source = kd.render_bpf_source(1, layout(kd, "btf"), POLL_NRS,
                                  page_count=pages)
    assert re.findall(r"BPF_RINGBUF_OUTPUT\(events, (\d+)\);", source) == \
        [str(expected)]


@pytest.mark.parametrize("max_threads, sys_keys, irq_keys", [
    (4096, "65536", "16384"), (100, "1600", "400"), (1, "16", "4")])
def test_render_map_sizes(kd, max_threads, sys_keys, irq_keys):
    kw = {} if max_threads == 4096 else {"max_threads": max_threads}
    source = kd.render_bpf_source(1, layout(kd, "btf"), POLL_NRS, **kw)
    assert (c_define(source, "MAX_THREADS"), c_define(source, "MAX_SYS_KEYS"),
            c_define(source, "MAX_IRQ_KEYS")) == \
        (str(max_threads), sys_keys, irq_keys)
    assert "BPF_HASH(sys_stats, struct sys_key_t, struct acc_t, " \
        "MAX_SYS_KEYS);" in source
    assert "BPF_HASH(softirq_stats, struct softirq_key_t, struct acc_t, " \
        "MAX_IRQ_KEYS);" in source


def test_render_rejects(kd):
    with pytest.raises(ValueError, match="unexpected task state size 2"):
        kd.render_bpf_source(1, kd.TaskLayout(8, 12, 0, 2), POLL_NRS)
    with pytest.raises(ValueError, match=r"no poll\(\) system call numbers"):
        kd.render_bpf_source(1, layout(kd, "btf"), ())


def test_render_template(kd):
    assert kd.render_template("a @X@ b @Y_Z@ @X@", {"X": 1, "Y_Z": "c"}) == \
        "a 1 b c 1"
    assert kd.render_template("a@b@c @lower@", {}) == "a@b@c @lower@"
    with pytest.raises(kd.TemplateError,
                       match=r"no value for template tokens: \['B', 'C'\]"):
        kd.render_template("@A@ @C@ @B@", {"A": 1})
    with pytest.raises(kd.TemplateError, match="template token left"):
        kd.render_template("@A@ @B@", {"A": "@B@", "B": "@A@"})


# ---- 4. --ebpf -------------------------------------------------------------

@needs_btf
def test_main_ebpf(kd, capsys):
    out = io.StringIO()
    assert kd.main(["--ebpf", "-p", "4242"], out=out) == 0
    source = out.getvalue()
    assert "\n#define MONITOR_TGID    4242\n" in source
    assert re.search(r"^#define TASK_PID_OFF +\d+$", source, re.M)
    assert "BPF_RINGBUF_OUTPUT(events, 1024);" in source
    assert not re.search(r"^int kd_", source, re.M)
    assert capsys.readouterr() == ("", "")


@needs_btf
def test_main_ebpf_triggers_stay_out_of_source(kd):
    out = io.StringIO()
    argv = ["--ebpf", "-p", "7", "--buffer-page-count", "1000",
            "--start-trigger", "u:udpif_revalidator:start_dump",
            "--stop-trigger", "ur:libc:nanosleep"]
    assert kd.main(argv, out=out) == 0
    source = out.getvalue()
    assert "BPF_RINGBUF_OUTPUT(events, 1024);" in source
    assert source.count("int kd_start_trigger(void *ctx)") == 1
    assert source.count("int kd_stop_trigger(void *ctx)") == 1
    for text in ("udpif", "revalidator", "start_dump", "libc", "nanosleep"):
        assert text not in source


@needs_btf
def test_script_ebpf_unprivileged(script_for_nobody):
    cmd = ["/usr/bin/python3" if os.path.exists("/usr/bin/python3")
           else sys.executable, script_for_nobody, "--ebpf", "-p", "1"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv is needed to drop root")
        cmd = [setpriv, "--reuid=65534", "--regid=65534",
               "--clear-groups"] + cmd
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, cwd="/", timeout=120,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert (res.returncode, res.stderr) == (0, "")
    assert "\n#define MONITOR_TGID    1\n" in res.stdout
    assert "RAW_TRACEPOINT_PROBE(sys_enter)" in res.stdout


# ---- The system call table of a newer kernel; tracer calls ------------------

def test_late_syscalls_complete_an_old_table(kd):
    old = {0: "read", 334: "rseq"}
    added = kd.complete_syscall_table(old, {435: "clone3"}, "x86_64")
    assert added[335] == "uretprobe" and added[336] == "uprobe"
    assert added[435] == "clone3" and added[451] == "cachestat"
    assert 0 not in added and 334 not in added
    assert 335 not in kd.complete_syscall_table(old, {}, "aarch64")


def test_tracer_calls_are_compiled_out_of_the_counts(kd):
    layout = kd.TaskLayout(1264, 1268, 24, 4, on_cpu_offset=52,
                           regs_nr_offset=120, compat_offset=16)
    source = kd.render_bpf_source(1, layout, (7, 271),
                                  tracer_nrs=(335, 336))
    assert "#define URETPROBE_NR    335" in source
    assert "#define HAVE_COMPAT     1" in source
    assert "#define TASK_COMPAT_OFF 16" in source
    plain = kd.render_bpf_source(1, kd.TaskLayout(1264, 1268, 24, 4), (7,))
    assert "#define URETPROBE_NR    -1" in plain
    assert "#define HAVE_COMPAT     0" in plain


# ---- 5. BTF ----------------------------------------------------------------

@needs_btf
def test_btf_running_kernel(kd):
    with open(VMLINUX, "rb") as btf:
        found = kd.task_layout_from_btf(btf.read())
    assert found.source == "btf"
    assert found.tgid_offset == found.pid_offset + 4
    assert found.state_size in (4, 8)
    assert 0 <= found.state_offset < found.pid_offset < 16384
    assert kd.read_task_layout() == found


@pytest.mark.parametrize("kflag", [False, True])
@pytest.mark.parametrize("duplicate_name", [False, True])
def test_btf_synthetic_modern(kd, kflag, duplicate_name):
    blob = btf_builder.modern_task_btf(kflag=kflag,
                                       duplicate_name=duplicate_name)
    assert kd.task_layout_from_btf(blob) == kd.TaskLayout(
        pid_offset=1264, tgid_offset=1272, state_offset=24, state_size=4)


def test_btf_task_cpu_before_5_16(kd):
    blob = btf_builder.task_btf({"__state": 8, "cpu": 40, "pid": 100,
                                 "tgid": 104})
    assert kd.task_layout_from_btf(blob).cpu_offset == 40


def test_btf_task_cpu_in_thread_info(kd):
    """Since Linux 5.16 the CPU is task_struct.thread_info.cpu."""
    builder = btf_builder.BtfBuilder()
    int_id, uint_id, long_id = btf_builder.filler_types(builder)
    info = builder.add_struct("thread_info", 24, [
        ("flags", long_id, 0), ("syscall_work", long_id, 64),
        ("status", uint_id, 128), ("cpu", uint_id, 160)])
    builder.add_struct("task_struct", 4096, [
        ("thread_info", info, 0), ("__state", uint_id, 24 * 8),
        ("pid", int_id, 1264 * 8), ("tgid", int_id, 1268 * 8)])
    layout = kd.task_layout_from_btf(builder.blob())
    assert layout.cpu_offset == 20
    source = kd.render_bpf_source(1, layout, POLL_NRS, cpus=6)
    assert "#define TASK_CPU_OFF    20\n" in source
    assert "#define HAVE_TASK_CPU   1\n" in source
    assert "#define MAX_CPUS        6\n" in source


def test_btf_synthetic_old_long_state(kd):
    blob = btf_builder.task_btf({"state": 16, "pid": 1232, "tgid": 1236},
                                state_type="long")
    assert kd.task_layout_from_btf(blob) == kd.TaskLayout(1232, 1236, 16, 8)


def test_btf_prefers_new_state(kd):
    blob = btf_builder.task_btf({"state": 8, "__state": 40, "pid": 100,
                                 "tgid": 104})
    assert kd.task_layout_from_btf(blob) == kd.TaskLayout(100, 104, 40, 4)


@pytest.mark.parametrize("members, kw, message", [
    ({"tgid": 8, "__state": 0}, {}, "task_struct has no 'pid' member"),
    ({"pid": 8, "__state": 0}, {}, "task_struct has no 'tgid' member"),
    ({"pid": 8, "tgid": 12}, {},
     "task_struct has no '__state' or 'state' member"),
    ({"pid": "65", "tgid": 12, "__state": 0}, {},
     "task_struct member is a bit field"),
    ({"pid": 8, "tgid": 16, "__state": 0}, {"pid_type": "long"},
     "task_struct pid/tgid are not 32-bit"),
])
def test_btf_task_struct_errors(kd, members, kw, message):
    with pytest.raises(kd.BtfError) as exc:
        kd.task_layout_from_btf(btf_builder.task_btf(members, **kw))
    assert str(exc.value) == message


def test_btf_rejects_byte_aligned_bit_field(kd):
    """With kind_flag set (pahole sets it on task_struct, which has bit
    fields) the bit field size sits in the top 8 bits of the offset."""
    builder = btf_builder.BtfBuilder()
    int_id, uint_id, _ = btf_builder.filler_types(builder)
    builder.add_struct("task_struct", 64, [
        ("__state", uint_id, 0), ("pid", int_id, 64, 4),   # int pid:4;
        ("tgid", int_id, 96)], kflag=True)
    with pytest.raises(kd.BtfError, match="bit field"):
        kd.task_layout_from_btf(builder.blob())


def test_btf_no_task_struct(kd):
    builder = btf_builder.BtfBuilder()
    btf_builder.filler_types(builder)       # has a FWD task_struct only
    with pytest.raises(kd.BtfError) as exc:
        kd.task_layout_from_btf(builder.blob())
    assert str(exc.value) == "no struct named 'task_struct' in BTF"


@pytest.mark.parametrize("cut", [0, 23, 24, 100, -1])
def test_btf_truncated(kd, cut):
    blob = btf_builder.modern_task_btf()
    with pytest.raises(kd.BtfError) as exc:
        kd.Btf(blob[:cut])
    assert str(exc.value) == "BTF data is truncated"


def test_btf_bad_magic(kd):
    blob = btf_builder.modern_task_btf()
    with pytest.raises(kd.BtfError) as exc:
        kd.Btf(b"\xeb\x9f" + blob[2:])
    assert str(exc.value) == "not little-endian BTF data (magic 0x9feb)"


# ---- 6. The report ---------------------------------------------------------

GOLDEN_REPORT = """\
TID        THREAD           <RESOURCE SPECIFIC>
---------- ---------------- ----------------------------------------------------------------------------
      2001 handler12        [SYSCALL STATISTICS]
                            NAME                 NUMBER       COUNT          TOTAL ns            MAX ns
                            poll                      7          10         5,000,000           900,000
                            write                     1           2         1,234,567         1,000,000
                            read                      0           3            12,345             8,000
                            ppoll                   271           1             2,000             2,000
                            <unknown:999>           999           1               100               100
                            TOTAL( - poll):                       6         1,247,012

                            [LONG POLL STATISTICS]
                            COUNT             AVERAGE ns            MIN ns            MAX ns
                                     4         2,500,000             1,000         6,000,000

                            [THREAD RUN STATISTICS]
                            SCHED_CNT           TOTAL ns            MIN ns            MAX ns
                                    20         3,000,000             1,500           400,000

                            [THREAD READY STATISTICS]
                            SCHED_CNT           TOTAL ns            MAX ns
                                    19            45,000             9,999

                            [HARD IRQ STATISTICS]
                            NAME                       COUNT          TOTAL ns            MAX ns
                            nvme0q1                        3             7,000             3,000
                            acpi                           1               800               800
                            TOTAL:                         4             7,800

                            [SOFT IRQ STATISTICS]
                            NAME                 VECT_NR       COUNT          TOTAL ns            MAX ns
                            timer                      1           2            50,000            40,000
                            net_rx                     3           5            50,000            20,000
                            <unknown:42>              42           1             1,000             1,000
                            TOTAL:                                 8           101,000

      1002 revalidator7     [SYSCALL STATISTICS]
                            NAME                 NUMBER       COUNT          TOTAL ns            MAX ns
                            poll                      7           1               100               100

                            [THREAD RUN STATISTICS]
                            none in this window

                            [THREAD READY STATISTICS]
                            none in this window

                            [THREAD STOPPED STATISTICS]
                            STOP_CNT            TOTAL ns            MAX ns
                                     1     2,000,000,000     2,000,000,000

# No events from 6 threads (blocked or on a CPU for the whole window):
#   handler13 (3000, in poll), handler13 (3001, in poll), monitor (2998),
#   ovs-vswitchd (2999, running), revalidator14 (3005), urcu3 (3003)
"""  # noqa: E501


def test_collect_threads(kd):
    threads = kd.collect_threads(report_rows(kd))
    assert sorted(threads) == [1002, 2001]
    busy, idle = threads[2001], threads[1002]
    assert (busy.tid, busy.name, sorted(busy.syscalls)) == \
        (2001, "", [0, 1, 7, 271, 999])
    assert busy.hardirqs == {"nvme0q1": kd.Acc(3, 7_000, 1_500, 3_000),
                             "acpi": kd.Acc(1, 800, 800, 800)}
    assert busy.softirqs[42] == kd.Acc(1, 1_000, 1_000, 1_000)
    assert busy.stopped is None
    assert (idle.poll, idle.run, idle.ready, idle.hardirqs, idle.softirqs) \
        == (None, None, None, {}, {})
    assert idle.stopped == kd.Acc(1, 2 * 10**9, 2 * 10**9, 2 * 10**9)
    assert kd.collect_threads({}) == {}


def test_collect_threads_merges_hardirq_names(kd):
    rows = {"hardirq_stats": [((5, 1, "eth0"), kd.Acc(1, 50, 50, 50)),
                              ((5, 2, "eth0"), kd.Acc(3, 90, 10, 40)),
                              ((6, 2, "eth0"), kd.Acc(1, 7, 7, 7))]}
    threads = kd.collect_threads(rows)
    assert threads[5].hardirqs == {"eth0": kd.Acc(4, 140, 10, 50)}
    assert threads[6].hardirqs == {"eth0": kd.Acc(1, 7, 7, 7)}


def test_format_report_golden(kd):
    threads = kd.collect_threads(report_rows(kd))
    threads[2001].name = "handler12"
    threads[1002].name = "revalidator7"
    names = {0: "read", 1: "write", 7: "poll", 271: "ppoll"}
    lines = kd.format_report(threads, names, POLL_NRS, QUIET)
    assert "\n".join(lines) + "\n" == GOLDEN_REPORT
    assert max(len(line) for line in GOLDEN_REPORT.splitlines()
               if line.startswith("#")) <= 79


def test_format_report_thread_order(kd):
    threads = {tid: kd.ThreadStats(tid=tid, name=name) for tid, name in
               ((20, "handler1"), (10, "handler1"), (30, "b"), (5, "c"))}
    heads = [line.split()[:2] for line in
             kd.format_report(threads, {}, POLL_NRS)
             if line.endswith("[SYSCALL STATISTICS]")]
    assert heads == [["30", "b"], ["5", "c"], ["10", "handler1"],
                     ["20", "handler1"]]


def test_format_thread_only_poll_has_no_total(kd):
    stats = kd.ThreadStats(tid=1, name="t",
                           syscalls={271: kd.Acc(2, 10, 5, 5)})
    lines = kd.format_thread(stats, {271: "ppoll"}, POLL_NRS)
    assert not any("TOTAL(" in line for line in lines)
    assert [line.strip() for line in lines if "[" in line] == [
        "1 t                [SYSCALL STATISTICS]",
        "[THREAD RUN STATISTICS]", "[THREAD READY STATISTICS]"]


@pytest.mark.parametrize("vec, name", [
    (0, "hi"), (1, "timer"), (3, "net_rx"), (9, "rcu"), (10, "<unknown:10>"),
    (42, "<unknown:42>")])
def test_softirq_name(kd, vec, name):
    assert kd.softirq_name(vec) == name


def test_quiet_note_singular(kd):
    assert kd.format_report({}, {}, POLL_NRS, [(7, "urcu2", "")])[2:] == [
        "", "# No events from 1 thread (blocked or on a CPU for the whole "
        "window): urcu2 (7)"]
    assert kd.format_report({}, {}, POLL_NRS,
                            [(8, "handler1", "in poll")])[-1] == \
        "#   handler1 (8, in poll)"


def test_quiet_note_keeps_names_whole(kd):
    lines = kd.format_report({}, {}, POLL_NRS, [(1, "ovs-vswitchd", "")])
    assert any("ovs-vswitchd (1)" in line for line in lines)


# ---- 7. Warnings -----------------------------------------------------------

TABLE_FULL = ("{} updates of the {} table failed (table full): some data is "
              "missing; increase --max-threads.")


def unwrap(lines):
    """The text of wrapped warning lines, and check their shape."""
    assert lines[0].startswith("# WARNING: ")
    assert all(line.startswith("#          ") for line in lines[1:])
    assert all(len(line) <= 79 for line in lines)
    return " ".join(line[11:] for line in lines)


def test_format_warnings_none(kd):
    assert kd.format_warnings({}, 5) == []
    assert kd.format_warnings({c: 0 for c in kd.Counter}, 5) == []


def test_format_warnings_ringbuf(kd):
    assert kd.format_warnings({kd.Counter.RINGBUF_FULL: 12}, 1) == [
        "# WARNING: 12 events were dropped: the ring buffer was full; "
        "increase",
        "#          --buffer-page-count."]
    assert unwrap(kd.format_warnings({kd.Counter.RINGBUF_FULL: 1}, 1)) == \
        "1 event was dropped: the ring buffer was full; increase " \
        "--buffer-page-count."


@pytest.mark.parametrize("counter, table", [
    ("SYS_START_FULL", "system call start"),
    ("SYS_STATS_FULL", "system call statistics"),
    ("POLL_FULL", "poll gap"), ("HARDIRQ_FULL", "hard IRQ"),
    ("SOFTIRQ_FULL", "soft IRQ"),
    ("NAME_FULL", "exited thread name")])
def test_format_warnings_table_full(kd, counter, table):
    assert unwrap(kd.format_warnings({kd.Counter[counter]: 3}, 1)) == \
        TABLE_FULL.format(3, table)


def test_format_warnings_trigger_missed(kd):
    assert kd.format_warnings({kd.Counter.TRIGGER_MISSED: 4}, 1) == []
    assert unwrap(kd.format_warnings({kd.Counter.TRIGGER_MISSED: 4}, 2)) == \
        "4 start triggers were missed: they fired while the previous " \
        "window was being reported."


def test_every_counter_is_counted_by_the_c_program(kd):
    """No loss counter that nothing increments (a JSON key that is always
    0): each appears in the C beyond the enum that declares it (but
    PROGRAM_SKIPPED, which the kernel counts, not the program)."""
    for counter in set(kd.Counter) - {kd.Counter.PROGRAM_SKIPPED}:
        uses = re.findall(r"\bCOUNTER_{}\b".format(counter.name),
                          kd.EBPF_SOURCE + kd.UPCALL_SOURCE +
                          kd.TRIGGER_FUNCTION)
        assert uses, counter


def test_format_warnings_order(kd):
    counters = {kd.Counter.NAME_FULL: 1, kd.Counter.POLL_FULL: 2,
                kd.Counter.RINGBUF_FULL: 3}
    assert [line.split()[2] for line in kd.format_warnings(counters, 1)
            if line.startswith("# WARNING")] == ["3", "2", "1"]


# ---- 8. pick_target --------------------------------------------------------

def test_pick_target_one(kd):
    assert kd.pick_target([(12, "monitor"), (10, "ovs-vswitchd-x"),
                           (11, "ovs-vswitchd"), (13, "ovsdb-server"),
                           (14, "vswitchd")]) == 11
    assert kd.pick_target([(5, "monitor"), (6, "ovs-vswitchd")],
                          name="monitor") == 5


def test_pick_target_none(kd):
    with pytest.raises(kd.Fatal) as exc:
        kd.pick_target([(10, "ovs-vswitchd-x"), (12, "monitor")])
    assert exc.value.code == os.EX_NOINPUT
    assert str(exc.value) == \
        "no running ovs-vswitchd process found; start it or pass --pid"


def test_pick_target_several(kd):
    with pytest.raises(kd.Fatal) as exc:
        kd.pick_target([(300, "ovs-vswitchd"), (4, "ovs-vswitchd"),
                        (12, "monitor"), (30, "ovs-vswitchd")])
    assert exc.value.code == os.EX_USAGE
    assert str(exc.value) == "3 ovs-vswitchd processes are running " \
        "(4, 30, 300); choose one with --pid"


# ---- 9.-10. Small helpers --------------------------------------------------

def test_timestamp_line(kd):
    now = datetime.datetime(2023, 6, 8, 12, 17, 22, 725127,
                            tzinfo=datetime.timezone(
                                datetime.timedelta(hours=2)))
    assert kd.timestamp_line("# Start sampling", now) == \
        "# Start sampling @2023-06-08T12:17:22.725127 (10:17:22 UTC)"


@pytest.mark.parametrize("value, expected", [
    (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024), (1024, 1024),
    (1025, 2048), (2**20 + 1, 2**21)])
def test_round_up_pow2(kd, value, expected):
    assert kd.round_up_pow2(value) == expected


def test_include_tree_x86_64(kd):
    files = kd.include_tree_files("x86_64")
    assert sorted(files) == [
        "arch/x86/include/asm/page.h", "arch/x86/include/asm/ptrace.h",
        "include/generated/uapi/linux/version.h",
        "include/linux/kconfig.h", "include/linux/log2.h",
        "include/uapi/linux/bpf.h", "include/uapi/linux/bpf_common.h",
        "include/uapi/linux/if_packet.h", "include/uapi/linux/ptrace.h",
        "include/uapi/linux/types.h"]
    kconfig = files["include/linux/kconfig.h"].splitlines()
    assert "#define CONFIG_BPF_SYSCALL 1" in kconfig
    for ctype, name in (("unsigned char", "u8"), ("signed char", "s8"),
                        ("unsigned short", "u16"), ("signed short", "s16"),
                        ("unsigned int", "u32"), ("signed int", "s32"),
                        ("unsigned long long", "u64"),
                        ("signed long long", "s64")):
        assert "typedef {} {};".format(ctype, name) in kconfig
    assert files["include/uapi/linux/bpf.h"] == ""
    assert "#define roundup_pow_of_two(n)" in files["include/linux/log2.h"]
    assert "#define PAGE_SHIFT 12" in files["arch/x86/include/asm/page.h"]
    ptrace = files["arch/x86/include/asm/ptrace.h"]
    body = re.search(r"struct pt_regs \{(.*?)\};", ptrace, re.S).group(1)
    # The kernel's x86_64 layout and names (not the C library's rip, rsp).
    assert re.findall(r"\w+", body.replace("unsigned long", "")) == [
        "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8",
        "ax", "cx", "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp",
        "ss"]


def test_include_tree_aarch64(kd):
    files = kd.include_tree_files("aarch64")
    assert "arch/arm64/include/asm/ptrace.h" in files
    assert "struct pt_regs {" in files["arch/arm64/include/asm/ptrace.h"]
    assert files["include/linux/kconfig.h"] == \
        kd.include_tree_files("x86_64")["include/linux/kconfig.h"]


def test_include_tree_unknown_machine(kd):
    with pytest.raises(ValueError, match="no include tree recipe for riscv64"):
        kd.include_tree_files("riscv64")


# ---- 11. main's Fatal path -------------------------------------------------

def test_main_fatal_missing_pid(kd, capsys):
    out = io.StringIO()
    code = kd.main(["-p", "999999999"], out=out)
    err = capsys.readouterr().err
    assert out.getvalue() == ""
    assert len(err.splitlines()) == 1 and err.endswith("\n")
    if kd.bcc is not None:
        assert code == os.EX_NOINPUT
        assert err == "ERROR: process 999999999 does not exist; check the " \
            "--pid value\n"
    else:
        assert code == os.EX_OSFILE
        assert err.startswith("ERROR: the Python module bcc ")
        assert "python3-bpfcc" in err


# ---- Periods open when the window closes -----------------------------------

def test_add_open_periods(kd):
    threads = {7: kd.ThreadStats(tid=7, run=kd.Acc(2, 300, 100, 200))}
    starts = {"run": {7: 900, 8: 950}, "ready": {9: 400},
              "stopped": {8: 1001}}
    kd.add_open_periods(threads, starts, 1000)
    # An open period is one more period, cut at the window's end.
    assert threads[7].run == kd.Acc(3, 400, 100, 200)
    assert threads[8].run == kd.Acc(1, 50, 50, 50)
    # Stamped after the end (a race with the close): left out.
    assert threads[8].stopped is None
    assert threads[9].ready == kd.Acc(1, 600, 600, 600)
    assert threads[9].run is None
    assert sorted(threads) == [7, 8, 9]


def test_split_sched_state(kd):
    entries = [
        # On a CPU at the end, after 2 runs and 1 wait; 1 switch lost.
        (7, Sched(run_start=900, switched=1, lost=1,
                  run=AccRow(2, 300, 100, 200), ready=AccRow(1, 50, 50, 50))),
        # Stopped at the end, never ran in the window.
        (8, Sched(stop_start=950, switched=1)),
        # Seen only while it waited; one stop closed.
        (9, Sched(ready_start=400, switched=1, stop=AccRow(1, 70, 70, 70))),
    ]
    rows, starts, lost = kd.split_sched_state(entries)
    assert rows == {"run_stats": [((7,), kd.Acc(2, 300, 100, 200))],
                    "ready_stats": [((7,), kd.Acc(1, 50, 50, 50))],
                    "stop_stats": [((9,), kd.Acc(1, 70, 70, 70))]}
    assert starts == {"run": {7: 900}, "ready": {9: 400},
                      "stopped": {8: 950}}
    assert lost == {7: 1}
    threads = kd.add_open_periods(kd.collect_threads(rows), starts, 1000)
    assert threads[7].run == kd.Acc(3, 400, 100, 200)
    assert threads[8].stopped == kd.Acc(1, 50, 50, 50)
    assert threads[9].ready == kd.Acc(1, 600, 600, 600)


def test_budget_state_rows(kd):
    entries = [(7, Sched(switched=1, budget=Budget(
                    sleep_start=500, sleep_nr=7, stop_ready=30, call_done=1,
                    in_use=1))),
               (8, Sched(switched=1))]     # budget not in use
    assert kd.budget_state_rows(entries) == [((7,), (500, 7, 0, 30, 1))]


class _AccC(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64)
                for name in ("max", "min", "total", "count")]


class _BudgetC(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "in_use", "call_done", "stop_ready", "unknown", "sleep_start")] \
        + [("sleep_nr", ctypes.c_int64)]


class _SchedC(ctypes.Structure):
    """struct sched_t with its fields (and theirs) in another order than
    the C's."""
    _fields_ = [("budget", _BudgetC), ("stop", _AccC),
                ("lost", ctypes.c_uint64),
                ("ready", _AccC), ("stop_start", ctypes.c_uint64),
                ("run", _AccC), ("ready_start", ctypes.c_uint64),
                ("switched", ctypes.c_uint64), ("run_start", ctypes.c_uint64)]


def test_reordered_c_fields_keep_their_meaning(kd):
    """Rows are read by field name: a struct whose fields come in another
    order decodes to the same analysis, by batch (unpack_rows) and by
    lookup (plain)."""
    value = _SchedC(budget=_BudgetC(in_use=1, call_done=1, stop_ready=30,
                                    unknown=4, sleep_start=500, sleep_nr=-2),
                    stop=_AccC(count=1, total=70, min=70, max=70), lost=3,
                    run=_AccC(count=2, total=300, min=100, max=200),
                    ready_start=400, switched=1)
    batch = kd.unpack_rows(ctypes.c_uint32, _SchedC, bytes(ctypes.c_uint32(7)),
                           bytes(value), 1)
    for entries in (batch, [(7, kd.plain(value))]):
        assert entries[0][1].budget.sleep_nr == -2
        assert kd.budget_state_rows(entries) == [((7,), (500, -2, 4, 30, 1))]
        rows, starts, lost = kd.split_sched_state(entries)
        assert rows == {"run_stats": [((7,), kd.Acc(2, 300, 100, 200))],
                        "ready_stats": [],
                        "stop_stats": [((7,), kd.Acc(1, 70, 70, 70))]}
        assert starts == {"run": {}, "ready": {7: 400}, "stopped": {}}
        assert lost == {7: 3}


def test_row_fixtures_match_the_c(kd):
    """The tests' named rows (conftest.ROWS) have the C structs' fields,
    in order (those of #if blocks left out)."""
    source = kd.render_bpf_source(1, kd.TaskLayout(1, 2, 3, 4), (7,))
    for row in ROWS:
        body = re.search(r"^struct {} {{\n(.*?)^}};".format(row.__name__),
                         source, re.M | re.S).group(1)
        body = re.sub(r"^#if.*?^#endif", "", body, flags=re.M | re.S)
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        fields = re.findall(r"(\w+)(?:\[\w+\])?;", body)
        assert tuple(fields) == row._fields, row.__name__


def test_acc_add_keeps_min_and_max(kd):
    acc = kd.Acc()
    for delta in (30, 10, 20):
        acc.add(delta)
    assert acc == kd.Acc(3, 60, 10, 30)
    assert acc.average == 20


def test_format_warnings_lost_switches(kd):
    assert unwrap(kd.format_warnings({kd.Counter.SCHED_LOST: 2}, 1)) == (
        "2 context switches were not reported by the kernel (a thread "
        "switched out without being seen switching in): the periods around "
        "them are left out.")
    assert unwrap(kd.format_warnings({kd.Counter.SCHED_LOST: 1}, 1)) \
        .startswith("1 context switch was not reported by the kernel")


# ---- Attaching triggers (kprobes cannot load on this kernel) ---------------

class FakeBpf:
    """Records the attach calls bcc would get."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if not name.startswith("attach_"):
            raise AttributeError(name)
        return lambda **kwargs: self.calls.append((name, kwargs))


@pytest.mark.parametrize("text, call", [
    ("k:foo.isra.0", ("attach_kprobe", {"event": "foo.isra.0"})),
    ("kr:do_sys_poll", ("attach_kretprobe", {"event": "do_sys_poll"})),
    ("t:sched:sched_switch", ("attach_tracepoint",
                              {"tp": "sched:sched_switch"})),
    ("up:bridge_run", ("attach_uprobe", {"name": "/proc/42/exe",
                                         "sym": "bridge_run", "pid": 42})),
    ("upr:bridge_run", ("attach_uretprobe", {"name": "/proc/42/exe",
                                             "sym": "bridge_run",
                                             "pid": 42})),
])
def test_attach_triggers(kd, text, call):
    fake = FakeBpf()
    kd.attach_triggers(fake, [("stop", kd.parse_trigger(text))], 42)
    name, kwargs = call
    assert fake.calls == [(name, dict(kwargs, fn_name="kd_stop_trigger"))]


def test_kprobe_trigger_source(kd):
    """A kprobe trigger is the generic trigger function: the same C as any
    other trigger, with the name going only to attach_kprobe()."""
    layout = kd.TaskLayout(1264, 1268, 24, 4)
    source = kd.render_bpf_source(1, layout, (7,), triggers=("start",))
    assert "int kd_start_trigger(void *ctx)" in source
    assert "foo" not in source


def test_verify_kprobe_trigger(kd, monkeypatch):
    if not os.access("/proc/kallsyms", os.R_OK):
        pytest.skip("no /proc/kallsyms")
    monkeypatch.setattr(kd, "kprobes_supported", lambda tracefs: True)
    kd.verify_trigger(kd.parse_trigger("k:schedule"), 1, "/nonexistent")
    with pytest.raises(kd.Fatal) as exc:
        kd.verify_trigger(kd.parse_trigger("kr:kd_no_such_function"), 1,
                          "/nonexistent")
    assert exc.value.code == os.EX_CONFIG
    assert "no kernel function kd_no_such_function" in str(exc.value)
    monkeypatch.setattr(kd, "kprobes_supported", lambda tracefs: False)
    with pytest.raises(kd.Fatal) as exc:
        kd.verify_trigger(kd.parse_trigger("k:schedule"), 1, "/x")
    assert exc.value.code == os.EX_UNAVAILABLE


def test_remove_stale_trees(kd, tmp_path, monkeypatch):
    """Only a tree a dead run of the tool provably made goes: the exact
    name, and its marker file with its text; a live run's stays."""
    monkeypatch.setattr(kd.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(kd, "SHM_DIR", str(tmp_path / "none"))
    live = tmp_path / "kernel_delay.{}.abcd1234".format(os.getpid())
    dead = tmp_path / "kernel_delay.999999999.y_z01234"
    other = tmp_path / "kernel_delay.notapid"
    for path in (live, dead, other):
        (path / "include").mkdir(parents=True)
        (path / kd.TREE_MARKER).write_bytes(kd.TREE_MARKER_TEXT)
    # Looks like a tree, but no marker, or a marker that is not ours.
    unmarked = tmp_path / "kernel_delay.999999998.abcdefgh"
    (unmarked / "include").mkdir(parents=True)
    wrong = tmp_path / "kernel_delay.999999997.abcdefgh"
    wrong.mkdir()
    (wrong / kd.TREE_MARKER).write_bytes(b"something else\n")
    linked = tmp_path / "kernel_delay.999999996.abcdefgh"
    linked.mkdir()
    (linked / kd.TREE_MARKER).symlink_to(dead / kd.TREE_MARKER)
    kd.remove_stale_trees()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, unmarked.name, wrong.name, linked.name])


def test_a_users_directory_of_our_name_survives(kd, tmp_path, monkeypatch):
    """Issue 18 case 11: a user's /tmp/kernel_delay.20261130.reports/, of
    root and with a report in it, is not the tool's: it stays."""
    monkeypatch.setattr(kd.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(kd, "SHM_DIR", str(tmp_path / "none"))
    reports = tmp_path / "kernel_delay.20261130.reports"
    reports.mkdir()
    (reports / "report.txt").write_text("# kernel_delay 1.0\n")
    # Even one with the name pattern of a tree, of a dead PID.
    lookalike = tmp_path / "kernel_delay.20261130.reports1"
    lookalike.mkdir()
    (lookalike / "report.txt").write_text("# kernel_delay 1.0\n")
    root = kd.new_tree_dir()
    try:
        assert (reports / "report.txt").exists()
        assert (lookalike / "report.txt").exists()
        # The tool's own tree carries the marker.
        with open(os.path.join(root, kd.TREE_MARKER), "rb") as marker:
            assert marker.read() == kd.TREE_MARKER_TEXT
    finally:
        shutil.rmtree(root)


def test_tree_dir_prefers_memory(kd, tmp_path, monkeypatch):
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(kd.tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(kd, "SHM_DIR", str(shm))
    # No memory file system: the usual temporary directory.
    assert os.path.dirname(kd.new_tree_dir()) == str(tmp)
    shm.mkdir()
    stale = shm / "kernel_delay.999999999.z1234567"
    stale.mkdir()
    (stale / kd.TREE_MARKER).write_bytes(kd.TREE_MARKER_TEXT)
    root = kd.new_tree_dir()
    assert os.path.dirname(root) == str(shm)
    assert os.path.basename(root).startswith(
        "kernel_delay.{}.".format(os.getpid()))
    assert not stale.exists()


def test_process_alive(kd):
    pytest.importorskip("psutil")
    assert kd.process_alive(os.getpid())
    assert not kd.process_alive(999999999)
    zombie = subprocess.Popen(["true"])
    for _ in range(100):
        if not kd.process_alive(zombie.pid):
            break
        time.sleep(0.02)
    assert not kd.process_alive(zombie.pid)     # exited, not yet reaped
    zombie.wait()


# ---- Choosing how to find task_struct offsets ------------------------------

def test_choose_layout_prefers_btf(kd, tmp_path, monkeypatch):
    btf = tmp_path / "vmlinux"
    btf.write_bytes(btf_builder.task_btf({"pid": 100, "tgid": 104,
                                          "__state": 24}))
    monkeypatch.setattr(kd, "headers_available", lambda: True)
    layout = kd.choose_layout(str(btf))
    assert (layout.source, layout.pid_offset, layout.tgid_offset,
            layout.state_offset) == ("btf", 100, 104, 24)


def test_choose_layout_falls_back_to_headers(kd, tmp_path, monkeypatch):
    monkeypatch.setattr(kd, "headers_available", lambda: True)
    assert kd.choose_layout(str(tmp_path / "none")).source == "headers"
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 64)
    assert kd.choose_layout(str(bad)).source == "headers"


def test_choose_layout_refuses_without_btf_or_headers(kd, tmp_path,
                                                      monkeypatch):
    monkeypatch.setattr(kd, "headers_available", lambda: False)
    with pytest.raises(kd.Fatal) as exc:
        kd.choose_layout(str(tmp_path / "none"))
    assert exc.value.code == os.EX_UNAVAILABLE
    assert "no BTF" in str(exc.value) and "headers" in str(exc.value)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(kd.Fatal) as exc:
        kd.choose_layout(str(bad))
    assert exc.value.code == os.EX_UNAVAILABLE


def test_make_include_tree(kd):
    """Every file of the tree is generated: nothing links to kernel or C
    library headers, which a bare container does not have."""
    root = kd.new_tree_dir()
    try:
        kd.make_include_tree(root)
        assert os.path.basename(root).startswith(
            "kernel_delay.{}.".format(os.getpid()))
        files = kd.include_tree_files(os.uname().machine,
                                      os.sysconf("SC_PAGE_SIZE"),
                                      os.uname().release)
        found = set()
        for top, dirs, names in os.walk(root):
            for name in dirs + names:
                path = os.path.join(top, name)
                assert not os.path.islink(path), path
                if os.path.isfile(path):
                    found.add(os.path.relpath(path, root))
        assert found - {kd.TREE_MARKER} == set(files)
        for path, text in files.items():
            with open(os.path.join(root, path)) as generated:
                assert generated.read() == text
        assert "__u64" in files["include/uapi/linux/types.h"]
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("release,code", [
    ("6.1.0-57-rt-amd64", 0x060100),
    ("6.18.44-fc-v669", 0x061200 + 44),
    ("4.18.0-553.el8_10.x86_64", 0x041200),
    ("5.4.300-generic", 0x0504ff),         # the sublevel saturates
    ("6.9", 0x060900),
])
def test_kernel_version_code(kd, release, code):
    assert kd.kernel_version_code(release) == code
    assert ("#define LINUX_VERSION_CODE {}\n".format(code) in
            kd.include_tree_files("x86_64", release=release)[
                "include/generated/uapi/linux/version.h"])


def test_find_mapped_library(kd, monkeypatch):
    maps = {"/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libm.so.6", "/usr/sbin/ovs-vswitchd",
            "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"}
    maps = {path: "/proc/1/map_files/{}-1".format(index)
            for index, path in enumerate(sorted(maps))}
    maps["/usr/lib/libdel.so.1 (deleted)"] = "/proc/1/map_files/9-1"
    monkeypatch.setattr(kd, "mapped_files", lambda pid: maps)
    for name in ("c", "libc", "libc.so.6"):
        assert kd.find_mapped_library(1, name) == (
            "/usr/lib/x86_64-linux-gnu/libc.so.6", "/proc/1/map_files/0-1")
    assert kd.find_mapped_library(1, "crypto")[0].endswith("libcrypto.so.3")
    # Replaced by an upgrade since it was mapped (issue 18 case 13): found
    # under its name, opened through map_files.
    assert kd.find_mapped_library(1, "del") == (
        "/usr/lib/libdel.so.1 (deleted)", "/proc/1/map_files/9-1")
    with pytest.raises(kd.Fatal) as exc:
        kd.find_mapped_library(1, "ssl")
    assert exc.value.code == os.EX_CONFIG
    assert "not mapped" in str(exc.value) and "libm.so.6" in str(exc.value)


def test_task_syscall_and_where_text(kd):
    me = os.getpid()
    tid = threading.get_native_id()
    # This thread is in read() of its own syscall file.
    assert kd.task_syscall(me, tid) == 0
    assert kd.where_text(0, {0: "read"}) == "in read"
    assert kd.where_text(0, {}) == "in syscall 0"
    assert kd.where_text("running", {}) == "running"
    assert kd.where_text(None, {}) == ""
    sleeper = subprocess.Popen(["sleep", "5"])
    try:
        for _ in range(100):
            nr = kd.task_syscall(sleeper.pid, sleeper.pid)
            if isinstance(nr, int) and nr != 59:    # past exec, asleep
                break
            time.sleep(0.01)
        if os.access("/proc/{}/syscall".format(sleeper.pid), os.R_OK):
            assert nr in (230, 35)      # clock_nanosleep, nanosleep
    finally:
        sleeper.kill()
        sleeper.wait()
    assert kd.task_syscall(999999999, 1) is None


def test_parse_unistd(kd):
    text = ("#ifndef _ASM_UNISTD_64_H\n#define _ASM_UNISTD_64_H\n"
            "#define __NR_read 0\n#define __NR_clone3 435\n"
            "#define __NR_fcntl __NR3264_fcntl\n"
            "#define __NR_syscalls 451\n#endif\n")
    assert kd.parse_unistd(text) == {0: "read", 435: "clone3"}


@pytest.mark.parametrize("lost, text", [
    (1, "NOTE: the kernel did not report 1 switch of this thread; the run "
        "and ready periods around it are left out."),
    (3, "NOTE: the kernel did not report 3 switches of this thread; the "
        "run and ready periods around them are left out."),
    (1234, "NOTE: the kernel did not report 1,234 switches of this thread; "
           "the run and ready periods around them are left out."),
])
def test_format_thread_lost_switches(kd, lost, text):
    stats = kd.ThreadStats(tid=9, name="t", run=kd.Acc(1, 5, 5, 5),
                           lost=lost)
    lines = kd.format_thread(stats, {}, POLL_NRS)
    note = lines[next(i for i, line in enumerate(lines) if "NOTE" in line):]
    # The tool's own words: at the block's indent, in 80 columns.
    assert all(line.startswith(" " * 28) and len(line) <= 79
               for line in note)
    assert " ".join(line.strip() for line in note) == text
    assert "NOTE" not in "\n".join(kd.format_thread(
        kd.ThreadStats(tid=9, name="t"), {}, POLL_NRS))


def test_render_on_cpu_and_restart(kd):
    layout = kd.TaskLayout(1264, 1268, 24, 4, on_cpu_offset=52)
    source = kd.render_bpf_source(1, layout, POLL_NRS, restart_nr=219)
    assert re.search(r"^#define HAVE_ON_CPU +1$", source, re.M)
    assert re.search(r"^#define TASK_ON_CPU_OFF +52$", source, re.M)
    assert re.search(r"^#define RESTART_NR +219$", source, re.M)
    source = kd.render_bpf_source(1, kd.TaskLayout(1264, 1268, 24, 4),
                                  POLL_NRS)
    assert re.search(r"^#define HAVE_ON_CPU +0$", source, re.M)
    assert re.search(r"^#define RESTART_NR +-1$", source, re.M)


def test_restart_syscall_number(kd):
    assert kd.restart_syscall({219: "restart_syscall", 7: "poll"}) == 219


@pytest.mark.parametrize("size, shift", [(4096, 12), (16384, 14),
                                         (65536, 16)])
def test_include_tree_page_size(kd, size, shift):
    files = kd.include_tree_files("aarch64", size)
    assert "#define PAGE_SHIFT {}\n".format(shift) in \
        files["arch/arm64/include/asm/page.h"]


def test_include_tree_rejects_odd_page_size(kd):
    with pytest.raises(ValueError):
        kd.include_tree_files("x86_64", 6000)


@needs_btf
def test_real_btf_has_on_cpu(kd):
    with open("/sys/kernel/btf/vmlinux", "rb") as btf:
        layout = kd.task_layout_from_btf(btf.read())
    # SMP kernels: on_cpu sits between the state and pid.
    assert layout.state_offset < layout.on_cpu_offset < layout.pid_offset


@needs_btf
def test_real_btf_has_the_syscall_number_in_pt_regs(kd):
    with open("/sys/kernel/btf/vmlinux", "rb") as btf:
        layout = kd.task_layout_from_btf(btf.read())
    if os.uname().machine == "x86_64":
        assert (layout.regs_nr_offset, layout.regs_nr_size) == (120, 8)
    else:
        assert layout.regs_nr_offset is not None


def test_render_regs_nr(kd):
    layout = kd.TaskLayout(1264, 1268, 24, 4, regs_nr_offset=120)
    source = kd.render_bpf_source(1, layout, POLL_NRS)
    assert re.search(r"^#define HAVE_REGS_NR +1$", source, re.M)
    assert re.search(r"^#define REGS_NR_OFF +120$", source, re.M)
    assert "typedef s64 regs_nr_t;" in source
    source = kd.render_bpf_source(1, kd.TaskLayout(1, 2, 3, 4), POLL_NRS)
    assert re.search(r"^#define HAVE_REGS_NR +0$", source, re.M)


# ---- Raw map data as plain Python ------------------------------------------

class _Acc(ctypes.Structure):
    _fields_ = [("count", ctypes.c_ulonglong), ("total", ctypes.c_ulonglong),
                ("min", ctypes.c_ulonglong), ("max", ctypes.c_ulonglong)]


class _Key(ctypes.Structure):
    # A char array followed by padding before the 8-byte member.
    _fields_ = [("tid", ctypes.c_uint), ("name", ctypes.c_char * 5),
                ("ts", ctypes.c_ulonglong), ("flag", ctypes.c_bool),
                ("delta", ctypes.c_int)]


class _Slot(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_uint), ("pad", ctypes.c_uint),
                ("acc", _Acc)]


class _Entry(ctypes.Structure):
    _fields_ = [("start", ctypes.c_ulonglong), ("run", _Acc),
                ("key", _Key), ("signed", ctypes.c_long),
                ("slots", _Slot * 2), ("counts", ctypes.c_uint * 3)]


def test_unpack_rows_matches_plain(kd):
    keys = [_Key(7, b"ab", 2**40, True, -3), _Key(8, b"abcde", 0, False, 5)]
    slots = (_Slot * 2)(_Slot(7, 0, _Acc(1, 2, 3, 4)), _Slot(9))
    entries = [_Entry(1, _Acc(1, 2, 3, 4), keys[1], -8, slots,
                      (ctypes.c_uint * 3)(5, 6, 7)),
               _Entry(2**63, _Acc(), keys[0], 2**40)]
    for key_type, leaf_type, key_list, leaf_list in (
            (_Key, _Entry, keys, entries),
            (ctypes.c_uint, _Acc, [ctypes.c_uint(9), ctypes.c_uint(2**32 - 1)],
             [_Acc(5, 6, 7, 8), _Acc()])):
        raw_keys = b"".join(bytes(key) for key in key_list)
        raw_leaves = b"".join(bytes(leaf) for leaf in leaf_list)
        # A batch lookup's buffers are larger than what it returned.
        rows = kd.unpack_rows(key_type, leaf_type, raw_keys + b"\xff" * 64,
                              raw_leaves + b"\xff" * 200, len(key_list))
        assert rows == [(kd.plain(key), kd.plain(leaf))
                        for key, leaf in zip(key_list, leaf_list)]
    assert kd.plain(keys[1])[1] == "abcde"
    assert kd.plain(entries[0])[4:] == (((7, 0, (1, 2, 3, 4)),
                                         (9, 0, (0, 0, 0, 0))), (5, 6, 7))


def test_add_pending_calls(kd):
    def entry(window, *slots):
        return SysStart(window=window, slots=tuple(
            SysSlot(nr=nr, acc=AccRow(*acc)) for nr, acc in slots)
            + (SysSlot(),) * (4 - len(slots)))

    stats = [((7, 39), kd.Acc(3, 300, 50, 150)),
             ((8, 1), kd.Acc(1, 10, 10, 10))]
    entries = [(7, entry(1000, (39, (2, 60, 20, 40)), (1, (1, 5, 5, 5)))),
               # An entry of an earlier window: reported then.
               (8, entry(900, (1, (4, 40, 10, 10))))]
    assert sorted(kd.add_pending_calls(stats, entries, 1000)) == [
        ((7, 1), kd.Acc(1, 5, 5, 5)),
        ((7, 39), kd.Acc(5, 360, 20, 150)),
        ((8, 1), kd.Acc(1, 10, 10, 10))]


# ---- The file's layout ---------------------------------------------------

def test_docstring_map_names_the_banners_in_order(kd):
    """The module docstring's map has one line per section banner, in the
    file's order, each starting with the banner's title."""
    with open(SCRIPT) as script:
        banners = [line[len("# ---- "):].rstrip("\n").rstrip("-").rstrip()
                   for line in script if line.startswith("# ---- ")]
    doc = kd.__doc__.split("Map of this file:", 1)[1]
    entries = [line.strip() for line in doc.splitlines()
               if line.startswith("  ")]
    assert len(entries) == len(banners)
    for entry, banner in zip(entries, banners):
        assert entry.startswith(banner), (entry, banner)


def test_importing_has_no_side_effects():
    """Importing the file opens no file but Python modules, starts no
    process and writes nothing (an audit hook sees every open()).  psutil
    reads /proc/stat when it is imported: the libraries are imported before
    the hook, so that it sees the file's own code only."""
    code = ("import sys; sys.path.insert(0, {!r}); "
            "from conftest import load_script\n"
            "for library in ('psutil', 'bcc'):\n"
            "    try:\n"
            "        __import__(library)\n"
            "    except ImportError:\n"
            "        pass\n"
            "seen = []\n"
            "def hook(event, args):\n"
            "    if event in ('open', 'subprocess.Popen', 'os.system',\n"
            "                 'os.exec', 'os.fork', 'os.mkdir',\n"
            "                 'os.remove', 'socket.connect'):\n"
            "        seen.append((event, str(args[0])))\n"
            "sys.addaudithook(hook)\n"
            "load_script()\n"
            "for event, what in seen:\n"
            "    if event != 'open' or not what.endswith(\n"
            "            ('.py', '.pyc', '.so', '.pth')) and what != {!r}:\n"
            "        print(event, what)\n").format(
                os.path.join(os.path.dirname(SCRIPT), "tests"), SCRIPT)
    found = subprocess.run([sys.executable, "-c", code, "-p", "1"],
                           stdout=subprocess.PIPE, timeout=300,
                           universal_newlines=True, check=True)
    assert found.stdout == ""


def test_fdinfo_recursion_misses_is_read_or_zero(kd):
    info = (b"pos:\t0\nprog_tag:\tab\nrecursion_misses:\t17\n"
            b"verified_insns:\t9\n")
    assert kd.fdinfo_recursion_misses(info) == 17
    assert kd.fdinfo_recursion_misses(b"pos:\t0\nprog_tag:\tab\n") == 0
    assert kd.fdinfo_recursion_misses(None) == 0


def test_importing_does_not_build_the_json_schema():
    """The schema is built when asked for, and the same one each time."""
    import conftest
    fresh = conftest.load_script()
    assert fresh.json_schema.cache_info().currsize == 0
    assert fresh.json_schema() is fresh.json_schema()
    assert fresh.json_schema.cache_info().currsize == 1


# The tail of the log Linux 6.1's verifier wrote when it rejected an earlier
# version of the tool (kd_name_holder, before the slot index was masked).
VERIFIER_LOG_6_1 = """bpf: Failed to load program: Permission denied
; if (wait->named[free].tgid == 0) {
118: (61) r2 = *(u32 *)(r1 +0)
R2 unbounded memory access, make sure to bounds check any such access
processed 911 insns (limit 1000000) max_states_per_insn 4 total_states 52
"""
VERIFIER_LOG_6_18 = """bpf: Failed to load program: Permission denied
14: (79) r1 = *(u64 *)(r0 +0)
invalid access to map value, value_size=8 off=524280 size=8
R0 max value is outside of the allowed memory range
verification time 35 usec
stack depth 8
processed 14 insns (limit 1000000) max_states_per_insn 0 total_states 0
"""


def test_verifier_reason_is_the_lines_after_the_last_instruction(kd):
    assert kd.verifier_reason(VERIFIER_LOG_6_1) == \
        "R2 unbounded memory access, make sure to bounds check any such access"
    assert kd.verifier_reason(VERIFIER_LOG_6_18) == \
        "invalid access to map value, value_size=8 off=524280 size=8; " \
        "R0 max value is outside of the allowed memory range"
    assert kd.verifier_reason("main.c:3:1: error: unknown type name") is None


def test_load_failure_blames_ring_buffers_only_when_unknown(kd):
    rejected = Exception("Failed to load BPF program b'kd_sched_switch': "
                         "Permission denied")
    line = kd.load_failure(rejected, VERIFIER_LOG_6_1, True)
    assert line.startswith("the kernel's verifier rejected the eBPF program "
                           "kd_sched_switch: R2 unbounded memory access")
    assert "report it with the output of -D" in line
    compiler = Exception("Failed to compile BPF module <text>")
    log = "/virtual/main.c:12:5: error: use of undeclared identifier 'x'\n"
    line = kd.load_failure(compiler, log, True)
    assert line == ("loading the eBPF program failed: /virtual/main.c:12:5: "
                    "error: use of undeclared identifier 'x'; rerun with -D "
                    "to see the compiler's output")
    assert "ring buffers" in kd.load_failure(compiler, log, None)
    assert "ring buffers" not in line


def probe_program(attr):
    """prog_type and instructions of a BPF_PROG_LOAD attr, read while the
    buffers its pointers name are alive."""
    prog_type, count, insns = struct.unpack_from("<IIQ", attr)
    code = ctypes.string_at(insns, count * 8)
    return prog_type, [struct.unpack_from("<BBhi", code, 8 * i)
                       for i in range(count)]


def test_btf_load_probe_loads_what_the_program_reads(kd):
    """The probe asks the kernel to verify bpf_get_current_task_btf() and
    plain loads of the state and of thread_info.status at their offsets
    and sizes; a refusal means probe reads."""
    seen = []

    def refused(cmd, attr):
        seen.append((cmd,) + probe_program(attr))
        return -1, 22

    btf = kd.TaskLayout(1264, 1268, 24, 4, compat_offset=16)
    assert kd.current_task_btf_supported(btf, syscall=refused) is False
    ((cmd, prog_type, insns),) = seen
    assert (cmd, prog_type) == (kd.BPF_PROG_LOAD, 17)
    assert insns[0] == (0x85, 0, 0, 158)
    # BPF_LDX | BPF_MEM | BPF_W into r1 from r6 (r0 after the call).
    assert insns[2:4] == [(0x61, 1 | 6 << 4, 24, 0), (0x61, 1 | 6 << 4, 16,
                                                      0)]
    assert insns[-1] == (0x95, 0, 0, 0)

    # An 8-byte state (before Linux 5.14) is a BPF_DW load; no ia32 flag,
    # no second load.
    seen.clear()
    with open(os.devnull) as null:
        def loaded(cmd, attr):
            seen.append(probe_program(attr))
            return os.dup(null.fileno()), 0
        old = kd.TaskLayout(1232, 1236, 16, 8)
        assert kd.current_task_btf_supported(old, syscall=loaded) is True
    assert [insn for insn in seen[0][1] if insn[0] & 0x07 == 0x01] == \
        [(0x79, 1 | 6 << 4, 16, 0)]

    # Offsets from kernel headers are not known here: no attempt.
    headers = kd.TaskLayout(0, 0, 0, 0, source="headers")
    assert kd.current_task_btf_supported(headers, syscall=None) is False


def test_tp_btf_probe_loads_the_task_fields_of_next(kd):
    """The tp_btf probe is a sched_switch program (attach type
    BPF_TRACE_RAW_TP, the typedef's BTF id) that loads pid, tgid, on_cpu
    and the CPU from next (ctx->args[2]) past a NULL test; a refusal
    means raw tracepoints."""
    seen = []

    def refused(cmd, attr):
        attach_type, = struct.unpack_from("<I", attr, 68)
        btf_id, = struct.unpack_from("<I", attr, 108)
        seen.append((cmd, attach_type, btf_id) + probe_program(attr))
        return -1, 22

    layout = kd.TaskLayout(1264, 1268, 24, 4, on_cpu_offset=52,
                           cpu_offset=20,
                           sched_btf_ids=(("sched_switch", 10306),
                                          ("sched_wakeup", 10302)))
    assert kd.task_btf_supported(layout, syscall=refused) is False
    ((cmd, attach_type, btf_id, prog_type, insns),) = seen
    assert (cmd, prog_type, attach_type, btf_id) == \
        (kd.BPF_PROG_LOAD, 26, 23, 10306)
    # r6 = *(u64 *)(r1 + 16); if r6 == 0 skip the 4 loads.
    assert insns[:2] == [(0x79, 6 | 1 << 4, 16, 0), (0x15, 6, 4, 0)]
    assert [insn[2] for insn in insns[2:6]] == [1264, 1268, 52, 20]
    assert all(insn[:2] == (0x61, 1 | 6 << 4) for insn in insns[2:6])
    assert insns[6:] == [(0xb7, 0, 0, 0), (0x95, 0, 0, 0)]

    # Accepted: tp_btf.  Without the typedefs (before 5.5) or from kernel
    # headers: no attempt.
    with open(os.devnull) as null:
        def loaded(cmd, attr):
            return os.dup(null.fileno()), 0
        assert kd.task_btf_supported(layout, syscall=loaded) is True
        bare = kd.TaskLayout(1264, 1268, 24, 4)
        assert kd.task_btf_supported(bare, syscall=loaded) is False
        headers = kd.TaskLayout(0, 0, 0, 0, source="headers",
                                sched_btf_ids=layout.sched_btf_ids)
        assert kd.task_btf_supported(headers, syscall=loaded) is False


def test_sched_btf_ids_name_the_running_kernels_typedefs(kd):
    """The ids are those of btf_trace_<event> typedefs in the running
    kernel's BTF, one per scheduler probe."""
    if not os.path.exists(kd.BTF_PATH):
        pytest.skip("the running kernel has no BTF")
    with open(kd.BTF_PATH, "rb") as blob:
        btf = kd.Btf(blob.read())
    ids = dict(kd.sched_btf_ids(btf))
    assert sorted(ids) == sorted(kd.SCHED_EVENTS)
    for event, type_id in ids.items():
        name_off, kind, _, _, _ = btf._type(type_id)
        assert (kind, btf._name(name_off)) == \
            (kd.BTF_KIND_TYPEDEF, "btf_trace_" + event)


@pytest.mark.parametrize("task_btf", [False, True])
def test_task_argument_reads_follow_the_tp_btf_probe(kd, task_btf):
    """The choice reaches the C as TASK_BTF (which picks plain loads or
    bpf_probe_read_kernel() in kd_task_u32()), and the scheduler probes
    are functions user space attaches, not bcc's RAW_TRACEPOINT_PROBE,
    which bcc would attach as raw tracepoints by itself."""
    source = kd.render_bpf_source(1, layout(kd, "btf"), POLL_NRS,
                                  task_btf=task_btf)
    assert c_define(source, "TASK_BTF") == str(int(task_btf))
    assert re.search(r"kd_task_u32\(.*?#if TASK_BTF\n.*?return \*\(u32 \*\)"
                     r".*?#else\n.*?bpf_probe_read_kernel", source, re.S)
    for event in kd.SCHED_EVENTS:
        assert "KD_SCHED_PROBE({})".format(event) in source
        assert "RAW_TRACEPOINT_PROBE({})".format(event) not in source


@pytest.mark.parametrize("current_btf", [False, True])
def test_current_task_fields_follow_the_probe(kd, current_btf):
    source = kd.render_bpf_source(1, layout(kd, "btf"), POLL_NRS,
                                  current_btf=current_btf)
    assert c_define(source, "CURRENT_BTF") == str(int(current_btf))
    # prev is current at sched_switch: its state is the current task's.
    switch = source[source.index("KD_SCHED_PROBE(sched_switch)"):]
    assert "kd_current_state()" in switch.split("\n}\n")[0]


def test_direct_slots_option_takes_zero_or_a_power_of_two(kd):
    assert [kd.direct_slots(text) for text in ("0", "1", "4096")] == \
        [0, 1, 4096]
    for text in ("3", "-1", "x", str(2 * kd.MAX_THREADS)):
        with pytest.raises(argparse.ArgumentTypeError):
            kd.direct_slots(text)


def test_direct_slots_default_to_the_tables_threads(kd):
    def slots(**kw):
        return c_define(kd.render_bpf_source(1, layout(kd, "btf"), POLL_NRS,
                                             **kw), "DIRECT_SLOTS")
    assert slots() == "4096"
    assert slots(max_threads=5000) == "8192"
    assert slots(max_threads=5000, direct_slots=0) == "0"
    assert slots(direct_slots=2) == "2"


class FakeTables:
    """Probes' view of the tables of system call and scheduler entries."""

    def __init__(self, hashed, sched, direct):
        self.tables = {"sys_start": hashed, "sched_state": sched}
        if direct is not None:
            self.tables["sys_direct"] = direct

    def __getitem__(self, name):
        return self.tables[name]


def test_thread_entries_come_from_both_tables(kd, monkeypatch):
    """Threads in the hash tables, and those holding a slot of the direct
    table (free slots, tid 0, are no thread's); a slot's scheduler entry
    only when it is of the window asked for."""
    from types import SimpleNamespace as Row
    entry, sched = Row(window=5), Row(run_start=1)
    direct = [(0, Row(tid=0, entry=Row(window=5), sched_window=5,
                      sched=sched)),
              (1, Row(tid=9, entry=entry, sched_window=5, sched=sched)),
              (2, Row(tid=10, entry=entry, sched_window=4, sched=sched))]
    probes = kd.Probes.__new__(kd.Probes)
    probes.bpf = FakeTables([(7, entry)], [(8, sched)], direct)
    monkeypatch.setattr(probes, "rows", lambda name: probes.bpf[name],
                        raising=False)
    assert probes.thread_entries(5) == (
        [(7, entry), (9, entry), (10, entry)], [(8, sched), (9, sched)])
    assert probes.direct_seen == [(1, 9), (2, 10)]
    probes.bpf = FakeTables([(7, entry)], [(8, sched)], None)
    assert probes.thread_entries(5) == ([(7, entry)], [(8, sched)])


def fake_direct_probes(kd, monkeypatch, rows, alive, born=()):
    """A Probes over fake tables: rows of sys_direct as (slot, Row) pairs,
    the threads task_list() finds, and (slot, tid) of threads born just
    after it looked, which take a slot at once.  Returns (probes, the
    sys_direct table as {slot: what was written})."""
    from types import SimpleNamespace as Row

    class Table(dict):
        Key = int

        @staticmethod
        def Leaf():
            return "zero"

    def listing(_pid):
        rows.extend((slot, Row(tid=tid)) for slot, tid in born)
        return list(alive)

    direct = Table()
    probes = kd.Probes.__new__(kd.Probes)
    probes.pid = 1
    probes.bpf = {"sys_direct": direct, "sched_state": Table(),
                  "sys_start": Table(), "lp_state": Table(),
                  "stop_signals": Table()}
    monkeypatch.setattr(probes, "rows", lambda name: list(
        rows if name == "sys_direct" else []), raising=False)
    monkeypatch.setattr(probes, "clear", lambda name: None, raising=False)
    monkeypatch.setattr(probes, "stop_signals", lambda: [], raising=False)
    monkeypatch.setattr(kd, "task_list", listing)
    return probes, direct


def test_slots_of_threads_that_are_gone_are_freed(kd, monkeypatch):
    """--long-poll runs for hours: a slot whose thread is gone is zeroed
    (tid and claims), so that another thread can take it; a free slot is
    left alone."""
    from types import SimpleNamespace as Row

    rows = [(0, Row(tid=0)), (1, Row(tid=9)), (2, Row(tid=10))]
    probes, direct = fake_direct_probes(kd, monkeypatch, rows, alive={10})
    probes.tidy(now_ns=0, keep_ns=0)
    assert direct == {1: "zero"}


def test_slots_read_by_a_report_are_freed_before_the_next_window(
        kd, monkeypatch):
    """Between windows, the slots the last report read are freed if their
    thread has exited, once: the next window's report reads them again."""
    probes, direct = fake_direct_probes(kd, monkeypatch, [], alive={10})
    probes.direct_seen = [(1, 9), (2, 10)]
    probes.free_gone_slots()
    assert direct == {1: "zero"}
    direct.clear()
    probes.free_gone_slots()
    assert direct == {}


def test_a_thread_born_while_slots_are_freed_keeps_its_slot(kd,
                                                            monkeypatch):
    """The holders are read before the threads are listed: a thread born
    in between, which takes a slot at once, is not among the holders, so
    its slot is not taken from it."""
    from types import SimpleNamespace as Row

    rows = [(1, Row(tid=9))]
    probes, direct = fake_direct_probes(kd, monkeypatch, rows, alive={10},
                                        born=[(3, 11)])
    probes.tidy(now_ns=0, keep_ns=0)
    assert direct == {1: "zero"}


def test_sleeps_still_in_the_scheduler_entries_are_added(kd):
    """A wakeup sums the sleeps of one system call in the thread's entry
    and moves them to blocked_stats only when it sleeps in another: the
    report adds what the entries still hold, to the same call's row or to
    a row of its own; an entry whose budget is not in use holds nothing."""
    def entry(in_use, slept_nr, slept):
        return Sched(budget=Budget(in_use=in_use, slept_nr=slept_nr,
                                   slept=slept))
    rows = [((7, 0), 100), ((7, 23), 5)]
    entries = [(7, entry(1, 0, 40)), (8, entry(1, 7, 3)),
               (9, entry(0, 0, 0)), (10, entry(1, 7, 0))]
    assert sorted(kd.add_pending_sleeps(rows, entries)) == \
        [((7, 0), 140), ((7, 23), 5), ((8, 7), 3)]


def test_a_refused_tp_btf_probe_is_named_with_the_verifiers_words(
        kd, monkeypatch):
    """attach_scheduler() loads each scheduler program as tp_btf for its
    typedef; a refusal is tried again with the verifier's log, and told as
    the program, the error and the log's last line.  Nothing is kept."""
    from types import SimpleNamespace
    code = ctypes.create_string_buffer(16)

    class Lib:
        @staticmethod
        def bpf_function_start(module, name):
            return ctypes.addressof(code)

        @staticmethod
        def bpf_function_size(module, name):
            return 16

    calls = []

    def load(prog_type, insns, name, attach_btf_id=0, log_size=0):
        calls.append((prog_type, len(insns), name, attach_btf_id,
                      bool(log_size)))
        return -1, errno.EACCES, VERIFIER_LOG_6_1
    monkeypatch.setattr(kd, "bcc", SimpleNamespace(lib=Lib))
    monkeypatch.setattr(kd, "load_program", load)
    fds = []
    why = kd.attach_scheduler(SimpleNamespace(module=None),
                              (("sched_switch", 5), ("sched_wakeup", 6)),
                              fds)
    assert why == "sched_switch: Permission denied: R2 unbounded memory " \
        "access, make sure to bounds check any such access"
    assert calls == [(26, 16, b"sched_switch", 5, False),
                     (26, 16, b"sched_switch", 5, True)]
    assert fds == []


def test_a_refused_raw_tracepoint_is_bccs_exception(kd):
    """Without tp_btf the scheduler programs go through bcc's raw
    tracepoint attach; its exception comes back whole, for load_failure()
    to read (the verifier's reason is in the captured log)."""
    from types import SimpleNamespace
    refused = Exception("Failed to load BPF program b'kd_sched_switch': "
                        "Permission denied")
    attached = []

    def attach(tp, fn_name):
        attached.append((tp, fn_name))
        raise refused
    fds = []
    bpf = SimpleNamespace(attach_raw_tracepoint=attach)
    assert kd.attach_scheduler(bpf, (), fds) is refused
    assert attached == [(b"sched_switch", b"kd_sched_switch")]
    assert fds == []
    assert kd.load_failure(refused, VERIFIER_LOG_6_1, True).startswith(
        "the kernel's verifier rejected the eBPF program kd_sched_switch: "
        "R2 unbounded memory access")
