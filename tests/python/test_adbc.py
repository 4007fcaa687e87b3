"""The ADBC Flight SQL driver (PyPI adbc-driver-flightsql, the Go driver behind Python and R)."""

import datetime as dt
import decimal
import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pytest


def connect(server, **kwargs):
    return flightsql.connect(server.uri, **kwargs)


def test_connect_without_auth_and_basic_round_trip(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)")
        cur.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL)")
        assert cur.rowcount == 3
        cur.execute("SELECT id, name FROM t ORDER BY id")
        assert cur.fetchall() == [(1, "a"), (2, "b"), (3, None)]
        cur.execute("SELECT max(id) AS m, count(*) AS c FROM t")
        assert cur.fetch_arrow_table().to_pylist() == [{"m": 3, "c": 3}]


def test_connect_with_auth(auth_server):
    with connect(auth_server, db_kwargs={"username": "alice", "password": "s3cret pass"}) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 40 + 2 AS x")
            assert cur.fetchone() == (42,)
    with pytest.raises(adbc_driver_manager.Error) as e:
        with connect(auth_server, db_kwargs={"username": "alice", "password": "wrong"}) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
    assert "UNAUTHENTICATED" in str(e.value) or "Unauthenticated" in str(e.value) or "invalid user" in str(e.value)
    with pytest.raises(adbc_driver_manager.Error):
        with connect(auth_server) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")


def test_parameters_question_marks_and_dollars(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE p (k BIGINT, v VARCHAR, f DOUBLE)")
        cur.execute("INSERT INTO p VALUES (1, 'one', 1.5), (2, 'two', 2.5), (3, 'three', 3.5)")
        cur.execute("SELECT v FROM p WHERE k = ?", parameters=(2,))
        assert cur.fetchall() == [("two",)]
        cur.execute("SELECT v FROM p WHERE k >= ? AND f < ? ORDER BY k", parameters=(2, 3.0))
        assert cur.fetchall() == [("two",)]
        cur.execute("SELECT v FROM p WHERE k = $2 OR v = $1 ORDER BY k", parameters=("one", 3))
        assert cur.fetchall() == [("one",), ("three",)]
        # A number the expected type cannot hold is compared as sent, as its literal is: bound
        # as BIGINT, 1.7 was truncated to 1 and matched k = 1.
        cur.execute("SELECT v FROM p WHERE k = ?", parameters=(1.7,))
        assert cur.fetchall() == []
        cur.execute("SELECT v FROM p WHERE k < ? ORDER BY k", parameters=(1.5,))
        assert cur.fetchall() == [("one",)]
        cur.execute("SELECT v FROM p WHERE k = ?", parameters=(2.0,))
        assert cur.fetchall() == [("two",)]
        cur.execute("CREATE TABLE pd (amt DECIMAL(10,2))")
        cur.execute("INSERT INTO pd VALUES (1.25)")
        for sent, want in [(1.251, []), (decimal.Decimal("1.251"), []), (decimal.Decimal("1.25"), [(decimal.Decimal("1.25"),)])]:
            cur.execute("SELECT amt FROM pd WHERE amt = ?", parameters=(sent,))
            assert cur.fetchall() == want, sent
        cur.execute("SELECT ? AS a, ? AS b", parameters=(7, "x"))
        assert cur.fetchall() == [(7, "x")]
        # Placeholders DataFusion cannot type take the values as sent (they were cast to NULL's
        # type: an integer failed, a decimal became NULL).
        cur.execute("SELECT ? = ?, ? + ?", parameters=(1, 1, 2, 3))
        assert cur.fetchall() == [(True, 5)]
        half = decimal.Decimal("1.5")
        cur.execute("SELECT ? = ?", parameters=(half, half))
        assert cur.fetchall() == [(True,)]
        # Several parameter rows answer one result; a NULL after a value was INTERNAL.
        cur.execute("SELECT ? AS p", parameters=pa.record_batch([pa.array([1, None], pa.int32())], names=["p"]))
        assert cur.fetchall() == [(1,), (None,)]


def test_decimal_literals_are_exact_and_parameters_beside_them_are_not_narrowed(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT 0.1 + 0.2 AS s, 0.1 + 0.2 = 0.3 AS eq")
        assert cur.fetchall() == [(decimal.Decimal("0.3"), True)]
        cur.execute("CREATE TABLE lit (price DECIMAL(10,2), temp DOUBLE)")
        cur.execute("INSERT INTO lit VALUES (19.99, 20.5), (5.00, 'NaN'::double), (1.00, 1e300)")
        cur.execute("SELECT price * 1.1 FROM lit ORDER BY price")
        assert [r[0] for r in cur.fetchall()] == [decimal.Decimal(x) for x in ("1.100", "5.500", "21.989")]
        # A float column beside a decimal literal is never cast to a decimal (NaN, 1e300).
        cur.execute("SELECT temp FROM lit WHERE temp > 20.4 ORDER BY temp")
        rows = [r[0] for r in cur.fetchall()]
        assert rows[:2] == [20.5, 1e300] and rows[2] != rows[2], rows
        # A parameter DataFusion types from a decimal literal is a DOUBLE: typed DECIMAL(2,1)
        # it rounded 2.75 to 2.8 and refused 100.
        cur.execute("SELECT ? * 1.5, ? + 0.5", parameters=(2.75, 100))
        assert cur.fetchall() == [(4.125, 100.5)]
        cur.execute("SELECT price FROM lit WHERE price > ?", parameters=(decimal.Decimal("5.005"),))
        assert cur.fetchall() == [(decimal.Decimal("19.99"),)]


def test_prepared_parameter_types(server):
    # What a client sees before it binds: LIMIT and OFFSET take integers (they were strings).
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE lim (x INT)")
        cur.execute("INSERT INTO lim VALUES (1), (2), (3)")
        for sql, want in [
            ("SELECT x FROM lim ORDER BY x LIMIT ? OFFSET ?", [pa.int64(), pa.int64()]),
            ("SELECT x FROM lim WHERE x > ?", [pa.int32()]),
            ("SELECT ? * 1.5", [pa.float64()]),
        ]:
            cur.adbc_prepare(sql)
            schema = pa.schema(cur.adbc_statement.get_parameter_schema())
            assert schema.types == want, (sql, schema)
        cur.execute("SELECT x FROM lim ORDER BY x LIMIT ? OFFSET ?", parameters=(1, 1))
        assert cur.fetchall() == [(2,)]


def test_a_parameter_below_a_timestamp_columns_unit_is_compared_as_sent(server):
    # Typed as the TIMESTAMP(0) column, a bound '... 12:00:00.5' was truncated to 12:00:00
    # before anything compared it: `at >= ?` took the row at 12:00:00 in. Typed microseconds
    # (as PostgreSQL types a parameter `timestamp`), it is compared as the value it is.
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE whole (id INT, at TIMESTAMP(0))")
        cur.execute("INSERT INTO whole VALUES (1, '2024-01-01 12:00:00'), (2, '2024-01-01 12:00:01')")
        cur.adbc_prepare("SELECT id FROM whole WHERE at >= ?")
        schema = pa.schema(cur.adbc_statement.get_parameter_schema())
        assert schema.types == [pa.timestamp("us")], schema
        for sent in ["2024-01-01 12:00:00.5", dt.datetime(2024, 1, 1, 12, 0, 0, 500000)]:
            cur.execute("SELECT id FROM whole WHERE at >= ? ORDER BY id", parameters=(sent,))
            assert cur.fetchall() == [(2,)], sent
            cur.execute("SELECT id FROM whole WHERE at = ?", parameters=(sent,))
            assert cur.fetchall() == [], sent
        cur.execute("SELECT id FROM whole WHERE at = ?", parameters=("2024-01-01 12:00:01",))
        assert cur.fetchall() == [(2,)]
        # One placeholder also used outside a comparison keeps the column's type (DataFusion
        # refuses a placeholder of two types): the statement runs as it did.
        cur.execute("UPDATE whole SET at = $1 WHERE at < $1", parameters=("2024-01-01 12:00:01",))
        assert cur.rowcount == 1


def test_executemany(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE m (k BIGINT, v VARCHAR)")
        cur.executemany("INSERT INTO m VALUES (?, ?)", [(i, f"v{i}") for i in range(25)])
        cur.execute("SELECT count(*), sum(k) FROM m")
        assert cur.fetchone() == (25, sum(range(25)))
        # Statements other than INSERT … VALUES run once per row.
        cur.executemany("UPDATE m SET v = ? WHERE k = ?", [("x", 1), ("y", 2)])
        cur.execute("SELECT v FROM m WHERE k IN (1, 2) ORDER BY k")
        assert cur.fetchall() == [("x",), ("y",)]


def test_executemany_inserts_every_row_in_one_commit_or_none(server):
    """Run once per row, 1,000 rows made 1,000 commits (67 s), and a bad row 500 left 499 written."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE many (k INT NOT NULL, v VARCHAR, d DATE)")
        rows = [(i, None if i % 7 == 0 else f"v{i}", dt.date(2024, 1, 1 + i % 28)) for i in range(2000)]
        cur.executemany("INSERT INTO many (v, k, d) VALUES (?, ?, ?)", [(v, k, d) for k, v, d in rows])
        cur.execute("SELECT count(*), sum(k), count(v), min(d), max(d) FROM many")
        assert cur.fetchone() == (2000, sum(range(2000)), 2000 - len(range(0, 2000, 7)), dt.date(2024, 1, 1), dt.date(2024, 1, 28))
        cur.execute("DESCRIBE HISTORY many")
        assert len(cur.fetchall()) == 2  # CREATE and one INSERT
        # A row the frame refuses fails the whole batch; nothing of it is written.
        with pytest.raises(adbc_driver_manager.Error):
            cur.executemany("INSERT INTO many VALUES (?, ?, ?)", [(1, "a", None), (None, "b", None), (3, "c", None)])
        cur.execute("SELECT count(*) FROM many")
        assert cur.fetchone() == (2000,)


def test_get_objects_at_every_depth_and_table_schema(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE HIVE sales")
        cur.execute("CREATE BOX sales.eu")
        cur.execute("CREATE TABLE sales.eu.orders (id BIGINT NOT NULL, amount DECIMAL(12,2), region VARCHAR) PARTITIONED BY (region)")
        cur.execute("CREATE TABLE items (sku VARCHAR)")

        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
        assert sorted(c["catalog_name"] for c in catalogs) == ["default", "sales", "system"]

        schemas = conn.adbc_get_objects(depth="db_schemas", catalog_filter="sales").read_all().to_pylist()
        assert sorted(s["db_schema_name"] for s in schemas[0]["catalog_db_schemas"]) == ["default", "eu", "information_schema"]

        tables = conn.adbc_get_objects(depth="tables", table_name_filter="ord%").read_all().to_pylist()
        found = [
            (c["catalog_name"], s["db_schema_name"], t["table_name"], t["table_type"])
            for c in tables
            for s in c["catalog_db_schemas"] or []
            for t in s["db_schema_tables"] or []
        ]
        assert found == [("sales", "eu", "orders", "TABLE")]

        cols = conn.adbc_get_objects(depth="all", catalog_filter="sales", db_schema_filter="eu").read_all().to_pylist()
        table = cols[0]["catalog_db_schemas"][0]["db_schema_tables"][0]
        names = [c["column_name"] for c in table["table_columns"]]
        assert names == ["id", "amount", "region"]
        assert [c["xdbc_type_name"] for c in table["table_columns"]] == ["BIGINT", "DECIMAL(12,2)", "VARCHAR"]

        schema = conn.adbc_get_table_schema("orders", catalog_filter="sales", db_schema_filter="eu")
        assert schema.names == ["id", "amount", "region"]
        assert schema.field("id").nullable is False
        assert schema.field("amount").type == pa.decimal128(12, 2)
        assert conn.adbc_get_table_schema("items").names == ["sku"]
        assert sorted(conn.adbc_get_table_types()) == ["SYSTEM TABLE", "SYSTEM VIEW", "TABLE", "VIEW"]

        # information_schema is listed in every hive as SQL sees it, as system views.
        info = conn.adbc_get_objects(depth="all", catalog_filter="sales", db_schema_filter="information_schema",
                                     table_name_filter="col%").read_all().to_pylist()
        table = info[0]["catalog_db_schemas"][0]["db_schema_tables"][0]
        assert (table["table_name"], table["table_type"]) == ("columns", "SYSTEM VIEW")
        assert "column_name" in [c["column_name"] for c in table["table_columns"]]
        cur.execute("SELECT * FROM sales.information_schema.columns LIMIT 0")
        assert cur.fetch_arrow_table().schema.names == [c["column_name"] for c in table["table_columns"]]
        user_views = conn.adbc_get_objects(depth="tables", table_types_filter=["VIEW"]).read_all().to_pylist()
        assert not [t for c in user_views for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []]


def test_session_catalog_and_schema_options(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE HIVE h2")
        cur.execute("CREATE TABLE h2.default.only_here (x BIGINT)")
        conn.adbc_current_catalog = "h2"
        assert conn.adbc_current_catalog == "h2"
        assert conn.adbc_current_db_schema == "default"
        cur.execute("SELECT count(*) FROM only_here")
        assert cur.fetchone() == (0,)


def test_information_schema_lists_frames_views_columns_and_status_tables(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE HIVE info_h")
        cur.execute("CREATE TABLE info_h.default.things (id BIGINT NOT NULL, label VARCHAR)")
        cur.execute("CREATE VIEW info_h.default.labels AS SELECT label FROM info_h.default.things")
        cur.execute(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_catalog = 'info_h' AND table_schema = 'default' ORDER BY table_name")
        assert cur.fetchall() == [("labels", "VIEW"), ("things", "BASE TABLE")]
        cur.execute(
            "SELECT table_name, column_name, is_nullable FROM info_h.information_schema.columns "
            "WHERE table_catalog = 'info_h' ORDER BY table_name, ordinal_position")
        assert cur.fetchall() == [("labels", "label", "YES"), ("things", "id", "NO"), ("things", "label", "YES")]
        cur.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_catalog = 'system' ORDER BY table_schema, table_name")
        assert ("runtime", "node") in cur.fetchall()
        # `views` lists what `tables` types VIEW: views and the status tables, not frames.
        cur.execute(
            "SELECT table_catalog, table_name, definition FROM information_schema.views "
            "WHERE table_catalog = 'info_h' OR table_name = 'node' ORDER BY 1")
        assert cur.fetchall() == [
            ("info_h", "labels", "SELECT label FROM info_h.default.things"), ("system", "node", None)]
        cur.execute("SHOW COLUMNS FROM info_h.default.things")
        assert [r[3] for r in cur.fetchall()] == ["id", "label"]
        cur.execute("SHOW FUNCTIONS LIKE 'upper'")
        assert [r[0] for r in cur.fetchall()] == ["upper"]
        cur.execute("DESCRIBE SELECT 1 AS x")
        assert cur.fetchall() == [("x", "Int64", "NO")]
        cur.execute("DROP VIEW info_h.default.labels")
        cur.execute("DROP TABLE info_h.default.things")
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'info_h' AND table_schema = 'default'")
        assert cur.fetchone() == (0,)


@pytest.mark.parametrize("mode", ["create", "append", "replace", "create_append"])
def test_ingest_modes(server, mode):
    data = pa.table({"k": pa.array([1, 2, 3], pa.int64()), "s": ["a", "b", "c"]})
    with connect(server) as conn, conn.cursor() as cur:
        if mode in ("append", "replace"):
            cur.adbc_ingest("ing", data, mode="create")
        n = cur.adbc_ingest("ing", data, mode=mode)
        assert n == 3
        cur.execute("SELECT count(*) FROM ing")
        expected = {"create": 3, "append": 6, "replace": 3, "create_append": 3}[mode]
        assert cur.fetchone() == (expected,)
        if mode == "create_append":
            cur.adbc_ingest("ing", data, mode="create_append")
            cur.execute("SELECT count(*) FROM ing")
            assert cur.fetchone() == (6,)


def test_loaders_creating_one_table_at_once_keep_every_row(server):
    """Four loaders ingest `create_append` into a table that does not exist yet, all at once.
    A creating write commits the table with its rows in one commit, so the others cannot wait
    for an empty table to appear: each writes its cells, the first to commit creates the table
    and the rest append. None fails and none waits on another's whole write."""
    import threading

    errors = []

    def load(w):
        data = pa.table({"w": pa.array([w] * 100_000, pa.int64()), "n": pa.array(range(100_000), pa.int64())})
        try:
            with connect(server) as conn, conn.cursor() as cur:
                assert cur.adbc_ingest("loaded", data, mode="create_append") == 100_000
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT w * 1000000 + n) FROM loaded")
        assert cur.fetchone() == (400_000, 400_000)
        cur.execute("DESCRIBE HISTORY loaded")
        ops = sorted(h[2] for h in cur.fetchall())
        assert ops == ["CREATE TABLE", "WRITE", "WRITE", "WRITE"], ops


def test_creating_writes_cut_short_give_their_name_up(tmp_path):
    """A CREATE TABLE … AS SELECT stopped by the query deadline or cancelled by its client, and
    an ingest whose client gives up, free their table's name at once: the same statement run
    again right away creates the table, and no cell of the first attempt is left."""
    import pathlib
    import threading
    import time

    from conftest import ApiaryServer

    root = tmp_path / "root"
    server = ApiaryServer(str(root), args=["--query-timeout", "2s"])
    endless = "AS SELECT value AS v FROM generate_series(1, 100000000000)"
    try:
        with connect(server) as conn, conn.cursor() as cur:
            with pytest.raises(adbc_driver_manager.Error) as e:
                cur.execute(f"CREATE TABLE past_deadline {endless}")
            assert "timed out" in str(e.value)
            cur.execute("CREATE TABLE past_deadline AS SELECT 1 AS v")

            threading.Timer(1.0, cur.adbc_cancel).start()
            with pytest.raises(adbc_driver_manager.Error):
                cur.execute(f"CREATE TABLE cancelled {endless}")
        with connect(server) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE cancelled AS SELECT 2 AS v")

        schema = pa.schema([("v", pa.int64())])

        def batches():
            for i in range(20):
                yield pa.record_batch([pa.array(range(i * 100_000, (i + 1) * 100_000))], schema=schema)
            raise RuntimeError("the client's source failed")

        with connect(server) as conn, conn.cursor() as cur:
            with pytest.raises(Exception):
                cur.adbc_ingest("given_up", pa.RecordBatchReader.from_batches(schema, batches()), mode="create")
        with connect(server) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE given_up AS SELECT 3 AS v")
            cur.execute("SELECT * FROM past_deadline UNION ALL SELECT * FROM cancelled UNION ALL SELECT * FROM given_up ORDER BY v")
            assert cur.fetchall() == [(1,), (2,), (3,)]
        assert server.wait_log("a creating write was cut short"), server.log
        # A cell whose put was in flight when its write was cut short can land after the
        # cleanup, which deletes it again a few seconds later.
        deadline = time.time() + 30
        while True:
            cells = {t: list(pathlib.Path(root, "default", "default", t).rglob("*.parquet")) for t in ["past_deadline", "cancelled", "given_up"]}
            if all(len(c) == 1 for c in cells.values()) or time.time() > deadline:
                break
            time.sleep(0.2)
        assert all(len(c) == 1 for c in cells.values()), cells
    finally:
        server.stop()


def test_an_append_whose_client_hangs_up_leaves_no_cells(tmp_path):
    """An append cut short by its client (the process gone mid-stream) commits nothing; the
    cells it had put stayed as unreferenced files until a VACUUM a week later. They are
    deleted, as a failed append's and a cut-short create's are."""
    import pathlib
    import subprocess
    import sys
    import textwrap
    import time

    from conftest import ApiaryServer

    root = tmp_path / "root"
    server = ApiaryServer(str(root), args=["--cell-target-size", "4MiB"])
    try:
        with connect(server) as conn, conn.cursor() as cur:
            cur.adbc_ingest("t", pa.table({"v": pa.array([1], pa.int64())}), mode="create")
        client = textwrap.dedent(f"""
            import os, time
            import adbc_driver_flightsql.dbapi as flightsql
            import pyarrow as pa
            schema = pa.schema([("v", pa.int64())])
            def batches():
                for i in range(30):
                    yield pa.record_batch([pa.array(range(i * 500_000, (i + 1) * 500_000))], schema=schema)
                time.sleep(0.5)
                os._exit(3)
            with flightsql.connect({server.uri!r}) as conn, conn.cursor() as cur:
                cur.adbc_ingest("t", pa.RecordBatchReader.from_batches(schema, batches()), mode="append")
        """)
        assert subprocess.run([sys.executable, "-c", client], timeout=120).returncode == 3
        assert server.wait_log("a write was cut short"), server.log
        cells = lambda: list(pathlib.Path(root, "default", "default", "t").rglob("*.parquet"))  # noqa: E731
        deadline = time.time() + 30
        while len(cells()) > 1 and time.time() < deadline:
            time.sleep(0.2)
        assert len(cells()) == 1, cells()
        with connect(server) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM t")
            assert cur.fetchall() == [(1,)]
    finally:
        server.stop()


def test_a_client_that_vanishes_gives_up_the_table_it_was_creating(tmp_path):
    """A client that stops answering mid-ingest (its process frozen: a suspended laptop or a
    network partition look the same to the server) is disconnected by the server's keepalive
    pings, and the table it was creating is free again: a CREATE of the name gets it. A client
    that is only slow answers the pings and keeps its connection."""
    import pathlib
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from conftest import ApiaryServer

    root = tmp_path / "root"
    server = ApiaryServer(str(root), args=["--keepalive", "1s", "--keepalive-timeout", "1s"])
    client = textwrap.dedent(f"""
        import time
        import adbc_driver_flightsql.dbapi as flightsql
        import pyarrow as pa
        schema = pa.schema([("v", pa.int64())])
        def batches():
            for i in range(5):
                yield pa.record_batch([pa.array(range(i * 100_000, (i + 1) * 100_000))], schema=schema)
            time.sleep(3600)
        with flightsql.connect({server.uri!r}) as conn, conn.cursor() as cur:
            cur.adbc_ingest("vanished", pa.RecordBatchReader.from_batches(schema, batches()), mode="create")
    """)
    proc = subprocess.Popen([sys.executable, "-c", client])
    marker = pathlib.Path(root, "_apiary", "catalog", "frames", "default", "default", "vanished.json")
    try:
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the ingest never reserved its table"
        # Slow, not gone: several keepalive rounds later it is still creating.
        time.sleep(4)
        assert marker.exists() and "cut short" not in server.log, server.log
        proc.send_signal(signal.SIGSTOP)
        with connect(server) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE vanished AS SELECT 7 AS v")
            cur.execute("SELECT * FROM vanished")
            assert cur.fetchall() == [(7,)]
        assert server.wait_log("a creating write was cut short"), server.log
    finally:
        proc.kill()
        proc.wait(10)
        server.stop()


def test_tables_are_listed_once_created(tmp_path):
    """A table is not listed (ADBC GetObjects, SHOW TABLES, information_schema) while its
    CREATE TABLE … AS SELECT is still writing, nor after its server was killed mid-creation:
    a client is only shown tables it can read. DROP TABLE still clears a killed creation."""
    import threading
    import time

    from conftest import ApiaryServer

    def rows(cur, sql):
        cur.execute(sql)
        return cur.fetchall()

    def listed(conn, cur):
        objects = conn.adbc_get_objects(depth="tables", catalog_filter="default", db_schema_filter="default").read_all().to_pylist()
        got = {
            "get_objects": {t["table_name"] for c in objects for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []},
            "show": {r[2] for r in rows(cur, "SHOW TABLES")},
            "information_schema": {r[0] for r in rows(cur, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'default'")},
        }
        return {k: sorted(v) for k, v in got.items()}

    root = tmp_path / "root"
    marker = root / "_apiary" / "catalog" / "frames" / "default" / "default"
    server = ApiaryServer(str(root), env={"APIARY_FAULT_PAUSE_BEFORE_COMMIT_MS": "4000"})
    try:
        done = {}

        def create():
            with connect(server) as conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE slow AS SELECT 1 AS v")
                done["ok"] = True

        thread = threading.Thread(target=create)
        thread.start()
        while not (marker / "slow.json").exists() and thread.is_alive():
            time.sleep(0.02)
        assert (marker / "slow.json").exists(), "the CTAS never reserved its name"
        with connect(server) as conn, conn.cursor() as cur:
            assert listed(conn, cur) == {"get_objects": [], "show": [], "information_schema": []}
        thread.join(60)
        assert done == {"ok": True}
        with connect(server) as conn, conn.cursor() as cur:
            want = {k: ["slow"] for k in ("get_objects", "show", "information_schema")}
            assert listed(conn, cur) == want
    finally:
        server.stop()

    server = ApiaryServer(str(root), env={"APIARY_FAULT_PAUSE_BEFORE_COMMIT_MS": "60000"})
    try:
        thread = threading.Thread(target=lambda: rows_or_error(server, "CREATE TABLE dead AS SELECT 2 AS v"))
        thread.start()
        assert server.wait_log("pausing before commit", 60), server.log
        server.proc.kill()
        server.proc.wait(10)
        thread.join(30)
    finally:
        server.stop()
    assert (marker / "dead.json").exists()
    server = ApiaryServer(str(root))
    try:
        with connect(server) as conn, conn.cursor() as cur:
            assert listed(conn, cur) == {k: ["slow"] for k in ("get_objects", "show", "information_schema")}
            cur.execute("DROP TABLE dead")
            cur.execute("CREATE TABLE dead AS SELECT 3 AS v")
            assert rows(cur, "SELECT v FROM dead") == [(3,)]
            assert listed(conn, cur)["show"] == ["dead", "slow"]
    finally:
        server.stop()


def rows_or_error(server, sql):
    try:
        with connect(server) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    except Exception as e:  # noqa: BLE001 - the server may be killed under it
        return e


def test_ingest_errors_catalog_schema_empty_and_casts(server):
    data = pa.table({"k": pa.array([1], pa.int64())})
    with connect(server) as conn, conn.cursor() as cur:
        cur.adbc_ingest("dup", data, mode="create")
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("dup", data, mode="create")
        assert "already exists" in str(e.value)
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("missing", data, mode="append")
        assert "does not exist" in str(e.value)

        # Catalog and schema fields are honoured.
        cur.execute("CREATE HIVE ih")
        cur.execute("CREATE BOX ih.raw")
        # (ADBC keeps catalog/schema on the statement afterwards: use a cursor of its own.)
        with conn.cursor() as other:
            other.adbc_ingest("events", data, mode="create", catalog_name="ih", db_schema_name="raw")
        cur.execute("SELECT count(*) FROM ih.raw.events")
        assert cur.fetchone() == (1,)

        # One zero-row batch: creates the frame, writes nothing.
        empty_batch = pa.record_batch({"k": pa.array([], pa.int64()), "s": pa.array([], pa.string())})
        empty = pa.RecordBatchReader.from_batches(empty_batch.schema, [empty_batch])
        assert cur.adbc_ingest("empty", empty, mode="create") == 0
        cur.execute("SELECT count(*) FROM empty")
        assert cur.fetchone() == (0,)
        # A table without batches: the driver sends no message at all, so not even the target's
        # name reaches the server. The error says what to send instead.
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("no_batches", pa.table({"k": pa.array([], pa.int64())}), mode="create")
        assert "INVALID_ARGUMENT" in str(e.value) or "InvalidArgument" in str(e.value), str(e.value)
        assert "a RecordBatch of 0 rows" in str(e.value), str(e.value)

        cur.adbc_ingest("typed", pa.table({"k": pa.array([1], pa.int64())}), mode="create")
        cur.adbc_ingest("typed", pa.table({"k": pa.array([2], pa.int32())}), mode="append")
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.adbc_ingest("typed", pa.table({"k": pa.array(["nope"])}), mode="append")
        assert "column k" in str(e.value)
        # A column the frame lacks: the target exists with another schema (ALREADY_EXISTS).
        for mode in ("append", "create_append"):
            with pytest.raises(adbc_driver_manager.Error) as e:
                cur.adbc_ingest("typed", pa.table({"k": [3], "extra": [1]}), mode=mode)
            assert "ALREADY_EXISTS" in str(e.value) or "AlreadyExists" in str(e.value), str(e.value)
            assert "no column extra" in str(e.value)


def test_ingest_of_a_pandas_table_and_of_a_column_given_twice(server):
    """A table built by pandas carries schema metadata (b'pandas'): every ingest of one was
    refused, "target schema is not superset of current schema". An append naming a column
    twice kept one of them and dropped the other without a word."""
    with connect(server, autocommit=True) as conn, conn.cursor() as cur:
        t = pa.table({"v": [1, 2]}).replace_schema_metadata({"pandas": '{"index_columns": []}'})
        for mode in ("create", "append", "create_append", "replace"):
            cur.adbc_ingest("from_pandas", t, mode=mode)
        cur.execute("SELECT count(*) FROM from_pandas")
        assert cur.fetchone() == (2,)
        twice = pa.Table.from_arrays([pa.array([10, 20]), pa.array([11, 21])], names=["v", "v"])
        for mode in ("append", "create_append"):
            with pytest.raises(adbc_driver_manager.Error, match="column v is given twice"):
                cur.adbc_ingest("from_pandas", twice, mode=mode)
        cur.execute("SELECT v FROM from_pandas ORDER BY v")
        assert cur.fetchall() == [(1,), (2,)]


def test_ingest_appends_match_struct_fields_by_name(server):
    # Arrow's cast matched renamed fields by position and dropped extra ones: an append stored
    # {x, y} as {a, b}, and lost a field the frame lacks, without an error.
    ab = pa.struct([("a", pa.int64()), ("b", pa.int64())])
    with connect(server, autocommit=True) as conn, conn.cursor() as cur:
        cur.adbc_ingest("nested", pa.table({"id": [1], "s": pa.array([{"a": 1, "b": 2}], ab)}), mode="create")
        xy = pa.struct([("x", pa.int64()), ("y", pa.int64())])
        abc = pa.struct([("a", pa.int64()), ("b", pa.int64()), ("c", pa.string())])
        cur.execute("SET apiary.merge_schema = true")
        for bad, field in ((pa.array([{"x": 100, "y": 200}], xy), "s.x"), (pa.array([{"a": 3, "b": 4, "c": "kept?"}], abc), "s.c")):
            for mode in ("append", "create_append"):
                with pytest.raises(adbc_driver_manager.Error) as e:
                    cur.adbc_ingest("nested", pa.table({"id": [2], "s": bad}), mode=mode)
                assert "ALREADY_EXISTS" in str(e.value) or "AlreadyExists" in str(e.value), str(e.value)
                assert f"no field {field}" in str(e.value), str(e.value)
        # Fields in another order are matched by name; a nullable one left out is NULL.
        ba = pa.struct([("b", pa.int64()), ("a", pa.int64())])
        cur.adbc_ingest("nested", pa.table({"id": [3], "s": pa.array([{"b": 6, "a": 5}], ba)}), mode="append")
        b = pa.struct([("b", pa.int64())])
        cur.adbc_ingest("nested", pa.table({"id": [4], "s": pa.array([{"b": 8}], b)}), mode="append")
        cur.execute("SELECT id, s FROM nested ORDER BY id")
        assert cur.fetchall() == [(1, {"a": 1, "b": 2}), (3, {"a": 5, "b": 6}), (4, {"a": None, "b": 8})]
        # Maps: Arrow's builder names the entries keys/values, Delta key/value; both append.
        m = pa.map_(pa.string(), pa.int64())
        cur.adbc_ingest("mapped", pa.table({"m": pa.array([[("a", 1)]], m)}), mode="create")
        keys_values = pa.map_(pa.field("keys", pa.string(), nullable=False), pa.field("values", pa.int64()))
        cur.adbc_ingest("mapped", pa.table({"m": pa.array([[("b", 2)]], keys_values)}), mode="append")
        cur.execute("SELECT m['a'], m['b'] FROM mapped ORDER BY 1 NULLS LAST")
        assert cur.fetchall() == [(1, None), (None, 2)]


def test_ingest_messages_larger_than_16_mib(server):
    # The client caps what it sends at 16 MiB unless told otherwise; the server takes more.
    kwargs = {adbc_driver_flightsql.DatabaseOptions.WITH_MAX_MSG_SIZE.value: str(256 * 1024 * 1024)}
    n = 600_000
    big = pa.table({"k": pa.array(range(n), pa.int64()), "pad": pa.array(["x" * 40] * n)}).combine_chunks()
    assert big.nbytes > 16 * 1024 * 1024 and big.column("k").num_chunks == 1
    with connect(server, db_kwargs=kwargs) as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("big", big, mode="create") == n
        cur.execute("SELECT count(*), sum(k) FROM big")
        assert cur.fetchone() == (n, n * (n - 1) // 2)


def test_errors_carry_codes(server):
    with connect(server) as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.ProgrammingError) as e:
            cur.execute("SELEC 1")
        assert "INVALID_ARGUMENT" in str(e.value) or "InvalidArgument" in str(e.value)
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("SELECT * FROM nope")
        assert "NOT_FOUND" in str(e.value) or "NotFound" in str(e.value)
        with pytest.raises(adbc_driver_manager.NotSupportedError):
            cur.execute("ALTER TABLE nope RENAME TO x")
        with pytest.raises(adbc_driver_manager.Error, match="NOT_FOUND.*nope does not exist"):
            cur.execute("DELETE FROM nope")


def test_time_functions_are_simplified_once_per_statement(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT now() > TIMESTAMP '2020-01-01 00:00:00' AS a, current_date > DATE '2020-01-01' AS b")
        assert cur.fetchone() == (True, True)
        cur.execute("CREATE TABLE ev AS SELECT current_date - INTERVAL '1 day' AS d")
        cur.execute("SELECT count(*) FROM ev WHERE d > current_date - INTERVAL '30 days'")
        assert cur.fetchone() == (1,)
        # One instant per statement: two calls of now() agree.
        cur.execute("SELECT now() = now() AS same")
        assert cur.fetchone() == (True,)


def test_clock_functions_answer_values_python_can_hold(server):
    """`SELECT now()` failed in fetchall without pandas: DataFusion's clock answers nanoseconds,
    which a `datetime` cannot hold. They answer microseconds, as in PostgreSQL."""
    sql = "SELECT now() AS a, current_timestamp AS b, current_time AS c, current_date AS d"
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute(sql)
        a, b, c, d = cur.fetchone()
        assert a == b and isinstance(a, dt.datetime) and isinstance(c, dt.time)
        assert a.date() == d
        cur.execute(sql)
        types = [f.type for f in cur.fetch_arrow_table().schema]
        assert types[:3] == [pa.timestamp("us"), pa.timestamp("us"), pa.time64("us")]


def test_a_timestamp_written_to_the_minute_is_read_as_postgresql_reads_it(server):
    """`ts < '2024-06-01 08:00'` failed ("error parsing time"), literal or bound: Arrow wants
    the seconds and two-digit parts, PostgreSQL and DuckDB do not."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE hours AS SELECT CAST(to_timestamp(1717200000 + value * 3600) AS TIMESTAMP) AS ts FROM generate_series(0, 23)")
        cur.execute("SELECT count(*) FROM hours WHERE ts < '2024-06-01 08:00'")
        assert cur.fetchone() == (8,)
        for bound in ["2024-06-01 08:00", "2024-6-1 8:00", "2024-06-01 08:00:00"]:
            cur.execute("SELECT count(*) FROM hours WHERE ts < ?", parameters=(bound,))
            assert cur.fetchone() == (8,), bound
        cur.execute("SELECT TIMESTAMP '2024-06-01 08:30' AS t")
        assert cur.fetchone() == (dt.datetime(2024, 6, 1, 8, 30),)
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="INVALID_ARGUMENT.*25:00'"):
            cur.execute("SELECT count(*) FROM hours WHERE ts < '2024-06-01 25:00'")


def test_a_set_comparison_over_the_table_it_filters_answers_right(server):
    """`WHERE id = ANY (SELECT id FROM s WHERE id < 3)` over `s` answered every row, and `> ANY`
    none, with no error (DataFusion 55, apache/datafusion#25258)."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE s AS SELECT value AS id FROM generate_series(1, 20)")
        cur.execute("SELECT id FROM s WHERE id = ANY (SELECT id FROM s WHERE id < 3) ORDER BY id")
        assert cur.fetchall() == [(1,), (2,)]
        cur.execute("SELECT count(*) FROM s WHERE id > ANY (SELECT id FROM s WHERE id <= 3)")
        assert cur.fetchone() == (19,)
        cur.execute("SELECT id FROM s WHERE id > ALL (SELECT id FROM s WHERE id <= 18) ORDER BY id")
        assert cur.fetchall() == [(19,), (20,)]
        with pytest.raises(adbc_driver_manager.NotSupportedError, match="outside a WHERE"):
            cur.execute("SELECT 3 = ANY (SELECT id FROM s)")


def test_an_interval_times_a_number(server):
    """`now() - 7 * INTERVAL '1 day'` failed while planning: DataFusion has no interval-number
    arithmetic. It is PostgreSQL's, a fraction carrying into days and time."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE steps AS SELECT value AS n FROM generate_series(1, 3)")
        cur.execute("SELECT TIMESTAMP '2024-01-01 00:00:00' - n * INTERVAL '1 day' AS t FROM steps ORDER BY n")
        assert [r[0] for r in cur.fetchall()] == [dt.datetime(2023, 12, 31 - i) for i in range(3)]
        cur.execute("SELECT now() - 7 * INTERVAL '1 day' < now() AS a, TIMESTAMP '2024-01-01 00:00:00' + INTERVAL '3 days' / 2 AS b")
        assert cur.fetchone() == (True, dt.datetime(2024, 1, 2, 12))
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="INVALID_ARGUMENT.*interval out of range"):
            cur.execute("SELECT INTERVAL '1 day' * 3000000000 AS x")
            cur.fetchall()


def test_similar_to_matches_the_whole_string_as_postgresql_does(server):
    """`'abc' SIMILAR TO 'b'` was true and `'abc' SIMILAR TO 'a%'` false: DataFusion 55 ran the
    pattern as an unanchored regular expression. A bound pattern is translated as a literal."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT 'abc' SIMILAR TO 'b', 'abc' SIMILAR TO 'a%', 'abc' SIMILAR TO 'a.c', 'a_c' SIMILAR TO 'a#_c' ESCAPE '#'")
        assert cur.fetchone() == (False, True, False, True)
        cur.execute("SELECT ? SIMILAR TO 'a%' AS a, 'apple' SIMILAR TO ? AS b", parameters=("apple", "%(pl|x)_"))
        assert cur.fetchone() == (True, True)


def test_what_datafusion_answers_wrong_is_not_implemented(server):
    """EXCEPT ALL answered one row of three copies less one, and a FULL JOIN USING answered NULL
    for the key of a row only the right side has (DataFusion 55): refused, not answered wrong."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE l AS SELECT * FROM (VALUES (1), (1), (1), (2)) AS t(k)")
        cur.execute("CREATE TABLE r AS SELECT * FROM (VALUES (1), (4)) AS t(k)")
        for sql, what in [
            ("SELECT k FROM l EXCEPT ALL SELECT k FROM r", "EXCEPT ALL"),
            ("SELECT k FROM l INTERSECT ALL SELECT k FROM r", "INTERSECT ALL"),
            ("SELECT k FROM l FULL JOIN r USING (k)", "FULL JOIN"),
        ]:
            with pytest.raises(adbc_driver_manager.NotSupportedError, match=what):
                cur.execute(sql)
                cur.fetchall()
        cur.execute("SELECT COALESCE(l.k, r.k) AS k FROM l FULL JOIN r ON l.k = r.k ORDER BY k")
        assert cur.fetchall() == [(1,), (1,), (1,), (2,), (4,)]


def test_to_char_and_to_date_read_postgresql_templates(server):
    """`to_char(ts, 'YYYY-MM-DD')` answered 'YYYY-MM-DD' for every row and `to_date(s, 'DD/MM/YYYY')`
    failed (DataFusion 55 read every format as chrono's). Bound templates are read the same way; a
    format with a % is still chrono's; a field chrono cannot parse is an InvalidArgument (ProgrammingError)."""
    import datetime

    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_char(TIMESTAMP '2024-03-05 20:07:09', 'FMDay, FMDDth Mon YYYY HH12:MI AM'), to_char(DATE '2024-03-05', '%d.%m.%Y')")
        assert cur.fetchone() == ("Tuesday, 5th Mar 2024 08:07 PM", "05.03.2024")
        cur.execute("SELECT to_char(CAST(? AS DATE), ?) AS a, to_date(?, ?) AS b", parameters=("2024-12-25", "DD/MM/YYYY", "25/12/2024", "DD/MM/YYYY"))
        assert cur.fetchone() == ("25/12/2024", datetime.date(2024, 12, 25))
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="cannot read the template field J"):
            cur.execute("SELECT to_date('2460375', 'J')")
            cur.fetchall()


def test_age_and_interval_comparisons_are_postgresql_s(server):
    """age() was an unknown function; it answers PostgreSQL's years, months and days, as an
    interval a client reads as months, days and nanoseconds. Intervals compare by length."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT age(TIMESTAMP '2024-03-01 12:00:00', CAST(? AS TIMESTAMP))", parameters=("2024-01-31 00:00:00",))
        v = cur.fetchone()[0]
        assert (v.months, v.days, v.nanoseconds) == (1, 1, 12 * 3600 * 10**9)
        # Intervals compare by length, as PostgreSQL compares them (Arrow went field by field).
        cur.execute("SELECT INTERVAL '1 day' = INTERVAL '24 hours', TIMESTAMP '2024-01-03 00:00:00' - CAST(? AS TIMESTAMP) > INTERVAL '1 day'", parameters=("2024-01-01 00:00:00",))
        assert cur.fetchone() == (True, True)
        cur.execute("SELECT extract(epoch FROM TIMESTAMP '2024-01-02 00:00:00.5' - TIMESTAMP '2024-01-01 00:00:00'), extract(second FROM TIMESTAMP '2024-01-01 10:00:05.25')")
        assert cur.fetchone() == (86400.5, 5.25)



def test_decimal_division_text_casts_and_postgres_functions(server):
    """Decimal division kept 4 digits (1 / 3.0 was 0.3333); a timestamp cast to text had an ISO
    `T` and a float a trailing `.0`; mode, percentile_disc, pg_typeof, div, format were unknown
    functions. Bound values go through the same rules."""
    import decimal

    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 / 3.0, CAST(? AS DECIMAL(10,2)) / 3", parameters=("2.00",))
        assert cur.fetchone() == (decimal.Decimal("0.333333333333"), decimal.Decimal("0.666666666666"))
        # A bound value's type is left to the rules that type it (it was cast to the divisor's
        # DECIMAL(2,1) and overflowed).
        cur.execute("SELECT ? / 3.0, ? / 2.5 > 10", parameters=(100, 100))
        assert cur.fetchone() == (pytest.approx(33.333333333333336), True)
        cur.execute("SELECT CAST(CAST(? AS TIMESTAMP) AS VARCHAR), CAST(? AS DOUBLE) || ''", parameters=("2024-01-05 10:00:00.5", "2"))
        assert cur.fetchone() == ("2024-01-05 10:00:00.5", "2")
        cur.execute(
            "SELECT mode() WITHIN GROUP (ORDER BY x), percentile_disc(0.5) WITHIN GROUP (ORDER BY x), "
            "pg_typeof(sum(x)), div(max(x), 2) FROM (VALUES (1), (2), (2), (5)) AS t(x)"
        )
        assert cur.fetchone() == (2, 2, "bigint", 2)
        cur.execute("SELECT format('%s = %L', ?, ?)", parameters=("name", "it's"))
        assert cur.fetchone() == ("name = 'it''s'",)
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="not between 0 and 1"):
            cur.execute("SELECT percentile_disc(2) WITHIN GROUP (ORDER BY x) FROM (VALUES (1)) AS t(x)")
            cur.fetchall()


def test_subquery_and_row_nulls_number_templates_and_array_text(server):
    """A NULL scalar subquery read as NOT NULL folded `IS NULL` to false; `? NOT IN (subquery)`
    forgot the subquery's NULLs; `(a, b) = (?, 1)` with a NULL field was false, not NULL;
    to_char of a number failed to plan; an array cast to text was Arrow's `[1, 2, ]`."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE sqn_t (a INT, b INT)")
        cur.execute("INSERT INTO sqn_t VALUES (1, 1), (1, 2), (2, 1), (3, NULL)")
        cur.execute(
            "SELECT a, b FROM sqn_t WHERE (SELECT count(*) FROM sqn_t s WHERE s.a = sqn_t.a "
            "HAVING count(*) > ?) IS NULL ORDER BY a, b",
            parameters=(1,),
        )
        assert cur.fetchall() == [(2, 1), (3, None)]
        cur.execute("SELECT a FROM sqn_t WHERE ? NOT IN (SELECT b FROM sqn_t)", parameters=(5,))
        assert cur.fetchall() == []
        cur.execute(
            "SELECT a FROM sqn_t WHERE a NOT IN (SELECT b FROM sqn_t s WHERE s.a = sqn_t.a) ORDER BY a"
        )
        assert cur.fetchall() == [(2,)]
        cur.execute("SELECT a, (a, b) = (?, 1) FROM sqn_t ORDER BY a, b", parameters=(3,))
        assert cur.fetchall() == [(1, False), (1, False), (2, False), (3, None)]
        cur.execute("SELECT to_char(CAST(? AS DECIMAL(10,3)), 'FM9,999.00'), to_char(-5, '999PR')", parameters=("-1234.567",))
        assert cur.fetchone() == ("-1,234.57", "  <5>")
        cur.execute("SELECT CAST(array_agg(b ORDER BY b) AS VARCHAR) FROM sqn_t")
        assert cur.fetchone() == ("{1,1,2,NULL}",)
        cur.execute("DROP TABLE sqn_t")


def test_json_operators_and_functions_over_text(server):
    """`->`, `->>`, `#>>` and the json_* functions were Unsupported / Invalid function; JSON is
    held as text and read as PostgreSQL's json type reads it, bound keys and indexes too."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE js_t (id INT, doc JSONB)")
        cur.execute("INSERT INTO js_t VALUES (?, ?)", parameters=(1, '{"a": {"b": [1, 2]}, "s": "x\\ny"}'))
        cur.execute("INSERT INTO js_t VALUES (?, ?)", parameters=(2, '[true, null]'))
        cur.execute("SELECT doc ->> ?, doc -> 'a' -> 'b' ->> ?, doc #>> '{a,b,0}', json_typeof(doc) FROM js_t ORDER BY id",
                    parameters=("s", 1))
        assert cur.fetchall() == [("x\ny", "2", "1", "object"), (None, None, None, "array")]
        cur.execute("SELECT id FROM js_t WHERE doc -> 'a' ->> 'b' = ?", parameters=("[1, 2]",))
        assert cur.fetchall() == [(1,)]
        with pytest.raises(adbc_driver_manager.Error, match="invalid input syntax for type json"):
            cur.execute("SELECT ?::json -> 'a'", parameters=("{not json",))
            cur.fetchall()


def test_declared_string_lengths_are_kept_checked_and_shown(server, tmp_path):
    """VARCHAR(n) and CHAR(n) lost their length: any string was written. Now the frame keeps it
    (Spark's Delta metadata key), refuses a longer bound value as PostgreSQL does, cuts excess
    spaces, and shows the type to catalog readers (GetObjects, DESCRIBE)."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE len_t (id INT, name VARCHAR(5), code CHARACTER(2))")
        cur.execute("INSERT INTO len_t VALUES (?, ?, ?)", parameters=(1, "ann", "ab"))
        with pytest.raises(adbc_driver_manager.ProgrammingError,
                           match=r"INVALID_ARGUMENT.*value too long for type character varying\(5\)"):
            cur.execute("INSERT INTO len_t VALUES (?, ?, ?)", parameters=(2, "annabel", "ab"))
        cur.execute("INSERT INTO len_t VALUES (?, ?, ?)", parameters=(3, "bob  ", "c    "))
        cur.execute("SELECT id, name, code FROM len_t ORDER BY id")
        assert cur.fetchall() == [(1, "ann", "ab"), (3, "bob  ", "c ")]
        cur.execute("SELECT CAST(? AS VARCHAR(3))", parameters=("abcdef",))
        assert cur.fetchone() == ("abc",)
        cur.execute("DESCRIBE len_t")
        assert cur.fetchall()[:3] == [("id", "INT", ""), ("name", "VARCHAR(5)", ""), ("code", "CHAR(2)", "")]
        objects = conn.adbc_get_objects(depth="all", table_name_filter="len_t").read_all().to_pylist()
        table = objects[0]["catalog_db_schemas"][0]["db_schema_tables"][0]
        cols = {c["column_name"]: c for c in table["table_columns"]}
        assert cols["name"]["xdbc_type_name"] == "VARCHAR(5)"
        assert cols["code"]["xdbc_type_name"] == "CHAR(2)"
    # Other Delta readers (Spark) read the length from the log.
    logs = list((tmp_path / "root").glob("**/len_t/_delta_log/00000000000000000000.json"))
    assert len(logs) == 1, logs
    text = logs[0].read_text()
    assert '\\"__CHAR_VARCHAR_TYPE_STRING\\":\\"varchar(5)\\"' in text, text
    assert '\\"__CHAR_VARCHAR_TYPE_STRING\\":\\"char(2)\\"' in text, text


@pytest.mark.parametrize(
    "expr",
    [
        "CASE WHEN v > 1 THEN [1,2,3] ELSE arrow_cast([v], 'LargeList(Int64)') END",
        "arrow_cast([v], 'LargeList(Int64)')",
        "arrow_cast([v, v], 'FixedSizeList(2, Int64)')",
        "coalesce(arrow_cast(CAST(v AS VARCHAR), 'Dictionary(Int32, Utf8)'), 'b')",
        "arrow_cast(CAST(v AS VARCHAR), 'Dictionary(Int32, Utf8)')",
        "named_struct('a', v, 'b', [v])",
        "arrow_cast(CAST(v AS VARCHAR), 'Utf8View')",
    ],
)
def test_flight_info_and_stream_agree_on_every_result_schema(server, expr):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {expr} AS c FROM (VALUES (1), (2)) AS t(v)")
        table = cur.fetch_arrow_table()
        assert table.num_rows == 2
        assert not pa.types.is_dictionary(table.schema.field("c").type)
        assert not pa.types.is_large_list(table.schema.field("c").type)


def test_insert_run_as_a_query_answers_a_count_row(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE counted (k BIGINT, v VARCHAR)")
        cur.execute("INSERT INTO counted VALUES (1, 'a'), (2, 'b')")
        assert cur.rowcount == 2
        result = cur.fetch_arrow_table()
        assert result.schema == pa.schema([pa.field("count", pa.uint64(), nullable=False)])
        assert result.to_pylist() == [{"count": 2}]
        # With a parameter (a prepared statement executed as a query).
        cur.execute("INSERT INTO counted VALUES (?, 'c')", parameters=(3,))
        assert cur.fetchall() == [(1,)]
        # DDL answers no rows; the table holds what the counts said.
        cur.execute("SELECT count(*) FROM counted")
        assert cur.fetchall() == [(3,)]
        # The prepared form still announces no result set (the JDBC driver picks update then).
        stmt = cur.adbc_statement
        stmt.set_sql_query("INSERT INTO counted VALUES (4, 'd')")
        stmt.prepare()
        assert pa.Schema._import_from_c(stmt.execute_schema().address) == pa.schema([])


def test_rows_affected_for_insert_ctas_and_ingest(server):
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE src AS SELECT value AS v FROM generate_series(1, 5)")
        assert cur.rowcount == 5
        cur.execute("CREATE TABLE dst (v BIGINT)")
        cur.execute("INSERT INTO dst SELECT v FROM src WHERE v > 2")
        assert cur.rowcount == 3
        assert cur.adbc_ingest("dst", pa.table({"v": [10, 11]}), mode="append") == 2
    # Through CommandStatementUpdate (ADBC execute_update) too.
    with connect(server) as conn, conn.cursor() as cur:
        stmt = cur.adbc_statement
        stmt.set_sql_query("INSERT INTO dst VALUES (20), (21), (22), (23)")
        assert stmt.execute_update() == 4
        stmt.set_sql_query("CREATE TABLE dst2 AS SELECT * FROM dst")
        assert stmt.execute_update() == 9
        # Row-level changes answer their count the same way (DoPutUpdateResult).
        stmt.set_sql_query("DELETE FROM dst2 WHERE v >= 20")
        assert stmt.execute_update() == 4
        stmt.set_sql_query("UPDATE dst2 SET v = v + 100 WHERE v < 5")
        assert stmt.execute_update() == 2
        # dst2 is now 103, 104, 5, 10, 11: src's 1-4 are not matched.
        stmt.set_sql_query("MERGE INTO dst2 USING src ON dst2.v = src.v WHEN NOT MATCHED THEN INSERT (v) VALUES (src.v)")
        assert stmt.execute_update() == 4


def test_a_prepared_statement_run_again_after_its_table_was_replaced_answers_the_new_table(server):
    """ADBC runs the same SQL on a cursor again through the handle it prepared first: the
    answer is the table as it is now, not its values under the old columns and types."""
    with connect(server) as conn:
        a, b = conn.cursor(), conn.cursor()
        b.execute("CREATE TABLE swapped (price DOUBLE, qty BIGINT)")
        b.execute("INSERT INTO swapped VALUES (9.99, 3)")
        a.execute("SELECT * FROM swapped")
        assert a.fetch_arrow_table().to_pylist() == [{"price": 9.99, "qty": 3}]
        b.execute("CREATE OR REPLACE TABLE swapped (qty BIGINT, price DOUBLE)")
        b.execute("INSERT INTO swapped VALUES (3, 9.99)")
        a.execute("SELECT * FROM swapped")
        assert a.fetch_arrow_table().to_pylist() == [{"qty": 3, "price": 9.99}]
        # A column that was NOT NULL and now holds a NULL (it failed INTERNAL).
        b.execute("CREATE TABLE loosened AS SELECT 1 AS a")
        a.execute("SELECT * FROM loosened")
        assert a.fetchall() == [(1,)]
        b.execute("CREATE OR REPLACE TABLE loosened (a BIGINT)")
        b.execute("INSERT INTO loosened VALUES (NULL)")
        a.execute("SELECT * FROM loosened")
        assert a.fetchall() == [(None,)]


def test_a_delete_whose_predicate_is_never_true_deletes_nothing(server):
    """`a = ?` bound to NULL, or `WHERE false`, is folded away by the optimizer: the frame was
    then handed no predicate, and every row was deleted."""
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (a INT)")
        cur.execute("INSERT INTO kept VALUES (1), (2), (3)")
        cur.execute("DELETE FROM kept WHERE a = ?", parameters=(None,))
        assert cur.rowcount == 0
        cur.executemany("DELETE FROM kept WHERE a = ?", [(None,), (None,)])
        cur.execute("DELETE FROM kept WHERE false")
        assert cur.rowcount == 0
        cur.execute("SELECT count(*) FROM kept")
        assert cur.fetchall() == [(3,)]
        cur.execute("DELETE FROM kept WHERE a = ?", parameters=(2,))
        assert cur.rowcount == 1
        cur.execute("SELECT a FROM kept ORDER BY a")
        assert cur.fetchall() == [(1,), (3,)]
