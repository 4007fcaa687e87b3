//! SQL type names as other databases read them: `TIMESTAMP` and `TIME` are microseconds (as in
//! PostgreSQL, DuckDB, Spark and Delta itself, where DataFusion alone reads nanoseconds), and
//! `TIMESTAMP(p)` / `TIME(p)` take any precision 0–9, in the smallest unit that holds `p`
//! fractional digits.
//!
//! A string type with a length (`VARCHAR(n)`, `CHARACTER VARYING(n)`, `CHAR(n)`,
//! `CHARACTER(n)`, `NVARCHAR(n)`) is a string whose field declares the length
//! ([`apiary_storage::lengths`]): a frame created with it keeps the length and checks every value
//! written, and a cast to it cuts the value to length ([`casts_cut`]).

use std::ops::ControlFlow;
use std::sync::Arc;

use apiary_storage::lengths::Declared;
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result as DfResult, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::logical_expr::{Cast, Expr};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    CharacterLength, DataType as SqlType, ExactNumberInfo, Expr as SqlExpr, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, ObjectName, TimezoneInfo,
    Value,
};

/// Plans the time types and the binary names other databases use (`VARBINARY`, what the
/// metadata calls binary columns, `BINARY`, `BLOB`), and refuses decimals of negative scale;
/// every other type is DataFusion's.
#[derive(Debug)]
pub(super) struct SqlTypes {
    /// Zone of `TIMESTAMP WITH TIME ZONE` (DataFusion's `execution.time_zone`).
    pub time_zone: Option<Arc<str>>,
    /// Whether strings are planned as views (`sql_parser.map_string_types_to_utf8view`).
    pub views: bool,
}

fn unit(column_type: &str, precision: Option<u64>) -> DfResult<TimeUnit> {
    Ok(match precision {
        None => TimeUnit::Microsecond,
        Some(0) => TimeUnit::Second,
        Some(1..=3) => TimeUnit::Millisecond,
        Some(4..=6) => TimeUnit::Microsecond,
        Some(7..=9) => TimeUnit::Nanosecond,
        Some(p) => return plan_err!("{column_type}({p}): the precision must be 0 to 9"),
    })
}

impl SqlTypes {
    fn plan(&self, sql_type: &SqlType) -> DfResult<Option<DataType>> {
        Ok(Some(match sql_type {
            SqlType::Timestamp(p, tz) => {
                let zone = match tz {
                    TimezoneInfo::None | TimezoneInfo::WithoutTimeZone => None,
                    TimezoneInfo::WithTimeZone | TimezoneInfo::Tz => {
                        Some(self.time_zone.clone().unwrap_or_else(|| "+00:00".into()))
                    }
                };
                DataType::Timestamp(unit("TIMESTAMP", *p)?, zone)
            }
            SqlType::TimestampNtz(p) | SqlType::Datetime(p) => {
                DataType::Timestamp(unit("TIMESTAMP", *p)?, None)
            }
            SqlType::Time(p, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
                match unit("TIME", *p)? {
                    u @ (TimeUnit::Second | TimeUnit::Millisecond) => DataType::Time32(u),
                    u => DataType::Time64(u),
                }
            }
            // JSON is text, read by the `json` functions and operators.
            SqlType::JSON | SqlType::JSONB => match self.views {
                true => DataType::Utf8View,
                false => DataType::Utf8,
            },
            // Lengths are not kept: a frame stores binary values of any length.
            SqlType::Varbinary(_) | SqlType::Binary(_) | SqlType::Blob(_) => DataType::Binary,
            SqlType::Numeric(ExactNumberInfo::PrecisionAndScale(p, s))
            | SqlType::Decimal(ExactNumberInfo::PrecisionAndScale(p, s))
            | SqlType::Dec(ExactNumberInfo::PrecisionAndScale(p, s))
                if *s < 0 =>
            {
                // DataFusion's kernels do not all take them (avg divided by zero), and other
                // Delta readers store none.
                return plan_err!(
                    "DECIMAL({p}, {s}): the scale must be 0 or more (round with round(x, {s}) \
                     instead)"
                );
            }
            _ => return Ok(None),
        }))
    }
}

/// `statement` with each cast to a string type with a length written as the cast to a string
/// cut to that length: `x::varchar(3)` is `left(CAST(x AS VARCHAR), 3)`, as PostgreSQL's
/// explicit casts cut. A cast so carries no declared length of its own: a `VALUES` list or a
/// `UNION` mixing it with plain strings failed ("Inconsistent metadata"), and a frame created
/// from such a `UNION` refused the other rows. Column definitions keep their length.
pub(super) fn casts_cut(statement: &mut DfStatement) {
    super::visit_parsed(statement, &mut super::EachExpr(cut));
}

fn cut(e: &mut SqlExpr) -> ControlFlow<()> {
    let SqlExpr::Cast { data_type, .. } = e else {
        return ControlFlow::Continue(());
    };
    // A length that cannot be is left for the type planner to refuse.
    let Ok(Some(declared)) = declared(data_type) else {
        return ControlFlow::Continue(());
    };
    *data_type = SqlType::Varchar(None);
    let cast = std::mem::replace(e, SqlExpr::Value(Value::Null.into()));
    let length = SqlExpr::Value(Value::Number(declared.length().to_string(), false).into());
    let arg = |e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e));
    *e = SqlExpr::Function(Function {
        name: ObjectName::from(vec![Ident::new("left")]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![arg(cast), arg(length)],
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    });
    ControlFlow::Continue(())
}

/// The declared type of a string type with a length, if `sql_type` is one (`VARCHAR(MAX)` and
/// a type without a length have none).
fn declared(sql_type: &SqlType) -> DfResult<Option<Declared>> {
    let (char, length) = match sql_type {
        SqlType::Varchar(l)
        | SqlType::CharacterVarying(l)
        | SqlType::CharVarying(l)
        | SqlType::Nvarchar(l) => (false, l),
        SqlType::Char(l) | SqlType::Character(l) => (true, l),
        _ => return Ok(None),
    };
    match length {
        Some(CharacterLength::IntegerLength { length, .. }) => Declared::new(char, *length)
            .map(Some)
            .map_err(|e| plan_datafusion_err!("{e}")),
        Some(CharacterLength::Max) | None => Ok(None),
    }
}

impl TypePlanner for SqlTypes {
    fn plan_type_field(&self, sql_type: &SqlType) -> DfResult<Option<FieldRef>> {
        let string = || {
            let t = match self.views {
                true => DataType::Utf8View,
                false => DataType::Utf8,
            };
            Field::new("", t, true)
        };
        if let Some(declared) = declared(sql_type)? {
            return Ok(Some(Arc::new(declared.on(string()))));
        }
        // Spellings without a length DataFusion does not plan: any string.
        if let SqlType::CharacterVarying(_)
        | SqlType::CharVarying(_)
        | SqlType::Nvarchar(_)
        | SqlType::Character(_)
        | SqlType::Varchar(Some(CharacterLength::Max)) = sql_type
        {
            return Ok(Some(Arc::new(string())));
        }
        Ok(self
            .plan(sql_type)?
            .map(|dt| Arc::new(Field::new("", dt, true))))
    }
}

/// `generate_series` and `range` over timestamps: DataFusion's accept nanosecond timestamps
/// only, so with `TIMESTAMP` meaning microseconds their timestamp arguments are widened to
/// nanoseconds before the call.
#[derive(Debug)]
pub(super) struct NanosecondArgs(pub Arc<dyn TableFunctionImpl>);

impl TableFunctionImpl for NanosecondArgs {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let exprs: Vec<Expr> = args.exprs().iter().map(widen).collect();
        self.0
            .call_with_args(TableFunctionArgs::new(&exprs, args.session()))
    }
}

fn widen(e: &Expr) -> Expr {
    let nanos = |v: Option<i64>, per: i64| v.map(|v| v.checked_mul(per));
    let literal = |v: Option<Option<i64>>, tz: &Option<Arc<str>>, e: &Expr| match v {
        Some(None) => e.clone(), // beyond nanoseconds: the function reports it
        Some(Some(n)) => Expr::Literal(ScalarValue::TimestampNanosecond(Some(n), tz.clone()), None),
        None => Expr::Literal(ScalarValue::TimestampNanosecond(None, tz.clone()), None),
    };
    match e {
        Expr::Literal(ScalarValue::TimestampSecond(v, tz), _) => {
            literal(nanos(*v, 1_000_000_000), tz, e)
        }
        Expr::Literal(ScalarValue::TimestampMillisecond(v, tz), _) => {
            literal(nanos(*v, 1_000_000), tz, e)
        }
        Expr::Literal(ScalarValue::TimestampMicrosecond(v, tz), _) => {
            literal(nanos(*v, 1_000), tz, e)
        }
        Expr::Cast(Cast { expr, field }) => match field.data_type() {
            DataType::Timestamp(unit, tz) if *unit != TimeUnit::Nanosecond => {
                Expr::Cast(Cast::new(
                    expr.clone(),
                    DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
                ))
            }
            _ => e.clone(),
        },
        _ => e.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_precision_has_a_unit() {
        let t = SqlTypes {
            time_zone: Some("+00:00".into()),
            views: true,
        };
        let ts = |p, tz| {
            t.plan(&SqlType::Timestamp(p, tz))
                .unwrap()
                .expect("planned")
        };
        assert_eq!(
            ts(None, TimezoneInfo::None),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        for (p, u) in [
            (0, TimeUnit::Second),
            (1, TimeUnit::Millisecond),
            (3, TimeUnit::Millisecond),
            (5, TimeUnit::Microsecond),
            (7, TimeUnit::Nanosecond),
            (9, TimeUnit::Nanosecond),
        ] {
            assert_eq!(
                ts(Some(p), TimezoneInfo::WithTimeZone),
                DataType::Timestamp(u, Some("+00:00".into()))
            );
        }
        assert!(
            t.plan(&SqlType::Timestamp(Some(10), TimezoneInfo::None))
                .is_err()
        );
        assert_eq!(
            t.plan(&SqlType::Time(Some(0), TimezoneInfo::None)).unwrap(),
            Some(DataType::Time32(TimeUnit::Second))
        );
        assert_eq!(
            t.plan(&SqlType::Time(None, TimezoneInfo::None)).unwrap(),
            Some(DataType::Time64(TimeUnit::Microsecond))
        );
        assert_eq!(t.plan(&SqlType::Date).unwrap(), None);
    }
}
