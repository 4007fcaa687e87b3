//! Pruning that does not lose NaN rows.
//!
//! Parquet writers (arrow-rs, so delta-rs and Apiary; Delta's file statistics come from them)
//! leave NaN out of a float column's min and max, but DataFusion compares floats by their total
//! order: NaN above every number, and a NaN with its sign bit set (what `0.0 / 0.0` gives on
//! x86) below every number. So `x > 100` skipped a cell, row group or page whose only match was
//! a NaN (through ADBC: 20,000 of 20,001 rows), in either direction.
//!
//! The statistics cannot tell whether a file holds a NaN, so a predicate on a float column
//! prunes only where NaN can never match: equality with a number, `IN` a list of numbers, and
//! `IS [NOT] NULL`. Every other part of a predicate that reads a float column is left out of
//! pruning (the rows are still filtered by it).
//!
//! So is every part that casts a timestamp to its time of day: DataFusion prunes through a cast
//! as if it kept order (`CAST(ts_min AS TIME) <= t <= CAST(ts_max AS TIME)`), which a time of
//! day does not, and `WHERE CAST(ts AS TIME) = '12:00'` skipped a cell spanning 23:00 to 01:00
//! the day after with a row at 12:00 in between.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Expr, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal, TryCastExpr,
};
use datafusion::physical_expr::utils::{conjunction_opt, split_conjunction};

/// The parts of `predicate` (over `schema`) that are safe to prune with, and whether any part
/// was left out; `None` when no part is.
pub fn prunable(
    predicate: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> (Option<Arc<dyn PhysicalExpr>>, bool) {
    let parts = split_conjunction(predicate);
    let total = parts.len();
    let kept: Vec<Arc<dyn PhysicalExpr>> = parts
        .into_iter()
        .filter(|p| safe(p, schema))
        .cloned()
        .collect();
    let dropped = kept.len() < total;
    (conjunction_opt(kept), dropped)
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

fn float_column(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> bool {
    e.downcast_ref::<Column>().is_some_and(|c| {
        schema
            .fields()
            .get(c.index())
            .is_none_or(|f| is_float(f.data_type()))
    })
}

fn reads_a_float(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> bool {
    let mut found = false;
    let _ = e.apply(|n| {
        if float_column(n, schema) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A value that is not NaN (nor NULL, which matches nothing anyway).
fn is_number(v: &ScalarValue) -> bool {
    match v {
        ScalarValue::Float16(Some(v)) => !v.is_nan(),
        ScalarValue::Float32(Some(v)) => !v.is_nan(),
        ScalarValue::Float64(Some(v)) => !v.is_nan(),
        v => !v.is_null(),
    }
}

fn number(e: &Arc<dyn PhysicalExpr>) -> bool {
    e.downcast_ref::<Literal>()
        .is_some_and(|l| is_number(l.value()))
}

fn is_time(t: &DataType) -> bool {
    matches!(t, DataType::Time32(_) | DataType::Time64(_))
}

/// Whether `part` casts something other than a time to a time of day.
fn casts_to_a_time(part: &Arc<dyn PhysicalExpr>, schema: &Schema) -> bool {
    let mut found = false;
    let _ = part.apply(|n| {
        let cast = match (
            n.downcast_ref::<CastExpr>(),
            n.downcast_ref::<TryCastExpr>(),
        ) {
            (Some(c), _) => Some((c.expr(), c.cast_type())),
            (_, Some(c)) => Some((c.expr(), c.cast_type())),
            _ => None,
        };
        if let Some((from, to)) = cast
            && is_time(to)
            && !from.data_type(schema).is_ok_and(|t| is_time(&t))
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn safe(part: &Arc<dyn PhysicalExpr>, schema: &Schema) -> bool {
    if casts_to_a_time(part, schema) {
        return false;
    }
    if !reads_a_float(part, schema) {
        return true;
    }
    if let Some(b) = part.downcast_ref::<BinaryExpr>() {
        let (l, r) = (b.left(), b.right());
        return *b.op() == Operator::Eq
            && ((float_column(l, schema) && number(r)) || (number(l) && float_column(r, schema)));
    }
    if let Some(i) = part.downcast_ref::<InListExpr>() {
        return !i.negated() && float_column(i.expr(), schema) && i.list().iter().all(number);
    }
    part.downcast_ref::<IsNullExpr>()
        .is_some_and(|n| float_column(n.arg(), schema))
        || part
            .downcast_ref::<IsNotNullExpr>()
            .is_some_and(|n| float_column(n.arg(), schema))
}

/// `predicate` (a row-level change's, over `schema`) with each part that a NaN could be pruned
/// away by (or that casts to a time of day) wrapped in `IS TRUE`: the same rows match, but no
/// statistics prune with it.
/// (delta-rs finds the files a `DELETE` or `UPDATE` rewrites by the log's statistics and
/// prunes their row groups; `DELETE … WHERE x > 100` left the NaN row behind.)
pub fn guard(predicate: Expr, schema: &Schema) -> Expr {
    let parts = split_conjunction_owned(predicate);
    let guarded = parts.into_iter().map(|p| {
        if logical_safe(&p, schema) {
            p
        } else {
            Expr::IsTrue(Box::new(p))
        }
    });
    conjunction(guarded).unwrap_or(Expr::Literal(ScalarValue::Boolean(Some(true)), None))
}

fn logical_float_column(e: &Expr, schema: &Schema) -> bool {
    match e {
        Expr::Column(c) => schema
            .field_with_name(&c.name)
            .map_or(true, |f| is_float(f.data_type())),
        _ => false,
    }
}

fn logical_number(e: &Expr) -> bool {
    matches!(e, Expr::Literal(v, _) if is_number(v))
}

fn logical_safe(part: &Expr, schema: &Schema) -> bool {
    let mut to_a_time = false;
    let _ = part.apply(|e| {
        to_a_time = matches!(e, Expr::Cast(c) if is_time(c.field.data_type()))
            || matches!(e, Expr::TryCast(c) if is_time(c.field.data_type()));
        Ok(match to_a_time {
            true => TreeNodeRecursion::Stop,
            false => TreeNodeRecursion::Continue,
        })
    });
    if to_a_time {
        return false;
    }
    let reads_a_float = part.column_refs().iter().any(|c| {
        schema
            .field_with_name(&c.name)
            .map_or(true, |f| is_float(f.data_type()))
    });
    if !reads_a_float {
        return true;
    }
    match part {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            (logical_float_column(&b.left, schema) && logical_number(&b.right))
                || (logical_number(&b.left) && logical_float_column(&b.right, schema))
        }
        Expr::InList(i) => {
            !i.negated && logical_float_column(&i.expr, schema) && i.list.iter().all(logical_number)
        }
        Expr::IsNull(e) | Expr::IsNotNull(e) => logical_float_column(e, schema),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::{col, in_list, is_null, lit};

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("x", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ])
    }

    fn binary(
        l: Arc<dyn PhysicalExpr>,
        op: Operator,
        r: Arc<dyn PhysicalExpr>,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    #[test]
    fn float_ranges_are_left_out_and_the_rest_kept() {
        let s = schema();
        let x = col("x", &s).unwrap();
        let n = col("n", &s).unwrap();
        let gt = binary(x.clone(), Operator::Gt, lit(100.0));
        let n_eq = binary(n.clone(), Operator::Eq, lit(3i64));
        let both = binary(gt.clone(), Operator::And, n_eq.clone());
        let (kept, dropped) = prunable(&both, &s);
        assert!(dropped);
        assert_eq!(kept.unwrap().to_string(), n_eq.to_string());

        let (kept, dropped) = prunable(&gt, &s);
        assert!(dropped && kept.is_none());

        // NaN never equals a number, nor is it in a list of numbers or NULL.
        for safe in [
            binary(x.clone(), Operator::Eq, lit(2.5)),
            binary(lit(2.5), Operator::Eq, x.clone()),
            in_list(x.clone(), vec![lit(1.0), lit(2.0)], &false, &s).unwrap(),
            is_null(x.clone()).unwrap(),
        ] {
            assert_eq!(prunable(&safe, &s), (Some(safe.clone()), false), "{safe}");
        }
        for unsafe_ in [
            binary(x.clone(), Operator::Eq, lit(f64::NAN)),
            binary(x.clone(), Operator::NotEq, lit(1.0)),
            binary(x.clone(), Operator::LtEq, lit(1.0)),
            in_list(x.clone(), vec![lit(1.0)], &true, &s).unwrap(),
        ] {
            assert_eq!(prunable(&unsafe_, &s).0, None, "{unsafe_}");
        }
    }

    #[test]
    fn a_cast_to_a_time_of_day_is_left_out() {
        use arrow::datatypes::TimeUnit;
        use datafusion::physical_expr::expressions::cast;
        let s = Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("t", DataType::Time64(TimeUnit::Microsecond), true),
        ]);
        let ts = col("ts", &s).unwrap();
        let time = DataType::Time64(TimeUnit::Microsecond);
        let noon = lit(ScalarValue::Time64Microsecond(Some(43_200_000_000)));
        let of_day = cast(ts.clone(), &s, time.clone()).unwrap();
        let part = binary(of_day, Operator::Eq, noon.clone());
        assert_eq!(prunable(&part, &s), (None, true), "{part}");
        // A date keeps a timestamp's order, and a time column is already a time.
        let day = cast(ts, &s, DataType::Date32).unwrap();
        let on_day = binary(day, Operator::Eq, lit(ScalarValue::Date32(Some(19_723))));
        assert_eq!(prunable(&on_day, &s), (Some(on_day.clone()), false));
        let t = cast(col("t", &s).unwrap(), &s, time).unwrap();
        let at = binary(t, Operator::Eq, noon);
        assert_eq!(prunable(&at, &s), (Some(at.clone()), false));
    }
}
