# SPDX-License-Identifier: Apache-2.0
"""The documents: the rst renders cleanly and opens with contents and a
quick start, the README's first screen says what a support engineer needs,
and make demo installs only what the demo needs."""

import os
import re
import subprocess
import sys

import docutils.core
import docutils.utils
import pytest

from conftest import TOP

sys.path.insert(0, os.path.join(TOP, "tests", "tools"))

import docs_examples  # noqa: E402

RST = os.path.join(TOP, "kernel_delay.rst")
TESTS_RST = os.path.join(TOP, "tests", "README.rst")
README = os.path.join(TOP, "README.md")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def parse(path):
    """The document's tree; the first warning (a broken reference, a
    literal block that ends without a blank line, a bad table) fails."""
    try:
        return docutils.core.publish_doctree(
            read(path), source_path=path,
            settings_overrides={"halt_level": 2, "report_level": 2,
                                "warning_stream": False})
    except docutils.utils.SystemMessage as e:
        pytest.fail("{}: {}".format(os.path.basename(path), e))


@pytest.fixture(scope="module")
def rst_tree():
    # Parsing the rst takes seconds: once for the tests that need it.
    return parse(RST)


def test_rst_renders_without_warnings(rst_tree):
    assert rst_tree.children


def test_tests_readme_renders_without_warnings():
    assert parse(TESTS_RST).children


def test_rst_opens_with_contents_then_quick_start(rst_tree):
    doctree = rst_tree
    titles = [section[0].astext() for section in doctree.children
              if section.tagname == "section"]
    assert doctree.children[0].tagname == "title"
    topics = [node for node in doctree.children if node.tagname == "topic"]
    assert topics and "contents" in topics[0]["classes"]
    assert doctree.children.index(topics[0]) < doctree.children.index(
        next(node for node in doctree.children if node.tagname == "section"))
    # The order the readers need (issue 19).
    order = ["Quick start", "Reading a report", "The modes",
             "Troubleshooting by symptom", "Options", "JSON output",
             "Warnings, errors and exit codes",
             "How far to trust the numbers", "Overhead"]
    assert [title for title in titles if title in order] == order
    assert titles[0] == "Quick start"


def test_readme_first_screen_is_for_the_support_engineer():
    first = "\n".join(read(README).splitlines()[:30])
    # How to get the one file onto the node, and its packages per distro.
    assert re.search(r"[Cc]opy the one file, `kernel_delay.py`", first)
    for package in ("python3-bpfcc", "python3-bcc", "python3-psutil"):
        assert package in first
    # The one command for OVS's warning, where the answer is, the file.
    assert "Unreasonably long" in first
    assert "sudo ./kernel_delay.py --long-poll 1000 --output" in first
    assert "# VERDICT" in first and "# OVERVIEW" in first
    assert "Attach the `--output` file to the ticket" in first
    # The developers' targets come later, under their own heading.
    assert "make check" not in first and "make demo" not in first
    assert "## For developers" in read(README)


def test_readme_keeps_the_test_command():
    # CI runs `make check` through .ci/run; the README gives it as is.
    assert "$ sudo make check " in read(README)


def make_dry_run(target):
    return subprocess.run(
        ["make", "-n", "-C", TOP, target], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True).stdout


def test_demo_installs_only_what_the_demo_needs():
    install = [line for line in make_dry_run("demo").splitlines()
               if "install-missing" in line]
    assert install, make_dry_run("demo")
    packages = set(re.search(r'DEB="([^"]*)"', install[0]).group(1).split())
    assert {"python3-bpfcc", "python3-psutil", "gcc", "libc6-dev",
            "systemtap-sdt-dev"} <= packages
    for tooling in ("python3-pytest", "python3-hypothesis", "flake8",
                    "python3-jsonschema", "openvswitch-switch",
                    "debootstrap", "python3-docutils"):
        assert tooling not in packages


@pytest.mark.parametrize("path", [RST, README])
def test_generated_examples_are_marked_in_pairs(path):
    # Every begin marker has its end marker, and names an excerpt the
    # generator makes: make docs-examples can rewrite each one.
    text = read(path)
    begin, _ = docs_examples.markers(path)
    names = re.findall(re.escape(begin).replace(r"\{\}", r"(\S+)"), text)
    spans = docs_examples.spans(text, path)
    assert names and sorted(names) == sorted(spans)
    known = set(docs_examples.demo_excerpts(DEMO_SAMPLE)) | {"json-sample"}
    assert set(spans) <= known


def test_generator_says_when_the_report_order_changed():
    order = docs_examples.report_order(DEMO_SAMPLE)
    assert order == ["demo-header", "demo-overview", "demo-verdict",
                     "demo-threads"]
    # The walkthrough follows the report: nothing to say.
    text = read(RST)
    assert docs_examples.order_note(text, RST, order) is None
    # A report with its verdict after the threads' blocks (the order
    # before the answer came first).
    lines = DEMO_SAMPLE.splitlines(True)
    verdict = lines.index("# VERDICT\n")
    blocks = lines.index("TID        THREAD           <RESOURCE SPECIFIC>\n")
    moved = lines[:verdict] + lines[blocks:] + lines[verdict:blocks]
    order = docs_examples.report_order("".join(moved))
    assert order.index("demo-threads") < order.index("demo-verdict")
    note = docs_examples.order_note(text, RST, order)
    assert "move its subsections" in note
    # The README shows excerpts, but walks through none.
    assert docs_examples.order_note(read(README), README, order) is None


# The shape of a demo report, enough for demo_excerpts() to find its parts.
DEMO_SAMPLE = """\
# kernel_delay 1.0: ./kernel_delay.py -p 1 --sample-time 1
# WINDOW 1 of 1: 1.0 s
# Sample dump @2026-12-01T03:30:45.448217 (03:30:45 UTC)
# OVERVIEW: 1 thread
TID        THREAD           ON CPU

# VERDICT
# - kd-poll (1) waited
#   for a CPU.

TID        THREAD           <RESOURCE SPECIFIC>
---------- ---------------- -----
         1 kd-poll          [SYSCALL STATISTICS]

         2 kd-udp           [SYSCALL STATISTICS]

"""


def test_every_example_names_sections_the_tool_prints(rst_tree):
    # The excerpts written by hand (a trigger window, a long poll catch, a
    # histogram) cannot all be rerun here; the names of the sections they
    # show must still be names the tool prints.
    with open(os.path.join(TOP, "kernel_delay.py"), encoding="utf-8") as f:
        source = f.read()
    blocks = [node.astext() for node in rst_tree.findall()
              if node.tagname == "literal_block"]
    blocks += re.findall(r"```\n(.*?)```", read(README), re.S)
    names = set()
    for block in blocks:
        names.update(re.findall(r"\[([A-Z][A-Z ]*[A-Z])[]:]", block))
    assert "TIME BUDGET" in names and "LONG POLL INTERVAL" in names
    assert sorted(name for name in names if name not in source) == []


def test_shape_sees_a_renamed_section_and_a_moved_column():
    # The comparison itself: what a format change looks like to it.
    block = ["      1 kd-poll          [SYSCALL STATISTICS]",
             "                         NAME     NUMBER  COUNT  TOTAL ns",
             "                         poll          7     26   132,807"]
    assert docs_examples.shape(block) == {
        "[SYSCALL STATISTICS]", "NAME     NUMBER  COUNT  TOTAL ns"}
    renamed = [block[0].replace("SYSCALL STATISTICS", "SYSCALLS")] + \
        block[1:]
    moved = block[:1] + [block[1].replace("NUMBER  COUNT", "COUNT  NUMBER")]
    assert docs_examples.shape(renamed) != docs_examples.shape(block)
    assert docs_examples.shape(moved) != docs_examples.shape(block)
    assert docs_examples.key_drift({"a": 1, "b": [{"c": 1}]},
                                   {"a": 1, "b": [{"c": 1, "d": 2}]}) != []
