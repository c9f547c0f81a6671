# SPDX-License-Identifier: Apache-2.0
"""Build small little-endian BTF blobs for the unit tests.

Written from the kernel's Documentation/bpf/btf.rst, independently of the
reader in kernel_delay.py: each add_* method emits struct btf_type (name_off,
info, size/type) followed by the bytes its kind carries.
"""

import struct

KIND = {"int": 1, "ptr": 2, "array": 3, "struct": 4, "union": 5, "enum": 6,
        "fwd": 7, "typedef": 8, "volatile": 9, "const": 10, "func": 12,
        "func_proto": 13, "var": 14, "datasec": 15, "float": 16,
        "decl_tag": 17, "enum64": 19}


class BtfBuilder:
    """Type ids are handed out in order, from 1."""

    def __init__(self):
        self.strings = bytearray(b"\0")
        self.offsets = {"": 0}
        self.types = []

    def name(self, text, fresh=False):
        """The string offset of text; fresh=True stores a second copy."""
        if text in self.offsets and not fresh:
            return self.offsets[text]
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        self.offsets.setdefault(text, offset)
        return offset

    def add(self, kind, name, size_or_type, vlen=0, kflag=False, extra=b"",
            fresh_name=False):
        info = (KIND[kind] << 24) | vlen | (int(kflag) << 31)
        self.types.append(struct.pack(
            "<III", self.name(name, fresh_name), info, size_or_type) + extra)
        return len(self.types)

    def add_int(self, name, size, signed=False):
        encoding = 1 if signed else 0
        return self.add("int", name, size, extra=struct.pack(
            "<I", (encoding << 24) | (size * 8)))

    def add_composite(self, kind, name, size, members, kflag=False,
                      fresh_name=False):
        """members: (name, type id, bit offset[, bit field size])."""
        extra = b""
        for member in members:
            member_name, type_id, bits = member[:3]
            if kflag:
                bits |= (member[3] if len(member) > 3 else 0) << 24
            extra += struct.pack("<III", self.name(member_name), type_id,
                                 bits)
        return self.add(kind, name, size, len(members), kflag, extra,
                        fresh_name)

    def add_struct(self, name, size, members, **kw):
        return self.add_composite("struct", name, size, members, **kw)

    def add_union(self, name, size, members, **kw):
        return self.add_composite("union", name, size, members, **kw)

    def add_typedef(self, name, type_id):
        return self.add("typedef", name, type_id)

    def add_volatile(self, type_id):
        return self.add("volatile", "", type_id)

    def add_ptr(self, type_id):
        return self.add("ptr", "", type_id)

    def add_fwd(self, name):
        return self.add("fwd", name, 0)

    def add_enum(self, name, values):
        extra = b"".join(struct.pack("<Ii", self.name(n), v)
                         for n, v in values)
        return self.add("enum", name, 4, len(values), extra=extra)

    def add_enum64(self, name, values):
        extra = b"".join(struct.pack("<III", self.name(n), v & 0xffffffff,
                                     v >> 32) for n, v in values)
        return self.add("enum64", name, 8, len(values), extra=extra)

    def add_func_proto(self, ret, params):
        extra = b"".join(struct.pack("<II", self.name(n), t)
                         for n, t in params)
        return self.add("func_proto", "", ret, len(params), extra=extra)

    def add_func(self, name, proto):
        # vlen of a FUNC is its linkage (1: global), not a count.
        return self.add("func", name, proto, vlen=1)

    def add_array(self, elem, index, nelems):
        return self.add("array", "", 0,
                        extra=struct.pack("<III", elem, index, nelems))

    def add_var(self, name, type_id):
        return self.add("var", name, type_id, extra=struct.pack("<I", 1))

    def add_datasec(self, name, variables):
        extra = b"".join(struct.pack("<III", v, off, size)
                         for v, off, size in variables)
        return self.add("datasec", name, 0, len(variables), extra=extra)

    def add_decl_tag(self, name, type_id):
        return self.add("decl_tag", name, type_id,
                        extra=struct.pack("<i", -1))

    def blob(self, magic=0xeb9f):
        types = b"".join(self.types)
        header = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(types),
                             len(types), len(self.strings))
        return header + types + bytes(self.strings)


def filler_types(btf):
    """Unrelated types of every kind the reader must step over, including a
    FWD named task_struct; returns the ids of int, unsigned int and long."""
    int_id = btf.add_int("int", 4, signed=True)
    uint_id = btf.add_int("unsigned int", 4)
    long_id = btf.add_int("long", 8, signed=True)
    fwd = btf.add_fwd("task_struct")
    ptr = btf.add_ptr(fwd)
    proto = btf.add_func_proto(int_id, [("p", ptr), ("flags", uint_id)])
    btf.add_func("wake_up_process", proto)
    btf.add_enum("pid_type", [("PIDTYPE_PID", 0), ("PIDTYPE_TGID", 1),
                              ("PIDTYPE_PGID", 2)])
    btf.add_enum64("big", [("BIG", 1 << 40)])
    arr = btf.add_array(int_id, uint_id, 16)
    var = btf.add_var("some_array", arr)
    btf.add_datasec(".data", [(var, 0, 64)])
    btf.add_decl_tag("tag", var)
    btf.add("float", "double", 8)
    # Same member names as task_struct, in another struct.
    btf.add_struct("pid", 8, [("pid", long_id, 0)])
    btf.add_struct("not_task", 8, [("pid", int_id, 0), ("tgid", int_id, 32)])
    return int_id, uint_id, long_id


def modern_task_btf(kflag=False, duplicate_name=False):
    """task_struct with a volatile unsigned int __state at 24, pid_t pid at
    1264, and pid_t tgid at 1272: 4 bytes into an anonymous struct inside
    an anonymous union at 1268.
    """
    btf = BtfBuilder()
    int_id, uint_id, long_id = filler_types(btf)
    pid_t = btf.add_typedef("pid_t", int_id)
    state = btf.add_volatile(uint_id)
    inner = btf.add_struct("", 8, [("cookie", int_id, 0),
                                   ("tgid", pid_t, 32)], kflag=kflag)
    anon = btf.add_union("", 8, [("raw", long_id, 0), ("", inner, 0)])
    btf.add_struct("task_struct", 4096, [
        ("thread_info", long_id, 0),
        ("__state", state, 24 * 8),
        ("flags", uint_id, 28 * 8, 0),
        ("in_execve", uint_id, 32 * 8 + 3, 1),
        ("pid", pid_t, 1264 * 8),
        ("", anon, 1264 * 8 + 32),
    ], kflag=kflag, fresh_name=duplicate_name)
    return btf.blob()


def task_btf(members, state_type="unsigned int", pid_type="pid_t"):
    """A task_struct with the named members at byte offsets: members maps
    name -> byte offset (or bit offset given as a string)."""
    btf = BtfBuilder()
    int_id, uint_id, long_id = filler_types(btf)
    types = {"pid_t": btf.add_typedef("pid_t", int_id), "long": long_id,
             "unsigned int": uint_id}
    typed = []
    for name, offset in members.items():
        bits = int(offset) if isinstance(offset, str) else offset * 8
        if name in ("state", "__state"):
            type_id = btf.add_volatile(types[state_type])
        else:
            type_id = types[pid_type]
        typed.append((name, type_id, bits))
    btf.add_struct("task_struct", 4096, typed)
    return btf.blob()
