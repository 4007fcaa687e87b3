//! Empty: this crate exists to fetch its dependency's test files.
