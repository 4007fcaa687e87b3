//! Apiary server: the `apiary` binary's configuration, the Flight SQL service, auth and sessions.
//!
//! ```text
//!  apiary serve ─▶ config ─▶ node::build ─▶ Engine (runtime) ─▶ Flight SQL service (tonic)
//!  apiary sql   ─▶ config ─▶ node::build ─▶ Engine ─▶ stdout
//! ```
//!
//! | module     | owns                                                   |
//! |------------|--------------------------------------------------------|
//! | [`config`] | flags, `APIARY_*` variables and the TOML config file   |
//! | [`node`]   | assembling storage, lakehouse and engine from config   |
//! | [`cli`]    | the one-shot `apiary sql` command                       |
//! | [`serve`]  | the server process: listener, TLS, limits, shutdown     |
//! | [`flight`] | the Flight SQL service (queries, updates, ingest, metadata, actions) |
//! | [`auth`]   | Basic/Bearer authentication, signed tokens, client-carried sessions |
//! | [`metadata`] | SqlInfo, XDBC types, key schemas, column metadata     |
//! | [`metrics`] | Prometheus `/metrics` and `/healthz`                  |
//! | [`status`] | the single error → gRPC status mapping                  |

pub mod auth;
pub mod cli;
pub mod config;
pub mod flight;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod serve;
pub mod status;
