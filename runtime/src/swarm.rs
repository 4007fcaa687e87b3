//! Heartbeats and the world view: how nodes find each other through storage alone.
//!
//! Every node writes `_apiary/nodes/<id>.json` every interval with a sequence number that only
//! grows, and reads everyone's. Liveness is judged by *this observer's* clock: a node is Alive
//! while its sequence number changed within `suspect_after` intervals, Suspect until
//! `dead_after`, then Dead; writers' clocks are never compared, so a node with a skewed clock is
//! not declared dead. A node is Alive only once this observer has seen its sequence number move:
//! a heartbeat found on first look may have been left by a node that crashed a moment ago, and a
//! node given work it never claims costs every query a claim timeout per attempt. Until it moves
//! the node is Suspect (a live node moves within one interval), then Dead as usual. A dead
//! node's heartbeat is deleted after a grace period by whoever sees it first (deleting twice is
//! harmless). A graceful shutdown deletes its own heartbeat at once.
//! Solo mode is a swarm of one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use apiary_storage::format::{CacheSummaryV1, HeartbeatV1, SwarmKey};
use apiary_storage::{Storage, paths};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::colony::{Load, Temperature};
use crate::error::Result;

/// Timing of heartbeats and of the world view's judgement.
#[derive(Debug, Clone, Copy)]
pub struct SwarmTiming {
    pub interval: Duration,
    /// Missed intervals before a node is Suspect.
    pub suspect_after: u32,
    /// Missed intervals before a node is Dead.
    pub dead_after: u32,
    /// Further intervals before a dead node's heartbeat is deleted.
    pub grace: u32,
}

impl Default for SwarmTiming {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            suspect_after: 3,
            dead_after: 6,
            grace: 2,
        }
    }
}

/// What a node says about itself in one heartbeat.
#[derive(Debug, Clone)]
pub struct HeartbeatInput<'a> {
    pub node_id: &'a str,
    pub flight_url: &'a str,
    pub load: Load,
    pub temperature: Temperature,
    pub cache: CacheSummaryV1,
    pub started_at: DateTime<Utc>,
    /// The writer's wall clock now (tests skew it to show liveness never depends on it).
    pub now: DateTime<Utc>,
    pub seq: u64,
    /// This node posted fragments to other nodes lately.
    pub coordinating: bool,
    /// How often this node writes its heartbeat.
    pub interval: Duration,
}

/// The heartbeat object for `input`.
pub fn heartbeat(input: HeartbeatInput<'_>) -> HeartbeatV1 {
    HeartbeatV1 {
        v: 1,
        node_id: input.node_id.to_string(),
        flight_url: input.flight_url.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        bees_total: input.load.bees as u32,
        bees_busy: input.load.busy as u32,
        memory_budget: input.load.memory_budget,
        memory_reserved: input.load.memory_reserved,
        queue_depth: input.load.queued as u32,
        temperature: input.temperature.value,
        band: input.temperature.band.to_string(),
        cache: input.cache,
        started_at: input.started_at,
        written_at: input.now,
        seq: input.seq,
        coordinating: input.coordinating,
        interval_ms: u64::try_from(input.interval.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Most bees a node may claim in its heartbeat; more is a lie (or a bug) that would make every
/// other node plan for thousands of partitions.
const MAX_BEES: u32 = 256;

/// Longest heartbeat interval an observer honours: a node claiming more is judged by this, so
/// that a heartbeat left with a huge interval cannot keep a dead node alive for ever.
const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// Clamp what a heartbeat claims to what a node can be.
fn sanitize(mut hb: HeartbeatV1) -> HeartbeatV1 {
    hb.bees_total = hb.bees_total.clamp(1, MAX_BEES);
    hb.bees_busy = hb.bees_busy.min(hb.bees_total);
    hb.temperature = if hb.temperature.is_finite() {
        hb.temperature.clamp(0.0, 1.0)
    } else {
        1.0
    };
    hb.memory_reserved = hb.memory_reserved.min(hb.memory_budget);
    hb.interval_ms = hb
        .interval_ms
        .min(u64::try_from(MAX_INTERVAL.as_millis()).unwrap_or(u64::MAX));
    hb
}

/// How an observer judges a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Alive,
    Suspect,
    Dead,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
        }
    }
}

/// One node as this observer sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub heartbeat: HeartbeatV1,
    pub state: NodeState,
    /// Time since this observer saw the sequence number change.
    pub age: Duration,
}

#[cfg(test)]
impl NodeView {
    /// An alive node with `bees` bees, `busy` of them busy, cold, nothing cached.
    pub(crate) fn for_tests(id: &str, bees: u32, busy: u32) -> NodeView {
        let mut heartbeat = tests::hb(id, 1);
        heartbeat.bees_total = bees;
        heartbeat.bees_busy = busy;
        NodeView {
            heartbeat,
            state: NodeState::Alive,
            age: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct Observed {
    heartbeat: HeartbeatV1,
    last_change: Instant,
    /// Whether this observer has seen the sequence number move.
    beating: bool,
}

/// This node's view of the swarm.
#[derive(Debug)]
pub struct WorldView {
    timing: SwarmTiming,
    nodes: Mutex<HashMap<String, Observed>>,
    /// When storage was last read. Ages are judged at that instant, not later: an observer whose
    /// own refresh is slow (a loaded machine, a slow bucket) must not see everyone turn Suspect.
    observed_at: Mutex<Option<Instant>>,
    /// The heartbeat this node last wrote (or tried to): the node running this code is alive
    /// whatever storage lists, even when another node, stalled past the dead limit, deleted its
    /// heartbeat as dead a moment ago.
    own: Mutex<Option<HeartbeatV1>>,
}

impl WorldView {
    pub fn new(timing: SwarmTiming) -> Self {
        Self {
            timing,
            nodes: Mutex::new(HashMap::new()),
            observed_at: Mutex::new(None),
            own: Mutex::new(None),
        }
    }

    /// Note the heartbeat this node writes now.
    pub fn beating(&self, hb: &HeartbeatV1) {
        *self.own.lock().expect("world view") = Some(hb.clone());
    }

    fn own_id(&self) -> Option<String> {
        let own = self.own.lock().expect("world view");
        own.as_ref().map(|h| h.node_id.clone())
    }

    /// The interval `hb`'s node is judged by: its own when longer than this observer's (a node
    /// that beats every 30 s is not dead after 6 s of silence because its observer beats every
    /// second), never shorter (this observer reads storage only once an interval).
    fn interval_of(&self, hb: &HeartbeatV1) -> Duration {
        let own = Duration::from_millis(hb.interval_ms).min(MAX_INTERVAL);
        self.timing.interval.max(own)
    }

    fn state_for(&self, age: Duration, i: Duration) -> NodeState {
        if age < i * self.timing.suspect_after {
            NodeState::Alive
        } else if age < i * self.timing.dead_after {
            NodeState::Suspect
        } else {
            NodeState::Dead
        }
    }

    /// How often nodes write their heartbeats.
    pub fn interval(&self) -> Duration {
        self.timing.interval
    }

    /// A node's state now; see the module's documentation.
    fn state_of(&self, o: &Observed, now: Instant) -> NodeState {
        let age = now.saturating_duration_since(o.last_change);
        match self.state_for(age, self.interval_of(&o.heartbeat)) {
            NodeState::Alive if !o.beating => NodeState::Suspect,
            state => state,
        }
    }

    /// Fold in what storage holds now (heartbeats listed and read at `now`). Returns the ids of
    /// dead nodes whose heartbeats should be deleted.
    pub fn observe(&self, heartbeats: Vec<HeartbeatV1>, now: Instant) -> Vec<String> {
        {
            let mut at = self.observed_at.lock().expect("world view");
            *at = Some(at.map_or(now, |t| t.max(now)));
        }
        let mut nodes = self.nodes.lock().expect("world view");
        let present: std::collections::HashSet<String> =
            heartbeats.iter().map(|h| h.node_id.clone()).collect();
        // A heartbeat that disappeared means a graceful stop (or a cleanup): forget the node.
        nodes.retain(|id, o| {
            let keep = present.contains(id);
            if !keep {
                info!(node = %id, seq = o.heartbeat.seq, "node left the swarm");
            }
            keep
        });
        for hb in heartbeats {
            match nodes.get_mut(&hb.node_id) {
                Some(o) => {
                    if hb.seq != o.heartbeat.seq {
                        o.last_change = now;
                        o.beating = true;
                    }
                    o.heartbeat = hb;
                }
                None => {
                    info!(node = %hb.node_id, url = %hb.flight_url, "node joined the swarm");
                    nodes.insert(
                        hb.node_id.clone(),
                        Observed {
                            heartbeat: hb,
                            last_change: now,
                            beating: false,
                        },
                    );
                }
            }
        }
        let rounds = self.timing.dead_after + self.timing.grace;
        // Never this node's own: it is running, whatever its heartbeat's age says (a stalled
        // heartbeat writer is no reason to leave the swarm).
        let me = self.own_id();
        nodes
            .iter()
            .filter(|(id, _)| me.as_ref() != Some(*id))
            .filter(|(_, o)| {
                let remove_after = self.interval_of(&o.heartbeat) * rounds;
                now.saturating_duration_since(o.last_change) >= remove_after
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Forget a node whose heartbeat was deleted.
    pub fn forget(&self, id: &str) {
        self.nodes.lock().expect("world view").remove(id);
    }

    /// Every known node with its state, sorted by id.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.nodes_at(Instant::now())
    }

    /// The instant ages are judged at: `now`, but never after the last read of storage.
    fn judged_at(&self, now: Instant) -> Instant {
        match *self.observed_at.lock().expect("world view") {
            Some(t) => now.min(t),
            None => now,
        }
    }

    pub fn nodes_at(&self, now: Instant) -> Vec<NodeView> {
        let now = self.judged_at(now);
        let nodes = self.nodes.lock().expect("world view");
        let mut out: Vec<NodeView> = nodes
            .values()
            .map(|o| NodeView {
                heartbeat: o.heartbeat.clone(),
                state: self.state_of(o, now),
                age: now.saturating_duration_since(o.last_change),
            })
            .collect();
        out.sort_by(|a, b| a.heartbeat.node_id.cmp(&b.heartbeat.node_id));
        out
    }

    /// Whether a node other than `me`, alive now, has a heartbeat that satisfies `pred` (without
    /// copying every heartbeat, as [`WorldView::nodes`] does). A node not yet seen beating counts
    /// here if its heartbeat is fresh by age: this answers questions such as "does a peer
    /// coordinate, so poll the inbox fast?", where a node that just started must not wait an
    /// interval to find out, and trusting a dead node's heartbeat costs only some reads.
    pub fn any_alive_other(&self, me: &str, pred: impl Fn(&HeartbeatV1) -> bool) -> bool {
        self.any_alive_other_at(me, Instant::now(), pred)
    }

    fn any_alive_other_at(
        &self,
        me: &str,
        now: Instant,
        pred: impl Fn(&HeartbeatV1) -> bool,
    ) -> bool {
        let now = self.judged_at(now);
        let nodes = self.nodes.lock().expect("world view");
        nodes.iter().any(|(id, o)| {
            id != me
                && self.state_for(
                    now.saturating_duration_since(o.last_change),
                    self.interval_of(&o.heartbeat),
                ) == NodeState::Alive
                && pred(&o.heartbeat)
        })
    }

    /// The swarm as node `me` sees it, for placing work: a node running this code is alive
    /// whatever its own heartbeat's age says, and listed even when its heartbeat is not (not yet
    /// read, or deleted as dead by a stalled peer), so it is always a place of last resort.
    pub fn seen_from(&self, me: &str) -> Vec<NodeView> {
        let mut nodes = self.nodes();
        let mut listed = false;
        for n in nodes.iter_mut().filter(|n| n.heartbeat.node_id == me) {
            n.state = NodeState::Alive;
            listed = true;
        }
        if !listed {
            let own = self.own.lock().expect("world view").clone();
            if let Some(heartbeat) = own.filter(|h| h.node_id == me) {
                nodes.push(NodeView {
                    heartbeat,
                    state: NodeState::Alive,
                    age: Duration::ZERO,
                });
                nodes.sort_by(|a, b| a.heartbeat.node_id.cmp(&b.heartbeat.node_id));
            }
        }
        nodes
    }

    /// Read every heartbeat under the storage root and fold them in; delete long-dead ones.
    pub async fn refresh(&self, storage: &Storage, key: &SwarmKey) -> Result<()> {
        let listed = storage.list(&paths::nodes_prefix()).await?;
        let mut heartbeats = Vec::with_capacity(listed.len());
        for meta in listed {
            // (None: deleted between list and get.)
            if let Some((body, _)) = storage.get_opt(&meta.location).await? {
                match key.open_object::<HeartbeatV1>(&meta.location, &body) {
                    Ok(hb) => heartbeats.push(sanitize(hb)),
                    Err(e) => warn!(key = %meta.location, error = %e, "skipping heartbeat"),
                }
            }
        }
        for dead in self.observe(heartbeats, Instant::now()) {
            warn!(node = %dead, "removing the heartbeat of a dead node");
            if paths::validate_node_id(&dead).is_ok() {
                storage.delete(&paths::heartbeat(&dead)).await?;
            }
            self.forget(&dead);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn hb(id: &str, seq: u64) -> HeartbeatV1 {
        HeartbeatV1 {
            v: 1,
            node_id: id.into(),
            flight_url: format!("grpc://{id}:1"),
            version: "t".into(),
            bees_total: 2,
            bees_busy: 0,
            memory_budget: 1,
            memory_reserved: 0,
            queue_depth: 0,
            temperature: 0.0,
            band: "cold".into(),
            cache: CacheSummaryV1::default(),
            started_at: Utc::now(),
            written_at: Utc::now(),
            seq,
            coordinating: false,
            interval_ms: 0,
        }
    }

    fn timing() -> SwarmTiming {
        SwarmTiming {
            interval: Duration::from_secs(1),
            suspect_after: 3,
            dead_after: 6,
            grace: 2,
        }
    }

    #[test]
    fn alive_suspect_dead_by_the_observers_clock() {
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        w.observe(vec![hb("a", 1), hb("b", 1)], t0);
        // a keeps beating, b beats once and stops.
        for s in 2..=8 {
            w.observe(
                vec![hb("a", s), hb("b", 2)],
                t0 + Duration::from_secs(s - 1),
            );
        }
        let at = |secs| {
            w.nodes_at(t0 + Duration::from_secs(secs))
                .into_iter()
                .map(|n| (n.heartbeat.node_id.clone(), n.state))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            at(2),
            vec![
                ("a".into(), NodeState::Alive),
                ("b".into(), NodeState::Alive)
            ]
        );
        assert_eq!(at(5)[1].1, NodeState::Suspect);
        assert_eq!(at(7)[1].1, NodeState::Dead);
        assert_eq!(at(7)[0].1, NodeState::Alive);
    }

    #[test]
    fn a_heartbeat_found_on_first_look_counts_once_it_moves() {
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        // Left by a node that crashed a moment ago, or written by one that just started: this
        // observer cannot tell yet, so the node gets no work.
        w.observe(vec![hb("new", 1), hb("crashed", 7)], t0);
        let states = |secs| {
            w.nodes_at(t0 + Duration::from_secs(secs))
                .into_iter()
                .map(|n| n.state)
                .collect::<Vec<_>>()
        };
        assert_eq!(states(0), vec![NodeState::Suspect, NodeState::Suspect]);
        // Asked whether a peer coordinates (how fast to poll), fresh heartbeats count at once.
        assert!(w.any_alive_other_at("me", t0, |_| true));
        // One node beats: it is alive; the other never does and dies on the usual schedule.
        w.observe(
            vec![hb("new", 2), hb("crashed", 7)],
            t0 + Duration::from_secs(1),
        );
        assert_eq!(states(1), vec![NodeState::Suspect, NodeState::Alive]);
        w.observe(
            vec![hb("new", 7), hb("crashed", 7)],
            t0 + Duration::from_secs(6),
        );
        assert_eq!(states(6), vec![NodeState::Dead, NodeState::Alive]);
        // The node running this code is alive to itself from the start.
        let w = WorldView::new(timing());
        w.observe(vec![hb("me", 1), hb("other", 1)], t0);
        let seen: Vec<_> = w.seen_from("me").into_iter().map(|n| n.state).collect();
        assert_eq!(seen, vec![NodeState::Alive, NodeState::Suspect]);
    }

    #[test]
    fn a_node_is_alive_to_itself_when_a_stalled_peer_deleted_its_heartbeat() {
        // A host that stalls past the dead limit: every node's refresh then sees every other
        // (and itself) unmoved for too long, and deletes their heartbeats. A coordinator that
        // then finds no live node for a task it must reassign fails the query.
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        w.beating(&hb("me", 1));
        w.observe(vec![hb("me", 1), hb("other", 1)], t0);
        w.observe(
            vec![hb("me", 2), hb("other", 2)],
            t0 + Duration::from_secs(1),
        );
        let dead = w.observe(
            vec![hb("me", 2), hb("other", 2)],
            t0 + Duration::from_secs(20),
        );
        assert_eq!(dead, vec!["other".to_string()], "never its own heartbeat");
        // Its heartbeat deleted by the other node, this one still places work on itself.
        w.observe(vec![], t0 + Duration::from_secs(21));
        let seen: Vec<_> = w
            .seen_from("me")
            .into_iter()
            .map(|n| (n.heartbeat.node_id, n.state))
            .collect();
        assert_eq!(seen, vec![("me".to_string(), NodeState::Alive)]);
        assert!(w.seen_from("other").is_empty());
    }

    #[test]
    fn a_node_is_judged_by_its_own_interval_when_longer() {
        // This observer beats every second; "slow" every 10 s, "liar" claims a day.
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        let every = |id: &str, seq, ms| HeartbeatV1 {
            interval_ms: ms,
            ..hb(id, seq)
        };
        let beats = |s| {
            vec![
                every("slow", s, 10_000),
                every("liar", s, 86_400_000),
                every("fast", s, 100),
            ]
        };
        w.observe(beats(1), t0);
        w.observe(beats(2), t0 + Duration::from_secs(1));
        // Storage read again and again, nobody beating since.
        let state = |secs| {
            w.observe(beats(2), t0 + Duration::from_secs(secs));
            w.nodes_at(t0 + Duration::from_secs(secs))
                .into_iter()
                .map(|n| (n.heartbeat.node_id.clone(), n.state))
                .collect::<HashMap<_, _>>()
        };
        // 9 s of silence: 9 of the observer's intervals, not one of slow's.
        let at = state(10);
        assert_eq!(at["slow"], NodeState::Alive);
        assert_eq!(
            at["fast"],
            NodeState::Dead,
            "judged by the observer's interval"
        );
        // Suspect after 3 of its own intervals, dead after 6; the liar by at most 10 minutes.
        assert_eq!(state(40)["slow"], NodeState::Suspect);
        assert_eq!(state(70)["slow"], NodeState::Dead);
        assert_eq!(state(1_801)["liar"], NodeState::Suspect);
        assert_eq!(state(3_602)["liar"], NodeState::Dead);
        // Removed after dead_after + grace of its own intervals.
        let w = WorldView::new(timing());
        w.observe(beats(1), t0);
        w.observe(beats(2), t0 + Duration::from_secs(1));
        let gone = |secs| {
            let mut ids = w.observe(beats(2), t0 + Duration::from_secs(secs));
            ids.sort();
            ids
        };
        assert_eq!(gone(80), vec!["fast".to_string()]);
        assert_eq!(gone(82), vec!["fast".to_string(), "slow".to_string()]);
    }

    #[test]
    fn only_another_alive_node_coordinating_counts() {
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        let coordinating = |id: &str, seq| HeartbeatV1 {
            coordinating: true,
            ..hb(id, seq)
        };
        w.observe(vec![coordinating("a", 0), hb("b", 0)], t0);
        w.observe(vec![coordinating("a", 1), hb("b", 1)], t0);
        let asks = |me: &str, secs| {
            w.any_alive_other_at(me, t0 + Duration::from_secs(secs), |h| h.coordinating)
        };
        assert!(asks("b", 0));
        assert!(!asks("a", 0), "a node's own heartbeat does not count");
        // a stops beating: once it is Suspect, b no longer stays awake for it.
        for s in 2..=5 {
            w.observe(
                vec![coordinating("a", 1), hb("b", s)],
                t0 + Duration::from_secs(s - 1),
            );
        }
        assert!(asks("b", 2));
        assert!(!asks("b", 4));
        // a beats again, no longer coordinating.
        w.observe(vec![hb("a", 2), hb("b", 6)], t0 + Duration::from_secs(5));
        assert!(!asks("b", 5));
    }

    #[test]
    fn a_stalled_observer_judges_as_of_its_last_read() {
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        w.observe(vec![hb("a", 1)], t0);
        w.observe(vec![hb("a", 2)], t0 + Duration::from_secs(1));
        // This observer has not read storage for a long time: it knows nothing newer, so it
        // must not call the node suspect.
        assert_eq!(
            w.nodes_at(t0 + Duration::from_secs(60))[0].state,
            NodeState::Alive
        );
        // Once it reads again and the sequence has not moved, the age counts.
        w.observe(vec![hb("a", 2)], t0 + Duration::from_secs(5));
        assert_eq!(
            w.nodes_at(t0 + Duration::from_secs(60))[0].state,
            NodeState::Suspect
        );
    }

    #[test]
    fn skewed_writer_clocks_do_not_matter() {
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        let mut skewed = hb("s", 1);
        skewed.written_at = Utc::now() - chrono::Duration::minutes(30);
        w.observe(vec![skewed.clone()], t0);
        skewed.seq = 2;
        w.observe(vec![skewed], t0 + Duration::from_secs(1));
        assert_eq!(
            w.nodes_at(t0 + Duration::from_secs(2))[0].state,
            NodeState::Alive
        );
    }

    #[test]
    fn dead_nodes_are_scheduled_for_removal_after_the_grace_period() {
        let w = WorldView::new(timing());
        let t0 = Instant::now();
        assert!(w.observe(vec![hb("d", 1)], t0).is_empty());
        assert!(
            w.observe(vec![hb("d", 1)], t0 + Duration::from_secs(7))
                .is_empty()
        );
        assert_eq!(
            w.observe(vec![hb("d", 1)], t0 + Duration::from_secs(8)),
            vec!["d".to_string()]
        );
        // A heartbeat that vanished (graceful stop) is forgotten at once.
        w.observe(vec![], t0 + Duration::from_secs(9));
        assert!(w.nodes().is_empty());
    }
}
