//! The one place where errors become gRPC statuses: it picks the code, the log level, and keeps
//! messages short and free of secrets (internal failures are logged in full and answered with a
//! reference id only).

use apiary_runtime::Error as RtError;
use apiary_storage::Error as StError;
use tonic::{Code, Status};
use tracing::{error, warn};

/// Map a runtime error to the status a client sees.
pub fn to_status(e: RtError) -> Status {
    match e {
        RtError::Sql(msg) => Status::invalid_argument(msg),
        RtError::Storage(s) => storage_status(s),
        e @ RtError::Unsupported(_) => Status::unimplemented(e.to_string()),
        RtError::ResourceExhausted(msg) => {
            warn!(%msg, "resource exhausted");
            Status::resource_exhausted(msg)
        }
        RtError::Unavailable(msg) => {
            warn!(%msg, "unavailable");
            Status::unavailable(msg)
        }
        e @ RtError::Cancelled => Status::cancelled(e.to_string()),
        e @ RtError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        e @ RtError::Abandoned { .. } => {
            warn!(error = %e, "task abandoned");
            Status::aborted(e.to_string())
        }
        RtError::Internal(msg) => internal(&msg),
    }
}

fn storage_status(e: StError) -> Status {
    match e {
        e @ StError::NotFound { .. } => Status::not_found(e.to_string()),
        e @ StError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        e @ StError::NotEmpty { .. } => Status::failed_precondition(e.to_string()),
        e @ (StError::InvalidName { .. } | StError::Schema(_) | StError::InvalidArgument(_)) => {
            Status::invalid_argument(e.to_string())
        }
        e @ StError::Unsupported(_) => Status::unimplemented(e.to_string()),
        e @ StError::Conflict { .. } => Status::aborted(e.to_string()),
        StError::DataFusion(df) => to_status(RtError::from(*df)),
        StError::Arrow(a) => Status::invalid_argument(a.to_string()),
        e @ (StError::ObjectStore(_)
        | StError::Delta(_)
        | StError::Parquet(_)
        | StError::Internal(_)) => internal(&e.to_string()),
    }
}

/// An internal failure: full detail in the log, a reference id for the client.
pub fn internal(detail: &str) -> Status {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let id = &id[..12];
    error!(error_id = id, detail, "internal error");
    Status::internal(format!(
        "internal error (reference {id}; details in the server log)"
    ))
}

/// Map a failure to decode or encode Arrow data from/for a client.
pub fn arrow_status(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Whether a status is one the client can retry as is.
pub fn is_retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_storage::ObjectKind;

    #[test]
    fn codes() {
        assert_eq!(
            to_status(RtError::Sql("x".into())).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            to_status(RtError::Storage(StError::NotFound {
                kind: ObjectKind::Frame,
                name: "a.b.c".into()
            }))
            .code(),
            Code::NotFound
        );
        assert_eq!(
            to_status(RtError::Storage(StError::AlreadyExists {
                kind: ObjectKind::Hive,
                name: "h".into()
            }))
            .code(),
            Code::AlreadyExists
        );
        assert_eq!(
            to_status(RtError::Unsupported("x".into())).code(),
            Code::Unimplemented
        );
        let s = to_status(RtError::Internal("secret path /etc/x".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("/etc/x"));
        assert!(is_retryable(&to_status(RtError::Unavailable(
            "busy".into()
        ))));
    }
}
