//! SQL parity with DataFusion: DataFusion's own sqllogictest files (shipped in the
//! `datafusion-sqllogictest` crate at our DataFusion version; `scripts/test` fetches it with
//! `cargo fetch --manifest-path tests/slt-source/Cargo.toml`, nothing is built) run through a
//! real `apiary serve` over Flight SQL, each file in a fresh box, and through DataFusion's own
//! `SessionContext` in this process. Every statement and query is run on both; a record agrees
//! when both answer the same rows (rendered the same way) or both refuse it. `EXPLAIN` records
//! are run but not compared: the plans differ by construction.
//!
//! The agreement per file is kept in `tests/sql_parity.csv`; the test fails when a file agrees
//! on fewer records than recorded there (a regression), and rewrites the file with
//! `APIARY_PARITY_UPDATE=1`. `APIARY_PARITY_FILES=N` runs only the first N files (CI's quick
//! mode). Files that need data outside the crate (`../../testing/data`, `../core/tests/data`),
//! write to scratch directories, or belong to the Spark and TPC-H suites are not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apiary_tests::{Server, manifest_dir};
use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;
use sqllogictest::{Condition, DefaultColumnType, Record};
use tonic::transport::Channel;

/// How long one statement may take on either side before it counts as refused.
const RECORD_DEADLINE: Duration = Duration::from_secs(20);

/// What a statement answered: rendered rows, or a refusal.
type Outcome = Result<Vec<Vec<String>>, String>;

fn test_files() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    let registry = std::fs::read_dir(cargo_home.join("registry/src")).ok()?;
    registry
        .flatten()
        .map(|index| {
            index
                .path()
                .join("datafusion-sqllogictest-55.2.0/test_files")
        })
        .find(|p| p.is_dir())
}

/// The `.slt` files that run with what the crate ships, sorted by path.
fn eligible(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            if !rel.ends_with(".slt") || rel.starts_with("spark/") || rel.starts_with("tpch/") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let outside = ["../", "scratch", "data/", "\ninclude "];
            if outside.iter().any(|s| text.contains(s)) {
                continue;
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn render(batches: &[RecordBatch], ordered: bool) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter<'_>> = b
            .columns()
            .iter()
            .filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).ok())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    if !ordered {
        rows.sort();
    }
    rows
}

/// The first line of an error, without the layers either side wraps it in.
fn first_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

async fn on_datafusion(ctx: &SessionContext, sql: &str, ordered: bool) -> Outcome {
    let run = async {
        let df = ctx.sql(sql).await.map_err(first_line)?;
        df.collect().await.map_err(first_line)
    };
    match tokio::time::timeout(RECORD_DEADLINE, run).await {
        Ok(Ok(b)) => Ok(render(&b, ordered)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("deadline".into()),
    }
}

async fn on_apiary(c: &mut FlightSqlServiceClient<Channel>, sql: &str, ordered: bool) -> Outcome {
    let run = async {
        let info = c.execute(sql.to_string(), None).await.map_err(first_line)?;
        let mut batches = Vec::new();
        for ep in info.endpoint {
            let Some(t) = ep.ticket else { continue };
            let stream = c.do_get(t).await.map_err(first_line)?;
            batches.extend(stream.try_collect::<Vec<_>>().await.map_err(first_line)?);
        }
        Ok::<_, String>(batches)
    };
    match tokio::time::timeout(RECORD_DEADLINE, run).await {
        Ok(Ok(b)) => Ok(render(&b, ordered)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("deadline".into()),
    }
}

fn skipped(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| match c {
        Condition::OnlyIf { label } => !label.eq_ignore_ascii_case("datafusion"),
        Condition::SkipIf { label } => label.eq_ignore_ascii_case("datafusion"),
    })
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Tally {
    records: usize,
    agree: usize,
}

/// Run one file on both sides; the first disagreements go to `examples`.
async fn run_file(
    path: &Path,
    box_name: &str,
    client: &mut FlightSqlServiceClient<Channel>,
    examples: &mut Vec<String>,
) -> Tally {
    let mut tally = Tally::default();
    let Ok(records) = sqllogictest::parse_file::<DefaultColumnType>(path) else {
        return tally;
    };
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
    let setup = format!("CREATE BOX default.{box_name}");
    if on_apiary(client, &setup, true).await.is_err()
        || on_apiary(client, &format!("USE default.{box_name}"), true)
            .await
            .is_err()
    {
        return tally;
    }
    for record in records {
        let (sql, conditions, loc) = match record {
            Record::Statement {
                sql,
                conditions,
                loc,
                ..
            }
            | Record::Query {
                sql,
                conditions,
                loc,
                ..
            } => (sql, conditions, loc),
            Record::Halt { .. } => break,
            _ => continue,
        };
        if skipped(&conditions) {
            continue;
        }
        let upper = sql.trim_start().to_ascii_uppercase();
        if upper.starts_with("EXPLAIN") {
            // Plans differ by construction (frames are Parquet scans, DataFusion's tables are
            // in memory, and Apiary adds its distributed plan); results are what is compared.
            continue;
        }
        // Rows are compared as sets: an ORDER BY with ties, or inside a window, leaves the order
        // to partitioning, which differs between the two.
        let ordered = false;
        let theirs = on_datafusion(&ctx, &sql, ordered).await;
        let ours = on_apiary(client, &sql, ordered).await;
        tally.records += 1;
        let same = match (&theirs, &ours) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if same {
            tally.agree += 1;
        } else if examples.len() < 5000 {
            let show = |o: &Outcome| match o {
                Ok(rows) => format!("{} row(s) {:.120}", rows.len(), format!("{rows:?}")),
                Err(e) => format!("error {e:.160}"),
            };
            examples.push(format!(
                "{loc}: {:.100}\n    datafusion: {}\n    apiary:     {}",
                sql.replace('\n', " "),
                show(&theirs),
                show(&ours)
            ));
        }
    }
    tally
}

fn baseline_path() -> PathBuf {
    manifest_dir().join("sql_parity.csv")
}

fn read_baseline() -> BTreeMap<String, Tally> {
    let text = std::fs::read_to_string(baseline_path()).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            let (name, records, agree) = (f.next()?, f.next()?, f.next()?);
            Some((
                name.to_string(),
                Tally {
                    records: records.parse().ok()?,
                    agree: agree.parse().ok()?,
                },
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_sqllogictest_files_answer_the_same_through_flight_sql() {
    let Some(dir) = test_files() else {
        panic!(
            "DataFusion's sqllogictest files are not in the cargo registry; run \
             `cargo fetch --manifest-path tests/slt-source/Cargo.toml` (scripts/test does)"
        );
    };
    let mut files = eligible(&dir);
    let limit = std::env::var("APIARY_PARITY_FILES")
        .ok()
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(n) = limit {
        files.truncate(n);
    }
    let root = tempfile::tempdir().unwrap();
    // DataFusion's files are written for its defaults: literals such as `0.1` parse as DOUBLE
    // there, and as DECIMAL in Apiary unless this option says otherwise.
    let server = Server::start(
        root.path().to_str().unwrap(),
        &[
            "--bees",
            "2",
            "--datafusion-option",
            "datafusion.sql_parser.parse_float_as_decimal=false",
        ],
        &[],
    );
    let mut client = server.flight_sql_client().await;
    let start = Instant::now();
    let baseline = read_baseline();
    let mut results: BTreeMap<String, Tally> = BTreeMap::new();
    let mut examples = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let name = path
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let tally = run_file(path, &format!("slt{i}"), &mut client, &mut examples).await;
        results.insert(name, tally);
    }
    let (records, agree) = results
        .values()
        .fold((0, 0), |(r, a), t| (r + t.records, a + t.agree));
    eprintln!(
        "SQL parity: {} files, {agree} of {records} records answer as DataFusion does ({:.1} %), {:?}",
        results.len(),
        100.0 * agree as f64 / records.max(1) as f64,
        start.elapsed()
    );
    for e in examples
        .iter()
        .filter(|e| e.contains("multiple_catalogs") || e.contains("options.slt"))
        .take(60)
    {
        eprintln!("{e}");
    }
    if let Ok(path) = std::env::var("APIARY_PARITY_REPORT") {
        let log: String = server
            .log()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("internal error"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(
            path,
            format!("{}\n\n# server errors\n{log}", examples.join("\n")),
        )
        .unwrap();
    }
    if std::env::var_os("APIARY_PARITY_UPDATE").is_some() {
        let mut out = String::from("file,records,agree\n");
        for (name, t) in &results {
            out.push_str(&format!("{name},{},{}\n", t.records, t.agree));
        }
        std::fs::write(baseline_path(), out).unwrap();
        return;
    }
    // A statement near its deadline on a loaded machine may flip; a regression shows as more.
    let drops: Vec<(String, usize)> = results
        .iter()
        .filter_map(|(name, t)| {
            let b = baseline.get(name)?;
            (t.agree < b.agree).then(|| (name.clone(), b.agree - t.agree))
        })
        .collect();
    for (name, d) in &drops {
        eprintln!("{name}: {d} record(s) fewer agree than tests/sql_parity.csv records");
    }
    let lost: usize = drops.iter().map(|(_, d)| d).sum();
    assert!(
        drops.iter().all(|(_, d)| *d <= 2) && lost <= 5,
        "agreement with DataFusion fell below tests/sql_parity.csv: {drops:?}"
    );
    drop(server);
}
