//! One storage conformance suite, run against every backend: process memory, a local directory
//! and a real S3-compatible server (moto) on loopback.

use std::sync::Arc;

use apiary_runtime::{Engine, EngineConfig, Output, Session};
use apiary_storage::{
    BoxRef, Error, FrameRef, Ident, Lakehouse, LedgerConfig, ObjectKind, S3Options, Storage, paths,
};
use apiary_tests::Moto;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use futures::TryStreamExt;

fn ident(s: &str) -> Ident {
    Ident::parse(s).unwrap()
}

fn frame(h: &str, b: &str, f: &str) -> FrameRef {
    FrameRef::new(ident(h), ident(b), ident(f))
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
    ]))
}

fn batch(ids: std::ops::Range<i64>, region: &str) -> RecordBatch {
    let n = ids.end - ids.start;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from(vec![region; n as usize])),
        ],
    )
    .unwrap()
}

async fn append(lh: &Lakehouse, f: &FrameRef, b: RecordBatch) -> i64 {
    let snap = lh.frame(f, None).await.unwrap();
    let mut w = lh.ledger().writer(&snap).unwrap();
    w.write(&b).await.unwrap();
    let adds = w.finish().await.unwrap();
    lh.ledger().commit(&snap, adds, false, None).await.unwrap()
}

async fn count(engine: &Engine, sql: &str) -> i64 {
    let mut session = Session::new("test");
    let stmt = engine.parse_one(sql).unwrap();
    let Output::Rows(stream) = engine.execute(&mut session, &stmt, None).await.unwrap() else {
        panic!("expected rows")
    };
    let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

fn engine(lh: &Lakehouse) -> Engine {
    Engine::new(
        lh.clone(),
        EngineConfig::default(),
        Arc::new(RuntimeEnvBuilder::new().build().unwrap()),
    )
}

// ---- the checks --------------------------------------------------------------------------------

async fn catalog_basics(storage: Storage) {
    let lh = Lakehouse::open(storage.clone(), LedgerConfig::default())
        .await
        .unwrap();
    let cat = lh.catalog();
    assert_eq!(cat.list_hives().await.unwrap(), vec![ident("default")]);
    assert_eq!(
        cat.list_boxes(None).await.unwrap(),
        vec![BoxRef::new(ident("default"), ident("default"))]
    );
    assert!(cat.create_hive(&ident("sales"), false).await.unwrap());
    assert!(matches!(
        cat.create_hive(&ident("sales"), false).await,
        Err(Error::AlreadyExists {
            kind: ObjectKind::Hive,
            ..
        })
    ));
    assert!(!cat.create_hive(&ident("sales"), true).await.unwrap());
    let eu = BoxRef::new(ident("sales"), ident("eu"));
    assert!(cat.create_box(&eu, false).await.unwrap());
    assert!(matches!(
        cat.create_box(&BoxRef::new(ident("nope"), ident("x")), false)
            .await,
        Err(Error::NotFound {
            kind: ObjectKind::Hive,
            ..
        })
    ));
    // A second process on the same root sees the same namespace.
    let other = Lakehouse::open(storage, LedgerConfig::default())
        .await
        .unwrap();
    assert_eq!(
        other.catalog().list_hives().await.unwrap(),
        vec![ident("default"), ident("sales")]
    );
    assert_eq!(
        other
            .catalog()
            .list_boxes(Some(&ident("sales")))
            .await
            .unwrap(),
        vec![BoxRef::new(ident("sales"), ident("default")), eu.clone()]
    );
    // Non-empty refuses, cascade drops.
    let f = frame("sales", "eu", "orders");
    lh.create_frame(&f, &schema(), &[], &[], false)
        .await
        .unwrap();
    assert!(matches!(
        lh.drop_box(&eu, false, false).await,
        Err(Error::NotEmpty { .. })
    ));
    assert!(matches!(
        lh.drop_hive(&ident("sales"), false, false).await,
        Err(Error::NotEmpty { .. })
    ));
    assert!(lh.drop_hive(&ident("sales"), false, true).await.unwrap());
    assert_eq!(cat.list_hives().await.unwrap(), vec![ident("default")]);
    assert!(other.frame(&f, None).await.is_err());
    assert!(lh.drop_hive(&ident("default"), false, true).await.is_err());
}

async fn create_races_have_one_winner(storage: Storage) {
    let lh = Lakehouse::open(storage, LedgerConfig::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let lh = lh.clone();
        tasks.push(apiary_runtime::executor::spawn(async move {
            lh.catalog().create_hive(&ident("race"), false).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(true) => wins += 1,
            Err(Error::AlreadyExists { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);

    let f = frame("race", "default", "t");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let lh = lh.clone();
        let f = f.clone();
        tasks.push(apiary_runtime::executor::spawn(async move {
            lh.create_frame(&f, &schema(), &[], &[], false).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(_)) => wins += 1,
            Err(Error::AlreadyExists { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
}

async fn frame_lifecycle(storage: Storage) {
    let lh = Lakehouse::open(storage, LedgerConfig::default())
        .await
        .unwrap();
    let f = frame("default", "default", "events");
    let created = lh
        .create_frame(&f, &schema(), &["region".to_string()], &[], false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.version(), 0);
    assert_eq!(created.partition_columns(), &["region".to_string()]);
    assert_eq!(append(&lh, &f, batch(0..10, "a")).await, 1);
    assert_eq!(append(&lh, &f, batch(10..30, "b")).await, 2);
    let latest = lh.frame(&f, None).await.unwrap();
    assert_eq!(latest.version(), 2);
    assert_eq!(latest.stats().rows, 30);
    assert_eq!(latest.stats().cells, 2);
    // Pinned versions read exactly what was committed then.
    assert_eq!(lh.frame(&f, Some(1)).await.unwrap().stats().rows, 10);
    assert!(matches!(
        lh.frame(&f, Some(99)).await,
        Err(Error::NotFound { .. }) | Err(Error::Delta(_))
    ));
    let e = engine(&lh);
    assert_eq!(
        count(&e, "SELECT count(*) FROM events WHERE region = 'b'").await,
        20
    );
    // Overwrite replaces in one commit.
    let snap = lh.frame(&f, None).await.unwrap();
    let mut w = lh.ledger().writer(&snap).unwrap();
    w.write(&batch(100..105, "c")).await.unwrap();
    let adds = w.finish().await.unwrap();
    assert_eq!(
        lh.ledger().commit(&snap, adds, true, None).await.unwrap(),
        3
    );
    assert_eq!(count(&e, "SELECT count(*) FROM events").await, 5);
    // Drop, then the name is free and a new frame starts empty. No cell is left: only the
    // log, ended by the drop's commit, for the next frame of the name to begin after.
    assert!(lh.drop_frame(&f, false).await.unwrap());
    assert!(matches!(
        lh.frame(&f, None).await,
        Err(Error::NotFound {
            kind: ObjectKind::Frame,
            ..
        })
    ));
    let left: Vec<String> = lh
        .storage()
        .list(&paths::frame_root(&f))
        .await
        .unwrap()
        .iter()
        .map(|m| m.location.to_string())
        .filter(|k| !k.contains("/_delta_log/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    lh.create_frame(&f, &schema(), &[], &[], false)
        .await
        .unwrap();
    assert_eq!(count(&e, "SELECT count(*) FROM events").await, 0);
}

async fn concurrent_appends_lose_nothing(storage: Storage) {
    let lh = Lakehouse::open(storage.clone(), LedgerConfig::default())
        .await
        .unwrap();
    let f = frame("default", "default", "busy");
    lh.create_frame(&f, &schema(), &[], &[], false)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        // Separate lakehouses: separate caches, as separate processes would have.
        let storage = storage.clone();
        let f = f.clone();
        tasks.push(apiary_runtime::executor::spawn(async move {
            let lh = Lakehouse::open(storage, LedgerConfig::default())
                .await
                .unwrap();
            for i in 0..8i64 {
                let start = (w * 100 + i) * 10;
                append(&lh, &f, batch(start..start + 10, "x")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fresh = Lakehouse::open(storage.clone(), LedgerConfig::default())
        .await
        .unwrap();
    let fresh_snap = fresh.frame(&f, None).await.unwrap();
    let snap = lh.frame(&f, None).await.unwrap();
    let log: Vec<String> = storage
        .list(&apiary_storage::paths::frame_root(&f).join("_delta_log"))
        .await
        .unwrap()
        .iter()
        .map(|m| m.location.to_string())
        .collect();
    assert_eq!(
        (fresh_snap.version(), fresh_snap.stats().rows),
        (32, 320),
        "fresh reader; log: {log:?}"
    );
    assert_eq!(snap.version(), 32, "cached reader");
    assert_eq!(snap.stats().rows, 320);
    assert_eq!(
        count(&engine(&lh), "SELECT count(DISTINCT id) FROM busy").await,
        320
    );
}

async fn listing_does_not_grow_with_history(storage: Storage) {
    let lh = Lakehouse::open(storage.clone(), LedgerConfig::default())
        .await
        .unwrap();
    for i in 0..10 {
        let f = frame("default", "default", &format!("t{i}"));
        lh.create_frame(&f, &schema(), &[], &[], false)
            .await
            .unwrap();
        lh.drop_frame(&f, false).await.unwrap();
        lh.catalog().create_hive(&ident("h"), false).await.unwrap();
        lh.drop_hive(&ident("h"), false, false).await.unwrap();
    }
    // Only live markers remain: default hive + default box.
    let markers = storage
        .list(&object_store::path::Path::from("_apiary/catalog"))
        .await
        .unwrap();
    assert_eq!(markers.len(), 2, "{markers:?}");
}

/// A delete bounded by a watermark spares what was written after it: a drop held up half way
/// deleted the cells of a frame created under the name meanwhile. On a store that keeps whole
/// seconds (moto), the watermark waits for the next second.
async fn deletes_before_a_watermark_spare_later_writes(storage: Storage) {
    let dir = object_store::path::Path::from("default/default/w");
    let put = |name: &'static str| {
        let (storage, key) = (storage.clone(), dir.clone().join(name));
        async move {
            storage
                .put(&key, bytes::Bytes::from_static(b"x"))
                .await
                .unwrap()
        }
    };
    put("old").await;
    let before = storage.watermark().await.unwrap();
    put("new").await;
    assert_eq!(storage.delete_prefix_before(&dir, before).await.unwrap(), 1);
    let left: Vec<String> = storage
        .list(&dir)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.filename().unwrap_or_default().to_string())
        .collect();
    assert_eq!(left, ["new"]);
    // The probes that read the clock are gone.
    let probes = storage
        .list(&object_store::path::Path::from("_apiary/clock"))
        .await
        .unwrap();
    assert!(probes.is_empty(), "{probes:?}");
}

// ---- one module per check, one test per backend ------------------------------------------------

fn memory() -> Storage {
    Storage::open(
        &format!("memory://{}", uuid::Uuid::new_v4().simple()),
        &S3Options::default(),
    )
    .unwrap()
}

fn local(dir: &tempfile::TempDir) -> Storage {
    Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap()
}

fn s3(moto: &Moto) -> Storage {
    Storage::open(
        &moto.url("root"),
        &S3Options {
            endpoint: Some(moto.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            session_token: None,
            allow_http: true,
        },
    )
    .unwrap()
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$check(super::memory()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                let dir = tempfile::tempdir().unwrap();
                super::$check(super::local(&dir)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3_moto() {
                let moto = apiary_tests::Moto::start("conformance");
                super::$check(super::s3(&moto)).await
            }
        }
    )*};
}

conformance!(
    catalog_basics,
    create_races_have_one_winner,
    frame_lifecycle,
    concurrent_appends_lose_nothing,
    listing_does_not_grow_with_history,
    deletes_before_a_watermark_spare_later_writes,
);
