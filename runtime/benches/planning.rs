//! Planning a statement, from text to physical plan, over the eight TPC-H frames (one row each,
//! so that every frame has a cell and statistics in its log): `SELECT 1`, and q07 and q18 (the
//! joins whose build sides the statistics decide). This is what GetFlightInfo pays once per
//! query before the first batch; q07 opens five frames, q18 three.
//!
//! `APIARY_BENCH_STORAGE=s3://bucket` (and `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, credentials) plans
//! over frames in an S3 store instead of a local directory.

use std::sync::Arc;

use apiary_runtime::{Engine, EngineConfig, Pins, Session};
use apiary_storage::{Lakehouse, LedgerConfig, S3Options, Storage};
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;

const TABLES: [(&str, &str); 8] = [
    (
        "region",
        "r_regionkey BIGINT, r_name VARCHAR, r_comment VARCHAR",
    ),
    (
        "nation",
        "n_nationkey BIGINT, n_name VARCHAR, n_regionkey BIGINT, n_comment VARCHAR",
    ),
    (
        "supplier",
        "s_suppkey BIGINT, s_name VARCHAR, s_address VARCHAR, s_nationkey BIGINT, \
         s_phone VARCHAR, s_acctbal DECIMAL(15,2), s_comment VARCHAR",
    ),
    (
        "customer",
        "c_custkey BIGINT, c_name VARCHAR, c_address VARCHAR, c_nationkey BIGINT, \
         c_phone VARCHAR, c_acctbal DECIMAL(15,2), c_mktsegment VARCHAR, c_comment VARCHAR",
    ),
    (
        "part",
        "p_partkey BIGINT, p_name VARCHAR, p_mfgr VARCHAR, p_brand VARCHAR, p_type VARCHAR, \
         p_size INT, p_container VARCHAR, p_retailprice DECIMAL(15,2), p_comment VARCHAR",
    ),
    (
        "partsupp",
        "ps_partkey BIGINT, ps_suppkey BIGINT, ps_availqty INT, ps_supplycost DECIMAL(15,2), \
         ps_comment VARCHAR",
    ),
    (
        "orders",
        "o_orderkey BIGINT, o_custkey BIGINT, o_orderstatus VARCHAR, o_totalprice DECIMAL(15,2), \
         o_orderdate DATE, o_orderpriority VARCHAR, o_clerk VARCHAR, o_shippriority INT, \
         o_comment VARCHAR",
    ),
    (
        "lineitem",
        "l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber INT, \
         l_quantity DECIMAL(15,2), l_extendedprice DECIMAL(15,2), l_discount DECIMAL(15,2), \
         l_tax DECIMAL(15,2), l_returnflag VARCHAR, l_linestatus VARCHAR, l_shipdate DATE, \
         l_commitdate DATE, l_receiptdate DATE, l_shipinstruct VARCHAR, l_shipmode VARCHAR, \
         l_comment VARCHAR",
    ),
];

const STATEMENTS: [(&str, &str); 3] = [
    ("select 1", "SELECT 1"),
    ("tpch q07", include_str!("../../bench/queries/q07.sql")),
    ("tpch q18", include_str!("../../bench/queries/q18.sql")),
];

/// The frames live in a temporary directory, or under `APIARY_BENCH_STORAGE` (an `s3://bucket`
/// URL, with the standard `AWS_*` variables naming the server), where each open is a request.
async fn engine(dir: &std::path::Path) -> Engine {
    let root = match std::env::var("APIARY_BENCH_STORAGE") {
        Ok(url) => format!(
            "{}/planning-{}",
            url.trim_end_matches('/'),
            std::process::id()
        ),
        Err(_) => dir.to_str().unwrap().to_string(),
    };
    let storage = Storage::open(&root, &S3Options::default()).unwrap();
    let lakehouse = Lakehouse::open(storage, LedgerConfig::default())
        .await
        .unwrap();
    let engine = Engine::new(
        lakehouse,
        EngineConfig::default(),
        Arc::new(RuntimeEnvBuilder::new().build().unwrap()),
    );
    let mut session = Session::new("bench");
    for (name, columns) in TABLES {
        // One row: a cell with statistics in the log, as a real frame has.
        let row: Vec<&str> = columns
            .split(", ")
            .map(|c| match c.split_once(' ').unwrap().1 {
                "VARCHAR" => "'x'",
                "DATE" => "DATE '1995-06-17'",
                _ => "1",
            })
            .collect();
        for sql in [
            format!("CREATE TABLE {name} ({columns})"),
            format!("INSERT INTO {name} VALUES ({})", row.join(", ")),
        ] {
            let stmt = engine.parse_one(&sql).unwrap();
            engine.execute(&mut session, &stmt, None).await.unwrap();
        }
    }
    engine
}

fn planning(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(engine(dir.path()));
    let session = Session::new("bench");
    let mut g = c.benchmark_group("planning");
    for (name, sql) in STATEMENTS {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let stmt = engine.parse_one(sql).unwrap();
                engine
                    .plan_query(&session, &stmt, None, &Pins::new())
                    .await
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, planning);
criterion_main!(benches);
