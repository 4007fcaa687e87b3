//! PostgreSQL's ordered-set aggregates DataFusion lacks: `mode() WITHIN GROUP (ORDER BY x)`,
//! the most frequent value, and `percentile_disc(f) WITHIN GROUP (ORDER BY x)`, the first value
//! whose place in the order reaches the fraction `f` of the rows. Both take any type that sorts
//! (numbers, text, dates) and answer a value of it; NULLs are left out, and a group with none
//! left answers NULL. DataFusion's SQL planner passes the ordered expression as the first
//! argument and the ordering as the aggregate's `ORDER BY`; `mode(x)` and
//! `percentile_disc(x, f)` are the same calls written directly.
//!
//! Intervals are ordered and tied by their length, as PostgreSQL compares them.
//!
//! Each group keeps its values (in memory the aggregate accounts for, so a query over more
//! than its budget fails, or spills where the plan can) and sorts them once at the end; ties in
//! `mode` go to the value that sorts first, as PostgreSQL's scan of the sorted group finds it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::utils::SingleRowListArrayBuilder;
use datafusion::common::{Result as DfResult, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

/// Which value of the sorted group an aggregate answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    /// The longest run of equal values.
    Mode,
    /// The value at this fraction of the rows.
    Percentile(f64),
}

/// `mode` or `percentile_disc`; see the module's documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct OrderedSet {
    name: &'static str,
    signature: Signature,
}

impl AggregateUDFImpl for OrderedSet {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match (self.name, arg_types) {
            ("mode", [t]) => Ok(vec![t.clone()]),
            ("percentile_disc", [t, f]) if f.is_numeric() || f.is_null() => {
                Ok(vec![t.clone(), DataType::Float64])
            }
            ("mode", _) => plan_err!("mode() WITHIN GROUP (ORDER BY x) takes no argument"),
            _ => plan_err!(
                "percentile_disc takes one fraction: percentile_disc(0.5) WITHIN GROUP (ORDER BY x)"
            ),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => plan_err!("{} needs WITHIN GROUP (ORDER BY x)", self.name),
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        let value = args.input_fields[0].data_type().clone();
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "values"),
            DataType::List(Arc::new(Field::new_list_field(value, true))),
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let pick = if self.name == "mode" {
            Pick::Mode
        } else {
            Pick::Percentile(fraction(&args)?)
        };
        let descending = args.order_bys.first().is_some_and(|s| s.options.descending);
        Ok(Box::new(Values {
            pick,
            order: SortOptions {
                descending,
                nulls_first: false,
            },
            data_type: args.expr_fields[0].data_type().clone(),
            values: Vec::new(),
            bytes: 0,
        }))
    }

    fn supports_within_group_clause(&self) -> bool {
        true
    }
}

/// The fraction `percentile_disc` was given, a constant between 0 and 1.
fn fraction(args: &AccumulatorArgs) -> DfResult<f64> {
    let value = args
        .exprs
        .get(1)
        .and_then(|e| e.downcast_ref::<Literal>())
        .map(|l| l.value().cast_to(&DataType::Float64));
    match value {
        Some(Ok(ScalarValue::Float64(Some(f)))) if (0.0..=1.0).contains(&f) => Ok(f),
        Some(Ok(ScalarValue::Float64(Some(f)))) => {
            plan_err!("percentile value {f} is not between 0 and 1")
        }
        _ => plan_err!("percentile_disc's fraction must be a constant between 0 and 1"),
    }
}

/// One group's values, kept until the answer is asked for.
#[derive(Debug)]
struct Values {
    pick: Pick,
    order: SortOptions,
    data_type: DataType,
    values: Vec<ArrayRef>,
    bytes: usize,
}

impl Values {
    fn keep(&mut self, values: &ArrayRef) -> DfResult<()> {
        let values = if values.null_count() > 0 {
            let kept = arrow::compute::is_not_null(values)?;
            arrow::compute::filter(values, &kept)?
        } else {
            values.slice(0, values.len())
        };
        if !values.is_empty() {
            self.bytes += values.get_array_memory_size();
            self.values.push(values);
        }
        Ok(())
    }

    fn all(&self) -> DfResult<ArrayRef> {
        if self.values.is_empty() {
            return Ok(arrow::array::new_empty_array(&self.data_type));
        }
        let parts: Vec<&dyn Array> = self.values.iter().map(|a| a.as_ref()).collect();
        Ok(arrow::compute::concat(&parts)?)
    }
}

impl Accumulator for Values {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        match values.first() {
            Some(v) => self.keep(v),
            None => Ok(()),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(lists) = states.first() else {
            return Ok(());
        };
        for list in lists.as_list::<i32>().iter().flatten() {
            self.keep(&list)?;
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let all = self.all()?;
        Ok(vec![
            SingleRowListArrayBuilder::new(all).build_list_scalar(),
        ])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let all = self.all()?;
        if all.is_empty() {
            return ScalarValue::try_from(&self.data_type);
        }
        // Intervals sort and tie by their length, as PostgreSQL compares them ('1 day' and
        // '24 hours' are equal); Arrow's order goes field by field.
        let key: ArrayRef = match all.data_type() {
            DataType::Interval(_) | DataType::Duration(_) => {
                Arc::new(super::interval_order::lengths_of(all.as_ref())?)
            }
            _ => all.clone(),
        };
        let order = arrow::compute::sort_to_indices(&key, Some(self.order), None)?;
        let sorted = arrow::compute::take(&all, &order, None)?;
        let sorted_key = arrow::compute::take(&key, &order, None)?;
        let at = match self.pick {
            Pick::Percentile(f) => {
                // The first row whose cumulative share reaches f (1-based ceil(f × n)).
                let n = sorted.len();
                let place = (f * n as f64).ceil() as usize;
                place.clamp(1, n) - 1
            }
            Pick::Mode => {
                let runs = arrow::compute::partition(std::slice::from_ref(&sorted_key))?;
                let mut best = (0, 0);
                for run in runs.ranges() {
                    if run.len() > best.1 {
                        best = (run.start, run.len());
                    }
                }
                best.0
            }
        };
        ScalarValue::try_from_array(&sorted, at)
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.bytes
    }
}

/// The ordered-set aggregates.
pub(super) fn aggregates() -> Vec<Arc<AggregateUDF>> {
    ["mode", "percentile_disc"]
        .into_iter()
        .map(|name| {
            Arc::new(AggregateUDF::from(OrderedSet {
                name,
                signature: Signature::user_defined(Volatility::Immutable),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn answer(pick: Pick, descending: bool, batches: &[ArrayRef]) -> ScalarValue {
        let mut acc = Values {
            pick,
            order: SortOptions {
                descending,
                nulls_first: false,
            },
            data_type: batches[0].data_type().clone(),
            values: Vec::new(),
            bytes: 0,
        };
        for b in batches {
            acc.update_batch(std::slice::from_ref(b)).unwrap();
        }
        // Through a state and a merge, as a partial aggregate hands over.
        let state = acc.state().unwrap()[0].to_array().unwrap();
        let mut merged = Values {
            values: Vec::new(),
            bytes: 0,
            ..acc
        };
        merged.merge_batch(&[state]).unwrap();
        merged.evaluate().unwrap()
    }

    #[test]
    fn percentile_disc_answers_a_value_of_the_group() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(4), None, Some(1), Some(3)]));
        let more: ArrayRef = Arc::new(Int64Array::from(vec![2]));
        let both = [ints, more];
        assert_eq!(
            answer(Pick::Percentile(0.5), false, &both),
            ScalarValue::Int64(Some(2))
        );
        assert_eq!(
            answer(Pick::Percentile(0.0), false, &both),
            ScalarValue::Int64(Some(1))
        );
        assert_eq!(
            answer(Pick::Percentile(1.0), false, &both),
            ScalarValue::Int64(Some(4))
        );
        assert_eq!(
            answer(Pick::Percentile(0.5), true, &both),
            ScalarValue::Int64(Some(3))
        );
        let nulls: ArrayRef = Arc::new(Int64Array::from(vec![None::<i64>]));
        assert_eq!(
            answer(Pick::Percentile(0.5), false, &[nulls]),
            ScalarValue::Int64(None)
        );
    }

    #[test]
    fn intervals_are_ordered_by_length() {
        use arrow::datatypes::IntervalMonthDayNano as I;
        let h = 3_600_000_000_000;
        // '1 day', '25 hours', '2 hours': PostgreSQL's median is '1 day'.
        let spans: ArrayRef = Arc::new(arrow::array::IntervalMonthDayNanoArray::from(vec![
            I::new(0, 1, 0),
            I::new(0, 0, 25 * h),
            I::new(0, 0, 2 * h),
        ]));
        assert_eq!(
            answer(Pick::Percentile(0.5), false, std::slice::from_ref(&spans)),
            ScalarValue::IntervalMonthDayNano(Some(I::new(0, 1, 0)))
        );
        // '24 hours' ties with '1 day'.
        let ties: ArrayRef = Arc::new(arrow::array::IntervalMonthDayNanoArray::from(vec![
            I::new(0, 0, 2 * h),
            I::new(0, 1, 0),
            I::new(0, 0, 24 * h),
        ]));
        assert!(matches!(
            answer(Pick::Mode, false, &[ties]),
            ScalarValue::IntervalMonthDayNano(Some(v)) if v != I::new(0, 0, 2 * h)
        ));
    }

    #[test]
    fn mode_breaks_ties_by_the_order() {
        let words: ArrayRef = Arc::new(StringArray::from(vec!["b", "a", "b", "c", "a"]));
        assert_eq!(
            answer(Pick::Mode, false, std::slice::from_ref(&words)),
            ScalarValue::Utf8(Some("a".into()))
        );
        assert_eq!(
            answer(Pick::Mode, true, &[words]),
            ScalarValue::Utf8(Some("b".into()))
        );
    }
}
