//! Declared string lengths: `VARCHAR(n)` and `CHAR(n)` columns.
//!
//! Arrow has no string type with a length, so a frame keeps a string column's declared type in
//! the column's Delta metadata, under the key Spark and Delta Lake write ([`DECLARED_TYPE_KEY`],
//! `"varchar(10)"`, `"char(3)"`): a frame that Spark created with a `VARCHAR(10)` column is
//! checked here, and Spark checks ours.
//!
//! Every value written to such a column is checked as PostgreSQL checks an assignment
//! ([`fit`]): a value of at most n characters is written as it is; a longer one whose excess
//! characters are all spaces is cut to n; any other is refused with PostgreSQL's words ("value
//! too long for type character varying(10)"). Values are not padded: a `CHAR(n)` column holds
//! what was written, so `c = 'ab'` finds what was written as `'ab'`, as it does in PostgreSQL.
//! Queries see plain strings; the declared type shows in `DESCRIBE` and in the column metadata
//! Flight SQL clients read.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, Field};

use crate::error::{Error, Result};

/// Delta column metadata key of a string column's declared type (Spark's).
pub const DECLARED_TYPE_KEY: &str = "__CHAR_VARCHAR_TYPE_STRING";

/// The longest length a column may declare (PostgreSQL's).
pub const MAX_DECLARED_LENGTH: u32 = 10_485_760;

/// A string column's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Declared {
    /// `VARCHAR(n)`, `CHARACTER VARYING(n)`.
    Varchar(u32),
    /// `CHAR(n)`, `CHARACTER(n)`.
    Char(u32),
}

impl Declared {
    /// `kind(n)` for a valid length n (1 to [`MAX_DECLARED_LENGTH`]), else an error that says
    /// what a length may be.
    pub fn new(char: bool, length: u64) -> Result<Declared> {
        let kind = if char { "CHAR" } else { "VARCHAR" };
        match u32::try_from(length) {
            Ok(n @ 1..=MAX_DECLARED_LENGTH) if char => Ok(Declared::Char(n)),
            Ok(n @ 1..=MAX_DECLARED_LENGTH) => Ok(Declared::Varchar(n)),
            _ => Err(Error::InvalidArgument(format!(
                "{kind}({length}): the length must be 1 to {MAX_DECLARED_LENGTH}"
            ))),
        }
    }

    /// The declared type in `text` as the metadata holds it (`varchar(10)`, `char(3)`, in any
    /// case), if it is one.
    pub fn parse(text: &str) -> Option<Declared> {
        if text.len() > 32 {
            return None;
        }
        let text = text.trim().to_ascii_lowercase();
        let (char, rest) = match (text.strip_prefix("varchar("), text.strip_prefix("char(")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return None,
        };
        let digits = rest.strip_suffix(')')?.trim();
        Declared::new(char, digits.parse().ok()?).ok()
    }

    /// The declared type of `field`, if it is a string column whose metadata holds one.
    pub fn of(field: &Field) -> Option<Declared> {
        if !is_string(field.data_type()) {
            return None;
        }
        Declared::parse(field.metadata().get(DECLARED_TYPE_KEY)?)
    }

    /// Most characters a value may hold.
    pub fn length(self) -> u32 {
        match self {
            Declared::Varchar(n) | Declared::Char(n) => n,
        }
    }

    /// The text the metadata holds: `varchar(10)`.
    pub fn text(self) -> String {
        match self {
            Declared::Varchar(n) => format!("varchar({n})"),
            Declared::Char(n) => format!("char({n})"),
        }
    }

    /// The SQL name `DESCRIBE` and Flight SQL clients see: `VARCHAR(10)`.
    pub fn sql_name(self) -> String {
        self.text().to_ascii_uppercase()
    }

    /// The name PostgreSQL's messages give the type: `character varying(10)`.
    fn postgres_name(self) -> String {
        match self {
            Declared::Varchar(n) => format!("character varying({n})"),
            Declared::Char(n) => format!("character({n})"),
        }
    }

    /// `field` declared as this type.
    pub fn on(self, field: Field) -> Field {
        let mut metadata = field.metadata().clone();
        metadata.insert(DECLARED_TYPE_KEY.to_string(), self.text());
        field.with_metadata(metadata)
    }
}

pub(crate) fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// `value` cut to `declared`'s length, as PostgreSQL assigns it: `None` when it fits, the first
/// n characters when the rest are spaces, an error otherwise.
fn fitted<'a>(column: &str, declared: Declared, value: &'a str) -> Result<Option<&'a str>> {
    let n = declared.length() as usize;
    // At most n bytes is at most n characters; most values end here.
    if value.len() <= n {
        return Ok(None);
    }
    let Some((cut, _)) = value.char_indices().nth(n) else {
        return Ok(None);
    };
    if value[cut..].bytes().all(|b| b == b' ') {
        return Ok(Some(&value[..cut]));
    }
    Err(Error::InvalidArgument(format!(
        "column {column}: value too long for type {}",
        declared.postgres_name()
    )))
}

/// The values of `array` (of a column declared `declared`) as the column takes them: `None`
/// when every value fits as it is, the array with the values cut to length when some end in
/// excess spaces, an error naming the column when one is too long.
pub(crate) fn fit(column: &str, declared: Declared, array: &ArrayRef) -> Result<Option<ArrayRef>> {
    let values: Box<dyn Iterator<Item = Option<&str>>> = match array.data_type() {
        DataType::Utf8 => Box::new(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(array.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(array.as_string_view().iter()),
        _ => return Ok(None),
    };
    let mut cut: Option<Vec<Option<&str>>> = None;
    for (i, value) in values.enumerate() {
        let shorter = match value {
            Some(v) => fitted(column, declared, v)?,
            None => None,
        };
        match (shorter, cut.as_mut()) {
            (Some(s), None) => {
                // The first value cut: the values before it are kept as they are.
                let mut all = Vec::with_capacity(array.len());
                all.extend((0..i).map(|j| string_at(array, j)));
                all.push(Some(s));
                cut = Some(all);
            }
            (Some(s), Some(all)) => all.push(Some(s)),
            (None, Some(all)) => all.push(value),
            (None, None) => {}
        }
    }
    let Some(all) = cut else {
        return Ok(None);
    };
    let plain: ArrayRef = Arc::new(StringArray::from(all));
    Ok(Some(arrow::compute::cast(&plain, array.data_type())?))
}

/// The string at `i` of a string array.
fn string_at(array: &ArrayRef, i: usize) -> Option<&str> {
    if array.is_null(i) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i),
        _ => array.as_string_view().value(i),
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::StringViewArray;

    use super::*;

    #[test]
    fn declared_types_read_back_as_written() {
        for (text, declared) in [
            ("varchar(10)", Some(Declared::Varchar(10))),
            ("CHAR(3)", Some(Declared::Char(3))),
            (" varchar( 7 ) ", Some(Declared::Varchar(7))),
            ("varchar(0)", None),
            ("varchar(-1)", None),
            ("varchar(10485761)", None),
            ("varchar(99999999999999999999)", None),
            ("varchar", None),
            ("string", None),
            ("varchar(10", None),
        ] {
            assert_eq!(Declared::parse(text), declared, "{text}");
        }
        assert_eq!(Declared::Char(3).text(), "char(3)");
        let f = Declared::Varchar(4).on(Field::new("a", DataType::Utf8, true));
        assert_eq!(Declared::of(&f), Some(Declared::Varchar(4)));
        // Only a string column has a length.
        let n = Declared::Varchar(4).on(Field::new("a", DataType::Int64, true));
        assert_eq!(Declared::of(&n), None);
    }

    #[test]
    fn values_fit_as_postgres_assigns_them() {
        let d = Declared::Varchar(3);
        let array: ArrayRef = Arc::new(StringArray::from(vec![
            Some("abc"),
            None,
            Some("été"),
            Some("ab    "),
        ]));
        let cut = fit("c", d, &array).unwrap().expect("cut");
        let cut = cut.as_string::<i32>();
        assert_eq!(
            cut.iter().collect::<Vec<_>>(),
            vec![Some("abc"), None, Some("été"), Some("ab ")]
        );
        let fits: ArrayRef = Arc::new(StringViewArray::from(vec!["a", "été"]));
        assert!(fit("c", d, &fits).unwrap().is_none());
        let long: ArrayRef = Arc::new(StringViewArray::from(vec!["abcd"]));
        let e = fit("c", d, &long).unwrap_err().to_string();
        assert!(
            e.contains("value too long for type character varying(3)"),
            "{e}"
        );
        let inner_space: ArrayRef = Arc::new(StringArray::from(vec!["ab  x"]));
        assert!(fit("c", d, &inner_space).is_err());
    }
}
