# SPDX-License-Identifier: Apache-2.0
"""Parse kernel_delay.py's text report back into numbers, for the tests."""

import re

THREAD = re.compile(r"^\s*(\d+) (\S.*?)\s+\[SYSCALL STATISTICS\]$")
SECTION = re.compile(r"^\s+\[([A-Z ]+) STATISTICS\]$")
BUDGET = re.compile(r"^\s+\[TIME BUDGET\]$")
HISTOGRAM = re.compile(r"^\s+\[(SYSCALL|READY) HISTOGRAM:? ?(\S*)\]$")
BUDGET_ROW = re.compile(r"^\s+(\S.*?)\s+(-?[\d,]+)\s+(-?[\d.]+) %$")
IN_FLIGHT = re.compile(r"^\s+(\S+) in flight ([\d,.]+ (?:ns|µs|ms|s))"
                       r"( \(since before the window\))?$")
UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "ms": 1.0, "s": 1e3}
HIST_ROW = re.compile(r"^\s+([\d,]+) -> ([\d,]+)\s+([\d,]+)\s+\|")
# Lines after # VERDICT that are not part of it.
NOT_VERDICT = ("# WARNING", "# Start", "# Stop", "# Sample", "# Triggered",
               "# Interrupted", "# Process", "# Waiting", "# NOTE",
               "# WINDOW", "# ----", "# End of run", "# No thread")
# An empty table section: its title, then this line.
EMPTY = "none in this window"
HEADINGS = ("NAME", "COUNT", "SCHED_CNT", "STOP_CNT", "PART", "ns")

# Column names of the one-row sections.
ROW_FIELDS = {
    "LONG POLL": ("count", "average", "min", "max"),
    "THREAD RUN": ("count", "total", "min", "max"),
    "THREAD READY": ("count", "total", "max"),
    "THREAD STOPPED": ("count", "total", "max"),
}


# --syscall-events: an event line, then its stack frames.
EVENT = re.compile(r"^  +(\d+) +(\d+) +(\d+) (.{16}) +([\d,]+)  (\S+)$")
FRAME = re.compile(r"^ {10}(\S.*)$")
UPCALL = re.compile(r"^  +(\S.*?) +([\d,]+)(?:  (.*))?$")


def number(text):
    return int(text.replace(",", ""))


def cpu_counts(text):
    """{cpu: count} from "0: 8,937, 2: 9,009"."""
    return {int(cpu): number(count) for cpu, count in
            re.findall(r"(\d+): (\d+(?:,\d{3})*)", text)}


def parse_event(match):
    return {"entry": int(match.group(1)), "exit": int(match.group(2)),
            "tid": int(match.group(3)), "comm": match.group(4).strip(),
            "delta_us": number(match.group(5)), "syscall": match.group(6),
            "frames": []}


class Window:
    def __init__(self):
        self.headers = []
        self.threads = {}       # name -> dict of sections
        self.quiet = ""
        self.skipped = False
        self.verdict = []       # the lines of # VERDICT, without "# "
        self.events = None      # list of parse_event() dicts
        self.more_events = 0
        self.upcalls = None     # RESULT -> (count, {cpu: count})
        # The overview: tid -> {"name", "on a CPU", "waiting for a CPU",
        # "interrupts", "stopped", "asleep" (percent), "marked" (the
        # parts with a *), "top call"}, and the tids in its order.
        self.overview = {}
        self.overview_order = []
        self.left_out = ""      # the line on blocks left out


OVERVIEW_PARTS = ("on a CPU", "waiting for a CPU", "interrupts", "stopped",
                  "asleep")


def parse_overview_row(line):
    cells = line[27:].split()
    row = {"name": line[11:27].rstrip(), "marked": set(),
           "top call": cells[5] if len(cells) > 5 else ""}
    for part, cell in zip(OVERVIEW_PARTS, cells):
        row[part] = float(cell.rstrip("*"))
        if cell.endswith("*"):
            row["marked"].add(part)
    return int(line[:10]), row


def parse(text):
    """A list of Window, one per '# ... sample dump' in text."""
    windows = []
    current = Window()
    thread = section = mode = None
    in_verdict = False
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("#   @"):
            continue        # the time of a line too long to hold it
        if line == "# VERDICT":
            current.verdict, in_verdict = [], True
            continue
        if in_verdict:
            if line.startswith("#   ") and current.verdict:
                current.verdict[-1] += " " + line[4:]
                continue
            if line.startswith("# ") and not line.startswith(NOT_VERDICT):
                current.verdict.append(line[2:])
                continue
            in_verdict = False
        if line.startswith("# OVERVIEW"):
            mode = "overview"
            current.headers.append(line)
            continue
        if mode == "overview":
            if not line.strip():
                mode = None
            elif re.match(r"^ *\d+ ", line):
                tid, row = parse_overview_row(line)
                current.overview[tid] = row
                current.overview_order.append(tid)
            continue
        if line.startswith("# SYSCALL EVENTS:"):
            mode, current.events = "events", []
            continue
        if line.startswith("# UPCALL STATISTICS"):
            mode, current.upcalls = "upcalls", {}
            continue
        if mode == "events":
            match = EVENT.match(line)
            if match:
                current.events.append(parse_event(match))
                continue
            match = FRAME.match(line)
            if match and current.events:
                current.events[-1]["frames"].append(match.group(1))
                continue
            match = re.match(r"# ([\d,]+) more events? not shown", line)
            if match:
                current.more_events = number(match.group(1))
                continue
        if mode == "upcalls":
            if line.startswith(" " * 43) and current.upcalls:
                # per CPU counts wrapped onto a line of their own
                last = list(current.upcalls)[-1]
                current.upcalls[last][1].update(cpu_counts(line))
                continue
            match = UPCALL.match(line)
            if match and not line.strip().startswith(("RESULT", "---")):
                current.upcalls[match.group(1)] = (
                    number(match.group(2)), cpu_counts(match.group(3) or ""))
                continue
        if line.startswith("# "):
            mode = None
        elif mode:
            continue
        if line.startswith("# No events from"):
            current.quiet = line
            continue
        if line.startswith("# The blocks of"):
            current.left_out = line
            continue
        if line.startswith("#   ") and line[4:5] != " " and \
                current.left_out:
            current.left_out += " " + line[4:]
            continue
        # (not a warning's continuation: "#" and 10 spaces)
        if line.startswith("#   ") and line[4:5] != " " and current.quiet:
            current.quiet += " " + line[4:]
            continue
        if line.startswith("# "):
            if thread is not None and ("sample dump" in line.lower() or
                                       line.startswith(("# Start",
                                                        "# WINDOW"))):
                windows.append(current)
                current, thread = Window(), None
            current.headers.append(line)
            if line.startswith("# Sample dump skipped"):
                current.skipped = True
                windows.append(current)
                current = Window()
            continue
        match = THREAD.match(line)
        if match:
            tid, name = int(match.group(1)), match.group(2)
            thread = {"tid": tid, "SYSCALL": {}}
            # Threads may share a name (OVS has more than one
            # ovs-vswitchd): the lowest TID, a process's leader, keeps the
            # name, the others are NAME/TID.
            other = current.threads.get(name)
            if other is not None and other["tid"] > tid:
                current.threads["{}/{}".format(name, other["tid"])] = other
                current.threads[name] = thread
            elif other is not None:
                current.threads["{}/{}".format(name, tid)] = thread
            else:
                current.threads[name] = thread
            section = "SYSCALL"
            continue
        if thread is not None and BUDGET.match(line):
            section = "TIME BUDGET"
            thread[section] = {"in flight": []}
            continue
        match = HISTOGRAM.match(line)
        if match and thread is not None:
            section = "HISTOGRAM"
            hist = thread.setdefault(match.group(1) + " HISTOGRAM", {})
            rows = hist.setdefault(match.group(2) or "ready", [])
            continue
        if section == "HISTOGRAM" and thread is not None:
            match = HIST_ROW.match(line)
            if match:
                rows.append(tuple(map(number, match.groups())))
            continue
        if section == "TIME BUDGET" and thread is not None:
            if " in flight " in line:
                # (may go on on the lines below, indented further)
                for more in lines[index + 1:]:
                    if not re.match(r"^ {30}\S", more):
                        break
                    line += " " + more.strip()
            match = IN_FLIGHT.match(line)
            if match:
                thread[section]["in flight"].append(
                    (match.group(1), duration_ms(match.group(2)),
                     bool(match.group(3))))
                continue
            match = BUDGET_ROW.match(line)
            if match:
                thread[section][match.group(1)] = (number(match.group(2)),
                                                   float(match.group(3)))
            continue
        match = SECTION.match(line)
        if match and thread is not None:
            section = match.group(1)
            thread[section] = {} if section in ("SYSCALL", "HARD IRQ",
                                                "SOFT IRQ") else None
            continue
        words = line.split()
        if not words or thread is None or words[0] in HEADINGS or \
                line.strip() == EMPTY:
            continue
        if words[0] == "NOTE:":
            match = re.search(r"did not report ([\d,]+) switch", line)
            if match:
                thread["LOST"] = number(match.group(1))
            continue
        if thread.get("LOST") is not None and section == "THREAD READY" \
                and not words[0].isdigit():
            continue        # the NOTE's second line
        if section in ROW_FIELDS:
            thread[section] = dict(zip(ROW_FIELDS[section],
                                       map(number, words)))
        elif words[0].startswith("TOTAL"):
            thread[section + " TOTAL"] = tuple(map(number, words[-2:]))
        elif section == "SYSCALL":
            thread[section][words[0]] = dict(zip(
                ("nr", "count", "total", "max"), map(number, words[1:])))
        elif section == "SOFT IRQ":
            thread[section][words[0]] = dict(zip(
                ("vec", "count", "total", "max"), map(number, words[1:])))
        elif section == "HARD IRQ":
            thread[section][" ".join(words[:-3])] = dict(zip(
                ("count", "total", "max"), map(number, words[-3:])))
    if current.headers or current.threads:
        windows.append(current)
    return [w for w in windows if w.threads or w.skipped or
            any("dump" in h for h in w.headers)]


def unwrap(text):
    """text with each of the tool's lines whole again: a "#   "
    continuation joined to the line before it."""
    return re.sub(r"\n#   (?=\S)", " ", text)


def duration_ms(text):
    """'5.0 µs' (the report's durations) in ms, as shown."""
    value, unit = text.split()
    return round(float(value.replace(",", "")) * UNIT_MS[unit], 6)


def shown(ns):
    """ns as the report's sentences show it: in s with 2 decimals, in ms
    or µs with 1."""
    for unit, digits in (("s", 2), ("ms", 1)):
        size = 1e6 * UNIT_MS[unit]
        if ns >= size - size / 20000:
            return "{:,.{}f} {}".format(ns / size, digits, unit)
    return "{:,.1f} µs".format(ns / 1000)


def shown_ms(ns):
    """ns in ms, rounded as the report shows it."""
    return duration_ms(shown(ns))
