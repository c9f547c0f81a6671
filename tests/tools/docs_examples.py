#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make docs-examples: write the report excerpts of kernel_delay.rst and
README.md from real runs of the tool on the demo workload
(tests/tools/demo.py).

The documents mark each excerpt with a begin and an end marker (an rst
comment, or an HTML comment in Markdown); splice() replaces everything
between the two.  tests/test_docs_examples.py fails when an excerpt no
longer has the shape of real output (section names, column headers, JSON
keys): then run `sudo make docs-examples` and review the diff.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
TOP = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

# The threads whose blocks the documents show.
DEMO_THREADS = ("kd-poll", "kd-udp")


def report_lines(text):
    """The report's lines, without the demo's own first line."""
    return [line for line in text.splitlines()
            if not line.startswith("# Demo workload")]


def _upto(lines, start, stop):
    """lines from the first that start() accepts to the last before the
    first that stop() accepts after it (or to the end)."""
    first = next(i for i, line in enumerate(lines) if start(line))
    for i in range(first + 1, len(lines)):
        if stop(lines[i]):
            return lines[first:i]
    return lines[first:]


def _trim(lines):
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def thread_blocks(lines, names):
    """The per-thread table's two header lines and the blocks of the
    threads named (in the report's order)."""
    top = next(i for i, line in enumerate(lines)
               if line.startswith("TID") and "<RESOURCE SPECIFIC>" in line)
    out = lines[top:top + 2]
    block = None
    for line in lines[top + 2:]:
        if line.startswith("#"):
            break
        match = re.match(r"\s*\d+ (\S+)", line)
        if match:
            block = match.group(1)
        if block in names:
            out.append(line)
    return _trim(out)


def demo_excerpts(text):
    """name -> lines of each excerpt of the demo's report."""
    lines = report_lines(text)
    return {
        "demo-header": _trim(_upto(
            lines, lambda line: line.startswith("# kernel_delay "),
            lambda line: line.startswith("# OVERVIEW"))),
        "demo-overview": _trim(_upto(
            lines, lambda line: line.startswith("# OVERVIEW"),
            lambda line: not line.strip())),
        "demo-threads": thread_blocks(lines, DEMO_THREADS),
        "demo-verdict": _trim(_upto(
            lines, lambda line: line.startswith("# VERDICT"),
            lambda line: not line.strip())),
        "readme-thread": thread_blocks(lines, DEMO_THREADS[:1]),
        "readme-finding": _upto(
            lines, lambda line: line.startswith("# - "),
            lambda line: not line.startswith("#   ")),
    }


# The markers around an excerpt: an rst comment, or an HTML comment in
# Markdown.  The excerpt between them is an rst literal block (indented
# two spaces) or a Markdown code fence.
RST_BEGIN = ".. generated example: {} (make docs-examples; keep the markers)"
RST_END = ".. end of generated example: {}"
MD_BEGIN = "<!-- generated example: {} -->"
MD_END = "<!-- end of generated example: {} -->"


def markers(path):
    """(begin, end) marker formats of the document at path."""
    if path.endswith(".md"):
        return MD_BEGIN, MD_END
    return RST_BEGIN, RST_END


def render(path, lines):
    """An excerpt's lines as the document at path shows them."""
    if path.endswith(".md"):
        return ["```"] + lines + ["```"]
    return ["::", ""] + [("  " + line).rstrip() for line in lines] + [""]


def spans(text, path):
    """name -> (first, last) line indexes of the excerpt between each pair
    of markers in text (the markers excluded)."""
    begin, end = markers(path)
    pattern = re.compile(re.escape(begin).replace(r"\{\}", r"(\S+)")
                         + r"\Z")
    lines = text.split("\n")
    found = {}
    for index, line in enumerate(lines):
        match = pattern.match(line)
        if match:
            name = match.group(1)
            stop = lines.index(end.format(name), index)
            found[name] = (index + 1, stop)
    return found


def shown(text, path):
    """name -> the lines of each excerpt as the document shows them
    (without the literal block's indentation or the code fence)."""
    lines = text.split("\n")
    result = {}
    for name, (first, stop) in spans(text, path).items():
        body = lines[first:stop]
        if path.endswith(".md"):
            body = [line for line in body if line != "```"]
        else:
            body = [line[2:] for line in body if line != "::"]
        while body and not body[0].strip():
            body = body[1:]
        result[name] = _trim(body)
    return result


def splice(text, path, excerpts):
    """text with each marked excerpt replaced by the one of that name."""
    lines = text.split("\n")
    for name, (first, stop) in sorted(spans(text, path).items(),
                                      key=lambda item: -item[1][0]):
        body = [""] + render(path, excerpts[name])
        if path.endswith(".md"):
            body = body[1:]
        lines[first:stop] = body
    return "\n".join(lines)


# What tests/test_docs_examples.py compares.
SECTION = re.compile(r"\[([A-Z][A-Z ]*[A-Z])[]:]")
HEADER_TOKEN = re.compile(r"(?:[A-Z][A-Z_]*|ns|<RESOURCE|SPECIFIC>|-+)\Z")
# Sections that depend on what happened in the run (an interrupt that
# did or did not hit the thread), and lines that only losses bring.
OPTIONAL = {
    "demo-threads": {"HARD IRQ STATISTICS"},
    "readme-thread": {"HARD IRQ STATISTICS", "SOFT IRQ STATISTICS"},
}
OPTIONAL_LINES = {"# WARNING"}


def shape(lines, optional=()):
    """What an excerpt's format is made of: its section names, its column
    header lines (exact, widths included), the kind of each line the tool
    starts with '# ' (its first word), and whether it has findings."""
    found, skip = set(), False
    for line in lines:
        text = line.strip()
        if not text:
            skip = False
            continue
        names = SECTION.findall(text)
        if names:
            skip = names[0] in optional
            if not skip:
                found.update("[{}]".format(name) for name in names)
            continue
        tokens = text.split()
        if len(tokens) >= 2 and all(HEADER_TOKEN.match(token)
                                    for token in tokens):
            if not skip:
                found.add(text)
        elif text.startswith("# - "):
            found.add("# - (a finding)")
        elif text.startswith("# ") and not text.startswith("#  "):
            word = tokens[1].rstrip(":")
            if not re.search(r"\d", word):
                found.add("# " + word)
    return found - OPTIONAL_LINES


def key_drift(doc, real, where="$"):
    """Where the keys of the documented JSON differ from the real one's."""
    if isinstance(doc, dict) and isinstance(real, dict):
        drift = []
        if set(doc) != set(real):
            drift.append("{}: only documented {}, only real {}".format(
                where, sorted(set(doc) - set(real)),
                sorted(set(real) - set(doc))))
        for key in set(doc) & set(real):
            drift += key_drift(doc[key], real[key], where + "." + key)
        return drift
    if isinstance(doc, list) and isinstance(real, list) and doc and real \
            and doc[0] != "...":
        return key_drift(doc[0], real[0], where + "[0]")
    return []


def shorten(value):
    """A JSON value with each list cut to its first item and "..." (the
    example shows every key, and a list's shape once)."""
    if isinstance(value, dict):
        return {key: shorten(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shorten(value[0]), "..."] if len(value) > 1 else \
            [shorten(item) for item in value]
    return value


def pretty(value, indent=0, width=76):
    """JSON as people read it: what fits on a line stays on one line."""
    flat = json.dumps(value, ensure_ascii=True)
    if indent + len(flat) <= width or not isinstance(value, (dict, list)) \
            or not value:
        return flat
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = ["{}: {}".format(json.dumps(key), pretty(
            item, indent + len(json.dumps(key)) + 3, width))
            for key, item in value.items()]
        return "{" + (",\n" + pad).join(items) + "}"
    items = [pretty(item, indent + 1, width) for item in value]
    return "[" + (",\n" + pad).join(items) + "]"


def json_example(lines):
    """The example of a sample document: the first one of the run."""
    for line in lines:
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("type") == "sample":
                return pretty(shorten(doc)).split("\n")
    raise ValueError("no sample document in the JSON run")


def generate():
    """Run the demo twice (text, then JSON) and return the excerpts."""
    import demo
    excerpts = {}
    for args in ((), ("--format", "json")):
        lines = []
        code = demo.run(lines.append, args)
        if code != 0:
            raise SystemExit("ERROR: the demo's run {} ended with exit code "
                             "{}".format(" ".join(args), code))
        if args:
            excerpts["json-sample"] = json_example(lines)
        else:
            excerpts.update(demo_excerpts("".join(lines)))
            excerpts["report-order"] = report_order("".join(lines))
    for name, lines in excerpts.items():
        if not lines:
            raise SystemExit("ERROR: the demo's report has no {}; the "
                             "documents are left as they are".format(name))
    return excerpts


def report_order(text):
    """The names of the demo's excerpts in the order the report has them
    (the walkthrough of kernel_delay.rst follows it)."""
    lines = report_lines(text)
    found = {name: lines.index(excerpt[0])
             for name, excerpt in demo_excerpts(text).items()
             if name.startswith("demo-") and excerpt}
    return sorted(found, key=found.get)


def order_note(text, path, order):
    """A line saying that the document walks through the excerpts in
    another order than the report has them now, or None."""
    marked = sorted((first, name) for name, (first, _) in
                    spans(text, path).items() if name in order)
    shown = [name for _, name in marked]
    if not shown or shown == order:     # no walkthrough here (README)
        return None
    return ("NOTE: the report now has {}; {} walks through {}: move its "
            "subsections to match".format(", ".join(order), os.path.relpath(
                path, TOP), ", ".join(shown)))


def busy(excerpts):
    """Why the demo's text run does not read as the documents describe it
    (the machine was busy), or None: the two spinners wait for the CPU
    they share, and the other threads hardly wait for one."""
    ready = {}
    for line in excerpts["demo-overview"]:
        match = re.match(r"\s*\d+ (\S+)\s+[\d.]+\s+([\d.]+)", line)
        if match:
            ready[match.group(1)] = float(match.group(2))
    spinners = {name: ready.get(name, 0.0)
                for name in ("kd-spin1", "kd-spin2")}
    others = {name: share for name, share in ready.items()
              if name not in spinners}
    if not all(share >= 30 for share in spinners.values()) or \
            any(share >= 10 for share in others.values()):
        return "the threads waited for a CPU {}".format(", ".join(
            "{} {:.1f} %".format(name, share)
            for name, share in sorted(ready.items())))
    return None


DOCUMENTS = (os.path.join(TOP, "kernel_delay.rst"),
             os.path.join(TOP, "README.md"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=10,
                        help="runs to wait for a quiet machine (default 10)")
    parser.add_argument("--busy-ok", action="store_true",
                        help="write the excerpts even if the machine was "
                        "busy during the run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("ERROR: the examples come from real runs, which load eBPF "
                 "programs; run: sudo make docs-examples")
    for attempt in range(max(1, args.tries)):
        excerpts = generate()
        why = busy(excerpts)
        if why is None or args.busy_ok:
            break
        print("# The machine was busy ({}); running again".format(why),
              file=sys.stderr)
    else:
        sys.exit("ERROR: the machine stayed busy for {} runs ({}); the "
                 "documents are left as they are; run again when it is "
                 "quieter, or with --busy-ok".format(args.tries, why))
    for path in DOCUMENTS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        missing = set(spans(text, path)) - set(excerpts)
        if missing:
            sys.exit("ERROR: {} marks examples no run makes: {}".format(
                path, ", ".join(sorted(missing))))
        new = splice(text, path, excerpts)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
        print("{}: {} examples written".format(
            os.path.relpath(path, TOP), len(spans(text, path))))
        note = order_note(new, path, excerpts["report-order"])
        if note:
            print(note)


if __name__ == "__main__":
    main()
