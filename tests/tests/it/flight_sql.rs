//! The Flight SQL service through arrow-flight's Rust clients against real `apiary serve`
//! processes: queries, updates, prepared statements, metadata (the JDBC driver's sequence),
//! auth, TLS, message sizes, cancellation and memory under a slow reader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_proto::flight_session as fs;
use apiary_tests::Server;
use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray, UnionArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetTables, CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{Action, CancelFlightInfoRequest, FlightDescriptor, FlightInfo, Ticket};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

async fn sql_client(server: &Server) -> FlightSqlServiceClient<Channel> {
    FlightSqlServiceClient::new(channel(&server.url()).await)
}

async fn collect(
    client: &mut FlightSqlServiceClient<Channel>,
    info: &FlightInfo,
) -> (Arc<Schema>, Vec<RecordBatch>) {
    let mut batches = Vec::new();
    let mut schema = None;
    for ep in &info.endpoint {
        let mut stream = client.do_get(ep.ticket.clone().unwrap()).await.unwrap();
        while let Some(b) = stream.next().await {
            batches.push(b.unwrap());
        }
        schema = stream.schema().cloned();
    }
    (schema.expect("schema message"), batches)
}

async fn query(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> (FlightInfo, Arc<Schema>, Vec<RecordBatch>) {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let (schema, batches) = collect(client, &info).await;
    (info, schema, batches)
}

fn i64s(batches: &[RecordBatch], col: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(col)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| v.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn code_of(e: arrow_flight::error::FlightError) -> Code {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => s.code(),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

fn temp_root() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_updates_and_prepared_statements() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    assert_eq!(
        c.execute_update(
            "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)".into(),
            None
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        c.execute_update(
            "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL)".into(),
            None
        )
        .await
        .unwrap(),
        3
    );
    let (info, schema, batches) = query(&mut c, "SELECT id, name FROM t ORDER BY id").await;
    assert_eq!(info.total_records, -1);
    assert_eq!(info.total_bytes, -1);
    assert_eq!(i64s(&batches, 0), vec![1, 2, 3]);
    assert_eq!(Arc::new(info.clone().try_decode_schema().unwrap()), schema);

    // Prepared query with several `?` markers and with `$n`.
    let mut p = c
        .prepare(
            "SELECT id FROM t WHERE id >= ? AND id <= ? ORDER BY id".into(),
            None,
        )
        .await
        .unwrap();
    let ps = p.parameter_schema().unwrap().clone();
    assert_eq!(ps.fields().len(), 2);
    assert!(ps.fields().iter().all(|f| f.data_type() != &DataType::Null));
    assert_eq!(p.dataset_schema().unwrap().fields().len(), 1);
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Int64, false),
            Field::new("$2", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![2])),
            Arc::new(Int64Array::from(vec![3])),
        ],
    )
    .unwrap();
    p.set_parameters(params).unwrap();
    let info = p.execute().await.unwrap();
    let (_, batches) = collect(&mut c, &info).await;
    assert_eq!(i64s(&batches, 0), vec![2, 3]);
    p.close().await.unwrap();

    // Prepared update: empty dataset schema, parameters bound per row (executemany).
    let mut u = c
        .prepare("INSERT INTO t VALUES ($1, $2)".into(), None)
        .await
        .unwrap();
    assert!(u.dataset_schema().unwrap().fields().is_empty());
    let rows = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Int64, false),
            Field::new("$2", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![10, 11, 12])),
            Arc::new(StringArray::from(vec![Some("x"), None, Some("z")])),
        ],
    )
    .unwrap();
    u.set_parameters(rows).unwrap();
    assert_eq!(u.execute_update().await.unwrap(), 3);
    let (_, _, batches) = query(&mut c, "SELECT count(*) FROM t").await;
    assert_eq!(i64s(&batches, 0), vec![6]);

    // USE travels in the token the response carries: with it, the next statement runs in the
    // new box. (ADBC and JDBC rotate to that token by themselves; here we do it by hand.)
    c.execute_update("CREATE HIVE h".into(), None)
        .await
        .unwrap();
    c.execute_update("CREATE TABLE h.default.other (v BIGINT)".into(), None)
        .await
        .unwrap();
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    let cmd = arrow_flight::sql::CommandStatementUpdate {
        query: "USE h.default".into(),
        transaction_id: None,
    };
    let put = arrow_flight::FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec())),
        ..Default::default()
    };
    let resp = raw.do_put(futures::stream::iter(vec![put])).await.unwrap();
    let token = resp
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    c.set_token(token.trim_start_matches("Bearer ").to_string());
    let (_, _, batches) = query(&mut c, "SELECT count(*) FROM other").await;
    assert_eq!(i64s(&batches, 0), vec![0]);
    c.clear_token();
    assert!(
        c.execute("SELECT count(*) FROM other".into(), None)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_info_schema_equals_stream_schema() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    c.execute_update("CREATE TABLE m (x BIGINT, s VARCHAR)".into(), None)
        .await
        .unwrap();
    c.execute_update("INSERT INTO m VALUES (1, 'a'), (5, 'b')".into(), None)
        .await
        .unwrap();
    for sql in [
        "SELECT MAX(x) FROM m",
        "SELECT MIN(x), MAX(s) FROM m",
        "SELECT COUNT(*) FROM m",
        "SELECT * FROM m WHERE x > 100",
        "SELECT x FROM m LIMIT 0",
        "SELECT 1 AS one",
        "SHOW FRAMES",
        "DESCRIBE m",
    ] {
        let (info, schema, _) = query(&mut c, sql).await;
        let announced = info.clone().try_decode_schema().unwrap();
        assert_eq!(&announced, schema.as_ref(), "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_comes_first_and_messages_stay_small() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    c.execute_update(
        "CREATE TABLE big AS SELECT value AS id, repeat(md5(CAST(value AS VARCHAR)), 4) AS s FROM generate_series(1, 400000)"
            .into(),
        None,
    )
    .await
    .unwrap();
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    let measure = |sql: &'static str| {
        let mut c = c.clone();
        let mut raw = raw.clone();
        async move {
            let info = c.execute(sql.to_string(), None).await.unwrap();
            let ticket = info.endpoint[0].ticket.clone().unwrap();
            let mut stream = raw.do_get(ticket).await.unwrap().into_inner();
            let mut sizes = Vec::new();
            let mut first_is_schema = None;
            while let Some(fd) = stream.message().await.unwrap() {
                if first_is_schema.is_none() {
                    let msg = arrow::ipc::root_as_message(&fd.data_header[..]).unwrap();
                    first_is_schema = Some(msg.header_type() == arrow::ipc::MessageHeader::Schema);
                }
                sizes.push(fd.data_header.len() + fd.data_body.len());
            }
            (first_is_schema.unwrap_or(false), sizes)
        }
    };
    let (schema_first, sizes) = measure("SELECT * FROM big").await;
    assert!(schema_first);
    let total: usize = sizes.iter().sum();
    assert!(
        total > 40_000_000,
        "expected a large result, got {total} bytes"
    );
    let max = *sizes.iter().max().unwrap();
    assert!(
        max <= 4 * 1024 * 1024,
        "a FlightData message of {max} bytes"
    );

    // Zero rows: still a schema message first.
    let (schema_first, sizes) = measure("SELECT * FROM big WHERE id < 0").await;
    assert!(schema_first);
    assert_eq!(sizes.len(), 1);

    // Selective and LIMIT queries ship only what they return (no shared string buffers).
    let (_, sizes) = measure("SELECT s FROM big LIMIT 10").await;
    let total: usize = sizes.iter().sum();
    assert!(total < 64 * 1024, "LIMIT 10 encoded to {total} bytes");
    let (_, sizes) = measure("SELECT s FROM big WHERE id % 50000 = 0").await;
    let total: usize = sizes.iter().sum();
    assert!(
        total < 64 * 1024,
        "a selective query encoded to {total} bytes"
    );
    drop(raw.clone());
    let _ = &mut raw;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_schema_and_poll_flight_info() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    c.execute_update("CREATE TABLE g (a BIGINT, b VARCHAR)".into(), None)
        .await
        .unwrap();
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    let cmd = CommandStatementQuery {
        query: "SELECT b, a FROM g".into(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
    let schema = raw
        .get_schema(descriptor.clone())
        .await
        .unwrap()
        .into_inner();
    let schema: Schema = schema.try_into().unwrap();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["b", "a"]);
    let poll = raw.poll_flight_info(descriptor).await.unwrap().into_inner();
    assert!(poll.flight_descriptor.is_none(), "first poll is complete");
    assert_eq!(poll.progress, Some(1.0));
    let info = poll.info.unwrap();
    assert_eq!(info.clone().try_decode_schema().unwrap(), schema);
    let (_, batches) = collect(&mut c, &info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}

/// One planning per query: the DoGet of a ticket runs the plan its GetFlightInfo made on this
/// node; redeeming the ticket again plans afresh (a plan runs once) with the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_runs_the_plan_its_flight_info_made() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    c.execute_update(
        "CREATE TABLE p AS SELECT value AS v FROM generate_series(1, 1000)".into(),
        None,
    )
    .await
    .unwrap();
    let counts = async |c: &mut FlightSqlServiceClient<Channel>| {
        let (_, _, b) = query(
            c,
            "SELECT CAST(plans_reused AS BIGINT), CAST(plans_replanned AS BIGINT) \
             FROM system.runtime.node",
        )
        .await;
        (i64s(&b, 0)[0], i64s(&b, 1)[0])
    };
    let (reused, replanned) = counts(&mut c).await;
    let info = c
        .execute("SELECT sum(v) FROM p".to_string(), None)
        .await
        .unwrap();
    let (_, first) = collect(&mut c, &info).await;
    let (reused_after, replanned_after) = counts(&mut c).await;
    // The sum's DoGet ran its kept plan. Status queries are planned again when they run, so
    // that they show the status of then (the counts' own queries keep nothing).
    assert_eq!(reused_after - reused, 1);
    assert_eq!(replanned_after, replanned);
    // The same ticket again: planned anew, same answer.
    let (_, again) = collect(&mut c, &info).await;
    assert_eq!(i64s(&first, 0), vec![500_500]);
    assert_eq!(i64s(&again, 0), vec![500_500]);
    let (_, replanned_last) = counts(&mut c).await;
    assert_eq!(replanned_last - replanned_after, 1);
}

/// A node decodes each cell's Parquet footer once: the first scan misses (and fills the cache),
/// later queries of any kind over the same cells hit it. With `--metadata-cache-size 0`
/// nothing is kept and every scan misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footers_are_decoded_once_per_node() {
    const STATS: &str = "SELECT CAST(metadata_cache_entries AS BIGINT), \
         CAST(metadata_cache_hits AS BIGINT), CAST(metadata_cache_misses AS BIGINT), \
         CAST(metadata_cache_bytes AS BIGINT) FROM system.runtime.node";
    async fn stats(c: &mut FlightSqlServiceClient<Channel>) -> [i64; 4] {
        let (_, _, b) = query(c, STATS).await;
        [0, 1, 2, 3].map(|i| i64s(&b, i)[0])
    }
    async fn three_cells(c: &mut FlightSqlServiceClient<Channel>) {
        c.execute_update(
            "CREATE TABLE f AS SELECT value AS v FROM generate_series(1, 1000)".into(),
            None,
        )
        .await
        .unwrap();
        for _ in 0..2 {
            c.execute_update(
                "INSERT INTO f SELECT value FROM generate_series(1, 1000)".into(),
                None,
            )
            .await
            .unwrap();
        }
    }

    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    three_cells(&mut c).await;
    assert_eq!(stats(&mut c).await[0], 0, "nothing scanned yet");
    let (_, _, b) = query(&mut c, "SELECT sum(v) FROM f").await;
    assert_eq!(i64s(&b, 0), vec![1_501_500]);
    let [entries, hits, misses, bytes] = stats(&mut c).await;
    assert_eq!(entries, 3, "one footer per cell");
    assert!(misses >= 3 && bytes > 0, "misses {misses}, bytes {bytes}");
    let (_, _, b) = query(&mut c, "SELECT count(*) FROM f WHERE v > 10").await;
    assert_eq!(i64s(&b, 0), vec![2970]);
    let [entries_after, hits_after, misses_after, _] = stats(&mut c).await;
    assert_eq!(entries_after, 3);
    assert_eq!(misses_after, misses, "the second scan read no footer");
    assert!(hits_after >= hits + 3, "hits {hits} -> {hits_after}");
    drop(server);

    let dir = temp_root();
    let server = Server::start(
        dir.path().to_str().unwrap(),
        &["--metadata-cache-size", "0"],
        &[],
    );
    let mut c = sql_client(&server).await;
    three_cells(&mut c).await;
    for _ in 0..2 {
        let (_, _, b) = query(&mut c, "SELECT sum(v) FROM f").await;
        assert_eq!(i64s(&b, 0), vec![1_501_500]);
    }
    let [entries, hits, _, bytes] = stats(&mut c).await;
    assert_eq!(
        [entries, hits, bytes],
        [0, 0, 0],
        "a zero bound keeps nothing"
    );
}

/// The sequence the Flight SQL JDBC driver (DBeaver) performs on connect, in the navigator and
/// for one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_driver_session() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    c.set_header("user-agent", "JDBC Flight SQL Driver 18.3.0");
    c.execute_update(
        "CREATE TABLE orders (id BIGINT NOT NULL, note VARCHAR, amount DECIMAL(10,2))".into(),
        None,
    )
    .await
    .unwrap();

    // setCatalog → SetSessionOptions{"catalog"}: must succeed.
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    let mut opts = std::collections::HashMap::new();
    opts.insert(
        "catalog".to_string(),
        fs::SessionOptionValue {
            option_value: Some(fs::session_option_value::OptionValue::StringValue(
                "default".into(),
            )),
        },
    );
    opts.insert(
        "bogus".to_string(),
        fs::SessionOptionValue {
            option_value: Some(fs::session_option_value::OptionValue::StringValue(
                "x".into(),
            )),
        },
    );
    let body = fs::SetSessionOptionsRequest {
        session_options: opts,
    }
    .encode_to_vec();
    let mut resp = raw
        .do_action(Action::new("SetSessionOptions", body))
        .await
        .unwrap()
        .into_inner();
    let result =
        fs::SetSessionOptionsResult::decode(resp.message().await.unwrap().unwrap().body).unwrap();
    assert!(!result.errors.contains_key("catalog"));
    assert_eq!(
        result.errors["bogus"].value,
        fs::set_session_options_result::ErrorValue::InvalidName as i32
    );
    let mut resp = raw
        .do_action(Action::new(
            "GetSessionOptions",
            fs::GetSessionOptionsRequest {}.encode_to_vec(),
        ))
        .await
        .unwrap()
        .into_inner();
    let got =
        fs::GetSessionOptionsResult::decode(resp.message().await.unwrap().unwrap().body).unwrap();
    assert!(matches!(
        &got.session_options["schema"].option_value,
        Some(fs::session_option_value::OptionValue::StringValue(s)) if s == "default"
    ));

    // Catalog and schema in one request: the schema is looked up in the new catalog, whatever
    // order the map arrives in (it was checked against the old one about half the time).
    c.execute_update("CREATE HIVE h1".into(), None)
        .await
        .unwrap();
    c.execute_update("CREATE BOX h1.b1".into(), None)
        .await
        .unwrap();
    let text = |s: &str| fs::SessionOptionValue {
        option_value: Some(fs::session_option_value::OptionValue::StringValue(s.into())),
    };
    for _ in 0..16 {
        let mut fresh = FlightServiceClient::new(channel(&server.url()).await);
        let body = fs::SetSessionOptionsRequest {
            session_options: [
                ("catalog".to_string(), text("h1")),
                ("schema".to_string(), text("b1")),
            ]
            .into(),
        }
        .encode_to_vec();
        let mut resp = fresh
            .do_action(Action::new("SetSessionOptions", body))
            .await
            .unwrap()
            .into_inner();
        let result =
            fs::SetSessionOptionsResult::decode(resp.message().await.unwrap().unwrap().body)
                .unwrap();
        assert!(result.errors.is_empty(), "{:?}", result.errors);
    }
    c.execute_update("DROP HIVE h1 CASCADE".into(), None)
        .await
        .unwrap();

    // GetSqlInfo with an empty list: every id, each in the union variant its type demands.
    let info = c.get_sql_info(vec![]).await.unwrap();
    let (schema, batches) = collect(&mut c, &info).await;
    assert_eq!(schema.field(0).name(), "info_name");
    assert_eq!(schema.field(0).data_type(), &DataType::UInt32);
    assert!(!schema.field(0).is_nullable());
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let ids = batch
        .column(0)
        .as_primitive::<arrow::datatypes::UInt32Type>();
    let values = batch
        .column(1)
        .as_any()
        .downcast_ref::<UnionArray>()
        .unwrap();
    let mut by_id = std::collections::HashMap::new();
    for i in 0..batch.num_rows() {
        by_id.insert(ids.value(i), values.type_id(i));
    }
    // type ids: 0 string, 1 bool, 2 int64, 3 int32 bitmask, 4 string list, 5 int32 → list map
    let expect: &[(u32, i8)] = &[
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 1),
        (4, 1),
        (8, 3),
        (9, 1),
        (500, 1),
        (503, 2),
        (504, 0),
        (505, 2),
        (507, 2),
        (508, 4),
        (509, 4),
        (517, 5),
        (522, 3),
        (528, 3),
        (529, 0),
        (531, 0),
        (541, 2),
        (559, 2),
        (562, 2),
        (563, 1),
        (564, 3),
        (567, 3),
        (572, 1),
        (576, 1),
    ];
    for (id, ty) in expect {
        assert_eq!(by_id.get(id), Some(ty), "SqlInfo {id}");
    }
    for id in [0u32, 1, 3].into_iter().chain(504..=576) {
        assert!(by_id.contains_key(&id), "SqlInfo {id} missing");
    }
    // The limits the node enforces: --max-columns (548), --max-sql-bytes (557) and
    // --max-sql-relations (560) by default.
    let int64_of = |id: u32| {
        let i = (0..batch.num_rows()).find(|&i| ids.value(i) == id).unwrap();
        let int64s = values
            .child(2)
            .as_primitive::<arrow::datatypes::Int64Type>();
        int64s.value(values.value_offset(i))
    };
    assert_eq!(
        (int64_of(548), int64_of(557), int64_of(560)),
        (4_096, 1 << 20, 256)
    );
    // A prepared statement's handle lasts --ticket-ttl (1 h) from its prepare or last bind.
    let i = (0..batch.num_rows())
        .find(|&i| ids.value(i) == 100)
        .unwrap();
    assert_eq!(values.type_id(i), 3);
    let int32s = values
        .child(3)
        .as_primitive::<arrow::datatypes::Int32Type>();
    assert_eq!(int32s.value(values.value_offset(i)), 3_600_000);

    // Navigator: catalogs, schemas, tables with schema, table types, keys.
    let info = c.get_catalogs().await.unwrap();
    let (schema, batches) = collect(&mut c, &info).await;
    assert_eq!(info.clone().try_decode_schema().unwrap(), *schema);
    assert_eq!(schema.field(0).name(), "catalog_name");
    assert!(!schema.field(0).is_nullable());
    assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "default");

    let info = c
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: Some("%".into()),
        })
        .await
        .unwrap();
    let (schema, batches) = collect(&mut c, &info).await;
    assert_eq!(
        schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.is_nullable()))
            .collect::<Vec<_>>(),
        vec![("catalog_name", true), ("db_schema_name", false)]
    );
    let boxes: Vec<String> = (0..batches[0].num_rows())
        .map(|i| {
            format!(
                "{}.{}",
                batches[0].column(0).as_string::<i32>().value(i),
                batches[0].column(1).as_string::<i32>().value(i)
            )
        })
        .collect();
    assert_eq!(
        boxes,
        vec![
            "default.default",
            "default.information_schema",
            "system.colony",
            "system.information_schema",
            "system.lakehouse",
            "system.runtime",
            "system.swarm"
        ]
    );

    let info = c
        .get_tables(CommandGetTables {
            catalog: Some("default".into()),
            db_schema_filter_pattern: Some("def%".into()),
            table_name_filter_pattern: Some("or_ers".into()),
            table_types: vec!["TABLE".into()],
            include_schema: true,
        })
        .await
        .unwrap();
    let (schema, batches) = collect(&mut c, &info).await;
    assert_eq!(info.clone().try_decode_schema().unwrap(), *schema);
    assert_eq!(schema.field(4).name(), "table_schema");
    let b = &batches[0];
    assert_eq!(b.num_rows(), 1);
    assert_eq!(b.column(2).as_string::<i32>().value(0), "orders");
    let ipc = b.column(4).as_binary::<i32>().value(0);
    let table_schema = arrow::ipc::convert::try_schema_from_ipc_buffer(ipc).unwrap();
    let amount = table_schema.field_with_name("amount").unwrap();
    assert_eq!(
        amount.metadata()["ARROW:FLIGHT:SQL:TYPE_NAME"],
        "DECIMAL(10,2)"
    );
    assert_eq!(amount.metadata()["ARROW:FLIGHT:SQL:PRECISION"], "10");
    assert_eq!(amount.metadata()["ARROW:FLIGHT:SQL:SCALE"], "2");
    assert!(!table_schema.field_with_name("id").unwrap().is_nullable());

    // A type filter that excludes frames returns nothing.
    let info = c
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec!["VIEW".into()],
            include_schema: false,
        })
        .await
        .unwrap();
    let (_, batches) = collect(&mut c, &info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);

    let info = c.get_table_types().await.unwrap();
    let (_, batches) = collect(&mut c, &info).await;
    let types: Vec<&str> = batches[0]
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(types, vec!["SYSTEM TABLE", "SYSTEM VIEW", "TABLE", "VIEW"]);

    let pk = c
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: None,
            table: "orders".into(),
        })
        .await
        .unwrap();
    let (schema, batches) = collect(&mut c, &pk).await;
    assert_eq!(schema.fields().len(), 6);
    // FlightSql.proto: ... column_name, key_name, key_sequence.
    assert_eq!(schema.field(4).name(), "key_name");
    assert_eq!(schema.field(5).name(), "key_sequence");
    assert_eq!(schema.field(5).data_type(), &DataType::Int32);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    for info in [
        c.get_exported_keys(CommandGetExportedKeys {
            catalog: None,
            db_schema: None,
            table: "orders".into(),
        })
        .await
        .unwrap(),
        c.get_imported_keys(CommandGetImportedKeys {
            catalog: None,
            db_schema: None,
            table: "orders".into(),
        })
        .await
        .unwrap(),
        c.get_cross_reference(CommandGetCrossReference {
            pk_catalog: None,
            pk_db_schema: None,
            pk_table: "orders".into(),
            fk_catalog: None,
            fk_db_schema: None,
            fk_table: "orders".into(),
        })
        .await
        .unwrap(),
    ] {
        let (schema, _) = collect(&mut c, &info).await;
        assert_eq!(schema.fields().len(), 13);
        assert_eq!(schema.field(11).name(), "update_rule");
        assert_eq!(schema.field(11).data_type(), &DataType::UInt8);
    }

    // A statement: CreatePreparedStatement → GetFlightInfo(prepared) → DoGet → Close.
    c.execute_update("INSERT INTO orders VALUES (1, 'first', 9.99)".into(), None)
        .await
        .unwrap();
    let mut p = c
        .prepare("SELECT id, note, amount FROM orders".into(), None)
        .await
        .unwrap();
    assert_eq!(p.dataset_schema().unwrap().fields().len(), 3);
    // No view types reach JDBC.
    assert!(
        p.dataset_schema()
            .unwrap()
            .fields()
            .iter()
            .all(|f| !matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView))
    );
    let info = p.execute().await.unwrap();
    let (schema, batches) = collect(&mut c, &info).await;
    assert_eq!(schema.as_ref(), p.dataset_schema().unwrap());
    assert_eq!(batches[0].num_rows(), 1);
    p.close().await.unwrap();

    // A DML statement prepares with an empty dataset schema, so JDBC runs it as an update.
    let mut u = c
        .prepare("INSERT INTO orders VALUES (2, 'second', 1.00)".into(), None)
        .await
        .unwrap();
    assert!(u.dataset_schema().unwrap().fields().is_empty());
    assert_eq!(u.execute_update().await.unwrap(), 1);
    u.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_grpc_codes() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    let code = |r: Result<FlightInfo, arrow_flight::error::FlightError>| match r {
        Err(e) => code_of(e),
        Ok(_) => Code::Ok,
    };
    assert_eq!(
        code(c.execute("SELEC 1".into(), None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.execute("SELECT * FROM nope".into(), None).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.execute("SELECT nocol FROM (SELECT 1 AS a)".into(), None)
                .await
        ),
        Code::InvalidArgument
    );
    let update = |sql: &str| {
        let mut c = c.clone();
        let sql = sql.to_string();
        async move {
            match c.execute_update(sql, None).await {
                Err(e) => code_of(e),
                Ok(_) => Code::Ok,
            }
        }
    };
    assert_eq!(update("CREATE HIVE x").await, Code::Ok);
    assert_eq!(update("CREATE HIVE x").await, Code::AlreadyExists);
    assert_eq!(update("CREATE TABLE nobox.t (a INT)").await, Code::NotFound);
    assert_eq!(update("DELETE FROM t").await, Code::NotFound);
    assert_eq!(
        update("ALTER TABLE t RENAME TO u").await,
        Code::Unimplemented
    );
    assert_eq!(update("ALTER TABLE t DROP COLUMN a").await, Code::NotFound);
    assert_eq!(update("CREATE HIVE \"../x\"").await, Code::InvalidArgument);
    match c.begin_transaction().await {
        Err(e) => assert_eq!(code_of(e), Code::Unimplemented),
        Ok(_) => panic!("transactions should be unimplemented"),
    }
    // A forged ticket is refused, not executed.
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    let err = match raw.do_get(Ticket::new(b"garbage".to_vec())).await {
        Err(e) => e,
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), Code::InvalidArgument);
}

pub(crate) fn basic(user: &str, pw: &str, padded: bool) -> String {
    let raw = format!("{user}:{pw}");
    let enc = if padded {
        base64::engine::general_purpose::STANDARD.encode(raw)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
    };
    format!("Basic {enc}")
}

pub(crate) fn hash(pw: &str) -> String {
    let out = std::process::Command::new(apiary_tests::apiary_bin())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{pw}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub(crate) async fn handshake_with(url: &str, header: &str) -> Result<String, tonic::Status> {
    let mut raw = FlightServiceClient::new(channel(url).await);
    let mut req = Request::new(futures::stream::iter(vec![
        arrow_flight::HandshakeRequest::default(),
    ]));
    req.metadata_mut()
        .insert("authorization", header.parse().unwrap());
    let resp = raw.handshake(req).await?;
    let token = resp
        .metadata()
        .get("authorization")
        .expect("authorization header in the response")
        .to_str()
        .unwrap()
        .to_string();
    let mut stream = resp.into_inner();
    while stream.message().await?.is_some() {}
    Ok(token)
}

pub(crate) async fn select_one_with(
    url: &str,
    header: &str,
) -> Result<Option<String>, tonic::Status> {
    let mut raw = FlightServiceClient::new(channel(url).await);
    let cmd = CommandStatementQuery {
        query: "SELECT 1".into(),
        transaction_id: None,
    };
    let mut req = Request::new(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()));
    req.metadata_mut()
        .insert("authorization", header.parse().unwrap());
    let resp = raw.get_flight_info(req).await?;
    Ok(resp
        .metadata()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_tokens() {
    let dir = temp_root();
    let root = dir.path().to_str().unwrap();
    let user = format!("alice:{}", hash("wonder land"));
    // A swarm with users shares its key through configuration, never through the bucket.
    let secret = ["--token-secret", "a shared swarm secret of some length"];
    let a = Server::start(
        root,
        &[&["--user", user.as_str()][..], &secret[..]].concat(),
        &[],
    );
    let b = Server::start(
        root,
        &[&["--user", user.as_str()][..], &secret[..]].concat(),
        &[],
    );

    // No credentials → UNAUTHENTICATED.
    let mut raw = FlightServiceClient::new(channel(&a.url()).await);
    let cmd = CommandStatementQuery {
        query: "SELECT 1".into(),
        transaction_id: None,
    };
    let err = raw
        .get_flight_info(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Basic with and without padding; wrong password refused.
    let t1 = handshake_with(&a.url(), &basic("alice", "wonder land", true))
        .await
        .unwrap();
    let t2 = handshake_with(&a.url(), &basic("alice", "wonder land", false))
        .await
        .unwrap();
    assert!(t1.starts_with("Bearer ") && t2.starts_with("Bearer "));
    let err = handshake_with(&a.url(), &basic("alice", "nope", true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The bearer token works for handshakes and calls, on this node and on another one, and
    // every authenticated response carries a token.
    handshake_with(&a.url(), &t1).await.unwrap();
    let echoed = select_one_with(&b.url(), &t1).await.unwrap();
    assert!(echoed.unwrap().starts_with("Bearer "));
    let err = select_one_with(&a.url(), "Bearer not.a-token")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The arrow-flight client's handshake (Basic, padded) then queries with the token.
    let mut c = FlightSqlServiceClient::new(channel(&a.url()).await);
    c.handshake("alice", "wonder land").await.unwrap();
    let (_, _, batches) = query(&mut c, "SELECT 41 + 1 AS x").await;
    assert_eq!(i64s(&batches, 0), vec![42]);

    // Expired tokens.
    let short = Server::start(root, &["--user", &user, "--token-ttl", "1s"], &[]);
    let t = handshake_with(&short.url(), &basic("alice", "wonder land", true))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = select_one_with(&short.url(), &t).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"));
}

#[test]
fn refuses_public_address_without_auth() {
    let dir = temp_root();
    let out = apiary_tests::apiary(
        &[
            "serve",
            "--storage",
            dir.path().to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without authentication"), "{err}");
    // With --allow-anonymous it starts.
    let s = Server::start(
        dir.path().to_str().unwrap(),
        &["--listen", "0.0.0.0:0", "--allow-anonymous"],
        &[],
    );
    assert!(s.port() > 0);
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client".into()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn tls_channel(
    port: u16,
    pki: &Pki,
    with_client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = temp_root();
    let pki = pki();
    let files = temp_root();
    let write = |name: &str, body: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key, ca) = (
        write("server.pem", &pki.server_cert),
        write("server.key", &pki.server_key),
        write("ca.pem", &pki.ca),
    );
    let root = dir.path().to_str().unwrap();
    // check-config reads the PEM files as serving would, and names what is wrong with them.
    let client_key = write("client.key", &pki.client_key);
    for (cert, key, ca, expect) in [
        (
            &cert,
            &client_key,
            None,
            "the TLS key does not go with the certificate",
        ),
        (&cert, &cert, None, "the TLS key file holds no private key"),
        (&key, &key, None, "holds no certificate"),
        (
            &cert,
            &key,
            Some(&key),
            "the client CA file holds no certificate",
        ),
    ] {
        let mut args = vec!["check-config", "--storage", root];
        args.extend(["--tls-cert", cert, "--tls-key", key]);
        if let Some(ca) = ca {
            args.extend(["--tls-client-ca", ca]);
        }
        let out = apiary_tests::apiary(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{args:?}: {err}"
        );
    }
    let tls = Server::start(
        root,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--handshake-timeout",
            "1s",
        ],
        &[],
    );
    assert!(tls.log().contains("grpc+tls://"));
    // A socket that never starts its TLS handshake is closed at the deadline, not held.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", tls.port())).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let start = std::time::Instant::now();
    let read = std::io::Read::read(&mut silent, &mut [0u8; 16]);
    assert!(matches!(read, Ok(0)), "{read:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    let ch = tls_channel(tls.port(), &pki, false).await.unwrap();
    let mut c = FlightSqlServiceClient::new(ch);
    let (_, _, batches) = query(&mut c, "SELECT 7 AS x").await;
    assert_eq!(i64s(&batches, 0), vec![7]);
    // Plaintext to a TLS port fails.
    let mut plain = FlightSqlServiceClient::new(channel(&tls.url()).await);
    assert!(plain.execute("SELECT 1".into(), None).await.is_err());

    let mtls = Server::start(
        root,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
        &[],
    );
    // Without a client certificate the handshake or the first call fails.
    let refused = match tls_channel(mtls.port(), &pki, false).await {
        Err(_) => true,
        Ok(ch) => FlightSqlServiceClient::new(ch)
            .execute("SELECT 1".into(), None)
            .await
            .is_err(),
    };
    assert!(refused, "mTLS accepted a client without a certificate");
    let ch = tls_channel(mtls.port(), &pki, true).await.unwrap();
    let mut c = FlightSqlServiceClient::new(ch);
    let (_, _, batches) = query(&mut c, "SELECT 8 AS x").await;
    assert_eq!(i64s(&batches, 0), vec![8]);
}

const LONG_QUERY: &str =
    "SELECT count(*) FROM generate_series(1, 20000000000) a WHERE a.value % 7 = 3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_flight_info_stops_a_running_query() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    let info = c.execute(LONG_QUERY.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut reader = c.clone();
    let started = Instant::now();
    let read = apiary_runtime::executor::spawn(async move {
        let stream = reader.do_get(ticket).await?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        Ok::<_, arrow_flight::error::FlightError>(batches)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    let body = CancelFlightInfoRequest { info: Some(info) }.encode_to_vec();
    let mut resp = raw
        .do_action(Action::new("CancelFlightInfo", body))
        .await
        .unwrap()
        .into_inner();
    let result =
        arrow_flight::CancelFlightInfoResult::decode(resp.message().await.unwrap().unwrap().body)
            .unwrap();
    assert_eq!(result.status, arrow_flight::CancelStatus::Cancelled as i32);
    let outcome = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap()
        .unwrap();
    let err = outcome.expect_err("the query should have been cancelled");
    assert!(err.to_string().to_lowercase().contains("cancel"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(server.wait_log("outcome=\"cancelled\"", Duration::from_secs(10)));
}

/// A cancel that reaches the server before the DoGet wins, however short the query: its
/// marker is looked for beside the query (not ahead of its first batch) and the result cannot
/// end before that look is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_cancelled_before_its_do_get_never_answers() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    for _ in 0..5 {
        let info = c.execute("SELECT 1 AS one".into(), None).await.unwrap();
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let body = CancelFlightInfoRequest { info: Some(info) }.encode_to_vec();
        raw.do_action(Action::new("CancelFlightInfo", body))
            .await
            .unwrap();
        let outcome: Result<Vec<RecordBatch>, _> = match c.do_get(ticket).await {
            Ok(stream) => stream.try_collect().await,
            Err(e) => Err(e),
        };
        let err = outcome.expect_err("a cancelled query answered");
        assert!(err.to_string().to_lowercase().contains("cancel"), "{err}");
    }
    // Not cancelled, the same query answers.
    let info = c.execute("SELECT 1 AS one".into(), None).await.unwrap();
    let batches: Vec<RecordBatch> = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hang_up_cancels_the_query() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    let info = c.execute(LONG_QUERY.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    {
        let mut reader = c.clone();
        let stream = tokio::time::timeout(Duration::from_secs(2), async move {
            let s = reader.do_get(ticket).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            s
        })
        .await
        .unwrap();
        drop(stream);
    }
    drop(c);
    assert!(
        server.wait_log(
            "outcome=\"abandoned by the client\"",
            Duration::from_secs(15)
        ),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_make_the_server_buffer_the_result() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    // About 1.5 GB of strings if it were all produced at once.
    let info = c
        .execute(
            "SELECT value, repeat('x', 500) AS pad FROM generate_series(1, 3000000)".into(),
            None,
        )
        .await
        .unwrap();
    let before = server.rss_bytes();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut raw = FlightServiceClient::new(channel(&server.url()).await);
    let mut stream = raw.do_get(ticket).await.unwrap().into_inner();
    let mut peak = 0;
    let mut bytes = 0usize;
    for i in 0..40 {
        let msg = stream.message().await.unwrap().unwrap();
        bytes += msg.data_body.len();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak = peak.max(server.rss_bytes());
        }
    }
    // Reading slowly, the server holds a bounded window of the result, not the result.
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 400 * 1024 * 1024,
        "server grew by {} MiB while the client had read {} MiB",
        growth >> 20,
        bytes >> 20
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_on_sigterm() {
    let dir = temp_root();
    let server = Server::start(dir.path().to_str().unwrap(), &[], &[]);
    let mut c = sql_client(&server).await;
    let (_, _, batches) = query(&mut c, "SELECT 1 AS x").await;
    assert_eq!(batches[0].num_rows(), 1);
    assert!(server.stop(), "server did not exit cleanly on SIGTERM");
}
