//! Every object Apiary persists in storage besides Delta's own files, in one place.
//!
//! Each object is a frozen, versioned type (`…V1`) kept apart from the in-memory types that use
//! it, and every one goes through the same codec: JSON with a `v` field that is read first, so a
//! newer format is refused with a typed [`Error::UnsupportedFormat`] (a rolling upgrade) rather
//! than a parse error (a bug). A new version adds a `v2` module and a conversion; `v1` never
//! changes.
//!
//! | object (key built in [`crate::paths`])              | type                     |
//! |------------------------------------------------------|--------------------------|
//! | `_apiary/catalog/…/<name>.json`                      | [`MarkerV1`]             |
//! | `_apiary/creating/<hive>/<box>/<frame>/<id>.json`    | [`CreatingV1`]           |
//! | `_apiary/nodes/<node>.json`                          | [`HeartbeatV1`]          |
//! | `_apiary/queries/<q>/manifest.json`                  | [`QueryManifestV1`]      |
//! | `_apiary/inbox/<node>/<q>.s<s>.t<t>.a<a>.json`       | [`TaskV1`]               |
//! | `_apiary/queries/<q>/s<s>-t<t>/claim-<a>`            | [`ClaimV1`]              |
//! | `_apiary/queries/<q>/s<s>-t<t>/done-<a>.json`        | [`DoneV1`]               |
//! | `_apiary/queries/<q>/s<s>-t<t>/failed-<a>.json`      | [`FailedV1`]             |
//! | `_apiary/queries/<q>/cancel`                         | [`CancelV1`]             |
//!
//! Objects a node acts on (tasks, plans, done and failed markers, heartbeats, manifests) are
//! also sealed with the swarm's key ([`SwarmKey`]); a claim is only ever checked for existence,
//! and a cancel marker can only stop work.

mod seal;
mod v1;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

pub use seal::SwarmKey;
pub use v1::{
    CacheSummaryV1, CancelV1, ClaimV1, CreatingV1, DoneV1, ExternalFormat, ExternalV1, FailedV1,
    HeartbeatV1, MarkerV1, QueryManifestV1, SliceV1, StageManifestV1, TaskV1, ViewV1,
};

/// A persisted object: JSON with a leading version number.
pub trait Versioned: Serialize + DeserializeOwned {
    /// What the object is, for messages ("heartbeat", "done marker").
    const WHAT: &'static str;
    /// The version this type reads and writes.
    const VERSION: u32;

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("persisted types serialise"))
    }

    /// Decode, refusing other versions with [`Error::UnsupportedFormat`].
    fn decode(body: &[u8]) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Head {
            v: u32,
        }
        let unreadable = |e: serde_json::Error| Error::Unreadable {
            what: Self::WHAT,
            detail: e.to_string(),
        };
        let head: Head = serde_json::from_slice(body).map_err(unreadable)?;
        if head.v != Self::VERSION {
            return Err(Error::UnsupportedFormat {
                what: Self::WHAT,
                version: head.v,
                supported: Self::VERSION,
            });
        }
        serde_json::from_slice(body).map_err(unreadable)
    }
}

/// Milliseconds since the Unix epoch, as persisted objects record time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Lowercase hex of `bytes` (checksums, keys).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl SwarmKey {
    /// A persisted object, encoded and sealed for `path`.
    pub fn seal_object<T: Versioned>(&self, path: &object_store::path::Path, obj: &T) -> Bytes {
        self.seal(T::WHAT, path, &obj.encode())
    }

    /// A sealed object read from `path`: its seal verified, then decoded.
    pub fn open_object<T: Versioned>(
        &self,
        path: &object_store::path::Path,
        sealed: &Bytes,
    ) -> Result<T> {
        T::decode(&self.open(T::WHAT, path, sealed)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuse_other_versions() {
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
        // A newer writer may change fields: the version is read first and named.
        let newer = br#"{"v":2,"query_id":7}"#;
        match TaskV1::decode(newer) {
            Err(Error::UnsupportedFormat {
                what,
                version,
                supported,
            }) => {
                assert_eq!((what, version, supported), ("task", 2, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            TaskV1::decode(b"not json"),
            Err(Error::Unreadable { what: "task", .. })
        ));
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
