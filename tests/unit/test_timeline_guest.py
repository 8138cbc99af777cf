"""The guest's tracks of timeline.pftrace from a synthetic ftrace.txt and device trace,
decoded back with Perfetto's protos.

The device trace is hmm-gpu at 00:04.0 (devfn 0x20) with four clock-sync
records, one fault (token 7) and the REPLAY that released it; ftrace.txt has
the driver's side: the clock syncs (the same values), the fault's service,
an invalidation, a migration, and kernel events. The guest clock runs
``SLOPE`` against the virtual clock with an offset.
"""

from __future__ import annotations

import pytest
from timeline_events import INSTANT, Decoded, decode, slices

from harness.checks import clocksync, dmatrace
from harness.checks.dmatrace import Dir, Engine, Kind
from harness.report import timeline, timeline_guest

SLOPE = 1 + 25e-6
OFFSET = -3_000_000_000  # virtual = SLOPE * guest + OFFSET
DEV = "0000:00:04.0"
TOKEN = 7
FAULT_VA = 0x7F00_0000_3000


def virtual(guest_ns: int) -> int:
    return round(SLOPE * guest_ns + OFFSET)


def rec(ts: int, kind: int, va: int = 0, aux: int = 0, cmd: int = 5, ctx: int = 1) -> bytes:
    return dmatrace.REC.pack(ts, 0, 0, cmd, va, aux, ctx, Engine.MMU, kind, Dir.NONE, 0, 0,
                             b"\0" * 7)


def ftrace_line(guest_ns: int, event: str, fields: str, task: str = "svm-mirror-312",
                cpu: int = 1) -> str:
    s, ns = divmod(guest_ns, 10**9)
    return f"{task:>20} [{cpu:03d}] d..1. {s:5d}.{ns // 1000:06d}: {event}: {fields}\n"


SYNCS = [10_000_000_000 + i * 2_000_000_000 + 123 for i in range(4)]  # guest ns written
FAULT_GUEST = 12_500_000_000  # the guest time of the device's fault record
BEGIN_GUEST = FAULT_GUEST + 40_000  # the driver takes it off the ring 40 us later
END_GUEST = BEGIN_GUEST + 90_000
REPLAY_GUEST = END_GUEST + 15_000


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Decoded, timeline.TimelineStats]:
    d = tmp_path_factory.mktemp("run")
    body = [rec(virtual(g) + 700, clocksync.EV_CLOCK_SYNC, va=g, aux=i + 1)
            for i, g in enumerate(SYNCS)]
    body += [rec(virtual(FAULT_GUEST), Kind.FAULT_WRITE, FAULT_VA, TOKEN),
             rec(virtual(REPLAY_GUEST), Kind.EV_REPLAY, aux=1)]
    body.sort(key=lambda r: dmatrace.REC.unpack(r)[0])
    hdr = dmatrace.HDR.pack(dmatrace.TRACE_MAGIC, 2, dmatrace.REC_SIZE, 0x20, 0)
    (d / "dmatrace-0.bin").write_bytes(hdr + b"".join(body))
    text = "# hmmlab: scenario svm-mirror\n"
    text += ftrace_line(SYNCS[0] - 5_000, "tracing_mark_write", "hmmlab: svm-mirror begin",
                        "sh-300")
    lines = [(g, "hmm_gpu_clock_sync", f"dev={DEV} guest_ns={g} rtt_ns=1400 seq={i + 1}")
             for i, g in enumerate(SYNCS)]
    lines += [
        (BEGIN_GUEST, "hmm_gpu_fault_begin",
         f"dev={DEV} token={TOKEN} ctx=1 va=0x{FAULT_VA:x} access=write"),
        (BEGIN_GUEST + 20_000, "hmm_gpu_invalidate",
         f"dev={DEV} event=clear start=0x7f0000003000 end=0x7f0000004000 seq=4"),
        (BEGIN_GUEST + 30_000, "page_fault_user", "address=0x7f0000003000 ip=0x401000 "
                                                  "error_code=0x6"),
        (END_GUEST, "hmm_gpu_fault_end",
         f"dev={DEV} token={TOKEN} ctx=1 va=0x{FAULT_VA:x} ret=0 action=replay"),
        (SYNCS[2] + 1_000_000, "hmm_gpu_migrate_begin",
         f"dev={DEV} dir=to_vram start=0x7f0000000000 end=0x7f0000010000 npages=16"),
        (SYNCS[2] + 3_000_000, "hmm_gpu_migrate_end",
         f"dev={DEV} dir=to_vram start=0x7f0000000000 end=0x7f0000010000 npages=16 "
         "cpages=16 ret=0"),
        (SYNCS[2] + 4_000_000, "mm_migrate_pages", "nr_succeeded=16 nr_failed=0"),
        (SYNCS[2] + 5_000_000, "brand_new_event", "x=1"),
    ]
    for g, ev, fields in sorted(lines):
        text += ftrace_line(g, ev, fields)
    text += ftrace_line(SYNCS[-1] + 5_000, "tracing_mark_write", "hmmlab: svm-mirror end",
                        "sh-300")
    (d / "ftrace.txt").write_text(text)
    guest = timeline.GuestTrace(d / "ftrace.txt", (
        "hmm_gpu:hmm_gpu_fault_begin", "hmm_gpu:hmm_gpu_fault_end", "migrate:mm_migrate_pages",
        "exceptions:page_fault_user"))
    stats = timeline.write(d, guest=guest)
    return decode(d / timeline.FILE_NAME), stats


def test_the_driver_services_a_device_fault_between_its_record_and_the_replay(run):
    tl, stats = run
    [(fault, fault_end)] = [(b, e) for b, e in slices(tl.events) if b.name == "fault"]
    [(service, service_end)] = [(b, e) for b, e in slices(tl.events)
                                if b.name == "fault service"]
    [replay] = [e for e in tl.events if e.name == "replay"]
    # mapped through the clock fit: within the ftrace text's microsecond (plus the
    # 700 ns the device stamps the syncs late, which the fit takes in)
    assert abs(service.ts - virtual(BEGIN_GUEST)) < 2_000
    assert abs(service_end - virtual(END_GUEST)) < 2_000
    assert fault.ts < service.ts < service_end < replay.ts == fault_end
    assert service.args["token"] == str(TOKEN) and service.args["action"] == "replay"
    # one flow: device fault -> the driver's service -> the replay
    [flow] = fault.flows
    assert service.flows == [flow]
    assert flow in replay.flows + replay.ends_flows
    assert stats.guest["faults_joined"] == 1 == stats.guest["fault_services"]
    # on the device's driver track, under the guest's
    up = tl.tracks[tl.parents[tl.parents[service.uuid]]]
    assert up == f"hmm_gpu.ko {DEV} (hmm-gpu dmatrace-0.bin)"


def test_the_alignment_is_measured_and_in_the_timeline(run):
    tl, stats = run
    a = stats.guest["alignment"]
    assert a["pairs"] == a["pairs_used"] == 4 and abs(a["slope_ppm"] - 25) < 0.1
    assert a["residual_max_ns"] < 5 and a["rtt_half_max_ns"] == 700
    [mark] = [e for e in tl.events if e.name == "clock alignment"]
    assert mark.type == INSTANT and "4 of 4 clock-sync pairs" in str(mark.args["text"])
    assert stats.to_dict()["guest"]["alignment"] == a


def test_driver_kernel_and_unknown_events_land_on_their_tracks(run):
    tl, stats = run
    [inv] = [e for e in tl.events if e.name == "invalidate clear"]
    assert inv.args["start"] == "0x7f0000003000" and inv.track == "invalidate"
    [(mig, mig_end)] = [(b, e) for b, e in slices(tl.events) if b.name == "migrate to_vram"]
    assert mig_end - mig.ts == pytest.approx(2_000_000 * SLOPE, abs=2_000)
    assert mig.args["npages"] == "16"
    by_track = {e.name: e.track for e in tl.events if e.type == INSTANT}
    assert by_track["page_fault_user"] == "exceptions"
    assert by_track["mm_migrate_pages"] == "migrate"
    assert by_track["brand_new_event"] == "other"
    assert [e.name for e in tl.events if e.track == "clock_sync"] == ["clock_sync"] * 4
    [(scenario, end)] = [(b, e) for b, e in slices(tl.events)
                         if b.track == "scenarios (guest marks)"]
    assert scenario.name == "svm-mirror" and scenario.ts < end
    assert stats.guest["by_system"] == {"exceptions": 1, "migrate": 1, "other": 1}


def test_without_a_clock_sync_pair_no_guest_track_is_drawn(tmp_path):
    (tmp_path / "ftrace.txt").write_text(ftrace_line(1_000_000, "tlb_flush", "pages:1"))
    stats = timeline.write(tmp_path, guest=timeline.GuestTrace(tmp_path / "ftrace.txt"))
    assert "no clock-sync pair" in stats.guest["notes"][0]
    assert not [e for e in decode(tmp_path / timeline.FILE_NAME).events]


def test_a_fault_takes_the_first_service_of_its_token_after_it():
    faults = [timeline_guest.DeviceFault(1_000, 5_000, 3, 1),
              timeline_guest.DeviceFault(9_000, 20_000, 3, 2),
              timeline_guest.DeviceFault(2_000, 3_000, 4, 3),
              timeline_guest.DeviceFault(40_000, 41_000, 5, 4)]
    # token 4's record is serviced after a replay released it (at 3_000); token 3's
    # second fault takes the service after its record (9_100), the first one's
    # came before it; a begin before any record of its token (39_000) and one
    # left over (300_000) join nothing
    begins = [(1_500, 3), (7_000, 4), (9_100, 3), (300_000, 3), (39_000, 5)]
    got = timeline_guest.join_faults(faults, begins, slack_ns=100)
    assert got == {0: 0, 1: 2, 2: 1}
    assert timeline_guest.devfn_of("0000:00:04.0") == 0x20
    assert timeline_guest.devfn_of("00:1f.7") == 0xFF and timeline_guest.devfn_of("x") is None

