"""A session's comments as CSV or XLSX, for the staff who follow them up."""

from __future__ import annotations

import csv
import io
from zoneinfo import ZoneInfo

from interaction.comments import ExportRow

HEADER = (
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


def _safe(value: str) -> str:
    # A cell starting with = + - @ is a formula to Excel: text stays text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _cells(row: ExportRow) -> list[str]:
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


def to_csv(rows: list[ExportRow]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for row in rows:
        writer.writerow([_safe(c) for c in _cells(row)])
    return out.getvalue().encode("utf-8-sig")  # the BOM makes Excel read UTF-8


def to_xlsx(rows: list[ExportRow]) -> bytes:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet("留言 Comments")
    sheet.append(list(HEADER))
    for row in rows:
        sheet.append([_safe(c) for c in _cells(row)])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
