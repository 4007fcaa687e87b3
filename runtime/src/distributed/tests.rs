//! Two nodes in one process on one storage root, driven through the real coordinator and worker
//! code: claims are exclusive, and a fragment a node gives up completes on another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_storage::format::{SwarmKey, TaskV1};
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

    /// Every node writes its heartbeat, then every node reads the swarm's; twice, so that each
    /// sees the others beat (a heartbeat seen once counts for nothing yet).
    async fn meet(&self, nodes: &[&Arc<Node>]) {
        for _ in 0..2 {
            for n in nodes {
                n.beat().await.unwrap();
            }
            for n in nodes {
                n.dist()
                    .world
                    .refresh(&self.storage, &n.config().swarm_key)
                    .await
                    .unwrap();
            }
        }
    }
}

/// Frame `t` of one column `v` = 1..=10000, made through `node`.
async fn series_t(node: &Node) -> Session {
    let mut session = Session::new("t");
    run(node, &mut session, "CREATE TABLE t (v BIGINT)").await;
    run(
        node,
        &mut session,
        "INSERT INTO t SELECT value FROM generate_series(1, 10000)",
    )
    .await;
    session
}

/// The sum and count of the multiples of 3 in `t` (see [`series_t`]), as computed here.
fn thirds() -> (i64, i64) {
    let v: Vec<i64> = (1..=10000).filter(|v| v % 3 == 0).collect();
    (v.iter().sum(), v.len() as i64)
}

/// Run the sum and count of the multiples of 3 in `t` as a distributed query coordinated by
/// `node`, every task posted to node `to`. Returns the answer, the run (its objects stay until
/// it is dropped) and how many tasks it had.
async fn thirds_posted_to(
    node: &Node,
    session: &Session,
    to: &str,
    qid: &str,
) -> ((i64, i64), super::DistributedRun, u64) {
    let sql = "SELECT sum(v) AS s, count(*) AS n FROM t WHERE v % 3 = 0";
    let plan = plan(node, session, sql).await;
    let mut proposal = propose(node.dist(), &plan).expect("two live nodes and cells to read");
    for t in &mut proposal.tasks {
        t.node = to.into();
    }
    let tasks = proposal.tasks.len() as u64;
    let (root, run) = start(
        node.dist(),
        qid,
        sql,
        &plan,
        proposal,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let batches: Vec<RecordBatch> = tokio::time::timeout(
        Duration::from_secs(60),
        datafusion::physical_plan::collect(root, node.engine().plan_context()),
    )
    .await
    .expect("the query finished")
    .unwrap();
    let int = |c: usize| {
        batches[0]
            .column(c)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    };
    ((int(0), int(1)), run, tasks)
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
    let stage = cut::find_stages(&plan, cut::Shuffles::All).remove(0);
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
        let seal = &a.config().swarm_key;
        let plan_path = paths::task_plan(&key).unwrap();
        storage
            .put(&plan_path, seal.seal("plan", &plan_path, &bytes))
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
            let path = paths::inbox_entry(n, &key).unwrap();
            storage
                .put(&path, seal.seal_object(&path, &task))
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
    let session = series_t(&giver).await;
    swarm.meet(&[&giver, &taker]).await;
    giver.start();
    taker.start();
    let hold = giver
        .dist()
        .bees
        .acquire("holding the only bee")
        .await
        .unwrap();
    let qid = "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4cff";
    // Every task goes to the giver first.
    let (sums, run, tasks) = thirds_posted_to(&giver, &session, "giver", qid).await;
    assert_eq!(sums, thirds());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_left_by_a_crashed_node_gets_no_work() {
    let swarm = Swarm::new().await;
    let coord = swarm.node("coord", |_| {});
    let session = series_t(&coord).await;
    // A node that wrote its heartbeat and died, as found by a node starting after it.
    let ghost = swarm.node("ghost", |_| {});
    ghost.beat().await.unwrap();
    swarm.meet(&[&coord]).await;
    let sql = "SELECT sum(v) AS s, count(*) AS n FROM t WHERE v % 3 = 0";
    let p = plan(&coord, &session, sql).await;
    assert_eq!(
        super::propose_or_why_not(coord.dist(), &p).err(),
        Some(super::proposal::Local::FewNodes),
        "work proposed to a node never seen beating"
    );
    // Once it beats, it is a place for work.
    swarm.meet(&[&coord, &ghost]).await;
    assert!(propose(coord.dist(), &p).is_some());
    coord.shutdown().await;
    ghost.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_cut_short_is_finished_by_the_next_call() {
    let swarm = Swarm::new().await;
    let node = swarm.node("n", |c| c.shutdown_grace = Duration::from_secs(30));
    node.start();
    node.beat().await.unwrap();
    let heartbeat = paths::heartbeat("n");
    let present = || async { swarm.storage.get_opt(&heartbeat).await.unwrap().is_some() };
    assert!(present().await);
    // Cleanup that takes a while: the first call waits for it and is dropped meanwhile, as the
    // server's drain is when its listener stops first.
    node.background()
        .spawn_finishing(tokio::time::sleep(Duration::from_secs(30)));
    let cut = tokio::time::timeout(Duration::from_millis(100), node.shutdown()).await;
    assert!(cut.is_err(), "the first call ended early");
    assert!(present().await);
    // The next call finishes: the node leaves the swarm.
    tokio::time::timeout(Duration::from_secs(20), node.shutdown())
        .await
        .expect("the second call ended");
    assert!(!present().await, "a heartbeat left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_with_a_free_bee_runs_what_a_sleeping_node_left_unclaimed() {
    let swarm = Swarm::new().await;
    let coord = swarm.node("coord", |_| {});
    // Alive in the heartbeats, but its inbox worker never runs: nothing it is given is claimed.
    let sleeper = swarm.node("sleeper", |_| {});
    let session = series_t(&coord).await;
    swarm.meet(&[&coord, &sleeper]).await;
    coord.start();
    assert!(!coord.dist().coordinated_lately());
    let qid = "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4cee";
    let (sums, run, tasks) = thirds_posted_to(&coord, &session, "sleeper", qid).await;
    assert_eq!(sums, thirds());
    // Every attempt was taken over (not reassigned after the claim timeout) and run once,
    // here.
    let stats = coord.dist().metrics.stats();
    assert_eq!(stats.stolen, tasks);
    assert_eq!(stats.fragments, tasks);
    assert!(run.is_finished());
    // The sleeper wakes: the entries it finds (if not yet cleaned up) are claimed already.
    worker::poll_once(sleeper.dist()).await.unwrap();
    assert_eq!(sleeper.dist().metrics.stats().fragments, 0);
    // Having posted to another node, the coordinator says so in its heartbeat, and the other
    // node, seeing it, keeps its inbox poll fast.
    assert!(coord.dist().coordinated_lately());
    assert!(!sleeper.dist().peer_coordinating());
    coord.beat().await.unwrap();
    sleeper
        .dist()
        .world
        .refresh(&swarm.storage, &sleeper.config().swarm_key)
        .await
        .unwrap();
    assert!(sleeper.dist().peer_coordinating());
    assert!(!coord.dist().peer_coordinating(), "only others count");
    drop(run);
    coord.shutdown().await;
    sleeper.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fragment_that_ends_here_is_read_without_waiting_for_a_poll() {
    let swarm = Swarm::new().await;
    // Storage polling as good as off: an hour between looks at the inbox and at the query's
    // objects. Only the in-process wakes (a task posted here, a fragment ended here) move it.
    let hourly = |c: &mut NodeConfig| {
        c.distribution.poll_min = Duration::from_secs(3600);
        c.distribution.poll_max = Duration::from_secs(3600);
    };
    let coord = swarm.node("coord", hourly);
    let other = swarm.node("other", hourly);
    let session = series_t(&coord).await;
    swarm.meet(&[&coord, &other]).await;
    coord.start();
    let qid = "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4cef";
    let (sums, run, tasks) = thirds_posted_to(&coord, &session, "coord", qid).await;
    assert_eq!(sums, thirds());
    assert_eq!(coord.dist().metrics.stats().fragments, tasks);
    assert!(run.is_finished());
    // The monitor ends (its abort lands on the runtime) and forgets the query: a late wake
    // finds nothing to wake.
    drop(run);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !coord.dist().outcomes.is_empty() {
        assert!(Instant::now() < deadline, "the ended monitor still watches");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    coord.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_local_root_another_node_sees_its_task_and_the_coordinator_its_end_without_a_poll() {
    let swarm = Swarm::new().await;
    // Polls an hour apart and no stealing: only the watch of the root can move this query.
    let watching = |c: &mut NodeConfig| {
        c.distribution.poll_min = Duration::from_secs(3600);
        c.distribution.poll_max = Duration::from_secs(3600);
        c.distribution.steal_after = Duration::ZERO;
    };
    let coord = swarm.node("coord", watching);
    let other = swarm.node("other", watching);
    let session = series_t(&coord).await;
    swarm.meet(&[&coord, &other]).await;
    coord.start();
    other.start();
    for (i, qid) in [
        "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4d01",
        "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4d02",
    ]
    .into_iter()
    .enumerate()
    {
        // The second query finds the inbox directory the first one's cleanup removed.
        let (sums, run, tasks) = thirds_posted_to(&coord, &session, "other", qid).await;
        assert_eq!(sums, thirds());
        assert_eq!(
            other.dist().metrics.stats().fragments,
            tasks * (i as u64 + 1)
        );
        assert_eq!(coord.dist().metrics.stats().fragments, 0);
        drop(run);
    }
    assert!(other.dist().metrics.stats().storage_wakes >= 2, "its inbox");
    assert!(
        coord.dist().metrics.stats().storage_wakes >= 2,
        "the outcomes"
    );
    // The coordinator looked at its own inbox only when the directory of inboxes appeared (a
    // file may land in a new directory before its watch is added, so that wakes every node).
    assert!(coord.dist().metrics.stats().inbox_polls <= 2);
    coord.shutdown().await;
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_that_spread_nothing_or_shipped_much_is_then_planned_for_this_node_alone() {
    use crate::service::{QueryRequest, QueryService};
    use futures::TryStreamExt;
    let swarm = Swarm::new().await;
    // Any cells are enough to plan for the swarm; a stage spreads only when its output is small.
    let a = swarm.node("local-a", |c| c.distribution.min_bytes = 1);
    let b = swarm.node("local-b", |c| c.distribution.min_bytes = 1);
    let session = series_t(&a).await;
    swarm.meet(&[&a, &b]).await;
    a.start();
    b.start();
    let query = |sql: &'static str| {
        let (a, session) = (a.clone(), session.clone());
        async move {
            let stmt = a.parse(sql).unwrap().remove(0);
            let planned = QueryService::plan(&*a, &session, &stmt, None, true)
                .await
                .unwrap();
            let stream = QueryService::query(
                &*a,
                QueryRequest {
                    query_id: uuid::Uuid::now_v7().to_string(),
                    session,
                    sql: sql.into(),
                    params: vec![],
                    pins: planned.pins,
                    plan_key: planned.plan_key,
                    share: None,
                },
            )
            .await
            .unwrap();
            let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
            batches.iter().map(|b| b.num_rows()).sum::<usize>()
        }
    };
    // Every row comes back: shipping them through storage does not pay, so nothing spreads.
    let all = "SELECT v FROM t";
    assert_eq!(
        super::propose_or_why_not(a.dist(), &plan(&a, &session, all).await).err(),
        Some(super::proposal::Local::NothingPays),
        "EXPLAIN says why"
    );
    assert!(!a.plans_locally(&session, all));
    assert_eq!(query(all).await, 10000);
    assert!(a.plans_locally(&session, all));
    assert_eq!(query(all).await, 10000, "the same answer, planned once");
    // A few rows of partial sums pay: that statement still spreads, and is never remembered.
    let sums = "SELECT v % 7 AS k, sum(v) FROM t GROUP BY v % 7";
    let coordinated = a.dist().metrics.stats().coordinated;
    assert_eq!(query(sums).await, 7);
    assert_eq!(a.dist().metrics.stats().coordinated, coordinated + 1);
    assert!(!a.plans_locally(&session, sums));
    // A filter DataFusion cannot estimate spreads (its default selectivity, 20 %, is small
    // enough), but the rows it kept came back wider than the cells they were read from: having
    // shipped more than a quarter of what it scanned, the statement is then planned here.
    let wide = "SELECT v, v + 1 AS w, v + 2 AS x, v + 3 AS y FROM t WHERE v % 3 = 0";
    assert!(!a.plans_locally(&session, wide));
    assert_eq!(query(wide).await, 3333);
    assert_eq!(a.dist().metrics.stats().coordinated, coordinated + 2);
    assert!(a.plans_locally(&session, wide));
    assert_eq!(query(wide).await, 3333, "the same answer, here");
    assert_eq!(a.dist().metrics.stats().coordinated, coordinated + 2);
    // Another box, or another swarm size, asks again.
    let mut elsewhere = session.clone();
    elsewhere.options = vec![("datafusion.execution.batch_size".into(), "1024".into())];
    assert!(!a.plans_locally(&elsewhere, all));
    for n in [&a, &b] {
        n.shutdown().await;
    }
}

/// Put `task` (and its plan) into `node`'s inbox the way a coordinator does, sealed with `key`.
async fn plant(storage: &Storage, key: &SwarmKey, node: &str, task_key: &AttemptKey, plan: &[u8]) {
    let plan_path = paths::task_plan(task_key).unwrap();
    storage
        .put(&plan_path, key.seal("plan", &plan_path, plan))
        .await
        .unwrap();
    let task = TaskV1 {
        v: 1,
        query_id: task_key.query_id.clone(),
        stage: task_key.stage,
        task: task_key.task,
        attempt: task_key.attempt,
        coordinator: "someone".into(),
        posted_at_ms: chrono::Utc::now().timestamp_millis(),
        deadline_at_ms: chrono::Utc::now().timestamp_millis() + 60_000,
    };
    let path = paths::inbox_entry(node, task_key).unwrap();
    storage
        .put(&path, key.seal_object(&path, &task))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_run_only_sealed_tasks_whose_plans_read_cells_of_this_root() {
    let swarm = Swarm::new().await;
    let a = swarm.node("worker-a", |_| {});
    let mut session = Session::new("t");
    run(&a, &mut session, "CREATE TABLE t (v BIGINT)").await;
    run(
        &a,
        &mut session,
        "INSERT INTO t SELECT value FROM generate_series(1, 100)",
    )
    .await;
    let plan = plan(&a, &session, "SELECT v FROM t WHERE v > 1").await;
    let stage = cut::find_stages(&plan, cut::Shuffles::All).remove(0);
    let group = cut::task_groups(&stage, 1).remove(0);
    let legit = datafusion_proto::bytes::physical_plan_to_bytes(
        cut::task_plan(&stage, group.clone()).unwrap(),
    )
    .unwrap();
    // A Parquet file outside the storage root, named by an otherwise well-formed fragment.
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("secret.parquet");
    let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![(
        "v",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![7])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    let stray = datafusion::datasource::physical_plan::FileGroup::new(vec![
        datafusion::datasource::listing::PartitionedFile::new(file.to_str().unwrap(), size),
    ]);
    let outside_plan =
        datafusion_proto::bytes::physical_plan_to_bytes(cut::task_plan(&stage, stray).unwrap())
            .unwrap();

    let key = &a.config().swarm_key;
    let storage = &swarm.storage;
    let q = |n: u32| format!("0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4d{n:02}");
    // 1. Planted without the swarm's key: dropped unread, nothing runs.
    let forged = AttemptKey::new(q(1), 0, 0, 1);
    plant(
        storage,
        &SwarmKey::new(b"not the swarm's key"),
        "worker-a",
        &forged,
        &legit,
    )
    .await;
    // 2. Sealed, but reading a file outside the root: refused, never read.
    let stray_key = AttemptKey::new(q(2), 0, 0, 1);
    plant(storage, key, "worker-a", &stray_key, &outside_plan).await;
    // 3. Sealed and legitimate: runs.
    let good = AttemptKey::new(q(3), 0, 0, 1);
    plant(storage, key, "worker-a", &good, &legit).await;
    worker::poll_once(a.dist()).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let (done, failed) = (paths::task_done, paths::task_failed);
    while storage
        .head_opt(&done(&good).unwrap())
        .await
        .unwrap()
        .is_none()
        || storage
            .head_opt(&failed(&stray_key).unwrap())
            .await
            .unwrap()
            .is_none()
    {
        assert!(Instant::now() < deadline, "the tasks never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        a.dist().metrics.stats().fragments,
        1,
        "only the legitimate task ran"
    );
    for k in [&forged] {
        assert!(storage.head_opt(&done(k).unwrap()).await.unwrap().is_none());
        assert!(
            storage
                .head_opt(&failed(k).unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }
    let body = storage
        .get_opt(&failed(&stray_key).unwrap())
        .await
        .unwrap()
        .unwrap()
        .0;
    let f: apiary_storage::format::FailedV1 = key
        .open_object(&failed(&stray_key).unwrap(), &body)
        .unwrap();
    assert!(
        !f.retryable && f.error.contains("not a cell"),
        "{}",
        f.error
    );
    assert!(
        storage
            .head_opt(&done(&stray_key).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    // The inbox is empty: forged entries are removed, not retried forever.
    let inbox = paths::inbox_prefix("worker-a").unwrap();
    assert!(storage.list(&inbox).await.unwrap().is_empty());
}

#[tokio::test]
async fn heartbeats_count_only_when_sealed_and_within_reason() {
    let swarm = Swarm::new().await;
    let a = swarm.node("observer", |_| {});
    let key = a.config().swarm_key.clone();
    let hb = |id: &str, bees: u32| apiary_storage::format::HeartbeatV1 {
        v: 1,
        node_id: id.into(),
        flight_url: String::new(),
        version: "t".into(),
        bees_total: bees,
        bees_busy: 0,
        memory_budget: 1,
        memory_reserved: 0,
        queue_depth: 0,
        temperature: 5.0,
        band: "cold".into(),
        cache: Default::default(),
        started_at: chrono::Utc::now(),
        written_at: chrono::Utc::now(),
        seq: 1,
        coordinating: false,
        interval_ms: 0,
    };
    for (id, k) in [
        ("forged", SwarmKey::new(b"wrong")),
        ("boastful", key.clone()),
    ] {
        let path = paths::heartbeat(id);
        swarm
            .storage
            .put(&path, k.seal_object(&path, &hb(id, 2000)))
            .await
            .unwrap();
    }
    a.dist().world.refresh(&swarm.storage, &key).await.unwrap();
    let nodes = a.dist().world.nodes();
    assert_eq!(nodes.len(), 1, "the forged heartbeat counts");
    assert_eq!(nodes[0].heartbeat.node_id, "boastful");
    assert_eq!(nodes[0].heartbeat.bees_total, 256);
    assert_eq!(nodes[0].heartbeat.temperature, 1.0);
}

/// `t (k, v)` with k = 1..100000 and v = 7k, on `a`; the session that made it.
async fn table_t(a: &Node) -> Session {
    let mut session = Session::new("t");
    run(a, &mut session, "CREATE TABLE t (k BIGINT, v BIGINT)").await;
    run(
        a,
        &mut session,
        "INSERT INTO t SELECT value, value * 7 FROM generate_series(1, 100000)",
    )
    .await;
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_spread_only_when_their_output_is_small() {
    let swarm = Swarm::new().await;
    let a = swarm.node("gate-a", |_| {});
    let session = table_t(&a).await;
    let stage = |sql: &'static str| {
        let (a, session) = (a.clone(), &session);
        async move { cut::find_stages(&plan(&a, session, sql).await, cut::Shuffles::None).remove(0) }
    };
    let pays = super::proposal::pays_to_spread;

    // Every row back through storage: cheaper to scan here.
    let all = stage("SELECT k, v FROM t").await;
    assert!(
        !pays(&all, 1),
        "a full scan's output is as big as its cells"
    );
    // Small by construction, and small by the log's bounds of `k`.
    let agg = stage("SELECT k % 10, sum(v) FROM t GROUP BY 1").await;
    assert!(cut::reduces(&agg.leaf));
    assert!(pays(&agg, 1));
    let few = stage("SELECT k, v FROM t WHERE k < 100").await;
    assert!(!cut::reduces(&few.leaf));
    assert!(
        pays(&few, 1),
        "a filter keeping 0.1 % of the rows ships little"
    );
    // A partial aggregate over a key with as many values as rows is not small.
    let by_key = stage("SELECT k, sum(v) FROM t GROUP BY k").await;
    assert!(
        !cut::reduces(&by_key.leaf),
        "k spans 1..100000 over 100000 rows"
    );
    // Below the threshold nothing spreads; a threshold of zero spreads everything.
    assert!(!pays(&agg, agg.bytes + 1));
    assert!(pays(&all, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_scan_waits_for_a_join_filter_from_outside_stays_here() {
    let swarm = Swarm::new().await;
    let a = swarm.node("filtered-a", |_| {});
    let session = table_t(&a).await;
    let ctx = a.engine().plan_context();
    // The aggregate's own stage: nothing outside it filters its scan.
    let alone = plan(&a, &session, "SELECT k, sum(v) FROM t GROUP BY k").await;
    let stages = super::proposal::travelling_stages(&alone, cut::Shuffles::None, &ctx);
    assert!(!stages.is_empty() && stages.iter().all(|s| s.1));
    // Joined with one key: the join hands that key to the scan under the aggregate, so the
    // stage would run elsewhere without the filter that leaves it one row to read.
    let joined = plan(
        &a,
        &session,
        "SELECT s.k, s.total FROM (SELECT k FROM t WHERE v = 70) a \
         JOIN (SELECT k, sum(v) AS total FROM t GROUP BY k) s ON a.k = s.k",
    )
    .await;
    let text = datafusion::physical_plan::displayable(joined.as_ref())
        .indent(false)
        .to_string();
    assert!(text.contains("DynamicFilter"), "{text}");
    let stages = super::proposal::travelling_stages(&joined, cut::Shuffles::None, &ctx);
    let aggregate = stages
        .iter()
        .find(|s| s.0.leaf.name() == "AggregateExec")
        .unwrap_or_else(|| panic!("no aggregate stage in\n{text}"));
    assert!(!aggregate.1, "{text}");
    let rows = datafusion::physical_plan::collect(joined, a.engine().plan_context())
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_decoded_elsewhere_makes_its_join_filters_again() {
    let swarm = Swarm::new().await;
    let a = swarm.node("refilter-a", |_| {});
    let mut session = table_t(&a).await;
    run(&a, &mut session, "CREATE TABLE s (k BIGINT)").await;
    run(&a, &mut session, "INSERT INTO s VALUES (10), (20)").await;
    let planned = plan(&a, &session, "SELECT sum(t.v) FROM s JOIN t ON s.k = t.k").await;
    let text = |p: &Arc<dyn ExecutionPlan>| {
        datafusion::physical_plan::displayable(p.as_ref())
            .indent(false)
            .to_string()
    };
    // The join and its probe scan are one stage; its task travels as bytes.
    let stage = cut::find_stages(&planned, cut::Shuffles::None)
        .into_iter()
        .find(|s| text(&s.leaf).contains("HashJoinExec"))
        .unwrap_or_else(|| panic!("no stage with the join in\n{}", text(&planned)));
    let group = cut::task_groups(&stage, 1).remove(0);
    let bytes = super::shuffle::encode(cut::task_plan(&stage, group.clone()).unwrap()).unwrap();
    let ctx = a.engine().plan_context();
    // Plain DataFusion encoding decodes the join's filter and the scan's as two: the scan's
    // stays empty.
    let plain = datafusion_proto::bytes::physical_plan_from_bytes(
        &datafusion_proto::bytes::physical_plan_to_bytes(
            crate::engine::without_pacing(cut::task_plan(&stage, group.clone()).unwrap()).unwrap(),
        )
        .unwrap(),
        &ctx,
    )
    .unwrap();
    datafusion::physical_plan::collect(plain.clone(), ctx.clone())
        .await
        .unwrap();
    let shows = |p: &Arc<dyn ExecutionPlan>, what: &str| {
        assert!(text(p).contains(what), "no {what} in\n{}", text(p))
    };
    shows(&plain, "DynamicFilter [ empty ]");
    // Ours keeps them one: the join hands its two keys to the scan.
    let decoded = super::shuffle::decode(&bytes, &ctx, None).unwrap();
    let task =
        crate::engine::in_fragment(decoded, ctx.session_config().options(), u64::MAX).unwrap();
    let rows = datafusion::physical_plan::collect(task.clone(), ctx)
        .await
        .unwrap();
    shows(&task, "DynamicFilter [ k@0 >= 10 AND k@0 <= 20");
    let sum = rows[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(sum, 7 * (10 + 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_aggregate_is_cut_at_its_shuffle_and_both_stages_travel() {
    let swarm = Swarm::new().await;
    let a = swarm.node("cut-a", |_| {});
    let session = table_t(&a).await;
    // `… + 1` is checked integer arithmetic, the decimal sum's argument is checked for its
    // digits (engine/checked.rs), `v * INTERVAL` scales an interval (engine/intervals.rs), and
    // a SIMILAR TO pattern read from a column is translated row by row (engine/similar_to.rs):
    // functions every node must know to decode the stage.
    let p = plan(
        &a,
        &session,
        "SELECT k % 1000 + 1, sum(v), sum(CAST(v AS DECIMAL(38, 0)) + 1), \
         max(TIMESTAMP '2024-01-01 00:00:00' + v * INTERVAL '1 second'), \
         max(CAST(k AS VARCHAR) SIMILAR TO CAST(v AS VARCHAR)) FROM t GROUP BY 1",
    )
    .await;
    let text = datafusion::physical_plan::displayable(p.as_ref())
        .indent(false)
        .to_string();
    assert!(text.contains("checked_add"), "{text}");
    assert!(text.contains("checked_decimal_digits"), "{text}");
    assert!(text.contains("interval_times"), "{text}");
    assert!(text.contains("similar_to_regex"), "{text}");
    let stages = cut::find_stages(&p, cut::Shuffles::PartialStates);
    let ctx = a.engine().plan_context();
    for s in &stages {
        let sample = match (&s.scan, &s.output) {
            (Some(_), Some(rep)) => rep.clone(),
            (Some(_), None) => s.leaf.clone(),
            (None, _) => cut::shuffle_task_plan(s, "q", 0, None, |_| vec![]).unwrap(),
        };
        let bytes = super::shuffle::encode(sample).unwrap();
        super::shuffle::decode(&bytes, &ctx, None)
            .unwrap_or_else(|e| panic!("stage {} does not travel: {e}\n{text}", s.id));
    }
    assert_eq!(stages.len(), 2, "{text}");
    assert!(stages[0].output.is_some() && stages[0].scan.is_some());
    assert_eq!(stages[1].inputs.len(), 1);
    assert!(stages[1].scan.is_none() && stages[1].output.is_none());
}

/// The rows of `k` (column 0) a plan gives, sorted.
async fn keys_of(node: &Node, plan: Arc<dyn ExecutionPlan>) -> Vec<i64> {
    let batches = datafusion::physical_plan::collect(plan, node.engine().plan_context())
        .await
        .unwrap();
    let mut keys: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_of_a_plain_scan_are_disjoint_complete_and_alike_whatever_the_plan_partitions() {
    let swarm = Swarm::new().await;
    let a = swarm.node("share-a", |_| {});
    let mut session = Session::new("t");
    run(&a, &mut session, "CREATE TABLE t (k BIGINT, v BIGINT)").await;
    for i in 0..5 {
        let sql = format!(
            "INSERT INTO t SELECT value, value * 7 FROM generate_series({}, {})",
            i * 20_000 + 1,
            (i + 1) * 20_000
        );
        run(&a, &mut session, &sql).await;
    }
    let sql = "SELECT k, v FROM t WHERE v % 3 = 0";
    let planned_for = |partitions: usize| {
        let (a, session) = (a.clone(), session.clone());
        async move {
            let stmt = a.engine().parse_one(sql).unwrap();
            let target = crate::engine::PlanTarget {
                partitions: Some(partitions),
                ..Default::default()
            };
            a.engine()
                .plan_query_for(&session, &stmt, None, &Pins::new(), target)
                .await
                .unwrap()
                .plan
        }
    };
    let root = a.storage().prefix().clone();
    let whole = keys_of(&a, planned_for(4).await).await;
    assert_eq!(whole.len(), 33_333);
    let mut union = Vec::new();
    for index in 0..3 {
        let share = crate::Share {
            index,
            of: 3,
            partitions: Some(4),
        };
        let mut seen = None;
        // Planned for 2 or for 7 partitions (two nodes planning differently), or run over 1 or
        // 3 local partitions: the same rows.
        for (partitions, local) in [(2, 1), (7, 3), (4, 2)] {
            let p = super::share_plan(&planned_for(partitions).await, share, &root, local).unwrap();
            let keys = keys_of(&a, p).await;
            assert!(!keys.is_empty(), "share {index} is empty");
            if let Some(first) = &seen {
                assert_eq!(&keys, first, "share {index} differs between plannings");
            }
            seen = Some(keys);
        }
        union.extend(seen.unwrap());
    }
    union.sort();
    assert_eq!(
        union, whole,
        "the shares are the whole result, each row once"
    );
    // Share 3 of 3 does not exist.
    let bad = crate::Share {
        index: 3,
        of: 3,
        partitions: None,
    };
    assert!(super::share_plan(&planned_for(4).await, bad, &root, 1).is_err());
    // What must see every row in one place is never shared.
    for sql in [
        "SELECT k FROM t ORDER BY k",
        "SELECT k FROM t LIMIT 10",
        "SELECT count(*) FROM t",
        "SELECT k % 10, sum(v) FROM t GROUP BY 1",
    ] {
        let stmt = a.engine().parse_one(sql).unwrap();
        let p = a
            .engine()
            .plan_query_for(
                &session,
                &stmt,
                None,
                &Pins::new(),
                crate::engine::PlanTarget {
                    partitions: Some(4),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .plan;
        let share = crate::Share {
            index: 0,
            of: 2,
            partitions: Some(4),
        };
        assert!(
            super::share_plan(&p, share, &root, 1).is_err(),
            "{sql} was shared"
        );
    }
}
