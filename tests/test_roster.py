from __future__ import annotations

import io

import openpyxl
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

GOOD_CSV = (
    "代表编号,姓名,层级,代表团,小组,联络站\n"
    "R0001,王伟,市,东港区代表团,第1小组,东港区联络站\n"
    "R0002,李娜,county,岚山区代表团,,\n"
    "\n"
    "R0003,张强,全国,,,\n"
)


def xlsx(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def post(client, auth, body: bytes, content_type: str, query: str = ""):  # type: ignore[no-untyped-def]
    return await client.post(
        f"/api/roster/import{query}", data=body, headers={**auth.admin, "Content-Type": content_type}
    )


async def test_csv_with_chinese_headers_imports(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    r = await post(client, auth, GOOD_CSV.encode(), "text/csv")
    assert r.status == 200, await r.text()
    report = (await r.json())["report"]
    assert report["committed"] and report["created"] == 3 and report["rejected"] == []
    rows = await db.fetch("SELECT id, name, level, delegation FROM representatives ORDER BY id")
    assert [(r["id"], r["level"]) for r in rows] == [
        ("R0001", "city"),
        ("R0002", "county"),
        ("R0003", "national"),
    ]
    # Importing again updates instead of duplicating.
    again = await post(client, auth, GOOD_CSV.replace("王伟", "王伟伟").encode(), "text/csv")
    report = (await again.json())["report"]
    assert (report["created"], report["updated"]) == (0, 3)
    assert await db.fetchval("SELECT name FROM representatives WHERE id = 'R0001'") == "王伟伟"


async def test_gbk_csv_from_excel(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    r = await post(client, auth, GOOD_CSV.encode("gb18030"), "text/csv")
    assert r.status == 200
    assert await db.fetchval("SELECT name FROM representatives WHERE id = 'R0002'") == "李娜"


async def test_broken_rows_write_nothing_and_are_reported(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    body = b"id,name,level\nR1,Alice,city\n,Nobody,city\nR3,,mars\nR1,Alice again,city\nbad id!,Bob,city\n"
    r = await post(client, auth, body, "text/csv")
    assert r.status == 422
    error = (await r.json())["error"]
    assert "4 of 5 rows are invalid, so nothing was imported" in error["message"]
    rejected = {p["row"]: p["errors"] for p in error["details"]["rejected"]}
    assert set(rejected) == {3, 4, 5, 6}  # spreadsheet row numbers, header is row 1
    assert rejected[3] == ["id is empty"]
    assert "name is empty" in rejected[4] and any("mars" in e for e in rejected[4])
    assert "already appears on row 2" in rejected[5][0]
    assert await db.fetchval("SELECT count(*) FROM representatives") == 0

    partial = await post(client, auth, body, "text/csv", "?skip_invalid=true")
    assert partial.status == 200
    report = (await partial.json())["report"]
    assert report["imported"] == 1 and len(report["rejected"]) == 4
    assert [r["id"] for r in await db.fetch("SELECT id FROM representatives")] == ["R1"]


async def test_xlsx_import_and_numeric_ids(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    body = xlsx(
        [
            ["编号", "姓名", "层级", "代表团"],
            [2023001, "赵敏", "省", "A团"],
            [None, None, None, None],
            ["X2", "周杰", "乡镇", None],
        ]
    )
    r = await post(client, auth, body, XLSX)
    assert r.status == 200, await r.text()
    rows = await db.fetch("SELECT id, level, delegation FROM representatives ORDER BY id")
    assert [tuple(r) for r in rows] == [("2023001", "provincial", "A团"), ("X2", "township", "")]
    broken = xlsx([["id", "name", "level"], ["X3", "钱", "moon"]])
    r = await post(client, auth, broken, XLSX)
    assert r.status == 422 and (await r.json())["error"]["details"]["rejected"][0]["row"] == 2


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"", "text/csv", 422, "empty"),
        (b"id,name\nR1,A\n", "text/csv", 422, "missing: level"),
        (b"id,name,level\n", "text/csv", 422, "no representatives"),
        (b"PK\x03\x04garbage", XLSX, 422, "not a readable .xlsx"),
        (b"\xff\xfe\x00garbage\x81\x82", "text/csv", 422, "neither UTF-8 nor GB18030"),
        (b'id,name,level\nR1,"unterminated', "text/csv", 422, "malformed near row 2"),
        (b"{}", "application/json", 422, "unsupported roster format"),
    ],
)
async def test_unusable_files_say_why(client, auth, db, body, content_type, status, says) -> None:  # type: ignore[no-untyped-def]
    r = await post(client, auth, body, content_type)
    assert r.status == status, await r.text()
    if status != 200:
        assert says in (await r.json())["error"]["message"]
        assert await db.fetchval("SELECT count(*) FROM representatives") == 0


async def test_size_and_row_limits(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    big = b"id,name,level\n" + b"R1,A,city\n" * (settings.max_upload_bytes // 10 + 1)
    r = await post(client, auth, big, "text/csv")
    assert r.status == 413
    assert (await r.json())["error"]["code"] == "too_large"
    assert await db.fetchval("SELECT count(*) FROM representatives") == 0
    # The node keeps serving.
    assert (await client.get("/healthz")).status == 200


async def test_only_admins_import(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/api/roster/import", data=GOOD_CSV.encode(), headers={**auth("R1"), "Content-Type": "text/csv"}
    )
    assert r.status == 403
    assert await db.fetchval("SELECT count(*) FROM representatives") == 0
