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
    let (got, _) = scalar(&mut c, "EXPLAIN ANALYZE INSERT INTO t VALUES (2)")
        .await
        .unwrap_err();
    assert_eq!(got, Code::PermissionDenied);
    assert_eq!(update(&mut c, "INSERT INTO t VALUES (3)").await.unwrap(), 1);
    assert_eq!(scalar(&mut c, "SELECT count(*) FROM t").await.unwrap(), "2");
    for (sql, want) in [
        (
            "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
            Code::Unimplemented,
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            Code::Unimplemented,
        ),
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
        let batches: Vec<_> = c
            .do_get(info.endpoint[0].ticket.clone().unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
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
