//! The runtime crate's error type.
//!
//! Errors are classified here once, by cause, so the server can map each variant to one gRPC
//! status: the caller's mistakes (`Sql`, `Storage` user errors), missing features
//! (`Unsupported`), load shedding (`ResourceExhausted`, `Unavailable`), and our own failures
//! (`Internal`).

use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement is wrong: syntax, unknown column, type mismatch, bad parameter.
    #[error("{0}")]
    Sql(String),

    /// From the storage layer (not found, already exists, schema, conflicts, I/O).
    #[error(transparent)]
    Storage(#[from] apiary_storage::Error),

    /// A write's target exists with another schema (ALREADY_EXISTS, as ADBC ingest expects).
    #[error("{0}")]
    TargetMismatch(String),

    #[error("{0} is not supported yet")]
    Unsupported(String),

    /// The statement asks for something no client may do (write files, reach outside the
    /// storage root).
    #[error("not allowed: {0}")]
    NotAllowed(String),

    /// The query needs more memory than its bee may use, or similar hard limits.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The node is overloaded (queue full, critical temperature); retry later.
    #[error("{0}")]
    Unavailable(String),

    #[error("query cancelled")]
    Cancelled,

    #[error("query timed out after {0:?}")]
    Timeout(std::time::Duration),

    /// A client writing rows (ingest) sent nothing for this long: it was stopped, so that a
    /// stalled or vanished uploader does not hold a bee (`--ingest-idle-timeout`).
    #[error("the client sent no data for {0:?}; its write was stopped (--ingest-idle-timeout)")]
    ClientIdle(std::time::Duration),

    /// A client reading a result read nothing for this long: its query was stopped, so that a
    /// reader that stalled or walked away does not hold a bee (`--result-idle-timeout`).
    #[error(
        "the client read nothing of the result for {0:?}; its query was stopped (--result-idle-timeout)"
    )]
    ReaderIdle(std::time::Duration),

    /// A retryable task (a fragment) failed on as many nodes as its trial limit allows.
    #[error("{what} abandoned after {attempts} attempts: {last_error}")]
    Abandoned {
        what: String,
        attempts: u32,
        last_error: String,
    },

    /// Objects a query had written to storage (a stage's output) are gone or damaged.
    #[error("{0}")]
    DataLoss(String),

    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether another attempt, as is, may succeed: a busy or unavailable node, a lost commit
    /// race, a storage hiccup. A fragment failing so is given up by its node and retried on
    /// another one (see `distributed::coordinator`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Storage(s) => matches!(
                s,
                apiary_storage::Error::Conflict { .. } | apiary_storage::Error::ObjectStore(_)
            ),
            _ => false,
        }
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        classify(e)
    }
}

/// The table DataFusion could not plan for because it does not exist (`table 'h.b.f' not
/// found`), if that is what failed.
pub(crate) fn missing_table(e: &DataFusionError) -> Option<String> {
    match e.find_root() {
        DataFusionError::Plan(m) => table_not_found(m).map(str::to_string),
        _ => None,
    }
}

fn table_not_found(message: &str) -> Option<&str> {
    message
        .strip_prefix("table '")
        .and_then(|r| r.strip_suffix("' not found"))
}

/// The flag a refusal to spill names; a message with it explains itself.
pub(crate) const SPILL_FLAG: &str = "--max-spill";

/// DataFusion's refusal to spill, under whatever wrapping it reached us (an I/O error of the
/// spill file's writer, read back as Arrow's): past the bee's share of `--max-spill`, or with
/// spilling off. Either is the query's need for more room than the node gives it.
fn spill_refused(e: &DataFusionError) -> Option<Error> {
    let text = e.to_string();
    if text.contains(SPILL_FLAG) {
        // Said already (ours, carried back through DataFusion).
        return None;
    }
    if let Some((_, rest)) =
        text.split_once("spilling process has exceeded the allowable limit of ")
    {
        let limit = rest.split(". ").next().unwrap_or(rest);
        return Some(Error::ResourceExhausted(format!(
            "this query needs more spill space than its bee may use ({limit}: the node's \
             --max-spill divided among its bees); give the node a larger --max-spill, or its \
             bees more memory"
        )));
    }
    text.contains("(DiskManager is disabled)").then(|| {
        let what = text.rsplit("Resources exhausted: ").next().unwrap_or(&text);
        Error::ResourceExhausted(format!(
            "this query needs more memory than its bee has, and spilling is off (--max-spill \
             0): {what}"
        ))
    })
}

fn classify(e: DataFusionError) -> Error {
    use DataFusionError as D;
    if let Some(refused) = spill_refused(&e) {
        return refused;
    }
    // The Parquet reader reports a missing file as text, under whatever wrapping the stream
    // added ("Failed to fetch metadata for file …: Object Store error: … not found").
    if let D::ParquetError(_) | D::ArrowError(..) | D::External(_) | D::Shared(_) = &e {
        let text = e.to_string();
        if let Some(rest) = text.split("Failed to fetch metadata for file ").nth(1)
            && text.contains(" not found")
        {
            let path = rest.split(':').next().unwrap_or("(unknown)").to_string();
            return missing_cell(object_store::Error::NotFound {
                path,
                source: text.into(),
            });
        }
    }
    match e {
        D::Context(_, inner) => classify(*inner),
        D::Diagnostic(_, inner) => classify(*inner),
        D::Shared(inner) => match std::sync::Arc::try_unwrap(inner) {
            Ok(inner) => classify(inner),
            Err(shared) => classify_shared(&shared),
        },
        D::Collection(mut errs) if !errs.is_empty() => classify(errs.remove(0)),
        D::External(boxed) => match boxed.downcast::<apiary_storage::Error>() {
            Ok(storage) => Error::Storage(*storage),
            Err(other) => match other.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => match other.downcast::<DataFusionError>() {
                    Ok(df) => classify(*df),
                    // A pattern the statement gave that does not compile (`regexp_like(s, '(')`).
                    Err(other) if other.to_string().starts_with("regex parse error") => {
                        Error::Sql(format!("invalid regular expression: {other}"))
                    }
                    Err(other) => Error::Internal(other.to_string()),
                },
            },
        },
        D::SQL(err, _) => {
            let text = err.to_string();
            if text.contains("recursion limit exceeded") {
                Error::Sql(format!(
                    "{text}: the statement nests deeper than the parser allows \
                     (datafusion.sql_parser.recursion_limit, 50 levels of parentheses, function \
                     calls or subqueries by default)"
                ))
            } else {
                Error::Sql(text)
            }
        }
        // A system or information_schema table that does not exist (frames are looked up
        // before DataFusion plans, and answer NOT_FOUND there).
        D::Plan(msg) => match table_not_found(&msg) {
            Some(name) => Error::Storage(apiary_storage::Error::NotFound {
                kind: apiary_storage::ObjectKind::Frame,
                name: name.to_string(),
            }),
            None => Error::Sql(planning_text(msg)),
        },
        D::SchemaError(err, _) => Error::Sql(err.to_string()),
        D::NotImplemented(msg) => Error::Unsupported(msg),
        D::Configuration(msg) => Error::Sql(msg),
        D::ResourcesExhausted(msg) => Error::ResourceExhausted(msg),
        // Execution and Arrow errors are almost always caused by the data the statement touches
        // (casts, division by zero, overflow): the caller's to fix.
        D::Execution(msg) => Error::Sql(msg),
        D::ArrowError(err, ctx) => Error::Sql(match ctx {
            Some(c) => format!("{err}{c}"),
            None => err.to_string(),
        }),
        D::ObjectStore(err) => missing_cell(*err),
        D::ParquetError(err) => match *err {
            datafusion::parquet::errors::ParquetError::External(inner) => {
                match inner.downcast::<object_store::Error>() {
                    Ok(store) => missing_cell(*store),
                    Err(other) => Error::Internal(format!("parquet: {other}")),
                }
            }
            datafusion::parquet::errors::ParquetError::NYI(msg) => {
                Error::Unsupported(format!("Parquet: {msg}"))
            }
            // A footer read that came back short reaches us as text only (the Parquet reader
            // formats the store's error into its own).
            other
                if other
                    .to_string()
                    .contains(apiary_storage::confine::SHORT_OBJECT) =>
            {
                short_cell(&other.to_string())
            }
            // What a file holds is not readable Parquet (a damaged cell, or an external file
            // that is not Parquet): the data's fault, reported as such rather than as ours.
            other => Error::DataLoss(format!(
                "a Parquet file could not be read (damaged, or not Parquet): {other}"
            )),
        },
        D::IoError(err) => match apiary_storage::trouble_of(&err) {
            // Spilling to a full scratch disk.
            Some(apiary_storage::Trouble::Full) => Error::ResourceExhausted(format!(
                "no room left to spill this query to disk ({err}); try again when other \
                 queries are done, or give the node more scratch space"
            )),
            _ => Error::Internal(format!("I/O: {err}")),
        },
        D::ExecutionJoin(err) => Error::Internal(format!("task failed: {err}")),
        D::Internal(msg) => Error::Internal(msg),
        other => Error::Internal(other.to_string()),
    }
}

/// The text of a planning error the statement caused. A call that matches no signature of its
/// function reaches us as DataFusion's internal error (each signature's refusal, then "This
/// issue was likely caused by a bug in DataFusion's code. Please help us…") wrapped in the plan
/// error that says what is wrong; only that part is the caller's to read.
fn planning_text(msg: String) -> String {
    const NO_MATCH: &str = "No function matches the given name and argument types";
    match msg.find(NO_MATCH) {
        Some(at) if msg.starts_with("Internal error: ") => msg[at..].to_string(),
        _ => msg,
    }
}

/// [`classify`] for an error other partitions still hold: a repartition hands one error to
/// each of its outputs, so a grouped query's `10 / 0` or overflow arrived shared, and was
/// INTERNAL where the same error ungrouped was INVALID_ARGUMENT. Classified by its kind, with
/// its text (our own errors keep their variant where they carry only text or nothing).
fn classify_shared(e: &DataFusionError) -> Error {
    use DataFusionError as D;
    if let Some(refused) = spill_refused(e) {
        return refused;
    }
    let text = e.to_string();
    match e {
        D::Shared(inner) => classify_shared(inner),
        D::Context(_, inner) | D::Diagnostic(_, inner) => classify_shared(inner),
        D::Collection(errs) if !errs.is_empty() => classify_shared(&errs[0]),
        D::Execution(_)
        | D::ArrowError(..)
        | D::SQL(..)
        | D::Plan(_)
        | D::SchemaError(..)
        | D::Configuration(_) => Error::Sql(text),
        D::NotImplemented(m) => Error::Unsupported(m.clone()),
        D::ResourcesExhausted(m) => Error::ResourceExhausted(m.clone()),
        D::External(boxed) => match boxed.downcast_ref::<Error>() {
            Some(Error::Sql(m)) => Error::Sql(m.clone()),
            Some(Error::Unsupported(m)) => Error::Unsupported(m.clone()),
            Some(Error::NotAllowed(m)) => Error::NotAllowed(m.clone()),
            Some(Error::ResourceExhausted(m)) => Error::ResourceExhausted(m.clone()),
            Some(Error::Unavailable(m)) => Error::Unavailable(m.clone()),
            Some(Error::DataLoss(m)) => Error::DataLoss(m.clone()),
            Some(Error::Cancelled) => Error::Cancelled,
            Some(Error::Timeout(d)) => Error::Timeout(*d),
            Some(Error::ReaderIdle(d)) => Error::ReaderIdle(*d),
            _ => match boxed.downcast_ref::<DataFusionError>() {
                Some(df) => classify_shared(df),
                None => Error::Internal(text),
            },
        },
        _ => Error::Internal(text),
    }
}

/// A storage failure while reading; a cell that is gone is the caller's to understand (an old
/// version whose files VACUUM deleted, or a frame dropped while it was read), not ours.
fn missing_cell(err: object_store::Error) -> Error {
    match err {
        object_store::Error::NotFound { path, .. } => {
            // The file's name only: where the storage root is stays the server's business.
            let path = path.rsplit('/').next().unwrap_or_default();
            Error::Storage(apiary_storage::Error::Gone(format!(
                "the cell {path} is gone (VACUUM deleted the files of this version, or the \
                 frame was dropped while it was read)"
            )))
        }
        object_store::Error::Generic { source, .. }
            if source.is::<apiary_storage::confine::ShortObject>() =>
        {
            short_cell(&source.to_string())
        }
        other => Error::Storage(apiary_storage::Error::ObjectStore(other)),
    }
}

/// A file shorter than its recorded size, named by its file name only (where the storage root
/// is stays the server's business), from a [`apiary_storage::confine::ShortObject`]'s text.
fn short_cell(text: &str) -> Error {
    let path = text
        .split(apiary_storage::confine::SHORT_OBJECT)
        .next()
        .and_then(|p| p.trim_end().rsplit(['/', ' ']).next())
        .unwrap_or_default();
    Error::DataLoss(format!(
        "the file {path} is shorter than its frame's log records: it is damaged (put it back, \
         or RESTORE the frame to a version without it)"
    ))
}

impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// An Arrow error raised directly in the runtime is ours (building SHOW, DESCRIBE, history and
/// system batches; reading fragment outputs we wrote), not the client's: INTERNAL. Errors from
/// the client's query reach us through DataFusion and are classified there.
impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_load_and_races_not_mistakes() {
        assert!(Error::Unavailable("busy".into()).is_retryable());
        assert!(
            Error::Storage(apiary_storage::Error::Conflict {
                frame: "f".into(),
                detail: "d".into()
            })
            .is_retryable()
        );
        assert!(!Error::Sql("bad".into()).is_retryable());
        assert!(!Error::ResourceExhausted("memory".into()).is_retryable());
        assert!(!Error::Cancelled.is_retryable());
    }

    #[test]
    fn an_error_other_partitions_still_hold_is_classified_by_its_kind() {
        let shared = std::sync::Arc::new(DataFusionError::ArrowError(
            Box::new(arrow::error::ArrowError::DivideByZero),
            None,
        ));
        let _other_partition = shared.clone();
        let e = classify(DataFusionError::Context(
            "a partition".into(),
            Box::new(DataFusionError::Shared(shared)),
        ));
        assert!(
            matches!(&e, Error::Sql(m) if m.contains("Divide by zero")),
            "{e:?}"
        );
        let ours = std::sync::Arc::new(DataFusionError::External(Box::new(Error::Sql(
            "integer out of range".into(),
        ))));
        let _other_partition = ours.clone();
        let e = classify(DataFusionError::Shared(ours));
        assert!(
            matches!(&e, Error::Sql(m) if m == "integer out of range"),
            "{e:?}"
        );
    }
}
