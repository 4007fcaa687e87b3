//! The engine through its public API: read and write paths, and the SQL logic tests in
//! `tests/slt/`. One test binary with a module per area.

mod read_write;
mod slt;
