"""The representative roster: import from CSV or XLSX with a per-row report.

An import is one transaction. By default a file with any broken row writes nothing and the
report lists every problem, so staff fix the file and upload it again; with
`skip_invalid` the good rows are written and the broken ones reported.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

from config.text import clean_text
from recorder.errors import InvalidInput

# Header aliases, English and the Chinese staff actually use in their spreadsheets.
HEADERS: dict[str, tuple[str, ...]] = {
    "id": ("id", "rep_id", "representative_id", "代表编号", "编号", "代表证号"),
    "name": ("name", "姓名", "代表姓名"),
    "level": ("level", "层级", "代表层级", "级别"),
    "delegation": ("delegation", "代表团", "所属代表团"),
    "group_name": ("group", "group_name", "代表小组", "小组"),
    "liaison_station": ("liaison_station", "station", "联络站", "代表联络站"),
}
REQUIRED = ("id", "name", "level")

LEVELS = {
    "national": "national",
    "全国": "national",
    "全国人大": "national",
    "provincial": "provincial",
    "province": "provincial",
    "省": "provincial",
    "省级": "provincial",
    "city": "city",
    "市": "city",
    "市级": "city",
    "county": "county",
    "县": "county",
    "县级": "county",
    "区": "county",
    "township": "township",
    "乡": "township",
    "镇": "township",
    "乡镇": "township",
    "乡级": "township",
}
_REP_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_LIMITS = {"name": 100, "delegation": 100, "group_name": 100, "liaison_station": 100}

CSV_TYPES = {"text/csv", "application/csv", "text/plain"}
XLSX_TYPES = {"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


@dataclass(frozen=True, slots=True)
class RosterRow:
    id: str
    name: str
    level: str
    delegation: str = ""
    group_name: str = ""
    liaison_station: str = ""


@dataclass(slots=True)
class RowProblem:
    row: int
    errors: list[str]
    id: str | None = None


@dataclass(slots=True)
class ImportReport:
    total_rows: int = 0
    imported: int = 0
    created: int = 0
    updated: int = 0
    committed: bool = False
    rejected: list[RowProblem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decode_csv(data: bytes) -> str:
    for encoding in ("utf-8-sig", "gb18030"):  # Excel in zh-CN saves CSV as GBK
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise InvalidInput("the CSV file is neither UTF-8 nor GB18030 text; save it as CSV UTF-8")


def _header_map(header: list[str]) -> dict[str, int]:
    columns: dict[str, int] = {}
    aliases = {alias.lower(): key for key, names in HEADERS.items() for alias in names}
    for index, raw in enumerate(header):
        key = aliases.get(clean_text(str(raw or "")).lower())
        if key is not None and key not in columns:
            columns[key] = index
    missing = [k for k in REQUIRED if k not in columns]
    if missing:
        wanted = "; ".join(f"{k} ({' / '.join(HEADERS[k][:1] + HEADERS[k][-2:])})" for k in missing)
        raise InvalidInput(f"the first row must name the columns; missing: {wanted}")
    return columns


def read_rows(data: bytes, content_type: str, *, max_rows: int) -> Iterator[tuple[int, dict[str, str]]]:
    """(spreadsheet row number, column → text) for each non-empty data row."""
    if content_type in XLSX_TYPES or data[:4] == b"PK\x03\x04":
        rows: Iterable[list[Any]] = _xlsx_rows(data)
    elif content_type in CSV_TYPES or content_type == "":
        rows = csv.reader(io.StringIO(_decode_csv(data), newline=""), strict=True)
    else:
        raise InvalidInput(f"unsupported roster format {content_type!r}; send text/csv or an .xlsx file")
    iterator = iter(rows)
    try:
        header = next(iterator)
    except StopIteration:
        raise InvalidInput("the file is empty; the first row must name the columns") from None
    except csv.Error as exc:
        raise InvalidInput(f"the CSV file is malformed: {exc}") from None
    columns = _header_map(list(header))
    number = 1
    try:
        for values in iterator:
            number += 1
            cells = ["" if v is None else str(v) for v in values]
            if not any(c.strip() for c in cells):
                continue
            if number - 1 > max_rows:
                raise InvalidInput(f"the file has more than {max_rows} rows; split it")
            yield number, {k: cells[i] if i < len(cells) else "" for k, i in columns.items()}
    except csv.Error as exc:
        raise InvalidInput(f"the CSV file is malformed near row {number + 1}: {exc}") from None


def _xlsx_rows(data: bytes) -> Iterator[list[Any]]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise InvalidInput(f"the file is not a readable .xlsx workbook: {exc}") from None
    try:
        sheet = book.worksheets[0]
        for values in sheet.iter_rows(values_only=True):
            yield [_xlsx_cell(v) for v in values]
    finally:
        book.close()


def _xlsx_cell(value: Any) -> Any:
    # Spreadsheets turn 2023001 into 2023001.0; an id is text.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value


def validate(rows: Iterable[tuple[int, dict[str, str]]]) -> tuple[list[RosterRow], list[RowProblem], int]:
    good: list[RosterRow] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    total = 0
    for number, cells in rows:
        total += 1
        errors = []
        values = {k: clean_text(v) for k, v in cells.items()}
        rep_id = values.get("id", "")
        if not rep_id:
            errors.append("id is empty")
        elif not _REP_ID.match(rep_id):
            errors.append(f"id {rep_id!r} may hold only letters, digits and _.:- (at most 64)")
        elif rep_id in seen:
            errors.append(f"id {rep_id!r} already appears on row {seen[rep_id]}")
        if not values.get("name"):
            errors.append("name is empty")
        level = LEVELS.get(values.get("level", "").lower())
        if level is None:
            errors.append(
                f"level {values.get('level', '')!r} is not one of 全国/省/市/县/乡 "
                "(national/provincial/city/county/township)"
            )
        for key, limit in _LIMITS.items():
            if len(values.get(key, "")) > limit:
                errors.append(f"{key} is longer than {limit} characters")
        if errors:
            problems.append(RowProblem(row=number, errors=errors, id=rep_id or None))
            continue
        seen[rep_id] = number
        good.append(
            RosterRow(
                id=rep_id,
                name=values["name"],
                level=str(level),
                delegation=values.get("delegation", ""),
                group_name=values.get("group_name", ""),
                liaison_station=values.get("liaison_station", ""),
            )
        )
    return good, problems, total


async def upsert(
    conn: asyncpg.Connection,
    rows: list[RosterRow],
    *,
    progress: Callable[[int], None] | None = None,
    chunk: int = 1000,
) -> tuple[int, int]:
    """Insert or update representatives; returns (created, updated). Caller owns the transaction."""
    created = updated = 0
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        result = await conn.fetch(
            """INSERT INTO representatives AS r (id, name, level, delegation, group_name, liaison_station)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
               ON CONFLICT (id) DO UPDATE SET
                   name = excluded.name, level = excluded.level, delegation = excluded.delegation,
                   group_name = excluded.group_name, liaison_station = excluded.liaison_station,
                   active = true, updated_at = now()
               RETURNING (xmax = 0) AS inserted""",
            [r.id for r in part],
            [r.name for r in part],
            [r.level for r in part],
            [r.delegation for r in part],
            [r.group_name for r in part],
            [r.liaison_station for r in part],
        )
        inserted = sum(1 for r in result if r["inserted"])
        created += inserted
        updated += len(result) - inserted
        if progress is not None:
            progress(start + len(part))
    return created, updated


async def import_file(
    pool: asyncpg.Pool,
    data: bytes,
    content_type: str,
    *,
    skip_invalid: bool,
    max_rows: int,
    actor: str,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    good, problems, total = validate(read_rows(data, content_type, max_rows=max_rows))
    report = ImportReport(total_rows=total, rejected=problems)
    if total == 0:
        raise InvalidInput("the file has a header but no representatives")
    if problems and not skip_invalid:
        return report
    if good:
        async with pool.acquire() as conn, conn.transaction():
            report.created, report.updated = await upsert(conn, good, progress=progress)
            await conn.execute(
                "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, 'roster.import', '', $2)",
                actor,
                {"created": report.created, "updated": report.updated, "rejected": len(problems)},
            )
    report.imported = len(good)
    report.committed = True
    return report


async def list_page(
    pool: asyncpg.Pool, *, delegation: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT id, name, level, delegation, group_name, liaison_station, active
             FROM representatives WHERE ($1::text IS NULL OR delegation = $1)
            ORDER BY id LIMIT $2 OFFSET $3""",
        delegation,
        limit,
        offset,
    )
    return [dict(r) for r in rows]
