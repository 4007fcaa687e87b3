//! The session of each client connection, for clients that do not send back the token they
//! were given (the ADBC Go driver without authentication, and with it on an ordinary response):
//! `USE` on one statement must reach the next statement of the same connection.
//!
//! A session lives in the token (any node can serve any call that carries it) *and* here, keyed
//! by the caller's TCP connection (its remote address and port, and the number the accept loop
//! gave it: a new connection from the same address and port starts afresh) and user: the connection's entry
//! wins, because it is always the newest. Entries unused for the token TTL are dropped, and the
//! map is bounded; a dropped entry only means the connection falls back to its token's session.
//! Behind a proxy that multiplexes several clients onto one connection, clients of one user share
//! their session; clients that keep tokens (JDBC, pyarrow with rotation) are unaffected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::Place;
use std::time::{Duration, Instant};

/// Connections remembered at most.
const MAX_CONNECTIONS: usize = 65_536;

/// One client connection: its peer, and its number from the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Connection {
    pub(super) peer: SocketAddr,
    pub(super) id: u64,
}

#[derive(Debug)]
struct Entry {
    user: String,
    place: Place,
    used: Instant,
}

/// Sessions by client connection.
#[derive(Debug)]
pub(super) struct ConnectionSessions {
    map: Mutex<HashMap<Connection, Entry>>,
    ttl: Duration,
}

impl ConnectionSessions {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The session this connection of `user` last chose, if any.
    pub(super) fn get(&self, peer: Connection, user: &str) -> Option<Place> {
        let mut map = self.map.lock().expect("sessions");
        let e = map.get_mut(&peer)?;
        if e.user != user || e.used.elapsed() > self.ttl {
            return None;
        }
        e.used = Instant::now();
        Some(e.place.clone())
    }

    /// Remember what this connection of `user` chose.
    pub(super) fn set(&self, peer: Connection, user: &str, place: Place) {
        let mut map = self.map.lock().expect("sessions");
        if map.len() >= MAX_CONNECTIONS && !map.contains_key(&peer) {
            let ttl = self.ttl;
            map.retain(|_, e| e.used.elapsed() <= ttl);
            if map.len() >= MAX_CONNECTIONS
                && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            peer,
            Entry {
                user: user.to_string(),
                place,
                used: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_keeps_its_users_choice_and_nobody_elses() {
        let s = ConnectionSessions::new(Duration::from_secs(60));
        let at = |port: u16, id: u64| Connection {
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            id,
        };
        let (a, b) = (at(40000, 1), at(40001, 2));
        assert_eq!(s.get(a, "alice"), None);
        let place = Place {
            hive: "uh".into(),
            box_name: "ub".into(),
            options: vec![("datafusion.execution.batch_size".into(), "100".into())],
        };
        s.set(a, "alice", place.clone());
        assert_eq!(s.get(a, "alice"), Some(place.clone()));
        assert_eq!(s.get(a, "bob"), None, "another user on that address");
        assert_eq!(s.get(b, "alice"), None, "another connection");
        assert_eq!(
            s.get(at(40000, 3), "alice"),
            None,
            "a later connection from the same address and port"
        );
        let short = ConnectionSessions::new(Duration::ZERO);
        short.set(a, "alice", place);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(short.get(a, "alice"), None, "expired");
    }
}
