//! Version 1 of the objects nodes exchange through storage to run a query together.
//! See `docs/distributed.md` for the protocol these objects implement.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn decode<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Internal(format!("unreadable {what}: {e}")))
}

fn check_version(what: &str, v: u32) -> Result<()> {
    if v == 1 {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "{what} format v{v} is newer than this build"
        )))
    }
}

/// `_apiary/queries/<q>/manifest.json`: what the coordinator is running (for orphan cleanup
/// and operators).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryManifestV1 {
    pub v: u32,
    pub query_id: String,
    pub coordinator: String,
    pub created_at_ms: i64,
    pub deadline_at_ms: i64,
    pub sql: String,
    pub stages: Vec<StageManifestV1>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageManifestV1 {
    pub stage: u32,
    pub tasks: u32,
    pub files: u64,
    pub bytes: u64,
}

/// `_apiary/inbox/<node>/<q>.s<stage>.t<task>.a<attempt>.json`: one attempt of one task, posted
/// to the node it is assigned to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskV1 {
    pub v: u32,
    pub query_id: String,
    pub stage: u32,
    pub task: u32,
    pub attempt: u32,
    pub coordinator: String,
    pub posted_at_ms: i64,
    pub deadline_at_ms: i64,
}

/// `…/claim-<attempt>`: created with put-if-absent by the worker that runs the attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimV1 {
    pub v: u32,
    pub node_id: String,
    pub claimed_at_ms: i64,
}

/// `…/done-<attempt>.json`: written last, after every output part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoneV1 {
    pub v: u32,
    pub node_id: String,
    pub attempt: u32,
    pub rows: u64,
    pub bytes: u64,
    pub parts: u32,
    /// SHA-256 (hex) over the parts' bytes, in order.
    pub sha256: String,
    /// From posting to claiming, by the wall clocks involved.
    pub dispatch_ms: i64,
    pub run_ms: i64,
}

/// `…/failed-<attempt>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedV1 {
    pub v: u32,
    pub node_id: String,
    pub attempt: u32,
    pub error: String,
    /// Whether another attempt (elsewhere) may succeed.
    pub retryable: bool,
}

macro_rules! codec {
    ($($t:ty => $what:literal),*) => {$(
        impl $t {
            pub fn encode(&self) -> bytes::Bytes {
                bytes::Bytes::from(serde_json::to_vec(self).expect("serialises"))
            }

            pub fn decode(body: &[u8]) -> Result<Self> {
                let v: Self = decode($what, body)?;
                check_version($what, v.v)?;
                Ok(v)
            }
        }
    )*};
}

codec!(
    QueryManifestV1 => "query manifest",
    TaskV1 => "task",
    ClaimV1 => "claim",
    DoneV1 => "done marker",
    FailedV1 => "failed marker"
);

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuse_newer_versions() {
        let t = TaskV1 {
            v: 1,
            query_id: "q".into(),
            stage: 1,
            task: 2,
            attempt: 1,
            coordinator: "a".into(),
            posted_at_ms: 1,
            deadline_at_ms: 2,
        };
        assert_eq!(TaskV1::decode(&t.encode()).unwrap(), t);
        let mut newer = t.clone();
        newer.v = 2;
        assert!(TaskV1::decode(&newer.encode()).is_err());
    }
}
