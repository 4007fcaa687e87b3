//! The codec of cells' pages, chosen per node (`--cell-compression`): LZ4 by default for the
//! fastest scans, ZSTD for the smallest cells (where storage or transfer costs more than CPU),
//! Snappy for Delta readers older than Parquet's LZ4_RAW (Spark before 3.4).

use parquet::basic::{Compression, ZstdLevel};

use crate::error::{Error, Result};

/// The codec of cells' pages. Every Delta reader (Spark, DuckDB, Polars, delta-rs) reads each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellCompression {
    /// ZSTD at a level (1–22): the smallest cells.
    Zstd(i32),
    /// LZ4 (the raw block format Parquet specifies): the fastest to decode.
    Lz4,
    Snappy,
    None,
}

/// LZ4: in the TPC-H SF1 bench, cells decode fast enough that the 22 queries take 0.83–0.85 of
/// their time with ZSTD(3), for cells about a third larger (`bench/results/codecs.md`).
impl Default for CellCompression {
    fn default() -> Self {
        CellCompression::Lz4
    }
}

impl CellCompression {
    pub(crate) fn parquet(self) -> Result<Compression> {
        Ok(match self {
            CellCompression::Zstd(level) => {
                Compression::ZSTD(ZstdLevel::try_new(level).map_err(Error::Parquet)?)
            }
            CellCompression::Lz4 => Compression::LZ4_RAW,
            CellCompression::Snappy => Compression::SNAPPY,
            CellCompression::None => Compression::UNCOMPRESSED,
        })
    }
}

impl std::str::FromStr for CellCompression {
    type Err = String;

    /// `zstd`, `zstd(LEVEL)`, `lz4`, `snappy` or `none`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let level = s
            .strip_prefix("zstd(")
            .and_then(|l| l.strip_suffix(')'))
            .map(|l| l.trim().parse::<i32>());
        match (s.as_str(), level) {
            ("zstd", _) => Ok(CellCompression::Zstd(3)),
            (_, Some(Ok(l))) if (1..=22).contains(&l) => Ok(CellCompression::Zstd(l)),
            ("lz4", _) => Ok(CellCompression::Lz4),
            ("snappy", _) => Ok(CellCompression::Snappy),
            ("none", _) => Ok(CellCompression::None),
            _ => Err(format!(
                "{s:?}: expected zstd, zstd(1..22), lz4, snappy or none"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_refused() {
        let parse = |s: &str| s.parse::<CellCompression>();
        assert_eq!(parse("zstd"), Ok(CellCompression::Zstd(3)));
        assert_eq!(parse(" ZSTD(9) "), Ok(CellCompression::Zstd(9)));
        assert_eq!(parse("lz4"), Ok(CellCompression::Lz4));
        assert_eq!(parse("snappy"), Ok(CellCompression::Snappy));
        assert_eq!(parse("none"), Ok(CellCompression::None));
        for bad in ["zstd(0)", "zstd(23)", "zstd(x)", "gzip", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            CellCompression::Lz4.parquet().unwrap(),
            Compression::LZ4_RAW
        );
    }
}
