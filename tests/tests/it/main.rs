//! End-to-end tests: real clients against real `apiary` processes, real S3-compatible servers,
//! real storage. One test binary (one link) with a module per area.

mod distributed;
mod flight_sql;
mod jdbc_like;
mod node_runtime;
mod operate;
mod security;
mod sql_parity;
mod storage_conformance;
mod writers;
