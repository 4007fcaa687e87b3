//! Every object-store key Apiary reads or writes is built here, and nowhere else.
//!
//! Names are validated on the way in ([`Ident::parse`]), so no user string can leave its prefix:
//! an identifier is 1–64 characters of `[a-z0-9_]`, starts with a letter or `_`, and may not start
//! with `_` (reserved for internal keys such as `_apiary/` and Delta's `_delta_log/`). Input is
//! lowercased (ASCII only) first; any other character, including look-alike Unicode, is refused.
//!
//! Layout under the storage root:
//!
//! ```text
//! _apiary/catalog/hives/<hive>.json                 hive marker
//! _apiary/catalog/boxes/<hive>/<box>.json           box marker
//! _apiary/catalog/frames/<hive>/<box>/<frame>.json  frame marker
//! _apiary/nodes/<node>.json                         heartbeats
//! _apiary/queries/<query>/manifest.json             a distributed query's manifest
//! _apiary/queries/<query>/s<s>-t<t>/…               a task: plan.bin, claim-<a>, out-<a>/part-*,
//!                                                   done-<a>.json, failed-<a>.json
//! _apiary/queries/<query>/cancel                    cancel marker
//! _apiary/inbox/<node>/<query>.s<s>.t<t>.a<a>.json  task assignments, one inbox per node
//! _apiary/secret                                    the swarm's token key (unless configured)
//! <hive>/<box>/<frame>/                             the frame's Delta table (_delta_log/, cells)
//! ```

use std::fmt;

use object_store::path::Path;

use crate::error::{Error, Result};

/// Longest accepted identifier.
pub const MAX_NAME_LEN: usize = 64;

/// Hive that always exists and cannot be dropped.
pub const DEFAULT_HIVE: &str = "default";
/// Box that always exists in [`DEFAULT_HIVE`] and cannot be dropped.
pub const DEFAULT_BOX: &str = "default";
/// Hive reserved for read-only status tables.
pub const SYSTEM_HIVE: &str = "system";

/// Names that may not be used for hives (they are served by the node itself).
const RESERVED_HIVES: &[&str] = &[SYSTEM_HIVE];
/// Names that may not be used for boxes (DataFusion's own schema name).
const RESERVED_BOXES: &[&str] = &["information_schema"];

pub const INTERNAL_ROOT: &str = "_apiary";

/// A validated hive, box or frame name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validate and normalise a user-supplied name.
    pub fn parse(raw: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidName {
            name: raw.to_string(),
            reason,
        };
        if raw.is_empty() {
            return Err(invalid("names may not be empty"));
        }
        if !raw.is_ascii() {
            return Err(invalid("names may only use ASCII letters, digits and '_'"));
        }
        let name = raw.to_ascii_lowercase();
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("names are at most 64 characters"));
        }
        let mut chars = name.chars();
        let first = chars.next().expect("checked non-empty");
        if !(first.is_ascii_lowercase() || first == '_') {
            return Err(invalid("names start with a letter"));
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(invalid("names may only use ASCII letters, digits and '_'"));
        }
        if first == '_' {
            return Err(invalid("names starting with '_' are reserved"));
        }
        Ok(Ident(name))
    }

    /// Validate a name for a new hive (refuses reserved hive names).
    pub fn parse_hive(raw: &str) -> Result<Self> {
        let ident = Self::parse(raw)?;
        if RESERVED_HIVES.contains(&ident.as_str()) {
            return Err(Error::InvalidName {
                name: raw.to_string(),
                reason: "this hive name is reserved",
            });
        }
        Ok(ident)
    }

    /// Validate a name for a new box (refuses reserved box names).
    pub fn parse_box(raw: &str) -> Result<Self> {
        let ident = Self::parse(raw)?;
        if RESERVED_BOXES.contains(&ident.as_str()) {
            return Err(Error::InvalidName {
                name: raw.to_string(),
                reason: "this box name is reserved",
            });
        }
        Ok(ident)
    }

    /// Trusted constructor for names read back from our own keys; still validated.
    pub(crate) fn from_key_segment(segment: &str) -> Option<Self> {
        Self::parse(segment).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn default_hive() -> Self {
        Ident(DEFAULT_HIVE.to_string())
    }

    pub fn default_box() -> Self {
        Ident(DEFAULT_BOX.to_string())
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Ident {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A box, fully qualified by its hive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoxRef {
    pub hive: Ident,
    pub name: Ident,
}

impl BoxRef {
    pub fn new(hive: Ident, name: Ident) -> Self {
        Self { hive, name }
    }

    pub fn is_default(&self) -> bool {
        self.hive.as_str() == DEFAULT_HIVE && self.name.as_str() == DEFAULT_BOX
    }
}

impl fmt::Display for BoxRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.hive, self.name)
    }
}

/// A frame, fully qualified by its hive and box.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameRef {
    pub hive: Ident,
    pub box_name: Ident,
    pub name: Ident,
}

impl FrameRef {
    pub fn new(hive: Ident, box_name: Ident, name: Ident) -> Self {
        Self {
            hive,
            box_name,
            name,
        }
    }

    pub fn box_ref(&self) -> BoxRef {
        BoxRef::new(self.hive.clone(), self.box_name.clone())
    }
}

impl fmt::Display for FrameRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.hive, self.box_name, self.name)
    }
}

fn internal(parts: &[&str]) -> Path {
    Path::from_iter(std::iter::once(INTERNAL_ROOT).chain(parts.iter().copied()))
}

/// Prefix holding one marker object per hive.
pub fn hives_prefix() -> Path {
    internal(&["catalog", "hives"])
}

pub fn hive_marker(hive: &Ident) -> Path {
    internal(&["catalog", "hives", &format!("{hive}.json")])
}

/// Prefix holding the box markers of every hive.
pub fn all_boxes_prefix() -> Path {
    internal(&["catalog", "boxes"])
}

/// Prefix holding the box markers of one hive.
pub fn boxes_prefix(hive: &Ident) -> Path {
    internal(&["catalog", "boxes", hive.as_str()])
}

pub fn box_marker(b: &BoxRef) -> Path {
    internal(&[
        "catalog",
        "boxes",
        b.hive.as_str(),
        &format!("{}.json", b.name),
    ])
}

/// Prefix holding the frame markers of one hive (all its boxes).
pub fn hive_frames_prefix(hive: &Ident) -> Path {
    internal(&["catalog", "frames", hive.as_str()])
}

/// Prefix holding the frame markers of one box.
pub fn frames_prefix(b: &BoxRef) -> Path {
    internal(&["catalog", "frames", b.hive.as_str(), b.name.as_str()])
}

pub fn frame_marker(f: &FrameRef) -> Path {
    internal(&[
        "catalog",
        "frames",
        f.hive.as_str(),
        f.box_name.as_str(),
        &format!("{}.json", f.name),
    ])
}

/// Prefix holding the leases of the frames being created in one hive.
pub fn hive_creations_prefix(hive: &Ident) -> Path {
    internal(&["creating", hive.as_str()])
}

/// Prefix holding the leases of the frames being created in one box.
pub fn creations_prefix(b: &BoxRef) -> Path {
    internal(&["creating", b.hive.as_str(), b.name.as_str()])
}

/// Prefix holding the leases of the creations of one frame name (one per marker).
pub fn creations_of(f: &FrameRef) -> Path {
    internal(&[
        "creating",
        f.hive.as_str(),
        f.box_name.as_str(),
        f.name.as_str(),
    ])
}

/// The lease of a creation of `f` under the catalog marker whose id is `incarnation`.
pub fn creation_lease(f: &FrameRef, incarnation: &str) -> Path {
    creations_of(f).join(format!("{incarnation}.json"))
}

/// The key of a file a delta-rs operation names by its key's text (`VacuumPlan`'s
/// `files_deleted`), relative to its frame's table: parsed, not escaped again (`Path::from`
/// would make the `%20` of an escaped partition value into `%2520`, a file that does not
/// exist). The same key as delta-rs's `object_store_path` gives for a cell in the log.
pub fn table_file_key(text: &str) -> Path {
    Path::parse(text).unwrap_or_else(|_| Path::from(text))
}

/// The key an external frame's marker records (`ExternalV1::location`, the text of a key made
/// by `Storage::external_location`): parsed back, not escaped again, so a location with a space
/// or `%` names the same files it did when the frame was created.
pub fn external_key(location: &str) -> crate::Result<Path> {
    Path::parse(location).map_err(|e| crate::Error::Unreadable {
        what: "external frame location",
        detail: e.to_string(),
    })
}

/// Root of the frame's Delta table, relative to the storage root.
pub fn frame_root(f: &FrameRef) -> Path {
    Path::from_iter([f.hive.as_str(), f.box_name.as_str(), f.name.as_str()])
}

/// A short-lived object written to read storage's clock ([`crate::Storage::watermark`]).
pub fn clock_probe() -> Path {
    internal(&["clock", &uuid::Uuid::now_v7().to_string()])
}

/// Prefix holding every node's heartbeat.
pub fn nodes_prefix() -> Path {
    internal(&["nodes"])
}

/// A validated node id: the same alphabet as identifiers plus '-', so UUIDs fit.
pub fn validate_node_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: id.to_string(),
            reason: "node ids use 1-64 characters of [a-z0-9_-]",
        })
    }
}

pub fn heartbeat(node_id: &str) -> Path {
    internal(&["nodes", &format!("{node_id}.json")])
}

/// The swarm's token-signing key, created once by the first node.
pub fn secret() -> Path {
    internal(&["secret"])
}

/// Prefix of everything belonging to distributed queries.
pub fn queries_prefix() -> Path {
    internal(&["queries"])
}

/// Query ids are generated by us (UUIDs), but they travel inside tickets: check them anyway.
pub fn validate_query_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: id.to_string(),
            reason: "query ids are UUIDs",
        })
    }
}

/// Prefix of one query's objects.
pub fn query_prefix(query_id: &str) -> Result<Path> {
    validate_query_id(query_id)?;
    Ok(internal(&["queries", query_id]))
}

/// A query's manifest (distributed execution).
pub fn query_manifest(query_id: &str) -> Result<Path> {
    Ok(query_prefix(query_id)?.join("manifest.json"))
}

/// One attempt of one task (fragment) of a distributed query: the unit the swarm's objects are
/// keyed by. Displays as `fragment s<stage>t<task> of query <q>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptKey {
    pub query_id: String,
    pub stage: u32,
    pub task: u32,
    pub attempt: u32,
}

impl AttemptKey {
    pub fn new(query_id: impl Into<String>, stage: u32, task: u32, attempt: u32) -> Self {
        Self {
            query_id: query_id.into(),
            stage,
            task,
            attempt,
        }
    }

    /// The same task's next attempt.
    pub fn next(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }

    /// A short id for registries and logs: `<q>/s<stage>t<task>a<attempt>`.
    pub fn id(&self) -> String {
        format!(
            "{}/s{}t{}a{}",
            self.query_id, self.stage, self.task, self.attempt
        )
    }

    fn task_prefix(&self) -> Result<Path> {
        Ok(query_prefix(&self.query_id)?.join(format!("s{}-t{}", self.stage, self.task)))
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fragment s{}t{} of query {}",
            self.stage, self.task, self.query_id
        )
    }
}

/// The serialised plan of a task (shared by its attempts).
pub fn task_plan(key: &AttemptKey) -> Result<Path> {
    Ok(key.task_prefix()?.join("plan.bin"))
}

/// Claim of one attempt of a task: created with put-if-absent, exactly one worker wins.
pub fn task_claim(key: &AttemptKey) -> Result<Path> {
    Ok(key.task_prefix()?.join(format!("claim-{}", key.attempt)))
}

/// One part of an attempt's output (an Arrow IPC stream).
pub fn task_part(key: &AttemptKey, part: u32) -> Result<Path> {
    Ok(key
        .task_prefix()?
        .join(format!("out-{}", key.attempt))
        .join(format!("part-{part:05}.arrow")))
}

/// Written last by a worker when an attempt's output is complete.
pub fn task_done(key: &AttemptKey) -> Result<Path> {
    Ok(key
        .task_prefix()?
        .join(format!("done-{}.json", key.attempt)))
}

/// Written by a worker when an attempt failed.
pub fn task_failed(key: &AttemptKey) -> Result<Path> {
    Ok(key
        .task_prefix()?
        .join(format!("failed-{}.json", key.attempt)))
}

/// A node's inbox of task assignments.
pub fn inbox_prefix(node_id: &str) -> Result<Path> {
    validate_node_id(node_id)?;
    Ok(internal(&["inbox", node_id]))
}

/// object_store's name for a file a local store is still writing: `<name>#<digits>`, renamed
/// to `<name>` once written.
pub fn is_staged_name(name: &str) -> bool {
    name.split_once('#').is_some_and(|(stem, n)| {
        !stem.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// What a change to an object under `_apiary/` tells a node that watches a local root for
/// changes: whom to wake. `parts` is the changed file's path relative to the root, split at `/`.
/// Staging files (`…#<n>`, written before a rename) and every other key mean nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum InternalChange<'a> {
    /// `node`'s inbox, or the directory of all inboxes (`None`), was written to.
    Inbox(Option<&'a str>),
    /// An attempt of a task of this query ended: its `done` or `failed` marker appeared.
    Outcome(&'a str),
}

/// Classify a changed path (see [`InternalChange`]).
pub fn internal_change<'a>(parts: &[&'a str]) -> Option<InternalChange<'a>> {
    if parts.last().is_some_and(|name| is_staged_name(name)) {
        return None;
    }
    match parts {
        [INTERNAL_ROOT, "inbox"] => Some(InternalChange::Inbox(None)),
        [INTERNAL_ROOT, "inbox", node, ..] => Some(InternalChange::Inbox(Some(node))),
        [INTERNAL_ROOT, "queries", query, _task, name]
            if name.ends_with(".json")
                && (name.starts_with("done-") || name.starts_with("failed-")) =>
        {
            Some(InternalChange::Outcome(query))
        }
        _ => None,
    }
}

/// One assignment in a node's inbox.
pub fn inbox_entry(node_id: &str, key: &AttemptKey) -> Result<Path> {
    validate_query_id(&key.query_id)?;
    Ok(inbox_prefix(node_id)?.join(format!(
        "{}.s{}.t{}.a{}.json",
        key.query_id, key.stage, key.task, key.attempt
    )))
}

/// Prefix of every inbox.
pub fn inboxes_prefix() -> Path {
    internal(&["inbox"])
}

/// Marker asking every node to cancel a query.
pub fn cancel_marker(query_id: &str) -> Result<Path> {
    Ok(query_prefix(query_id)?.join("cancel"))
}

/// Extract `<name>` from the last segment `<name>.json` of a marker key, if it is one of ours.
pub(crate) fn marker_name(path: &Path) -> Option<Ident> {
    let last = path.filename()?;
    let stem = last.strip_suffix(".json")?;
    Ident::from_key_segment(stem)
}

/// The segments of `path` after `prefix`, if `path` is below it.
pub(crate) fn segments_after(path: &Path, prefix: &Path) -> Option<Vec<String>> {
    path.prefix_match(prefix)
        .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_lowercases() {
        assert_eq!(Ident::parse("Sales_2024").unwrap().as_str(), "sales_2024");
        assert_eq!(Ident::parse("a").unwrap().as_str(), "a");
        assert!(Ident::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_names_that_could_escape_their_prefix() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "a\\b",
            "../x",
            "a.b",
            "-x",
            "1abc",
            "a b",
            "_delta_log",
            "_apiary",
            "a%2fb",
            "ａbc",     // full-width a
            "ı",        // dotless i, lowercases to itself
            "\u{212A}", // Kelvin sign
            "a\u{0}",
            "a\n",
        ] {
            assert!(Ident::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Ident::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn reserved_names() {
        assert!(Ident::parse_hive("system").is_err());
        assert!(Ident::parse_hive("SYSTEM").is_err());
        assert!(Ident::parse_box("information_schema").is_err());
        assert!(Ident::parse_box("system").is_ok());
    }

    #[test]
    fn keys_stay_under_their_prefix() {
        let f = FrameRef::new(
            Ident::parse("h").unwrap(),
            Ident::parse("b").unwrap(),
            Ident::parse("f").unwrap(),
        );
        assert_eq!(frame_root(&f).as_ref(), "h/b/f");
        assert_eq!(
            frame_marker(&f).as_ref(),
            "_apiary/catalog/frames/h/b/f.json"
        );
        assert_eq!(marker_name(&frame_marker(&f)).unwrap().as_str(), "f");
        assert!(frame_marker(&f).prefix_matches(&frames_prefix(&f.box_ref())));
    }

    #[test]
    fn changes_that_wake_a_watching_node() {
        let split = |k: &Path| {
            k.as_ref()
                .split('/')
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let classify = |k: &Path| {
            let parts = split(k);
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            format!("{:?}", internal_change(&parts))
        };
        let q = "0b3e6c4e-9d1a-4c1e-8f00-000000000001";
        let key = AttemptKey::new(q, 1, 2, 0);
        assert_eq!(
            classify(&inbox_entry("n1", &key).unwrap()),
            "Some(Inbox(Some(\"n1\")))"
        );
        assert_eq!(
            classify(&inbox_prefix("n1").unwrap()),
            "Some(Inbox(Some(\"n1\")))"
        );
        assert_eq!(classify(&internal(&["inbox"])), "Some(Inbox(None))");
        let outcome = format!("Some(Outcome(\"{q}\"))");
        assert_eq!(classify(&task_done(&key).unwrap()), outcome);
        assert_eq!(classify(&task_failed(&key).unwrap()), outcome);
        // A staging file before its rename, and the rest of a task's objects, wake nobody.
        let staged = Path::from(format!("{}#1", task_done(&key).unwrap()));
        assert_eq!(classify(&staged), "None");
        for quiet in [
            task_plan(&key).unwrap(),
            task_claim(&key).unwrap(),
            task_part(&key, 0).unwrap(),
            query_manifest(q).unwrap(),
            heartbeat("n1"),
            secret(),
        ] {
            assert_eq!(classify(&quiet), "None", "{quiet}");
        }
    }

    #[test]
    fn staged_names_are_a_name_a_hash_and_digits() {
        for staged in ["part-0.parquet#1", "00000000000000000003.json#42", "a#0"] {
            assert!(is_staged_name(staged), "{staged}");
        }
        for other in ["part-0.parquet", "#1", "a#", "a#1x", "a#-1", "a#1#2"] {
            assert!(!is_staged_name(other), "{other}");
        }
    }
}
