"""Metering of one attempt (``stoker._base.usage``): CPU time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stoker._base import usage

MIB = 1024


#: Run in a fresh interpreter: the test process carries the history of every
#: test before this one (threads, a heap that may hold the freed block), which
#: the marks measured here must not depend on. A child still inherits its
#: parent's lifetime maximum, so the block is sized to rise above it.
_LARGE_THEN_SMALL = """
import json, resource, psutil
from stoker._base import usage
MIB = 1024
usage._Mark.reset_before_next = True
large = usage.UsageMeter()
headroom_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - psutil.Process().memory_info().rss // 1024
block = bytearray((max(0, headroom_kib) + 64 * MIB) * 1024)
block[::4096] = b"x" * len(block[::4096])  # Touch every page so it is resident.
del block
large_peak = large.read()["peak_rss_kib"]
small = usage.UsageMeter()  # The mark rose: it is reset before this attempt.
small_peak = small.read()["peak_rss_kib"]
again = usage.UsageMeter()  # Nothing rose: no reset, the mark as it stands.
print(json.dumps([large_peak, small_peak, again.read()["peak_rss_kib"]]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the RSS mark is reset through /proc")
def test_a_small_attempt_after_a_large_one_reports_its_own_peak() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LARGE_THEN_SMALL], capture_output=True, text=True, check=True, timeout=120
    )
    large_peak, small_peak, again_peak = json.loads(done.stdout)
    assert small_peak < large_peak - 32 * MIB
    assert again_peak == small_peak


def test_cpu_time_of_the_attempt_is_counted() -> None:
    meter = usage.UsageMeter()
    total = sum(i * i for i in range(300_000))
    reading = meter.read()
    assert total > 0
    assert reading["cpu_user_s"] + reading["cpu_system_s"] > 0
    assert reading["wall_s"] > 0


@pytest.mark.parametrize(
    "values",
    [
        {
            "wall_s": 1e-05,
            "cpu_user_s": 0.0,
            "cpu_system_s": 12.345678,
            "peak_rss_kib": 30784,
            "worker_pid": 9,
        },
        {"wall_s": 0.5, "cpu_user_s": None, "cpu_system_s": 0.25, "peak_rss_kib": 1, "worker_pid": 2},
    ],
)
def test_the_usage_json_is_what_json_dumps_writes(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, object]
) -> None:
    meter = usage.UsageMeter()
    monkeypatch.setattr(meter, "read", lambda: values)
    assert meter.json() == json.dumps(values)
    assert json.loads(meter.json()) == values
