//! A string beside a date, time or timestamp reads as a value of that type.
//!
//! DataFusion's type coercion brings a string compared with (or unified with) a `TIMESTAMP` of
//! any unit to a nanosecond timestamp, whose range is 1677–2262: `valid_to =
//! '9999-12-31 23:59:59'`, the usual open end of a slowly changing dimension, failed with
//! "Overflow converting … to Nanosecond" although the column (microseconds) holds that value,
//! and `CAST('9999-12-31' AS TIMESTAMP)` is fine. PostgreSQL types such a literal as the other
//! operand; [`TimestampStrings`], an analyzer rule that runs before DataFusion's type coercion,
//! does the same: a string literal in a comparison, `BETWEEN`, `IN` list, `CASE` or unifying
//! function beside a timestamp is cast to that timestamp's type (its unit and its zone) when
//! that type holds it exactly or a nanosecond cannot hold it. A value with digits below the
//! timestamp's unit is left to DataFusion, as before (whose simplifier, unwrapping the cast of
//! the column, truncates it: `ts = '… 12:00:00.5'` over a `TIMESTAMP(0)` matches 12:00:00).
//!
//! DataFusion types a function's result while it plans the SQL, before any analyzer rule:
//! `coalesce(ts, '2024-12-31')` failed there ("Expect to get struct but got Timestamp"), and
//! `nvl(d, '2024-12-31')` and `ifnull` answered a string. [`TemporalFirst`] wraps those
//! functions so that a date, time or timestamp among strings (and NULLs) makes every argument
//! that type, as PostgreSQL's `COALESCE` does (`nvl` of two timestamps answered a string too).

use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, ExprSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::optimizer::AnalyzerRule;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef};

use super::checked::{any_expression, rewrite_expressions};
use super::literals::unified_groups;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct TimestampStrings;

impl AnalyzerRule for TimestampStrings {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_expressions(
            plan,
            |node| any_expression(node, string_literal),
            |e, schema| Ok(typed(e, schema)),
        )
    }

    fn name(&self) -> &str {
        "apiary_timestamp_strings"
    }
}

fn string_literal(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Literal(
            ScalarValue::Utf8(_) | ScalarValue::LargeUtf8(_) | ScalarValue::Utf8View(_),
            _
        )
    )
}

/// `e` with the string literals of each group it unifies cast to the group's timestamp type.
fn typed(mut e: Expr, schema: &DFSchema) -> Transformed<Expr> {
    let mut changed = false;
    for group in unified_groups(&mut e) {
        let timestamp = group
            .iter()
            .find_map(|m| match m.get_type(schema as &dyn ExprSchema) {
                Ok(t @ DataType::Timestamp(..)) if !string_literal(m) => Some(t),
                _ => None,
            });
        let Some(timestamp) = timestamp else {
            continue;
        };
        // DataFusion compares at nanoseconds (1677-2262). A value the timestamp's own unit
        // holds exactly, or one beyond that range, is read in the timestamp's type; one with
        // digits below its unit (`'… 12:00:00.5'` beside whole seconds) is left to DataFusion.
        let nanos = match &timestamp {
            DataType::Timestamp(_, zone) => {
                DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, zone.clone())
            }
            other => other.clone(),
        };
        let typed = |m: &Expr| match m {
            Expr::Literal(v, _) if !v.is_null() => {
                let Ok(there) = v.cast_to(&timestamp) else {
                    return false;
                };
                match v.cast_to(&nanos) {
                    Err(_) => true,
                    Ok(exact) => there.cast_to(&nanos).is_ok_and(|back| back == exact),
                }
            }
            _ => false,
        };
        for member in group.into_iter().filter(|m| string_literal(m) && typed(m)) {
            let literal = std::mem::replace(member, Expr::Literal(ScalarValue::Null, None));
            *member = Expr::Cast(Cast::new(Box::new(literal), timestamp.clone()));
            changed = true;
        }
    }
    Transformed::new_transformed(e, changed)
}

/// The functions [`TemporalFirst`] wraps (`ifnull` is `nvl`'s alias).
const WRAPPED: [&str; 2] = ["coalesce", "nvl"];

/// `registered`'s [`WRAPPED`] functions, wrapped.
pub(super) fn wrap(registered: impl Fn(&str) -> Option<Arc<ScalarUDF>>) -> Vec<Arc<ScalarUDF>> {
    WRAPPED
        .iter()
        .filter_map(|name| registered(name))
        .map(|inner| {
            let signature = Signature::user_defined(inner.signature().volatility);
            Arc::new(ScalarUDF::new_from_impl(TemporalFirst { inner, signature }))
        })
        .collect()
}

/// A function of DataFusion's whose arguments are of a date, time or timestamp type when one
/// of them is and the others are strings, NULL or the same type; see the module's
/// documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TemporalFirst {
    inner: Arc<ScalarUDF>,
    /// User-defined, so that [`ScalarUDFImpl::coerce_types`] is asked (`nvl` lists its types).
    signature: Signature,
}

/// The one temporal type among `types` when every other is a string, NULL or that type (a
/// string literal may have been cast to it already, by [`TimestampStrings`]).
fn temporal_among_strings(types: &[DataType]) -> Option<DataType> {
    let temporal = |t: &DataType| {
        matches!(
            t,
            DataType::Timestamp(..)
                | DataType::Date32
                | DataType::Date64
                | DataType::Time32(_)
                | DataType::Time64(_)
        )
    };
    let mut found: Option<&DataType> = None;
    for t in types {
        match t {
            t if temporal(t) => match found {
                Some(f) if f != t => return None,
                _ => found = Some(t),
            },
            t if t.is_string() => {}
            DataType::Null => {}
            _ => return None,
        }
    }
    found.cloned()
}

impl ScalarUDFImpl for TemporalFirst {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        // `nvl`'s own signature takes two arguments; this one is open.
        if self.inner.name() == "nvl" && arg_types.len() != 2 {
            return datafusion::common::plan_err!(
                "{}() takes 2 arguments, {} given",
                self.inner.name(),
                arg_types.len()
            );
        }
        if let Some(t) = temporal_among_strings(arg_types) {
            return Ok(vec![t; arg_types.len()]);
        }
        // Otherwise as DataFusion coerces them for the function's own signature.
        let fields: Vec<FieldRef> = arg_types
            .iter()
            .map(|t| Arc::new(Field::new("argument", t.clone(), true)))
            .collect();
        Ok(
            datafusion::logical_expr::type_coercion::functions::fields_with_udf(
                &fields,
                self.inner.as_ref(),
            )?
            .iter()
            .map(|f| f.data_type().clone())
            .collect(),
        )
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        self.inner.invoke_with_args(args)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    #[test]
    fn a_temporal_type_among_strings_is_every_arguments() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let cases = [
            (vec![ts.clone(), DataType::Utf8], Some(ts.clone())),
            (
                vec![DataType::Null, DataType::Date32, DataType::Utf8View],
                Some(DataType::Date32),
            ),
            (
                vec![ts.clone(), ts.clone(), DataType::LargeUtf8],
                Some(ts.clone()),
            ),
            // `nvl`'s own signature would make two timestamps strings.
            (vec![ts.clone(), ts.clone()], Some(ts.clone())),
            (vec![ts.clone(), DataType::Null], Some(ts.clone())),
            // Otherwise DataFusion's own coercion.
            (vec![ts.clone(), DataType::Date32, DataType::Utf8], None),
            (vec![DataType::Int32, DataType::Utf8], None),
            (vec![DataType::Utf8, DataType::Null], None),
        ];
        for (types, want) in cases {
            assert_eq!(temporal_among_strings(&types), want, "{types:?}");
        }
    }
}
