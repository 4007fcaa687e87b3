//! A node's statements against a local root, through the node's own entry points.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_storage::{FrameRef, Ident, Lakehouse, LedgerConfig, S3Options, Storage};
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::engine::{IfExists, IfMissing, Role, WriteMode};
use crate::error::Error;
use crate::service::IngestRequest;
use crate::{Node, NodeConfig, Session};

async fn node(tweak: impl FnOnce(&mut NodeConfig)) -> (Arc<Node>, tempfile::TempDir) {
    node_pausing(None, tweak).await
}

/// A node whose commits wait `pause` first.
async fn node_pausing(
    pause: Option<Duration>,
    tweak: impl FnOnce(&mut NodeConfig),
) -> (Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let storage = Storage::open(root.to_str().unwrap(), &S3Options::default()).unwrap();
    // Cells of one batch each, so that a write cut short has put several.
    let config = LedgerConfig {
        cell_target_bytes: 1,
        pause_before_commit: pause,
        ..LedgerConfig::default()
    };
    let lakehouse = Lakehouse::open(storage, config).await.unwrap();
    let mut cfg = NodeConfig::local(1, 256 << 20, dir.path().join("scratch"));
    tweak(&mut cfg);
    (Node::new(lakehouse, cfg).unwrap(), dir)
}

fn frame_t() -> FrameRef {
    let id = |s| Ident::parse(s).unwrap();
    FrameRef::new(id("default"), id("default"), id("t"))
}

/// The Parquet files under `t`'s root.
fn cells_of_t(dir: &tempfile::TempDir) -> usize {
    fn count(p: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .map(|e| e.unwrap().path())
            .map(|p| match p.is_dir() {
                true => count(&p),
                false => usize::from(p.extension().is_some_and(|e| e == "parquet")),
            })
            .sum()
    }
    count(&dir.path().join("root/default/default/t"))
}

/// Whether `t`'s root comes to hold `n` cells. A cell whose put was in flight when its write
/// was cut short may land after the cleanup, which deletes it again a few seconds later.
async fn cells_become(dir: &tempfile::TempDir, n: usize) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if cells_of_t(dir) == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Whether `t`'s name is free again within `limit`: far less than the minute after which a
/// reservation nobody holds is taken over anyway.
async fn freed_within(node: &Node, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let marker = node.lakehouse().catalog().frame_marker(&frame_t()).await;
        if marker.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A CTAS past the query deadline fails with a timeout and gives its name up with its
/// cells: the same CTAS run again at once creates the frame (waiting, if need be, for the
/// cleanup that the first one's end started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ctas_stopped_by_its_deadline_frees_the_name_at_once() {
    let (node, dir) = node(|c| c.bees.query_timeout = Duration::from_millis(700)).await;
    let session = Session::new("t");
    let stmt = node
        .engine()
        .parse_one("CREATE TABLE t AS SELECT value AS v FROM generate_series(1, 100000000000)")
        .unwrap();
    let err = node.update("q1", &session, &stmt, Vec::new()).await;
    assert!(matches!(err, Err(Error::Timeout(_))), "{err:?}");
    let stmt = node
        .engine()
        .parse_one("CREATE TABLE t AS SELECT 1 AS v")
        .unwrap();
    let created = node.update("q2", &session, &stmt, Vec::new()).await;
    assert_eq!(created.unwrap().0, 1, "the name was not free again");
    assert!(
        cells_become(&dir, 1).await,
        "the interrupted CTAS left its cells"
    );
}

/// A `create` ingest into `t` of three batches of two rows; then, if `hang`, a client that
/// sends nothing more.
async fn ingest_three(node: &Node, hang: bool) -> crate::error::Result<u64> {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
    let batches = futures::stream::iter([Ok(batch.clone()), Ok(batch.clone()), Ok(batch)]);
    let data = match hang {
        true => batches.chain(futures::stream::pending()).boxed(),
        false => batches.boxed(),
    };
    let data = Box::pin(RecordBatchStreamAdapter::new(schema.clone(), data));
    let request = IngestRequest {
        frame: frame_t(),
        mode: WriteMode {
            if_exists: IfExists::Fail,
            if_missing: IfMissing::Create,
            partition_by: None,
            cluster_by: None,
            merge_schema: false,
        },
        user: "t".into(),
        role: Role::Admin,
    };
    node.ingest_stream(request, Some(schema), data).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_whose_client_hangs_up_frees_the_name_at_once() {
    let (node, dir) = node(|_| {}).await;
    let ingest = ingest_three(&node, true);
    // Driven until it has put a cell for each batch, then dropped, as tonic drops an RPC's
    // future when its client resets the stream.
    let put = async {
        while cells_of_t(&dir) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let marker = node.lakehouse().catalog().frame_marker(&frame_t()).await;
        assert!(
            marker.unwrap().is_some(),
            "the ingest had reserved the name"
        );
    };
    tokio::select! {
        ended = ingest => panic!("the ingest ended without its client: {ended:?}"),
        _ = put => {}
        _ = tokio::time::sleep(Duration::from_secs(60)) => panic!("no cells put"),
    }
    assert!(
        freed_within(&node, Duration::from_secs(10)).await,
        "the abandoned ingest still holds the name"
    );
    assert!(
        cells_become(&dir, 0).await,
        "the abandoned ingest left its cells"
    );
}

/// A creating write cut short while it commits version 0 is not given up from outside: that
/// commit may still land, and giving the name up under it could hide a frame whose creation
/// (or a joiner's append) was acknowledged. The name settles once stale, as after a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creating_write_cut_short_while_committing_keeps_its_name() {
    let (node, dir) = node_pausing(Some(Duration::from_secs(20)), |_| {}).await;
    let ingest = ingest_three(&node, false);
    // All its cells written, it pauses before committing: cut short there.
    let committing = async {
        while cells_of_t(&dir) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        ended = ingest => panic!("the ingest ended during its commit pause: {ended:?}"),
        _ = committing => {}
    }
    assert!(
        !freed_within(&node, Duration::from_secs(3)).await,
        "a write cut short while committing gave its name up"
    );
    assert_eq!(cells_of_t(&dir), 3, "its cells may be committed yet");
}

/// Changes to the namespace take no bee: on a node whose only bee is busy they run at once
/// (a `CREATE TABLE` waiting for another writer's creation of its name holds none either).
/// Statements that write rows still wait for the bee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_changes_take_no_bee() {
    let (node, _dir) = node(|_| {}).await;
    let busy = node.bees.acquire("busy").await.unwrap();
    let session = Session::new("t");
    let update = |sql: &'static str| {
        let (node, session) = (node.clone(), session.clone());
        async move {
            let stmt = node.engine().parse_one(sql).unwrap();
            node.update("q", &session, &stmt, Vec::new()).await
        }
    };
    for sql in [
        "CREATE BOX b",
        "CREATE TABLE b.e (v BIGINT)",
        "CREATE TABLE IF NOT EXISTS b.e (v BIGINT)",
        "CREATE VIEW b.w AS SELECT 1 AS one",
        "DROP VIEW b.w",
        "DROP TABLE b.e",
        "DROP BOX b",
    ] {
        let ran = tokio::time::timeout(Duration::from_secs(30), update(sql)).await;
        ran.unwrap_or_else(|_| panic!("{sql} waited for the busy bee"))
            .unwrap();
    }
    let ctas = update("CREATE TABLE t AS SELECT 1 AS v");
    tokio::pin!(ctas);
    let early = tokio::time::timeout(Duration::from_millis(500), &mut ctas).await;
    assert!(early.is_err(), "a CTAS ran without a bee: {early:?}");
    drop(busy);
    assert_eq!(ctas.await.unwrap().0, 1);
}

/// A creating ingest whose client stops sending (alive, but silent) is stopped once it has
/// waited `ingest_idle_timeout` for a batch: DEADLINE_EXCEEDED, its bee free, the name given up
/// with its cells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_whose_client_stops_sending_is_stopped() {
    let (node, dir) = node(|c| c.ingest_idle_timeout = Duration::from_millis(500)).await;
    let got = tokio::time::timeout(Duration::from_secs(60), ingest_three(&node, true)).await;
    match got.expect("the ingest still waits for its client") {
        Err(Error::ClientIdle(idle)) => assert_eq!(idle, Duration::from_millis(500)),
        other => panic!("{other:?}"),
    }
    assert!(freed_within(&node, Duration::from_secs(10)).await);
    assert!(
        cells_become(&dir, 0).await,
        "the stopped ingest left its cells"
    );
    // Its bee is free again: the node's only one runs the next write.
    let stmt = node
        .engine()
        .parse_one("CREATE TABLE t AS SELECT 1 AS v")
        .unwrap();
    let created = node
        .update("q", &Session::new("t"), &stmt, Vec::new())
        .await;
    assert_eq!(created.unwrap().0, 1);
}
