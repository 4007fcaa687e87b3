//! The read and write paths, checked through the plans and files they produce: partition and
//! statistics pruning, row-group pruning, projection pushdown, streaming, cell sizing and
//! compression, partitioned layout, DESCRIBE.

use std::sync::Arc;

use apiary_runtime::{Engine, EngineConfig, Output, Pins, Session};
use apiary_storage::{Lakehouse, LedgerConfig, S3Options, Storage};
use arrow::array::{Array, AsArray, RecordBatch};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricValue;
use futures::{StreamExt, TryStreamExt};

struct Fixture {
    engine: Engine,
    session: Session,
    dir: tempfile::TempDir,
}

async fn fixture(config: LedgerConfig) -> Fixture {
    fixture_with(config, EngineConfig::default()).await
}

/// A fixture whose VACUUM may use any retention, down to 0 hours.
async fn vacuum_fixture() -> Fixture {
    let config = EngineConfig {
        vacuum_min_retention_hours: 0.0,
        ..EngineConfig::default()
    };
    fixture_with(LedgerConfig::default(), config).await
}

async fn fixture_with(config: LedgerConfig, engine: EngineConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let lakehouse = Lakehouse::open(storage, config).await.unwrap();
    let engine = Engine::new(
        lakehouse,
        engine,
        Arc::new(RuntimeEnvBuilder::new().build().unwrap()),
    );
    Fixture {
        engine,
        session: Session::new("test"),
        dir,
    }
}

impl Fixture {
    async fn run(&mut self, sql: &str) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for stmt in self.engine.parse(sql).unwrap() {
            match self.engine.execute(&mut self.session, &stmt, None).await {
                Ok(Output::Rows(s)) => out = s.try_collect().await.unwrap(),
                Ok(_) => {}
                Err(e) => panic!("{sql}: {e}"),
            }
        }
        out
    }

    async fn plan(&self, sql: &str) -> Arc<dyn ExecutionPlan> {
        let stmt = self.engine.parse_one(sql).unwrap();
        self.engine
            .plan_query(&self.session, &stmt, None, &Pins::new())
            .await
            .unwrap()
            .plan
    }

    /// Execute a planned query to the end and return (rows, plan) so metrics can be read.
    async fn run_plan(&self, sql: &str) -> (usize, Arc<dyn ExecutionPlan>) {
        let stmt = self.engine.parse_one(sql).unwrap();
        let planned = self
            .engine
            .plan_query(&self.session, &stmt, None, &Pins::new())
            .await
            .unwrap();
        let batches: Vec<RecordBatch> = planned.execute().unwrap().try_collect().await.unwrap();
        (
            batches.iter().map(|b| b.num_rows()).sum(),
            planned.plan.clone(),
        )
    }
}

fn scans(plan: &Arc<dyn ExecutionPlan>) -> Vec<FileScanConfig> {
    let mut out = Vec::new();
    if let Some(ds) = plan.downcast_ref::<DataSourceExec>()
        && let Some(cfg) = ds.data_source().downcast_ref::<FileScanConfig>()
    {
        out.push(cfg.clone());
    }
    for c in plan.children() {
        out.extend(scans(c));
    }
    out
}

fn scanned_files(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    scans(plan)
        .iter()
        .flat_map(|c| c.file_groups.iter().flat_map(|g| g.files().iter()))
        .map(|f| f.object_meta.location.to_string())
        .collect()
}

/// Sum of a named metric over every scan in the plan.
fn metric(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    let mut total = 0;
    if plan.is::<DataSourceExec>()
        && let Some(m) = plan.metrics()
    {
        total += m
            .iter()
            .filter(|x| x.value().name() == name)
            .map(|x| match x.value() {
                MetricValue::PruningMetrics {
                    pruning_metrics, ..
                } => pruning_metrics.pruned(),
                other => other.as_usize(),
            })
            .sum::<usize>();
    }
    for c in plan.children() {
        total += metric(c, name);
    }
    total
}

fn i64s(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_pruning_reads_only_matching_cells() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE ev (id BIGINT, region VARCHAR) PARTITIONED BY (region);
         INSERT INTO ev VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd');",
    )
    .await;
    let all = scanned_files(&f.plan("SELECT id FROM ev").await);
    assert_eq!(all.len(), 4);
    let files = scanned_files(
        &f.plan("SELECT id FROM ev WHERE region = 'a' OR region = 'b'")
            .await,
    );
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|p| p.contains("region=a/") || p.contains("region=b/")),
        "{files:?}"
    );
    let files = scanned_files(&f.plan("SELECT id FROM ev WHERE region IN ('c')").await);
    assert_eq!(files.len(), 1);
    assert!(files[0].contains("region=c/"));
    // Answers still right.
    let got = f
        .run("SELECT id FROM ev WHERE region = 'a' OR region = 'b' ORDER BY id")
        .await;
    assert_eq!(i64s(&got), vec![1, 2]);
}

/// A frame `t` of two cells: ids 1–1000 marked 'low', ids 5001–6000 marked 'high'.
async fn two_cells() -> Fixture {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE t (id BIGINT, v VARCHAR);
         INSERT INTO t SELECT value, 'low' FROM generate_series(1, 1000);
         INSERT INTO t SELECT value, 'high' FROM generate_series(5001, 6000);",
    )
    .await;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_statistics_prune_cells() {
    let mut f = two_cells().await;
    assert_eq!(scanned_files(&f.plan("SELECT v FROM t").await).len(), 2);
    assert_eq!(
        scanned_files(&f.plan("SELECT v FROM t WHERE id > 5500").await).len(),
        1
    );
    assert_eq!(
        scanned_files(
            &f.plan("SELECT v FROM t WHERE id BETWEEN 2000 AND 3000")
                .await
        )
        .len(),
        0
    );
    let got = f.run("SELECT count(*) FROM t WHERE id > 5500").await;
    assert_eq!(i64s(&got), vec![500]);
}

/// The type the scans of `plan` produce for column `name`.
fn scanned_type(plan: &Arc<dyn ExecutionPlan>, name: &str) -> arrow::datatypes::DataType {
    let mut node = plan.clone();
    while !node.is::<DataSourceExec>() {
        node = node.children()[0].clone();
    }
    node.schema()
        .field_with_name(name)
        .unwrap()
        .data_type()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_are_read_as_views_and_still_prune_cells() {
    use arrow::datatypes::DataType;
    let mut f = two_cells().await;
    // Decoded as views, as DataFusion reads its own Parquet tables; a filter typed for views
    // still prunes by the log's (plain) bounds.
    let plan = f.plan("SELECT v FROM t WHERE v = 'high'").await;
    assert_eq!(scanned_type(&plan, "v"), DataType::Utf8View);
    assert_eq!(scanned_files(&plan).len(), 1);
    let plan = f.plan("SELECT v FROM t WHERE v IN ('nope', 'none')").await;
    assert_eq!(scanned_files(&plan).len(), 0);
    let plan = f
        .plan("SELECT v FROM t WHERE v > 'k' AND v LIKE 'lo%'")
        .await;
    assert_eq!(scanned_files(&plan).len(), 1);
    let got = f
        .run("SELECT count(*) FROM t WHERE v = 'high' AND id > 5500")
        .await;
    assert_eq!(i64s(&got), vec![500]);
    let got = f.run("SELECT arrow_typeof(v) FROM t LIMIT 1").await;
    assert_eq!(got[0].column(0).as_string::<i32>().value(0), "Utf8View");
    // Row changes go through delta-rs with the stored types, and see the same rows.
    f.run("DELETE FROM t WHERE v = 'low' AND id <= 500").await;
    f.run("UPDATE t SET v = 'mid' WHERE v = 'low'").await;
    let got = f
        .run("SELECT count(*) FROM t WHERE v = 'mid' OR v = 'low'")
        .await;
    assert_eq!(i64s(&got), vec![500]);
    // DataFusion's own switch turns views off, for frames as for its Parquet tables.
    f.run("SET datafusion.execution.parquet.schema_force_view_types = false")
        .await;
    let plan = f.plan("SELECT v FROM t WHERE v = 'high'").await;
    assert_eq!(scanned_type(&plan, "v"), DataType::Utf8);
    assert_eq!(scanned_files(&plan).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_carry_column_statistics_from_the_log() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE s (id BIGINT, name VARCHAR, part VARCHAR) PARTITIONED BY (part);
         INSERT INTO s VALUES (1, 'ab', 'x'), (7, NULL, 'x'), (3, 'abcd', 'y');",
    )
    .await;
    let plan = f.plan("SELECT id, name, part FROM s").await;
    let scan = &scans(&plan)[0];
    // Per cell, as the optimizer sees them: rows, nulls and bounds; no sizes, so that row
    // counts choose join sides (see `scan_stats`).
    let mut seen = 0;
    for group in &scan.file_groups {
        for file in group.files() {
            let stats = file.statistics.as_ref().expect("cell statistics");
            let rows = *stats.num_rows.get_value().expect("exact rows");
            let id = &stats.column_statistics[0];
            assert!(id.min_value.get_value().is_some() && id.max_value.get_value().is_some());
            assert_eq!(id.byte_size.get_value(), None);
            assert_eq!(id.null_count.get_value(), Some(&0));
            // One entry per file column plus the partition column DataFusion appends.
            assert_eq!(stats.column_statistics.len(), 3);
            seen += rows;
        }
    }
    assert_eq!(seen, 3);
    let whole = scan.statistics();
    assert_eq!(whole.num_rows.get_value(), Some(&3));
    let id = &whole.column_statistics[0];
    assert_eq!(
        (id.min_value.get_value(), id.max_value.get_value()),
        (Some(&1i64.into()), Some(&7i64.into()))
    );
    assert!(
        !id.min_value.is_exact().unwrap(),
        "log bounds are never exact"
    );
    assert_eq!(
        whole.column_statistics[1].null_count.get_value(),
        Some(&1),
        "{whole:?} {:?}",
        scan.file_groups
    );
    // Inexact bounds are not answers: MIN/MAX still read the cells.
    let got = f.run("SELECT max(id) FROM s").await;
    assert_eq!(i64s(&got), vec![7]);
}

/// A join builds its hash table on the input with fewer rows, even when that input is a narrow
/// projection of a wide frame: the scan reports no whole-row byte total that would make the
/// few rows look larger than the many (TPC-H q12 built on 1.5 M orders against 31 K lineitems).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_builds_on_the_side_with_fewer_rows_whatever_the_unread_columns() {
    let mut f = fixture(LedgerConfig::default()).await;
    // `few`: 500 rows of a key, a short string and 30 more BIGINT columns (about 125 KB in all;
    // Delta keeps statistics of the first 32 columns); `many`: 5 000 rows of two BIGINTs (80 KB,
    // 40 KB of the key). Reading a string, the scan of `few` cannot size its two columns alone. Both sides are hashed into partitions (as at SF1), where the
    // build side is chosen from the inputs' statistics.
    let pad: Vec<String> = (1..31).map(|i| format!("value AS c{i}")).collect();
    f.run(&format!(
        "CREATE TABLE few AS SELECT value AS k, 'x' AS s, {} FROM generate_series(1, 500);
         CREATE TABLE many (k BIGINT, v BIGINT);
         INSERT INTO many SELECT value % 700, value FROM generate_series(1, 5000);
         SET datafusion.optimizer.hash_join_single_partition_threshold = 0;
         SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0;",
        pad.join(", ")
    ))
    .await;
    for sql in [
        "SELECT count(*), max(few.s) FROM many JOIN few ON many.k = few.k",
        "SELECT count(*), max(few.s) FROM few JOIN many ON many.k = few.k",
    ] {
        let plan = f.plan(sql).await;
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        let after_join = &text[text.find("HashJoinExec").expect("a hash join")..];
        let build = after_join
            .lines()
            .find(|l| l.contains("DataSourceExec"))
            .unwrap();
        assert!(build.contains("/few/"), "{sql} builds on `many`:\n{text}");
    }
    assert_eq!(
        i64s(
            &f.run("SELECT count(*) FROM many JOIN few ON many.k = few.k")
                .await
        ),
        vec![3600]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_groups_and_pages_are_pruned_inside_a_cell() {
    let mut f = fixture(LedgerConfig::default()).await;
    // Cells of several row groups (256 Ki rows each), ids ascending.
    f.run(
        "CREATE TABLE big (id BIGINT NOT NULL, v BIGINT);
         INSERT INTO big SELECT value, value * 2 FROM generate_series(1, 1000000);",
    )
    .await;
    let (rows, plan) = f
        .run_plan("SELECT v FROM big WHERE id BETWEEN 10 AND 20")
        .await;
    assert_eq!(rows, 11);
    let pruned = metric(&plan, "row_groups_pruned_statistics");
    assert!(pruned >= 3, "expected pruned row groups, metric = {pruned}");
    let pages = metric(&plan, "page_index_pages_pruned");
    assert!(pages >= 1, "expected pruned pages, metric = {pages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_is_pushed_into_the_scan() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE wide (a BIGINT, b VARCHAR, c VARCHAR, region VARCHAR) PARTITIONED BY (region);
         INSERT INTO wide SELECT value, md5(CAST(value AS VARCHAR)), md5(CAST(-value AS VARCHAR)), 'r' FROM generate_series(1, 20000);",
    )
    .await;
    let plan = f.plan("SELECT a FROM wide").await;
    let cfg = &scans(&plan)[0];
    let names: Vec<String> = cfg
        .projected_schema()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, vec!["a".to_string()]);
    // Columns come back in declared order even though partition columns are stored last.
    let got = f.run("SELECT * FROM wide LIMIT 1").await;
    let schema = got[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c", "region"]);
    let (_, narrow) = f.run_plan("SELECT a FROM wide").await;
    let (_, full) = f.run_plan("SELECT a, b, c FROM wide").await;
    let (nb, fb) = (
        metric(&narrow, "bytes_scanned"),
        metric(&full, "bytes_scanned"),
    );
    assert!(nb * 2 < fb, "narrow scan read {nb} bytes, full scan {fb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stream_in_bounded_batches() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE s (id BIGINT);
         INSERT INTO s SELECT value FROM generate_series(1, 300000);",
    )
    .await;
    let stmt = f.engine.parse_one("SELECT id FROM s").unwrap();
    let Output::Rows(mut stream) = f.engine.execute(&mut f.session, &stmt, None).await.unwrap()
    else {
        panic!()
    };
    let mut batches = 0;
    let mut rows = 0;
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        assert!(b.num_rows() <= 8192, "batch of {} rows", b.num_rows());
        batches += 1;
        rows += b.num_rows();
    }
    assert_eq!(rows, 300000);
    assert!(batches >= 300000 / 8192, "{batches} batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_follow_the_target_size_and_the_configured_codec() {
    use apiary_storage::CellCompression;
    use parquet::basic::Compression;
    let target = 1024 * 1024;
    for (codec, want) in [
        (CellCompression::default(), Compression::LZ4_RAW),
        (
            CellCompression::Zstd(3),
            Compression::ZSTD(Default::default()),
        ),
        (CellCompression::Snappy, Compression::SNAPPY),
    ] {
        let mut f = fixture(LedgerConfig {
            cell_target_bytes: target,
            compression: codec,
            ..Default::default()
        })
        .await;
        f.run(
            "CREATE TABLE h (id BIGINT, digest VARCHAR);
             INSERT INTO h SELECT value, md5(CAST(value AS VARCHAR)) FROM generate_series(1, 300000);",
        )
        .await;
        let dir = f.dir.path().join("default/default/h");
        let cells: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        assert!(
            cells.len() >= 3,
            "expected several cells, got {}",
            cells.len()
        );
        for c in &cells {
            let size = std::fs::metadata(c).unwrap().len();
            assert!(size <= 2 * target, "cell {} is {size} bytes", c.display());
            let reader =
                parquet::file::reader::SerializedFileReader::new(std::fs::File::open(c).unwrap())
                    .unwrap();
            use parquet::file::reader::FileReader;
            let rg = reader.metadata().row_group(0);
            for col in rg.columns() {
                // The codec, whatever its level.
                assert_eq!(
                    std::mem::discriminant(&col.compression()),
                    std::mem::discriminant(&want),
                    "{codec:?}"
                );
            }
        }
        let got = f.run("SELECT count(*) FROM h").await;
        assert_eq!(i64s(&got), vec![300000]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_writes_use_hive_style_directories() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE p (id BIGINT, region VARCHAR) PARTITIONED BY (region);
         INSERT INTO p VALUES (1, 'north'), (2, 'south'), (3, 'north');",
    )
    .await;
    let dir = f.dir.path().join("default/default/p");
    assert!(dir.join("region=north").is_dir());
    assert!(dir.join("region=south").is_dir());
    let got = f.run("SELECT count(*) FROM p WHERE region = 'north'").await;
    assert_eq!(i64s(&got), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_reports_schema_partitioning_version_and_size() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE d (id BIGINT NOT NULL, region VARCHAR) PARTITIONED BY (region);
         INSERT INTO d VALUES (1, 'a'), (2, 'b');
         INSERT INTO d VALUES (3, 'a');",
    )
    .await;
    let got = f.run("DESCRIBE d").await;
    let b = &got[0];
    let col = |i: usize| -> Vec<String> {
        let a = b.column(i).as_string::<i32>();
        (0..a.len()).map(|r| a.value(r).to_string()).collect()
    };
    let (names, types, comments) = (col(0), col(1), col(2));
    assert_eq!(&names[..2], &["id", "region"]);
    assert_eq!(&types[..2], &["BIGINT", "VARCHAR"]);
    assert_eq!(comments[0], "NOT NULL");
    let value = |key: &str| -> String {
        let i = names
            .iter()
            .position(|n| n == key)
            .unwrap_or_else(|| panic!("{key} missing"));
        types[i].clone()
    };
    assert!(names.contains(&"# Partition Information".to_string()));
    assert_eq!(value("Version"), "2");
    assert_eq!(value("Cells"), "3");
    assert_eq!(value("Rows"), "3");
    assert!(value("Bytes").parse::<u64>().unwrap() > 0);
    assert_eq!(value("Partition columns"), "region");
    assert!(value("Location").ends_with("/default/default/d/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_versions_replan_the_same_snapshot() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run("CREATE TABLE v (id BIGINT); INSERT INTO v VALUES (1), (2);")
        .await;
    let stmt = f.engine.parse_one("SELECT count(*) FROM v").unwrap();
    let first = f
        .engine
        .plan_query(&f.session, &stmt, None, &Pins::new())
        .await
        .unwrap();
    let versions = |pins: &Pins| pins.values().map(|p| p.version).collect::<Vec<_>>();
    assert_eq!(versions(&first.pins), vec![1]);
    f.run("INSERT INTO v VALUES (3)").await;
    // Re-planning with the pins reads version 1, not the newer one.
    let again = f
        .engine
        .plan_query(&f.session, &stmt, None, &first.pins)
        .await
        .unwrap();
    let rows: Vec<RecordBatch> = again.execute().unwrap().try_collect().await.unwrap();
    assert_eq!(i64s(&rows), vec![2]);
    let latest = f.run("SELECT count(*) FROM v").await;
    assert_eq!(i64s(&latest), vec![3]);

    // Dropped and created again, the name holds another table, which begins after the old
    // one's versions: the pins name the old one, which is gone.
    f.run("DROP TABLE v; CREATE TABLE v (id BIGINT); INSERT INTO v VALUES (7);")
        .await;
    let err = f
        .engine
        .plan_query(&f.session, &stmt, None, &first.pins)
        .await
        .expect_err("the pinned table is gone");
    assert!(
        err.to_string().contains("dropped and created again"),
        "{err}"
    );
}

/// A frame without cells scans as one empty partition: sorts and joins above it plan (the
/// parity run found `SortExec` refusing a scan of no partitions).
#[tokio::test]
async fn an_empty_frame_sorts_and_joins() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run("CREATE TABLE e (id INT, d DATE)").await;
    f.run("CREATE TABLE g AS SELECT 1 AS id").await;
    let sorted = f
        .run("SELECT id FROM e WHERE d > DATE '2020-01-01' ORDER BY id")
        .await;
    assert_eq!(sorted.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    let joined = f
        .run("SELECT g.id FROM e RIGHT JOIN g ON e.id = g.id")
        .await;
    assert_eq!(joined.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_way_around_the_column_limit() {
    use apiary_runtime::engine::{IfExists, IfMissing, WriteMode};
    use apiary_storage::{FrameRef, Ident};
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let lakehouse = Lakehouse::open(storage, LedgerConfig::default())
        .await
        .unwrap();
    let mut config = EngineConfig::default();
    config.limits.max_columns = 3;
    let engine = Engine::new(
        lakehouse,
        config,
        Arc::new(RuntimeEnvBuilder::new().build().unwrap()),
    );
    let mut session = Session::new("test");
    let mut run = async |sql: &str| {
        let stmt = engine.parse_one(sql).unwrap();
        engine
            .execute(&mut session, &stmt, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let refused = run("CREATE TABLE wide (a INT, b INT, c INT, d INT)").await;
    assert!(refused.unwrap_err().contains("--max-columns"));
    run("CREATE TABLE t (a INT, b INT)").await.unwrap();
    let refused = run("ALTER TABLE t ADD COLUMNS (c INT, d INT)").await;
    assert!(refused.unwrap_err().contains("--max-columns"));
    run("ALTER TABLE t ADD COLUMN c INT").await.unwrap();
    // An append that would grow the schema past the limit.
    let id = |n: &str| Ident::parse(n).unwrap();
    let frame = FrameRef::new(id("default"), id("default"), id("t"));
    let wider = Arc::new(Schema::new(
        ["a", "b", "c", "d"]
            .map(|n| Field::new(n, DataType::Int32, true))
            .to_vec(),
    ));
    let mode = WriteMode {
        if_exists: IfExists::Append,
        if_missing: IfMissing::Fail,
        partition_by: None,
        cluster_by: None,
        merge_schema: true,
    };
    let data = Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            wider.clone(),
            futures::stream::empty(),
        ),
    );
    let refused = engine
        .ingest(
            &frame,
            &mode,
            Some(&wider),
            data,
            &Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default()),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("--max-columns"), "{refused}");
    let columns = engine
        .lakehouse()
        .frame(&frame, None)
        .await
        .unwrap()
        .schema()
        .fields()
        .len();
    assert_eq!(columns, 3, "nothing was added");
}

/// How many cells a plan's scans read (a big cell may be split into several ranges).
fn cells_scanned(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let mut files = scanned_files(plan);
    files.sort();
    files.dedup();
    files.len()
}

/// The "Cluster columns" row of `DESCRIBE frame`.
async fn cluster_columns(f: &mut Fixture, frame: &str) -> String {
    let describe = f.run(&format!("DESCRIBE {frame}")).await;
    let names = describe[0].column(0).as_string::<i32>();
    let values = describe[0].column(1).as_string::<i32>();
    (0..names.len())
        .find(|&i| names.value(i) == "Cluster columns")
        .map(|i| values.value(i).to_string())
        .expect("DESCRIBE has a Cluster columns row")
}

/// Rows of `SELECT count(*) …` as one number.
fn count_of(batches: &[RecordBatch]) -> i64 {
    i64s(batches).iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_writes_sort_their_rows_so_filters_skip_cells() {
    use apiary_storage::{FrameRef, Ident};
    // Small cells: one write becomes many.
    let mut f = fixture(LedgerConfig {
        cell_target_bytes: 128 * 1024,
        ..LedgerConfig::default()
    })
    .await;
    // The same shuffled rows (k jumps around) into a clustered frame and a plain one.
    f.run(
        "CREATE TABLE c (id BIGINT NOT NULL, k BIGINT, note VARCHAR) CLUSTER BY (k);
         CREATE TABLE u (id BIGINT NOT NULL, k BIGINT, note VARCHAR);
         INSERT INTO c SELECT value, (value * 7919) % 100000, 'n' || value FROM generate_series(1, 200000);
         INSERT INTO u SELECT value, (value * 7919) % 100000, 'n' || value FROM generate_series(1, 200000);",
    )
    .await;
    let query = |t: &str| format!("SELECT count(*) FROM {t} WHERE k BETWEEN 500 AND 599");
    let cells = |t: &'static str| {
        let f = &f;
        async move {
            let id = |n: &str| Ident::parse(n).unwrap();
            let frame = FrameRef::new(id("default"), id("default"), id(t));
            f.engine
                .lakehouse()
                .frame(&frame, None)
                .await
                .unwrap()
                .cells()
                .len()
        }
    };
    let (c_cells, u_cells) = (cells("c").await, cells("u").await);
    assert!(
        c_cells >= 8,
        "a clustered write still rolls cells: {c_cells}"
    );
    let c_plan = f.plan(&query("c")).await;
    let u_plan = f.plan(&query("u")).await;
    // Each clustered cell holds a narrow range of k, so the log's statistics leave one or two.
    assert!(
        cells_scanned(&c_plan) <= 2,
        "clustered: {} of {c_cells} cells scanned",
        cells_scanned(&c_plan)
    );
    assert_eq!(cells_scanned(&u_plan), u_cells, "unclustered: every cell");
    let expected = count_of(&f.run(&query("u")).await);
    assert_eq!(expected, 200);
    assert_eq!(count_of(&f.run(&query("c")).await), expected);
    assert_eq!(
        count_of(&f.run("SELECT count(*) FROM c").await),
        200_000,
        "no row lost by the sort"
    );

    // ALTER TABLE … CLUSTER BY records the columns; OPTIMIZE re-clusters what was written.
    f.run("ALTER TABLE u CLUSTER BY (k); OPTIMIZE u").await;
    let u_plan = f.plan(&query("u")).await;
    assert!(
        cells_scanned(&u_plan) <= 2,
        "re-clustered: {} cells scanned",
        cells_scanned(&u_plan)
    );
    assert_eq!(count_of(&f.run(&query("u")).await), expected);
    assert_eq!(cluster_columns(&mut f, "u").await, "k");
    f.run("ALTER TABLE u CLUSTER BY NONE").await;
    assert_eq!(cluster_columns(&mut f, "u").await, "");

    // Columns that cannot cluster a frame are refused when named.
    for bad in [
        "CREATE TABLE x (a BIGINT) CLUSTER BY (b)",
        "CREATE TABLE x (a BIGINT, r VARCHAR) PARTITIONED BY (r) CLUSTER BY (r)",
        "CREATE TABLE x (a BIGINT) CLUSTER BY (a, a)",
        "ALTER TABLE c CLUSTER BY (nope)",
        "INSERT INTO c CLUSTER BY (k) SELECT 1, 2, 'x'",
    ] {
        let stmts = f.engine.parse(bad);
        let failed = match stmts {
            Err(_) => true,
            Ok(stmts) => f
                .engine
                .execute(&mut f.session, &stmts[0], None)
                .await
                .is_err(),
        };
        assert!(failed, "{bad} was accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clustered_ingest_bigger_than_its_memory_spills_and_keeps_every_row() {
    use apiary_runtime::engine::{IfExists, IfMissing, WriteMode};
    use apiary_storage::{FrameRef, Ident};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    let f = fixture(LedgerConfig {
        cell_target_bytes: 256 * 1024,
        ..LedgerConfig::default()
    })
    .await;
    let id = |n: &str| Ident::parse(n).unwrap();
    let frame = FrameRef::new(id("default"), id("default"), id("big"));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("pad", DataType::Utf8, false),
    ]));
    // 60 batches of 10,000 rows, about 26 MB, into a bee of 16 MiB: the sort must spill.
    let batches: Vec<_> = (0..60i64)
        .map(|b| {
            let ids: Vec<i64> = (0..10_000).map(|i| b * 10_000 + i).collect();
            let ks: Vec<i64> = ids.iter().map(|i| (i * 7919) % 1_000_003).collect();
            let pads: Vec<String> = ids.iter().map(|i| format!("{i:024}")).collect();
            Ok(RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(arrow::array::Int64Array::from(ids)),
                    Arc::new(arrow::array::Int64Array::from(ks)),
                    Arc::new(arrow::array::StringArray::from(pads)),
                ],
            )
            .unwrap())
        })
        .collect();
    let data = Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            schema.clone(),
            futures::stream::iter(batches),
        ),
    );
    let scratch = tempfile::tempdir().unwrap();
    let env = Arc::new(
        RuntimeEnvBuilder::new()
            .with_memory_limit(16 * 1024 * 1024, 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(
                DiskManagerMode::Directories(vec![scratch.path().to_path_buf()]),
            ))
            .build()
            .unwrap(),
    );
    let mode = WriteMode {
        if_exists: IfExists::Fail,
        if_missing: IfMissing::Create,
        partition_by: None,
        cluster_by: Some(vec!["k".into()]),
        merge_schema: false,
    };
    let rows = f
        .engine
        .ingest(&frame, &mode, Some(&schema), data, &env)
        .await
        .unwrap();
    assert_eq!(rows, 600_000);
    let snapshot = f.engine.lakehouse().frame(&frame, None).await.unwrap();
    assert_eq!(snapshot.cluster_by(), vec!["k".to_string()]);
    let mut f = f;
    assert_eq!(
        i64s(&f.run("SELECT count(DISTINCT id) FROM big").await),
        vec![600_000]
    );
    let plan = f.plan("SELECT id FROM big WHERE k < 1000").await;
    assert!(
        cells_scanned(&plan) <= 2,
        "{} of {} cells scanned",
        cells_scanned(&plan),
        snapshot.cells().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_filter_drops_rows_in_the_scan_while_it_is_selective() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run(
        "CREATE TABLE big (k BIGINT, v BIGINT);
         INSERT INTO big SELECT value % 20000, value FROM generate_series(1, 400000);
         CREATE TABLE three (k BIGINT);
         INSERT INTO three VALUES (7), (70), (700);
         CREATE TABLE lots (k BIGINT);
         INSERT INTO lots SELECT value * 4 FROM generate_series(1, 5000);
         CREATE TABLE few (k BIGINT);
         INSERT INTO few SELECT value * 49 FROM generate_series(1, 400);
         CREATE TABLE huge (k BIGINT);
         INSERT INTO huge SELECT value FROM generate_series(1, 800000);",
    )
    .await;
    // Three keys: the join's filter is an IN list, applied to the rows of `big` as they are read.
    let (rows, plan) = f
        .run_plan("SELECT sum(v) FROM big JOIN three ON big.k = three.k")
        .await;
    assert_eq!(rows, 1);
    assert!(metric(&plan, "pushdown_rows_pruned") > 0);
    // What the scans hand on: the 3 keys and the 60 rows of `big` that match them.
    assert_eq!(metric(&plan, "output_rows"), 63);
    // 400 keys: the filter probes the join's hash table. `big` is that join's probe side, where
    // the join probes every row anyway: the scan reads its rows as they are.
    let (_, plan) = f
        .run_plan("SELECT sum(v) FROM big JOIN few ON big.k = few.k")
        .await;
    assert_eq!(metric(&plan, "pushdown_rows_pruned"), 0);
    assert_eq!(metric(&plan, "output_rows"), 400 + 400_000);
    // Below the join with `few`, `big` is the build side of its join with `huge`: the filter
    // of the join above reaches `big`'s rows through it and is tried on them. It keeps 2 % of
    // them, so it stays, and the join with `huge` builds from 8,000 rows, not 400,000.
    let built_from = |small: &str| {
        format!(
            "SELECT count(*) FROM {small} JOIN \
             (SELECT big.k FROM big JOIN huge ON big.k = huge.k) s ON {small}.k = s.k"
        )
    };
    let (_, plan) = f.run_plan(&built_from("few")).await;
    assert!(metric(&plan, "pushdown_rows_pruned") >= 300_000);
    // 5,000 keys keep a quarter of `big` (of every batch of it: the trial judges the first
    // batches it sees): after its trial the probe is read as `true`, and the rest of the rows
    // are read as they are.
    let (_, plan) = f.run_plan(&built_from("lots")).await;
    let pruned = metric(&plan, "pushdown_rows_pruned");
    assert!(pruned < 100_000, "{pruned} rows pruned");
    // Above an aggregate, every row the filter drops is a row fewer in the aggregate's hash
    // table: there the filter is tried too, also beside the scan's own predicate, which then
    // reaches the rows with it.
    let grouped = |what: &str, filter: &str| {
        format!(
            "SELECT {what} FROM few JOIN \
             (SELECT k, sum(v) AS s FROM big {filter} GROUP BY k) g ON few.k = g.k"
        )
    };
    for filter in ["", "WHERE v > 10"] {
        let (_, plan) = f.run_plan(&grouped("count(*)", filter)).await;
        let pruned = metric(&plan, "pushdown_rows_pruned");
        assert!(pruned >= 300_000, "{filter}: {pruned} rows pruned");
        // 400 keys of 20 rows each, k = 49 i for i in 1..=400: the sum of v = k + 20000 j.
        let want = (1..=400i64)
            .map(|i| (0..20i64).map(|j| 49 * i + 20_000 * j).sum::<i64>())
            .sum::<i64>();
        assert_eq!(i64s(&f.run(&grouped("count(*)", filter)).await), vec![400]);
        assert_eq!(i64s(&f.run(&grouped("sum(g.s)", filter)).await), vec![want]);
    }
    // A string key that is not the scan's first column reaches the rows too. (A partitioned
    // join's lists merged for such a key: the unit test
    // `a_copy_for_the_row_filter_merges_its_lists_whatever_the_table_holds_at_its_index`.)
    f.run(
        "CREATE TABLE people (id BIGINT, name VARCHAR);
         INSERT INTO people SELECT value, 'n' || (value % 1000) FROM generate_series(1, 100000);
         CREATE TABLE names (name VARCHAR);
         INSERT INTO names VALUES ('n7'), ('n70'), ('n700');",
    )
    .await;
    let by_name = "SELECT count(*) FROM people JOIN names ON people.name = names.name";
    let (_, plan) = f.run_plan(by_name).await;
    assert!(metric(&plan, "pushdown_rows_pruned") > 0);
    assert_eq!(i64s(&f.run(by_name).await), vec![300]);
    // The answers are the join's either way.
    assert_eq!(
        i64s(
            &f.run("SELECT count(*) FROM big JOIN three ON big.k = three.k")
                .await
        ),
        vec![60]
    );
    assert_eq!(
        i64s(
            &f.run("SELECT count(*) FROM big JOIN lots ON big.k = lots.k")
                .await
        ),
        vec![99_980]
    );
    assert_eq!(
        i64s(
            &f.run("SELECT count(*) FROM big JOIN few ON big.k = few.k")
                .await
        ),
        vec![8_000]
    );
    assert_eq!(i64s(&f.run(&built_from("few")).await), vec![8_000]);
    assert_eq!(i64s(&f.run(&built_from("lots")).await), vec![99_980]);
}

/// Rows the scans of frame `name` handed on.
fn rows_read_from(plan: &Arc<dyn ExecutionPlan>, name: &str) -> usize {
    let mut total = 0;
    if let Some(ds) = plan.downcast_ref::<DataSourceExec>()
        && let Some(cfg) = ds.data_source().downcast_ref::<FileScanConfig>()
        && cfg
            .file_groups
            .iter()
            .flat_map(|g| g.files().iter())
            .any(|f| {
                f.object_meta
                    .location
                    .as_ref()
                    .contains(&format!("/{name}/"))
            })
    {
        total += plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
    }
    for c in plan.children() {
        total += rows_read_from(c, name);
    }
    total
}

fn has_node(plan: &Arc<dyn ExecutionPlan>, name: &str) -> bool {
    plan.name() == name || plan.children().into_iter().any(|c| has_node(c, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_filter_from_above_reaches_a_build_side_read_in_several_partitions() {
    let mut f = fixture(LedgerConfig::default()).await;
    // `dims` is two cells, so its scan has two partitions and the join with `facts` builds
    // from it through a merge of both. The join with `tags` above hands `dims.t = 7` down to
    // that scan: it must not start before that join has built.
    f.run(
        "CREATE TABLE dims (id BIGINT, t BIGINT);
         INSERT INTO dims SELECT value, value % 25 FROM generate_series(1, 10000);
         INSERT INTO dims SELECT value, value % 25 FROM generate_series(10001, 20000);
         CREATE TABLE facts (d BIGINT, v BIGINT);
         INSERT INTO facts SELECT value % 20000 + 1, value FROM generate_series(1, 400000);
         CREATE TABLE tags (t BIGINT, name VARCHAR);
         INSERT INTO tags SELECT value, 'tag' || value FROM generate_series(0, 24);",
    )
    .await;
    let sql = "SELECT count(*) FROM dims JOIN facts ON facts.d = dims.id \
               JOIN tags ON dims.t = tags.t WHERE tags.name = 'tag7'";
    let (_, plan) = f.run_plan(sql).await;
    assert!(
        has_node(&plan, "LazyStartExec"),
        "no lazy start in the plan"
    );
    // One `dims` row in 25 has t = 7: 800 of 20,000.
    assert_eq!(rows_read_from(&plan, "dims"), 800);
    assert_eq!(i64s(&f.run(sql).await), vec![16_000]);
}

/// An engine that has run nothing has not built DataFusion's state (its function registry is
/// most of the text a server pages in to start); the first statement builds it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_statement_builds_the_base_state() {
    let mut f = fixture(LedgerConfig::default()).await;
    assert!(!f.engine.base_built(), "built at start");
    let registry = f.engine.runtime_env().object_store_registry.clone();
    assert!(!f.engine.base_built(), "built by reading the runtime");
    assert_eq!(i64s(&f.run("SELECT 1 + 1").await), vec![2]);
    assert!(f.engine.base_built());
    assert!(Arc::ptr_eq(
        &registry,
        &f.engine.base_state().runtime_env().object_store_registry
    ));
}

/// `SHOW ALL` lists every option a session runs with, its own settings on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_all_lists_the_sessions_options() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run("SET datafusion.execution.batch_size = 512").await;
    let rows: Vec<(String, Option<String>)> = f
        .run("SHOW ALL")
        .await
        .iter()
        .flat_map(|b| {
            let (n, v) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_string::<i32>(),
            );
            (0..b.num_rows())
                .map(|i| {
                    (
                        n.value(i).to_string(),
                        v.is_valid(i).then(|| v.value(i).to_string()),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(rows.len() > 50, "{} options", rows.len());
    let value = |k: &str| rows.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        value("datafusion.execution.batch_size"),
        Some(Some("512".into()))
    );
    assert_eq!(value("apiary.merge_schema"), Some(Some("false".into())));
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "sorted by name");
}

/// A write gate that counts what it is asked.
#[derive(Debug, Default)]
struct CountingGate(std::sync::Mutex<Vec<usize>>);

#[async_trait::async_trait]
impl apiary_storage::WriteGate for CountingGate {
    async fn admit(&self, rows: usize) {
        self.0.lock().unwrap().push(rows);
    }
}

/// Every write asks the node's write gate first (which holds writes back while the colony runs
/// hot): INSERT before each batch, DELETE, UPDATE, MERGE and OPTIMIZE once before they start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_asks_the_write_gate() {
    let mut f = fixture(LedgerConfig::default()).await;
    let gate = Arc::new(CountingGate::default());
    f.engine = f.engine.clone().with_write_gate(gate.clone());
    let asked = || gate.0.lock().unwrap().clone();
    f.run("CREATE TABLE g (id INT, v INT)").await;
    f.run("INSERT INTO g VALUES (1, 10), (2, 20), (3, 30)")
        .await;
    assert_eq!(asked(), vec![3], "INSERT: once per batch, with its rows");
    f.run("DELETE FROM g WHERE id = 1").await;
    f.run("UPDATE g SET v = v + 1 WHERE id = 2").await;
    f.run("MERGE INTO g USING (SELECT 3 AS id) s ON g.id = s.id WHEN MATCHED THEN DELETE")
        .await;
    f.run("OPTIMIZE g").await;
    assert_eq!(asked(), vec![3, 0, 0, 0, 0]);
    assert_eq!(
        i64s(&f.run("SELECT CAST(v AS BIGINT) FROM g").await),
        vec![21]
    );
}

/// Partition values that file names must escape (a space, `%`, `/`, `=`): their cells are read,
/// rewritten and vacuumed like any other, and VACUUM deletes exactly the replaced files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_values_that_need_escaping_are_read_and_vacuumed() {
    let mut f = vacuum_fixture().await;
    let values = ["North America", "50%", "a/b", "x=y", "plain"];
    f.run("CREATE TABLE p (id BIGINT, region VARCHAR) PARTITIONED BY (region)")
        .await;
    let rows: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("({i}, '{v}')"))
        .collect();
    f.run(&format!("INSERT INTO p VALUES {}", rows.join(", ")))
        .await;
    let parquet = |root: &std::path::Path| {
        let mut n = 0;
        let mut stack = vec![root.join("default/default/p")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    n += 1;
                }
            }
        }
        n
    };
    let root = f.dir.path().to_path_buf();
    assert_eq!(parquet(&root), 5);
    let read = "SELECT CAST(sum(id) AS BIGINT) FROM p";
    assert_eq!(i64s(&f.run(read).await), vec![10]);
    assert_eq!(
        i64s(
            &f.run("SELECT id FROM p WHERE region = 'North America'")
                .await
        ),
        vec![0]
    );
    f.run("INSERT OVERWRITE p SELECT id + 10, region FROM p")
        .await;
    assert_eq!(i64s(&f.run(read).await), vec![60]);
    assert_eq!(parquet(&root), 10);
    let doomed = f.run("VACUUM p RETAIN 0 HOURS DRY RUN").await;
    let doomed: usize = doomed.iter().map(|b| b.num_rows()).sum();
    assert_eq!(doomed, 5, "the five replaced cells");
    f.run("VACUUM p RETAIN 0 HOURS").await;
    assert_eq!(parquet(&root), 5, "deleted from storage, not just counted");
    assert_eq!(i64s(&f.run(read).await), vec![60]);
}

/// A writer killed mid-upload leaves `<name>#<n>` files no listing shows (object_store stages
/// every local write so). VACUUM deletes those older than its retention, in the frame's data and
/// log directories, beside what delta-rs plans, and leaves young ones (a live writer's), links
/// and what they point to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_deletes_uploads_a_dead_writer_left_staged() {
    let mut f = vacuum_fixture().await;
    f.run("CREATE TABLE s (id BIGINT)").await;
    f.run("INSERT INTO s VALUES (1), (2), (3)").await;
    let frame = f.dir.path().join("default/default/s");
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("part-victim.parquet#1");
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let plant = |path: &std::path::Path, old: bool| {
        let file = std::fs::File::create(path).unwrap();
        if old {
            file.set_modified(two_hours_ago).unwrap();
        }
    };
    plant(&frame.join("part-00009-dead.parquet#1"), true);
    plant(&frame.join("_delta_log/00000000000000000009.json#2"), true);
    plant(&frame.join("part-00010-live.parquet#3"), false);
    plant(&frame.join("not#staged"), true);
    plant(&victim, true);
    std::os::unix::fs::symlink(outside.path(), frame.join("link#1")).unwrap();

    let names = |batches: &[RecordBatch]| {
        let mut names: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names
    };
    // `not#staged` is a plain file no version references: delta-rs's own plan names it.
    let doomed = [
        "_delta_log/00000000000000000009.json#2",
        "not#staged",
        "part-00009-dead.parquet#1",
    ];
    assert_eq!(
        names(&f.run("VACUUM s RETAIN 1 HOURS DRY RUN").await),
        doomed
    );
    assert!(
        frame.join("part-00009-dead.parquet#1").exists(),
        "a dry run deletes nothing"
    );
    f.run("VACUUM s RETAIN 1 HOURS").await;
    assert!(!frame.join("part-00009-dead.parquet#1").exists());
    assert!(
        !frame
            .join("_delta_log/00000000000000000009.json#2")
            .exists()
    );
    assert!(
        frame.join("part-00010-live.parquet#3").exists(),
        "a live writer's upload"
    );
    assert!(!frame.join("not#staged").exists());
    assert!(victim.exists(), "VACUUM followed a link out of the frame");
    assert_eq!(
        i64s(&f.run("SELECT CAST(sum(id) AS BIGINT) FROM s").await),
        vec![6]
    );
}

/// `information_schema.df_settings` holds the server's runtime settings (its scratch directory
/// among them): an admin reads it, a reader is refused; the rest of information_schema is
/// everyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn df_settings_is_an_admins_to_read() {
    let mut f = fixture(LedgerConfig::default()).await;
    assert!(
        !f.run("SELECT name FROM information_schema.df_settings")
            .await
            .is_empty()
    );
    f.session.role = apiary_runtime::Role::Reader;
    let stmt = f
        .engine
        .parse_one("SELECT name, value FROM information_schema.df_settings")
        .unwrap();
    let err = match f.engine.execute(&mut f.session, &stmt, None).await {
        Ok(_) => panic!("a reader read df_settings"),
        Err(e) => e,
    };
    assert!(matches!(err, apiary_runtime::Error::NotAllowed(_)), "{err}");
    assert!(
        !f.run("SELECT table_name FROM information_schema.tables")
            .await
            .is_empty()
    );
}

/// DataFusion's SHOW statements name every information_schema table, df_settings among them,
/// without reading it: a reader runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_runs_datafusions_show_statements() {
    let mut f = fixture(LedgerConfig::default()).await;
    f.run("CREATE TABLE r (id INT, name VARCHAR)").await;
    f.session.role = apiary_runtime::Role::Reader;
    let columns = f.run("SHOW COLUMNS FROM r").await;
    assert_eq!(columns.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    let functions = f.run("SHOW FUNCTIONS LIKE 'upper'").await;
    assert_eq!(functions.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

/// Planning awaits nothing, so a statement past its deadline could not be aborted while it
/// planned: every rule now gives up once its statement is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_statement_gives_up_planning() {
    use apiary_storage::commit_point::{Gate, scope};
    let f = fixture(LedgerConfig::default()).await;
    let stmt = f.engine.parse_one("SELECT 1 + 1 AS two").unwrap();
    let plan = |gate: Arc<Gate>| {
        let engine = f.engine.clone();
        let stmt = stmt.clone();
        async move {
            let mut session = Session::new("test");
            scope(gate, async move {
                engine.execute(&mut session, &stmt, None).await
            })
            .await
        }
    };
    assert!(plan(Arc::new(Gate::default())).await.is_ok());
    let stopped = Arc::new(Gate::default());
    assert!(stopped.stop());
    match plan(stopped).await {
        Ok(_) => panic!("a stopped statement plans nothing"),
        Err(e) => assert!(e.to_string().contains("stopped"), "{e}"),
    }
}

/// Planning grows faster than a statement's relations: past `--max-sql-relations` (256 by
/// default) it is refused before anything plans, whether they are joined or united.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_of_too_many_relations_is_refused() {
    let mut f = fixture(LedgerConfig::default()).await;
    let union = |n: usize| {
        let terms: Vec<String> = (0..n).map(|i| format!("SELECT {i} AS x")).collect();
        format!("SELECT count(*) FROM ({})", terms.join(" UNION ALL "))
    };
    let joins = |n: usize| {
        let more: Vec<String> = (1..n)
            .map(|i| format!("JOIN (SELECT 1 AS a{i}) t{i} ON t{i}.a{i} = t0.a0"))
            .collect();
        format!(
            "SELECT count(*) FROM (SELECT 1 AS a0) t0 {}",
            more.join(" ")
        )
    };
    // The outer query's subquery is one relation, its terms beyond the first the rest.
    let counted = f.run(&union(256)).await;
    let count = counted[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>();
    assert_eq!(count.value(0), 256);
    for sql in [union(257), joins(257)] {
        let stmt = f.engine.parse_one(&sql).unwrap();
        let e = f.engine.execute(&mut f.session, &stmt, None).await.err();
        let e = e.expect("beyond the bound").to_string();
        assert!(e.contains("--max-sql-relations"), "{e}");
    }
}
