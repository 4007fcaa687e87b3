//! The node runtime in real `apiary serve` processes: bees with memory budgets (spilling, budget
//! errors), queueing, heartbeats and the world view (Alive → Suspect → Dead, cleanup, graceful
//! leave, skewed clocks), system tables and the metrics endpoint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_tests::{Moto, Server, proc_status_kb};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::{StreamExt, TryStreamExt};
use tonic::Code;
use tonic::transport::Channel;

async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    server.flight_sql_client().await
}

async fn run(
    c: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let info = c.execute(sql.to_string(), None).await.map_err(status)?;
    let mut out = Vec::new();
    for ep in info.endpoint {
        let s = c.do_get(ep.ticket.unwrap()).await.map_err(status)?;
        out.extend(s.try_collect::<Vec<_>>().await.map_err(status)?);
    }
    Ok(out)
}

fn status(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    }
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name(col).unwrap().as_string::<i32>();
            (0..c.len())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sort_far_larger_than_its_bee_completes_by_spilling_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path().to_str().unwrap(),
        &[
            "--bees",
            "2",
            "--memory",
            "256MiB",
            "--scratch-dir",
            scratch.path().to_str().unwrap(),
        ],
        &[],
    );
    let mut c = client(&server).await;
    let baseline = proc_status_kb(server.pid(), "VmRSS:") * 1024;
    // About 5M rows x (8 + 32 bytes + offsets): ~250 MB of sort input for a 128 MiB bee.
    let sql = "SELECT value, md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 5000000) ORDER BY h";
    let info = c.execute(sql.to_string(), None).await.unwrap();
    let mut stream = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let mut n = 0usize;
    let mut last: Option<String> = None;
    let mut sorted = true;
    let mut saw_spill_dir = false;
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        let h = b.column(1).as_string::<i32>();
        for i in 0..h.len() {
            let v = h.value(i);
            if let Some(prev) = &last
                && prev.as_str() > v
            {
                sorted = false;
            }
            if i + 1 == h.len() {
                last = Some(v.to_string());
            }
        }
        n += b.num_rows();
        if !saw_spill_dir {
            saw_spill_dir = files_under(scratch.path()) > 0;
        }
    }
    assert_eq!(n, 5_000_000);
    assert!(sorted, "result is not sorted");
    let peak = proc_status_kb(server.pid(), "VmHWM:") * 1024;
    eprintln!(
        "spill test: bee budget 128 MiB, baseline RSS {} MiB, peak RSS {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        saw_spill_dir,
        "the query never spilled to its scratch directory"
    );
    // The input alone is ~250 MB in Arrow; sorted in memory it would peak far above this.
    assert!(
        peak < baseline + 420 * 1024 * 1024,
        "peak RSS {} MiB (baseline {} MiB) for a 128 MiB bee",
        peak >> 20,
        baseline >> 20
    );
    // The query's spill files are removed when it ends; the bee keeps its (empty) directory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(files_under(scratch.path()), 0);
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 1);
}

/// `ORDER BY … LIMIT n` whose n rows do not fit in the bee spills like the sort without a limit
/// (DataFusion's TopK, which cannot spill, failed with RESOURCE_EXHAUSTED), and answers the rows
/// the TopK of a small limit answers at both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sort_with_a_limit_larger_than_its_bee_completes_by_spilling() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path().to_str().unwrap(),
        &[
            "--bees",
            "1",
            "--memory",
            "32MiB",
            "--scratch-dir",
            scratch.path().to_str().unwrap(),
        ],
        &[],
    );
    let mut c = client(&server).await;
    // 1M rows x (8 + 32 bytes + offsets), about 50 MB, of which 800,000 are kept.
    let input = "SELECT value, md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 1000000) \
                 ORDER BY h";
    let info = c
        .execute(format!("{input} LIMIT 800000 OFFSET 10"), None)
        .await
        .unwrap();
    let mut stream = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let (mut hs, mut saw_spill) = (Vec::new(), false);
    while let Some(b) = stream.next().await {
        hs.extend(strings(&[b.unwrap()], "h"));
        saw_spill = saw_spill || files_under(scratch.path()) > 0;
    }
    assert_eq!(hs.len(), 800_000);
    assert!(hs.is_sorted(), "result is not sorted");
    assert!(saw_spill, "the sort never spilled to its scratch directory");
    // Both ends are the rows a TopK of one row finds there.
    let one = |offset: usize| format!("{input} LIMIT 1 OFFSET {offset}");
    let first = strings(&run(&mut c, &one(10)).await.unwrap(), "h");
    let last = strings(&run(&mut c, &one(800_009)).await.unwrap(), "h");
    assert_eq!((&hs[0], &hs[799_999]), (&first[0], &last[0]));
}

/// A join that works for long without emitting a row (its filter rejects every pair) stops at
/// `--query-timeout`, and the node's one bee answers the next statement. One poll of the join
/// held the thread for the whole join: 80 s (nested loop) and 120 s (hash join, equal keys)
/// past a 2 s timeout on a release build, and every statement in between timed out planning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_emits_nothing_for_long_stops_at_its_timeout_and_frees_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path().to_str().unwrap(),
        &["--bees", "1", "--query-timeout", "2s"],
        &[],
    );
    let mut c = client(&server).await;
    // The nested loop's slices are longer (a quarter batch): it builds 20,000 rows, not 200,000.
    for (build, on) in [
        (20_000, "a.value + b.value < 0"),
        (
            200_000,
            "a.value % 2 = b.value % 2 AND a.value + b.value < 0",
        ),
    ] {
        let sql = format!(
            "SELECT count(*) FROM generate_series(1, {build}) a \
             JOIN generate_series(1, 200000000) b ON {on}"
        );
        let stopped = run(&mut c, &sql).await.expect_err("the join finished");
        assert_eq!(stopped.code(), Code::DeadlineExceeded, "{on}: {stopped:?}");
        let next = run(&mut c, "SELECT 1").await;
        assert_eq!(rows(&next.unwrap_or_else(|e| panic!("{on}: {e:?}"))), 1);
    }
}

/// `--max-spill` bounds the scratch space a node's queries fill: a sort that needs more than
/// its bee's share fails with RESOURCE_EXHAUSTED naming the flag (it was INTERNAL, "I/O: … the
/// spilling process has exceeded the allowable limit", at DataFusion's 100 GiB per bee), its
/// files are removed, and the node answers the next query. `0` turns spilling off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_needs_more_spill_space_than_the_node_allows_is_refused_and_cleaned_up() {
    // About 1M rows x (8 + 32 bytes + offsets): ~50 MB of sort input for a 16 MiB bee.
    let sql = "SELECT value, md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 1000000) ORDER BY h";
    for (limit, says) in [
        ("2MiB", "--max-spill divided among its bees"),
        ("0", "spilling is off"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let server = Server::start(
            dir.path().to_str().unwrap(),
            &[
                "--bees",
                "1",
                "--memory",
                "16MiB",
                "--max-spill",
                limit,
                "--scratch-dir",
                scratch.path().to_str().unwrap(),
            ],
            &[],
        );
        let mut c = client(&server).await;
        let refused = run(&mut c, sql)
            .await
            .expect_err("the sort fit its spill limit");
        assert_eq!(
            refused.code(),
            Code::ResourceExhausted,
            "{limit}: {refused:?}"
        );
        assert!(
            refused.message().contains(says),
            "{limit}: {}",
            refused.message()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(files_under(scratch.path()), 0, "spill files left behind");
        assert_eq!(rows(&run(&mut c, "SELECT 1").await.unwrap()), 1);
    }
}

/// A client that stops reading a large result: its query is stopped (by `--result-idle-timeout`,
/// or by `--query-timeout` with no idle bound) and frees its bee for the next query; the reader
/// then gets DEADLINE_EXCEEDED naming the bound. The stream used to be checked only when polled,
/// so a reader that stopped held its bee for as long as it kept the connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_frees_its_bee_at_its_bound() {
    for (flags, bound) in [
        (
            ["--result-idle-timeout", "2s", "--query-timeout", "30m"],
            "--result-idle-timeout",
        ),
        (
            ["--result-idle-timeout", "0s", "--query-timeout", "3s"],
            "timed out after 3s",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--bees", "1"];
        args.extend(flags);
        let server = Server::start(dir.path().to_str().unwrap(), &args, &[]);
        let mut reader = client(&server).await;
        let info = reader
            .execute(
                "SELECT value, repeat('x', 100) AS s FROM generate_series(1, 50000000)".to_string(),
                None,
            )
            .await
            .unwrap();
        let mut stream = reader
            .do_get(info.endpoint[0].ticket.clone().unwrap())
            .await
            .unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        // The only bee is the reader's until its bound stops its query.
        let mut other = client(&server).await;
        let answered = tokio::time::timeout(Duration::from_secs(120), run(&mut other, "SELECT 1"))
            .await
            .expect("the next query never got the bee");
        assert_eq!(rows(&answered.unwrap()), 1);
        let mut end = None;
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                end = Some(status(e));
                break;
            }
        }
        let end = end.expect("the stopped result ended without an error");
        assert_eq!(end.code(), Code::DeadlineExceeded, "{end}");
        assert!(end.message().contains(bound), "{}", end.message());
    }
}

/// Files (not directories) anywhere under `dir`.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => files_under(&e.path()),
                    Ok(_) => 1,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_cannot_spill_fails_with_the_budget_while_another_bee_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path().to_str().unwrap(),
        &["--bees", "2", "--memory", "128MiB"],
        &[],
    );
    let mut a = client(&server).await;
    let mut b = client(&server).await;
    // One group collecting every value: its accumulator cannot spill.
    let hog = apiary_runtime::executor::spawn(async move {
        run(
            &mut a,
            "SELECT cardinality(array_agg(md5(CAST(value AS VARCHAR)))) FROM generate_series(1, 6000000)",
        )
        .await
    });
    let fine = apiary_runtime::executor::spawn(async move {
        run(
            &mut b,
            "SELECT count(*) FROM generate_series(1, 30000000) WHERE value % 3 = 0",
        )
        .await
    });
    let err = hog.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("bee's budget of 64.0 MiB"),
        "{}",
        err.message()
    );
    let ok = fine.await.unwrap().unwrap();
    assert_eq!(
        ok[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        10_000_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_queries_than_bees_queue_and_overflow_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path().to_str().unwrap(),
        &["--bees", "1", "--queue-depth", "2"],
        &[],
    );
    let slow = "SELECT count(*) FROM generate_series(1, 80000000) WHERE value % 7 = 1";
    // Three queries for one bee: one runs, two wait, all complete.
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut c = client(&server).await;
        tasks.push(apiary_runtime::executor::spawn(async move {
            run(&mut c, slow).await
        }));
    }
    // While they run, the queue is full: one more is refused, retryably.
    let mut probe = client(&server).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = None;
    while Instant::now() < deadline {
        let load = run(&mut probe, "SELECT queued FROM system.colony.temperature").await;
        let queued = load.ok().map(|b| {
            b[0].column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        });
        if queued == Some(2) {
            refused = Some(run(&mut probe, slow).await.unwrap_err());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the queue never filled");
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(refused.message().contains("retry"), "{}", refused.message());
    for t in tasks {
        let b = t.await.unwrap().unwrap();
        assert_eq!(rows(&b), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_and_metrics_show_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path().to_str().unwrap(),
        &[
            "--bees",
            "3",
            "--memory",
            "300MiB",
            "--node-id",
            "worker-1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "200ms",
        ],
        &[],
    );
    let mut c = client(&server).await;
    let node = run(
        &mut c,
        "SELECT node_id, bees, memory_budget, bee_memory_budget FROM system.runtime.node",
    )
    .await
    .unwrap();
    assert_eq!(strings(&node, "node_id"), vec!["worker-1"]);
    assert_eq!(
        node[0]
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        3
    );
    assert_eq!(
        node[0]
            .column(3)
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(0),
        100 << 20
    );
    let bees = run(
        &mut c,
        "SELECT bee_id, state, query_id FROM system.runtime.bees ORDER BY bee_id",
    )
    .await
    .unwrap();
    assert_eq!(rows(&bees), 3);
    // The query reading system.runtime.queries sees itself running in a bee.
    let q = run(
        &mut c,
        "SELECT state, sql, bee_id FROM system.runtime.queries",
    )
    .await
    .unwrap();
    assert!(
        strings(&q, "sql")
            .iter()
            .any(|s| s.contains("system.runtime.queries"))
    );
    assert!(strings(&q, "state").iter().all(|s| s == "running"));
    // DESCRIBE gives a system table's columns, as it does a frame's.
    let d = run(&mut c, "DESCRIBE system.runtime.queries")
        .await
        .unwrap();
    let columns = strings(&d, "col_name");
    assert!(
        ["query_id", "state", "sql", "bee_id"]
            .iter()
            .all(|c| columns.iter().any(|n| n == c)),
        "{columns:?}"
    );
    // A system table that does not exist is NOT_FOUND, as a frame is.
    for sql in [
        "DESCRIBE system.runtime.nope",
        "SELECT * FROM system.runtime.nope",
    ] {
        let err = run(&mut c, sql).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{sql}: {err}");
    }
    let t = run(&mut c, "SELECT value, band FROM system.colony.temperature")
        .await
        .unwrap();
    assert_eq!(rows(&t), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let swarm = run(
        &mut c,
        "SELECT node_id, state, is_self FROM system.swarm.nodes",
    )
    .await
    .unwrap();
    assert_eq!(strings(&swarm, "node_id"), vec!["worker-1"]);
    assert_eq!(strings(&swarm, "state"), vec!["alive"]);
    // System tables are read-only.
    let err = run(&mut c, "SELECT 1").await.map(|_| ());
    assert!(err.is_ok());
    let err = c
        .execute_update(
            "INSERT INTO system.runtime.bees VALUES (9, 'x', NULL, 0, 0)".into(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("system.runtime.bees is a system table: it is read-only"),
        "{err}"
    );

    let metrics = server.metrics_addr();
    let get_from = |host: &str, path: &str| {
        let mut s = TcpStream::connect(&metrics).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let get = |path: &str| get_from("localhost:9090", path);
    // On loopback only requests for a loopback host are answered: a page from another site
    // reaching it through DNS rebinding names its own host.
    for host in ["evil.example.com", "evil.example.com:9090", "10.0.0.1"] {
        let r = get_from(host, "/status.json");
        assert!(r.starts_with("HTTP/1.1 421"), "{host}: {r}");
    }
    for host in ["127.0.0.1:1", "[::1]:2", "LocalHost"] {
        let r = get_from(host, "/healthz");
        assert!(r.starts_with("HTTP/1.1 200"), "{host}: {r}");
    }
    let m = get("/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for name in [
        "apiary_bees 3",
        "apiary_bees_busy",
        "apiary_memory_budget_bytes 314572800",
        "apiary_temperature ",
        "apiary_queue_depth",
        "apiary_swarm_nodes{state=\"alive\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    let h = get("/healthz");
    assert!(
        h.starts_with("HTTP/1.1 200") && h.contains("\"node_id\":\"worker-1\""),
        "{h}"
    );
}

fn swarm_args(id: &str) -> Vec<String> {
    [
        "--node-id",
        id,
        "--heartbeat-interval",
        "200ms",
        "--suspect-after",
        "3",
        "--dead-after",
        "6",
        "--dead-grace",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(root: &str, id: &str, env: &[(String, String)]) -> Server {
    let args = swarm_args(id);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Server::start(root, &args, env)
}

/// (node_id, state) pairs as `observer` sees the swarm.
async fn view(observer: &mut FlightSqlServiceClient<Channel>) -> Vec<(String, String)> {
    let b = run(
        observer,
        "SELECT node_id, state FROM system.swarm.nodes ORDER BY node_id",
    )
    .await
    .unwrap();
    strings(&b, "node_id")
        .into_iter()
        .zip(strings(&b, "state"))
        .collect()
}

async fn wait_view(
    observer: &mut FlightSqlServiceClient<Channel>,
    want: impl Fn(&[(String, String)]) -> bool,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if want(&view(observer).await) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

fn state_of(v: &[(String, String)], id: &str) -> Option<String> {
    v.iter().find(|(n, _)| n == id).map(|(_, s)| s.clone())
}

async fn swarm_lifecycle(
    root: &str,
    env: Vec<(String, String)>,
    heartbeat_exists: impl Fn(&str) -> bool,
) {
    let interval = Duration::from_millis(200);
    let a = start(root, "node-a", &env);
    let b = start(root, "node-b", &env);
    let c = start(root, "node-c", &env);
    let mut skewed_env = env.clone();
    skewed_env.push(("APIARY_FAULT_CLOCK_SKEW_SECS".into(), "-600".into()));
    let d = start(root, "node-skew", &skewed_env);
    let mut obs = client(&a).await;

    // Everyone lists everyone within a few intervals of the last start. Two intervals is the
    // figure on a quiet machine (printed below); the bound leaves room for a loaded CI host where
    // every moto request waits behind one lock while a dozen other tests run.
    let all = ["node-a", "node-b", "node-c", "node-skew"];
    let found = wait_view(
        &mut obs,
        |v| {
            all.iter()
                .all(|id| state_of(v, id).as_deref() == Some("alive"))
        },
        interval * 2 + Duration::from_secs(5),
    )
    .await;
    assert!(
        found.is_some(),
        "swarm never assembled: {:?}",
        view(&mut obs).await
    );
    eprintln!("swarm assembled {:?} after the last start", found.unwrap());
    for s in [&b, &c, &d] {
        let mut other = client(s).await;
        assert!(
            wait_view(&mut other, |v| v.len() == 4, Duration::from_secs(3))
                .await
                .is_some(),
            "a node did not see the others"
        );
    }

    // A skewed clock does not make a node look dead.
    let skew = run(
        &mut obs,
        "SELECT written_at FROM system.swarm.nodes WHERE node_id = 'node-skew'",
    )
    .await
    .unwrap();
    let written: chrono::DateTime<chrono::Utc> = strings(&skew, "written_at")[0].parse().unwrap();
    assert!(chrono::Utc::now() - written > chrono::Duration::minutes(9));

    // kill -9: Suspect after ~3 intervals, Dead after ~6, heartbeat removed after the grace.
    // The waits leave room for a loaded CI host (as above); the protocol's own bound is the
    // "not too early" assertion below.
    let slack = Duration::from_secs(5);
    c.kill();
    let killed = Instant::now();
    let suspect = wait_view(
        &mut obs,
        |v| state_of(v, "node-c").as_deref() == Some("suspect"),
        interval * 8 + slack,
    )
    .await
    .expect("node-c never became suspect");
    let dead = wait_view(
        &mut obs,
        |v| state_of(v, "node-c").as_deref() == Some("dead"),
        interval * 12 + slack,
    )
    .await
    .expect("node-c never became dead");
    let gone = wait_view(
        &mut obs,
        |v| state_of(v, "node-c").is_none(),
        interval * 12 + slack,
    )
    .await
    .expect("node-c's heartbeat was never cleaned up");
    let since_kill = killed.elapsed();
    eprintln!(
        "killed node: suspect after {:?}, dead after {:?} more, removed after {:?} more (total {:?}; interval {:?})",
        suspect, dead, gone, since_kill, interval
    );
    assert!(!heartbeat_exists("node-c"));
    assert!(
        since_kill >= interval * 6,
        "declared dead too early: {since_kill:?}"
    );
    assert_eq!(
        state_of(&view(&mut obs).await, "node-skew").as_deref(),
        Some("alive")
    );

    // A graceful stop leaves at once.
    assert!(heartbeat_exists("node-b"));
    assert!(b.stop());
    assert!(
        !heartbeat_exists("node-b"),
        "graceful stop left its heartbeat"
    );
    let left = wait_view(&mut obs, |v| state_of(v, "node-b").is_none(), interval * 3)
        .await
        .expect("node-b still listed after a graceful stop");
    eprintln!("graceful stop: gone from the view after {left:?}");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_on_a_local_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    swarm_lifecycle(dir.path().to_str().unwrap(), vec![], move |id| {
        root.join(format!("_apiary/nodes/{id}.json")).exists()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_on_s3() {
    let moto = Arc::new(Moto::start("swarm"));
    let url = moto.url("root");
    let storage = apiary_storage::Storage::open(
        &url,
        &apiary_storage::S3Options {
            endpoint: Some(moto.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            session_token: None,
            allow_http: true,
        },
    )
    .unwrap();
    swarm_lifecycle(&url, moto.env(), move |id| {
        let key = apiary_storage::paths::heartbeat(id);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(storage.exists(&key))
                .unwrap()
        })
    })
    .await;
}
