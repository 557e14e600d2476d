"""Periods for rankings and reports: a year, a quarter, a month or a custom range of days,
with boundaries at local midnight (China Standard Time, where the sessions happen)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from recorder.errors import InvalidInput

LOCAL = ZoneInfo("Asia/Shanghai")
RELATIVE = ("month", "quarter", "year")
FORMS = "2026, 2026-Q4, 2026-11, 2026-10-01..2026-12-31, month, quarter or year (the current one)"

_YEAR = re.compile(r"^(\d{4})$")
_QUARTER = re.compile(r"^(\d{4})-[Qq]([1-4])$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")


class PeriodError(InvalidInput):
    pass


@dataclass(frozen=True, slots=True)
class Period:
    label: str
    start: datetime  # inclusive
    end: datetime  # exclusive

    def as_dict(self) -> dict[str, str]:
        return {"label": self.label, "from": self.start.isoformat(), "to": self.end.isoformat()}


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=LOCAL)


def _month(year: int, month: int, months: int) -> tuple[date, date]:
    first = date(year, month, 1)
    index = year * 12 + month - 1 + months
    return first, date(index // 12, index % 12 + 1, 1)


def parse_period(text: str, *, now: datetime | None = None) -> Period:
    """`2026`, `2026-Q4`, `2026-11`, `2026-10-01..2026-12-31` (both days included), or
    `month` / `quarter` / `year` for the one `now` falls in."""
    raw = text.strip()
    if raw in RELATIVE:
        today = (now or datetime.now(LOCAL)).astimezone(LOCAL)
        raw = {
            "year": f"{today.year}",
            "quarter": f"{today.year}-Q{(today.month - 1) // 3 + 1}",
            "month": f"{today.year}-{today.month:02d}",
        }[raw]
    try:
        if m := _YEAR.match(raw):
            first, after = date(int(m[1]), 1, 1), date(int(m[1]) + 1, 1, 1)
        elif m := _QUARTER.match(raw):
            first, after = _month(int(m[1]), 3 * int(m[2]) - 2, 3)
        elif m := _MONTH.match(raw):
            first, after = _month(int(m[1]), int(m[2]), 1)
        elif m := _RANGE.match(raw):
            first, last = date.fromisoformat(m[1]), date.fromisoformat(m[2])
            if last < first:
                raise PeriodError(f"period {text!r} ends before it starts")
            after = last + timedelta(days=1)
        else:
            raise PeriodError(f"period {text!r} does not parse; use {FORMS}")
    except ValueError:
        raise PeriodError(f"period {text!r} is not a real date range; use {FORMS}") from None
    if first.year < 2000 or after.year > 2200:
        raise PeriodError(f"period {text!r} is out of range (years 2000..2199)")
    return Period(raw, _midnight(first), _midnight(after))
