//! The users a node accepts, and checking their passwords without helping an attacker: argon2
//! runs on the blocking pool (never on the executor), an unknown user costs the same as a wrong
//! password (a dummy hash is verified), a peer that keeps failing waits longer each time, and a
//! peer may have only a few checks under way at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use apiary_runtime::Role;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

/// One configured user.
#[derive(Debug, Clone)]
pub(super) struct User {
    pub(super) hash: String,
    pub(super) role: Role,
    /// Changes when the hash does: tokens carry it, so a new password ends old sessions.
    pub(super) credential: String,
}

/// `name:argon2-hash[:role]` entries (role `admin`, `writer` — the default — or `reader`).
pub fn parse_users(entries: &[String]) -> anyhow::Result<HashMap<String, (String, Role)>> {
    let mut users = HashMap::new();
    for e in entries {
        let e = e.trim();
        if e.is_empty() {
            continue;
        }
        let (name, rest) = e
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("users are given as name:argon2-hash[:role]"))?;
        if name.is_empty() {
            anyhow::bail!("a user needs a name");
        }
        // A PHC hash has no ':', so a last ':' separates the role.
        let (hash, role) = match rest.rsplit_once(':') {
            Some((hash, role)) => (
                hash,
                Role::parse(role).ok_or_else(|| {
                    anyhow::anyhow!("user {name}: role {role:?} is not admin, writer or reader")
                })?,
            ),
            None => (rest, Role::Writer),
        };
        // Given twice, one entry would silently win (the other's password refused).
        if users
            .insert(name.to_string(), (hash.to_string(), role))
            .is_some()
        {
            anyhow::bail!("user {name} is given more than once");
        }
    }
    Ok(users)
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

pub(super) fn credential_of(hash: &str) -> String {
    apiary_storage::format::hex(&Sha256::digest(hash.as_bytes())[..8])
}

/// Password checks that run at once. Each argon2 check takes its 19 MiB block: unbounded, a
/// burst of wrong passwords from clients holding no credentials took a node to 5.6 GB of RSS
/// and aborted it. The others wait their turn (the per-peer backoff still applies).
const CONCURRENT_CHECKS: usize = 2;

static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_CHECKS);

/// Check `password` against `hash`, or against a dummy hash when the user is unknown, on the
/// blocking pool, [`CONCURRENT_CHECKS`] at a time. Returns whether it matched (always false for
/// an unknown user).
pub(super) async fn check_password(hash: Option<String>, dummy: String, password: String) -> bool {
    let known = hash.is_some();
    let hash = hash.unwrap_or(dummy);
    let Ok(turn) = CHECKS.acquire().await else {
        return false;
    };
    // The turn goes with the check: a caller that hangs up does not free it while it runs.
    let matched = apiary_runtime::executor::spawn_blocking(move || {
        let _turn = turn;
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    known && matched
}

/// Failures kept per peer; the oldest are forgotten beyond this.
const MAX_PEERS: usize = 10_000;
/// Failures a peer may have before it waits.
const FREE_FAILURES: u32 = 3;
/// The longest wait before a password is checked.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A peer's record is forgotten after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Password checks one peer may have under way or waiting at once: a connection pool opening
/// all its connections fits; one address cannot queue thousands of checks in front of every
/// other client's login.
pub(super) const CHECKS_PER_PEER: u32 = 16;

/// Password checks under way or waiting on the whole node: each waits for one of the
/// [`CONCURRENT_CHECKS`], so beyond this many a login would wait for seconds anyway.
pub(super) const CHECKS_IN_ALL: u32 = 256;

/// Per-peer failure counts: a peer that keeps failing waits before its next check, doubling up
/// to [`MAX_DELAY`].
#[derive(Debug, Default)]
pub(super) struct Backoff {
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Checks under way or waiting: in all, and per peer.
    checking: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// The address a peer is counted under: IPv4 as it is, also when mapped into IPv6. (Not an
/// IPv6 /64: the pods of one Kubernetes node share one, and one misconfigured client would
/// slow all their logins; the node-wide bound holds whatever addresses a client uses.)
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        IpAddr::V4(_) => ip,
    }
}

/// Why a password check was not started.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Busy {
    /// The peer has [`CHECKS_PER_PEER`] under way.
    Peer,
    /// The node has [`CHECKS_IN_ALL`] under way.
    Node,
}

/// One password check of a peer under way; dropping it ends it.
#[derive(Debug)]
pub(super) struct Checking<'a> {
    backoff: &'a Backoff,
    peer: Option<IpAddr>,
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        let mut checking = self.backoff.checking.lock().expect("checking");
        let (total, peers) = &mut *checking;
        *total -= 1;
        if let Some(peer) = self.peer
            && let Some(n) = peers.get_mut(&peer)
        {
            *n -= 1;
            if *n == 0 {
                peers.remove(&peer);
            }
        }
    }
}

impl Backoff {
    /// Start a password check for `peer`, unless it already has [`CHECKS_PER_PEER`] under
    /// way, or the node [`CHECKS_IN_ALL`].
    pub(super) fn start(&self, peer: Option<IpAddr>) -> Result<Checking<'_>, Busy> {
        let peer = peer.map(peer_key);
        let mut checking = self.checking.lock().expect("checking");
        let (total, peers) = &mut *checking;
        if *total >= CHECKS_IN_ALL {
            return Err(Busy::Node);
        }
        if let Some(peer) = peer {
            let n = peers.entry(peer).or_insert(0);
            if *n >= CHECKS_PER_PEER {
                return Err(Busy::Peer);
            }
            *n += 1;
        }
        *total += 1;
        Ok(Checking {
            backoff: self,
            peer,
        })
    }

    /// How long `peer` waits before its next password check.
    pub(super) fn delay(&self, peer: Option<IpAddr>) -> Duration {
        let Some(peer) = peer.map(peer_key) else {
            return Duration::ZERO;
        };
        let peers = self.peers.lock().expect("backoff");
        match peers.get(&peer) {
            Some((n, last)) if *n > FREE_FAILURES && last.elapsed() < FORGET_AFTER => {
                let steps = (*n - FREE_FAILURES).min(16);
                (Duration::from_millis(100) * 2u32.pow(steps)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    pub(super) fn failed(&self, peer: Option<IpAddr>) {
        let Some(peer) = peer.map(peer_key) else {
            return;
        };
        let mut peers = self.peers.lock().expect("backoff");
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
            if peers.len() >= MAX_PEERS
                && let Some(oldest) = peers.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k)
            {
                peers.remove(&oldest);
            }
        }
        let e = peers.entry(peer).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FORGET_AFTER {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = Instant::now();
    }

    pub(super) fn succeeded(&self, peer: Option<IpAddr>) {
        if let Some(peer) = peer.map(peer_key) {
            self.peers.lock().expect("backoff").remove(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_with_roles() {
        let h = hash_password("pw").unwrap();
        let users = parse_users(&[
            format!("alice:{h}"),
            format!("bob:{h}:reader"),
            format!("carol:{h}:admin"),
        ])
        .unwrap();
        assert_eq!(users["alice"].1, Role::Writer);
        assert_eq!(users["bob"].1, Role::Reader);
        assert_eq!(users["carol"].1, Role::Admin);
        assert_eq!(users["bob"].0, h);
        assert!(parse_users(&[format!("dave:{h}:root")]).is_err());
        assert!(parse_users(&["nohash".to_string()]).is_err());
        // A name given twice: refused, not the last entry silently winning.
        let twice = parse_users(&[format!("eve:{h}:reader"), format!("eve:{h}:admin")]);
        assert!(twice.unwrap_err().to_string().contains("more than once"));
    }

    #[tokio::test]
    async fn unknown_users_and_wrong_passwords_both_fail_after_a_real_check() {
        let h = hash_password("pw").unwrap();
        let dummy = hash_password("dummy").unwrap();
        assert!(check_password(Some(h.clone()), dummy.clone(), "pw".into()).await);
        assert!(!check_password(Some(h), dummy.clone(), "nope".into()).await);
        // Even the dummy's own password does not let an unknown user in.
        assert!(!check_password(None, dummy.clone(), "dummy".into()).await);
    }

    #[test]
    fn repeated_failures_back_off_and_success_forgives() {
        let b = Backoff::default();
        let peer = Some("10.0.0.1".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            b.failed(peer);
        }
        assert_eq!(b.delay(peer), Duration::ZERO);
        b.failed(peer);
        assert_eq!(b.delay(peer), Duration::from_millis(200));
        for _ in 0..20 {
            b.failed(peer);
        }
        assert_eq!(b.delay(peer), MAX_DELAY);
        assert_eq!(b.delay(Some("10.0.0.2".parse().unwrap())), Duration::ZERO);
        b.succeeded(peer);
        assert_eq!(b.delay(peer), Duration::ZERO);
        // An IPv4-mapped address counts as the IPv4 one.
        for _ in 0..=FREE_FAILURES {
            b.failed(Some("::ffff:10.0.0.3".parse().unwrap()));
        }
        assert_eq!(
            b.delay(Some("10.0.0.3".parse().unwrap())),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn a_peer_has_a_bounded_number_of_checks_under_way() {
        let b = Backoff::default();
        let peer = Some("2001:db8::1".parse().unwrap());
        let mut turns: Vec<_> = (0..CHECKS_PER_PEER)
            .map(|_| b.start(peer).unwrap())
            .collect();
        assert_eq!(b.start(peer).err(), Some(Busy::Peer));
        assert!(b.start(Some("2001:db8::2".parse().unwrap())).is_ok());
        assert!(b.start(None).is_ok());
        turns.pop();
        assert!(b.start(peer).is_ok());
        drop(turns);
        assert!(b.checking.lock().unwrap().1.is_empty());
        // And the node has a bound over every peer.
        let all: Vec<_> = (0..CHECKS_IN_ALL)
            .map(|i| {
                b.start(Some(
                    format!("10.1.{}.{}", i / 200, i % 200).parse().unwrap(),
                ))
                .unwrap()
            })
            .collect();
        assert_eq!(
            b.start(Some("10.9.9.9".parse().unwrap())).err(),
            Some(Busy::Node)
        );
        drop(all);
        assert_eq!(b.checking.lock().unwrap().0, 0);
    }
}
