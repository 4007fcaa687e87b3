//! Placing tasks on nodes: spare capacity first, cached cells as a bonus where a bee is free.

use crate::cache::Bloom;
use crate::swarm::{NodeState, NodeView};

/// A candidate node for tasks.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) node_id: String,
    pub(crate) capacity: f64,
    pub(crate) bloom: Option<Bloom>,
}

impl Candidate {
    pub(crate) fn from_view(v: &NodeView) -> Option<Candidate> {
        if v.state != NodeState::Alive || v.heartbeat.band == "critical" {
            return None;
        }
        let total = v.heartbeat.bees_total.max(1) as f64;
        let busy = (v.heartbeat.bees_busy as f64).min(total);
        Some(Candidate {
            node_id: v.heartbeat.node_id.clone(),
            // A busy bee counts half: the heartbeat is up to one interval old, and a bee seen
            // busy then has often finished since (back-to-back queries see each other's
            // fragments). Busy nodes still take work, just less of it; hot ones less again.
            capacity: (total - 0.5 * busy) * (1.0 - v.heartbeat.temperature).max(0.05),
            bloom: Bloom::from_hex(&v.heartbeat.cache.bloom),
        })
    }
}

/// Pick a node for each task (given by the cells it reads): the most spare capacity, plus a
/// bonus where the cells are cached and a bee is free. Nodes in `avoid` are skipped unless
/// nothing else is left.
pub(crate) fn assign(
    candidates: &mut [Candidate],
    tasks: &[Vec<String>],
    avoid: &[String],
) -> Vec<String> {
    let mut out = Vec::with_capacity(tasks.len());
    for cells in tasks {
        let best = candidates
            .iter_mut()
            .filter(|c| !avoid.contains(&c.node_id))
            .map(|c| {
                let cached = match &c.bloom {
                    Some(b) if !cells.is_empty() => {
                        cells.iter().filter(|p| b.contains(p)).count() as f64 / cells.len() as f64
                    }
                    _ => 0.0,
                };
                // Cached cells count only where a bee is still free for the task: a queue
                // behind a warm cache is slower than a cold read on an idle node.
                let bonus = if c.capacity >= 1.0 { 2.0 * cached } else { 0.0 };
                let score = c.capacity + bonus;
                (score, c)
            })
            .max_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| b.1.node_id.cmp(&a.1.node_id))
            });
        match best {
            Some((_, c)) => {
                c.capacity -= 1.0;
                out.push(c.node_id.clone());
            }
            // Nothing else left: retry where we avoided.
            None => out.push(avoid.first().cloned().unwrap_or_default()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, capacity: f64) -> Candidate {
        Candidate {
            node_id: id.into(),
            capacity,
            bloom: None,
        }
    }

    #[test]
    fn a_node_seen_busy_still_gets_its_share() {
        // Two one-bee nodes, the other one busy in its last heartbeat (often with a fragment of
        // the previous query, long finished): two tasks go one to each, not both to the idle one.
        let view = |id: &str, busy: u32, temperature: f64| {
            let mut v = crate::swarm::NodeView::for_tests(id, 1, busy);
            v.heartbeat.temperature = temperature;
            v
        };
        let mut c: Vec<Candidate> = [view("a", 0, 0.3), view("b", 1, 0.5)]
            .iter()
            .filter_map(Candidate::from_view)
            .collect();
        let got = assign(&mut c, &vec![vec![]; 2], &[]);
        assert_eq!(got, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn spreads_by_capacity_and_prefers_cached_cells() {
        let mut c = vec![cand("a", 2.0), cand("b", 2.0)];
        let got = assign(&mut c, &vec![vec![]; 4], &[]);
        assert_eq!(got.iter().filter(|n| *n == "a").count(), 2);
        assert_eq!(got.iter().filter(|n| *n == "b").count(), 2);

        let mut bloom = Bloom::default();
        bloom.insert("x/cell.parquet");
        let mut c = vec![
            cand("a", 2.0),
            Candidate {
                bloom: Some(bloom),
                ..cand("b", 1.0)
            },
        ];
        let got = assign(&mut c, &[vec!["x/cell.parquet".into()]], &[]);
        assert_eq!(got, vec!["b".to_string()]);
        // Avoided nodes are skipped.
        let got = assign(&mut c, &[vec!["x/cell.parquet".into()]], &["b".to_string()]);
        assert_eq!(got, vec!["a".to_string()]);

        // A warm cache does not pull every task onto one node: once its bee is taken, an idle
        // node gets the next task.
        let mut bloom = Bloom::default();
        bloom.insert("x/cell.parquet");
        let mut c = vec![
            cand("cold", 1.5),
            Candidate {
                bloom: Some(bloom),
                ..cand("warm", 1.5)
            },
        ];
        let cell = vec!["x/cell.parquet".to_string()];
        let got = assign(&mut c, &[cell.clone(), cell], &[]);
        assert_eq!(got, vec!["warm".to_string(), "cold".to_string()]);
    }
}
