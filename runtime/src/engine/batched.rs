//! Many parameter rows bound to one `INSERT … VALUES (?, …)` — what ADBC's `executemany` and
//! JDBC's `executeBatch` send — written as one statement: one VALUES list with a row per
//! parameter row, so one commit, all rows or none.
//!
//! Run once per parameter row instead, 1,000 rows made 1,000 Delta commits (67 s) and a failure
//! at row 500 left the first 499 written.
//!
//! Only a plan whose placeholders all sit in one VALUES list is merged; any other statement
//! (an `UPDATE … WHERE id = ?`, an `INSERT … SELECT ?`) runs once per row as before.

use std::collections::HashMap;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::dml::{DmlStatement, InsertOp};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Values, WriteOp};

use super::temporal_strings;
use crate::error::{Error, Result};

/// `plan` (an unbound `INSERT`) with its VALUES list repeated once per row of `rows`, each copy
/// bound to that row; `None` when the plan is not an `INSERT` whose placeholders all sit in
/// one VALUES list.
pub(super) fn merge_rows(
    plan: &LogicalPlan,
    rows: Vec<Vec<ScalarValue>>,
) -> Result<Option<LogicalPlan>> {
    // (`INSERT OVERWRITE` run once per row keeps the last row only: it runs so.)
    if !matches!(
        plan,
        LogicalPlan::Dml(DmlStatement {
            op: WriteOp::Insert(InsertOp::Append),
            ..
        })
    ) || !placeholders_only_in_one_values(plan)?
    {
        return Ok(None);
    }
    let types = plan.get_parameter_types()?;
    let bound: Vec<ParamValues> = rows
        .into_iter()
        .map(|row| cast_each(&types, row).map(ParamValues::from))
        .collect::<Result<_>>()?;
    let merged = plan
        .clone()
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::Values(Values { values, .. }) if any_placeholder(&values) => {
                let mut all = Vec::with_capacity(values.len() * bound.len());
                for params in &bound {
                    for row in &values {
                        all.push(
                            row.iter()
                                .map(|e| substitute(e.clone(), params))
                                .collect::<Result<Vec<_>>>()?,
                        );
                    }
                }
                Ok(Transformed::yes(LogicalPlanBuilder::values(all)?.build()?))
            }
            // The VALUES list's column types may have changed with the values bound.
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })?
        .data;
    Ok(Some(merged))
}

/// Each value in the type the statement expects where DataFusion knows it, so that clients may
/// send e.g. int32 for a BIGINT column (and a NULL of any type); a number that type cannot
/// hold exactly keeps its own ([`bound_as`]).
pub(super) fn typed(
    types: &HashMap<String, Option<DataType>>,
    values: Vec<ScalarValue>,
) -> Result<Vec<ScalarValue>> {
    typed_with(types, values, bound_as)
}

/// Each value cast to the type its column expects, for rows merged into one VALUES list: one
/// value left in its own type would widen the whole column (a float among BIGINTs made
/// 9007199254740993 into 9007199254740992), so each is cast as a single row's insert casts it.
fn cast_each(
    types: &HashMap<String, Option<DataType>>,
    values: Vec<ScalarValue>,
) -> Result<Vec<ScalarValue>> {
    typed_with(types, values, |v, dt| v.cast_to(dt))
}

/// Each value bound by `cast` to the type its placeholder has, where DataFusion knows one.
fn typed_with(
    types: &HashMap<String, Option<DataType>>,
    values: Vec<ScalarValue>,
    cast: impl Fn(ScalarValue, &DataType) -> datafusion::common::Result<ScalarValue>,
) -> Result<Vec<ScalarValue>> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match types.get(&format!("${}", i + 1)) {
            // A placeholder DataFusion could not type (`? = ?`) takes the value as sent: cast
            // to NULL's type, a decimal became NULL and an integer failed.
            Some(Some(DataType::Null)) => Ok(v),
            Some(Some(dt)) if &v.data_type() != dt && !v.is_null() => {
                cast(temporal_strings::in_full(v, dt), dt)
                    .map_err(|e| Error::Sql(format!("parameter ${}: {e}", i + 1)))
            }
            Some(Some(dt)) if v.is_null() => ScalarValue::try_from(dt)
                .map_err(|e| Error::Sql(format!("parameter ${}: {e}", i + 1))),
            _ => Ok(v),
        })
        .collect()
}

/// `v` in `dt`, where `dt` holds it exactly. A number `dt` cannot hold (1.7 for a BIGINT,
/// 1.251 for a DECIMAL(10,2), 1e20 for an INT) is bound as sent, and compared as its literal
/// would be: cast, it was truncated or rounded, and `k = ?` with 1.7 matched `k = 1`.
fn bound_as(v: ScalarValue, dt: &DataType) -> datafusion::common::Result<ScalarValue> {
    let own = v.data_type();
    if !(own.is_numeric() && dt.is_numeric()) {
        return v.cast_to(dt);
    }
    match v.cast_to(dt) {
        Ok(cast) if cast.cast_to(&own).is_ok_and(|back| back == v) => Ok(cast),
        _ => Ok(v),
    }
}

fn has_placeholder(e: &Expr) -> bool {
    e.exists(|e| Ok(matches!(e, Expr::Placeholder(_))))
        .unwrap_or(true)
}

fn any_placeholder(rows: &[Vec<Expr>]) -> bool {
    rows.iter().flatten().any(has_placeholder)
}

fn placeholders_only_in_one_values(plan: &LogicalPlan) -> Result<bool> {
    let (mut lists, mut elsewhere) = (0, false);
    plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::Values(Values { values, .. }) => {
                if any_placeholder(values) {
                    lists += 1;
                }
            }
            other => {
                if other.expressions().iter().any(has_placeholder) {
                    elsewhere = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(lists == 1 && !elsewhere)
}

fn substitute(e: Expr, params: &ParamValues) -> Result<Expr> {
    Ok(e.transform_up(|e| match e {
        Expr::Placeholder(p) => {
            let (value, metadata) = params.get_placeholders_with_values(&p.id)?.into_inner();
            Ok(Transformed::yes(Expr::Literal(value, metadata)))
        }
        other => Ok(Transformed::no(other)),
    })?
    .data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_bound_in_the_expected_type_only_when_it_holds_them() {
        let types: HashMap<String, Option<DataType>> = [
            ("$1".into(), Some(DataType::Int64)),
            ("$2".into(), Some(DataType::Decimal128(10, 2))),
            ("$3".into(), Some(DataType::Int32)),
            ("$4".into(), Some(DataType::Int64)),
        ]
        .into();
        let got = |values: Vec<ScalarValue>| typed(&types, values).unwrap();
        assert_eq!(
            got(vec![
                ScalarValue::Int32(Some(2)),
                ScalarValue::Float64(Some(1.5)),
                ScalarValue::Float64(Some(3.0)),
                ScalarValue::Utf8(Some("4".into())),
            ]),
            vec![
                ScalarValue::Int64(Some(2)),
                ScalarValue::Decimal128(Some(150), 10, 2),
                ScalarValue::Int32(Some(3)),
                ScalarValue::Int64(Some(4)),
            ]
        );
        let lossy = vec![
            ScalarValue::Float64(Some(1.7)),
            ScalarValue::Decimal128(Some(1251), 4, 3),
            ScalarValue::Float64(Some(1e20)),
            ScalarValue::Int64(Some(1)),
        ];
        assert_eq!(got(lossy.clone())[..3], lossy[..3]);
        assert!(typed(&types, vec![ScalarValue::Utf8(Some("abc".into()))]).is_err());
    }
}
