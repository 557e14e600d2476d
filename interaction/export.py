"""Tables as CSV (UTF-8 with BOM, for Excel) or XLSX: a session's comments for the staff who
follow them up, a poll's results."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from interaction.comments import ExportRow

COMMENT_HEADER = (
    "时间 Time",
    "代表编号 Rep",
    "姓名 Name",
    "代表团 Delegation",
    "内容 Text",
    "状态 Status",
    "审核记录 Moderation",
    "采纳 Adopted",
    "采纳说明 Note",
)
LOCAL = ZoneInfo("Asia/Shanghai")


Cell = str | int | float | None


def _safe(value: Cell) -> Cell:
    # A cell starting with = + - @ is a formula to Excel: text stays text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def comment_cells(row: ExportRow) -> list[Cell]:
    return [
        row.at.astimezone(LOCAL).strftime("%Y-%m-%d %H:%M:%S"),
        row.rep,
        row.name,
        row.delegation,
        row.text,
        row.status,
        row.trail,
        "是" if row.adopted else "",
        row.note,
    ]


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_safe(c) for c in row])
    return out.getvalue().encode("utf-8-sig")  # the BOM makes Excel read UTF-8


def to_xlsx(sheet_name: str, header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet(sheet_name)
    sheet.append(list(header))
    for row in rows:
        sheet.append([_safe(c) for c in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
