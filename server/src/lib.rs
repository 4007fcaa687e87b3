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

pub mod cli;
pub mod config;
pub mod node;
