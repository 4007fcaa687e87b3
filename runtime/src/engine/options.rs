//! Session options: `SET datafusion.… = …` and `RESET datafusion.…` change DataFusion options
//! for the rest of a session (its later statements, on any node: the session carries them).
//!
//! Only options about how a statement is planned and run may be set — `datafusion.execution.*`,
//! `datafusion.optimizer.*`, `datafusion.explain.*`, `datafusion.sql_parser.*` and
//! `datafusion.format.*` — within bounds where an option sizes work; the catalog and runtime
//! (memory, disk, object stores) belong to the operator. A session holds at most
//! [`MAX_OPTIONS`] of them.
//!
//! Apiary's own session options: `apiary.merge_schema` (`true`/`false`): an append (bulk ingest
//! in `append` or `create_append` mode) whose batches have columns the frame lacks adds them.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::config::{ConfigOptions, Dialect};

use super::Engine;
use super::types::Session;
use crate::error::{Error, Result};

/// Most options one session may set.
pub(super) const MAX_OPTIONS: usize = 32;

/// Longest option value.
const MAX_VALUE_LEN: usize = 256;

const SETTABLE: [&str; 5] = [
    "datafusion.execution.",
    "datafusion.optimizer.",
    "datafusion.explain.",
    "datafusion.sql_parser.",
    "datafusion.format.",
];

/// Apiary's own session options: name, the values they take, and the value when unset.
const APIARY_OPTIONS: [(&str, &[&str], &str); 1] = [(MERGE_SCHEMA, &["true", "false"], "false")];

/// `SET apiary.merge_schema = true`: appends may add columns.
pub const MERGE_SCHEMA: &str = "apiary.merge_schema";

/// Whether `session` asked appends to add the columns a frame lacks.
pub fn merges_schema(options: &[(String, String)]) -> bool {
    options
        .iter()
        .any(|(k, v)| k == MERGE_SCHEMA && v.eq_ignore_ascii_case("true"))
}

/// The largest value of a whole-number option without a range of its own (4 Gi: any count or
/// byte size a session has a use for).
const MAX_WHOLE_NUMBER: u64 = 1 << 32;

/// Options that size work or protect the process, with the range a session may choose.
fn bounds(name: &str) -> Option<(u64, u64)> {
    Some(match name {
        "datafusion.execution.batch_size" => (1, 1 << 20),
        "datafusion.execution.target_partitions" | "datafusion.execution.planning_concurrency" => {
            (1, 256)
        }
        // Deeper parsing than the server allows could overflow a stack.
        "datafusion.sql_parser.recursion_limit" => (1, 50),
        _ => return None,
    })
}

impl Engine {
    /// `SET name = value` (`Some`) or `RESET name` (`None`) in `session`.
    pub(super) fn set_option(
        &self,
        session: &mut Session,
        name: &str,
        value: Option<&str>,
    ) -> Result<()> {
        // `RESET ALL`, as in PostgreSQL: every option the session set.
        if value.is_none() && name.eq_ignore_ascii_case("all") {
            session.options.clear();
            return Ok(());
        }
        let apiary = APIARY_OPTIONS.iter().find(|(k, _, _)| *k == name);
        let mut probe = self.base_state().config().options().as_ref().clone();
        // The option's default, if DataFusion has the option (`None` inside: unset).
        let default = probe
            .entries()
            .into_iter()
            .find(|e| e.key == name)
            .map(|e| e.value);
        // An unknown name is the caller's mistake whatever its prefix; a known one may still
        // be the operator's.
        // (DataFusion's runtime settings, `datafusion.runtime.*`, are not among its options.)
        if apiary.is_none() && !name.starts_with("datafusion.runtime.") && default.is_none() {
            return Err(Error::Sql(format!("unknown option {name}")));
        }
        if name.starts_with("datafusion.") && !SETTABLE.iter().any(|p| name.starts_with(p)) {
            return Err(Error::NotAllowed(format!(
                "{name} is the operator's to set (a session may set {}*)",
                SETTABLE.join("*, ")
            )));
        }
        let Some(value) = value else {
            session.options.retain(|(k, _)| k != name);
            return Ok(());
        };
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::Sql(format!(
                "a value of {} bytes for {name}; the limit is {MAX_VALUE_LEN}",
                value.len()
            )));
        }
        // DataFusion takes any text, and every timestamp the session computes then carries it:
        // after `SET TIME ZONE '+99:00'` clients could not decode `now()`. PostgreSQL's
        // spellings of UTC (`utc`, `Z`) are taken as `UTC`.
        let zone = name == "datafusion.execution.time_zone";
        let value = match zone && (value.eq_ignore_ascii_case("utc") || value == "Z") {
            true => "UTC",
            false => value,
        };
        if zone && let Err(e) = value.parse::<arrow::array::timezone::Tz>() {
            return Err(Error::Sql(format!(
                "{name} = {value}: {e} (a zone such as 'Europe/Paris', or an offset from -23:59 \
                 to +23:59)"
            )));
        }
        // Every other whole-number option is bounded too: DataFusion sizes semaphores from
        // some (`hash_join_buffering_capacity`, in bytes), and one beyond Tokio's limit
        // panicked the query's threads.
        let whole_number = default.flatten().is_some_and(|v| v.parse::<u64>().is_ok());
        let bounds = bounds(name).or(whole_number.then_some((0, MAX_WHOLE_NUMBER)));
        if let Some((lo, hi)) = bounds {
            match value.parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => {}
                _ => {
                    return Err(Error::Sql(format!(
                        "{name} must be a whole number from {lo} to {hi}"
                    )));
                }
            }
        }
        let value = match apiary {
            Some((_, allowed, _)) => {
                let v = value.to_ascii_lowercase();
                if !allowed.contains(&v.as_str()) {
                    return Err(Error::Sql(format!(
                        "{name} takes {}, not {value}",
                        allowed.join(" or ")
                    )));
                }
                v
            }
            None => {
                probe
                    .set(name, value)
                    .map_err(|e| Error::Sql(format!("{name} = {value}: {e}")))?;
                value.to_string()
            }
        };
        let value = value.as_str();
        match session
            .options
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
        {
            Ok(i) => session.options[i].1 = value.to_string(),
            Err(i) => {
                if session.options.len() >= MAX_OPTIONS {
                    return Err(Error::Sql(format!(
                        "a session sets at most {MAX_OPTIONS} options; RESET one first"
                    )));
                }
                session
                    .options
                    .insert(i, (name.to_string(), value.to_string()));
            }
        }
        Ok(())
    }

    /// `SHOW name` / `SHOW ALL`: `(name, value)` rows of the options `session` runs with — the
    /// engine's, with what the session set on top; a value DataFusion leaves unset is NULL.
    /// An unknown name is an error, as for `SET`.
    pub(super) fn show_options(
        &self,
        session: &Session,
        name: Option<&str>,
    ) -> Result<RecordBatch> {
        let mut options = self.session_options(session)?.as_ref().clone();
        // What the session's statements resolve bare names in: its `USE`d hive and box.
        options.catalog.default_catalog = session.hive.to_string();
        options.catalog.default_schema = session.box_name.to_string();
        let mut rows: Vec<(String, Option<String>)> = options
            .entries()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        for (key, _, unset) in APIARY_OPTIONS {
            let set = session.options.iter().find(|(k, _)| k == key);
            let value = set.map_or(unset, |(_, v)| v.as_str());
            rows.push((key.to_string(), Some(value.to_string())));
        }
        if let Some(name) = name {
            rows.retain(|(k, _)| k == name);
            if rows.is_empty() {
                return Err(Error::Sql(format!("unknown option {name}")));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ]));
        let (names, values): (Vec<String>, Vec<Option<String>>) = rows.into_iter().unzip();
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(values)),
            ],
        )?)
    }

    /// The engine's options with `session`'s on top.
    pub(super) fn session_options(&self, session: &Session) -> Result<Arc<ConfigOptions>> {
        let mut options = self.base_state().config().options().as_ref().clone();
        apply(&mut options, session)?;
        Ok(Arc::new(options))
    }

    /// The SQL dialect `session` parses with.
    pub(super) fn dialect(&self, session: &Session) -> Result<Dialect> {
        Ok(match session.options.is_empty() {
            true => Dialect::Generic,
            false => self.session_options(session)?.sql_parser.dialect,
        })
    }
}

/// Set `session`'s options on `options` (each was checked when it was set; a session carried
/// by a sealed ticket or token holds nothing else).
pub(super) fn apply(options: &mut ConfigOptions, session: &Session) -> Result<()> {
    for (k, v) in session.options.iter().take(MAX_OPTIONS) {
        if !SETTABLE.iter().any(|p| k.starts_with(p)) {
            continue;
        }
        options
            .set(k, v)
            .map_err(|e| Error::Sql(format!("session option {k} = {v}: {e}")))?;
    }
    Ok(())
}
