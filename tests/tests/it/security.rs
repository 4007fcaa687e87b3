//! Hostile input is normal input: each test is named after a finding of the security review
//! (issue 15) and fails on the tree that had it.

use std::time::Duration;

use apiary_tests::Server;
use arrow::array::{Array, AsArray};
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::Code;
use tonic::transport::Channel;

async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new_from_inner(
        arrow_flight::flight_service_client::FlightServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
    )
}

fn code(e: arrow_flight::error::FlightError) -> (Code, String) {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

/// The first value of the first column of a one-row result.
async fn scalar(
    c: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<String, (Code, String)> {
    let info = c.execute(sql.to_string(), None).await.map_err(code)?;
    let mut out = None;
    for ep in info.endpoint {
        let batches: Vec<_> = c
            .do_get(ep.ticket.unwrap())
            .await
            .map_err(code)?
            .try_collect()
            .await
            .map_err(code)?;
        let b = &batches[0];
        out = Some(arrow::util::display::array_value_to_string(b.column(0), 0).unwrap());
    }
    Ok(out.unwrap_or_default())
}

/// Every value of a result, as text, one per line.
async fn all_text(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let info = c.execute(sql.to_string(), None).await.unwrap();
    let mut out = String::new();
    for ep in info.endpoint {
        let batches: Vec<arrow::record_batch::RecordBatch> = c
            .do_get(ep.ticket.unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for b in &batches {
            for col in b.columns() {
                for i in 0..b.num_rows() {
                    out.push_str(&arrow::util::display::array_value_to_string(col, i).unwrap());
                    out.push('\n');
                }
            }
        }
    }
    out
}

async fn update(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<i64, (Code, String)> {
    c.execute_update(sql.to_string(), None).await.map_err(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cannot_write_files_anywhere_not_even_through_explain_analyze() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = Server::start(root.to_str().unwrap(), &[], &[]);
    let mut c = client(&server).await;
    update(&mut c, "CREATE TABLE t AS SELECT 1 AS a")
        .await
        .unwrap();
    let targets = [
        dir.path().join("outside.csv").display().to_string(),
        root.join("_apiary")
            .join("planted.csv")
            .display()
            .to_string(),
        root.join("default/default/t/_delta_log/00000000000000000099.json")
            .display()
            .to_string(),
    ];
    for target in &targets {
        for sql in [
            format!("COPY (SELECT 1 AS a) TO '{target}' STORED AS CSV"),
            format!("EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{target}' STORED AS CSV"),
            format!("EXPLAIN /*c*/ ANALYZE COPY (SELECT 1 AS a) TO '{target}' STORED AS CSV"),
            format!("explain\nanalyze copy (select * from t) to '{target}' stored as csv"),
        ] {
            let as_query = scalar(&mut c, &sql).await.unwrap_err();
            let as_update = update(&mut c, &sql).await.unwrap_err();
            for (got, msg) in [as_query, as_update] {
                assert!(
                    matches!(got, Code::PermissionDenied | Code::Unimplemented),
                    "{sql}: {got:?} {msg}"
                );
            }
            assert!(
                !std::path::Path::new(target).exists(),
                "{sql} wrote {target}"
            );
        }
    }
    // Writes nested in a query or EXPLAIN ANALYZE are refused too; frames still take INSERT.
    // Row-level changes too: EXPLAIN ANALYZE would run them, as a query or as an update.
    for sql in [
        "EXPLAIN ANALYZE INSERT INTO t VALUES (2)",
        "EXPLAIN ANALYZE DELETE FROM t",
        "EXPLAIN ANALYZE UPDATE t SET a = 5",
        "EXPLAIN ANALYZE TRUNCATE TABLE t",
        "EXPLAIN ANALYZE MERGE INTO t USING (SELECT 9 AS a) s ON t.a = s.a \
         WHEN NOT MATCHED THEN INSERT (a) VALUES (s.a)",
    ] {
        let (got, msg) = scalar(&mut c, sql).await.unwrap_err();
        assert!(
            matches!(got, Code::PermissionDenied | Code::Unimplemented),
            "{sql}: {got:?} {msg}"
        );
        let (got, msg) = update(&mut c, sql).await.unwrap_err();
        assert!(
            matches!(got, Code::PermissionDenied | Code::Unimplemented),
            "{sql} as an update: {got:?} {msg}"
        );
    }
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM t").await.unwrap(), "1");
    assert_eq!(update(&mut c, "INSERT INTO t VALUES (3)").await.unwrap(), 1);
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM t").await.unwrap(), "2");
    for (sql, want) in [
        (
            "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
            Code::PermissionDenied,
        ),
        (
            "SET datafusion.catalog.information_schema = true",
            Code::PermissionDenied,
        ),
        ("SET ROLE admin", Code::Unimplemented),
        ("PREPARE p AS SELECT 1", Code::Unimplemented),
    ] {
        assert_eq!(update(&mut c, sql).await.unwrap_err().0, want, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_kilobyte_expression_does_not_abort_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("root").to_str().unwrap(), &[], &[]);
    let mut c = client(&server).await;
    // 2,000 terms: the depth BI tools reach with OR chains; it plans on a CPU-runtime thread.
    let terms = vec!["1"; 2000].join("+");
    assert_eq!(
        scalar(&mut c, &format!("SELECT {terms}")).await.unwrap(),
        "2000"
    );
    let ors: Vec<String> = (0..2000).map(|i| format!("value = {i}")).collect();
    let sql = format!(
        "SELECT count(*) FROM generate_series(1, 5000) WHERE {}",
        ors.join(" OR ")
    );
    assert_eq!(scalar(&mut c, &sql).await.unwrap(), "1999");
    // Deeper than the limit: refused, named, before planning.
    let deep = vec!["1"; 3000].join("+");
    let (got, msg) = scalar(&mut c, &format!("SELECT {deep}")).await.unwrap_err();
    assert_eq!(got, Code::InvalidArgument);
    assert!(msg.contains("--max-sql-depth"), "{msg}");
    // A view stores such a text; listing it with its schema plans it (off the IO runtime).
    update(&mut c, &format!("CREATE VIEW deep AS SELECT {terms} AS x"))
        .await
        .unwrap();
    let info = c
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: Some("deep".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let batches = apiary_tests::fetch(&mut c, &info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    // Still serving.
    assert_eq!(scalar(&mut c, "SELECT 41 + 1").await.unwrap(), "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_or_long_sql_texts_are_refused_or_lexed_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("root").to_str().unwrap(), &[], &[]);
    let mut c = client(&server).await;
    // 8 MiB of spaces once held a core forever and took 1.7 GB.
    let spaces = format!("SELECT 1{}", " ".repeat(8 << 20));
    let (got, msg) = scalar(&mut c, &spaces).await.unwrap_err();
    assert_eq!(got, Code::InvalidArgument);
    assert!(msg.contains("--max-sql-bytes"), "{msg}");
    // An IN list of 8,000 values on one line (quadratic lexing made it take seconds).
    let list: Vec<String> = (0..8000).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT count(*) FROM generate_series(1, 10) WHERE value IN ({})",
        list.join(",")
    );
    assert_eq!(scalar(&mut c, &sql).await.unwrap(), "10");
    // Too many tokens.
    let many = format!("SELECT 1 WHERE 1 IN ({})", vec!["1"; 60_000].join(","));
    let (got, msg) = scalar(&mut c, &many).await.unwrap_err();
    assert_eq!(got, Code::InvalidArgument);
    assert!(msg.contains("--max-sql-tokens"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_patterns_neither_overflow_the_stack_nor_backtrack_for_hours() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("root").to_str().unwrap(), &[], &[]);
    let mut c = client(&server).await;
    update(&mut c, "CREATE TABLE orders AS SELECT 1 AS a")
        .await
        .unwrap();
    for pattern in [
        "%".repeat(200_000),
        format!("{}b", "%a".repeat(9)),
        "%_%_%_%_%_%_%_%_%_%_%_%_%_%_%_%_%_%_%_%x".to_string(),
    ] {
        let cmd = CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some(pattern.clone()),
            table_name_filter_pattern: Some(pattern.clone()),
            table_types: vec![],
            include_schema: false,
        };
        let info = c.get_tables(cmd).await.unwrap();
        let batches = apiary_tests::fetch(&mut c, &info).await;
        let names: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let a = b.column_by_name("table_name").unwrap().as_string::<i32>();
                (0..a.len())
                    .map(|i| a.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        if pattern.starts_with("%%") {
            assert!(names.contains(&"orders".to_string()), "{names:?}");
        } else {
            assert!(!names.contains(&"orders".to_string()), "{names:?}");
        }
    }
    assert_eq!(scalar(&mut c, "SELECT 1").await.unwrap(), "1");
}

use super::flight_sql::{basic, handshake_with, hash, select_one_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_users_the_token_key_never_comes_from_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root = root.to_str().unwrap();
    let home = tempfile::tempdir().unwrap();
    let env = vec![("HOME".to_string(), home.path().display().to_string())];
    let user = format!("alice:{}", hash("pw"));
    // An open node on the same root puts a key into the bucket and mints tokens for any name.
    let open = Server::start(root, &[], &[]);
    let forged = handshake_with(&open.url(), &basic("alice", "anything", true))
        .await
        .unwrap();
    assert!(std::path::Path::new(root).join("_apiary/secret").exists());
    drop(open);
    let guarded = Server::start(root, &["--user", &user], &env);
    let err = select_one_with(&guarded.url(), &forged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Its own key is a 0600 file in HOME, not the bucket's.
    let key = home.path().join(".config/apiary/token.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bucket_key = std::fs::read(std::path::Path::new(root).join("_apiary/secret")).unwrap();
    assert_ne!(std::fs::read(&key).unwrap(), bucket_key);
    let good = handshake_with(&guarded.url(), &basic("alice", "pw", true))
        .await
        .unwrap();
    select_one_with(&guarded.url(), &good).await.unwrap();
    // A key file others can read is refused at start.
    let loose = dir.path().join("loose.key");
    std::fs::write(&loose, "a key of more than sixteen characters").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = apiary_tests::apiary(
        &[
            "check-config",
            "--storage",
            root,
            "--user",
            &user,
            "--token-secret-file",
            loose.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_read_and_see_only_their_own_queries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let users = [
        format!("boss:{}:admin", hash("pw")),
        format!("rita:{}:reader", hash("pw")),
    ];
    let server = Server::start(
        root.to_str().unwrap(),
        &[
            "--user",
            &users[0],
            "--user",
            &users[1],
            "--token-secret",
            "a shared swarm secret of some length",
        ],
        &[],
    );
    let login = |u: &'static str| {
        let url = server.url();
        async move {
            let mut c = client_of(&url).await;
            c.handshake(u, "pw").await.unwrap();
            c
        }
    };
    let mut boss = login("boss").await;
    let mut rita = login("rita").await;
    update(&mut boss, "CREATE TABLE t AS SELECT 1 AS a")
        .await
        .unwrap();
    assert_eq!(
        scalar(&mut rita, "SELECT count(*) FROM t").await.unwrap(),
        "1"
    );
    for sql in [
        "INSERT INTO t VALUES (2)",
        "CREATE TABLE u AS SELECT 1 AS a",
        "DROP TABLE t",
    ] {
        let (got, msg) = update(&mut rita, sql).await.unwrap_err();
        assert_eq!(got, Code::PermissionDenied, "{sql}: {msg}");
    }
    update(&mut rita, "USE default.default").await.unwrap();
    // Plans and DESCRIBE name storage relative to the root for a reader; an admin sees it whole.
    let server_dirs = dir.path().display().to_string();
    for sql in [
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN /* c */ ANALYZE SELECT * FROM t",
        "DESCRIBE t",
    ] {
        let seen = all_text(&mut rita, sql).await;
        assert!(
            !seen.contains(server_dirs.trim_start_matches('/')),
            "{sql}: {seen}"
        );
        assert!(seen.contains("default/default/t"), "{sql}: {seen}");
    }
    assert!(
        all_text(&mut boss, "DESCRIBE t")
            .await
            .contains(&server_dirs)
    );
    // A partition column whose name would be a path is refused.
    let (got, msg) = update(
        &mut boss,
        "CREATE TABLE p (x INT, \"a/b\" INT) PARTITIONED BY (\"a/b\")",
    )
    .await
    .unwrap_err();
    assert_eq!(got, Code::InvalidArgument, "{msg}");
    // A slow query of the admin's is invisible to the reader, visible to the admin.
    let url = server.url();
    let _slow = apiary_runtime::executor::spawn(async move {
        let mut c = client_of(&url).await;
        c.handshake("boss", "pw").await.unwrap();
        let _ = scalar(
            &mut c,
            "SELECT count(*) FROM generate_series(1, 3000000000) WHERE value % 7 = 1",
        )
        .await;
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mine = scalar(&mut boss, "SELECT count(*) FROM system.runtime.queries WHERE sql LIKE '%3000000000%' AND sql NOT LIKE '%system.runtime%'").await.unwrap();
        if mine != "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow query never showed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen_by_reader = scalar(
        &mut rita,
        "SELECT count(*) FROM system.runtime.queries WHERE user <> 'rita'",
    )
    .await
    .unwrap();
    assert_eq!(seen_by_reader, "0");
}

async fn client_of(url: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

#[test]
fn the_status_page_stays_on_loopback_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = apiary_tests::apiary(
        &[
            "serve",
            "--storage",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-public"));
}

/// DoPut a 1000-row batch into `table` with `if_exists`, its last body cut to a third: the
/// status the server answers.
async fn truncated_ingest(server: &Server, table: &str, if_exists: i32) -> tonic::Status {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::sql::{
        CommandStatementIngest, ProstMessageExt, TableDefinitionOptions, TableNotExistOption,
    };
    use prost::Message;
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![(
        "v",
        std::sync::Arc::new(arrow::array::Int64Array::from(
            (0..1000).collect::<Vec<i64>>(),
        )) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let mut messages: Vec<arrow_flight::FlightData> = FlightDataEncoderBuilder::new()
        .build(futures::stream::iter(vec![Ok(batch)]))
        .try_collect()
        .await
        .unwrap();
    let cmd = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Create as i32,
            if_exists,
        }),
        table: table.into(),
        ..Default::default()
    };
    messages[0].flight_descriptor = Some(arrow_flight::FlightDescriptor::new_cmd(
        cmd.as_any().encode_to_vec(),
    ));
    let last = messages.len() - 1;
    let body = messages[last].data_body.clone();
    messages[last].data_body = body.slice(..body.len() / 3);
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    match raw.do_put(futures::stream::iter(messages)).await {
        Err(s) => s,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a truncated batch was accepted"),
                    Err(s) => break s,
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_do_put_whose_body_is_shorter_than_its_header_is_refused_not_a_crash() {
    use arrow_flight::sql::TableExistsOption;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("root").to_str().unwrap(), &[], &[]);
    let err = truncated_ingest(&server, "t", TableExistsOption::Fail as i32).await;
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "{err:?}\n{}",
        server.log()
    );
    // The server is fine, and nothing was half-written.
    let mut c = client(&server).await;
    assert_eq!(scalar(&mut c, "SELECT 1").await.unwrap(), "1");
    let (got, _) = scalar(&mut c, "SELECT count(*) FROM t").await.unwrap_err();
    assert_eq!(got, Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_with_a_new_shape_is_one_commit_and_a_failed_one_leaves_the_frame() {
    use arrow_flight::sql::TableExistsOption;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("root").to_str().unwrap(), &[], &[]);
    let mut c = client(&server).await;
    c.execute_update("CREATE TABLE r AS SELECT 7 AS a".into(), None)
        .await
        .unwrap();
    // Ingest `replace` with another shape whose stream breaks: the old frame is untouched.
    let err = truncated_ingest(&server, "r", TableExistsOption::Replace as i32).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(scalar(&mut c, "SELECT a FROM r").await.unwrap(), "7");
    // A CTAS replace whose query fails while running leaves it too.
    let bad = "CREATE OR REPLACE TABLE r AS SELECT CAST(v AS INT) AS n \
               FROM (VALUES ('1'), ('x')) AS s(v)";
    assert!(c.execute_update(bad.into(), None).await.is_err());
    assert_eq!(scalar(&mut c, "SELECT a FROM r").await.unwrap(), "7");
    // A replace that succeeds changes the shape (to one needing a newer Delta protocol) in one
    // more commit of the same table: its history goes on.
    c.execute_update(
        "CREATE OR REPLACE TABLE r AS SELECT 'x' AS b, TIMESTAMP '2020-01-02 03:04:05' AS ts"
            .into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(scalar(&mut c, "SELECT b FROM r").await.unwrap(), "x");
    assert_eq!(
        scalar(&mut c, "SELECT CAST(ts AS VARCHAR) FROM r")
            .await
            .unwrap(),
        "2020-01-02 03:04:05"
    );
    let log = dir.path().join("root/default/default/r/_delta_log");
    // Version 0 created the frame with its row (a CTAS is one commit), 1 is the replace.
    assert!(
        !log.join("00000000000000000002.json").exists(),
        "one commit"
    );
    let commit = std::fs::read_to_string(log.join("00000000000000000001.json")).unwrap();
    assert!(
        commit.contains("\"metaData\"") && commit.contains("\"remove\""),
        "{commit}"
    );
    assert!(commit.contains("timestampNtz"), "{commit}");
}

#[test]
fn with_users_a_network_address_needs_tls_or_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let user = format!("alice:{}", hash("pw"));
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "check-config".to_string(),
            "--storage".into(),
            root.display().to_string(),
            "--listen".into(),
            "0.0.0.0:0".into(),
            "--user".into(),
            user.clone(),
            "--token-secret".into(),
            "a key of more than sixteen characters".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        apiary_tests::apiary(&a, &[])
    };
    let out = run(args(&[]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without TLS") && err.contains("--insecure-auth"),
        "{err}"
    );
    let out = run(args(&["--insecure-auth"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_beyond_the_node_limit_are_shed_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path().join("root").to_str().unwrap(),
        &[
            "--max-calls",
            "1",
            "--max-message-size",
            "1MiB",
            "--fault-pause-before-commit-ms",
            "1500",
        ],
        &[],
    );
    // Slow updates (each holds its call for 1.5 s before committing) at once: over the limit of
    // one, the others are refused at once, naming the flag.
    let calls = (0..6).map(|i| {
        let url = server.url();
        async move {
            let mut c = client_of(&url).await;
            c.execute_update(format!("CREATE TABLE slow{i} AS SELECT {i} AS n"), None)
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let shed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| format!("{e}"))
        .collect();
    assert!(!shed.is_empty(), "no call was shed");
    assert!(results.iter().any(|r| r.is_ok()), "{shed:?}");
    for e in &shed {
        assert!(e.contains("--max-calls"), "{e}");
    }
    // Once the calls are done the node answers again.
    let mut c = client(&server).await;
    assert_eq!(scalar(&mut c, "SELECT 1").await.unwrap(), "1");
    // A message over --max-message-size is refused, and the node lives on.
    let big = "x".repeat(2 << 20);
    let err = c
        .execute(format!("SELECT '{big}'"), None)
        .await
        .unwrap_err();
    assert!(
        format!("{err}").contains("message length too large"),
        "{err}"
    );
    assert_eq!(scalar(&mut c, "SELECT 2").await.unwrap(), "2");
}

/// SplitMix64: a fixed-seed source of random bytes, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Random bytes, or a valid message with some bytes changed.
    fn message(&mut self, valid: &[Vec<u8>]) -> Vec<u8> {
        if self.below(2) == 0 {
            return self.bytes(256);
        }
        let mut m = valid[self.below(valid.len())].clone();
        for _ in 0..=self.below(4) {
            if !m.is_empty() {
                let i = self.below(m.len());
                m[i] = self.next() as u8;
            }
        }
        m.truncate(self.below(m.len() + 1).max(m.len() / 2));
        m
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_command_client_gets_answers_and_never_a_crash() {
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::sql::{Any, CommandStatementQuery, ProstMessageExt};
    use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path().join("root").to_str().unwrap(), &[], &[]);
    let mut c = client(&server).await;
    update(&mut c, "CREATE TABLE t AS SELECT 1 AS a")
        .await
        .unwrap();
    let info = c.execute("SELECT a FROM t".into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap().ticket.to_vec();
    let valid: Vec<Vec<u8>> = vec![
        CommandStatementQuery {
            query: "SELECT a FROM t".into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
        CommandGetTables {
            include_schema: true,
            ..Default::default()
        }
        .as_any()
        .encode_to_vec(),
        ticket,
    ];
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = FlightServiceClient::new(channel);
    let seed = 0x00A9_1A27;
    let mut rng = Rng(seed);
    let calls = 1500;
    let mut answered = 0;
    for i in 0..calls {
        let bytes = rng.message(&valid);
        let kind = rng.below(5);
        let call = async {
            match kind {
                0 => raw
                    .get_flight_info(FlightDescriptor::new_cmd(bytes))
                    .await
                    .map(|_| ()),
                1 => match raw.do_get(Ticket::new(bytes)).await {
                    Ok(r) => {
                        let mut s = r.into_inner();
                        while let Ok(Some(_)) = s.message().await {}
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                2 => {
                    let types = [
                        "CreatePreparedStatement",
                        "CancelFlightInfo",
                        "SetSessionOptions",
                        "x",
                    ];
                    let action = Action::new(types[i % types.len()], bytes);
                    raw.do_action(action).await.map(|_| ())
                }
                3 => {
                    let any = Any {
                        type_url:
                            "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementIngest"
                                .into(),
                        value: bytes.clone().into(),
                    };
                    let first = FlightData {
                        flight_descriptor: Some(FlightDescriptor::new_cmd(any.encode_to_vec())),
                        data_header: bytes.clone().into(),
                        data_body: bytes.into(),
                        ..Default::default()
                    };
                    match raw.do_put(futures::stream::iter(vec![first])).await {
                        Ok(r) => {
                            let mut s = r.into_inner();
                            while let Ok(Some(_)) = s.message().await {}
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                _ => raw
                    .get_schema(FlightDescriptor::new_cmd(bytes))
                    .await
                    .map(|_| ()),
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("call {i} (kind {kind}, seed {seed:#x}) hung"));
        if let Err(s) = outcome {
            // An h2 reset or an internal error means a handler broke; a refusal is fine.
            assert!(
                !matches!(s.code(), Code::Cancelled | Code::Internal | Code::Unknown),
                "call {i} (kind {kind}, seed {seed:#x}): {s:?}"
            );
        }
        answered += 1;
    }
    assert_eq!(answered, calls);
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM t").await.unwrap(), "1");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_are_bounded_and_only_for_ones_own_queries_and_parameter_rows_are_capped() {
    use arrow_flight::{Action, CancelFlightInfoRequest, FlightInfo};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let users = [
        format!("alice:{}", hash("pw")),
        format!("bob:{}", hash("pw")),
    ];
    let server = Server::start(
        dir.path().join("root").to_str().unwrap(),
        &[
            "--user",
            &users[0],
            "--user",
            &users[1],
            "--token-secret",
            "a shared swarm secret of some length",
            "--max-param-rows",
            "100",
        ],
        &[],
    );
    let mut alice = client_of(&server.url()).await;
    alice.handshake("alice", "pw").await.unwrap();
    let mut bob = client_of(&server.url()).await;
    bob.handshake("bob", "pw").await.unwrap();
    let info = alice.execute("SELECT 1".into(), None).await.unwrap();
    let cancel = |c: &mut FlightSqlServiceClient<Channel>, info: FlightInfo| {
        let body = CancelFlightInfoRequest { info: Some(info) }.encode_to_vec();
        let mut c = c.clone();
        async move {
            let action = Action::new("CancelFlightInfo", body);
            c.do_action(action).await.map(|_| ())
        }
    };
    // Bob cannot cancel Alice's query.
    let err = cancel(&mut bob, info.clone()).await.unwrap_err();
    assert!(format!("{err}").contains("another user"), "{err}");
    // 20,000 endpoints would be 20,000 storage writes: refused, naming the cap.
    let mut many = info.clone();
    many.endpoint = vec![info.endpoint[0].clone(); 20_000];
    let err = cancel(&mut alice, many).await.unwrap_err();
    assert!(format!("{err}").contains("--max-cancel-endpoints"), "{err}");
    // Alice can cancel her own.
    cancel(&mut alice, info).await.unwrap();
    // Parameter rows beyond --max-param-rows are refused before anything runs.
    update(&mut alice, "CREATE TABLE p (v BIGINT)")
        .await
        .unwrap();
    let mut stmt = alice
        .prepare("INSERT INTO p VALUES ($1)".into(), None)
        .await
        .unwrap();
    let rows = arrow::record_batch::RecordBatch::try_from_iter(vec![(
        "$1",
        std::sync::Arc::new(arrow::array::Int64Array::from(
            (0..101).collect::<Vec<i64>>(),
        )) as arrow::array::ArrayRef,
    )])
    .unwrap();
    stmt.set_parameters(rows).unwrap();
    let err = stmt.execute_update().await.unwrap_err();
    assert!(format!("{err}").contains("--max-param-rows"), "{err}");
    assert_eq!(
        scalar(&mut alice, "SELECT count(*) FROM p").await.unwrap(),
        "0"
    );
}
