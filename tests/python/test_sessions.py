"""Sessions stick for a whole connection, whatever the client keeps: `USE`, SetSessionOptions
and ADBC's current catalog/schema, with and without authentication (issue 14)."""

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as fl
import pytest


def setup_namespace(uri, **kw):
    with flightsql.connect(uri, **kw) as conn, conn.cursor() as cur:
        cur.execute("CREATE HIVE uh")
        cur.execute("CREATE BOX uh.ub")
        cur.execute("CREATE TABLE uh.ub.t AS SELECT 7 AS x")
        cur.execute("CREATE BOX uh.other")


@pytest.mark.parametrize("auth", [False, True])
def test_use_sticks_across_statements_of_one_adbc_connection(server, auth_server, auth):
    s = auth_server if auth else server
    kw = {"db_kwargs": {"username": "alice", "password": "s3cret pass"}} if auth else {}
    setup_namespace(s.uri, **kw)
    with flightsql.connect(s.uri, **kw) as conn, conn.cursor() as cur:
        cur.execute("USE uh.ub")
        cur.execute("SELECT x FROM t")
        assert cur.fetchone() == (7,)
        assert conn.adbc_current_catalog == "uh"
        assert conn.adbc_current_db_schema == "ub"
        cur.execute("USE HIVE default")
        cur.execute("USE HIVE uh")
        cur.execute("USE BOX ub")
        cur.execute("SELECT x FROM t")
        assert cur.fetchone() == (7,)
        conn.adbc_current_db_schema = "other"
        assert conn.adbc_current_db_schema == "other"
        cur.execute("SELECT x FROM uh.ub.t")
        assert cur.fetchone() == (7,)
    # Another connection starts in default.default.
    with flightsql.connect(s.uri, **kw) as conn, conn.cursor() as cur:
        assert conn.adbc_current_catalog == "default"
        with pytest.raises(Exception):
            cur.execute("SELECT x FROM t")


def test_a_session_can_be_placed_in_every_box_clients_list(server):
    """GetCatalogs and GetDbSchemas list the system hive and each hive's information_schema; a
    BI tool that makes one of them current (SetSessionOptions) or a USE moved there, where both
    were refused as if they did not exist. Nothing can be created there."""
    with flightsql.connect(server.uri) as conn, conn.cursor() as cur:
        conn.adbc_current_catalog = "system"
        conn.adbc_current_db_schema = "swarm"
        cur.execute("SELECT count(*) FROM nodes")
        assert cur.fetchone() == (1,)
        with pytest.raises(Exception, match="read-only"):
            cur.execute("CREATE TABLE mine (a INT)")
        conn.adbc_current_catalog = "default"
        conn.adbc_current_db_schema = "information_schema"
        cur.execute("SELECT count(*) FROM schemata WHERE schema_name = 'default'")
        assert cur.fetchone() == (1,)
        cur.execute("USE system.runtime")
        cur.execute("SELECT count(*) FROM node")
        assert cur.fetchone() == (1,)
        with pytest.raises(Exception, match="box system.nope does not exist"):
            cur.execute("USE system.nope")
        with pytest.raises(Exception):
            conn.adbc_current_db_schema = "nope"
    # A hive without a `default` box (system has none) is entered at its information_schema,
    # where SetSessionOptions left the session in a box that does not exist.
    with flightsql.connect(server.uri) as conn, conn.cursor() as cur:
        conn.adbc_current_catalog = "system"
        assert conn.adbc_current_db_schema == "information_schema"
        cur.execute("SELECT current_schema(), count(*) > 0 FROM tables")
        assert cur.fetchone() == ("information_schema", True)
        cur.execute("USE HIVE default")
        cur.execute("USE HIVE system")
        cur.execute("SELECT current_catalog, current_schema()")
        assert cur.fetchone() == ("system", "information_schema")


def test_use_sticks_for_a_pyarrow_flight_client_that_sends_no_token(server):
    setup_namespace(server.uri)
    client = fl.FlightClient(server.uri)

    def run(sql):
        cmd = _any("CommandStatementQuery", b"\x0a" + _varint(len(sql)) + sql.encode())
        info = client.get_flight_info(fl.FlightDescriptor.for_command(cmd))
        if not info.endpoints:  # a statement without rows ran already
            return None
        return client.do_get(info.endpoints[0].ticket).read_all()

    run("USE uh.ub")
    assert run("SELECT x FROM t").to_pylist() == [{"x": 7}]


def test_a_prepared_statement_run_again_leaves_the_session_where_the_client_moved(server):
    """A prepared statement runs in the session it was prepared in. Writing that session back
    whole after each run pulled a client that had moved since (USE, SET) back to where it
    prepared: its next SELECT read another table of the same name, in another time zone."""
    setup_namespace(server.uri)
    with flightsql.connect(server.uri, autocommit=True) as conn:
        ins, other = conn.cursor(), conn.cursor()
        other.execute("CREATE TABLE t AS SELECT 1 AS x")
        other.execute("CREATE TABLE log (n BIGINT)")
        ins.executemany("INSERT INTO default.default.log VALUES (?)", [(1,)])
        other.execute("USE uh.ub")
        other.execute("SET datafusion.execution.time_zone = '+01:00'")
        # The same SQL on the same cursor: ADBC runs the prepared handle again.
        ins.executemany("INSERT INTO default.default.log VALUES (?)", [(2,)])
        assert (conn.adbc_current_catalog, conn.adbc_current_db_schema) == ("uh", "ub")
        other.execute("SELECT x, arrow_typeof(now()) AS tz FROM t")
        assert other.fetchall() == [(7, 'Timestamp(µs, "+01:00")')]
        # A prepared statement that does change the session changes just that.
        ins.execute("SET datafusion.execution.batch_size = 1000")
        other.execute("SELECT x FROM t")
        assert other.fetchall() == [(7,)]
        other.execute("SHOW datafusion.execution.time_zone")
        assert other.fetchall()[0][1] == "+01:00"


def _varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _any(name, payload):
    url = ("type.googleapis.com/arrow.flight.protocol.sql." + name).encode()
    return b"\x0a" + _varint(len(url)) + url + b"\x12" + _varint(len(payload)) + payload


@pytest.mark.parametrize("auth", [False, True])
def test_set_changes_datafusion_options_for_the_session_only(server, auth_server, auth):
    s = auth_server if auth else server
    kw = {"db_kwargs": {"username": "alice", "password": "s3cret pass"}} if auth else {}
    with flightsql.connect(s.uri, **kw) as conn, conn.cursor() as cur:
        cur.execute("SET datafusion.execution.time_zone = '+05:00'")
        cur.execute("SET datafusion.sql_parser.dialect TO 'DuckDB'")
        cur.execute("SELECT arrow_typeof(now()), array_any_match([1, 2, 3], x -> x > 2)")
        assert cur.fetchone() == ('Timestamp(µs, "+05:00")', True)
        # Prepared statements (parameters) run in the same session.
        cur.execute("SELECT arrow_typeof(now()) AS t, ? AS p", parameters=(1,))
        assert cur.fetchone() == ('Timestamp(µs, "+05:00")', 1)
        with flightsql.connect(s.uri, **kw) as other, other.cursor() as c2:
            c2.execute("SELECT arrow_typeof(now())")
            assert c2.fetchone() == ('Timestamp(µs)',)
        cur.execute("RESET datafusion.execution.time_zone")
        cur.execute("SELECT arrow_typeof(now())")
        assert cur.fetchone() == ('Timestamp(µs)',)
        for sql, code in [
            ("SET datafusion.catalog.information_schema = true", "PermissionDenied"),
            ("SET datafusion.runtime.memory_limit = '1G'", "PermissionDenied"),
            ("SET datafusion.execution.target_partitions = 100000", "InvalidArgument"),
            ("SET datafusion.execution.batch_size = 'many'", "InvalidArgument"),
            ("SET no.such.option = 1", "InvalidArgument"),
        ]:
            with pytest.raises(Exception) as e:
                cur.execute(sql)
            assert code in str(e.value), (sql, str(e.value))


def test_a_new_connection_from_an_old_connections_address_and_port_starts_afresh(server):
    """A connection's USE and SET were kept by its address and port, past its end (a client
    that crashes, or pyarrow.flight, sends no CloseSession): a later connection from the same
    address and port (an ephemeral port used again, clients behind one NAT) started in the
    other client's box with its options. A relay that connects from one fixed port makes the
    reuse certain."""
    import socket
    import struct
    import threading

    host, port = server.uri.removeprefix("grpc://").rsplit(":", 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        source = s.getsockname()[1]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def pump(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        # Wake the other direction without a FIN upstream: a FIN from the relay's side would
        # leave its address and port in TIME_WAIT, and the next connection could not take
        # them (EADDRNOTAVAIL, once in a while, when the relay closed before the server).
        for sock in (a, b):
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def relay():
        last = None
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if last is not None:
                # The previous connection is reset (SO_LINGER 0) once both its directions are
                # done, before its port is taken again.
                old_up, old_client, pumps = last
                for t in pumps:
                    t.join(timeout=10)
                old_up.close()
                old_client.close()
            up = socket.socket()
            up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            up.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            up.bind(("127.0.0.1", source))
            up.connect((host, int(port)))
            pumps = [
                threading.Thread(target=pump, args=(up, client), daemon=True),
                threading.Thread(target=pump, args=(client, up), daemon=True),
            ]
            for t in pumps:
                t.start()
            last = (up, client, pumps)

    threading.Thread(target=relay, daemon=True).start()
    via_relay = f"grpc://127.0.0.1:{listener.getsockname()[1]}"
    setup_namespace(server.uri)
    try:
        # pyarrow.flight sends no CloseSession when it closes.
        first = fl.FlightClient(via_relay)
        for sql in ["USE uh.ub", "SET datafusion.execution.batch_size = 7"]:
            cmd = _any("CommandStatementQuery", b"\x0a" + _varint(len(sql)) + sql.encode())
            first.get_flight_info(fl.FlightDescriptor.for_command(cmd))
        first.close()
        with flightsql.connect(via_relay) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_catalog, current_schema()")
            assert cur.fetchone() == ("default", "default")
            cur.execute("SHOW datafusion.execution.batch_size")
            assert cur.fetchone()[1] != "7"
    finally:
        listener.close()
