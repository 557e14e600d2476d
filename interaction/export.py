"""A session's comments as table rows, for the staff who follow them up (written as CSV or
XLSX by recorder.sheets)."""

from __future__ import annotations

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


def comment_cells(row: ExportRow) -> list[str]:
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


CSV_TYPE = "text/csv; charset=utf-8"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
