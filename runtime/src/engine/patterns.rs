//! The patterns of the matching operators, bounded as the regexp functions' are.
//!
//! `~`, `~*`, `!~`, `!~*`, `LIKE`, `ILIKE`, `SIMILAR TO` and the `~~` operators compile their
//! pattern into a regular expression (`LIKE` does unless it is a plain prefix, suffix or
//! substring), with work that grows faster than its length and that no deadline interrupts:
//! the 5 MB pattern of `regexp_like('a', repeat('(a|b)', 1000000))` held a core for a minute
//! and took a gigabyte before the regex engine refused it as too big, until the functions were
//! bounded ([`MAX_PATTERN_BYTES`]), and `'a' ~ repeat('(a|b)', 1000000)` compiled the same
//! pattern. [`BoundedPatterns`], an analyzer rule, gives the operators the same bound: a
//! literal pattern over it is refused while the statement plans; any other pattern (built by a
//! function, read from a column, bound to a parameter) is read through [`WithinBound`], which
//! passes its value on and refuses one over the bound. DataFusion computes it while it folds
//! a constant pattern, which then reaches the operator as the literal it was before (and its
//! simplifications of `~` into `LIKE` or `=` still apply); a pattern read from a column is
//! checked batch by batch, before the operator compiles it.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Result as DfResult, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::{Cast, Like, ScalarFunction, TryCast};
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use super::bounded::{MAX_PATTERN_BYTES, literal_bytes, longest, pattern_too_long};
use super::checked::{any_expression, rewrite_expressions};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct BoundedPatterns;

impl AnalyzerRule for BoundedPatterns {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        // Named as before: the plan above reads each expression by its name.
        rewrite_expressions(
            plan,
            |node| {
                any_expression(node, |e| {
                    matches!(e, Expr::Like(_) | Expr::SimilarTo(_))
                        || matches!(e, Expr::BinaryExpr(b) if matching(b.op))
                })
            },
            |e, _| bounded(e),
        )
    }

    fn name(&self) -> &str {
        "apiary_bounded_patterns"
    }
}

/// `e` with its pattern bounded, when it is a matching operator.
fn bounded(e: Expr) -> DfResult<Transformed<Expr>> {
    match e {
        Expr::Like(mut like) => {
            let operator = operator(&like);
            let (pattern, changed) = within_bound(*like.pattern, operator)?;
            like.pattern = Box::new(pattern);
            Ok(Transformed::new_transformed(Expr::Like(like), changed))
        }
        // Written as the regular expression match it means, whose pattern is then bounded.
        Expr::SimilarTo(like) => {
            let (left, op, regex) = super::similar_to::as_regex_match(like);
            let (right, _) = within_bound(regex, "SIMILAR TO")?;
            let e = Expr::BinaryExpr(BinaryExpr::new(left, op, Box::new(right)));
            Ok(Transformed::yes(e))
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if matching(op) => {
            let (right, changed) = within_bound(*right, op_text(op))?;
            let e = Expr::BinaryExpr(BinaryExpr::new(left, op, Box::new(right)));
            Ok(Transformed::new_transformed(e, changed))
        }
        e => Ok(Transformed::no(e)),
    }
}

fn operator(like: &Like) -> &'static str {
    match like.case_insensitive {
        true => "ILIKE",
        false => "LIKE",
    }
}

fn matching(op: Operator) -> bool {
    matches!(
        op,
        Operator::RegexMatch
            | Operator::RegexIMatch
            | Operator::RegexNotMatch
            | Operator::RegexNotIMatch
            | Operator::LikeMatch
            | Operator::ILikeMatch
            | Operator::NotLikeMatch
            | Operator::NotILikeMatch
    )
}

fn op_text(op: Operator) -> &'static str {
    match op {
        Operator::RegexMatch => "~",
        Operator::RegexIMatch => "~*",
        Operator::RegexNotMatch => "!~",
        Operator::RegexNotIMatch => "!~*",
        Operator::LikeMatch => "~~",
        Operator::ILikeMatch => "~~*",
        Operator::NotLikeMatch => "!~~",
        _ => "!~~*",
    }
}

/// `pattern` bounded (and whether it changed): a literal is checked now, anything else is
/// read through [`WithinBound`] (once: the rule may see a plan twice).
fn within_bound(pattern: Expr, operator: &'static str) -> DfResult<(Expr, bool)> {
    // A literal, or one cast to the other side's string type.
    let literal = match &pattern {
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => expr.as_ref(),
        other => other,
    };
    match literal {
        Expr::Literal(v, _) => {
            let bytes = literal_bytes(v);
            if bytes > MAX_PATTERN_BYTES {
                return Err(pattern_too_long(operator, bytes));
            }
            Ok((pattern, false))
        }
        Expr::ScalarFunction(ScalarFunction { func, .. }) if func.name() == WITHIN_BOUND => {
            Ok((pattern, false))
        }
        _ => {
            let call = ScalarFunction::new_udf(function(operator), vec![pattern]);
            Ok((Expr::ScalarFunction(call), true))
        }
    }
}

/// [`WithinBound`]'s name, by which it travels to other nodes.
const WITHIN_BOUND: &str = "pattern_within_bound";

/// [`WithinBound`] for `operator` (named in its error).
fn function(operator: &'static str) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(WithinBound {
        operator,
        signature: Signature::any(1, Volatility::Immutable),
    }))
}

/// The function a fragment names, to decode it on another node (its error names the
/// operator less precisely there).
pub(crate) fn function_named(name: &str) -> Option<Arc<ScalarUDF>> {
    (name == WITHIN_BOUND).then(|| function("a matching operator"))
}

/// The pattern it is given, refused when longer than [`MAX_PATTERN_BYTES`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct WithinBound {
    operator: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WithinBound {
    fn name(&self) -> &str {
        WITHIN_BOUND
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types {
            [t] => Ok(t.clone()),
            _ => plan_err!("{WITHIN_BOUND}() takes one pattern"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [pattern] = <[ColumnarValue; 1]>::try_from(args.args).map_err(|_| {
            DataFusionError::Internal(format!("{WITHIN_BOUND}() takes one pattern"))
        })?;
        let bytes = longest(&pattern);
        if bytes > MAX_PATTERN_BYTES {
            return Err(pattern_too_long(self.operator, bytes));
        }
        Ok(pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn a_long_literal_pattern_is_refused_and_any_other_is_read_through_the_bound() {
        let long = "a".repeat(MAX_PATTERN_BYTES as usize + 1);
        let e = col("s").like(lit(long));
        let err = bounded(e).unwrap_err().to_string();
        assert!(
            err.contains("LIKE: a regular expression of 256 KiB"),
            "{err}"
        );

        let e = col("s").like(lit("a%b"));
        assert!(!bounded(e).unwrap().transformed);

        let e = Expr::BinaryExpr(BinaryExpr::new(
            Box::new(col("s")),
            Operator::RegexMatch,
            Box::new(col("p")),
        ));
        let once = bounded(e).unwrap();
        assert!(once.transformed);
        // Not twice.
        assert!(!bounded(once.data).unwrap().transformed);
    }
}
