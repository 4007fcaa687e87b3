//! Numeric literals are exact, as in PostgreSQL and DuckDB: `0.1` is `DECIMAL(1,1)`, so
//! `0.1 + 0.2 = 0.3` holds and `price * 1.1` over a `DECIMAL` column stays a decimal. DataFusion
//! parses them as `DOUBLE` unless `datafusion.sql_parser.parse_float_as_decimal` is on, which
//! the engine sets by default (a session or `--datafusion-option` may turn it off).
//!
//! One thing DataFusion does with that option needs help: a literal in scientific notation
//! (`1e10`) becomes a decimal of negative scale (`DECIMAL(1,-10)`), which clients and Delta
//! readers do not expect. So before planning, each such literal is written out in plain digits
//! (`10000000000`, `1.5e-3` → `0.0015`), as PostgreSQL reads it. A literal whose digits would
//! not fit the widest decimal (76) is read as `DOUBLE` (`CAST('1e100' AS DOUBLE)`).
//!
//! The other is a decimal literal beside a floating-point value where DataFusion unifies the
//! two types (comparisons, `BETWEEN`, `IN`, `CASE`, `coalesce` …): it would cast the float
//! to `DECIMAL(30,15)`, so `temperature > 20.5` would fail on a NaN or on any value beyond 10^15
//! and lose digits below 10^-15, and the scan could not prune by the column's bounds.
//! PostgreSQL reads such a literal as a float there; [`FloatNeighbours`], an analyzer rule that
//! runs before DataFusion's type coercion, does the same, and so for a `UNION` column that is a
//! float in another input and for a subquery answering a literal (`f IN (SELECT 0.5)`).
//! Any other decimal value beside a float there (a `DECIMAL` column: `d = f`, `coalesce(d, f)`,
//! `d IN (SELECT f …)`, a join on `d = f`, `d` and `f` as one `UNION` column) is cast to
//! `DOUBLE`, as PostgreSQL and DuckDB do, instead of the float to `DECIMAL(30,15)`.
//! DataFusion types a `VALUES` list while it plans it, so there the numbers of a column holding
//! a float cast become casts to `DOUBLE` before planning.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column, DFSchema, ExprSchema, Result as DfResult, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::{Between, Case, Cast, InList, InSubquery, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, Expr as Df, ExprSchemable, Join, LogicalPlan, Operator, Projection, Subquery,
    Union, Values,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    CastKind, DataType as SqlType, ExactNumberInfo, Expr, Query, SetExpr, Value, ValueWithSpan,
    VisitorMut,
};

/// The most digits a literal written out keeps as a decimal (Arrow's `Decimal256`).
const MAX_DIGITS: usize = 76;

/// Write out the scientific-notation literals of `statement` when literals parse as decimals.
pub(crate) fn exact_numbers(statement: &mut DfStatement, options: &ConfigOptions) {
    if options.sql_parser.parse_float_as_decimal {
        write_out(statement);
    }
}

fn write_out(statement: &mut DfStatement) {
    super::visit_parsed(statement, &mut super::EachExpr(rewrite));
    super::visit_parsed(statement, &mut FloatRows);
}

/// In a `VALUES` list, a column holding a float cast (`'NaN'::double`, or a literal beyond 76
/// digits) reads its numbers as `DOUBLE`s: DataFusion types the column when it plans the list,
/// and a decimal there would cast the float to `DECIMAL(30,15)` (failing on NaN and 1e300).
struct FloatRows;

impl VisitorMut for FloatRows {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        values_in(&mut query.body);
        ControlFlow::Continue(())
    }
}

fn values_in(body: &mut SetExpr) {
    match body {
        SetExpr::Values(values) => {
            let width = values.rows.iter().map(|r| r.content.len()).max();
            for j in 0..width.unwrap_or(0) {
                let cells = values.rows.iter_mut().filter_map(|r| r.content.get_mut(j));
                let mut cells: Vec<&mut Expr> = cells.collect();
                if !cells.iter().any(|e| is_float_cast(e)) {
                    continue;
                }
                for cell in cells.iter_mut().filter(|e| is_number(e)) {
                    let number = std::mem::replace(&mut **cell, Expr::value(Value::Null));
                    **cell = as_double(number);
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            values_in(left);
            values_in(right);
        }
        _ => {}
    }
}

fn is_float_cast(e: &Expr) -> bool {
    matches!(
        e,
        Expr::Cast {
            data_type: SqlType::Float(_)
                | SqlType::Float4
                | SqlType::Float8
                | SqlType::Float32
                | SqlType::Float64
                | SqlType::Real
                | SqlType::Double(_)
                | SqlType::DoublePrecision,
            ..
        }
    )
}

fn is_number(e: &Expr) -> bool {
    match e {
        Expr::Value(ValueWithSpan {
            value: Value::Number(..),
            ..
        }) => true,
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => is_number(expr),
        _ => false,
    }
}

fn as_double(e: Expr) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(e),
        data_type: SqlType::Double(ExactNumberInfo::None),
        array: false,
        format: None,
    }
}

fn rewrite(expr: &mut Expr) -> ControlFlow<()> {
    let Expr::Value(ValueWithSpan {
        value: Value::Number(text, _),
        span,
    }) = expr
    else {
        return ControlFlow::Continue(());
    };
    if !text.contains(['e', 'E']) {
        return ControlFlow::Continue(());
    }
    match plain(text) {
        Some(digits) => *text = digits,
        None => {
            *expr = as_double(Expr::Value(ValueWithSpan {
                value: Value::SingleQuotedString(text.clone()),
                span: *span,
            }))
        }
    }
    ControlFlow::Continue(())
}

/// `text` (an unsigned number with an exponent, e.g. `1.25E-3`) in plain digits, keeping the
/// digits after the point that the mantissa had beyond the exponent (`1.50e1` → `15.0`), or
/// `None` when it is not such a number or needs more than [`MAX_DIGITS`] digits.
fn plain(text: &str) -> Option<String> {
    let text = text.replace('_', "");
    let (mantissa, exponent) = text.split_once(['e', 'E'])?;
    let exponent: i64 = exponent.parse().ok()?;
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        || exponent.unsigned_abs() > MAX_DIGITS as u64 * 2
    {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    // Where the point goes in `digits`, counted from its start (may be < 0 or > its length).
    let point = whole.len() as i64 + exponent;
    let (whole, fraction) = if point <= 0 {
        (String::new(), "0".repeat((-point) as usize) + &digits)
    } else if point as usize >= digits.len() {
        (
            digits.clone() + &"0".repeat(point as usize - digits.len()),
            String::new(),
        )
    } else {
        let (w, f) = digits.split_at(point as usize);
        (w.to_string(), f.to_string())
    };
    let whole = whole.trim_start_matches('0');
    let significant = whole.len() + fraction.len();
    if significant > MAX_DIGITS {
        return None;
    }
    let whole = if whole.is_empty() { "0" } else { whole };
    Some(match fraction.is_empty() {
        true => whole.to_string(),
        false => format!("{whole}.{fraction}"),
    })
}

/// Decimal literals beside floating-point values become `DOUBLE` literals before DataFusion's
/// type coercion would turn the floats into decimals (see the module page).
#[derive(Debug, Default)]
pub(super) struct FloatNeighbours;

impl AnalyzerRule for FloatNeighbours {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let node = match node {
                LogicalPlan::Union(union) => return union_columns(union),
                LogicalPlan::Join(join) if !join.on.is_empty() => join_keys(join),
                node => Transformed::no(node),
            };
            let joined = node.transformed;
            let node = node.data;
            let schema = super::checked::input_schema(&node)?;
            if !may_mix(&node, &schema)? {
                return Ok(Transformed::new_transformed(node, joined));
            }
            // Where expressions name output columns, the names stay those the plan was built
            // with (the literal's type is part of a name).
            let names = matches!(
                node,
                LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_) | LogicalPlan::Window(_)
            )
            .then(NamePreserver::new_for_projection);
            let mut out = node.map_expressions(|e| {
                let saved = names.as_ref().map(|n| n.save(&e));
                let out = e.transform_up(|e| Ok(beside_floats(e, &schema)))?;
                Ok(match (saved, out.transformed) {
                    (Some(saved), true) => Transformed::yes(saved.restore(out.data)),
                    _ => out,
                })
            })?;
            out.transformed |= joined;
            Ok(out)
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_decimal_literals_beside_floats"
    }
}

/// A `UNION` column that is a float in one input: a decimal literal for it in another input
/// (`SELECT name, 0.0 FROM a UNION ALL SELECT name, score FROM b`) becomes a `DOUBLE`, and a
/// decimal column there is cast to one. The union's own schema is derived again from its inputs
/// by DataFusion's type coercion.
fn union_columns(union: Union) -> DfResult<Transformed<LogicalPlan>> {
    let Union { mut inputs, schema } = union;
    let mut floats = vec![false; schema.fields().len()];
    for (i, changed) in floats.iter_mut().enumerate() {
        let float = inputs.iter().any(|p| {
            p.schema()
                .fields()
                .get(i)
                .is_some_and(|f| is_float_type(f.data_type()))
        });
        if !float {
            continue;
        }
        for input in inputs.iter_mut() {
            if let Some(p) = column_as_float(input, i)? {
                *input = Arc::new(p);
                *changed = true;
            }
        }
    }
    if !floats.contains(&true) {
        return Ok(Transformed::no(LogicalPlan::Union(Union {
            inputs,
            schema,
        })));
    }
    // DataFusion's coercion starts from the union's schema, which took the first input's types.
    let schema = as_floats(&schema, &floats)?;
    Ok(Transformed::yes(LogicalPlan::Union(Union {
        inputs,
        schema,
    })))
}

/// `schema` with the columns marked in `floats` typed `DOUBLE`.
fn as_floats(schema: &DFSchema, floats: &[bool]) -> DfResult<Arc<DFSchema>> {
    let fields = schema
        .iter()
        .zip(floats)
        .map(|((q, f), float)| {
            let f = match float {
                true => Arc::new(f.as_ref().clone().with_data_type(DataType::Float64)),
                false => Arc::clone(f),
            };
            (q.cloned(), f)
        })
        .collect();
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )?))
}

/// `plan` with its `i`th column, a decimal literal, as a `DOUBLE` literal of the same name.
fn literal_column_as_float(plan: &LogicalPlan, i: usize) -> DfResult<Option<LogicalPlan>> {
    if let LogicalPlan::Values(values) = plan {
        // `… UNION ALL VALUES (0.25)`: every row's cell a decimal literal.
        let floats: Option<Vec<f64>> = values
            .values
            .iter()
            .map(|row| row.get(i).and_then(decimal_literal))
            .collect();
        let Some(floats) = floats else {
            return Ok(None);
        };
        let mut rows = values.values.clone();
        for (row, v) in rows.iter_mut().zip(floats) {
            row[i] = Df::Literal(ScalarValue::Float64(Some(v)), None);
        }
        let mut marked = vec![false; values.schema.fields().len()];
        marked[i] = true;
        return Ok(Some(LogicalPlan::Values(Values {
            schema: as_floats(&values.schema, &marked)?,
            values: rows,
        })));
    }
    let LogicalPlan::Projection(projection) = plan else {
        return Ok(None);
    };
    let Some(e) = projection.expr.get(i) else {
        return Ok(None);
    };
    let mut inner = e;
    while let Df::Alias(alias) = inner {
        inner = &alias.expr;
    }
    let Some(v) = decimal_literal(inner) else {
        return Ok(None);
    };
    let mut expr = projection.expr.clone();
    let saved = NamePreserver::new_for_projection().save(e);
    expr[i] = saved.restore(Df::Literal(ScalarValue::Float64(Some(v)), None));
    Ok(Some(LogicalPlan::Projection(Projection::try_new(
        expr,
        Arc::clone(&projection.input),
    )?)))
}

/// `plan` with its `i`th column as a `DOUBLE` when it is a decimal: a literal becomes a `DOUBLE`
/// literal, any other decimal is cast (in a projection over `plan`, of the same name).
fn column_as_float(plan: &LogicalPlan, i: usize) -> DfResult<Option<LogicalPlan>> {
    if let Some(p) = literal_column_as_float(plan, i)? {
        return Ok(Some(p));
    }
    let schema = plan.schema();
    if !schema
        .fields()
        .get(i)
        .is_some_and(|f| is_decimal_type(f.data_type()))
    {
        return Ok(None);
    }
    let expr = schema
        .iter()
        .enumerate()
        .map(|(j, (q, f))| {
            let column = Df::Column(Column::new(q.cloned(), f.name()));
            match j == i {
                true => as_double_cast(column).alias_qualified(q.cloned(), f.name()),
                false => column,
            }
        })
        .collect();
    Ok(Some(LogicalPlan::Projection(Projection::try_new(
        expr,
        Arc::new(plan.clone()),
    )?)))
}

/// A join's equality keys (`USING`, or an `ON` DataFusion took apart) pair a float with a
/// decimal: the decimal is cast to `DOUBLE`.
fn join_keys(mut join: Join) -> Transformed<LogicalPlan> {
    let mut changed = false;
    let (left, right) = (join.left.schema(), join.right.schema());
    for (l, r) in join.on.iter_mut() {
        let (lt, rt) = (
            l.get_type(left.as_ref() as &dyn ExprSchema),
            r.get_type(right.as_ref() as &dyn ExprSchema),
        );
        let (Ok(lt), Ok(rt)) = (lt, rt) else {
            continue;
        };
        let decimal = match (is_float_type(&lt), is_float_type(&rt)) {
            (true, false) if is_decimal_type(&rt) => r,
            (false, true) if is_decimal_type(&lt) => l,
            _ => continue,
        };
        cast_in_place(decimal);
        changed = true;
    }
    Transformed::new_transformed(LogicalPlan::Join(join), changed)
}

/// Whether `node`'s expressions may put a decimal beside a float: a decimal literal, a subquery
/// (which may answer one), a decimal column of its input or a cast to a decimal.
fn may_mix(node: &LogicalPlan, schema: &DFSchema) -> DfResult<bool> {
    if schema
        .fields()
        .iter()
        .any(|f| is_decimal_type(f.data_type()))
    {
        return Ok(true);
    }
    super::checked::any_expression(node, |e| {
        decimal_literal(e).is_some()
            || matches!(e, Df::InSubquery(_) | Df::ScalarSubquery(_))
            || matches!(e, Df::Cast(c) if is_decimal_type(c.field.data_type()))
            || matches!(e, Df::TryCast(c) if is_decimal_type(c.field.data_type()))
    })
}

/// The value of `e` as a `DOUBLE` when it is a decimal literal (negated or not).
fn decimal_literal(e: &Df) -> Option<f64> {
    match e {
        Df::Literal(
            v @ (ScalarValue::Decimal128(Some(_), ..) | ScalarValue::Decimal256(Some(_), ..)),
            _,
        ) => {
            // The literal's text read as a float, as DataFusion would have parsed it.
            v.to_string().parse().ok()
        }
        Df::Negative(inner) => decimal_literal(inner).map(|v| -v),
        _ => None,
    }
}

fn is_float(e: &Df, schema: &DFSchema) -> bool {
    e.get_type(schema as &dyn ExprSchema)
        .is_ok_and(|t| is_float_type(&t))
}

fn is_float_type(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

fn is_decimal_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

fn as_double_cast(e: Df) -> Df {
    Df::Cast(Cast::new(Box::new(e), DataType::Float64))
}

/// Replace `e` by `CAST(e AS DOUBLE)`.
fn cast_in_place(e: &mut Df) {
    let inner = std::mem::replace(e, Df::Literal(ScalarValue::Null, None));
    *e = as_double_cast(inner);
}

/// `group`'s decimals as `DOUBLE`s when one of its other members is a float: a decimal
/// literal (or a subquery answering one) becomes a `DOUBLE` literal, any other decimal value is
/// cast.
fn unify(group: &mut [&mut Df], schema: &DFSchema) -> bool {
    let types: Vec<Option<DataType>> = group
        .iter()
        .map(|e| match literal_like(e) {
            true => None,
            false => e.get_type(schema as &dyn ExprSchema).ok(),
        })
        .collect();
    if !types.iter().flatten().any(is_float_type) {
        return false;
    }
    let mut changed = false;
    for (e, t) in group.iter_mut().zip(types) {
        if let Some(v) = decimal_literal(e) {
            **e = Df::Literal(ScalarValue::Float64(Some(v)), None);
            changed = true;
        } else if let Df::ScalarSubquery(sq) = &mut **e
            && t.is_none()
        {
            changed |= as_float_column(sq);
        } else if t.as_ref().is_some_and(is_decimal_type) {
            cast_in_place(e);
            changed = true;
        }
    }
    changed
}

/// A decimal literal, or a subquery answering one (`f > (SELECT 0.5)`).
fn literal_like(e: &Df) -> bool {
    match e {
        Df::ScalarSubquery(sq) => matches!(literal_column_as_float(&sq.subquery, 0), Ok(Some(_))),
        e => decimal_literal(e).is_some(),
    }
}

/// `subquery`'s first column, a decimal literal, as a `DOUBLE` literal.
fn as_float_column(subquery: &mut Subquery) -> bool {
    replace_first_column(subquery, literal_column_as_float)
}

/// `subquery` with its first column replaced by what `to_float` makes of its plan, if anything.
fn replace_first_column(
    subquery: &mut Subquery,
    to_float: fn(&LogicalPlan, usize) -> DfResult<Option<LogicalPlan>>,
) -> bool {
    match to_float(&subquery.subquery, 0) {
        Ok(Some(plan)) => {
            subquery.subquery = Arc::new(plan);
            true
        }
        _ => false,
    }
}

/// Functions whose arguments DataFusion coerces to one type.
const UNIFYING: &[&str] = &[
    "coalesce",
    "nvl",
    "nvl2",
    "ifnull",
    "nullif",
    "greatest",
    "least",
    "make_array",
];

fn beside_floats(mut e: Df, schema: &DFSchema) -> Transformed<Df> {
    let mut changed = false;
    if let Df::InSubquery(InSubquery { expr, subquery, .. }) = &mut e {
        // `f IN (SELECT 0.5)`, `f IN (SELECT d …)`; `d IN (SELECT f …)`.
        if is_float(expr, schema) {
            changed |= replace_first_column(subquery, column_as_float);
        } else if subquery
            .subquery
            .schema()
            .fields()
            .first()
            .is_some_and(|f| is_float_type(f.data_type()))
            && expr
                .get_type(schema as &dyn ExprSchema)
                .is_ok_and(|t| is_decimal_type(&t))
        {
            cast_in_place(expr);
            changed = true;
        }
    }
    for mut group in unified_groups(&mut e) {
        changed |= unify(&mut group, schema);
    }
    match changed {
        true => Transformed::yes(e),
        false => Transformed::no(e),
    }
}

/// Whether `op` compares two values.
pub(super) fn comparison(op: Operator) -> bool {
    matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom
    )
}

/// The operands of `e` that DataFusion's type coercion brings to one type: both sides of a
/// comparison, `BETWEEN`'s three, `IN`'s value and list, `CASE`'s results (and its operand with
/// the `WHEN` values), the arguments of [`UNIFYING`] functions.
pub(super) fn unified_groups(e: &mut Df) -> Vec<Vec<&mut Df>> {
    match e {
        Df::BinaryExpr(BinaryExpr { left, op, right }) if comparison(*op) => {
            vec![vec![left.as_mut(), right.as_mut()]]
        }
        Df::Between(Between {
            expr, low, high, ..
        }) => vec![vec![expr.as_mut(), low.as_mut(), high.as_mut()]],
        Df::InList(InList { expr, list, .. }) => {
            vec![
                std::iter::once(expr.as_mut())
                    .chain(list.iter_mut())
                    .collect(),
            ]
        }
        Df::Case(Case {
            expr,
            when_then_expr,
            else_expr,
        }) => {
            let (whens, thens): (Vec<_>, Vec<_>) = when_then_expr
                .iter_mut()
                .map(|(w, t)| (w.as_mut(), t.as_mut()))
                .unzip();
            let results = thens.into_iter().chain(else_expr.as_deref_mut()).collect();
            match expr.as_deref_mut() {
                Some(base) => vec![results, std::iter::once(base).chain(whens).collect()],
                None => vec![results],
            }
        }
        Df::ScalarFunction(ScalarFunction { func, args }) if UNIFYING.contains(&func.name()) => {
            vec![args.iter_mut().collect()]
        }
        _ => Vec::new(),
    }
}

/// Types for parameters DataFusion types poorly:
/// - one typed from a decimal literal beside it (`? * 1.5`, `? > 0.5`) is a `DOUBLE`, as it was
///   when literals were: typed `DECIMAL(2,1)`, a bound 2.75 was rounded to 2.8 and 100 refused
///   as too large (one typed from a column keeps the column's type);
/// - one in `LIMIT` or `OFFSET`, which DataFusion leaves untyped (clients saw a string), is a
///   `BIGINT`.
///
/// A placeholder compared with a timestamp of seconds or milliseconds is typed microseconds
/// ([`timestamp_placeholders`]), unless the same placeholder is used elsewhere too (`SET at =
/// $1 WHERE at < $1`), where it keeps the column's type: DataFusion refuses one placeholder of
/// two types.
pub(crate) fn parameter_types(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    let retyped = parameter_types_with(plan.clone(), true)?;
    match retyped.get_parameter_types() {
        Ok(_) => Ok(retyped),
        Err(_) => parameter_types_with(plan, false),
    }
}

/// [`parameter_types`], retyping placeholders compared with timestamps when `timestamps`.
fn parameter_types_with(plan: LogicalPlan, timestamps: bool) -> DfResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let limit = matches!(node, LogicalPlan::Limit(_));
        node.map_expressions(|e| {
            e.transform_up(|mut e| {
                let changed = match &mut e {
                    Df::Placeholder(p) if limit && p.field.is_none() => {
                        p.field = Some(Arc::new(Field::new(&p.id, DataType::Int64, true)));
                        true
                    }
                    // Arithmetic too: DataFusion types `? * 1.5` from the literal.
                    Df::BinaryExpr(BinaryExpr { left, op, right }) => {
                        let comparison = comparison(*op);
                        let mut both = [left.as_mut(), right.as_mut()];
                        float_placeholders(&mut both)
                            | (timestamps && comparison && timestamp_placeholders(&mut both))
                    }
                    e => unified_groups(e).into_iter().fold(false, |c, mut group| {
                        float_placeholders(&mut group)
                            | (timestamps && timestamp_placeholders(&mut group))
                            | c
                    }),
                };
                Ok(match changed {
                    true => Transformed::yes(e),
                    false => Transformed::no(e),
                })
            })
        })
    })
    .data()
}

/// Placeholders of `group` typed as a timestamp of seconds or milliseconds (as the column
/// beside them), retyped microseconds, as PostgreSQL types a parameter `timestamp`: a bound
/// `'… 12:00:00.5'` was cast to the column's unit, and so truncated, before anything compared
/// it (`at >= ?` took 12:00:00 in). A value below the column's unit is then compared as the
/// value it is (`temporal_strings::SubUnitValues`).
fn timestamp_placeholders(group: &mut [&mut Df]) -> bool {
    use arrow::datatypes::TimeUnit;
    let mut changed = false;
    for e in group.iter_mut() {
        if let Df::Placeholder(p) = &mut **e
            && let Some(field) = &p.field
            && let DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, zone) =
                field.data_type()
        {
            let finer = DataType::Timestamp(TimeUnit::Microsecond, zone.clone());
            p.field = Some(Arc::new(field.as_ref().clone().with_data_type(finer)));
            changed = true;
        }
    }
    changed
}

/// Placeholders of `group` typed as one of its decimal literals, retyped `DOUBLE`.
fn float_placeholders(group: &mut [&mut Df]) -> bool {
    let literal_types: Vec<DataType> = group
        .iter()
        .filter_map(|e| match e {
            Df::Literal(v, _) if decimal_literal(e).is_some() => Some(v.data_type()),
            _ => None,
        })
        .collect();
    let mut changed = false;
    for e in group.iter_mut() {
        if let Df::Placeholder(p) = &mut **e
            && let Some(field) = &p.field
            && literal_types.contains(field.data_type())
        {
            p.field = Some(Arc::new(
                field.as_ref().clone().with_data_type(DataType::Float64),
            ));
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn exponents_are_written_out_as_postgresql_reads_them() {
        for (text, want) in [
            ("1e10", Some("10000000000")),
            ("1E+3", Some("1000")),
            ("1.5e-3", Some("0.0015")),
            ("1.50e1", Some("15.0")),
            ("2.5e1", Some("25")),
            (".5e1", Some("5")),
            ("5.e-1", Some("0.5")),
            ("0e5", Some("0")),
            ("00012.5e-1", Some("1.25")),
            ("1_000e2", Some("100000")),
            ("6.022e23", Some("602200000000000000000000")),
            ("1e-76", Some(&format!("0.{}1", "0".repeat(75)))),
            ("1e-77", None),
            ("1e76", None),
            ("1e400", None),
            ("1e99999999999999999999", None),
            ("1e", None),
            ("e5", None),
            ("12", None),
        ] {
            assert_eq!(plain(text).as_deref(), want, "{text}");
        }
    }
}
