"""Metering of one attempt (``stoker.usage``): CPU time and peak RSS."""

from __future__ import annotations

import sys

import pytest

from stoker import usage

MIB = 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the RSS mark is reset through /proc")
def test_a_small_attempt_after_a_large_one_reports_its_own_peak() -> None:
    usage._Mark.reset_before_next = True
    large = usage.UsageMeter()
    block = bytearray(64 * MIB * 1024)
    block[::4096] = b"x" * len(block[::4096])  # Touch every page so it is resident.
    del block
    large_peak = large.read()["peak_rss_kib"]

    small = usage.UsageMeter()  # The mark rose: it is reset before this attempt.
    small_peak = small.read()["peak_rss_kib"]
    assert small_peak < large_peak - 32 * MIB

    again = usage.UsageMeter()  # Nothing rose: no reset, the mark as it stands.
    assert again.read()["peak_rss_kib"] == small_peak


def test_cpu_time_of_the_attempt_is_counted() -> None:
    meter = usage.UsageMeter()
    total = sum(i * i for i in range(300_000))
    reading = meter.read()
    assert total > 0
    assert reading["cpu_user_s"] + reading["cpu_system_s"] > 0
    assert reading["wall_s"] > 0
