//! Hot paths of the Flight service: sealing and opening tickets and prepared-statement handles,
//! and encoding a large result stream as FlightData.

use std::sync::Arc;

use apiary_proto::v1::{PinnedFrameV1, PreparedStatementV1, StatementTicketV1};
use apiary_server::auth::Signer;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::encode::FlightDataEncoderBuilder;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use prost::Message;

fn ticket() -> StatementTicketV1 {
    StatementTicketV1 {
        query_id: "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4c5b".into(),
        sql: "SELECT l_returnflag, sum(l_quantity) FROM lineitem WHERE l_shipdate <= date '1998-09-02' GROUP BY 1".into(),
        parameters: Default::default(),
        default_hive: "default".into(),
        default_box: "default".into(),
        pins: vec![PinnedFrameV1 {
            hive: "default".into(),
            box_name: "default".into(),
            frame: "lineitem".into(),
            version: 42,
            incarnation: "0193a6f2-7c4e-7b1a-9d55-6f0e2b8c1d3e".into(),
        }],
        user: "alice".into(),
        expires_at_ms: 1_800_000_000_000,
        jdbc: false,
        schema: Default::default(),
        affected: None,
        options: Vec::new(),
        plan_key: String::new(),
        share: None,
    }
}

fn tickets(c: &mut Criterion) {
    let signer = Signer::new(b"a shared swarm key of some length");
    let t = ticket();
    let sealed = signer.seal("ticket", t.encode_to_vec());
    c.bench_function("ticket/seal", |b| {
        b.iter(|| signer.seal("ticket", std::hint::black_box(&t).encode_to_vec()))
    });
    c.bench_function("ticket/open", |b| {
        b.iter(|| {
            let payload = signer
                .open("ticket", std::hint::black_box(&sealed))
                .unwrap();
            StatementTicketV1::decode(payload).unwrap()
        })
    });
    let handle = PreparedStatementV1 {
        sql: "INSERT INTO t VALUES ($1, $2)".into(),
        parameters: vec![0u8; 512].into(),
        default_hive: "default".into(),
        default_box: "default".into(),
        user: "alice".into(),
        expires_at_ms: 1_800_000_000_000,
        dataset_schema: Default::default(),
        options: Vec::new(),
    };
    c.bench_function("handle/seal+open", |b| {
        b.iter(|| {
            let sealed = signer.seal("prepared", handle.encode_to_vec());
            signer.open("prepared", &sealed).unwrap()
        })
    });
}

fn flight_data(c: &mut Criterion) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("comment", DataType::Utf8, false),
    ]));
    let rows = 65_536;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            Arc::new(StringArray::from_iter_values((0..rows).map(|i| {
                format!("carefully final deposits {i} haggle furiously")
            }))),
        ],
    )
    .unwrap();
    let batches: Vec<RecordBatch> = std::iter::repeat_n(batch, 16).collect();
    let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("flight_data");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("encode 16 x 64Ki rows", |b| {
        b.to_async(&rt).iter(|| async {
            let input = futures::stream::iter(batches.clone().into_iter().map(Ok));
            let mut s = FlightDataEncoderBuilder::new()
                .with_schema(schema.clone())
                .with_max_flight_data_size(2 * 1024 * 1024)
                .build(input);
            let mut n = 0usize;
            while let Some(fd) = s.next().await {
                n += fd.unwrap().data_body.len();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, tickets, flight_data);
criterion_main!(benches);
