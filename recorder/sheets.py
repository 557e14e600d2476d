"""Tables as CSV (UTF-8 with a BOM, so Excel reads it) or XLSX, for staff to open."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any


def safe(value: Any) -> Any:
    # A cell starting with = + - @ is a formula to Excel: text stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if cell is None else safe(cell) for cell in row])
    return out.getvalue().encode("utf-8-sig")


def to_xlsx(sheets: Sequence[tuple[str, Sequence[str], Iterable[Sequence[Any]]]]) -> bytes:
    """One worksheet per (title, header, rows)."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    for title, header, rows in sheets:
        sheet = book.create_sheet(title[:31])
        sheet.append(list(header))
        for row in rows:
            sheet.append([safe(cell) for cell in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv; charset=utf-8"
