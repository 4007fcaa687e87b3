//! The Flight SQL service driven through arrow-flight's own `FlightService` entry points against
//! a stand-in [`QueryService`]: no node, no storage, no network.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiary_runtime::{
    Error as RtError, IngestRequest, Pin, Pins, Planned, QueryRequest, QueryService, Session,
    Share, Shares, Statement, StatementInfo,
};
use apiary_storage::{BoxRef, FrameRef, Ident};
use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{
    Any, CommandGetTables, CommandStatementQuery, ProstMessageExt, TicketStatementQuery,
};
use arrow_flight::{Action, FlightDescriptor, Ticket};
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::TryStreamExt;
use prost::Message;
use tonic::{Code, Request};

use super::{ApiaryFlightService, FlightSql};
use crate::auth::Signer;

/// A frame every listing shows and every query reads.
fn frame() -> FrameRef {
    FrameRef::new(
        Ident::default_hive(),
        Ident::default_box(),
        Ident::parse("t").unwrap(),
    )
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]))
}

/// Answers from memory and records what it was asked.
#[derive(Debug, Default)]
pub(super) struct Double {
    queries: Mutex<Vec<QueryRequest>>,
    cancelled: Mutex<Vec<String>>,
    /// `hive_exists` fails as storage would.
    flaky: bool,
}

#[async_trait::async_trait]
impl QueryService for Double {
    fn parse(&self, sql: &str) -> apiary_runtime::Result<Vec<Statement>> {
        apiary_runtime::engine::parse(sql)
    }

    async fn plan(
        &self,
        _session: &Session,
        stmt: &Statement,
        _params: Option<Vec<ScalarValue>>,
        keep: bool,
    ) -> apiary_runtime::Result<Planned> {
        // A "shared" query is served by three nodes: this one (first), one that advertises a
        // loopback URL, one on the network.
        let shares = (keep && stmt.text.contains("shared")).then(|| Shares {
            of: 3,
            partitions: Some(6),
            homes: vec![
                "grpc://10.0.0.1:50051".into(),
                "grpc://127.0.0.1:50052".into(),
                "grpc://10.0.0.3:50051".into(),
            ],
        });
        Ok(Planned {
            schema: schema(),
            pins: Pins::from([(frame(), Pin::new(7, "marker-1"))]),
            plan_key: keep.then(|| "kept-plan-7".to_string()),
            shares,
        })
    }

    async fn statement_info(
        &self,
        _session: &Session,
        stmt: &Statement,
    ) -> apiary_runtime::Result<StatementInfo> {
        Ok(StatementInfo {
            returns_rows: stmt.returns_rows(),
            schema: schema(),
            parameters: vec![],
        })
    }

    async fn query(
        &self,
        request: QueryRequest,
    ) -> apiary_runtime::Result<SendableRecordBatchStream> {
        self.queries.lock().unwrap().push(request);
        let batch = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])
            .unwrap();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema(),
            futures::stream::iter(vec![Ok(batch)]),
        )))
    }

    async fn update(
        &self,
        session: &Session,
        _stmt: &Statement,
        params: Vec<Vec<ScalarValue>>,
    ) -> apiary_runtime::Result<(u64, Session)> {
        Ok((params.len().max(1) as u64, session.clone()))
    }

    async fn ingest(
        &self,
        _request: IngestRequest,
        _schema: Option<SchemaRef>,
        _data: SendableRecordBatchStream,
    ) -> apiary_runtime::Result<u64> {
        Err(RtError::Unsupported("ingest in the double".into()))
    }

    async fn list_hives(&self) -> apiary_runtime::Result<Vec<Ident>> {
        Ok(vec![Ident::default_hive()])
    }

    async fn list_boxes(&self, _hive: Option<&Ident>) -> apiary_runtime::Result<Vec<BoxRef>> {
        Ok(vec![BoxRef::new(
            Ident::default_hive(),
            Ident::default_box(),
        )])
    }

    async fn list_frames(&self, _b: &BoxRef) -> apiary_runtime::Result<Vec<Ident>> {
        Ok(vec![frame().name])
    }

    async fn frame_entry(
        &self,
        _frame: &FrameRef,
        with_schema: bool,
    ) -> apiary_runtime::Result<Option<apiary_runtime::service::FrameEntry>> {
        Ok(Some(apiary_runtime::service::FrameEntry {
            view: false,
            schema: with_schema.then(schema),
        }))
    }

    async fn hive_exists(&self, _hive: &Ident) -> apiary_runtime::Result<bool> {
        if self.flaky {
            return Err(RtError::Storage(apiary_storage::Error::Internal(
                "the bucket is unreachable".into(),
            )));
        }
        Ok(true)
    }

    async fn box_exists(&self, _b: &BoxRef) -> apiary_runtime::Result<bool> {
        Ok(true)
    }

    async fn entry_box(&self, _hive: &Ident) -> apiary_runtime::Result<Ident> {
        Ok(Ident::default_box())
    }

    async fn cancel(&self, query_id: &str) -> apiary_runtime::Result<()> {
        self.cancelled.lock().unwrap().push(query_id.to_string());
        Ok(())
    }
}

pub(super) fn service(double: Arc<Double>) -> ApiaryFlightService {
    let sql = FlightSql::new(double, Signer::new(b"test key"), Duration::from_secs(60));
    ApiaryFlightService::new(sql)
}

fn command(msg: impl ProstMessageExt) -> FlightDescriptor {
    FlightDescriptor::new_cmd(msg.as_any().encode_to_vec())
}

async fn read(svc: &ApiaryFlightService, ticket: Ticket) -> Vec<RecordBatch> {
    let stream = svc.do_get(Request::new(ticket)).await.unwrap().into_inner();
    FlightRecordBatchStream::new_from_flight_data(stream.map_err(Into::into))
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_ticket_carries_the_pins_and_session_from_planning_to_execution() {
    let double = Arc::new(Double::default());
    let svc = service(double.clone());
    let info = svc
        .get_flight_info(Request::new(command(CommandStatementQuery {
            query: "SELECT a FROM t".into(),
            transaction_id: None,
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.endpoint.len(), 1);
    let announced = Schema::try_from(info.clone()).unwrap();
    let batches = read(&svc, info.endpoint[0].ticket.clone().unwrap()).await;
    assert_eq!(batches[0].schema().as_ref(), &announced);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let asked = double.queries.lock().unwrap();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].sql, "SELECT a FROM t");
    assert_eq!(
        asked[0].pins,
        Pins::from([(frame(), Pin::new(7, "marker-1"))])
    );
    assert_eq!(asked[0].session.hive.as_str(), "default");
    // The node that planned it kept the plan: the ticket names it for the DoGet.
    assert_eq!(asked[0].plan_key.as_deref(), Some("kept-plan-7"));
}

#[tokio::test]
async fn tampered_tickets_and_unknown_commands_are_invalid_arguments() {
    let svc = service(Arc::new(Double::default()));
    let forged = TicketStatementQuery {
        statement_handle: b"not a sealed ticket".to_vec().into(),
    };
    let err = svc
        .do_get(Request::new(Ticket::new(forged.as_any().encode_to_vec())))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = svc
        .get_flight_info(Request::new(FlightDescriptor::new_cmd(
            Any {
                type_url: "type.googleapis.com/nothing".into(),
                value: vec![].into(),
            }
            .encode_to_vec(),
        )))
        .await
        .err()
        .unwrap();
    assert_ne!(err.code(), Code::Ok);
}

#[tokio::test]
async fn a_storage_failure_in_set_session_options_is_not_an_invalid_value() {
    let double = Arc::new(Double {
        flaky: true,
        ..Default::default()
    });
    let svc = service(double);
    let req = apiary_proto::flight_session::SetSessionOptionsRequest {
        session_options: [(
            "catalog".to_string(),
            apiary_proto::flight_session::SessionOptionValue {
                option_value: Some(
                    apiary_proto::flight_session::session_option_value::OptionValue::StringValue(
                        "sales".into(),
                    ),
                ),
            },
        )]
        .into(),
    };
    let err = svc
        .do_action(Request::new(Action::new(
            "SetSessionOptions",
            req.encode_to_vec(),
        )))
        .await
        .err()
        .expect("a storage failure fails the call");
    assert_eq!(err.code(), Code::Internal);
}

#[tokio::test]
async fn get_tables_lists_frames_and_system_tables_with_schemas() {
    let svc = service(Arc::new(Double::default()));
    let info = svc
        .get_flight_info(Request::new(command(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("%".repeat(100_000)),
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })))
        .await
        .unwrap()
        .into_inner();
    let batches = read(&svc, info.endpoint[0].ticket.clone().unwrap()).await;
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name("table_name")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .clone();
            (0..c.len()).map(move |i| c.value(i).to_string())
        })
        .collect();
    assert!(names.contains(&"t".to_string()), "{names:?}");
    assert!(names.contains(&"queries".to_string()), "{names:?}");
}

#[tokio::test]
async fn an_update_reports_its_row_count_in_total_records() {
    let svc = service(Arc::new(Double::default()));
    let info = svc
        .get_flight_info(Request::new(command(CommandStatementQuery {
            query: "INSERT INTO t VALUES (1)".into(),
            transaction_id: None,
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.total_records, 1);
    // Run as a query, an INSERT also answers one `count` row, carried by its ticket.
    assert_eq!(info.endpoint.len(), 1);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&info.schema).unwrap();
    assert_eq!(schema.field(0).name(), "count");
}

/// GetFlightInfo of a query `peer` sends (`None`: in-process, as without the auth layer).
async fn info_from(
    svc: &ApiaryFlightService,
    sql: &str,
    peer: Option<std::net::IpAddr>,
) -> arrow_flight::FlightInfo {
    let mut req = Request::new(command(CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    }));
    let mut who = crate::auth::Principal::anonymous();
    who.peer = peer;
    req.extensions_mut().insert(who);
    svc.get_flight_info(req).await.unwrap().into_inner()
}

/// Each endpoint's location URIs, in order.
fn locations_of(info: &arrow_flight::FlightInfo) -> Vec<Vec<String>> {
    info.endpoint
        .iter()
        .map(|e| e.location.iter().map(|l| l.uri.clone()).collect())
        .collect()
}

#[tokio::test]
async fn a_shared_result_has_one_endpoint_per_share_located_at_its_node() {
    let double = Arc::new(Double::default());
    let svc = service(double.clone());
    let info = info_from(&svc, "SELECT a FROM t -- shared", None).await;
    assert_eq!(info.endpoint.len(), 3);
    let locations = locations_of(&info);
    assert_eq!(
        locations,
        vec![
            vec![],
            vec![
                "grpc://127.0.0.1:50052".to_string(),
                "grpc://10.0.0.1:50051".to_string()
            ],
            vec![
                "grpc://10.0.0.3:50051".to_string(),
                "grpc://10.0.0.1:50051".to_string()
            ],
        ]
    );
    for e in &info.endpoint {
        read(&svc, e.ticket.clone().unwrap()).await;
    }
    let asked = double.queries.lock().unwrap().clone();
    let shares: Vec<Option<Share>> = asked.iter().map(|q| q.share).collect();
    assert_eq!(
        shares,
        (0..3)
            .map(|index| Some(Share {
                index,
                of: 3,
                partitions: Some(6)
            }))
            .collect::<Vec<_>>()
    );
    // Each share is a query of its own; only the first runs the plan kept here.
    let ids: std::collections::HashSet<&String> = asked.iter().map(|q| &q.query_id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(asked[0].plan_key.as_deref(), Some("kept-plan-7"));
    assert!(asked[1..].iter().all(|q| q.plan_key.is_none()));
    // Cancelling the FlightInfo cancels every share.
    let cancel = arrow_flight::CancelFlightInfoRequest::new(info.clone());
    svc.do_action(Request::new(Action::new(
        "CancelFlightInfo",
        cancel.encode_to_vec(),
    )))
    .await
    .unwrap();
    assert_eq!(double.cancelled.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_caller_from_another_host_is_never_sent_to_a_loopback_url() {
    let svc = service(Arc::new(Double::default()));
    let remote = Some("192.0.2.7".parse().unwrap());
    let info = info_from(&svc, "SELECT a FROM t -- shared", remote).await;
    let locations = locations_of(&info);
    // The share whose node advertises 127.0.0.1 is served over this connection instead.
    assert_eq!(
        locations,
        vec![
            vec![],
            vec![],
            vec![
                "grpc://10.0.0.3:50051".to_string(),
                "grpc://10.0.0.1:50051".to_string()
            ],
        ]
    );
    // A caller on this host may be sent anywhere.
    let local = info_from(
        &svc,
        "SELECT a FROM t -- shared",
        Some("127.0.0.1".parse().unwrap()),
    )
    .await;
    assert_eq!(local.endpoint[1].location.len(), 2);
    // Unshared results stay one endpoint on this connection.
    let one = info_from(&svc, "SELECT a FROM t", remote).await;
    assert_eq!(one.endpoint.len(), 1);
    assert!(one.endpoint[0].location.is_empty());
}
