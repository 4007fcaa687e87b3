"""Every Arrow type round-trips through a frame, or is refused clearly when the frame is created.

Ingested through the ADBC driver, read back through ADBC and through pyarrow.flight; the
README's type table is this test's `CASES` list.
"""

import datetime
import decimal

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from test_pyarrow_flight import statement_query

N = 4


def connect(server):
    return flight_sql.connect(server.uri)


def ts_values():
    base = datetime.datetime(2026, 12, 1, 10, 30, 15, 123456)
    return [base, None, datetime.datetime(1970, 1, 1), datetime.datetime(2262, 4, 11)]


# (name, array of the incoming type, type served back). None as the served type: the incoming one.
CASES = [
    ("bool", pa.array([True, None, False, True]), None),
    ("int8", pa.array([-128, None, 0, 127], pa.int8()), None),
    ("int16", pa.array([-1, None, 0, 32767], pa.int16()), None),
    ("int32", pa.array([-1, None, 0, 2**31 - 1], pa.int32()), None),
    ("int64", pa.array([-(2**63), None, 0, 2**63 - 1], pa.int64()), None),
    ("uint8", pa.array([0, None, 1, 255], pa.uint8()), None),
    ("uint16", pa.array([0, None, 1, 65535], pa.uint16()), None),
    ("uint32", pa.array([0, None, 1, 2**32 - 1], pa.uint32()), None),
    ("uint64", pa.array([0, None, 1, 2**64 - 1], pa.uint64()), None),
    ("float16", pa.array([1.5, None, -2.0, 0.0], pa.float16()), None),
    ("float32", pa.array([1.5, None, -2.0, float("inf")], pa.float32()), None),
    ("float64", pa.array([1.5, None, -2.0, float("-inf")], pa.float64()), None),
    ("decimal32", pa.array([decimal.Decimal("1.25"), None, decimal.Decimal("-3.50"), 0], pa.decimal32(5, 2)), None),
    ("decimal64", pa.array([decimal.Decimal("1.25"), None, decimal.Decimal("-3.50"), 0], pa.decimal64(12, 2)), None),
    ("decimal128", pa.array([decimal.Decimal("1" * 38), None, 0, 1], pa.decimal128(38, 0)), None),
    ("decimal256", pa.array([decimal.Decimal("12.345"), None, 0, 1], pa.decimal256(20, 3)), None),
    ("decimal_neg_scale", pa.array([decimal.Decimal("1.2E+4"), None, 0, decimal.Decimal("-9.9E+6")], pa.decimal128(5, -2)), pa.decimal128(7, 0)),
    ("utf8", pa.array(["a", None, "", "ünï"]), None),
    ("large_utf8", pa.array(["a", None, "", "x" * 100], pa.large_string()), None),
    ("utf8_view", pa.array(["a", None, "", "y" * 100], pa.string_view()), pa.string()),
    ("binary", pa.array([b"a", None, b"", b"\x00\xff"]), None),
    ("large_binary", pa.array([b"a", None, b"", b"\x00"], pa.large_binary()), None),
    ("binary_view", pa.array([b"a", None, b"", b"z" * 40], pa.binary_view()), pa.binary()),
    ("fixed_binary", pa.array([b"abcd", None, b"\x00\x00\x00\x00", b"wxyz"], pa.binary(4)), None),
    ("date32", pa.array([datetime.date(2026, 12, 1), None, datetime.date(1, 1, 1), datetime.date(9999, 12, 31)]), None),
    ("date64", pa.array([datetime.date(2026, 12, 1), None, datetime.date(1970, 1, 1), datetime.date(2000, 2, 29)], pa.date64()), None),
    ("ts_s", pa.array([datetime.datetime(1, 1, 1), None, datetime.datetime(9999, 12, 31, 23, 59, 59), datetime.datetime(2026, 1, 1)], pa.timestamp("s")), None),
    ("ts_ms", pa.array(ts_values(), pa.timestamp("ms")), None),
    ("ts_us", pa.array(ts_values(), pa.timestamp("us")), None),
    ("ts_ns", pa.array(ts_values()[:3] + [datetime.datetime(2262, 4, 11)], pa.timestamp("ns")), None),
    ("ts_s_tokyo", pa.array(ts_values(), pa.timestamp("s", tz="Asia/Tokyo")), None),
    ("ts_ms_utc", pa.array(ts_values(), pa.timestamp("ms", tz="UTC")), None),
    ("ts_us_offset", pa.array(ts_values(), pa.timestamp("us", tz="+05:30")), None),
    ("ts_ns_ny", pa.array(ts_values(), pa.timestamp("ns", tz="America/New_York")), None),
    ("time32_s", pa.array([0, None, 86399, 3600], pa.time32("s")), None),
    ("time32_ms", pa.array([0, None, 86399999, 1], pa.time32("ms")), None),
    ("time64_us", pa.array([0, None, 86399999999, 1], pa.time64("us")), None),
    ("time64_ns", pa.array([0, None, 86399999999999, 1], pa.time64("ns")), None),
    ("duration_s", pa.array([0, None, -5, 10**9], pa.duration("s")), None),
    ("duration_ns", pa.array([0, None, -5, 10**18], pa.duration("ns")), None),
    ("list", pa.array([[1, 2], None, [], [None, 3]], pa.list_(pa.int64())), None),
    ("large_list", pa.array([["a"], None, [], ["b", None]], pa.large_list(pa.string())), pa.list_(pa.string())),
    ("fixed_list", pa.array([[1, 2, 3], None, [4, 5, 6], [7, None, 9]], pa.list_(pa.int32(), 3)), None),
    ("list_of_ts", pa.array([[datetime.datetime(2026, 1, 1)], None, [], [None]], pa.list_(pa.timestamp("ms"))), None),
    (
        "struct",
        pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": "y"}, {"a": 3, "b": None}], pa.struct([("a", pa.int32()), ("b", pa.string())])),
        None,
    ),
    ("map", pa.array([[("k", 1)], None, [], [("a", 2), ("b", None)]], pa.map_(pa.string(), pa.int64())), None),
    ("dictionary", pa.array(["red", None, "green", "red"]).dictionary_encode(), pa.string()),
    ("run_end_encoded", pa.RunEndEncodedArray.from_arrays([2, 3, 4], pa.array(["a", None, "b"])), pa.string()),
]


def served(case):
    _, array, served_type = case
    return served_type or array.type


def expected(case):
    name, array, _ = case
    target = served(case)
    if pa.types.is_dictionary(array.type) or pa.types.is_run_end_encoded(array.type):
        array = array.cast(target) if not pa.types.is_run_end_encoded(array.type) else pa.array(array.to_pylist(), target)
    elif array.type != target:
        array = array.cast(target)
    return array


def ingest_all(server):
    table = pa.table({name: array for name, array, _ in CASES})
    with connect(server) as conn, conn.cursor() as cur:
        cur.adbc_ingest("every_type", table, mode="create")
        conn.commit()


def check(result: pa.Table):
    problems = []
    for case in CASES:
        name = case[0]
        got = result.column(name).combine_chunks()
        want = expected(case)
        if got.type != want.type:
            problems.append(f"{name}: served as {got.type}, wanted {want.type}")
        elif not got.equals(want):
            problems.append(f"{name}: values {got.to_pylist()} != {want.to_pylist()}")
    assert not problems, "\n".join(problems)


def test_every_type_round_trips_through_adbc(server):
    ingest_all(server)
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM every_type ORDER BY int16 NULLS FIRST")
        result = cur.fetch_arrow_table()
    # Row order: the NULL row first, then by int16 (-1, 0, 32767); rebuild the same order.
    order = pa.array([1, 0, 2, 3])
    check_rows = pa.table({c[0]: expected(c) for c in CASES}).take(order)
    assert result.num_rows == N
    for name in result.column_names:
        assert result.column(name).type == check_rows.column(name).type, name
    check(result.take(pa.array([1, 0, 2, 3])))


def test_every_type_round_trips_through_pyarrow_flight(server):
    ingest_all(server)
    client = flight.FlightClient(server.uri)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query("SELECT * FROM every_type ORDER BY int16 NULLS FIRST")))
    tables = [client.do_get(ep.ticket).read_all() for ep in info.endpoints]
    result = pa.concat_tables(tables)
    assert info.schema == result.schema
    check(result.take(pa.array([1, 0, 2, 3])))


def test_described_and_refused_types(server):
    ingest_all(server)
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute("DESCRIBE every_type")
        described = {r[0]: r[1] for r in cur.fetchall()}
        assert described["ts_ms"] == "TIMESTAMP(3)"
        assert described["ts_ns_ny"] == "TIMESTAMP(9) WITH TIME ZONE"
        assert described["time64_us"] == "TIME"
        assert described["uint64"] == "BIGINT UNSIGNED"
        for bad, why in [
            (pa.array([None, None], pa.null()), "no type"),
            (pa.array([pa.scalar((1, 2, 3), pa.month_day_nano_interval())] * 2), "interval"),
            (pa.array([decimal.Decimal(1)] * 2, pa.decimal256(50, 0)), "at most 38 digits"),
            (pa.array([decimal.Decimal("1E+5")] * 2, pa.decimal128(36, -5)), "at most 38 digits"),
        ]:
            with pytest.raises(adbc_driver_manager.Error) as e:
                cur.adbc_ingest("refused", pa.table({"c": bad}), mode="create")
            assert why in str(e.value), str(e.value)
            assert "INVALID_ARGUMENT" in str(e.value) or "InvalidArgument" in str(e.value) or "INVALID" in str(e.value).upper(), str(e.value)


def test_timestamp_and_time_ddl_take_every_precision(server):
    cols = ", ".join(f"t{p} TIMESTAMP({p})" for p in range(10))
    with connect(server) as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE ddl_types ({cols}, plain TIMESTAMP, zoned TIMESTAMP(3) WITH TIME ZONE, "
            "tm TIME, tm0 TIME(0), tm9 TIME(9))"
        )
        lit = "'2026-12-01 10:30:15.123456789'"
        values = ", ".join([lit] * 10)
        cur.execute(
            f"INSERT INTO ddl_types VALUES ({values}, TIMESTAMP '9999-12-31 23:59:59', "
            "'2026-12-01T10:30:15.5+09:00', '10:30:15.25', '10:30:15', '10:30:15.123456789')"
        )
        cur.execute("INSERT INTO ddl_types (plain) VALUES (TIMESTAMP '0001-01-01 00:00:00')")
        cur.execute("SELECT * FROM ddl_types ORDER BY plain DESC")
        t = cur.fetch_arrow_table()
    units = {0: "s", 1: "ms", 2: "ms", 3: "ms", 4: "us", 5: "us", 6: "us", 7: "ns", 8: "ns", 9: "ns"}
    for p, unit in units.items():
        assert t.schema.field(f"t{p}").type == pa.timestamp(unit), (p, t.schema.field(f"t{p}").type)
    assert t.schema.field("plain").type == pa.timestamp("us")
    assert t.schema.field("zoned").type == pa.timestamp("ms", tz="+00:00")
    assert t.schema.field("tm").type == pa.time64("us")
    assert t.schema.field("tm0").type == pa.time32("s")
    assert t.schema.field("tm9").type == pa.time64("ns")
    rows = t.drop_columns(["t7", "t8", "t9", "tm9"]).to_pylist()
    assert rows[0]["plain"] == datetime.datetime(9999, 12, 31, 23, 59, 59)
    assert rows[1]["plain"] == datetime.datetime(1, 1, 1)
    assert rows[0]["t6"] == datetime.datetime(2026, 12, 1, 10, 30, 15, 123456)
    assert rows[0]["t3"] == datetime.datetime(2026, 12, 1, 10, 30, 15, 123000)
    # Delta keeps microseconds: nanosecond columns lose the digits below.
    assert t.column("t9")[0].value == 1796121015123456000
    assert rows[0]["zoned"] == datetime.datetime(2026, 12, 1, 1, 30, 15, 500000, tzinfo=datetime.timezone.utc)
    assert rows[0]["tm"] == datetime.time(10, 30, 15, 250000)


def test_a_negative_scale_decimal_is_served_as_stored_and_compares(server):
    """decimal(5, -2) is stored and served as decimal(7, 0): the same values, in a type every
    kernel takes (a comparison with a literal failed INTERNAL, a panic in DataFusion's planner)."""
    values = pa.array([decimal.Decimal("1.2E+4"), None, 0, decimal.Decimal("-9.9E+6")], pa.decimal128(5, -2))
    with connect(server) as conn, conn.cursor() as cur:
        cur.adbc_ingest("neg_scale", pa.table({"k": [1, 2, 3, 4], "v": values}), mode="create")
        counts = {}
        for where in ["v = 12000", "v > 0", "v < -1000", "v IS NULL", "CAST(v AS DOUBLE) = 12000"]:
            cur.execute(f"SELECT k FROM neg_scale WHERE {where} ORDER BY k")
            counts[where] = [r[0] for r in cur.fetchall()]
        assert counts == {
            "v = 12000": [1],
            "v > 0": [1],
            "v < -1000": [4],
            "v IS NULL": [2],
            "CAST(v AS DOUBLE) = 12000": [1],
        }
        cur.execute("SELECT v FROM neg_scale ORDER BY k")
        got = cur.fetch_arrow_table().column("v")
        assert got.type == pa.decimal128(7, 0)
        assert got.to_pylist() == [decimal.Decimal(12000), None, decimal.Decimal(0), decimal.Decimal(-9900000)]


def test_filters_on_a_served_type_still_prune_cells(server):
    """Statistics are in stored types; a filter on a column served as another type prunes
    through the same cast the scan applies."""
    with connect(server) as conn, conn.cursor() as cur:
        for day in (1, 20):
            t = pa.table(
                {
                    "ts": pa.array([datetime.datetime(2026, 1, day, h) for h in range(5)], pa.timestamp("ms", tz="Asia/Tokyo")),
                    "u": pa.array([day] * 5, pa.uint64()),
                }
            )
            cur.adbc_ingest("pruned", t, mode="create_append")
        for where in ["ts > TIMESTAMP '2026-01-10 00:00:00+00:00'", "u > 10"]:
            cur.execute(f"EXPLAIN ANALYZE SELECT count(*) FROM pruned WHERE {where}")
            plan = "\n".join(str(r[1]) for r in cur.fetchall())
            scan = [line for line in plan.splitlines() if "DataSourceExec" in line][0]
            assert scan.count(".parquet") == 1, scan
            cur.execute(f"SELECT count(*) FROM pruned WHERE {where}")
            assert cur.fetchone()[0] == 5
