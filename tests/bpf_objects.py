# SPDX-License-Identifier: Apache-2.0
"""Which BPF programs, links and maps exist, and which a process holds.

The kernel numbers every program, link and map; the bpf() system call
lists the numbers (BPF_*_GET_NEXT_ID), and /proc/PID/fdinfo tells which
ones a process holds open.  Together they tell whether anything a tool
loaded outlives it, without bpftool.
"""

import ctypes
import errno
import os
import platform
import struct
import time

SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
GET_NEXT_ID = {"prog": 11, "map": 12, "link": 31}

_libc = ctypes.CDLL(None, use_errno=True)


def existing(kind):
    """The IDs of every BPF object of kind (prog, map, link) now."""
    ids, start = set(), 0
    while True:
        # union bpf_attr: start_id, next_id (u32 each), open_flags
        attr = ctypes.create_string_buffer(struct.pack("<III", start, 0, 0))
        if _libc.syscall(ctypes.c_long(SYS_BPF),
                         ctypes.c_long(GET_NEXT_ID[kind]), attr,
                         ctypes.c_uint(12)) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return ids
            raise OSError(err, os.strerror(err))
        start = struct.unpack_from("<I", attr.raw, 4)[0]
        ids.add(start)


def held_by(pid):
    """{(kind, id)} of the BPF objects process pid holds file descriptors
    of (programs, links and maps)."""
    found = set()
    fdinfo = "/proc/{}/fdinfo".format(pid)
    for fd in os.listdir(fdinfo):
        try:
            with open(os.path.join(fdinfo, fd)) as info:
                text = info.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines()
                      if ":" in line)
        # A link's fdinfo names its program too: count the link only.
        for kind, key in (("link", "link_id"), ("prog", "prog_id"),
                          ("map", "map_id")):
            if key in fields:
                found.add((kind, int(fields[key])))
                break
    return found


def still_there(objects, timeout=5.0):
    """Those of objects [(kind, id)] that still exist after timeout: the
    kernel frees them shortly after the last reference goes."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {(kind, oid) for kind, oid in objects
                 if oid in existing(kind)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)
