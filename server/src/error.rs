//! The server's error type and the one place where errors become gRPC statuses: one exhaustive
//! match picks the code and the log level per variant, and keeps messages short and free of
//! secrets (internal failures are logged in full and answered with a reference id only).
//!
//! Handlers return `Result<_, Error>` and use `?`; the Flight trait methods convert at the
//! boundary (`From<Error> for Status`). Arrow failures are split by whose they are: bytes a
//! client sent that do not decode are INVALID_ARGUMENT ([`Error::ClientData`]); failing to build
//! our own batches or schemas is INTERNAL ([`Error::Encode`]), as in arrow-flight's own mapping.

use apiary_runtime::Error as RtError;
use apiary_storage::Error as StError;
use tonic::Status;
use tracing::{debug, error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the runtime (and through it, storage and DataFusion).
    #[error(transparent)]
    Runtime(#[from] RtError),

    /// The request is malformed or names something wrong.
    #[error("{0}")]
    InvalidArgument(String),

    /// Data the client sent (parameters, ingest batches, commands) does not decode.
    #[error("{context}: {source}")]
    ClientData {
        context: &'static str,
        source: arrow::error::ArrowError,
    },

    /// A Flight feature this server does not offer.
    #[error("{0}")]
    Unimplemented(String),

    /// The caller may not use what it names (another user's ticket or handle).
    #[error("{0}")]
    PermissionDenied(String),

    /// The target already exists (ingest with `if_exists = fail`).
    #[error("{0}")]
    AlreadyExists(String),

    /// Building one of our own responses failed: a bug, never the client's fault.
    #[error("building {context}: {source}")]
    Encode {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// What a ticket or handle was made for has changed since (a view redefined): run the
    /// statement again.
    #[error("{0}")]
    Changed(String),

    /// A status from the transport (a client stream that failed mid-way).
    #[error("{0}")]
    Transport(Box<Status>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn client_data(context: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Self {
        move |source| Error::ClientData { context, source }
    }

    pub fn encode<E: std::error::Error + Send + Sync + 'static>(
        context: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| Error::Encode {
            context,
            source: Box::new(source),
        }
    }
}

impl From<StError> for Error {
    fn from(e: StError) -> Self {
        Error::Runtime(RtError::Storage(e))
    }
}

impl From<arrow_flight::error::FlightError> for Error {
    fn from(e: arrow_flight::error::FlightError) -> Self {
        use arrow_flight::error::FlightError as F;
        match e {
            F::Tonic(s) => Error::Transport(s),
            F::Arrow(source) => Error::ClientData {
                context: "Arrow data",
                source,
            },
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let status = status_of(e);
        // Clients get the message; a backtrace (DataFusion and others append one when
        // RUST_BACKTRACE is set) stays in the log, with its source paths.
        match without_backtrace(status.message()) {
            Some(clean) => {
                debug!(message = %status.message(), "backtrace kept out of a client's error");
                bounded(Status::new(status.code(), clean))
            }
            None => bounded(status),
        }
    }
}

/// The most a message may take in its `grpc-message` header, percent-encoded. Clients refuse
/// headers past their limit (gRPC C++, so pyarrow: 16 KiB; gRPC Java, so the JDBC driver:
/// 8 KiB) and report RESOURCE_EXHAUSTED without the message; messages quote the client's input
/// (a 20 KB literal that does not cast), so a long one lost the error itself.
const MAX_MESSAGE: usize = 3072;

/// What a character of a message takes in the `grpc-message` header: tonic percent-encodes
/// controls, space, `"#%<>\`?{}` and everything outside ASCII.
fn header_cost(c: char) -> usize {
    match c {
        ' ' | '"' | '#' | '%' | '<' | '>' | '\\' | '`' | '?' | '{' | '}' => 3,
        '!'..='~' => 1,
        c => 3 * c.len_utf8(),
    }
}

/// `status` with its message cut to [`MAX_MESSAGE`]: its start and its end, with how much was
/// left out between them.
pub(crate) fn bounded(status: Status) -> Status {
    let message = status.message();
    if message.chars().map(header_cost).sum::<usize>() <= MAX_MESSAGE {
        return status;
    }
    let take = |budget: usize, chars: &mut dyn Iterator<Item = (usize, char)>| {
        let mut used = 0;
        let mut end = 0;
        for (i, c) in chars {
            used += header_cost(c);
            if used > budget {
                break;
            }
            end = i;
        }
        end
    };
    // Byte offsets: the head ends before `head`, the tail starts at `tail`.
    let head = {
        let mut it = message.char_indices().map(|(i, c)| (i + c.len_utf8(), c));
        take(MAX_MESSAGE * 3 / 4, &mut it)
    };
    let tail = {
        let mut it = message.char_indices().rev();
        take(MAX_MESSAGE / 8, &mut it).max(head)
    };
    Status::new(
        status.code(),
        format!(
            "{} … [{} bytes left out] … {}",
            &message[..head],
            tail - head,
            &message[tail..]
        ),
    )
}

/// `message` without an appended backtrace, if it has one.
fn without_backtrace(message: &str) -> Option<String> {
    const MARKS: [&str; 4] = [
        "\nbacktrace:",
        "\nstack backtrace:",
        "\nStack backtrace:",
        "\nBacktrace:",
    ];
    let cut = MARKS.iter().filter_map(|m| message.find(m)).min()?;
    Some(message[..cut].trim_end().to_string())
}

fn status_of(e: Error) -> Status {
    {
        match e {
            Error::Runtime(e) => runtime_status(e),
            Error::InvalidArgument(msg) => {
                info!(%msg, "invalid request");
                Status::invalid_argument(msg)
            }
            e @ Error::ClientData { .. } => {
                info!(error = %e, "undecodable client data");
                Status::invalid_argument(e.to_string())
            }
            Error::Unimplemented(msg) => Status::unimplemented(msg),
            Error::PermissionDenied(msg) => {
                warn!(%msg, "permission denied");
                Status::permission_denied(msg)
            }
            Error::AlreadyExists(msg) => Status::already_exists(msg),
            Error::Changed(msg) => Status::failed_precondition(msg),
            e @ Error::Encode { .. } => internal(&e.to_string()),
            Error::Transport(s) => *s,
        }
    }
}

/// Map a runtime error to the status a client sees.
fn runtime_status(e: RtError) -> Status {
    match e {
        RtError::Sql(msg) => Status::invalid_argument(msg),
        RtError::Storage(s) => storage_status(s),
        e @ RtError::Unsupported(_) => Status::unimplemented(e.to_string()),
        RtError::TargetMismatch(msg) => Status::already_exists(msg),
        e @ RtError::NotAllowed(_) => {
            warn!(error = %e, "refused");
            Status::permission_denied(e.to_string())
        }
        RtError::ResourceExhausted(msg) => {
            warn!(%msg, "resource exhausted");
            Status::resource_exhausted(msg)
        }
        RtError::Unavailable(msg) => {
            warn!(%msg, "unavailable");
            Status::unavailable(msg)
        }
        e @ RtError::Cancelled => Status::cancelled(e.to_string()),
        e @ (RtError::Timeout(_) | RtError::ClientIdle(_) | RtError::ReaderIdle(_)) => {
            Status::deadline_exceeded(e.to_string())
        }
        e @ RtError::Abandoned { .. } => {
            warn!(error = %e, "task abandoned");
            Status::aborted(e.to_string())
        }
        RtError::DataLoss(msg) => {
            warn!(%msg, "data loss");
            Status::data_loss(msg)
        }
        RtError::Internal(msg) => internal(&msg),
    }
}

fn storage_status(e: StError) -> Status {
    // Storage out of reach or full is its state, not a bug of ours: a client can try again
    // (on another node, or once an operator made room).
    match e.trouble() {
        Some(apiary_storage::Trouble::Unreachable) => {
            warn!(error = %e, "storage unreachable");
            return Status::unavailable(
                "storage did not answer (unreachable, or too slow for the retries); try again",
            );
        }
        Some(apiary_storage::Trouble::Full) => {
            warn!(error = %e, "storage full");
            return Status::resource_exhausted("storage is full: no room to write");
        }
        None => {}
    }
    match e {
        e @ (StError::NotFound { .. } | StError::Gone(_)) => Status::not_found(e.to_string()),
        e @ StError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        e @ StError::NotEmpty { .. } => Status::failed_precondition(e.to_string()),
        e @ (StError::InvalidName { .. } | StError::Schema(_) | StError::InvalidArgument(_)) => {
            Status::invalid_argument(e.to_string())
        }
        e @ StError::Unsupported(_) => Status::unimplemented(e.to_string()),
        e @ (StError::NotAllowed(_)
        | StError::ObjectStore(object_store::Error::PermissionDenied { .. })) => {
            warn!(error = %e, "permission denied");
            Status::permission_denied(e.to_string())
        }
        e @ StError::Conflict { .. } => Status::aborted(e.to_string()),
        StError::DataFusion(df) => runtime_status(RtError::from(*df)),
        StError::Arrow(a) => Status::invalid_argument(a.to_string()),
        e @ StError::UnsupportedFormat { .. } => {
            // A newer node wrote it: a rolling upgrade, retryable once this node is upgraded.
            warn!(error = %e, "object of an unsupported format");
            Status::unavailable(e.to_string())
        }
        e @ (StError::ObjectStore(_)
        | StError::Delta(_)
        | StError::Parquet(_)
        | StError::Unreadable { .. }
        | StError::Forged { .. }
        | StError::Internal(_)) => internal(&e.to_string()),
    }
}

/// An internal failure: full detail in the log, a reference id for the client.
fn internal(detail: &str) -> Status {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let id = &id[..12];
    error!(error_id = id, detail, "internal error");
    Status::internal(format!(
        "internal error (reference {id}; details in the server log)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_storage::ObjectKind;
    use tonic::Code;

    fn code(e: impl Into<Error>) -> Code {
        Status::from(e.into()).code()
    }

    #[test]
    fn clients_get_the_message_and_never_a_backtrace() {
        let msg = "Error during planning: table 'x' not found\n\nbacktrace:    0: std::backtrace\n             at /rustc/abc/library/std/src/backtrace.rs:331:13";
        let s = Status::from(Error::invalid(msg));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "Error during planning: table 'x' not found");
        let plain = Status::from(Error::invalid("no backtrace here"));
        assert_eq!(plain.message(), "no backtrace here");
    }

    #[test]
    fn long_messages_keep_their_start_and_end_within_a_header() {
        let quoted = format!("Cannot cast string '{}' to Int64", "é {}".repeat(7_000));
        let s = Status::from(Error::invalid(quoted.clone()));
        assert_eq!(s.code(), Code::InvalidArgument);
        let m = s.message();
        assert!(m.starts_with("Cannot cast string 'é {}é"), "{m}");
        assert!(m.ends_with("é {}' to Int64"), "{m}");
        assert!(m.contains(" bytes left out] "));
        // What tonic sends, percent-encoded, fits in gRPC Java's 8 KiB with room to spare.
        let mut headers = http::HeaderMap::new();
        s.add_header(&mut headers).unwrap();
        let sent = headers.get("grpc-message").unwrap().as_bytes().len();
        assert!(sent <= MAX_MESSAGE, "{sent}");
        let short = Status::from(Error::invalid("x".repeat(MAX_MESSAGE)));
        assert_eq!(short.message().len(), MAX_MESSAGE);
    }

    #[test]
    fn codes() {
        assert_eq!(code(RtError::Sql("x".into())), Code::InvalidArgument);
        assert_eq!(
            code(StError::NotFound {
                kind: ObjectKind::Frame,
                name: "a.b.c".into()
            }),
            Code::NotFound
        );
        assert_eq!(
            code(StError::AlreadyExists {
                kind: ObjectKind::Hive,
                name: "h".into()
            }),
            Code::AlreadyExists
        );
        assert_eq!(code(RtError::Unsupported("x".into())), Code::Unimplemented);
        let s = Status::from(Error::from(RtError::Internal("secret path /etc/x".into())));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("/etc/x"));
        assert_eq!(code(RtError::Unavailable("busy".into())), Code::Unavailable);
    }

    #[test]
    fn our_encoding_failures_are_internal_and_client_data_is_invalid() {
        let arrow = || arrow::error::ArrowError::SchemaError("bad".into());
        assert_eq!(
            code(Error::encode::<arrow::error::ArrowError>("GetTables")(
                arrow()
            )),
            Code::Internal
        );
        assert_eq!(
            code(Error::client_data("parameters")(arrow())),
            Code::InvalidArgument
        );
        // A storage failure is never reported as the caller's mistake.
        assert_eq!(
            code(StError::Unreadable {
                what: "heartbeat",
                detail: "x".into()
            }),
            Code::Internal
        );
    }
}
