"""A swarm serves a plain scan from every node: the ADBC driver and raw pyarrow.flight read each
endpoint at the node it names, with the bearer token the first node issued."""

import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest

from conftest import ApiaryServer, hash_password
from test_pyarrow_flight import statement_query

SECRET = "the-swarm-token-secret-0123456789abcdef"
PASSWORD = "s3cret pass"
ROWS = 200_000
QUERY = "SELECT k, v FROM t WHERE v % 3 = 0"


def start_swarm(root: str, heartbeat: str):
    common = [
        "--user", "alice:" + hash_password(PASSWORD),
        "--token-secret", SECRET,
        "--bees", "1",
        "--distribute-min-bytes", "0",
        "--heartbeat-interval", heartbeat,
        "--cell-target-size", "64KiB",
    ]
    return [ApiaryServer(root, args=common + ["--node-id", n]) for n in ("node-a", "node-b")]


@pytest.fixture
def swarm(tmp_path, request):
    """Two nodes; heartbeats every 200 ms unless the test gives another interval."""
    nodes = start_swarm(str(tmp_path / "root"), getattr(request, "param", "200ms"))
    yield nodes
    for n in nodes:
        n.stop()


def connect(node):
    return flightsql.connect(node.uri, db_kwargs={"username": "alice", "password": PASSWORD})


def scalar(node, sql):
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def load(node):
    k = pa.array(range(1, ROWS + 1), pa.int64())
    table = pa.table({"k": k, "v": pc.multiply(k, 7)})
    with connect(node) as conn, conn.cursor() as cur:
        cur.adbc_ingest("t", table, mode="create")
        conn.commit()
    deadline = time.time() + 30
    while scalar(node, "SELECT count(*) FROM system.swarm.nodes WHERE state = 'alive'") < 2:
        assert time.time() < deadline, "the two nodes never saw each other"
        time.sleep(0.1)


def expected():
    return [k for k in range(1, ROWS + 1) if (k * 7) % 3 == 0]


SERVED = "SELECT result_shares_served FROM system.runtime.node"


def test_adbc_reads_each_share_from_its_node(swarm):
    a, b = swarm
    load(a)
    before = scalar(b, SERVED)
    with connect(a) as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        got = cur.fetch_arrow_table()
    assert sorted(got.column("k").to_pylist()) == expected()
    # The driver went to node B for its share, with the bearer token node A issued.
    assert scalar(b, SERVED) > before


def test_pyarrow_flight_gets_one_endpoint_per_node(swarm):
    a, b = swarm
    load(a)
    client = flight.FlightClient(a.uri)
    bearer = client.authenticate_basic_token("alice", PASSWORD)
    options = flight.FlightCallOptions(headers=[bearer])
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(QUERY)), options)
    assert len(info.endpoints) == 2
    assert info.endpoints[0].locations == []
    assert [loc.uri.decode() for loc in info.endpoints[1].locations] == [
        b.uri,
        a.uri,
    ]
    tables = []
    for ep in info.endpoints:
        where = flight.FlightClient(ep.locations[0]) if ep.locations else client
        tables.append(where.do_get(ep.ticket, options).read_all())
    assert all(t.num_rows > 0 for t in tables), "a share came back empty"
    keys = sorted(pa.concat_tables(tables).column("k").to_pylist())
    assert keys == expected()
    # Asked in order, the same rows come as one endpoint.
    ordered = client.get_flight_info(
        flight.FlightDescriptor.for_command(statement_query(QUERY + " ORDER BY k")), options
    )
    assert len(ordered.endpoints) == 1


# Heartbeats every 2 s: a node killed now is still counted alive for seconds.
@pytest.mark.parametrize("swarm", ["2s"], indirect=True)
def test_a_share_whose_node_died_is_read_from_the_next_location(swarm):
    a, b = swarm
    load(a)
    before = scalar(a, SERVED)
    # Killed without a word: node A still counts B alive for a few heartbeats and sends a share
    # there; the driver, refused by B, reads it from the next location, node A.
    b.proc.kill()
    b.proc.wait()
    with connect(a) as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        got = cur.fetch_arrow_table()
    assert sorted(got.column("k").to_pylist()) == expected()
    assert scalar(a, SERVED) - before == 2, "node A served both shares"
