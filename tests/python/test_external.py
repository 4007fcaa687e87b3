"""CREATE EXTERNAL TABLE: Parquet, CSV and Delta data read in place as read-only frames, only
under the storage root or an operator's --external-root; everything else PERMISSION_DENIED."""

import os
import pathlib

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from conftest import ApiaryServer


def connect(server):
    return flight_sql.connect(server.uri)


def denied(cur, sql):
    with pytest.raises(adbc_driver_manager.Error) as e:
        cur.execute(sql)
    text = str(e.value)
    assert "PERMISSION_DENIED" in text or "PermissionDenied" in text or "Unauthorized" in text, text
    return text


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


@pytest.fixture
def srv(root):
    s = ApiaryServer(str(root))
    yield s
    s.stop()


def test_parquet_csv_and_delta_are_read_in_place(srv, root):
    sales = root / "imports" / "sales"
    sales.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "amount": [1.5, 2.5]}), sales / "part-0.parquet")
    pq.write_table(pa.table({"id": [3], "amount": [4.0]}), sales / "part-1.parquet")
    (sales / "_SUCCESS").write_text("")
    pacsv.write_csv(pa.table({"city": ["Oslo", "Lima"], "pop": [700, 10000]}), root / "imports" / "cities.csv")
    write_deltalake(str(root / "imports" / "events"), pa.table({"e": ["a", "b", "c"]}))
    write_deltalake(str(root / "imports" / "events"), pa.table({"e": ["d"]}), mode="append")

    with connect(srv) as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTERNAL TABLE sales STORED AS PARQUET LOCATION 'imports/sales/'")
        cur.execute("CREATE EXTERNAL TABLE cities STORED AS CSV LOCATION 'imports/cities.csv' OPTIONS ('format.has_header' 'true')")
        cur.execute("CREATE EXTERNAL TABLE events STORED AS DELTA LOCATION 'imports/events'")
        cur.execute("CREATE EXTERNAL TABLE IF NOT EXISTS events STORED AS DELTA LOCATION 'imports/events'")
        cur.execute("SELECT count(*), sum(amount) FROM sales")
        assert cur.fetchall() == [(3, 8.0)]
        cur.execute("SELECT city FROM cities WHERE pop > 1000")
        assert cur.fetchall() == [("Lima",)]
        cur.execute("SELECT string_agg(e, '' ORDER BY e) FROM events")
        assert cur.fetchall() == [("abcd",)]
        # Joins with frames, DESCRIBE and the schema clients ask for.
        cur.execute("CREATE TABLE own AS SELECT 1 AS id")
        cur.execute("SELECT s.amount FROM sales s JOIN own o ON s.id = o.id")
        assert cur.fetchall() == [(1.5,)]
        cur.execute("DESCRIBE sales")
        described = cur.fetchall()
        assert ("amount", "DOUBLE", "") in described
        assert ("External", "parquet files, read-only", "") in described
        assert conn.adbc_get_table_schema("cities").names == ["city", "pop"]
        cur.execute("SHOW FRAMES")
        assert {"sales", "cities", "events", "own"} <= {v for r in cur.fetchall() for v in r}

        # New files are seen by the next query; nothing is ever written there.
        pq.write_table(pa.table({"id": [4], "amount": [0.5]}), sales / "part-2.parquet")
        cur.execute("SELECT count(*) FROM sales")
        assert cur.fetchall() == [(4,)]
        before = sorted(p.name for p in sales.iterdir())
        denied(cur, "INSERT INTO sales VALUES (9, 9.0)")
        denied(cur, "INSERT INTO events VALUES ('z')")
        # Every other write is PERMISSION_DENIED too (files were NOT_IMPLEMENTED).
        for sql in ("DELETE FROM sales", "UPDATE sales SET amount = 0", "TRUNCATE sales",
                    "MERGE INTO sales USING (SELECT 1 AS id) s ON sales.id = s.id WHEN MATCHED THEN DELETE",
                    "DELETE FROM events"):
            denied(cur, sql)
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("events", pa.table({"e": ["y"]}), mode="append")
        assert "external frame" in str(e.value)
        assert sorted(p.name for p in sales.iterdir()) == before

        # DROP forgets the frame and leaves the data.
        cur.execute("DROP TABLE sales")
        cur.execute("DROP TABLE events")
        assert (sales / "part-0.parquet").exists()
        assert (root / "imports" / "events" / "_delta_log").exists()


def test_locations_outside_the_allowed_roots_are_denied(srv, root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pa.table({"x": [1]}), outside / "secret.parquet")
    (root / "imports").mkdir(parents=True)
    os.symlink(outside, root / "imports" / "link")
    with connect(srv) as conn, conn.cursor() as cur:
        for location in [
            str(outside),
            f"file://{outside}",
            "../outside",
            "imports/../../outside",
            "imports/link",
            "_apiary",
            "_apiary/catalog",
            "s3://bucket/x",
            "/etc",
        ]:
            text = denied(cur, f"CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{location}'")
            assert "outside" in text or "not a plain path" in text or "Apiary's own" in text or "local paths" in text, (location, text)
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'imports/nothing-here'")
        assert "NOT_FOUND" in str(e.value) or "No such file" in str(e.value), str(e.value)
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("CREATE EXTERNAL TABLE t STORED AS JSON LOCATION 'imports'")
        assert "NOT_IMPLEMENTED" in str(e.value), str(e.value)
        # COPY and other writes to files stay refused.
        with pytest.raises(adbc_driver_manager.Error):
            cur.execute(f"COPY (SELECT 1) TO '{outside}/x.parquet'")
        assert sorted(p.name for p in outside.iterdir()) == ["secret.parquet"]


def test_an_operator_allowed_root_is_readable_and_never_written(root, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), shared / "data.parquet")
    other = tmp_path / "other"
    other.mkdir()
    s = ApiaryServer(str(root), args=["--external-root", str(shared)])
    try:
        with connect(s) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE EXTERNAL TABLE shared STORED AS PARQUET LOCATION '{shared}/'")
            cur.execute("SELECT sum(x) FROM shared")
            assert cur.fetchall() == [(6,)]
            denied(cur, f"CREATE EXTERNAL TABLE o STORED AS PARQUET LOCATION '{other}'")
            denied(cur, "INSERT INTO shared VALUES (4)")
        assert sorted(p.name for p in shared.iterdir()) == ["data.parquet"]
    finally:
        s.stop()


def test_locations_with_spaces_and_percent_signs_are_read(srv, root):
    # The marker records the location as a key: read back as the same key, not escaped again.
    odd = root / "imports" / "my data 100%"
    odd.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2, 3]}), odd / "part 0.parquet")
    write_deltalake(str(root / "imports" / "delta 50%"), pa.table({"e": ["a", "b"]}))
    with connect(srv) as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTERNAL TABLE odd STORED AS PARQUET LOCATION 'imports/my data 100%/'")
        cur.execute("SELECT sum(id) FROM odd")
        assert cur.fetchall() == [(6,)]
        cur.execute("CREATE EXTERNAL TABLE odd_delta STORED AS DELTA LOCATION 'imports/delta 50%'")
        cur.execute("SELECT count(*) FROM odd_delta")
        assert cur.fetchall() == [(2,)]


def test_broken_views_and_unreadable_files_do_not_hide_other_columns(srv, root):
    """GetTables with schemas (what BI tools ask for columns) lists a view that no longer plans
    and an external frame that is not Parquet without columns, and every other frame with
    its own; reading the damaged file is DATA_LOSS, not an internal error."""
    bad = root / "imports" / "bad"
    bad.mkdir(parents=True)
    (bad / "a.parquet").write_bytes(b"not parquet")
    with connect(srv) as conn, conn.cursor() as cur:
        cur.execute("CREATE EXTERNAL TABLE badx STORED AS PARQUET LOCATION 'imports/bad/'")
        cur.execute("CREATE TABLE base (a INT)")
        cur.execute("CREATE VIEW vb AS SELECT a FROM base")
        cur.execute("CREATE TABLE keep (k BIGINT, s VARCHAR)")
        cur.execute("DROP TABLE base")
        objects = conn.adbc_get_objects(depth="all", catalog_filter="default",
                                        db_schema_filter="default").read_all().to_pylist()
        tables = {t["table_name"]: [c["column_name"] for c in t["table_columns"] or []]
                  for t in objects[0]["catalog_db_schemas"][0]["db_schema_tables"]}
        assert tables == {"badx": [], "vb": [], "keep": ["k", "s"]}
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("SELECT * FROM badx")
            cur.fetchall()
        assert "DATA_LOSS" in str(e.value) or "DataLoss" in str(e.value), str(e.value)
        assert "not Parquet" in str(e.value)


def _delta_log(path, protocol, configuration, fields, add_extra):
    """A one-commit Delta table written by hand: a feature delta-rs does not write."""
    import json
    import time
    import uuid

    path.mkdir(parents=True)
    pq.write_table(pa.table({f["physical"]: pa.array([1, 2, 3], pa.int64()) for f in fields}), path / "part-0.parquet")
    now = int(time.time() * 1000)
    schema = {"type": "struct", "fields": [
        {"name": f["name"], "type": "long", "nullable": True, "metadata": f.get("metadata", {})} for f in fields]}
    actions = [
        {"protocol": protocol},
        {"metaData": {"id": str(uuid.uuid4()), "format": {"provider": "parquet", "options": {}},
                      "schemaString": json.dumps(schema), "partitionColumns": [],
                      "configuration": configuration, "createdTime": now}},
        {"add": {"path": "part-0.parquet", "partitionValues": {}, "size": (path / "part-0.parquet").stat().st_size,
                 "modificationTime": now, "dataChange": True, **add_extra}},
        {"commitInfo": {"timestamp": now, "operation": "WRITE"}},
    ]
    (path / "_delta_log").mkdir()
    (path / "_delta_log" / f"{0:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in actions))


def test_delta_tables_whose_rows_the_scan_would_misread_are_refused(srv, root):
    """Deletion vectors (their deleted rows came back) and column mapping (every value read as
    NULL) are refused by name, and so is a reader feature the Delta kernel does not know (it
    was INTERNAL)."""
    _delta_log(root / "imp" / "dv",
               {"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["deletionVectors"], "writerFeatures": ["deletionVectors"]},
               {"delta.enableDeletionVectors": "true"}, [{"name": "id", "physical": "id"}],
               {"deletionVector": {"storageType": "u", "pathOrInlineDv": "ab^-aqEH.-t@S}K{vb[*k^",
                                   "offset": 1, "sizeInBytes": 36, "cardinality": 1}})
    _delta_log(root / "imp" / "cm", {"minReaderVersion": 2, "minWriterVersion": 5},
               {"delta.columnMapping.mode": "name", "delta.columnMapping.maxColumnId": "1"},
               [{"name": "id", "physical": "col-1",
                 "metadata": {"delta.columnMapping.id": 1, "delta.columnMapping.physicalName": "col-1"}}], {})
    _delta_log(root / "imp" / "fut",
               {"minReaderVersion": 3, "minWriterVersion": 7,
                "readerFeatures": ["someFutureFeature"], "writerFeatures": ["someFutureFeature"]},
               {}, [{"name": "id", "physical": "id"}], {})
    with connect(srv) as conn, conn.cursor() as cur:
        for name, says in [("dv", "deletion vectors"), ("cm", "column mapping"), ("fut", "someFutureFeature")]:
            with pytest.raises(adbc_driver_manager.Error) as e:
                cur.execute(f"CREATE EXTERNAL TABLE {name} STORED AS DELTA LOCATION 'imp/{name}'")
                cur.execute(f"SELECT * FROM {name}")
                cur.fetchall()
            text = str(e.value)
            assert says in text and ("NOT_IMPLEMENTED" in text or "Unimplemented" in text), text
