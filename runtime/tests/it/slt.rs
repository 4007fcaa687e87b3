//! Runs every `tests/slt/*.slt` file against a fresh engine on a temporary local storage root.

use std::path::PathBuf;
use std::sync::Arc;

use apiary_runtime::{Engine, EngineConfig, Output, Session};
use apiary_storage::{Lakehouse, LedgerConfig, S3Options, Storage};
use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use futures::TryStreamExt;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

struct ApiaryDb {
    engine: Engine,
    session: Session,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

fn column_type(dt: &DataType) -> DefaultColumnType {
    match dt {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DefaultColumnType::Integer,
        DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            DefaultColumnType::FloatingPoint
        }
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter<'_>> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                fmts.iter()
                    .map(|f| {
                        let s = f.value(r).to_string();
                        if s.is_empty() {
                            "(empty)".to_string()
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

#[async_trait::async_trait]
impl AsyncDB for ApiaryDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let stmt = self
            .engine
            .parse_one(sql)
            .map_err(|e| DbError(e.to_string()))?;
        let out = self
            .engine
            .execute(&mut self.session, &stmt, None)
            .await
            .map_err(|e| DbError(e.to_string()))?;
        match out {
            Output::Rows(stream) => {
                let schema = stream.schema();
                let batches: Vec<RecordBatch> = stream
                    .try_collect()
                    .await
                    .map_err(|e| DbError(apiary_runtime::Error::from(e).to_string()))?;
                Ok(DBOutput::Rows {
                    types: schema
                        .fields()
                        .iter()
                        .map(|f| column_type(f.data_type()))
                        .collect(),
                    rows: rows(&batches),
                })
            }
            Output::Count(n) => Ok(DBOutput::StatementComplete(n)),
            Output::Done => Ok(DBOutput::StatementComplete(0)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "apiary"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

async fn new_db() -> ApiaryDb {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let lakehouse = Lakehouse::open(storage, LedgerConfig::default())
        .await
        .unwrap();
    let engine = Engine::new(
        lakehouse,
        EngineConfig::default(),
        Arc::new(RuntimeEnvBuilder::new().build().unwrap()),
    );
    ApiaryDb {
        engine,
        session: Session::new("slt"),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictests() {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = sqllogictest::Runner::new(|| async { Ok(new_db().await) });
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {}", file.display(), e.display(true)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
