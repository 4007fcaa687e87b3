//! `SIMILAR TO`, the SQL standard's pattern match, as PostgreSQL answers it.
//!
//! DataFusion 55 ran `s SIMILAR TO p` as the regular expression match `s ~ p`: unanchored, with
//! `p` read as a regular expression, so `'abc' SIMILAR TO 'b'` and `'abc' SIMILAR TO 'a.c'`
//! were true, `'abc' SIMILAR TO 'a%'` false, and a pattern with `ESCAPE` was an execution
//! error. [`as_regex_match`] writes it as the match of the regular expression the
//! pattern means, as PostgreSQL's `similar_to_escape` translates it: the whole string must
//! match, `%` is any string and `_` any character, `.` `^` `$` are themselves, `|` `*` `+` `?`
//! `{m,n}` `( )` and `[ ]` are as in a regular expression, and the escape character (`\` unless
//! `ESCAPE` names another) makes the next character itself. [`SimilarToRegex`] translates each
//! pattern; DataFusion folds it once when the pattern is a constant.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::{Like, ScalarFunction};
use datafusion::logical_expr::{
    ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// `SIMILAR TO` as the regular expression match it means: the string matched, the operator and
/// the regular expression; see the module's documentation.
pub(super) fn as_regex_match(like: Like) -> (Box<Expr>, Operator, Expr) {
    let Like {
        negated,
        expr,
        pattern,
        escape_char,
        case_insensitive,
    } = like;
    let op = match (negated, case_insensitive) {
        (false, false) => Operator::RegexMatch,
        (false, true) => Operator::RegexIMatch,
        (true, false) => Operator::RegexNotMatch,
        (true, true) => Operator::RegexNotIMatch,
    };
    let escape = Expr::Literal(
        ScalarValue::Utf8(Some(escape_char.unwrap_or('\\').to_string())),
        None,
    );
    let regex = ScalarFunction::new_udf(function(), vec![*pattern, escape]);
    (expr, op, Expr::ScalarFunction(regex))
}

/// [`SimilarToRegex`]'s name, by which it travels to other nodes.
const NAME: &str = "similar_to_regex";

fn function() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(SimilarToRegex {
        signature: Signature::user_defined(Volatility::Immutable),
    }))
}

/// The function a fragment names, to decode it on another node.
pub(crate) fn function_named(name: &str) -> Option<Arc<ScalarUDF>> {
    (name == NAME).then(function)
}

/// The regular expression a `SIMILAR TO` pattern means, given the pattern and its escape
/// character; in the pattern's string type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SimilarToRegex {
    signature: Signature,
}

impl ScalarUDFImpl for SimilarToRegex {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [p, _] if is_string(p) => Ok(vec![p.clone(), DataType::Utf8]),
            [DataType::Null, _] => Ok(vec![DataType::Utf8, DataType::Utf8]),
            _ => plan_err!("{NAME}() takes a pattern and its escape character"),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types {
            [p, _] if is_string(p) => Ok(p.clone()),
            _ => Ok(DataType::Utf8),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [pattern, escape] = <[ColumnarValue; 2]>::try_from(args.args)
            .map_err(|_| datafusion::error::DataFusionError::Internal(format!("{NAME}() arity")))?;
        let escape = match escape {
            ColumnarValue::Scalar(s) => match s.try_as_str() {
                Some(Some(e)) => {
                    let mut chars = e.chars();
                    match (chars.next(), chars.next()) {
                        (None, _) => None,
                        (Some(c), None) => Some(c),
                        _ => {
                            return exec_err!(
                                "SIMILAR TO: the escape string must be one character"
                            );
                        }
                    }
                }
                // A NULL escape: the match is NULL, as for a NULL pattern.
                _ => {
                    let null = ScalarValue::try_from(args.return_field.data_type())?;
                    return Ok(ColumnarValue::Scalar(null));
                }
            },
            ColumnarValue::Array(_) => {
                return exec_err!("SIMILAR TO: the escape character must be a constant");
            }
        };
        let out_type = args.return_field.data_type().clone();
        // A constant pattern is translated once, not once per row.
        let rows = match &pattern {
            ColumnarValue::Scalar(_) => 1,
            ColumnarValue::Array(a) => a.len(),
        };
        let patterns: ArrayRef = pattern.to_array(rows)?;
        let text = arrow::compute::cast(&patterns, &DataType::Utf8)?;
        let text = text.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(format!("{NAME}(): not text"))
        })?;
        let regexes = text
            .iter()
            .map(|p| p.map(|p| regex_of(p, escape)).transpose())
            .collect::<DfResult<StringArray>>()?;
        let regexes = arrow::compute::cast(&regexes, &out_type)?;
        Ok(match pattern {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&regexes, 0)?)
            }
            ColumnarValue::Array(_) => ColumnarValue::Array(regexes),
        })
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The regular expression the `SIMILAR TO` pattern `pattern` means, with `escape` as its escape
/// character (PostgreSQL's `similar_to_escape`). `.` matches a newline, as in PostgreSQL.
fn regex_of(pattern: &str, escape: Option<char>) -> DfResult<String> {
    let mut out = String::with_capacity(pattern.len() * 2 + 12);
    out.push_str("(?s)^(?:");
    let mut after_escape = false;
    // Inside `[…]`, and where: 1 just after `[`, 2 just after `[^`, 3 later. A `]` at 1 or 2
    // is a member of the class, not its end.
    let mut class: Option<u8> = None;
    let mut separators = 0;
    for c in pattern.chars() {
        if after_escape {
            after_escape = false;
            if c == '"' && class.is_none() {
                // `\"` … `\"` marks the part `substring(… SIMILAR …)` returns; for a match
                // it only groups, as PostgreSQL writes it.
                separators += 1;
                match separators {
                    1 => out.push_str("){1,1}?("),
                    2 => out.push_str("){1,1}(?:"),
                    _ => {
                        return exec_err!(
                            "SIMILAR TO: a pattern has at most two escape-double-quote separators"
                        );
                    }
                }
            } else {
                out.push('\\');
                out.push(c);
            }
            if let Some(at) = class.as_mut() {
                *at = 3;
            }
        } else if Some(c) == escape {
            after_escape = true;
        } else if let Some(at) = class {
            if c == '\\' {
                out.push('\\');
            }
            out.push(c);
            class = match (c, at) {
                (']', 3) => None,
                ('^', 1) => Some(2),
                _ => Some(3),
            };
        } else {
            match c {
                '[' => {
                    out.push('[');
                    class = Some(1);
                }
                '%' => out.push_str(".*"),
                '_' => out.push('.'),
                '(' => out.push_str("(?:"),
                '\\' | '.' | '^' | '$' => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
    }
    if after_escape {
        return exec_err!("SIMILAR TO: the pattern ends with its escape character");
    }
    out.push_str(")$");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(s: &str, pattern: &str) -> bool {
        let re = regex::Regex::new(&regex_of(pattern, Some('\\')).unwrap()).unwrap();
        re.is_match(s)
    }

    #[test]
    fn patterns_mean_what_postgresql_says() {
        // PostgreSQL's own examples, and the anchoring DataFusion lacked.
        assert!(matches("abc", "abc"));
        assert!(matches("abc", "a%"));
        assert!(matches("abc", "_b_"));
        assert!(!matches("abc", "b"));
        assert!(matches("abc", "%(b|d)%"));
        assert!(!matches("abc", "(b|c)%"));
        assert!(matches("-abc-", "%[a-z]{3}%"));
        assert!(!matches("abc", "a.c"));
        assert!(matches("a.c", "a.c"));
        assert!(matches("a%c", "a\\%c"));
        assert!(!matches("abc", "a\\%c"));
        assert!(matches("$^", "$^"));
        assert!(matches("a\nb", "a_b"));
        assert!(matches("]", "[]a]"));
        assert!(matches("x", "[^]a]"));
        assert!(!matches("]", "[^]a]"));
        assert!(matches("abc", "a\\\"b\\\"c"));
        assert!(regex_of("a\\\"b\\\"c\\\"", Some('\\')).is_err());
        assert!(regex_of("a\\", Some('\\')).is_err());
        // Another escape character; a backslash is then itself.
        let re = regex::Regex::new(&regex_of("a#%\\", Some('#')).unwrap()).unwrap();
        assert!(re.is_match("a%\\"));
        assert!(!re.is_match("ab\\"));
    }
}
