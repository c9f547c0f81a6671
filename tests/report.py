# SPDX-License-Identifier: Apache-2.0
"""Parse kernel_delay.py's text report back into numbers, for the tests."""

import re

THREAD = re.compile(r"^\s*(\d+) (\S.*?)\s+\[SYSCALL STATISTICS\]$")
SECTION = re.compile(r"^\s+\[([A-Z ]+) STATISTICS\]$")
BUDGET = re.compile(r"^\s+\[TIME BUDGET\]$")
HISTOGRAM = re.compile(r"^\s+\[(SYSCALL|READY) HISTOGRAM:? ?(\S*)\]$")
BUDGET_ROW = re.compile(r"^\s+(\S.*?)\s+(-?[\d,]+)\s+(-?[\d.]+) %$")
IN_FLIGHT = re.compile(r"^\s+(\S+) in flight ([\d,.]+) ms( \(since before "
                       r"the window\))?$")
HIST_ROW = re.compile(r"^\s+([\d,]+) -> ([\d,]+)\s+(\d+)\s+\|")
# Lines after # VERDICT that are not part of it.
NOT_VERDICT = ("# WARNING", "# Start", "# Stop", "# Sample", "# Triggered",
               "# Interrupted", "# Process", "# Waiting")
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


def parse(text):
    """A list of Window, one per '# ... sample dump' in text."""
    windows = []
    current = Window()
    thread = section = mode = None
    in_verdict = False
    for line in text.splitlines():
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
        # (not a warning's continuation: "#" and 10 spaces)
        if line.startswith("#   ") and line[4:5] != " " and current.quiet:
            current.quiet += " " + line[4:]
            continue
        if line.startswith("# "):
            if thread is not None and ("sample dump" in line.lower() or
                                       line.startswith("# Start")):
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
            match = IN_FLIGHT.match(line)
            if match:
                thread[section]["in flight"].append(
                    (match.group(1), float(match.group(2).replace(",", "")),
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
        if not words or thread is None or words[0] in HEADINGS:
            continue
        if words[0] == "NOTE:":
            match = re.search(r"did not report (\d+) switch", line)
            if match:
                thread["LOST"] = int(match.group(1))
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
