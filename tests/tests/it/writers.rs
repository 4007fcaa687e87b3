//! Writers as real OS processes: concurrent appends from several `apiary` processes never lose a
//! commit, and a writer killed between writing cells and committing leaves the frame as it was.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use apiary_tests::{Moto, apiary_bin, files_under, sql, sql_err, stderr_reader, wait_for_line};

const WRITERS: usize = 4;
const APPENDS: usize = 25;

/// Start `WRITERS` processes that each run `APPENDS` single-row INSERTs, wait for all.
fn concurrent_appends(storage: &str, env: &[(String, String)]) {
    sql(
        storage,
        env,
        "CREATE TABLE hits (writer INT NOT NULL, n INT NOT NULL)",
    );
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            let statements: Vec<String> = (0..APPENDS)
                .map(|n| format!("INSERT INTO hits VALUES ({w}, {n})"))
                .collect();
            let mut cmd = std::process::Command::new(apiary_bin());
            cmd.args(["sql", "--storage", storage, &statements.join(";\n")])
                .env("APIARY_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.spawn().expect("spawn writer")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total = WRITERS * APPENDS;
    let got = sql(
        storage,
        env,
        "SELECT count(*) AS c, count(DISTINCT writer * 1000 + n) AS d FROM hits",
    );
    assert_eq!(got.trim(), format!("c,d\n{total},{total}"), "rows lost");
    // One commit per append, versions 1..=total after the create (version 0), no gaps.
    let describe = sql(storage, env, "DESCRIBE hits");
    assert!(
        describe.contains(&format!("Version,{total},")),
        "unexpected version: {describe}"
    );
}

fn delta_versions(table_dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = files_under(&table_dir.join("_delta_log"))
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn four_processes_append_to_one_frame_on_a_local_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    concurrent_appends(root, &[]);
    let versions = delta_versions(&dir.path().join("default/default/hits"));
    let expected: Vec<u64> = (0..=(WRITERS * APPENDS) as u64).collect();
    assert_eq!(versions, expected, "Delta log versions are not contiguous");
}

#[test]
fn four_processes_append_to_one_frame_on_s3() {
    let moto = Moto::start("writers");
    concurrent_appends(&moto.url("root"), &moto.env());
}

/// Run `statement` in an `apiary sql` process that pauses before its commit (fault
/// injection), and kill -9 it there.
fn kill_at_commit(storage: &str, env: &[(String, String)], statement: &str) {
    let mut child = std::process::Command::new(apiary_bin())
        .args(["sql", "--storage", storage, statement])
        .envs(env.iter().cloned())
        .env("APIARY_FAULT_PAUSE_BEFORE_COMMIT_MS", "60000")
        .env("APIARY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = stderr_reader(&mut child);
    let line = wait_for_line(&mut err, "pausing before commit", Duration::from_secs(60));
    assert!(line.is_some(), "{statement:?} never reached its commit");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Kill -9 a writer after it has written cells but before it commits.
fn killed_writer_leaves_frame_unchanged(
    storage: &str,
    env: &[(String, String)],
    local_dir: Option<&Path>,
) {
    sql(
        storage,
        env,
        "CREATE TABLE t (id BIGINT NOT NULL, pad VARCHAR)",
    );
    sql(
        storage,
        env,
        "INSERT INTO t SELECT value, 'before' FROM generate_series(1, 1000)",
    );
    kill_at_commit(
        storage,
        env,
        "INSERT INTO t SELECT value, repeat('x', 100) FROM generate_series(1, 200000)",
    );

    if let Some(dir) = local_dir {
        // The cells were written: more Parquet files exist than the log references.
        let parquet = files_under(&dir.join("default/default/t"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count();
        assert!(
            parquet >= 2,
            "expected orphaned cells, found {parquet} parquet files"
        );
    }
    let got = sql(storage, env, "SELECT count(*) AS c, min(pad) AS p FROM t");
    assert_eq!(got.trim(), "c,p\n1000,before");
    // And the frame still takes writes.
    sql(storage, env, "INSERT INTO t VALUES (5000, 'after')");
    let got = sql(storage, env, "SELECT count(*) AS c FROM t");
    assert_eq!(got.trim(), "c\n1001");
}

#[test]
fn killed_writer_on_a_local_root() {
    let dir = tempfile::tempdir().unwrap();
    killed_writer_leaves_frame_unchanged(dir.path().to_str().unwrap(), &[], Some(dir.path()));
}

#[test]
fn killed_writer_on_s3() {
    let moto = Moto::start("crash");
    killed_writer_leaves_frame_unchanged(&moto.url("root"), &moto.env(), None);
}

/// Kill -9 a `CREATE TABLE … AS SELECT` after it has written its cells but before its one
/// commit: no frame is left (it used to be an empty frame the statement never reported), the
/// name opens as NOT_FOUND, and once dropped it is created again with its rows.
fn killed_ctas_leaves_no_frame(storage: &str, env: &[(String, String)], local_dir: Option<&Path>) {
    let ctas = "CREATE TABLE t AS SELECT value AS id, repeat('x', 100) AS pad \
                FROM generate_series(1, 200000)";
    kill_at_commit(storage, env, ctas);

    if let Some(dir) = local_dir {
        let frame = dir.join("default/default/t");
        let parquet = files_under(&frame)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count();
        assert!(parquet >= 1, "the CTAS wrote no cells before its commit");
        assert_eq!(
            delta_versions(&frame),
            Vec::<u64>::new(),
            "a commit was written"
        );
    }
    let err = sql_err(storage, env, "SELECT count(*) FROM t");
    assert!(err.contains("creation was interrupted"), "{err}");
    // Nor is it listed: a client is shown only tables it can read.
    let shown = sql(storage, env, "SHOW TABLES");
    assert_eq!(shown.trim(), "hive,box,frame", "{shown}");
    // The name stays reserved for a minute (the writer may be alive); DROP TABLE frees it.
    let err = sql_err(storage, env, ctas);
    assert!(err.contains("being created by another statement"), "{err}");
    sql(storage, env, "DROP TABLE t");
    sql(storage, env, ctas);
    let got = sql(
        storage,
        env,
        "SELECT count(*) AS c, count(DISTINCT id) AS d FROM t",
    );
    assert_eq!(got.trim(), "c,d\n200000,200000");
    let shown = sql(storage, env, "SHOW TABLES");
    assert_eq!(shown.trim(), "hive,box,frame\ndefault,default,t", "{shown}");
}

#[test]
fn killed_ctas_on_a_local_root() {
    let dir = tempfile::tempdir().unwrap();
    killed_ctas_leaves_no_frame(dir.path().to_str().unwrap(), &[], Some(dir.path()));
}

#[test]
fn killed_ctas_on_s3() {
    let moto = Moto::start("ctas-crash");
    killed_ctas_leaves_no_frame(&moto.url("root"), &moto.env(), None);
}

/// Chaos: a server taking appends from three clients is killed with SIGKILL at varied moments,
/// six times over, and restarted on the same root. Every append a client saw acknowledged is
/// there in full afterwards, no append is ever visible in part (not even to a reader running
/// meanwhile), and the frame keeps taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_killed_again_and_again_lose_no_acknowledged_row() {
    use apiary_tests::Server;
    use futures::TryStreamExt;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    const ROWS: i64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root = root.to_str().unwrap();
    let acked: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    // Kill delays in ms, fixed so that a failure can be replayed.
    let delays = [350u64, 900, 150, 1300, 600, 1000];
    let mut next_batch = 0i64;
    for (round, delay) in delays.iter().enumerate() {
        let server = Server::start(root, &[], &[]);
        let mut admin = server.flight_sql_client().await;
        if round == 0 {
            admin
                .execute_update("CREATE TABLE t (batch BIGINT, i BIGINT)".into(), None)
                .await
                .unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..3 {
            let first = next_batch + w * 10_000;
            let (url, acked, stop) = (server.url(), acked.clone(), stop.clone());
            tasks.push(apiary_runtime::executor::spawn(async move {
                let ch = tonic::transport::Channel::from_shared(url).unwrap().connect().await;
                let Ok(ch) = ch else { return };
                let mut c = arrow_flight::sql::client::FlightSqlServiceClient::new(ch);
                let mut b = first;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sql = format!(
                        "INSERT INTO t SELECT {b} AS batch, value AS i FROM generate_series(1, {ROWS})"
                    );
                    match c.execute_update(sql, None).await {
                        Ok(n) => {
                            assert_eq!(n, ROWS);
                            acked.lock().unwrap().insert(b);
                        }
                        Err(_) => return, // the server died under us
                    }
                    b += 1;
                }
            }));
        }
        // A reader meanwhile: every batch it sees is whole.
        let (url, stop_r) = (server.url(), stop.clone());
        let reader = apiary_runtime::executor::spawn(async move {
            let Ok(ch) = tonic::transport::Channel::from_shared(url)
                .unwrap()
                .connect()
                .await
            else {
                return 0;
            };
            let mut c = arrow_flight::sql::client::FlightSqlServiceClient::new(ch);
            let mut checks = 0;
            while !stop_r.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(info) = c
                    .execute(
                        "SELECT count(*) AS n FROM (SELECT batch FROM t GROUP BY batch \
                         HAVING count(*) <> 500) AS partial"
                            .into(),
                        None,
                    )
                    .await
                else {
                    return checks;
                };
                let Ok(stream) = c.do_get(info.endpoint[0].ticket.clone().unwrap()).await else {
                    return checks;
                };
                let Ok(batches) = stream.try_collect::<Vec<_>>().await else {
                    return checks;
                };
                let n =
                    arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap();
                assert_eq!(n, "0", "a partial append was visible");
                checks += 1;
            }
            checks
        });
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        server.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        reader.await.unwrap();
        next_batch += 100_000;
    }
    // After the last kill: everything acknowledged is there, in full; nothing is there in part.
    let server = Server::start(root, &[], &[]);
    let mut c = server.flight_sql_client().await;
    let info = c
        .execute(
            "SELECT batch, count(*) AS n FROM t GROUP BY batch ORDER BY batch".into(),
            None,
        )
        .await
        .unwrap();
    let batches = apiary_tests::fetch(&mut c, &info).await;
    let mut present = BTreeSet::new();
    for b in &batches {
        use arrow::array::AsArray;
        let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let ns = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            assert_eq!(ns.value(r), ROWS, "batch {} is partial", ids.value(r));
            present.insert(ids.value(r));
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 6,
        "too few appends were acknowledged to mean anything: {}",
        acked.len()
    );
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged appends lost: {lost:?}");
    // (Appends committed but killed before their acknowledgement may be present unacknowledged.)
    c.execute_update("INSERT INTO t VALUES (-1, 1)".into(), None)
        .await
        .unwrap();
}
