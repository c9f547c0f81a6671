# SPDX-License-Identifier: Apache-2.0
"""--long-poll without the kernel: options, the C source, a catch record
made into a time budget and a verdict, and its text and JSON."""

import datetime
import io
import os
import re

import jsonschema
import pytest

from fakes import MS, FakeProbes, record

NAMES = {230: "clock_nanosleep", 7: "poll", 0: "read"}


def test_parse_args_long_poll(kd):
    args = kd.parse_args(["--long-poll", "0.5"])
    assert args.long_poll == 500000          # ns
    assert args.sample_count == 0           # until Ctrl-C
    assert kd.parse_args(["--long-poll", "5", "--sample-count", "3"]) \
        .sample_count == 3
    assert kd.parse_args([]).sample_count == 1
    assert kd.parse_args(["--long-poll", "0", "--histogram"]).histogram


def test_c_source_only_with_long_poll(kd):
    layout = kd.TaskLayout(1, 2, 3, 4)
    plain = kd.render_bpf_source(1, layout, (7,))
    assert "#define LONG_POLL        0\n" in plain
    lp = kd.render_bpf_source(1, layout, (7,), long_poll_ns=1500 * MS)
    assert "#define LONG_POLL        1\n" in lp
    assert "#define LONG_POLL_NS     1500000000ULL" in lp
    assert "#define LONG_POLL_RATE   {}\n".format(kd.LONG_POLL_RATE) in lp
    # Below the threshold: one comparison, then the next call.
    assert "if (gap >= LONG_POLL_NS)\n            kd_lp_catch(" in lp


def test_tables_tidied_in_long_poll_mode_exist(kd):
    """Every table --long-poll empties or reads is declared in its C
    program (bcc raises KeyError for a missing one, after hours)."""
    source = kd.render_bpf_source(1, kd.TaskLayout(1, 2, 3, 4), (7,),
                                  long_poll_ns=1500 * MS)
    declared = set(re.findall(r"^BPF_\w+\((\w+),", source, re.M))
    names = kd.Probes.UNREAD_TABLES + ("sched_state", "sys_start",
                                       "lp_state")
    assert set(names) <= declared, set(names) - declared


def test_catch_budget(kd):
    catch = kd.analyse_long_poll(record(), "kd-lpoll", NAMES)
    budget = catch.budget
    assert (catch.tid, catch.start, catch.end) == (77, 1000 * MS, 1822 * MS)
    assert budget.window == 822 * MS
    assert budget.on_cpu == 54 * MS
    assert (budget.hardirq, budget.softirq) == (1 * MS, 2 * MS)
    assert budget.ready == 267 * MS
    assert budget.stopped == 321 * MS - 20 * MS
    assert [(b.name, b.ns) for b in budget.blocked_in] == [
        ("clock_nanosleep", 200 * MS), ("(outside system calls)", 5 * MS)]
    assert budget.other == 822 * MS - (54 + 267 + 205 + 301) * MS
    assert (catch.longest.name, catch.longest.ns) == \
        ("clock_nanosleep", 200 * MS + 40000)


def test_catch_verdict_names_holder_irq_and_signal(kd):
    sigstop = kd.StopSignal(sig=19, name="SIGSTOP", sender=555, tgid=555,
                            comm="pytest", count=1, last=1500 * MS)
    earlier = kd.StopSignal(sig=19, name="SIGSTOP", sender=556, tgid=556,
                            comm="old", count=1, last=900 * MS)
    cont = kd.StopSignal(sig=18, name="SIGCONT", sender=555, tgid=555,
                         comm="pytest", count=1, last=1700 * MS)
    catch = kd.analyse_long_poll(record(), "kd-lpoll", NAMES,
                                 [sigstop, earlier, cont],
                                 kd.Thresholds(irq=0.3))
    kinds = {f.kind: f for f in catch.verdict.findings}
    assert set(kinds) == {"cpu", "irq", "stopped"}
    assert [h.comm for h in kinds["cpu"].holders] == ["kd-spin1", ""]
    assert "kd-spin1 (4242) 200.0 ms" in kinds["cpu"].text
    assert "idle 7.0 ms" in kinds["cpu"].text
    assert kinds["irq"].sources[0] == ("soft IRQ net_rx", 2 * MS)
    assert kinds["stopped"].signals == [sigstop]
    assert "by SIGSTOP from pytest (555)" in kinds["stopped"].text
    assert "of the interval" in kinds["stopped"].text
    assert "window" not in kinds["stopped"].text


def test_catch_with_no_named_parts(kd):
    """Slots of another interval (gen differs): only the sums count."""
    catch = kd.analyse_long_poll(record(gen=5), "t", NAMES)
    assert catch.budget.blocked_in == []
    assert catch.budget.hardirq == 0
    assert catch.budget.on_cpu == 54 * MS
    assert catch.verdict.findings[0].holders == []


def test_catch_with_slots_overflowing(kd):
    catch = kd.analyse_long_poll(record(rest=(3 * MS, 0, 4 * MS)), "t",
                                 NAMES)
    assert ("(other system calls)", 3 * MS) in [
        (b.name, b.ns) for b in catch.budget.blocked_in]
    assert catch.budget.hardirq == 5 * MS
    # In JSON the overflow has no system call number (the schema's nr is
    # a number >= 0, or null).
    header = kd.Header(command=("kd",), host="h", kernel="k",
                       machine="x86_64", cpus=2, load=(0, 0, 0), pid=9,
                       name="w")
    doc = kd.long_poll_document(catch, header, kd.options_json(
        kd.parse_args(["--long-poll", "150"])))
    jsonschema.Draft7Validator(kd.json_schema()).validate(doc)
    assert ("(other system calls)", None, 3 * MS) in [
        (b["name"], b["nr"], b["ns"]) for b in doc["budget"]["blocked_in"]]


def test_short_catch_is_judged(kd):
    """--min-window is for windows: a catch as short as the user asked
    for (--long-poll 2) still gets its findings."""
    end = 1000 * MS + 2 * MS
    catch = kd.analyse_long_poll(record(end=end), "t", NAMES)
    assert not catch.verdict.too_short


def test_text_and_json_of_a_catch(kd):
    catch = kd.analyse_long_poll(record(), "kd-lpoll", NAMES, number=3)
    wall = datetime.datetime(2026, 12, 1, 1, 2, 3, 400000,
                             tzinfo=datetime.timezone.utc)
    catch.start_time = wall
    catch.end_time = wall + datetime.timedelta(milliseconds=822)
    catch.not_shown = 2
    text = "\n".join(kd.format_long_poll(catch, 150))
    assert "# Long poll interval 3 (150.0 ms or more)" in text
    assert "# 2 more intervals over the rate limit" in text
    assert "        77 kd-lpoll         [LONG POLL INTERVAL]" in text
    assert "822,000,000" in text
    assert "01:02:03.400000   01:02:04.222000" in text
    assert "[TIME BUDGET]" in text and "# VERDICT" in text
    assert "longest system call: clock_nanosleep 200.0 ms" in text
    assert "window" not in text
    header = kd.Header(command=("kd",), host="h", kernel="k",
                       machine="x86_64", cpus=2, load=(0, 0, 0), pid=9,
                       name="w")
    args = kd.parse_args(["--long-poll", "150"])
    doc = kd.long_poll_document(catch, header, kd.options_json(args))
    jsonschema.Draft7Validator(kd.json_schema()).validate(doc)
    assert doc["type"] == "long_poll"
    assert doc["schema_version"] == kd.SCHEMA_VERSION == 3
    assert doc["interval"]["duration_ns"] == 822 * MS
    assert doc["options"]["long_poll_ms"] == 150
    # The budget has the shape of a sample's thread budget.
    assert doc["budget"] == kd.budget_json(catch.budget)
    assert doc["budget"]["blocked_in"][0]["name"] == "clock_nanosleep"
    assert doc["verdict"]["findings"][0]["kind"] == "cpu"
    assert doc["not_shown"] == 2
    doc["budget"]["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(kd.json_schema()).validate(doc)


def test_end_document_with_poll_histograms(kd):
    header = kd.Header(command=("kd",), host="h", kernel="k",
                       machine="x86_64", cpus=2, load=(0, 0, 0), pid=9,
                       name="w")
    args = kd.parse_args(["--long-poll", "150", "--histogram"])
    doc = kd.end_document(header, kd.options_json(args), {}, 4, 0,
                          "interrupted", (), [(77, "kd-lpoll", {3: 5, 5: 1})])
    jsonschema.Draft7Validator(kd.json_schema()).validate(doc)
    assert [s["count"] for s in doc["poll_histograms"][0]["slots"]] == \
        [5, 0, 1]
    plain = kd.end_document(header, kd.options_json(kd.parse_args([])), {},
                            1, 0, "completed")
    assert plain["poll_histograms"] is None
    jsonschema.Draft7Validator(kd.json_schema()).validate(plain)


def test_rate_limit_warning(kd):
    texts = kd.warning_texts({kd.Counter.LONG_POLL_UNSHOWN: 12}, 0)
    assert texts == ["12 long poll intervals were not shown: more than {} "
                     "a second were caught (the rate limit of --long-poll)."
                     .format(kd.LONG_POLL_RATE)]


def test_threads_limit_the_catches(kd):
    """--threads with --long-poll: only those threads' intervals are
    reported, and only they count for --sample-count."""
    args = kd.parse_args(["-p", str(os.getpid()), "--long-poll", "150",
                          "--threads", "77"])
    out = io.StringIO()
    sampler = kd.LongPollSampler(FakeProbes(kd), args, out, kd.RunContext(
        kd.Target(args.pid), NAMES, (7,)))
    mine = record()
    other = mine._replace(tid=78)
    sampler.report_catches([other, mine, other])
    assert sampler.catches == 1
    text = out.getvalue()
    assert re.search(r"^ +77 .*\[LONG POLL INTERVAL\]", text, re.M), text
    assert not re.search(r"^ +78 ", text, re.M), text
