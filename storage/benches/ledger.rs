//! A ledger append commit on the local backend: write one small cell and commit it.

use std::sync::Arc;

use apiary_storage::{FrameRef, Ident, Lakehouse, LedgerConfig, S3Options, Storage};
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{Criterion, criterion_group, criterion_main};

fn append_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    let frame = FrameRef::new(
        Ident::parse("default").unwrap(),
        Ident::parse("default").unwrap(),
        Ident::parse("bench").unwrap(),
    );
    let lh = rt.block_on(async {
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let lh = Lakehouse::open(storage, LedgerConfig::default())
            .await
            .unwrap();
        lh.create_frame(&frame, &schema, &[], &[], false)
            .await
            .unwrap();
        lh
    });
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(0..1000))],
    )
    .unwrap();
    c.bench_function("ledger/append 1000 rows + commit (local)", |b| {
        b.to_async(&rt).iter(|| async {
            let snap = lh.frame(&frame, None).await.unwrap();
            let mut w = lh.ledger().writer(&snap).unwrap();
            w.write(&batch).await.unwrap();
            let adds = w.finish().await.unwrap();
            lh.ledger().commit(&snap, adds, false, None).await.unwrap()
        })
    });
}

criterion_group!(benches, append_commit);
criterion_main!(benches);
