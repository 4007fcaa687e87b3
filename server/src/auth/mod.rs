//! Authentication, signed tokens and the client-carried session.
//!
//! ```text
//!  request ─▶ AuthLayer: Basic (user:password, argon2 off the executor) or Bearer (signed
//!                │       token) ─▶ Principal (user, role, session)        (request extension)
//!                ▼
//!           handler may update the session (USE, SetSessionOptions) through the SessionSlot
//!                │
//!  response ◀─ AuthLayer adds `authorization: Bearer <token>` carrying user + session
//! ```
//!
//! Every response carries a fresh token (clients rotate to it), which makes the expiry sliding
//! and carries session changes back to the client: no node keeps session state in memory. The
//! sliding stops at an absolute lifetime counted from the login. With users configured, the key
//! never comes from the bucket (see `serve.rs`), tokens from nodes without authentication are
//! refused, and a password change ends the sessions of the old password.
//!
//! | module  | owns                                                        |
//! |---------|-------------------------------------------------------------|
//! | `sessions` | each connection's session, for clients that drop tokens  |
//! | `token` | the [`Signer`]: tokens, ticket and handle envelopes         |
//! | `users` | the user list, roles, password checks, per-peer backoff     |

mod sessions;
mod token;
mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apiary_runtime::Role;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue};
use tonic::Status;
use tracing::{debug, warn};

use token::Claims;
pub use token::Signer;
use users::{Backoff, Busy, CHECKS_IN_ALL, CHECKS_PER_PEER, User, check_password, credential_of};
pub use users::{hash_password, parse_users};

/// Who is calling, and the session they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    pub hive: String,
    pub box_name: String,
    /// DataFusion options the session set (`SET datafusion.… = …`), sorted by key.
    pub options: Vec<(String, String)>,
    /// The client announced itself as the Flight SQL JDBC driver.
    pub jdbc: bool,
    /// The address the call came from (`None` when unknown, as in-process).
    pub peer: Option<IpAddr>,
    /// When the login this call descends from happened (seconds since the epoch).
    login_at: i64,
}

impl Principal {
    /// The caller when authentication is off: everyone may do everything.
    pub fn anonymous() -> Self {
        Self {
            user: "anonymous".into(),
            role: Role::Admin,
            hive: apiary_storage::paths::DEFAULT_HIVE.into(),
            box_name: apiary_storage::paths::DEFAULT_BOX.into(),
            options: Vec::new(),
            jdbc: false,
            peer: None,
            login_at: chrono::Utc::now().timestamp(),
        }
    }

    /// Where the session is and what it set.
    pub fn place(&self) -> Place {
        Place {
            hive: self.hive.clone(),
            box_name: self.box_name.clone(),
            options: self.options.clone(),
        }
    }

    fn enter(&mut self, place: Place) {
        self.hive = place.hive;
        self.box_name = place.box_name;
        self.options = place.options;
    }
}

/// A session's current hive and box and the DataFusion options it set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub hive: String,
    pub box_name: String,
    pub options: Vec<(String, String)>,
}

/// Set by a handler that changed the session; the layer puts it into the returned token.
#[derive(Debug, Clone, Default)]
pub struct SessionSlot(Arc<Mutex<Option<Place>>>);

impl SessionSlot {
    pub fn set(&self, place: Place) {
        *self.0.lock().expect("session slot") = Some(place);
    }

    fn take(&self) -> Option<Place> {
        self.0.lock().expect("session slot").take()
    }
}

/// Checks credentials and mints tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// Empty means authentication is off.
    users: Arc<HashMap<String, User>>,
    signer: Signer,
    token_ttl: Duration,
    max_lifetime: Duration,
    /// Verified for unknown users, so that they cost as much as known ones.
    dummy_hash: Arc<String>,
    backoff: Arc<Backoff>,
}

impl Authenticator {
    pub fn new(
        users: HashMap<String, (String, Role)>,
        signer: Signer,
        token_ttl: Duration,
        max_lifetime: Duration,
    ) -> anyhow::Result<Self> {
        let mut checked = HashMap::new();
        for (user, (hash, role)) in users {
            argon2::PasswordHash::new(&hash)
                .map_err(|e| anyhow::anyhow!("user {user}: not an argon2 password hash: {e}"))?;
            let credential = credential_of(&hash);
            checked.insert(
                user,
                User {
                    hash,
                    role,
                    credential,
                },
            );
        }
        let dummy_hash = match checked.values().next() {
            // Same parameters as the real ones, so the cost matches.
            Some(_) => hash_password(&uuid::Uuid::new_v4().to_string())?,
            None => String::new(),
        };
        Ok(Self {
            users: Arc::new(checked),
            signer,
            token_ttl,
            max_lifetime,
            dummy_hash: Arc::new(dummy_hash),
            backoff: Arc::new(Backoff::default()),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// A token for `p`, valid for the configured time from now but never past the absolute
    /// lifetime of its login.
    pub fn mint(&self, p: &Principal) -> String {
        let now = chrono::Utc::now().timestamp();
        let end_of_life = p.login_at + self.max_lifetime.as_secs() as i64;
        let claims = Claims {
            u: p.user.clone(),
            h: p.hive.clone(),
            b: p.box_name.clone(),
            o: p.options.clone(),
            exp: (now + self.token_ttl.as_secs() as i64).min(end_of_life),
            iat: p.login_at,
            cv: self
                .users
                .get(&p.user)
                .map(|u| u.credential.clone())
                .unwrap_or_default(),
            auth: self.enabled(),
        };
        self.signer.mint(&claims)
    }

    fn verify_token(&self, token: &str) -> Result<Principal, Status> {
        let invalid = || Status::unauthenticated("invalid bearer token");
        let claims = self.signer.claims(token).ok_or_else(invalid)?;
        let now = chrono::Utc::now().timestamp();
        if claims.exp < now || claims.iat + self.max_lifetime.as_secs() as i64 <= now {
            return Err(Status::unauthenticated(
                "bearer token expired; authenticate again",
            ));
        }
        let role = if self.enabled() {
            if !claims.auth {
                // Minted by a node that lets anyone claim any name.
                return Err(invalid());
            }
            let user = self
                .users
                .get(&claims.u)
                .ok_or_else(|| Status::unauthenticated("unknown user"))?;
            if user.credential != claims.cv {
                return Err(Status::unauthenticated(
                    "credentials changed since this token was issued; authenticate again",
                ));
            }
            user.role
        } else {
            Role::Admin
        };
        Ok(Principal {
            user: claims.u,
            role,
            hive: claims.h,
            box_name: claims.b,
            options: claims.o,
            jdbc: false,
            peer: None,
            login_at: claims.iat,
        })
    }

    async fn verify_basic(&self, encoded: &str, peer: Option<IpAddr>) -> Result<Principal, Status> {
        let malformed = || Status::unauthenticated("malformed basic credentials");
        let encoded = encoded.trim();
        // Clients disagree on padding (the ADBC Go driver sends none) and some use the URL-safe
        // alphabet: accept every form.
        let raw = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(encoded).ok())
            .ok_or_else(malformed)?;
        let text = String::from_utf8(raw).map_err(|_| malformed())?;
        let (user, password) = text.split_once(':').ok_or_else(malformed)?;
        let mut p = Principal::anonymous();
        if !user.is_empty() {
            p.user = user.to_string();
        }
        if !self.enabled() {
            return Ok(p);
        }
        let _checking = match self.backoff.start(peer) {
            Ok(c) => c,
            Err(Busy::Peer) => {
                warn!(user, ?peer, "too many logins at once");
                return Err(Status::resource_exhausted(format!(
                    "more than {CHECKS_PER_PEER} logins at once from this address: wait for \
                     them before sending more"
                )));
            }
            Err(Busy::Node) => {
                warn!(user, ?peer, "too many logins at once on the node");
                return Err(Status::unavailable(format!(
                    "the node has {CHECKS_IN_ALL} logins under way: retry shortly"
                )));
            }
        };
        let delay = self.backoff.delay(peer);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let known = self.users.get(user);
        let ok = check_password(
            known.map(|u| u.hash.clone()),
            self.dummy_hash.as_ref().clone(),
            password.to_string(),
        )
        .await;
        if !ok {
            self.backoff.failed(peer);
            warn!(user, ?peer, "failed login");
            return Err(Status::unauthenticated("invalid user or password"));
        }
        self.backoff.succeeded(peer);
        p.role = known.map(|u| u.role).unwrap_or(Role::Reader);
        Ok(p)
    }

    /// Authenticate a request from its headers (and the peer address, for backoff).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Principal, Status> {
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
                    self.verify_basic(rest, peer).await?
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
    sessions: Arc<sessions::ConnectionSessions>,
}

impl AuthLayer {
    pub fn new(auth: Authenticator) -> Self {
        let sessions = Arc::new(sessions::ConnectionSessions::new(auth.token_ttl));
        Self { auth, sessions }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            sessions: self.sessions.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
    sessions: Arc<sessions::ConnectionSessions>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The peer's address and port, from the connection info on every request.
fn peer_of<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<crate::accept::ConnectionInfo>()
        .and_then(|i| i.tcp.remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// The client connection a request came on: its peer and the number our accept loop gave it
/// (0 where another one accepted it).
fn connection_of<B>(req: &http::Request<B>) -> Option<sessions::Connection> {
    let id = req
        .extensions()
        .get::<crate::accept::ConnectionInfo>()
        .map_or(0, |i| i.id);
    peer_of(req).map(|peer| sessions::Connection { peer, id })
}

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
        let sessions = self.sessions.clone();
        Box::pin(async move {
            let peer = peer_of(&req);
            let connection = connection_of(&req);
            let mut principal = match auth.authenticate(req.headers(), peer.map(|p| p.ip())).await {
                Ok(p) => p,
                Err(status) => {
                    debug!(path = %req.uri().path(), "unauthenticated call");
                    return Ok(status.into_http());
                }
            };
            // The connection's own choice is the newest (its client may not send tokens back).
            if let Some(place) = connection.and_then(|c| sessions.get(c, &principal.user)) {
                principal.enter(place);
            }
            principal.peer = peer.map(|p| p.ip());
            let slot = SessionSlot::default();
            req.extensions_mut().insert(principal.clone());
            req.extensions_mut().insert(slot.clone());
            let mut resp = inner.call(req).await?;
            let mut out = principal;
            if let Some(place) = slot.take() {
                if let Some(c) = connection {
                    sessions.set(c, &out.user, place.clone());
                }
                out.enter(place);
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
mod tests;
