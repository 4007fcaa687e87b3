//! Apiary server: the `apiary` binary's configuration, the Flight SQL service, auth and sessions.
//!
//! ```text
//!  apiary serve ─▶ config ─▶ assemble ─▶ runtime::Node ─▶ Flight SQL service (tonic, over
//!                                           │              Arc<dyn QueryService>)
//!                                           └────────────▶ /metrics, /healthz (StatusSource)
//!  apiary sql   ─▶ config ─▶ assemble ─▶ runtime::Engine ─▶ stdout
//! ```
//!
//! | module         | owns                                                          |
//! |----------------|---------------------------------------------------------------|
//! | [`config`]     | flags, `APIARY_*` variables and the TOML config file          |
//! | [`assemble`]   | building storage, lakehouse, engine and node from config      |
//! | [`cli`]        | the one-shot `apiary sql` command                              |
//! | [`serve`]      | the server process: listener, TLS, limits, shutdown            |
//! | [`flight_sql`] | the Flight SQL service (queries, updates, ingest, metadata, actions) |
//! | [`auth`]       | Basic/Bearer authentication, signed tokens, client-carried sessions |
//! | [`metrics`]    | the HTTP listener: `/metrics`, `/healthz`, the status page    |
//! | [`status_page`] | the status page (`/`) and its `/status.json`                 |
//! | [`error`]      | the server's error type and its one mapping to gRPC statuses  |

mod accept;
pub mod assemble;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod flight_sql;
pub mod limit;
pub mod metrics;
pub mod serve;
pub mod status_page;
