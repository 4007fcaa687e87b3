//! Property tests over what clients send: random and mutated bytes into the Flight SQL command
//! decoders, ticket and prepared-statement handle opening, actions and Arrow IPC parameter
//! decoding. Whatever the bytes, the service answers — a status or a result, within a deadline —
//! and never panics.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, Any,
    CommandGetDbSchemas, CommandGetTables, CommandStatementQuery, ProstMessageExt,
    TicketStatementQuery,
};
use arrow_flight::{Action, FlightDescriptor, Ticket};
use futures::TryStreamExt;
use proptest::prelude::*;
use prost::Message;
use tonic::Request;

use super::tests::{Double, service};
use super::wire;

/// Every command type a Flight SQL client may name, and one nobody does.
const TYPE_URLS: &[&str] = &[
    "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementUpdate",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementIngest",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandPreparedStatementQuery",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandPreparedStatementUpdate",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetCatalogs",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetDbSchemas",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetTables",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetTableTypes",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetSqlInfo",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetXdbcTypeInfo",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetPrimaryKeys",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetExportedKeys",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetImportedKeys",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandGetCrossReference",
    "type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery",
    "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementSubstraitPlan",
    "type.googleapis.com/nothing.at.all",
];

const ACTIONS: &[&str] = &[
    "CreatePreparedStatement",
    "ClosePreparedStatement",
    "CreatePreparedSubstraitPlan",
    "BeginTransaction",
    "EndTransaction",
    "BeginSavepoint",
    "EndSavepoint",
    "CancelQuery",
    "CancelFlightInfo",
    "RenewFlightEndpoint",
    "SetSessionOptions",
    "GetSessionOptions",
    "CloseSession",
    "",
    "no such action",
];

/// Valid messages to mutate: the bytes a real client sends.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        CommandStatementQuery {
            query: "SELECT a FROM t".into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
        CommandGetTables {
            catalog: Some("default".into()),
            db_schema_filter_pattern: Some("de%".into()),
            table_name_filter_pattern: Some("_".into()),
            table_types: vec!["TABLE".into()],
            include_schema: true,
        }
        .as_any()
        .encode_to_vec(),
        CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: Some("%".into()),
        }
        .as_any()
        .encode_to_vec(),
        ActionCreatePreparedStatementRequest {
            query: "SELECT a FROM t WHERE a = ?".into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
    ]
}

/// `seed` with bytes replaced and its tail cut.
fn mutate(seed: &[u8], flips: &[(usize, u8)], keep: usize) -> Vec<u8> {
    let mut out = seed.to_vec();
    if !out.is_empty() {
        for (i, b) in flips {
            let n = out.len();
            out[i % n] = *b;
        }
    }
    out.truncate(keep.min(out.len()));
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Run one call to completion: it must answer within the deadline.
fn answers<F: std::future::Future>(rt: &tokio::runtime::Runtime, call: F) -> F::Output {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the service answered within 10 s")
    })
}

/// Drain a DoGet or DoAction answer (errors are fine, panics and hangs are not).
async fn drain<T>(
    r: Result<
        tonic::Response<futures::stream::BoxStream<'static, Result<T, tonic::Status>>>,
        tonic::Status,
    >,
) {
    if let Ok(resp) = r {
        let _ = resp.into_inner().try_collect::<Vec<T>>().await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_command_bytes_get_an_answer(
        url in 0..TYPE_URLS.len(),
        value in proptest::collection::vec(any::<u8>(), 0..192),
        raw in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let rt = runtime();
        let svc = service(Arc::new(Double::default()));
        let any = Any { type_url: TYPE_URLS[url].into(), value: value.clone().into() };
        for cmd in [any.encode_to_vec(), raw.clone()] {
            let _ = answers(&rt, svc.get_flight_info(Request::new(FlightDescriptor::new_cmd(cmd.clone()))));
            let _ = answers(&rt, svc.get_schema(Request::new(FlightDescriptor::new_cmd(cmd.clone()))));
            answers(&rt, async { drain(svc.do_get(Request::new(Ticket::new(cmd)) ).await).await });
        }
    }

    #[test]
    fn mutated_client_messages_get_an_answer(
        seed in 0..4usize,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        keep in 0..256usize,
    ) {
        let rt = runtime();
        let svc = service(Arc::new(Double::default()));
        let bytes = mutate(&seeds()[seed], &flips, keep);
        let _ = answers(&rt, svc.get_flight_info(Request::new(FlightDescriptor::new_cmd(bytes.clone()))));
        let action = Action { r#type: "CreatePreparedStatement".into(), body: bytes.into() };
        answers(&rt, async { drain(svc.do_action(Request::new(action)).await).await });
    }

    #[test]
    fn tickets_and_handles_that_were_tampered_with_are_refused(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        keep in 0..512usize,
    ) {
        let rt = runtime();
        let svc = service(Arc::new(Double::default()));
        // A real ticket and a real prepared handle, then changed.
        let info = answers(&rt, svc.get_flight_info(Request::new(FlightDescriptor::new_cmd(
            seeds()[0].clone(),
        )))).expect("a valid query plans").into_inner();
        let ticket = info.endpoint[0].ticket.clone().expect("ticket").ticket.to_vec();
        let mutated = mutate(&ticket, &flips, keep);
        if mutated != ticket {
            let r = answers(&rt, svc.do_get(Request::new(Ticket::new(mutated))));
            prop_assert!(r.is_err(), "a changed ticket was redeemed");
        }
        let created = answers(&rt, async {
            let resp = svc.do_action(Request::new(Action {
                r#type: "CreatePreparedStatement".into(),
                body: seeds()[3].clone().into(),
            })).await.expect("prepare");
            resp.into_inner().try_collect::<Vec<_>>().await.expect("prepared")
        });
        let result = arrow_flight::sql::ActionCreatePreparedStatementResult::decode(
            Any::decode(created[0].body.clone()).expect("any").value,
        ).expect("result");
        let handle = result.prepared_statement_handle.to_vec();
        let mutated = mutate(&handle, &flips, keep);
        if mutated != handle {
            let close = ActionClosePreparedStatementRequest { prepared_statement_handle: mutated.into() };
            let r = answers(&rt, svc.do_action(Request::new(Action {
                r#type: "ClosePreparedStatement".into(),
                body: close.as_any().encode_to_vec().into(),
            })));
            prop_assert!(r.is_err(), "a changed handle was accepted");
        }
        let forged = TicketStatementQuery { statement_handle: handle.into() };
        let _ = answers(&rt, svc.do_get(Request::new(Ticket::new(forged.as_any().encode_to_vec()))));
    }

    #[test]
    fn any_action_body_gets_an_answer(
        kind in 0..ACTIONS.len(),
        body in proptest::collection::vec(any::<u8>(), 0..192),
    ) {
        let rt = runtime();
        let svc = service(Arc::new(Double::default()));
        let action = Action { r#type: ACTIONS[kind].into(), body: body.into() };
        answers(&rt, async { drain(svc.do_action(Request::new(action)).await).await });
    }

    #[test]
    fn parameter_bytes_decode_or_fail_cleanly(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        keep in 0..4096usize,
        raw in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let batch = RecordBatch::try_from_iter(vec![
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as _),
            ("s", Arc::new(StringArray::from(vec!["a", "bb", "ccc"])) as _),
        ]).expect("batch");
        let valid = wire::encode_params(&[batch]).expect("encode").to_vec();
        let rows = wire::decode_param_rows(&valid).expect("valid parameters decode");
        prop_assert_eq!(rows.len(), 3);
        let _ = wire::decode_param_rows(&mutate(&valid, &flips, keep));
        let _ = wire::decode_param_rows(&raw);
    }
}

/// A compressed batch that declares a huge uncompressed size is refused before arrow-ipc
/// allocates it (that allocation failing aborts the process).
#[tokio::test]
async fn a_compressed_batch_declaring_petabytes_is_refused_before_decoding() {
    use arrow::ipc::writer::IpcWriteOptions;
    use arrow_flight::encode::FlightDataEncoderBuilder;
    let batch = RecordBatch::try_from_iter(vec![(
        "n",
        Arc::new(Int64Array::from((0..4096).collect::<Vec<i64>>())) as _,
    )])
    .expect("batch");
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(arrow::ipc::CompressionType::ZSTD))
        .expect("zstd");
    let messages: Vec<arrow_flight::FlightData> = FlightDataEncoderBuilder::new()
        .with_options(options)
        .build(futures::stream::iter(vec![Ok(batch)]))
        .try_collect()
        .await
        .expect("encode");
    let data = messages.last().expect("a batch message");
    wire::check_ipc_message(&data.data_header, &data.data_body).expect("as sent, it is fine");
    // Every buffer of this batch starts with its uncompressed length: claim 2^56 bytes.
    let msg = arrow::ipc::root_as_message(&data.data_header).expect("header");
    let buffers = msg
        .header_as_record_batch()
        .and_then(|b| b.buffers())
        .expect("buffers");
    let mut body = data.data_body.to_vec();
    for b in buffers.iter().filter(|b| b.length() >= 8) {
        let at = b.offset() as usize;
        body[at..at + 8].copy_from_slice(&(1i64 << 56).to_le_bytes());
    }
    let err = wire::check_ipc_message(&data.data_header, &body).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
}

/// A batch of no columns, or of a column of the null type, holds no data whatever the rows it
/// declares: 2^40 of them in a 300-byte message aborted the process (its rows became parameter
/// values; its NULLs were cast to a column's type). A message may declare at most one row per
/// bit of data it holds, beyond a few thousand.
#[tokio::test]
async fn a_batch_declaring_rows_it_holds_no_data_for_is_refused_before_decoding() {
    use arrow::array::{NullArray, RecordBatchOptions};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::encode::FlightDataEncoderBuilder;
    let encode = |batch: RecordBatch| async move {
        let messages: Vec<arrow_flight::FlightData> = FlightDataEncoderBuilder::new()
            .build(futures::stream::iter(vec![Ok(batch)]))
            .try_collect()
            .await
            .expect("encode");
        messages.last().expect("a batch message").clone()
    };
    let no_columns = |rows: usize| {
        RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .expect("batch")
    };
    let nulls = |rows: usize| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::Null, true)])),
            vec![Arc::new(NullArray::new(rows))],
        )
        .expect("batch")
    };
    for batch in [no_columns(1000), nulls(65_536)] {
        let data = encode(batch).await;
        wire::check_ipc_message(&data.data_header, &data.data_body).expect("a few rows pass");
    }
    // The encoder does not materialise a null array: a billion rows cost it nothing either.
    for batch in [no_columns(1 << 30), nulls(1 << 30)] {
        let data = encode(batch).await;
        let err = wire::check_ipc_message(&data.data_header, &data.data_body).unwrap_err();
        assert!(err.to_string().contains("rows"), "{err}");
    }
    // Real data declares as many rows as it holds bits for.
    let bools = RecordBatch::try_from_iter(vec![(
        "b",
        Arc::new(arrow::array::BooleanArray::from(vec![true; 200_000])) as _,
    )])
    .expect("batch");
    let data = encode(bools).await;
    wire::check_ipc_message(&data.data_header, &data.data_body).expect("one bit a row");
}
