//! Command line and configuration: clap derive, one flattened struct per subsystem, an
//! `APIARY_*` environment variable for every flag, and an optional TOML file (`--config`).
//!
//! Precedence, highest first: command-line flag, environment variable, config file, default.
//! The file uses the flags' long names with `_` or `-` (`storage = "s3://b"`,
//! `s3_endpoint = "http://..."`, `users = ["alice:$argon2id$..."]`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "apiary",
    version,
    about = "A lakehouse for small compute, served over Arrow Flight SQL"
)]
pub struct Cli {
    /// TOML file with defaults for any flag (flags and APIARY_* variables take precedence).
    #[arg(long, global = true, env = "APIARY_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Flight SQL server.
    Serve(ServeArgs),
    /// Run SQL statements directly against a storage root and print the results.
    Sql(SqlArgs),
    /// Print an argon2 hash of a password read from stdin, for `--user name:hash`.
    HashPassword,
    /// Print the version of Apiary and of the formats and engines it uses.
    Version,
    /// Check a server configuration without serving: parse it, reach the storage, check the
    /// users, the token secret and the TLS files. Exits non-zero with the first problem.
    CheckConfig(ServeArgs),
    /// Exit 0 if a node's `/healthz` answers OK (for container health checks).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The node's health URL (its `--metrics-listen` address).
    #[arg(
        long,
        env = "APIARY_HEALTH_URL",
        default_value = "http://127.0.0.1:9090/healthz"
    )]
    pub url: String,
    /// How long to wait for an answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub flight: FlightArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Output format for result sets.
    #[arg(long, env = "APIARY_FORMAT", default_value = "table", value_parser = ["table", "csv", "json"])]
    pub format: String,
    /// One or more statements separated by `;`.
    pub query: String,
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Storage root: a directory, file://, s3://bucket/prefix or memory://name.
    #[arg(long, env = "APIARY_STORAGE", default_value = "./apiary-data")]
    pub storage: String,
    /// S3 endpoint for S3-compatible servers, e.g. http://127.0.0.1:9000 (path-style requests).
    #[arg(long, env = "APIARY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "APIARY_S3_REGION")]
    pub s3_region: Option<String>,
    #[arg(long, env = "APIARY_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "APIARY_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Allow plain http:// S3 endpoints.
    #[arg(long, env = "APIARY_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,
    /// A location outside the storage root that `CREATE EXTERNAL TABLE` may read (never write):
    /// a directory for a local root, s3://<the root's bucket>/<prefix> for an S3 root.
    /// Repeatable; comma-separated in the environment variable.
    #[arg(
        long = "external-root",
        env = "APIARY_EXTERNAL_ROOTS",
        value_delimiter = ','
    )]
    pub external_roots: Vec<String>,
}

impl StorageArgs {
    /// Open the storage root, with the external roots allowed.
    pub fn open(&self) -> anyhow::Result<apiary_storage::Storage> {
        use anyhow::Context;
        apiary_storage::Storage::open(&self.storage, &self.s3_options())
            .and_then(|s| s.with_external_roots(&self.external_roots))
            .with_context(|| format!("opening storage {}", self.storage))
    }

    pub fn s3_options(&self) -> apiary_storage::S3Options {
        apiary_storage::S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            session_token: None,
            allow_http: self.s3_allow_http
                || self
                    .s3_endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
        }
    }
}

/// The node: bees, memory, limits.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Number of bees (one core each). Default: the number of cores.
    #[arg(long, env = "APIARY_BEES")]
    pub bees: Option<usize>,
    /// Memory budget of the node, in bytes (`1GiB`, `512MiB`) or as a share of physical memory
    /// (`60%`). Divided equally among bees.
    #[arg(long, env = "APIARY_MEMORY", default_value = "50%")]
    pub memory: MemorySize,
    /// Longest a query may run (`0s`: no bound).
    #[arg(long, env = "APIARY_QUERY_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// Longest an ingest (ADBC bulk ingest, DoPut) waits for its client's next batch: a client
    /// that sends nothing for this long has its write stopped (DEADLINE_EXCEEDED; a table it
    /// was creating is given up), so that a stalled uploader does not hold a bee. `0s`: no
    /// bound.
    #[arg(long, env = "APIARY_INGEST_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ingest_idle_timeout: Duration,
    /// Longest a query's result waits for its client to read on: a client that reads nothing
    /// for this long has its query stopped (it gets what was sent, then DEADLINE_EXCEEDED), so
    /// that a reader that stalled or walked away does not hold a bee and its memory. A BI tool
    /// showing the first page of a large result reads no further until the user scrolls. As
    /// Trino's `query.client.timeout`. `0s`: no bound (the query timeout still holds).
    #[arg(long, env = "APIARY_RESULT_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub result_idle_timeout: Duration,
    /// Queries waiting for a bee beyond this many are refused (retryable).
    #[arg(long, env = "APIARY_QUEUE_DEPTH", default_value_t = 64)]
    pub queue_depth: usize,
    /// Target size of a cell (Parquet file). Default: derived from the memory per bee.
    #[arg(long, env = "APIARY_CELL_TARGET_SIZE")]
    pub cell_target_size: Option<MemorySize>,
    /// How new cells are compressed: `lz4` (fastest scans), `zstd` or `zstd(1..22)` (smallest
    /// cells), `snappy` (for Delta readers without LZ4_RAW, such as Spark before 3.4) or `none`.
    #[arg(long, env = "APIARY_CELL_COMPRESSION", default_value = "lz4")]
    pub cell_compression: apiary_storage::CellCompression,
    /// A DataFusion option for every query, as `key=value` (e.g.
    /// `datafusion.execution.batch_size=4096`). Repeatable; APIARY_DATAFUSION_OPTIONS separates
    /// them with `;`.
    #[arg(
        long = "datafusion-option",
        env = "APIARY_DATAFUSION_OPTIONS",
        value_delimiter = ';'
    )]
    pub datafusion_options: Vec<String>,
    /// This node's id in the swarm ([a-z0-9_-], at most 64). Default: random per process.
    #[arg(long, env = "APIARY_NODE_ID")]
    pub node_id: Option<String>,
    /// Where each bee makes its scratch directory for spill files (one per bee, kept while the
    /// node runs).
    #[arg(long, env = "APIARY_SCRATCH_DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// The most scratch space the node's queries may fill with spill files at once, divided
    /// equally among bees (as Trino's `max-spill-per-node`): a query that needs more fails with
    /// RESOURCE_EXHAUSTED rather than filling the disk. `0`: queries never spill (one larger
    /// than its bee's memory fails).
    #[arg(long, env = "APIARY_MAX_SPILL", default_value = "100GiB")]
    pub max_spill: MemorySize,
    /// How often the node writes its heartbeat and reads everyone else's.
    #[arg(long, env = "APIARY_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Missed intervals before a node is Suspect.
    #[arg(long, env = "APIARY_SUSPECT_AFTER", default_value_t = 3)]
    pub suspect_after: u32,
    /// Missed intervals before a node is Dead.
    #[arg(long, env = "APIARY_DEAD_AFTER", default_value_t = 6)]
    pub dead_after: u32,
    /// Further intervals before a dead node's heartbeat is deleted.
    #[arg(long, env = "APIARY_DEAD_GRACE", default_value_t = 2)]
    pub dead_grace: u32,
    /// A stage of a query spreads over the swarm only when it scans at least this many bytes of
    /// cells (and its output is small); `0` spreads every stage that can travel. The default is
    /// four cells of 32 MiB: a stage through storage costs about 30 ms, which a scan of one or
    /// two cells does not win back (bench/results/swarm-2-pinned-clustered-local.md).
    #[arg(long, env = "APIARY_DISTRIBUTE_MIN_BYTES", default_value = "128MiB")]
    pub distribute_min_bytes: MemorySize,
    /// Serve a result that is a plain union over one frame's cells (a scan with filters and
    /// projections) from every live node: one endpoint per node, each located at its node's
    /// advertised URL, when the cells total at least `--distribute-min-bytes`. `false`: one
    /// endpoint, this connection.
    #[arg(long, env = "APIARY_SHARE_RESULTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_results: bool,
    /// Fastest storage polling for fragments (busy workers, waiting coordinators).
    #[arg(long, env = "APIARY_POLL_MIN", default_value = "20ms", value_parser = parse_duration)]
    pub poll_min: Duration,
    /// On a local storage root, also watch its `_apiary/` directory for changes (inotify), so a
    /// fragment posted to this node, or one ending for a query it coordinates, is seen at once
    /// rather than at the next poll. Polling goes on either way (other hosts' writes to a shared
    /// filesystem raise no events here); S3 roots always poll.
    #[arg(long, env = "APIARY_STORAGE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub storage_events: bool,
    /// Slowest inbox polling of an idle worker.
    #[arg(long, env = "APIARY_POLL_MAX", default_value = "2s", value_parser = parse_duration)]
    pub poll_max: Duration,
    /// A fragment nobody claimed within this is reassigned.
    #[arg(long, env = "APIARY_CLAIM_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub claim_timeout: Duration,
    /// A coordinator with a free bee runs a fragment itself when the node it posted it to has
    /// not claimed it within this (that node's poll had backed off, or it is stalled); `0s`:
    /// never.
    #[arg(long, env = "APIARY_STEAL_AFTER", default_value = "100ms", value_parser = parse_duration)]
    pub steal_after: Duration,
    /// A node that posted fragments to other nodes within this says so in its heartbeats, and
    /// the workers that see it keep polling at `--poll-min` rather than backing off; `0s`:
    /// never.
    #[arg(long, env = "APIARY_AWAKE_WINDOW", default_value = "30s", value_parser = parse_duration)]
    pub awake_window: Duration,
    /// Attempts per fragment before the query fails.
    #[arg(long, env = "APIARY_FRAGMENT_TRIALS", default_value_t = 3)]
    pub fragment_trials: u32,
    /// Objects of distributed queries untouched for this long are deleted by any idle node.
    #[arg(long, env = "APIARY_ORPHAN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub orphan_ttl: Duration,
    /// Directory of the local cell cache (object-store backends only).
    #[arg(long, env = "APIARY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Size bound of the local cell cache; 0 disables it.
    #[arg(long, env = "APIARY_CACHE_SIZE", default_value = "2GiB")]
    pub cache_size: MemorySize,
    /// Bound of the decoded Parquet footers (metadata and page indexes) the node keeps for its
    /// scans, shared by all queries; 0 reads every footer again for each query.
    #[arg(long, env = "APIARY_METADATA_CACHE_SIZE", default_value = "32MiB")]
    pub metadata_cache_size: MemorySize,
    /// Shortest retention `VACUUM … RETAIN n HOURS` may ask for. Below Delta's week, a VACUUM
    /// can delete cells that a running reader or a writer about to commit still needs.
    #[arg(
        long,
        env = "APIARY_VACUUM_MIN_RETENTION_HOURS",
        default_value_t = 168.0
    )]
    pub vacuum_min_retention_hours: f64,
    /// New frames get a Delta checkpoint every this many commits (`delta.checkpointInterval`),
    /// so reading a frame's state replays at most that many commits.
    #[arg(long, env = "APIARY_CHECKPOINT_INTERVAL", default_value_t = 100)]
    pub checkpoint_interval: u64,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Bounds on what one request may ask; beyond them it is refused with INVALID_ARGUMENT.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Longest SQL text accepted.
    #[arg(long, env = "APIARY_MAX_SQL_BYTES", default_value = "1MiB")]
    pub max_sql_bytes: MemorySize,
    /// Most tokens (words, literals, operators; not whitespace) in one SQL text.
    #[arg(long, env = "APIARY_MAX_SQL_TOKENS", default_value_t = 100_000)]
    pub max_sql_tokens: usize,
    /// Deepest nesting of expressions and subqueries in one statement (a chain of `OR` or `+`
    /// is one level per term). Planning time grows faster than the depth.
    #[arg(long, env = "APIARY_MAX_SQL_DEPTH", default_value_t = 2_500)]
    pub max_sql_depth: usize,
    /// Most relations one statement reads: tables, subqueries and functions in `FROM` and
    /// `JOIN`, and the terms of `UNION`, `INTERSECT` and `EXCEPT`. Planning time grows faster
    /// than their number, and no deadline interrupts it.
    #[arg(long, env = "APIARY_MAX_SQL_RELATIONS", default_value_t = 256)]
    pub max_sql_relations: usize,
    /// Most parameter rows one execution of a prepared statement binds.
    #[arg(long, env = "APIARY_MAX_PARAM_ROWS", default_value_t = 10_000)]
    pub max_param_rows: usize,
    /// Most columns a frame may have.
    #[arg(long, env = "APIARY_MAX_COLUMNS", default_value_t = 4_096)]
    pub max_columns: usize,
    /// Most endpoints one CancelFlightInfo may name.
    #[arg(long, env = "APIARY_MAX_CANCEL_ENDPOINTS", default_value_t = 64)]
    pub max_cancel_endpoints: usize,
}

/// Fault injection for Apiary's own failure tests. Hidden; unset in production. Each is a flag
/// (and an `APIARY_FAULT_*` variable, as every flag has), read once into typed config, so no
/// production code path reads the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct FaultArgs {
    /// Shift the wall clock this node writes into heartbeats by this many seconds.
    #[arg(
        long = "fault-clock-skew-secs",
        env = "APIARY_FAULT_CLOCK_SKEW_SECS",
        hide = true,
        allow_hyphen_values = true
    )]
    pub clock_skew_secs: Option<i64>,
    /// Make every fragment this node runs take this many milliseconds longer.
    #[arg(
        long = "fault-fragment-delay-ms",
        env = "APIARY_FAULT_FRAGMENT_DELAY_MS",
        hide = true
    )]
    pub fragment_delay_ms: Option<u64>,
    /// Sleep this many milliseconds between writing cells and committing them.
    #[arg(
        long = "fault-pause-before-commit-ms",
        env = "APIARY_FAULT_PAUSE_BEFORE_COMMIT_MS",
        hide = true
    )]
    pub pause_before_commit_ms: Option<u64>,
}

/// The Flight SQL endpoint.
#[derive(Debug, Clone, Args)]
pub struct FlightArgs {
    /// Address to listen on.
    #[arg(long, env = "APIARY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// A user allowed to connect, as `name:argon2-hash[:role]` (see `apiary hash-password`);
    /// role `admin`, `writer` (the default) or `reader`. Repeat for several users; APIARY_USERS
    /// separates them with `;`. Any user turns authentication on.
    #[arg(
        long = "user",
        env = "APIARY_USERS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub users: Vec<String>,
    /// Key that signs tokens, tickets and the objects nodes exchange; every node of a swarm
    /// must share it (16+ characters). Default: with users, `--token-secret-file`; without
    /// users, a random key created once in the storage root (`_apiary/secret`).
    #[arg(long, env = "APIARY_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// A file holding the key (mode 0600, outside the storage root). With users and no
    /// `--token-secret`, `~/.config/apiary/token.key` is used, created if missing.
    #[arg(long, env = "APIARY_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,
    /// How long a login lasts at most, however often its token is renewed by use.
    #[arg(long, env = "APIARY_TOKEN_MAX_LIFETIME", default_value = "7d", value_parser = parse_duration)]
    pub token_max_lifetime: Duration,
    /// How long a bearer token stays valid without being used.
    #[arg(long, env = "APIARY_TOKEN_TTL", default_value = "12h", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// How long a ticket or prepared-statement handle can be redeemed.
    #[arg(long, env = "APIARY_TICKET_TTL", default_value = "1h", value_parser = parse_duration)]
    pub ticket_ttl: Duration,
    /// Serve without authentication on a non-loopback address.
    #[arg(long, env = "APIARY_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "APIARY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "APIARY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mTLS).
    #[arg(long, env = "APIARY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// The Flight URL other nodes and clients should use to reach this node (heartbeats).
    /// Default: derived from the address the server listens on.
    #[arg(long, env = "APIARY_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Serve the status page, Prometheus `/metrics` and `/healthz` over HTTP on this address.
    #[arg(long, env = "APIARY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Allow `--metrics-listen` on a non-loopback address (the status page shows running SQL).
    #[arg(long, env = "APIARY_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Largest gRPC message accepted or sent (one ingest batch must fit).
    #[arg(long, env = "APIARY_MAX_MESSAGE_SIZE", default_value = "256MiB")]
    pub max_message_size: MemorySize,
    /// Calls handled at once by the whole node; beyond it a call is refused at once with
    /// RESOURCE_EXHAUSTED (clients retry) instead of queueing without bound. A streaming DoGet counts
    /// only until its first message.
    #[arg(long, env = "APIARY_MAX_CALLS", default_value_t = 512)]
    pub max_calls: usize,
    /// Client connections open at once; one more is closed as soon as it is accepted (clients
    /// see UNAVAILABLE and retry). Each holds a file descriptor, so keep this well under the
    /// process's open-file limit (`ulimit -n`; systemd's `LimitNOFILE`).
    #[arg(long, env = "APIARY_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// How long a new connection has to finish its TLS handshake and start HTTP/2; one that
    /// has not is closed, so silent sockets do not hold connection slots. `0s`: no bound.
    #[arg(long, env = "APIARY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Calls handled at once for one client connection (HTTP/2 streams).
    #[arg(long, env = "APIARY_MAX_CALLS_PER_CONNECTION", default_value_t = 64)]
    pub max_calls_per_connection: usize,
    /// Serve users' passwords and tokens without TLS on a non-loopback address (a proxy in front
    /// terminates TLS, or the network is private).
    #[arg(long, env = "APIARY_INSECURE_AUTH")]
    pub insecure_auth: bool,
    /// How long a client connection may stay silent before the server pings it (HTTP/2
    /// PING); a client that does not answer within `--keepalive-timeout` is disconnected and
    /// its calls end as if cancelled, so a client that vanished (a network partition, a
    /// suspended laptop) does not hold a bee, memory or a table it was creating. Clients answer
    /// pings on their own, however long a query runs. `0s` sends no pings.
    #[arg(long, env = "APIARY_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub keepalive: Duration,
    /// How long the server waits for a client's answer to its ping (see `--keepalive`).
    #[arg(long, env = "APIARY_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// On SIGTERM or Ctrl-C: stop taking calls, hand back running fragments, leave the swarm,
    /// and give calls in flight this long to finish; statements still running then are cut
    /// short as a cancel would (a creation gives its name back) before the process exits.
    #[arg(long, env = "APIARY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `apiary=debug,info`.
    #[arg(
        long = "log",
        env = "APIARY_LOG",
        default_value = "info,buoyant_kernel=warn,deltalake_core=warn"
    )]
    pub filter: String,
    /// `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "APIARY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A memory amount: bytes, or a share of physical memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemorySize {
    Bytes(u64),
    Percent(f64),
}

impl NodeArgs {
    /// `--max-spill` in bytes (a size, never a percentage).
    pub fn spill_limit(&self) -> anyhow::Result<u64> {
        self.max_spill.size("--max-spill")
    }
}

impl LimitArgs {
    /// `--max-sql-bytes` in bytes (a size, never a percentage).
    pub fn sql_bytes(&self) -> anyhow::Result<usize> {
        let bytes = self.max_sql_bytes.size("--max-sql-bytes")?;
        Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
    }
}

impl MemorySize {
    /// The bytes of `flag`, which takes a size and never a percentage.
    pub fn size(&self, flag: &str) -> anyhow::Result<u64> {
        match *self {
            MemorySize::Bytes(b) => Ok(b),
            MemorySize::Percent(_) => anyhow::bail!("{flag} takes a size, not a percentage"),
        }
    }

    /// Resolve against the machine's physical memory.
    pub fn resolve(&self, physical: u64) -> u64 {
        match *self {
            MemorySize::Bytes(b) => b,
            MemorySize::Percent(p) => ((physical as f64) * p / 100.0) as u64,
        }
    }
}

impl FromStr for MemorySize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad percentage {s:?}"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("percentage must be in (0, 100], got {s:?}"));
            }
            return Ok(MemorySize::Percent(p));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "t" | "tb" => 1000u64.pow(4),
            "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        let bytes = num * mult as f64;
        if bytes.is_nan() || bytes < 0.0 {
            return Err(format!("size must not be negative, got {s:?}"));
        }
        Ok(MemorySize::Bytes(bytes as u64))
    }
}

/// `500ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit.trim() {
        "ms" => num / 1000.0,
        "" | "s" => num,
        "m" | "min" => num * 60.0,
        "h" => num * 3600.0,
        "d" => num * 86400.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    if secs.is_nan() || secs < 0.0 || !secs.is_finite() {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse the command line, filling flags that were left at their defaults from `--config`.
pub fn parse_args<I, T>(argv: I) -> anyhow::Result<Cli>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let Some(path) = cli.config.clone() else {
        return Ok(cli);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing config file {}", path.display()))?;
    let Some((sub_name, sub)) = matches.subcommand() else {
        return Ok(cli);
    };
    let command = Cli::command();
    let Some(this) = command.find_subcommand(sub_name) else {
        return Ok(cli);
    };
    // A key names a flag by its long name (`user`, `external-root`) or by the field behind it
    // (`users`); `-` and `_` are the same. Positional arguments cannot come from the file.
    let flag_of = |c: &clap::Command, key: &str| {
        let key = key.replace('_', "-");
        c.get_arguments()
            .find(|a| {
                a.get_long().is_some_and(|l| l == key)
                    || a.get_id().as_str().replace('_', "-") == key
            })
            .and_then(|a| a.get_long().map(|l| (a.clone(), l.to_string())))
    };
    let mut injected: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        if key == "config" {
            continue;
        }
        let Some((arg, long)) = flag_of(this, key) else {
            // Keys for another subcommand (e.g. `listen` while running `sql`) are fine; unknown
            // keys everywhere are a typo.
            if !command.get_subcommands().any(|c| flag_of(c, key).is_some()) {
                bail!("{}: unknown config key {key:?}", path.display());
            }
            continue;
        };
        match sub.value_source(arg.get_id().as_str()) {
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable) => continue,
            _ => {}
        }
        let flag = format!("--{long}");
        let values: Vec<String> = match value {
            toml::Value::Array(items) => items
                .iter()
                .map(toml_scalar)
                .collect::<anyhow::Result<_>>()?,
            // A switch (`--metrics-public`) is given or not; a flag that takes true or false
            // (`--share-results false`) gets the value.
            toml::Value::Boolean(b) if !arg.get_action().takes_values() => {
                if *b {
                    injected.push(flag.into());
                }
                continue;
            }
            other => vec![toml_scalar(other)?],
        };
        for v in values {
            injected.push(format!("{flag}={v}").into());
        }
    }
    if injected.is_empty() {
        return Ok(cli);
    }
    // Insert the file's flags right after the subcommand name, before the user's own arguments.
    let pos = argv
        .iter()
        .position(|a| a.to_str() == Some(sub_name))
        .map(|p| p + 1)
        .unwrap_or(argv.len());
    let mut full = argv[..pos].to_vec();
    full.extend(injected);
    full.extend_from_slice(&argv[pos..]);
    Ok(Cli::try_parse_from(full)?)
}

fn toml_scalar(v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("unsupported config value {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(
            "1GiB".parse::<MemorySize>().unwrap(),
            MemorySize::Bytes(1 << 30)
        );
        assert_eq!(
            "512MiB".parse::<MemorySize>().unwrap(),
            MemorySize::Bytes(512 << 20)
        );
        assert_eq!(
            "60%".parse::<MemorySize>().unwrap(),
            MemorySize::Percent(60.0)
        );
        assert_eq!(
            "1000".parse::<MemorySize>().unwrap(),
            MemorySize::Bytes(1000)
        );
        assert!("0%".parse::<MemorySize>().is_err());
        assert!("12 parsecs".parse::<MemorySize>().is_err());
        assert_eq!(MemorySize::Percent(50.0).resolve(1000), 500);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn config_file_fills_defaults_but_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiary.toml");
        std::fs::write(
            &path,
            "storage = \"/from/file\"\nformat = \"csv\"\nlisten = \"0.0.0.0:1\"\n",
        )
        .unwrap();
        let cli = parse_args([
            "apiary",
            "sql",
            "--config",
            path.to_str().unwrap(),
            "--format",
            "json",
            "select 1",
        ])
        .unwrap();
        let Command::Sql(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.storage.storage, "/from/file");
        assert_eq!(args.format, "json");

        // Keys by long name or field name; switches and true/false flags both take booleans.
        std::fs::write(
            &path,
            "user = [\"a:h1\", \"b:h2\"]\nexternal-root = [\"/data\"]\n\
             share_results = false\nmetrics-public = true\nallow_anonymous = false\n",
        )
        .unwrap();
        let cli = parse_args(["apiary", "serve", "--config", path.to_str().unwrap()]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.flight.users, ["a:h1", "b:h2"]);
        assert_eq!(args.storage.external_roots, ["/data"]);
        assert!(!args.node.share_results);
        assert!(args.flight.metrics_public && !args.flight.allow_anonymous);
        std::fs::write(&path, "users = \"a:h1\"\nshare-results = true\n").unwrap();
        let cli = parse_args(["apiary", "serve", "--config", path.to_str().unwrap()]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.flight.users, ["a:h1"]);
        assert!(args.node.share_results);

        std::fs::write(&path, "nonsense_key = 1\n").unwrap();
        assert!(
            parse_args([
                "apiary",
                "sql",
                "--config",
                path.to_str().unwrap(),
                "select 1"
            ])
            .is_err()
        );
    }
}
