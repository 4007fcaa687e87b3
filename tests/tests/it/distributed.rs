//! The swarm executes: real `apiary serve` processes on one storage root (a local directory and
//! a real S3-compatible server) run every TPC-H query as fragments and answer as one node would;
//! workers killed mid-query are replaced; nodes join and leave; claims race; orphans are removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apiary_tests::{Moto, Seaweed, Server};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tonic::transport::Channel;

const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// TPC-H SF 0.01 as Parquet, generated once per machine with the venv's tpcgen-cli.
fn tpch_data() -> PathBuf {
    let home = std::env::var("HOME").unwrap();
    let dir = PathBuf::from(home).join(".cache/apiary/tpch/sf0.01");
    if TABLES
        .iter()
        .all(|t| dir.join(format!("{t}.parquet")).exists())
    {
        return dir;
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let generator = apiary_tests::venv().join("bin/tpcgen-cli");
    let ok = std::process::Command::new(generator)
        .args([
            "tpch",
            "parquet",
            "-s",
            "0.01",
            "--output-dir",
            tmp.to_str().unwrap(),
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "tpcgen-cli failed");
    let _ = std::fs::create_dir_all(dir.parent().unwrap());
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test generated it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    dir
}

fn queries() -> Vec<(String, String)> {
    let dir = apiary_tests::manifest_dir().join("../bench/queries");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    server.flight_sql_client().await
}

async fn run(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = c
        .execute(sql.to_string(), None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    for ep in info.endpoint {
        let s = c.do_get(ep.ticket.unwrap()).await.unwrap();
        out.extend(
            s.try_collect::<Vec<_>>()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        );
    }
    out
}

async fn ingest(c: &mut FlightSqlServiceClient<Channel>, data: &Path) {
    for t in TABLES {
        let file = std::fs::File::open(data.join(format!("{t}.parquet"))).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .with_batch_size(8192)
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let cmd = CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions {
                if_not_exist: TableNotExistOption::Create as i32,
                if_exists: TableExistsOption::Fail as i32,
            }),
            table: t.to_string(),
            schema: None,
            catalog: None,
            temporary: false,
            transaction_id: None,
            options: Default::default(),
        };
        c.execute_ingest(cmd, futures::stream::iter(batches.into_iter().map(Ok)))
            .await
            .unwrap();
    }
}

/// Rows as strings, floats rounded, sorted (ties may come back in either order).
fn canonical(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<(DataType, ArrayFormatter<'_>)> = b
            .columns()
            .iter()
            .map(|c| {
                (
                    c.data_type().clone(),
                    ArrayFormatter::try_new(c.as_ref(), &opts).unwrap(),
                )
            })
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = cols
                .iter()
                .zip(b.columns())
                .map(|((dt, f), c)| match dt {
                    DataType::Float64 if c.is_valid(r) => {
                        format!(
                            "{:.6e}",
                            c.as_primitive::<arrow::datatypes::Float64Type>().value(r)
                        )
                    }
                    _ => f.value(r).to_string(),
                })
                .collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

fn swarm_flags(id: &str) -> Vec<String> {
    [
        "--node-id",
        id,
        "--bees",
        "1",
        "--distribute-min-bytes",
        "0",
        "--heartbeat-interval",
        "200ms",
        "--poll-max",
        "200ms",
        "--claim-timeout",
        "5s",
        "--cell-target-size",
        "64KiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(root: &str, id: &str, extra: &[&str], env: &[(String, String)]) -> Server {
    // Flags in `extra` replace the defaults of the same name.
    let defaults = swarm_flags(id);
    let mut args: Vec<String> = Vec::new();
    for pair in defaults.chunks(2) {
        if !extra.contains(&pair[0].as_str()) {
            args.extend_from_slice(pair);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Server::start(root, &args, env)
}

async fn alive(c: &mut FlightSqlServiceClient<Channel>) -> Vec<String> {
    let b = run(
        c,
        "SELECT node_id FROM system.swarm.nodes WHERE state = 'alive' ORDER BY node_id",
    )
    .await;
    b.iter()
        .flat_map(|b| {
            let a = b.column(0).as_string::<i32>();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn wait_alive(c: &mut FlightSqlServiceClient<Channel>, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = alive(c).await;
        if want.iter().all(|w| now.iter().any(|n| n == w)) && now.len() == want.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "swarm is {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fragments(c: &mut FlightSqlServiceClient<Channel>) -> u64 {
    let b = run(c, "SELECT fragments_executed FROM system.runtime.node").await;
    b[0].column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0)
}

async fn shuffled(c: &mut FlightSqlServiceClient<Channel>) -> u64 {
    let b = run(c, "SELECT shuffle_output_bytes FROM system.runtime.node").await;
    b[0].column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0)
}

async fn cache_hits(c: &mut FlightSqlServiceClient<Channel>) -> u64 {
    let b = run(c, "SELECT cache_hits FROM system.runtime.node").await;
    b[0].column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0)
}

/// DataFusion options that make every hash join partitioned (at SF 0.01 it would collect every
/// build side), so TPC-H runs with shuffles on both sides of its joins.
const PARTITIONED_JOINS: [&str; 4] = [
    "--datafusion-option",
    "datafusion.optimizer.hash_join_single_partition_threshold=0",
    "--datafusion-option",
    "datafusion.optimizer.hash_join_single_partition_threshold_rows=0",
];

async fn tpch_on_a_swarm(root: &str, env: Vec<(String, String)>, s3: bool) {
    tpch_on_a_swarm_with(root, env, s3, &[]).await
}

async fn tpch_on_a_swarm_with(root: &str, env: Vec<(String, String)>, s3: bool, extra: &[&str]) {
    let data = tpch_data();
    let nodes: Vec<Server> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| start(root, id, extra, &env))
        .collect();
    // The reference: a node that never distributes its own queries.
    let reference = start(root, "reference", &["--distribute-min-bytes", "1TiB"], &env);
    let mut coord = client(&nodes[0]).await;
    let mut refc = client(&reference).await;
    ingest(&mut coord, &data).await;
    wait_alive(&mut coord, &["node-1", "node-2", "node-3", "reference"]).await;

    let mut before = Vec::new();
    let mut shuffled_before = 0;
    for n in &nodes {
        before.push(fragments(&mut client(n).await).await);
        shuffled_before += shuffled(&mut client(n).await).await;
    }
    for (name, sql) in queries() {
        let got = canonical(&run(&mut coord, &sql).await);
        let want = canonical(&run(&mut refc, &sql).await);
        assert_eq!(
            got, want,
            "{name}: the swarm's answer differs from a single node's"
        );
        assert!(!want.is_empty() || name == "q15", "{name} returned nothing");
    }
    let mut ran_fragments = 0;
    for (n, b) in nodes.iter().zip(&before) {
        if fragments(&mut client(n).await).await > *b {
            ran_fragments += 1;
        }
    }
    assert!(
        ran_fragments >= 2,
        "fragments ran on only {ran_fragments} node(s)"
    );
    // Grouped aggregates (and, with partitioned joins, joins) ran as shuffle stages.
    let mut shuffled_after = 0;
    for n in &nodes {
        shuffled_after += shuffled(&mut client(n).await).await;
    }
    assert!(
        shuffled_after > shuffled_before,
        "no stage wrote a shuffle output"
    );

    // EXPLAIN shows the stages, tasks and nodes.
    let ex = run(
        &mut coord,
        "EXPLAIN SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1",
    )
    .await;
    let text: Vec<String> = ex
        .iter()
        .flat_map(|b| {
            let k = b.column(0).as_string::<i32>();
            let v = b.column(1).as_string::<i32>();
            (0..b.num_rows())
                .map(|i| format!("{}: {}", k.value(i), v.value(i)))
                .collect::<Vec<_>>()
        })
        .collect();
    let dist = text
        .iter()
        .find(|l| l.starts_with("distributed_plan"))
        .expect("no distributed plan");
    assert!(
        dist.contains("Stage 0") && dist.contains("task 0") && dist.contains("node-"),
        "{dist}"
    );
    // The group-by runs as two stages: partial aggregates shuffled by the key, then the
    // final aggregate of each partition.
    assert!(
        dist.contains("output: shuffle write hash(l_returnflag")
            && dist.contains("shuffle read of stage 0"),
        "{}",
        text.join("\n")
    );

    if s3 {
        // A repeated query reads its cells from the local caches.
        let mut hits_before = 0;
        for n in &nodes {
            hits_before += cache_hits(&mut client(n).await).await;
        }
        run(&mut coord, "SELECT sum(l_quantity) FROM lineitem").await;
        run(&mut coord, "SELECT sum(l_quantity) FROM lineitem").await;
        let mut hits_after = 0;
        for n in &nodes {
            hits_after += cache_hits(&mut client(n).await).await;
        }
        assert!(
            hits_after > hits_before,
            "no cache hits on a repeated query"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_on_a_swarm_with_a_local_root() {
    let dir = tempfile::tempdir().unwrap();
    tpch_on_a_swarm(dir.path().to_str().unwrap(), vec![], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_on_a_swarm_with_partitioned_joins_shuffles_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    tpch_on_a_swarm_with(
        dir.path().to_str().unwrap(),
        vec![],
        false,
        &PARTITIONED_JOINS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_on_a_swarm_with_shuffles_on_seaweedfs() {
    let weed = Seaweed::start("swarm");
    tpch_on_a_swarm_with(&weed.url("root"), weed.env(), true, &PARTITIONED_JOINS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_on_a_swarm_on_s3() {
    let moto = Moto::start("swarm");
    tpch_on_a_swarm(&moto.url("root"), moto.env(), true).await;
}

const HEAVY: &str = "SELECT l_returnflag, count(*) AS n, sum(length(l_comment)) AS s FROM lineitem GROUP BY l_returnflag";

/// Workers whose fragments each take three seconds longer (a fault-injection hook).
fn slow() -> Vec<(String, String)> {
    vec![("APIARY_FAULT_FRAGMENT_DELAY_MS".into(), "3000".into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_query_is_replaced() {
    killing_a_busy_worker_keeps_the_answer(HEAVY, &[], "%").await;
}

/// Three nodes, the two workers slow; kill a worker while it runs a fragment whose id is
/// `LIKE fragment`, and check the query still answers as before, through reassignment.
async fn killing_a_busy_worker_keeps_the_answer(sql: &'static str, flags: &[&str], fragment: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    let n1 = start(root, "node-1", flags, &[]);
    let n2 = start(root, "node-2", flags, &slow());
    let n3 = start(root, "node-3", flags, &slow());
    let mut c = client(&n1).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2", "node-3"]).await;
    let want = canonical(&run(&mut c, sql).await);

    let mut q = c.clone();
    let query = apiary_runtime::executor::spawn(async move { run(&mut q, sql).await });
    let mut victim = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while victim.is_none() && Instant::now() < deadline {
        for (i, s) in [(2, &n2), (3, &n3)] {
            if runs_fragment_like(s, fragment).await {
                victim = Some(i);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = victim.expect("no such fragment was ever seen running on a worker");
    if victim == 2 {
        n2.kill()
    } else {
        n3.kill()
    }
    let got = canonical(
        &tokio::time::timeout(Duration::from_secs(120), query)
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(got, want, "the answer changed after a worker died");
    assert!(
        n1.log().contains("reassigning fragment"),
        "nothing was reassigned"
    );
}

/// A grouped aggregate over a key with many values: partial aggregates shuffled by the key.
const SHUFFLED: &str = "SELECT l_orderkey, sum(l_quantity) AS q FROM lineitem GROUP BY l_orderkey ORDER BY q DESC, l_orderkey LIMIT 20";

/// A partitioned join (with [`PARTITIONED_JOINS`]) under a grouped aggregate: orders and
/// lineitem are shuffled by the order key (stages 0 and 1), stage 2 joins each partition and
/// aggregates it partially, shuffled again by the group key; the final aggregate (stage 3) has
/// small inputs and runs on the coordinator.
const JOINED: &str = "SELECT o_orderpriority, count(*) AS n, sum(l_quantity) AS q FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY o_orderpriority ORDER BY o_orderpriority";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_during_a_shuffle_stage_is_replaced() {
    // Stage 2 of JOINED reads two shuffles (its id is `<query>/s2t<task>a<attempt>`).
    killing_a_busy_worker_keeps_the_answer(JOINED, &PARTITIONED_JOINS, "%/s2t%").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_whose_shuffle_inputs_are_deleted_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    let n1 = start(root, "node-1", &[], &slow());
    let n2 = start(root, "node-2", &[], &slow());
    let mut c = client(&n1).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;

    let mut q = c.clone();
    let query = apiary_runtime::executor::spawn(async move {
        match q.execute(SHUFFLED.to_string(), None).await {
            Err(e) => Err(e),
            Ok(info) => {
                let mut rows = 0;
                for ep in info.endpoint {
                    let s = q.do_get(ep.ticket.unwrap()).await?;
                    for b in s
                        .try_collect::<Vec<_>>()
                        .await
                        .map_err(tonic::Status::from)?
                    {
                        rows += b.num_rows();
                    }
                }
                Ok(rows)
            }
        }
    });
    // Every output a producer of stage 0 finishes disappears before its consumer (which
    // starts three seconds late, on a worker or, for small inputs, on the coordinator) can
    // read it.
    let queries = dir.path().join("_apiary/queries");
    let mut deleted = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !query.is_finished() && Instant::now() < deadline {
        for entry in walk(&queries) {
            let name = entry.to_string_lossy();
            if name.contains("/s0-t")
                && name.ends_with(".arrow")
                && std::fs::remove_file(&entry).is_ok()
            {
                deleted += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), query)
        .await
        .unwrap()
        .unwrap();
    assert!(deleted > 0, "no shuffle output was ever written");
    let err = outcome
        .expect_err("a query whose inputs were deleted answered")
        .to_string();
    assert!(
        err.contains("shuffle input") && err.contains("missing"),
        "unclear error: {err}"
    );
    drop(n2);
}

/// Every file below `dir` (none if it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether `server` runs a fragment now.
async fn runs_a_fragment(server: &Server) -> bool {
    runs_fragment_like(server, "%").await
}

/// Whether `server` runs a fragment whose id (`<query>/s<stage>t<task>a<attempt>`) is
/// `LIKE pattern` now.
async fn runs_fragment_like(server: &Server, pattern: &str) -> bool {
    let b = run(
        &mut client(server).await,
        &format!(
            "SELECT count(*) FROM system.runtime.queries WHERE user = 'fragment' AND state = 'running' AND query_id LIKE '{pattern}'"
        ),
    )
    .await;
    b[0].column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
        > 0
}

/// Wait until a fragment runs on `server`.
async fn running_a_fragment(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runs_a_fragment(server).await {
        assert!(Instant::now() < deadline, "no fragment ran on the node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_shut_down_mid_query_hands_back_its_fragments_and_leaves_within_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    let interval = Duration::from_secs(1);
    let flags = ["--heartbeat-interval", "1s"];
    let n1 = start(root, "node-1", &flags, &[]);
    let n2 = start(root, "node-2", &flags, &slow());
    let mut c = client(&n1).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    let want = canonical(&run(&mut c, HEAVY).await);
    // Placement follows heartbeats: wait until node-1 sees node-2 idle again, so that node-2
    // gets a share of the next query.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = run(
            &mut c,
            "SELECT bees_busy FROM system.swarm.nodes WHERE node_id = 'node-2'",
        )
        .await;
        if b[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
            == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "node-2 never looked idle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut q = c.clone();
    let query = apiary_runtime::executor::spawn(async move { run(&mut q, HEAVY).await });
    running_a_fragment(&n2).await;
    let storage =
        apiary_storage::Storage::open(root, &apiary_storage::S3Options::default()).unwrap();
    let heartbeat = apiary_storage::paths::heartbeat("node-2");
    assert!(storage.head_opt(&heartbeat).await.unwrap().is_some());
    let asked = Instant::now();
    n2.terminate();
    while storage.head_opt(&heartbeat).await.unwrap().is_some() {
        assert!(
            asked.elapsed() < interval,
            "the heartbeat outlived one interval after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = canonical(
        &tokio::time::timeout(Duration::from_secs(120), query)
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(got, want, "the answer changed after a node shut down");
    assert!(
        n1.log().contains("shutting down"),
        "the fragment was not handed back"
    );
    assert_eq!(n2.wait_exit(Duration::from_secs(40)), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_joining_get_work_and_nodes_leaving_get_none() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    let n1 = start(root, "node-1", &[], &[]);
    let n2 = start(root, "node-2", &[], &[]);
    let mut c = client(&n1).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    let q = "SELECT l_linestatus, sum(l_extendedprice) FROM lineitem GROUP BY 1";
    let want = canonical(&run(&mut c, q).await);

    // A node started now takes part in the next queries.
    let n3 = start(root, "node-3", &[], &[]);
    wait_alive(&mut c, &["node-1", "node-2", "node-3"]).await;
    let mut c3 = client(&n3).await;
    assert_eq!(fragments(&mut c3).await, 0);
    for _ in 0..3 {
        assert_eq!(canonical(&run(&mut c, q).await), want);
    }
    assert!(
        fragments(&mut c3).await > 0,
        "the new node received no fragments"
    );

    // A node stopped gracefully receives nothing after it left.
    assert!(n2.stop());
    wait_alive(&mut c, &["node-1", "node-3"]).await;
    let storage =
        apiary_storage::Storage::open(root, &apiary_storage::S3Options::default()).unwrap();
    let inbox = apiary_storage::paths::inbox_prefix("node-2").unwrap();
    for _ in 0..3 {
        assert_eq!(canonical(&run(&mut c, q).await), want);
        assert!(
            storage.list(&inbox).await.unwrap().is_empty(),
            "work was posted to a node that left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_of_a_killed_coordinator_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    // The coordinator's queries end within 8 s: after that (and the TTL) their objects may go.
    let n1 = start(
        root,
        "node-1",
        &["--orphan-ttl", "1s", "--query-timeout", "8s"],
        &slow(),
    );
    let n2 = start(root, "node-2", &["--orphan-ttl", "1s"], &slow());
    let mut c = client(&n1).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    let storage =
        apiary_storage::Storage::open(root, &apiary_storage::S3Options::default()).unwrap();
    let queries = apiary_storage::paths::queries_prefix();

    let mut q2 = c.clone();
    let _reader = apiary_runtime::executor::spawn(async move {
        let Ok(info) = q2.execute(HEAVY.to_string(), None).await else {
            return;
        };
        if let Ok(mut stream) = q2.do_get(info.endpoint[0].ticket.clone().unwrap()).await {
            while let Some(Ok(_)) = stream.next().await {}
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A whole object, not only its directory: on a local root the directory shows before
        // the first put completes, and a kill in between leaves no orphan to remove.
        if !storage.list(&queries).await.unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the query never reached storage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n1.kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = storage.list(&queries).await.unwrap();
        let inboxes = storage
            .list(&apiary_storage::paths::inboxes_prefix())
            .await
            .unwrap();
        if left.is_empty() && inboxes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphans remain: {} objects",
            left.len() + inboxes.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sweep logs once its deletes are done; the line may reach us a moment after the
    // listing above came back empty.
    assert!(n2.wait_log("removed an orphaned query", Duration::from_secs(10)));
    drop(n2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_redeemed_twice_or_at_once_on_a_swarm_answers_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    let n1 = start(root, "node-1", &[], &[]);
    let _n2 = start(root, "node-2", &[], &[]);
    let mut c = client(&n1).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    let info = c.execute(HEAVY.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let redeem = |t: arrow_flight::Ticket, mut c: FlightSqlServiceClient<Channel>| async move {
        let batches: Vec<RecordBatch> = c.do_get(t).await.unwrap().try_collect().await.unwrap();
        canonical(&batches)
    };
    let first = redeem(ticket.clone(), c.clone()).await;
    assert!(!first.is_empty());
    // Once finished, a run leaves no cancel marker behind: the ticket still answers.
    assert_eq!(redeem(ticket.clone(), c.clone()).await, first);
    // Two at once are two runs with their own objects.
    let (a, b) = tokio::join!(
        redeem(ticket.clone(), c.clone()),
        redeem(ticket.clone(), c.clone())
    );
    assert_eq!(a, first);
    assert_eq!(b, first);
    assert!(n1.log().matches("distributed query started").count() >= 4);
}

/// Chaos on a swarm: three times over, a worker running a fragment is killed with SIGKILL and
/// started again under the same name; then the coordinator itself is killed mid-query. Every
/// query answers the same, or — when its coordinator died — fails at once; nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_nodes_killed_in_a_loop_never_change_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    let names = ["node-2", "node-3"];
    let n1 = start(root, "node-1", &[], &[]);
    let mut workers: Vec<Server> = names.iter().map(|n| start(root, n, &[], &slow())).collect();
    let mut c = client(&n1).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2", "node-3"]).await;
    let want = canonical(&run(&mut c, HEAVY).await);
    // The worker running a fragment now.
    async fn busy(workers: &[Server]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, w) in workers.iter().enumerate() {
                if runs_a_fragment(w).await {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no fragment was seen on a worker"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for round in 0..3 {
        let mut q = c.clone();
        let query = apiary_runtime::executor::spawn(async move { run(&mut q, HEAVY).await });
        let victim = busy(&workers).await;
        // Killed, and back under the same name before the swarm could call it dead.
        let old = workers.remove(victim);
        old.kill();
        workers.insert(victim, start(root, names[victim], &[], &slow()));
        let got = tokio::time::timeout(Duration::from_secs(120), query)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the query hung"))
            .unwrap();
        assert_eq!(canonical(&got), want, "round {round}: the answer changed");
        wait_alive(&mut c, &["node-1", "node-2", "node-3"]).await;
    }
    // The coordinator dies mid-query: its client hears so at once, and another coordinator
    // answers as before.
    let mut q = c.clone();
    let query = apiary_runtime::executor::spawn(async move {
        let info = q.execute(HEAVY.into(), None).await?;
        let stream = q.do_get(info.endpoint[0].ticket.clone().unwrap()).await?;
        stream.try_collect::<Vec<RecordBatch>>().await
    });
    busy(&workers).await;
    n1.kill();
    let outcome = tokio::time::timeout(Duration::from_secs(30), query)
        .await
        .expect("the client of a dead coordinator hung")
        .unwrap();
    assert!(outcome.is_err(), "a dead coordinator answered");
    let mut c2 = client(&workers[0]).await;
    assert_eq!(canonical(&run(&mut c2, HEAVY).await), want);
}

/// A result that is a plain union over one frame's cells is served by every node at once: one
/// endpoint per node, located at that node, each share computed where it is served. Read from
/// their locations the shares are the whole result, exactly once; each ticket also answers on
/// any other node; a sorted query keeps one endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_scan_on_a_swarm_is_served_by_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let data = tpch_data();
    let nodes: Vec<Server> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|id| start(root, id, &[], &[]))
        .collect();
    let mut c = client(&nodes[0]).await;
    ingest(&mut c, &data).await;
    wait_alive(&mut c, &["node-1", "node-2", "node-3"]).await;
    let served = |b: Vec<RecordBatch>| {
        b[0].column(0)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(0)
    };
    let mut before = Vec::new();
    for n in &nodes {
        before.push(served(run(&mut client(n).await, SHARES_SERVED).await));
    }

    let sql = "SELECT l_orderkey, l_linenumber, l_quantity, l_comment FROM lineitem \
               JOIN nation ON l_suppkey % 25 = n_nationkey WHERE l_quantity > 10";
    let info = c.execute(sql.to_string(), None).await.unwrap();
    assert_eq!(info.endpoint.len(), 3, "one endpoint per node: {info:?}");
    assert!(
        info.endpoint[0].location.is_empty(),
        "the first share: this connection"
    );
    let mut homes: Vec<String> = info.endpoint[1..]
        .iter()
        .map(|e| {
            assert_eq!(e.location.len(), 2, "its node, then this one: {e:?}");
            assert_eq!(e.location[1].uri, nodes[0].url());
            e.location[0].uri.clone()
        })
        .collect();
    homes.sort();
    let mut others = vec![nodes[1].url(), nodes[2].url()];
    others.sort();
    assert_eq!(homes, others);

    // Each share from where its endpoint says, all at once.
    let reads = info.endpoint.iter().map(|e| {
        let url = e.location.first().map_or(nodes[0].url(), |l| l.uri.clone());
        let ticket = e.ticket.clone().unwrap();
        async move {
            let ch = Channel::from_shared(url).unwrap().connect().await.unwrap();
            let mut c = FlightSqlServiceClient::new(ch);
            let b: Vec<RecordBatch> = c.do_get(ticket).await.unwrap().try_collect().await.unwrap();
            b
        }
    });
    let shares: Vec<Vec<RecordBatch>> = futures::future::join_all(reads).await;
    for (i, s) in shares.iter().enumerate() {
        let rows: usize = s.iter().map(|b| b.num_rows()).sum();
        assert!(rows > 0, "share {i} is empty: the cells were not spread");
    }
    let got = canonical(&shares.concat());
    // The same query in order is one endpoint, the whole result.
    let ordered = c
        .execute(
            format!("{sql} ORDER BY l_orderkey, l_linenumber, n_name"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ordered.endpoint.len(), 1);
    let want = canonical(&run(&mut c, &format!("{sql} ORDER BY 1, 2")).await);
    assert_eq!(got.len(), want.len(), "rows served twice or not at all");
    assert_eq!(got, want);
    for (n, b) in nodes.iter().zip(&before) {
        let now = served(run(&mut client(n).await, SHARES_SERVED).await);
        assert!(now > *b, "{} served no share", n.url());
    }
    // Every share's ticket is good on any node: all of them redeemed on the last one.
    let mut last = client(&nodes[2]).await;
    let mut anywhere = Vec::new();
    for e in &info.endpoint {
        let b: Vec<RecordBatch> = last
            .do_get(e.ticket.clone().unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        anywhere.extend(b);
    }
    assert_eq!(canonical(&anywhere), want);
    let explain = canonical(&run(&mut c, &format!("EXPLAIN {sql}")).await).join("\n");
    assert!(explain.contains("result in 3 shares"), "{explain}");
}

const SHARES_SERVED: &str = "SELECT result_shares_served FROM system.runtime.node";

/// A query over fewer bytes of cells than `--distribute-min-bytes` cannot spread, so a swarm
/// node plans it once, for its own bees, as a node alone would: not for the swarm's partitions
/// (and then again for its own when nothing spread). Above the threshold it is planned for the
/// swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_too_small_to_spread_is_planned_once_for_its_own_node() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let sql = "SELECT l_returnflag, count(*) FROM lineitem GROUP BY 1";
    let plan_of = async |c: &mut FlightSqlServiceClient<Channel>| {
        canonical(&run(c, &format!("EXPLAIN {sql}")).await)
            .into_iter()
            .filter(|l| l.contains("physical_plan"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let big = ["--distribute-min-bytes", "1GiB"];
    let nodes: Vec<Server> = ["node-1", "node-2"]
        .iter()
        .map(|id| start(root, id, &big, &[]))
        .collect();
    let mut c = client(&nodes[0]).await;
    ingest(&mut c, &tpch_data()).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    let small = plan_of(&mut c).await;
    // One bee: one partition, no repartitioning between the scan and the aggregate.
    assert!(!small.contains("RepartitionExec"), "{small}");
    let answer = canonical(&run(&mut c, &format!("{sql} ORDER BY 1")).await);
    assert_eq!(answer.len(), 3, "{answer:?}");
    drop(nodes);

    // The same swarm with a zero threshold plans for both nodes' bees.
    let nodes: Vec<Server> = ["node-1", "node-2"]
        .iter()
        .map(|id| start(root, id, &[], &[]))
        .collect();
    let mut c = client(&nodes[0]).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    let spread = plan_of(&mut c).await;
    assert!(spread.contains("RepartitionExec"), "{spread}");
    assert_eq!(
        canonical(&run(&mut c, &format!("{sql} ORDER BY 1")).await),
        answer
    );
}

/// A worker whose inbox poll is slow (here: every 30 s, and no watch of the root, as for a node on
/// another host sharing it; in production, one backed off after a quiet spell) claims nothing in
/// time. The coordinator, its bee free, claims and runs each
/// attempt it posted there after `--steal-after`, long before `--claim-timeout` would reassign
/// it, and the answer is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_runs_what_a_slowly_polling_node_left_unclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let sql = "SELECT l_returnflag, l_linestatus, count(*), sum(l_quantity) FROM lineitem \
               GROUP BY 1, 2 ORDER BY 1, 2";
    let coordinator = start(root, "node-1", &[], &[]);
    let mut c = client(&coordinator).await;
    ingest(&mut c, &tpch_data()).await;
    let alone = canonical(&run(&mut c, sql).await);
    assert_eq!(alone.len(), 4, "{alone:?}");
    let sleepy = start(
        root,
        "node-2",
        &[
            "--poll-min",
            "30s",
            "--poll-max",
            "30s",
            "--storage-events",
            "false",
        ],
        &[],
    );
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    let explain = canonical(&run(&mut c, &format!("EXPLAIN {sql}")).await).join("\n");
    assert!(explain.contains("on node-2"), "{explain}");
    assert_eq!(canonical(&run(&mut c, sql).await), alone);
    let stolen = run(&mut c, "SELECT fragments_stolen FROM system.runtime.node").await;
    let stolen = stolen[0]
        .column(0)
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(0);
    assert!(stolen > 0, "nothing was taken over");
    let mut s = client(&sleepy).await;
    assert_eq!(fragments(&mut s).await, 0, "the slow node ran nothing");
}

/// A statement's own failure in a fragment (here an overflow, from input the statement reads)
/// reaches the client as it would from a single node: INVALID_ARGUMENT with the engine's
/// words, never INTERNAL "details in the server log".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fragment_failing_on_its_input_answers_as_a_single_node_would() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let nodes: Vec<Server> = ["node-1", "node-2"]
        .iter()
        .map(|id| start(root, id, &[], &[]))
        .collect();
    let mut c = client(&nodes[0]).await;
    ingest(&mut c, &tpch_data()).await;
    wait_alive(&mut c, &["node-1", "node-2"]).await;
    // The same shape runs as fragments when it succeeds.
    let mut all = Vec::new();
    for n in &nodes {
        all.push(client(n).await);
    }
    let mut before = 0;
    for c in all.iter_mut() {
        before += fragments(c).await;
    }
    run(&mut c, "SELECT sum(l_orderkey + 1) FROM lineitem").await;
    let mut after = 0;
    for c in all.iter_mut() {
        after += fragments(c).await;
    }
    assert!(after > before, "the query ran as no fragment");

    let sql = "SELECT sum(l_orderkey + 9223372036854775000) FROM lineitem";
    let outcome: Result<(), tonic::Status> = async {
        let info = c.execute(sql.to_string(), None).await?;
        for ep in info.endpoint {
            let s = c.do_get(ep.ticket.unwrap()).await?;
            s.try_collect::<Vec<_>>()
                .await
                .map_err(tonic::Status::from)?;
        }
        Ok(())
    }
    .await;
    let status = outcome.expect_err("an overflowing sum answered");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(!status.message().contains("server log"), "{status}");
}

/// A swarm of unequal nodes: a fragment too big for the small node's bee is given up to a node
/// whose bees have more memory, and the query is answered as the big node alone answers it. It
/// failed RESOURCE_EXHAUSTED each time a fragment was placed on the small node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_too_big_for_a_small_node_runs_on_a_bigger_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let big = start(
        root,
        "node-big",
        &["--memory", "2GiB", "--cell-target-size", "1MiB"],
        &[],
    );
    let small = start(
        root,
        "node-small",
        &["--memory", "16MiB", "--cell-target-size", "1MiB"],
        &[],
    );
    let mut c = client(&big).await;
    run(
        &mut c,
        "CREATE TABLE t AS SELECT value AS k, concat(CAST(value AS VARCHAR), \
         '-padding-padding-padding') AS s FROM generate_series(1, 2000000)",
    )
    .await;
    wait_alive(&mut c, &["node-big", "node-small"]).await;
    let q = "SELECT count(*), max(l) FROM (SELECT k % 1000 AS g, length(string_agg(s, ',')) AS l \
             FROM t GROUP BY k % 1000)";
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(canonical(&run(&mut c, q).await));
    }
    assert!(small.stop());
    wait_alive(&mut c, &["node-big"]).await;
    let alone = canonical(&run(&mut c, q).await);
    assert!(
        answers.iter().all(|a| *a == alone),
        "{answers:?} vs {alone:?}"
    );
}
