//! Two nodes in one process on one storage root, driven through the real coordinator and worker
//! code: claims are exclusive, and a fragment a node gives up completes on another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_storage::format::{TaskV1, Versioned};
use apiary_storage::paths::{self, AttemptKey};
use apiary_storage::{Lakehouse, LedgerConfig, S3Options, Storage};
use arrow::array::{AsArray, RecordBatch};
use datafusion::physical_plan::ExecutionPlan;

use super::{cut, propose, start, worker};
use crate::{Node, NodeConfig, Pins, Session};

struct Swarm {
    storage: Storage,
    _dir: tempfile::TempDir,
    scratch: tempfile::TempDir,
    lakehouse: Lakehouse,
}

impl Swarm {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
        let lakehouse = Lakehouse::open(storage.clone(), LedgerConfig::default())
            .await
            .unwrap();
        Self {
            storage,
            _dir: dir,
            scratch: tempfile::tempdir().unwrap(),
            lakehouse,
        }
    }

    fn node(&self, id: &str, tweak: impl FnOnce(&mut NodeConfig)) -> Arc<Node> {
        let mut cfg = NodeConfig::local(1, 64 << 20, self.scratch.path().to_path_buf());
        cfg.node_id = id.to_string();
        cfg.distribution.min_bytes = 0;
        cfg.distribution.poll_min = Duration::from_millis(10);
        cfg.distribution.poll_max = Duration::from_millis(50);
        tweak(&mut cfg);
        Node::new(self.lakehouse.clone(), cfg).unwrap()
    }
}

async fn run(node: &Node, session: &mut Session, sql: &str) {
    let stmt = node.engine().parse_one(sql).unwrap();
    node.engine().execute(session, &stmt, None).await.unwrap();
}

async fn plan(node: &Node, session: &Session, sql: &str) -> Arc<dyn ExecutionPlan> {
    let stmt = node.engine().parse_one(sql).unwrap();
    node.engine()
        .plan_query(session, &stmt, None, &Pins::new())
        .await
        .unwrap()
        .plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_racing_for_one_task_run_it_once() {
    let swarm = Swarm::new().await;
    let a = swarm.node("racer-a", |_| {});
    let b = swarm.node("racer-b", |_| {});
    let mut session = Session::new("t");
    run(&a, &mut session, "CREATE TABLE t (v BIGINT)").await;
    run(
        &a,
        &mut session,
        "INSERT INTO t SELECT value FROM generate_series(1, 1000)",
    )
    .await;
    let plan = plan(&a, &session, "SELECT v FROM t WHERE v % 2 = 0").await;
    let stage = cut::find_stages(&plan).remove(0);
    let group = cut::task_groups(&stage, 1).remove(0);
    let bytes =
        datafusion_proto::bytes::physical_plan_to_bytes(cut::task_plan(&stage, group).unwrap())
            .unwrap();
    let storage = &swarm.storage;
    for round in 0..5u32 {
        let key = AttemptKey::new(
            format!("0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4c{round:02}"),
            0,
            0,
            1,
        );
        storage
            .put(&paths::task_plan(&key).unwrap(), bytes.clone())
            .await
            .unwrap();
        let task = TaskV1 {
            v: 1,
            query_id: key.query_id.clone(),
            stage: 0,
            task: 0,
            attempt: 1,
            coordinator: "racer-a".into(),
            posted_at_ms: chrono::Utc::now().timestamp_millis(),
            deadline_at_ms: chrono::Utc::now().timestamp_millis() + 60_000,
        };
        // The same attempt lands in both inboxes; both workers poll at once.
        for n in ["racer-a", "racer-b"] {
            storage
                .put(&paths::inbox_entry(n, &key).unwrap(), task.encode())
                .await
                .unwrap();
        }
        let (ra, rb) = tokio::join!(worker::poll_once(a.dist()), worker::poll_once(b.dist()));
        ra.unwrap();
        rb.unwrap();
        let done = paths::task_done(&key).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while storage.head_opt(&done).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "the task never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let total = a.dist().metrics.stats().fragments + b.dist().metrics.stats().fragments;
        assert_eq!(total, (round + 1) as u64, "a task ran more than once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fragment_given_up_by_a_busy_node_completes_on_another() {
    let swarm = Swarm::new().await;
    // The giver has one bee and no queue: while its bee is taken it can only give work up.
    let giver = swarm.node("giver", |c| c.bees.queue_depth = 0);
    let taker = swarm.node("taker", |_| {});
    let mut session = Session::new("t");
    run(&giver, &mut session, "CREATE TABLE t (v BIGINT)").await;
    run(
        &giver,
        &mut session,
        "INSERT INTO t SELECT value FROM generate_series(1, 10000)",
    )
    .await;
    for n in [&giver, &taker] {
        n.beat().await.unwrap();
    }
    for n in [&giver, &taker] {
        n.dist().world.refresh(&swarm.storage).await.unwrap();
        n.start();
    }
    let sql = "SELECT sum(v) AS s, count(*) AS n FROM t WHERE v % 3 = 0";
    let plan = plan(&giver, &session, sql).await;
    let mut proposal = propose(giver.dist(), &plan).expect("two live nodes and cells to read");
    // Every task goes to the giver first.
    for t in &mut proposal.tasks {
        t.node = "giver".into();
    }
    let tasks = proposal.tasks.len() as u64;
    let hold = giver
        .dist()
        .bees
        .acquire("holding the only bee")
        .await
        .unwrap();
    let qid = "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4cff";
    let (root, run) = start(
        giver.dist(),
        qid,
        sql,
        &plan,
        proposal,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let ctx = giver.engine().plan_context();
    let batches: Vec<RecordBatch> = tokio::time::timeout(
        Duration::from_secs(60),
        datafusion::physical_plan::collect(root, ctx),
    )
    .await
    .expect("the query finished")
    .unwrap();
    let b = &batches[0];
    let expected: i64 = (1..=10000).filter(|v| v % 3 == 0).sum();
    assert_eq!(
        b.column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        expected
    );
    assert_eq!(
        b.column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        3333
    );
    // The giver ran nothing; the taker ran every task, as attempt 2.
    assert_eq!(giver.dist().metrics.stats().fragments, 0);
    assert_eq!(taker.dist().metrics.stats().fragments, tasks);
    // A query whose every task finished needs no cancel marker when it ends; its objects go.
    assert!(run.is_finished());
    drop(hold);
    drop(run);
    let prefix = paths::query_prefix(qid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !swarm.storage.list(&prefix).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the query's objects were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in [&giver, &taker] {
        n.shutdown().await;
    }
}
