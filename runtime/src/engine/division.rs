//! Decimal division with the digits PostgreSQL gives.
//!
//! Arrow divides decimals into the dividend's scale plus 4, truncated: `1 / 3.0` was 0.3333,
//! `round(1 / 3.0, 6)` 0.3333 too, and a ratio of two `DECIMAL(15,2)` sums kept 6 digits.
//! PostgreSQL keeps at least 16 significant digits (0.33333333333333333333); DuckDB answers a
//! DOUBLE. [`DecimalDivision`] keeps the answer a `DECIMAL`, and widens the dividend's scale
//! while the SQL is planned so that the quotient has [`SCALE`] digits after the point, as many
//! as its precision leaves room for: the largest quotient the operands' types allow must still
//! fit the 38 digits of a `DECIMAL`, so no value that divided before overflows now (the kernel
//! computes `dividend × 10^k` exactly when the result's precision is at most 38). A quotient
//! whose types leave no more room keeps Arrow's scale.
//!
//! [`SCALE`] is 12, not PostgreSQL's 16 or more: Arrow gives a product the sum of its
//! operands' scales, within the same 38 digits, so the product of two quotients at 16 digits
//! kept 6 digits before the point and `(a / b) * (c / d)` overflowed past a million. At 12 it
//! keeps 14. A placeholder's type is left to the rules that type it (`? / 3.0` is a DOUBLE
//! division, as before).
//!
//! The widening is a cast the SQL planner writes into the expression, before types are
//! coerced, so every expression above it (a comparison, a `CASE`, a `UNION`) is typed with the
//! wider quotient. A cast does not show in a column's name: `SELECT 1 / 3.0` is still named
//! `Int64(1) / Decimal128(3.0,2,1)`.

use arrow::datatypes::{DECIMAL128_MAX_PRECISION, DataType};
use datafusion::common::{DFSchema, ExprSchema, Result as DfResult};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{Cast, Expr, ExprSchemable, Operator};
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// The digits after the point a decimal quotient gets when its type has room for them.
pub(super) const SCALE: i8 = 12;

/// The digits Arrow adds to the dividend's scale.
const ARROW_INCREMENT: i8 = 4;

/// The planner; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct DecimalDivision;

impl ExprPlanner for DecimalDivision {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        if !matches!(expr.op, BinaryOperator::Divide) {
            return Ok(PlannerResult::Original(expr));
        }
        let type_of = |x: &Expr| match x {
            Expr::Placeholder(_) => None,
            x => x
                .get_type(schema as &dyn ExprSchema)
                .ok()
                .filter(|t| !t.is_null()),
        };
        let (Some(left), Some(right)) = (type_of(&expr.left), type_of(&expr.right)) else {
            return Ok(PlannerResult::Original(expr));
        };
        let Some(wider) = widened_dividend(&left, &right) else {
            return Ok(PlannerResult::Original(expr));
        };
        let dividend = Expr::Cast(Cast::new(Box::new(expr.left), wider));
        Ok(PlannerResult::Planned(
            datafusion::logical_expr::binary_expr(dividend, Operator::Divide, expr.right),
        ))
    }
}

/// The type to cast a dividend of type `left` to, divided by a `right`, so that the quotient
/// has [`SCALE`] digits or as many as fit; `None` when the division is not of decimals or
/// Arrow's scale is already as wide.
fn widened_dividend(left: &DataType, right: &DataType) -> Option<DataType> {
    let (l, r) = BinaryTypeCoercer::new(left, &Operator::Divide, right)
        .get_input_types()
        .ok()?;
    let (DataType::Decimal128(p1, s1), DataType::Decimal128(_, s2)) = (l, r) else {
        return None;
    };
    let (p1, s1, s2) = (i16::from(p1), i16::from(s1), i16::from(s2));
    let max = i16::from(DECIMAL128_MAX_PRECISION);
    // Arrow's quotient has p1 - s1 + s2 digits before the point, and its precision is capped.
    let room = max - (p1 - s1 + s2);
    let arrow_scale = s1 + i16::from(ARROW_INCREMENT);
    let scale = i16::from(SCALE).min(room);
    let more = scale - arrow_scale;
    if more <= 0 || s2 < 0 || p1 + more > max {
        return None;
    }
    Some(DataType::Decimal128(
        u8::try_from(p1 + more).ok()?,
        i8::try_from(s1 + more).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow::array::{ArrayRef, Decimal128Array};
    use std::sync::Arc;

    #[test]
    fn quotients_get_twelve_digits_where_their_type_has_room() {
        let d = DataType::Decimal128;
        // 1 / 3.0: an integer dividend is a DECIMAL(20,0).
        assert_eq!(widened_dividend(&DataType::Int64, &d(2, 1)), Some(d(28, 8)));
        // sum(DECIMAL(15,2)) / sum(DECIMAL(15,2)): 25 digits before the point leave 13.
        assert_eq!(widened_dividend(&d(25, 2), &d(25, 2)), Some(d(31, 8)));
        // sum(DECIMAL(15,2)) / count(*): 23 digits before the point leave 15.
        assert_eq!(
            widened_dividend(&d(25, 2), &DataType::Int64),
            Some(d(31, 8))
        );
        // No room left: Arrow's own scale.
        assert_eq!(widened_dividend(&d(38, 6), &d(25, 2)), None);
        // Already 12 digits or more.
        assert_eq!(widened_dividend(&d(20, 8), &d(5, 2)), None);
        // Integers divide as integers, floats as floats.
        assert_eq!(widened_dividend(&DataType::Int64, &DataType::Int32), None);
        assert_eq!(widened_dividend(&DataType::Float64, &d(5, 2)), None);
    }

    /// The widest value each widened type allows divides by the smallest divisor without
    /// overflow: the bound the module relies on, checked through Arrow's own kernel.
    #[test]
    fn the_largest_dividend_still_divides() {
        for (left, right) in [
            ((20u8, 0i8), (2u8, 1i8)),
            ((25, 2), (25, 2)),
            ((10, 2), (10, 8)),
            ((18, 0), (38, 20)),
            ((1, 0), (1, 0)),
        ] {
            let Some(DataType::Decimal128(p, s)) = widened_dividend(
                &DataType::Decimal128(left.0, left.1),
                &DataType::Decimal128(right.0, right.1),
            ) else {
                continue;
            };
            let largest = 10i128.pow(u32::from(left.0)) - 1;
            let dividend: ArrayRef = Arc::new(
                Decimal128Array::from(vec![largest])
                    .with_precision_and_scale(left.0, left.1)
                    .unwrap(),
            );
            let dividend = arrow::compute::cast(&dividend, &DataType::Decimal128(p, s)).unwrap();
            let divisor: ArrayRef = Arc::new(
                Decimal128Array::from(vec![1i128])
                    .with_precision_and_scale(right.0, right.1)
                    .unwrap(),
            );
            let quotient = arrow::compute::kernels::numeric::div(&dividend, &divisor)
                .unwrap_or_else(|e| panic!("{left:?} / {right:?}: {e}"));
            let DataType::Decimal128(qp, qs) = quotient.data_type() else {
                panic!("not a decimal")
            };
            assert!(*qp <= DECIMAL128_MAX_PRECISION, "{left:?} / {right:?}");
            assert!(*qs <= SCALE, "{left:?} / {right:?}");
        }
    }
}
