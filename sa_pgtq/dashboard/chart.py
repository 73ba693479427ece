"""The throughput chart's geometry: stacked bars of succeeded and failed jobs per bucket.

Drawn as SVG by the template, so the page needs no JavaScript; each bar's `<title>`
is its tooltip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from ..monitor import Bucket

WIDTH = 1000
HEIGHT = 160
#: Room at the left for the scale's labels, and below for the time labels.
LEFT = 48
BOTTOM = 20
_GAP = 1.0  # between bars


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    succeeded_y: float
    succeeded_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    baseline: int
    peak: int
    bars: list[Bar]
    first: str  # the first bucket's start, HH:MM (UTC)
    last: str  # the last bucket's start
    succeeded: int
    failed: int


def throughput_chart(buckets: Sequence[Bucket]) -> Chart:
    baseline = HEIGHT - BOTTOM
    peak = max((b.succeeded + b.failed for b in buckets), default=0)
    scale = (baseline - 4) / peak if peak else 0.0
    step = (WIDTH - LEFT) / max(len(buckets), 1)
    bars = []
    for n, bucket in enumerate(buckets):
        ok, bad = bucket.succeeded * scale, bucket.failed * scale
        bars.append(
            Bar(
                x=LEFT + n * step,
                width=max(step - _GAP, 1.0),
                succeeded_y=baseline - ok,
                succeeded_height=ok,
                failed_y=baseline - ok - bad,
                failed_height=bad,
                title=(
                    f"{_hhmm(bucket.start)} UTC: {bucket.succeeded} succeeded, "
                    f"{bucket.failed} failed"
                ),
            )
        )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        baseline=baseline,
        peak=peak,
        bars=bars,
        first=_hhmm(buckets[0].start) if buckets else "",
        last=_hhmm(buckets[-1].start) if buckets else "",
        succeeded=sum(b.succeeded for b in buckets),
        failed=sum(b.failed for b in buckets),
    )


def _hhmm(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%H:%M}"
