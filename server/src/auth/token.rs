//! Signing with the swarm's key: bearer tokens, and the envelopes of tickets and handles.
//!
//! Tokens are `<payload>.<mac>`: base64url JSON claims and an HMAC-SHA256 over them. They carry
//! the user and session, an expiry that slides with use, the time of the login they descend
//! from (an absolute lifetime bounds the sliding), the user's credential version (a password
//! change ends every token of the old one), and whether the issuing node had authentication on
//! (a node with users refuses tokens from a node without).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// HMAC signing with the swarm's shared key: tokens, tickets, handles.
#[derive(Clone)]
pub struct Signer {
    key: Arc<[u8]>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.into() }
    }

    fn hmac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key size");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    pub(super) fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.hmac(parts).finalize().into_bytes().to_vec()
    }

    /// Constant-time check of a MAC.
    pub(super) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.hmac(parts).verify_slice(tag).is_ok()
    }

    /// Wrap `payload` in a signed envelope of `kind` ("ticket", "prepared", ...).
    pub fn seal(&self, kind: &str, payload: Vec<u8>) -> Vec<u8> {
        use prost::Message;
        let version = apiary_proto::ENVELOPE_FORMAT_VERSION;
        let mac = self.mac(&[&version.to_be_bytes(), kind.as_bytes(), &payload]);
        apiary_proto::v1::SignedEnvelope {
            format_version: version,
            kind: kind.to_string(),
            payload: payload.into(),
            mac: mac.into(),
        }
        .encode_to_vec()
    }

    /// Open an envelope of `kind`, checking version and signature.
    pub fn open(&self, kind: &str, bytes: &[u8]) -> Result<bytes::Bytes> {
        use prost::Message;
        let env = apiary_proto::v1::SignedEnvelope::decode(bytes)
            .map_err(|_| Error::invalid(format!("malformed {kind}")))?;
        if env.format_version != apiary_proto::ENVELOPE_FORMAT_VERSION {
            return Err(Error::invalid(format!(
                "{kind} format v{} is not supported by this server",
                env.format_version
            )));
        }
        if env.kind != kind {
            return Err(Error::invalid(format!(
                "expected a {kind}, got a {}",
                env.kind
            )));
        }
        if !self.verify(
            &[
                &env.format_version.to_be_bytes(),
                kind.as_bytes(),
                &env.payload,
            ],
            &env.mac,
        ) {
            return Err(Error::invalid(format!(
                "{kind} signature does not verify (issued by another swarm?)"
            )));
        }
        Ok(env.payload)
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Claims {
    /// user
    pub(super) u: String,
    /// session hive
    pub(super) h: String,
    /// session box
    pub(super) b: String,
    /// DataFusion options the session set
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) o: Vec<(String, String)>,
    /// expiry, seconds since the Unix epoch (slides with use)
    pub(super) exp: i64,
    /// when the login this token descends from happened (never slides)
    pub(super) iat: i64,
    /// the user's credential version at that login ("" with authentication off)
    pub(super) cv: String,
    /// issued by a node with authentication on
    pub(super) auth: bool,
}

impl Signer {
    pub(super) fn mint(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&[b"token", payload.as_bytes()]));
        format!("{payload}.{mac}")
    }

    /// The claims of a token whose MAC verifies (expiry and the rest are the caller's to check).
    pub(super) fn claims(&self, token: &str) -> Option<Claims> {
        let (payload, mac) = token.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(mac).ok()?;
        if !self.verify(&[b"token", payload.as_bytes()], &tag) {
            return None;
        }
        URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_signed_and_typed() {
        let s = Signer::new(b"k");
        let sealed = s.seal("ticket", b"payload".to_vec());
        assert_eq!(&s.open("ticket", &sealed).unwrap()[..], b"payload");
        assert!(s.open("prepared", &sealed).is_err());
        assert!(Signer::new(b"x").open("ticket", &sealed).is_err());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(s.open("ticket", &bad).is_err());
    }

    #[test]
    fn token_claims_need_the_key() {
        let s = Signer::new(b"k");
        let c = Claims {
            u: "alice".into(),
            h: "default".into(),
            b: "default".into(),
            o: vec![("datafusion.execution.batch_size".into(), "64".into())],
            exp: 10,
            iat: 1,
            cv: "v".into(),
            auth: true,
        };
        let t = s.mint(&c);
        assert_eq!(s.claims(&t), Some(c));
        assert_eq!(Signer::new(b"other").claims(&t), None);
        assert_eq!(s.claims(&format!("x{t}")), None);
    }
}
