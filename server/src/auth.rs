//! Authentication, signed tokens and the client-carried session.
//!
//! ```text
//!  request ─▶ AuthLayer: Basic (user:password, argon2) or Bearer (signed token) ─▶ Principal
//!                │                                                      (request extension)
//!                ▼
//!           handler may update the session (USE, SetSessionOptions) through the SessionSlot
//!                │
//!  response ◀─ AuthLayer adds `authorization: Bearer <token>` carrying user + session
//! ```
//!
//! Tokens are `<payload>.<mac>`: base64url JSON `{u, h, b, exp}` and an HMAC-SHA256 over it with
//! the swarm's shared key, so any node accepts a token any other node issued. Every response
//! carries a fresh token (clients rotate to it), which makes the expiry sliding and carries
//! session changes back to the client: no node keeps session state in memory.
//!
//! The same key signs tickets and prepared-statement handles ([`Signer::seal`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tonic::Status;
use tracing::debug;

type HmacSha256 = Hmac<Sha256>;

/// Who is calling, and the session they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub hive: String,
    pub box_name: String,
    /// The client announced itself as the Flight SQL JDBC driver.
    pub jdbc: bool,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            user: "anonymous".into(),
            hive: apiary_storage::paths::DEFAULT_HIVE.into(),
            box_name: apiary_storage::paths::DEFAULT_BOX.into(),
            jdbc: false,
        }
    }
}

/// Set by a handler that changed the session; the layer puts it into the returned token.
#[derive(Debug, Clone, Default)]
pub struct SessionSlot(Arc<Mutex<Option<(String, String)>>>);

impl SessionSlot {
    pub fn set(&self, hive: &str, box_name: &str) {
        *self.0.lock().expect("session slot") = Some((hive.to_string(), box_name.to_string()));
    }

    fn take(&self) -> Option<(String, String)> {
        self.0.lock().expect("session slot").take()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenClaims {
    /// user
    u: String,
    /// session hive
    h: String,
    /// session box
    b: String,
    /// expiry, seconds since the Unix epoch
    exp: i64,
}

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

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key size");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key size");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.verify_slice(tag).is_ok()
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
    pub fn open(&self, kind: &str, bytes: &[u8]) -> crate::error::Result<bytes::Bytes> {
        use crate::error::Error;
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

/// Hash a password for the users list (`apiary hash-password`).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let random: [u8; 16] = rand::random();
    let salt = argon2::password_hash::SaltString::encode_b64(&random)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))?
        .to_string())
}

/// Checks credentials and mints tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// user → argon2 PHC hash. Empty means authentication is off.
    users: Arc<HashMap<String, String>>,
    signer: Signer,
    token_ttl: Duration,
}

impl Authenticator {
    pub fn new(
        users: HashMap<String, String>,
        signer: Signer,
        token_ttl: Duration,
    ) -> anyhow::Result<Self> {
        for (user, hash) in &users {
            PasswordHash::new(hash)
                .map_err(|e| anyhow::anyhow!("user {user}: not an argon2 password hash: {e}"))?;
        }
        Ok(Self {
            users: Arc::new(users),
            signer,
            token_ttl,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// A token for `p`, valid for the configured lifetime from now.
    pub fn mint(&self, p: &Principal) -> String {
        let claims = TokenClaims {
            u: p.user.clone(),
            h: p.hive.clone(),
            b: p.box_name.clone(),
            exp: chrono::Utc::now().timestamp() + self.token_ttl.as_secs() as i64,
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let mac = URL_SAFE_NO_PAD.encode(self.signer.mac(&[b"token", payload.as_bytes()]));
        format!("{payload}.{mac}")
    }

    fn verify_token(&self, token: &str) -> Result<Principal, Status> {
        let (payload, mac) = token
            .split_once('.')
            .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| Status::unauthenticated("invalid bearer token"))?;
        if !self.signer.verify(&[b"token", payload.as_bytes()], &tag) {
            return Err(Status::unauthenticated("invalid bearer token"));
        }
        let claims: TokenClaims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
        if claims.exp < chrono::Utc::now().timestamp() {
            return Err(Status::unauthenticated(
                "bearer token expired; authenticate again",
            ));
        }
        if self.enabled() && !self.users.contains_key(&claims.u) {
            return Err(Status::unauthenticated("unknown user"));
        }
        Ok(Principal {
            user: claims.u,
            hive: claims.h,
            box_name: claims.b,
            jdbc: false,
        })
    }

    fn verify_basic(&self, encoded: &str) -> Result<Principal, Status> {
        let encoded = encoded.trim();
        // Clients disagree on padding (the ADBC Go driver sends none) and some use the URL-safe
        // alphabet: accept every form.
        let raw = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(encoded).ok())
            .ok_or_else(|| Status::unauthenticated("malformed basic credentials"))?;
        let text = String::from_utf8(raw)
            .map_err(|_| Status::unauthenticated("malformed basic credentials"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("malformed basic credentials"))?;
        if self.enabled() {
            let hash = self
                .users
                .get(user)
                .ok_or_else(|| Status::unauthenticated("invalid user or password"))?;
            let parsed = PasswordHash::new(hash)
                .map_err(|_| Status::unauthenticated("invalid user or password"))?;
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .map_err(|_| Status::unauthenticated("invalid user or password"))?;
        }
        let mut p = Principal::anonymous();
        if !user.is_empty() {
            p.user = user.to_string();
        }
        Ok(p)
    }

    /// Authenticate a request from its headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Status> {
        let jdbc = headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.contains("JDBC Flight SQL Driver"));
        let header = headers
            .get_all("authorization")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .next_back();
        let mut p = match header {
            Some(h) => {
                let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
                if scheme.eq_ignore_ascii_case("bearer") {
                    self.verify_token(rest.trim())?
                } else if scheme.eq_ignore_ascii_case("basic") {
                    self.verify_basic(rest)?
                } else {
                    return Err(Status::unauthenticated(format!(
                        "unsupported authorization scheme {scheme}"
                    )));
                }
            }
            None if self.enabled() => {
                return Err(Status::unauthenticated(
                    "authentication required: send Basic credentials (Handshake) or a Bearer token",
                ));
            }
            None => Principal::anonymous(),
        };
        p.jdbc = jdbc;
        Ok(p)
    }
}

/// Tower layer that authenticates every call and returns a fresh token on every response.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is ready-ish; keep the one we polled (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let principal = match auth.authenticate(req.headers()) {
                Ok(p) => p,
                Err(status) => {
                    debug!(path = %req.uri().path(), "unauthenticated call");
                    return Ok(status.into_http());
                }
            };
            let slot = SessionSlot::default();
            req.extensions_mut().insert(principal.clone());
            req.extensions_mut().insert(slot.clone());
            let mut resp = inner.call(req).await?;
            let mut out = principal;
            if let Some((hive, b)) = slot.take() {
                out.hive = hive;
                out.box_name = b;
            }
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", auth.mint(&out))) {
                resp.headers_mut().insert("authorization", v);
            }
            Ok(resp)
        })
    }
}

/// The principal a request was authenticated as (anonymous if the layer is not installed).
pub fn principal<T>(req: &tonic::Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous)
}

/// The request's session slot, if the auth layer installed one.
pub fn session_slot<T>(req: &tonic::Request<T>) -> Option<SessionSlot> {
    req.extensions().get::<SessionSlot>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(users: &[(&str, &str)]) -> Authenticator {
        let users = users
            .iter()
            .map(|(u, p)| (u.to_string(), hash_password(p).unwrap()))
            .collect();
        Authenticator::new(users, Signer::new(b"k"), Duration::from_secs(60)).unwrap()
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn basic_with_and_without_padding() {
        let a = auth(&[("alice", "s3cret!")]);
        let padded = STANDARD.encode("alice:s3cret!");
        let unpadded = STANDARD_NO_PAD.encode("alice:s3cret!");
        assert_ne!(padded, unpadded);
        for enc in [padded, unpadded] {
            let p = a.authenticate(&headers(&format!("Basic {enc}"))).unwrap();
            assert_eq!(p.user, "alice");
        }
        let wrong = STANDARD.encode("alice:nope");
        assert_eq!(
            a.authenticate(&headers(&format!("Basic {wrong}")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn tokens_round_trip_across_nodes_and_expire() {
        let a = auth(&[("alice", "pw")]);
        let mut p = Principal::anonymous();
        p.user = "alice".into();
        p.hive = "sales".into();
        let token = a.mint(&p);
        // Another node with the same key accepts it.
        let b = Authenticator::new(
            [("alice".to_string(), hash_password("pw").unwrap())].into(),
            Signer::new(b"k"),
            Duration::from_secs(60),
        )
        .unwrap();
        let got = b
            .authenticate(&headers(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(got.hive, "sales");
        // A different key does not.
        let c = Authenticator::new(
            HashMap::new(),
            Signer::new(b"other"),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            c.authenticate(&headers(&format!("Bearer {token}")))
                .is_err()
        );
        // Tampering breaks the MAC.
        let tampered = format!("x{token}");
        assert!(
            a.authenticate(&headers(&format!("Bearer {tampered}")))
                .is_err()
        );
        // Expired.
        let expired =
            Authenticator::new(HashMap::new(), Signer::new(b"k"), Duration::ZERO).unwrap();
        let t = expired.mint(&p);
        std::thread::sleep(Duration::from_millis(1100));
        let e = expired
            .authenticate(&headers(&format!("Bearer {t}")))
            .unwrap_err();
        assert!(e.message().contains("expired"));
    }

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
}
