//! Seals on the objects nodes act on: an HMAC-SHA256 with the swarm's key over the object's
//! kind, its key in storage and its body, appended to the body. A node runs a task, trusts a
//! fragment's output or counts a heartbeat only if its seal verifies, so an object written
//! straight into the bucket (by anyone without the key) is never acted on, and a sealed object
//! copied to another key does not verify there.
//!
//! ```text
//!  sealed = body ‖ "APIARY-SEAL-1" ‖ HMAC-SHA256(key, len‖kind ‖ len‖path ‖ body)
//! ```

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use object_store::path::Path;
use sha2::Sha256;

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"APIARY-SEAL-1";
const MAC_LEN: usize = 32;

/// The swarm's key for sealing objects. Every node of a swarm must have the same one.
#[derive(Clone)]
pub struct SwarmKey(Arc<[u8]>);

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwarmKey(..)")
    }
}

impl SwarmKey {
    pub fn new(key: &[u8]) -> Self {
        Self(key.into())
    }

    fn mac(&self, kind: &str, path: &Path) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
        for part in [kind.as_bytes(), path.as_ref().as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// `body` with its seal, for storing at `path`.
    pub fn seal(&self, kind: &str, path: &Path, body: &[u8]) -> Bytes {
        let mut mac = self.mac(kind, path);
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        let mut out = BytesMut::with_capacity(body.len() + MAGIC.len() + MAC_LEN);
        out.extend_from_slice(body);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&tag);
        out.freeze()
    }

    /// The body of a sealed object read from `path`, if its seal verifies.
    pub fn open(&self, kind: &'static str, path: &Path, sealed: &Bytes) -> Result<Bytes> {
        let forged = || Error::Forged {
            what: kind,
            path: path.to_string(),
        };
        let n = sealed.len();
        if n < MAGIC.len() + MAC_LEN {
            return Err(forged());
        }
        let (rest, tag) = sealed.split_at(n - MAC_LEN);
        let Some(body_len) = rest.len().checked_sub(MAGIC.len()) else {
            return Err(forged());
        };
        if &rest[body_len..] != MAGIC {
            return Err(forged());
        }
        let mut mac = self.mac(kind, path);
        mac.update(&rest[..body_len]);
        mac.verify_slice(tag).map_err(|_| forged())?;
        Ok(sealed.slice(..body_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_bind_key_kind_and_path() {
        let k = SwarmKey::new(b"swarm key");
        let p = Path::from("_apiary/nodes/a.json");
        let sealed = k.seal("heartbeat", &p, b"{\"v\":1}");
        assert_eq!(&k.open("heartbeat", &p, &sealed).unwrap()[..], b"{\"v\":1}");
        // Another key, another kind, another path, a flipped bit, a bare body: all refused.
        assert!(
            SwarmKey::new(b"other")
                .open("heartbeat", &p, &sealed)
                .is_err()
        );
        assert!(k.open("task", &p, &sealed).is_err());
        assert!(
            k.open("heartbeat", &Path::from("_apiary/nodes/b.json"), &sealed)
                .is_err()
        );
        let mut bad = sealed.to_vec();
        bad[0] ^= 1;
        assert!(k.open("heartbeat", &p, &Bytes::from(bad)).is_err());
        assert!(
            k.open("heartbeat", &p, &Bytes::from_static(b"{\"v\":1}"))
                .is_err()
        );
        assert!(k.open("heartbeat", &p, &Bytes::new()).is_err());
    }
}
