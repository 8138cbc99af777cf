"""The clock fit: guest mono ns -> QEMU virtual ns from clock-sync pairs."""

from __future__ import annotations

import random

import pytest

from harness.checks import clocksync
from harness.checks.ftrace import parse_line

SLOPE = 1 - 37e-6  # the guest's clock runs 37 ppm fast against the virtual clock
OFFSET = -12_345_678_901  # virtual = SLOPE * guest + OFFSET


def virtual(guest: int) -> int:
    return round(SLOPE * guest + OFFSET)


def test_the_fit_recovers_a_known_slope_and_offset_within_the_noise():
    rng = random.Random(12)
    noise = 400  # ns: the device stamps the HI write 0..400 ns after the read
    guest = [20_000_000_000 + i * 97_000_000 + rng.randrange(1_000_000) for i in range(200)]
    pairs = [clocksync.Pair("0000:00:04.0", g, virtual(g) + rng.randrange(noise), 900)
             for g in guest]
    m = clocksync.fit(pairs)
    assert m is not None
    a = m.alignment
    assert a.pairs == 200
    assert abs(a.slope - SLOPE) < 0.2e-6  # ppm-exact over 20 s of guest time
    assert a.residual_max_ns <= noise and a.residual_median_ns <= noise / 2 + 20
    assert a.rtt_half_median_ns == a.rtt_half_max_ns == 450
    for g in (guest[0], guest[100], guest[-1], guest[-1] + 10**9):
        assert abs(m.to_virtual(g) - (virtual(g) + noise / 2)) <= noise
    d = a.to_dict()
    assert d["slope_ppm"] == pytest.approx(-37, abs=0.2) and d["resolution_ns"] == 1000
    assert "200 of 200 clock-sync pairs" in a.text()


def test_slow_writes_stay_out_of_the_line():
    """A write that waited in QEMU is stamped late by up to its round trip: the
    line goes through the quick half only, and the slow ones show in the
    all-pairs figures."""
    rng = random.Random(3)
    pairs = []
    for i in range(100):
        g = 5_000_000_000 + i * 20_000_000
        if i % 2:  # slow: 30-900 us round trip, stamped somewhere in it
            rtt = rng.randrange(30_000, 900_000)
            late = rng.randrange(rtt)
        else:  # quick: 8-12 us, stamped 5 us after the read (+-300 ns)
            rtt = rng.randrange(8_000, 12_000)
            late = 5_000 + rng.randrange(-300, 300)
        pairs.append(clocksync.Pair("d", g, virtual(g) + late, rtt))
    m = clocksync.fit(pairs)
    assert m is not None
    a = m.alignment
    assert a.pairs == 100 and a.pairs_used == 50  # the median cuts between the two kinds
    assert abs(a.slope - SLOPE) < 0.1e-6
    assert a.residual_max_ns <= 600 and a.residual_p95_ns <= 600
    assert a.residual_all_max_ns > 10_000  # the slow ones, about the same line
    assert a.rtt_half_max_ns < 6_000
    g = 5_000_000_000 + 33 * 20_000_000
    assert abs(m.to_virtual(g) - (virtual(g) + 5_000)) < 300


def test_one_pair_gives_slope_one_and_none_gives_no_map():
    m = clocksync.fit([clocksync.Pair("d", 5_000, 9_000, 100)])
    assert m is not None and m.alignment.slope == 1.0 and m.to_virtual(6_000) == 10_000
    assert m.alignment.residual_max_ns == 0
    assert clocksync.fit([]) is None


def test_pairs_join_the_driver_and_the_device_on_the_value_written():
    lines = [
        "kworker/0:1-20 [000] ..... 10.000001: hmm_gpu_clock_sync: dev=0000:00:04.0 "
        "guest_ns=10000000500 rtt_ns=3000 seq=1",
        "sh-30 [001] ..... 12.000001: hmm_gpu_clock_sync: dev=0000:00:04.0 "
        "guest_ns=12000000700 rtt_ns=2500 seq=2",
        "sh-30 [001] ..... 12.000009: hmm_gpu_clock_sync: dev=0000:00:05.0 "
        "guest_ns=12000008000 rtt_ns=2500 seq=1",
    ]
    events = [e for e in map(parse_line, lines) if e is not None]
    driver = clocksync.driver_syncs(events)
    assert driver[0] == ("0000:00:04.0", 10_000_000_500, 3000)
    device = {"0000:00:04.0": [(777, 10_000_000_500), (888, 11_000_000_000)],
              "0000:00:05.0": [(999, 12_000_008_000)]}
    ps, no_device, no_driver = clocksync.pairs(driver, device)
    assert [(p.dev, p.guest_ns, p.virtual_ns) for p in ps] == [
        ("0000:00:04.0", 10_000_000_500, 777), ("0000:00:05.0", 12_000_008_000, 999)]
    assert (no_device, no_driver) == (1, 1)  # a sync each side the other lacks


def test_a_step_between_the_clocks_starts_a_new_segment():
    """The guest's clock jumps 12 ms against the virtual clock between two syncs
    (as QEMU's TSC offset does under TCG): a line per side of it, the step
    reported with the window it happened in."""
    rng = random.Random(5)
    pairs = []
    for i in range(60):
        g = 10_000_000_000 + i * 1_000_000_000 + rng.randrange(1_000_000)
        jump = -12_000_000 if i >= 40 else 0
        pairs.append(clocksync.Pair("d", g, virtual(g) + jump + rng.randrange(300), 2_000))
    m = clocksync.fit(pairs)
    assert m is not None
    a = m.alignment
    [step] = a.steps
    assert step["after_ns"] == pairs[39].guest_ns and step["before_ns"] == pairs[40].guest_ns
    assert abs(step["step_ns"] + 12_000_000) < 40_000  # and the 37 ppm over the 1 s between
    assert a.residual_max_ns < 300 and "2 segments; a step of -12.037 ms" in a.text()
    for i in (0, 39, 40, 59):
        g = pairs[i].guest_ns
        assert abs(m.to_virtual(g) - pairs[i].virtual_ns) < 300
    assert a.to_dict()["steps"] == [step]


def test_a_small_step_across_a_long_gap_is_found_too():
    """-91 us between two scenario edges 6 s apart (seen in a full run): the
    run's own drift is taken out before the step is judged."""
    pairs = []
    for edge in range(12):
        for k in range(16):
            g = 10_000_000_000 + edge * 6_000_000_000 + k * 300_000
            jump = -91_000 if edge >= 9 else 0
            pairs.append(clocksync.Pair("d", g, virtual(g) + jump + (k * 37) % 200, 2_000))
    m = clocksync.fit(pairs)
    assert m is not None
    [step] = m.alignment.steps
    assert step["before_ns"] == 10_000_000_000 + 9 * 6_000_000_000
    assert m.alignment.residual_max_ns < 300
