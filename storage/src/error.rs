//! The storage crate's error type.
//!
//! Variants separate "the caller asked for something wrong" (`InvalidName`, `NotFound`,
//! `AlreadyExists`, `NotEmpty`, `Schema`, `InvalidArgument`) from races that callers retry
//! (`Conflict`) and from failures below us (`ObjectStore`, `Delta`, `Internal`).

use std::fmt;

/// Which kind of catalog object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Hive,
    Box,
    Frame,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Hive => "hive",
            ObjectKind::Box => "box",
            ObjectKind::Frame => "frame",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-supplied name failed validation.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("{kind} {name} does not exist")]
    NotFound { kind: ObjectKind, name: String },

    /// Data a version needs that is gone (its cells were vacuumed), said as a sentence.
    #[error("{0}")]
    Gone(String),

    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: ObjectKind, name: String },

    #[error("{kind} {name} is not empty ({detail}); use CASCADE to drop it with its contents")]
    NotEmpty {
        kind: ObjectKind,
        name: String,
        detail: String,
    },

    /// Incoming data does not fit the frame's schema.
    #[error("{0}")]
    Schema(String),

    /// A request that cannot be honoured as asked (bad storage URL, unsupported type, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// Something no client may do (reach data outside the allowed roots, write an external
    /// frame); callers map it to PERMISSION_DENIED.
    #[error("not allowed: {0}")]
    NotAllowed(String),

    /// Not implemented yet; callers map it to UNIMPLEMENTED.
    #[error("{0} is not supported yet")]
    Unsupported(String),

    /// Another writer won a race that cannot be resolved by retrying blindly (for example an
    /// overwrite that raced with an append).
    #[error("conflicting concurrent commit on {frame}: {detail}")]
    Conflict { frame: String, detail: String },

    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),

    #[error("delta log: {0}")]
    Delta(#[source] Box<deltalake::DeltaTableError>),

    #[error("query engine: {0}")]
    DataFusion(#[source] Box<datafusion::error::DataFusionError>),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    /// A persisted object written by a newer (or older, retired) format version: a rolling
    /// upgrade in progress, not a bug.
    #[error("{what} format v{version} is not supported by this build (it reads v{supported})")]
    UnsupportedFormat {
        what: &'static str,
        version: u32,
        supported: u32,
    },

    /// An object whose seal does not verify with this swarm's key: written by someone without
    /// the key, or moved from another key. Never acted on.
    #[error("{what} at {path} is not sealed with this swarm's key; ignored")]
    Forged { what: &'static str, path: String },

    /// A persisted object that does not parse as its type.
    #[error("unreadable {what}: {detail}")]
    Unreadable { what: &'static str, detail: String },

    /// An invariant of ours was broken; never the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kept storage from answering, when it is the store's state rather than a request or
/// the data ([`Error::trouble`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// It could not be reached or did not answer in time (retries spent): try again later.
    Unreachable,
    /// It has no room left (a full disk under a local root).
    Full,
}

impl Error {
    /// Whether this error is about what an object holds (a log or a marker that does not
    /// parse, a damaged file, one not sealed with our key): one frame's damage, which a
    /// listing of every frame can step over. Not storage out of reach, nor refused access.
    pub fn is_damage(&self) -> bool {
        match self {
            Error::Unreadable { .. }
            | Error::Forged { .. }
            | Error::UnsupportedFormat { .. }
            | Error::Parquet(_)
            | Error::Arrow(_) => self.trouble().is_none(),
            Error::Delta(d) => {
                !matches!(**d, deltalake::DeltaTableError::ObjectStore { .. })
                    && self.trouble().is_none()
                    && !has_denied(self)
            }
            _ => false,
        }
    }

    /// Whether this error is storage being unreachable or full, found anywhere in its chain
    /// (a failed read inside delta-rs or the Parquet reader carries the store's error inside).
    pub fn trouble(&self) -> Option<Trouble> {
        trouble_of(self)
    }
}

/// Whether access was refused somewhere in `e`'s chain (credentials expired or wrong).
fn has_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = next {
        if matches!(
            e.downcast_ref::<object_store::Error>(),
            Some(
                object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            )
        ) {
            return true;
        }
        next = e.source();
    }
    false
}

/// [`Error::trouble`] of any error chain.
pub fn trouble_of(e: &(dyn std::error::Error + 'static)) -> Option<Trouble> {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<HttpError>() {
            match h.kind() {
                HttpErrorKind::Connect
                | HttpErrorKind::Request
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted => return Some(Trouble::Unreachable),
                _ => {}
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::StorageFull | K::QuotaExceeded => return Some(Trouble::Full),
                K::ConnectionRefused
                | K::ConnectionReset
                | K::TimedOut
                | K::HostUnreachable
                | K::NetworkUnreachable => return Some(Trouble::Unreachable),
                _ => {}
            }
        }
        // A store that answered 5xx until the retries ran out (object_store's own words); not
        // 501 or 505, which say the store will never do what was asked.
        let text = e.to_string();
        if let Some(code) = text.strip_prefix("Server returned non-2xx status code: ")
            && code.starts_with('5')
            && !code.starts_with("501")
            && !code.starts_with("505")
        {
            return Some(Trouble::Unreachable);
        }
        next = e.source();
    }
    None
}

impl From<deltalake::DeltaTableError> for Error {
    fn from(e: deltalake::DeltaTableError) -> Self {
        use deltalake::DeltaTableError as D;
        use deltalake::kernel::transaction::TransactionError as T;
        match e {
            // A commit one of our log stores refused (`commit_hooks`) says why in our terms.
            D::Transaction {
                source: T::LogStoreError { msg, source },
            } => match source.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(source) => Error::Delta(Box::new(D::Transaction {
                    source: T::LogStoreError { msg, source },
                })),
            },
            e => Error::Delta(Box::new(e)),
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        match e {
            Error::DataFusion(inner) => *inner,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
