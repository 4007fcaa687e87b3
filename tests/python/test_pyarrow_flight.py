"""Raw pyarrow.flight clients: hand-packed Flight SQL commands, Basic auth, large DoGets, schemas."""

import base64

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(num: int, data: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def statement_query(sql: str) -> bytes:
    """google.protobuf.Any{CommandStatementQuery{query}} — what pyarrow users pack by hand."""
    inner = _len_field(1, sql.encode())
    return _len_field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + _len_field(2, inner)


def statement_update(sql: str) -> bytes:
    inner = _len_field(1, sql.encode())
    return _len_field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementUpdate") + _len_field(2, inner)


def run(client, sql, options=None):
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql)), options)
    reader = client.do_get(info.endpoints[0].ticket, options)
    return info, reader


def update(client, sql, options=None):
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(statement_update(sql)), pa.schema([]), options)
    writer.done_writing()
    reader.read()
    writer.close()


def test_basic_auth_padded_and_unpadded(auth_server):
    client = flight.FlightClient(auth_server.uri)
    # pyarrow pads its base64.
    header = client.authenticate_basic_token("alice", "s3cret pass")
    assert header[0] == b"authorization" and header[1].startswith(b"Bearer ")
    opts = flight.FlightCallOptions(headers=[header])
    _, reader = run(client, "SELECT 1 AS one", opts)
    assert reader.read_all().column(0).to_pylist() == [1]
    # Unpadded Basic (what the ADBC Go driver sends) is accepted too.
    raw = base64.b64encode(b"alice:s3cret pass").rstrip(b"=")
    assert not raw.endswith(b"=") and len(b"alice:s3cret pass") % 3 != 0
    unpadded = flight.FlightCallOptions(headers=[(b"authorization", b"Basic " + raw)])
    _, reader = run(client, "SELECT 2 AS two", unpadded)
    assert reader.read_all().column(0).to_pylist() == [2]
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token("alice", "wrong")
    with pytest.raises(flight.FlightUnauthenticatedError):
        run(flight.FlightClient(auth_server.uri), "SELECT 1")


def test_doget_of_millions_of_rows(server):
    client = flight.FlightClient(server.uri)
    n = 5_000_000
    info, reader = run(client, f"SELECT value AS v, value * 2 AS w FROM generate_series(1, {n})")
    rows = 0
    total = 0
    batches = 0
    for chunk in reader:
        rows += chunk.data.num_rows
        total += pc.sum(chunk.data.column(0)).as_py()
        batches += 1
    assert rows == n
    assert total == n * (n + 1) // 2
    assert batches > 100


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT MAX(x) AS m FROM t",
        "SELECT COUNT(*) AS c FROM t",
        "SELECT MIN(s), MAX(x) FROM t",
        "SELECT x, s FROM t WHERE x > 1000",
        "SELECT * FROM t LIMIT 0",
    ],
)
def test_flight_info_schema_equals_stream_schema(server, sql):
    client = flight.FlightClient(server.uri)
    update(client, "CREATE TABLE IF NOT EXISTS t (x BIGINT NOT NULL, s VARCHAR)")
    update(client, "INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    info, reader = run(client, sql)
    table = reader.read_all()
    assert info.schema == table.schema
    assert [f.nullable for f in info.schema] == [f.nullable for f in table.schema]
    # GetSchema agrees too.
    schema = client.get_schema(flight.FlightDescriptor.for_command(statement_query(sql))).schema
    assert schema == info.schema


@pytest.mark.parametrize("sql", ["SELEC 1", "FOO BAR BAZ", "GRANT SELECT ON t TO bob"])
def test_get_schema_refuses_what_would_not_run(server, sql):
    client = flight.FlightClient(server.uri)
    # INVALID_ARGUMENT (UNIMPLEMENTED for GRANT), as GetFlightInfo answers the same text.
    with pytest.raises((pa.ArrowInvalid, pa.ArrowNotImplementedError)):
        client.get_schema(flight.FlightDescriptor.for_command(statement_query(sql)))
    with pytest.raises((pa.ArrowInvalid, pa.ArrowNotImplementedError)):
        client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql)))


def test_list_actions_and_unknown_ticket(server):
    client = flight.FlightClient(server.uri)
    names = {a.type for a in client.list_actions()}
    assert {"CreatePreparedStatement", "CancelFlightInfo", "SetSessionOptions"} <= names
    # Nothing that always answers UNIMPLEMENTED is offered.
    assert not names & {"BeginTransaction", "EndTransaction", "BeginSavepoint", "EndSavepoint",
                        "CreatePreparedSubstraitPlan"}
    # INVALID_ARGUMENT surfaces in pyarrow as ArrowInvalid.
    with pytest.raises(pa.ArrowInvalid):
        client.do_get(flight.Ticket(b"not a ticket")).read_all()


def test_hang_up_cancels_the_query(server):
    client = flight.FlightClient(server.uri)
    _, reader = run(client, "SELECT count(*) FROM generate_series(1, 30000000000) a WHERE a.value % 11 = 1")
    reader.cancel()
    client.close()
    assert server.wait_log('outcome="abandoned by the client"', 20), server.log


def test_a_runaway_join_leaves_threads_for_other_clients(tmp_path):
    """A cross join emits batches without polling its input; with every CPU thread of a
    two-bee node inside one, another client's statement once waited for the join to end."""
    import threading
    import time

    from conftest import ApiaryServer

    s = ApiaryServer(str(tmp_path / "root"), args=["--bees", "2"])
    try:
        client = flight.FlightClient(s.uri)
        _, reader = run(client, "SELECT count(DISTINCT a.value * 7 + b.value) "
                                "FROM generate_series(1, 100000000) a, generate_series(1, 100000000) b")
        time.sleep(1)  # the join now holds both CPU threads
        answers = []

        def probe():
            other = flight.FlightClient(s.uri)
            _, r = run(other, "SELECT 42 AS x")
            answers.append(r.read_all().column("x").to_pylist())
            other.close()

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join(60)
        assert answers == [[42]], "another client's statement waited for the cross join"
        reader.cancel()
        client.close()
    finally:
        s.stop()


def test_insert_as_a_query_streams_its_count_from_any_node_ticket(server):
    client = flight.FlightClient(server.uri)
    update(client, "CREATE TABLE ins (k BIGINT)")
    info, reader = run(client, "INSERT INTO ins VALUES (1), (2), (3)")
    assert info.total_records == 3
    table = reader.read_all()
    assert info.schema == table.schema == pa.schema([pa.field("count", pa.uint64(), nullable=False)])
    assert table.to_pylist() == [{"count": 3}]
    # The ticket carries the count: redeeming it again runs nothing twice.
    again = client.do_get(info.endpoints[0].ticket).read_all()
    assert again.to_pylist() == [{"count": 3}]
    _, reader = run(client, "SELECT count(*) AS n FROM ins")
    assert reader.read_all().to_pylist() == [{"n": 3}]


def test_a_ticket_redeemed_after_what_it_reads_changed_never_answers_other_rows(server):
    """A ticket pins each frame's version and incarnation: after DROP + CREATE the name holds
    another table whose version 1 is other rows (they came back cast, by position, into the
    old columns). A view redefined since the FlightInfo is refused too."""
    client = flight.FlightClient(server.uri)
    update(client, "CREATE TABLE replaced (price DOUBLE, qty BIGINT)")
    update(client, "INSERT INTO replaced VALUES (9.99, 3)")
    info, reader = run(client, "SELECT * FROM replaced")
    assert reader.read_all().to_pylist() == [{"price": 9.99, "qty": 3}]
    update(client, "DROP TABLE replaced")
    update(client, "CREATE TABLE replaced (qty BIGINT, price DOUBLE)")
    update(client, "INSERT INTO replaced VALUES (5, 2.5)")
    with pytest.raises(Exception, match="dropped and created again"):
        client.do_get(info.endpoints[0].ticket).read_all()

    update(client, "CREATE VIEW shown AS SELECT qty, price FROM replaced")
    info, reader = run(client, "SELECT * FROM shown")
    assert reader.read_all().to_pylist() == [{"qty": 5, "price": 2.5}]
    update(client, "CREATE OR REPLACE VIEW shown AS SELECT price, qty FROM replaced")
    with pytest.raises(Exception, match="no longer what GetFlightInfo announced"):
        client.do_get(info.endpoints[0].ticket).read_all()
    # Planned again, the statement answers the view as it is now.
    _, reader = run(client, "SELECT * FROM shown")
    assert reader.read_all().to_pylist() == [{"price": 2.5, "qty": 5}]
