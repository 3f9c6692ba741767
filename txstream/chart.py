"""The user page's bar chart of window sums: the geometry, drawn as SVG by the template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from txstream.queries import WindowRow

WIDTH = 600  # SVG user units; the picture scales to the page's width
HEIGHT = 200
BAR_SHARE = Decimal("0.8")  # of each bar's slot; the rest is the gap between bars
_PLACES = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Bar:
    """One window's bar: its box in SVG units, and what its title says."""

    x: Decimal
    y: Decimal
    width: Decimal
    height: Decimal
    start: datetime
    end: datetime
    amount: Decimal

    @property
    def negative(self) -> bool:
        """A negative sum: the bar hangs below the axis."""
        return self.amount < 0


@dataclass(frozen=True, slots=True)
class Chart:
    """Bars of window sums, oldest window on the left; `axis_y` is where zero is."""

    width: int
    height: int
    axis_y: Decimal
    bars: list[Bar]


def bar_chart(windows: Sequence[WindowRow], length: timedelta) -> Chart:
    """The bars of `windows` (newest first, as `queries.user_windows` reads them): each as
    tall as its sum in proportion to the largest, positive sums above the axis."""
    sums = [w.amount_sum for w in windows]
    top, bottom = max([Decimal(0), *sums]), min([Decimal(0), *sums])
    extent = top - bottom
    # All sums zero (or no windows): flat bars on an axis at the bottom.
    scale = Decimal(HEIGHT) / extent if extent else Decimal(0)
    axis_y = top * scale if extent else Decimal(HEIGHT)
    slot = Decimal(WIDTH) / max(len(windows), 1)
    bars = []
    for i, w in enumerate(reversed(windows)):
        height = abs(w.amount_sum) * scale
        bars.append(
            Bar(
                x=_rounded(slot * i + slot * (1 - BAR_SHARE) / 2),
                y=_rounded(axis_y - height if w.amount_sum > 0 else axis_y),
                width=_rounded(slot * BAR_SHARE),
                height=_rounded(height),
                start=w.window_start,
                end=w.window_start + length,
                amount=w.amount_sum,
            )
        )
    return Chart(WIDTH, HEIGHT, _rounded(axis_y), bars)


def _rounded(value: Decimal) -> Decimal:
    return value.quantize(_PLACES)
