//! A selective scan of a frame of 8 cells, with the node's Parquet metadata cache (every
//! footer decoded once, then hit) against without it (`--metadata-cache-size 0`: each scan
//! reads and decodes every footer again).

use std::sync::Arc;

use apiary_storage::{FrameRef, FrameTable, Ident, Lakehouse, LedgerConfig, S3Options, Storage};
use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::SessionContext;

const CELLS: i64 = 8;
const ROWS: i64 = 200_000;
const COLUMNS: usize = 16;

async fn lakehouse(dir: &std::path::Path, cache: usize) -> Lakehouse {
    let storage = Storage::open(dir.to_str().unwrap(), &S3Options::default()).unwrap();
    let config = LedgerConfig {
        metadata_cache_bytes: cache,
        ..Default::default()
    };
    Lakehouse::open(storage, config).await.unwrap()
}

fn frame_ref() -> FrameRef {
    let name = |s| Ident::parse(s).unwrap();
    FrameRef::new(name("default"), name("default"), name("bench"))
}

async fn fill(lh: &Lakehouse) {
    let fields: Vec<Field> = (0..COLUMNS)
        .map(|i| Field::new(format!("c{i}"), DataType::Int64, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let frame = frame_ref();
    lh.create_frame(&frame, &schema, &[], &[], false)
        .await
        .unwrap();
    for cell in 0..CELLS {
        let snap = lh.frame(&frame, None).await.unwrap();
        let mut w = lh.ledger().writer(&snap).unwrap();
        let columns: Vec<ArrayRef> = (0..COLUMNS as i64)
            .map(|c| {
                Arc::new(Int64Array::from_iter_values(
                    (cell * ROWS..(cell + 1) * ROWS).map(|v| v * (c + 1)),
                )) as ArrayRef
            })
            .collect();
        w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
            .await
            .unwrap();
        let adds = w.finish().await.unwrap();
        lh.ledger().commit(&snap, adds, false, None).await.unwrap();
    }
}

fn scans(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async { fill(&lakehouse(dir.path(), 0).await).await });
    // Rows of one cell: the log prunes the other cells, row groups and pages prune most of
    // this one, so reading and decoding its footer is a large part of the scan.
    let sql = format!(
        "SELECT sum(c1) FROM bench WHERE c0 BETWEEN {ROWS} AND {}",
        ROWS + 999
    );
    for (name, cache) in [
        (
            "metadata cache hit",
            apiary_storage::footers::DEFAULT_METADATA_CACHE_BYTES,
        ),
        ("no metadata cache", 0),
    ] {
        let (lh, ctx) = rt.block_on(async {
            let lh = lakehouse(dir.path(), cache).await;
            let snap = lh.frame(&frame_ref(), None).await.unwrap();
            let ctx = SessionContext::new();
            ctx.register_table(
                "bench",
                Arc::new(FrameTable::new(snap, lh.ledger().clone())),
            )
            .unwrap();
            (lh, ctx)
        });
        c.bench_function(&format!("footers/selective scan of 8 cells, {name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { ctx.sql(&sql).await.unwrap().collect().await.unwrap() })
        });
        let st = lh.ledger().footers().stats();
        assert!(cache == 0 || st.hits > 0, "{st:?}");
    }
}

criterion_group!(benches, scans);
criterion_main!(benches);
