"""Frames are Delta tables: the `deltalake` package reads what Apiary wrote, with equal contents."""

import csv
import io
import pathlib

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from conftest import run_sql


def test_deltalake_reads_a_partitioned_frame(storage):
    run_sql(
        storage,
        """
        CREATE HIVE shop;
        CREATE BOX shop.eu;
        CREATE TABLE shop.eu.orders (id BIGINT NOT NULL, amount DOUBLE, region VARCHAR, note VARCHAR)
            PARTITIONED BY (region);
        INSERT INTO shop.eu.orders VALUES (1, 9.5, 'north', 'a'), (2, 3.25, 'south', NULL);
        INSERT INTO shop.eu.orders SELECT value + 10, value * 1.5, 'west', 'gen' FROM generate_series(1, 1000);
        """,
    )
    table_dir = pathlib.Path(storage) / "shop" / "eu" / "orders"
    dt = DeltaTable(str(table_dir))
    assert dt.version() == 2
    assert dt.metadata().partition_columns == ["region"]
    theirs = pa.table(dt.to_pyarrow_dataset().to_table()).select(["id", "amount", "region", "note"])
    theirs = theirs.sort_by("id")

    ours_csv = run_sql(storage, "SELECT id, amount, region, note FROM shop.eu.orders ORDER BY id")
    lines = ours_csv.strip().splitlines()
    assert lines[0] == "id,amount,region,note"
    assert len(lines) - 1 == theirs.num_rows == 1002

    assert theirs.column("id").to_pylist() == [int(l.split(",")[0]) for l in lines[1:]]
    assert pc.sum(theirs.column("amount")).as_py() == 9.5 + 3.25 + sum(v * 1.5 for v in range(1, 1001))
    first = theirs.slice(0, 2).to_pylist()
    assert first == [
        {"id": 1, "amount": 9.5, "region": "north", "note": "a"},
        {"id": 2, "amount": 3.25, "region": "south", "note": None},
    ]
    # Partition pruning works for them too.
    west = dt.to_pyarrow_dataset().to_table(filter=pc.field("region") == "west")
    assert west.num_rows == 1000


def test_deltalake_sees_overwrite_and_history(storage):
    run_sql(
        storage,
        """
        CREATE TABLE t (k INT, v VARCHAR);
        INSERT INTO t VALUES (1, 'one');
        INSERT OVERWRITE t VALUES (2, 'two'), (3, 'three');
        """,
    )
    dt = DeltaTable(str(pathlib.Path(storage) / "default" / "default" / "t"))
    assert dt.version() == 2
    assert sorted(dt.to_pyarrow_dataset().to_table().column("k").to_pylist()) == [2, 3]
    ops = [h["operation"] for h in dt.history()]
    assert ops[0] == "WRITE"
    # Time travel through their reader matches ours.
    dt.load_as_version(1)
    assert dt.to_pyarrow_dataset().to_table().column("v").to_pylist() == ["one"]


def test_a_dropped_frame_reads_empty_and_the_next_frame_of_its_name_begins_after_it(storage):
    """A drop keeps the frame's Delta log, ended by a commit that removes every cell (so that a
    write racing the drop on another node fails instead of landing in a frame created under the
    name next): Delta readers read what it leaves as a table without rows, and the next frame
    of the name as itself, which begins at the version after."""
    run_sql(
        storage,
        """
        CREATE TABLE t (k INT, v VARCHAR);
        INSERT INTO t VALUES (1, 'one');
        INSERT INTO t VALUES (2, 'two');
        DROP TABLE t;
        """,
    )
    path = pathlib.Path(storage) / "default" / "default" / "t"
    dt = DeltaTable(str(path))
    assert dt.version() == 3
    assert dt.to_pyarrow_dataset().to_table().num_rows == 0
    assert not [p for p in path.rglob("*.parquet") if "_delta_log" not in p.parts]

    run_sql(storage, "CREATE TABLE t (name VARCHAR, n BIGINT); INSERT INTO t VALUES ('x', 7)")
    dt = DeltaTable(str(path))
    assert dt.version() == 5
    assert dt.to_pyarrow_dataset().to_table().to_pylist() == [{"name": "x", "n": 7}]
    history = list(csv.DictReader(io.StringIO(run_sql(storage, "DESCRIBE HISTORY t"))))
    assert [int(h["version"]) for h in history] == [5, 4]
    with pytest.raises(RuntimeError, match=r"at version 2 \(it was dropped and created again since\)"):
        run_sql(storage, "SELECT * FROM t VERSION AS OF 2")
    with pytest.raises(RuntimeError, match=r"at version 2 \(it was dropped and created again since"):
        run_sql(storage, "RESTORE t TO VERSION AS OF 2")
