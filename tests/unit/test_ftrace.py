"""The guest's ftrace: the run-file option, the text parser, the collection's pure parts."""

from __future__ import annotations

import pytest

from harness.checks import ftrace
from harness.core import config
from harness.guest import ftrace as collect

# As 6.12 prints them (irq-info flags), an older format without flags, a tgid
# column, a task name with dashes and spaces, and lines that are not events.
TEXT = """\
# tracer: nop
#
# entries-in-buffer/entries-written: 7/7   #P:2
#
#                                _-----=> irqs-off/BH-disabled
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
# hmmlab: scenario svm-mirror
              sh-301     [000] .....    41.000001: tracing_mark_write: hmmlab: svm-mirror begin
      svm-mirror-312     [001] d..1.    41.123456: hmm_gpu_fault_begin: dev=0000:00:04.0 \
token=3 ctx=1 va=0x7f0000001000 access=write
  kworker/u4:1-45        [000] .....    41.123460: tlb_flush: pages:-1 reason:flush on task \
switch (0)
 my-task name-9-77       [001] ....    41.200000: some_new_event: a=1 b=two
          <idle>-0       (    0) [001] d.h1.  41.300000: page_fault_user: address=0x1000 \
ip=0x401000 error_code=0x6
CPU:1 [LOST 12 EVENTS]
##### CPU 1 buffer started ####
              sh-301     [000] .....    42.5: tracing_mark_write: hmmlab: svm-mirror end
this line is nothing ftrace prints
"""


def test_the_parser_reads_every_event_line_and_keeps_unknown_events():
    p = ftrace.parse_text(TEXT)
    names = [e.name for e in p.events]
    assert names == ["tracing_mark_write", "hmm_gpu_fault_begin", "tlb_flush", "some_new_event",
                     "page_fault_user", "tracing_mark_write"]
    fb = p.events[1]
    assert (fb.ts_ns, fb.cpu, fb.task, fb.pid) == (41_123_456_000, 1, "svm-mirror", 312)
    assert fb.fields == {"dev": "0000:00:04.0", "token": "3", "ctx": "1",
                         "va": "0x7f0000001000", "access": "write"}
    assert fb.int_field("va") == 0x7F0000001000 and fb.int_field("nope", -1) == -1
    assert all(e.section == "svm-mirror" for e in p.events)
    unknown = p.events[3]
    assert (unknown.task, unknown.pid, unknown.fields) == ("my-task name-9", 77,
                                                           {"a": "1", "b": "two"})
    tlb = p.events[2]
    assert tlb.task == "kworker/u4:1" and tlb.text.startswith("pages:-1 reason:flush")
    assert p.events[4].pid == 0 and p.events[4].int_field("address") == 0x1000
    assert p.events[5].ts_ns == 42_500_000_000  # fewer digits: still seconds
    assert p.lost == {1: 12}
    assert p.unparsed == ["this line is nothing ftrace prints"]
    assert list(ftrace.markers(p.events)) == [("svm-mirror", "begin", 41_000_001_000),
                                              ("svm-mirror", "end", 42_500_000_000)]


def test_per_cpu_stats_count_every_way_an_event_is_lost():
    stats = ftrace.parse_stats("entries: 10\noverrun: 5\ncommit overrun: 1\nbytes: 4000\n"
                               "oldest event ts:    41.000001\nnow ts:    50.000000\n"
                               "dropped events: 2\nread events: 0\n")
    assert stats["entries"] == 10 and "oldest event ts" not in stats
    assert ftrace.lost_of(stats) == 8


def test_events_asked_for_are_enabled_only_where_the_kernel_has_them():
    available = ["migrate:mm_migrate_pages", "exceptions:page_fault_user",
                 "exceptions:page_fault_kernel", "tlb:tlb_flush"]
    on, missing = collect.select_events(
        ["hmm_gpu", "migrate", "exceptions:page_fault_*", "tlb:tlb_flush", "mmap:exit_mmap"],
        available)
    assert on == ["migrate:*", "exceptions:page_fault_*", "tlb:tlb_flush"]
    assert missing == ["hmm_gpu", "mmap:exit_mmap"]


def test_the_collection_scripts_split_into_their_sections():
    out = "x\n## syncs\nsync 0000:00:04.0\nnosync 0000:00:05.0 none\n## trace\nline\n"
    parts = collect._sections(out)
    assert parts["syncs"].split() == ["sync", "0000:00:04.0", "nosync", "0000:00:05.0", "none"]
    assert parts["trace"] == "line\n" and parts[""] == "x\n"
    assert collect.GPU_PCI_ID in collect.sync_script()
    assert "-lt 16 ]" in collect.sync_script() and "-lt 3 ]" in collect.sync_script(3)


def test_ftrace_is_off_by_default_and_on_with_the_default_events():
    cfg = config.load(None)
    assert not cfg.ftrace.enabled
    on = config.load_text("ftrace: true\n", "run.yaml").ftrace
    assert on.enabled and on.events == config.FTRACE_EVENTS and "hmm_gpu" in on.events
    own = config.load_text("ftrace: {enabled: true, events: [hmm_gpu, 'tlb:tlb_flush'], "
                           "buffer_kb: 1024}\n", "run.yaml").ftrace
    assert own.events == ("hmm_gpu", "tlb:tlb_flush") and own.buffer_kb == 1024
    assert config.load_text("ftrace: true\n", "run.yaml").to_dict()["ftrace"]["events"] == list(
        config.FTRACE_EVENTS)


@pytest.mark.parametrize(("text", "message"), [
    ("ftrace: on please\n", 'run.yaml:1: ftrace: expected true, false or a mapping, got "on '
                            'please"'),
    ("ftrace:\n  buffer_kb: 8\n", "run.yaml:2: ftrace.buffer_kb: expected an integer from 64 "
                                  'to 1048576, got "8"'),
    ("ftrace:\n  events: ['tlb flush']\n", "run.yaml:2: ftrace.events[0]: expected a trace "
                                          'system ("migrate") or system:event'),
    ("ftrace:\n  events: []\n", "run.yaml:2: ftrace.events: needs at least one event"),
    ("ftrace:\n  enabled: 1\n", 'run.yaml:2: ftrace.enabled: expected true or false, got "1"'),
    ("ftrace:\n  buffer: 1\n", 'run.yaml:2: ftrace.buffer: unknown key; did you mean '
                               '"buffer_kb"?'),
])
def test_bad_ftrace_values_name_the_key(text, message):
    with pytest.raises(config.ConfigError) as e:
        config.load_text(text, "run.yaml")
    assert str(e.value).startswith(message)
