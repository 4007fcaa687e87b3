//! Functions Apiary answers differently from DataFusion.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::common::{Result as DfResult, ScalarValue, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, Expr, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility, binary_expr, lit,
};
use datafusion::physical_expr_common::datum::apply;

use super::Session;

/// `version()`: the server a client talks to, then the engine under it
/// (`Apiary 0.1.0 (Apache DataFusion 55.2.0, x86_64 on linux)`), as a database server answers.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Version {
    signature: Signature,
}

/// The text `version()` answers.
pub(super) fn version_text() -> String {
    format!(
        "Apiary {} (Apache DataFusion {}, {} on {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS,
    )
}

impl ScalarUDFImpl for Version {
    fn name(&self) -> &str {
        "version"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if !args.is_empty() {
            return plan_err!("version() takes no arguments");
        }
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            version_text(),
        ))))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(DOC.get_or_init(|| {
            Documentation::builder(
                DocSection {
                    include: true,
                    label: "Other Functions",
                    description: None,
                },
                "Returns the version of Apiary and of the DataFusion engine under it.",
                "version()",
            )
            .build()
        }))
    }
}

/// Apiary's functions, each replacing DataFusion's of the same name or adding one it lacks.
pub(super) fn own() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(ScalarUDF::from(Version {
            signature: Signature::nullary(Volatility::Immutable),
        })),
        Arc::new(ScalarUDF::from(Modulo {
            signature: Signature::user_defined(Volatility::Immutable),
        })),
    ]
}

/// `mod(a, b)`, the remainder `a % b`, as PostgreSQL, Oracle, MySQL and DuckDB spell it
/// (DataFusion has only the operator: "Invalid function 'mod'"). Its arguments are typed as
/// the operator's and it is planned as the operator.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Modulo {
    signature: Signature,
}

impl Modulo {
    fn coercer<'a>(types: &'a [DataType]) -> DfResult<BinaryTypeCoercer<'a>> {
        match types {
            [a, b] => Ok(BinaryTypeCoercer::new(a, &Operator::Modulo, b)),
            _ => plan_err!("mod() takes 2 arguments, {} given", types.len()),
        }
    }
}

impl ScalarUDFImpl for Modulo {
    fn name(&self) -> &str {
        "mod"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let (a, b) = Self::coercer(arg_types)?.get_input_types()?;
        Ok(vec![a, b])
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Self::coercer(arg_types)?.get_result_type()
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        match <[Expr; 2]>::try_from(args) {
            Ok([a, b]) => Ok(ExprSimplifyResult::Simplified(binary_expr(
                a,
                Operator::Modulo,
                b,
            ))),
            Err(args) => Ok(ExprSimplifyResult::Original(args)),
        }
    }

    // Simplified to the operator while planning; were it not, computed as the operator is.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [a, b] = <[ColumnarValue; 2]>::try_from(args.args)
            .map_err(|_| DataFusionError::Plan("mod() takes 2 arguments".into()))?;
        apply(&a, &b, arrow::compute::kernels::numeric::rem)
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(DOC.get_or_init(|| {
            Documentation::builder(
                DocSection {
                    include: true,
                    label: "Math Functions",
                    description: None,
                },
                "Returns the remainder of dividing the first argument by the second, as the % \
                 operator does.",
                "mod(dividend, divisor)",
            )
            .build()
        }))
    }
}

/// The clock functions [`Microseconds`] wraps (`current_timestamp` is `now`'s alias).
const CLOCKS: [&str; 2] = ["now", "current_time"];

/// `registered`'s [`CLOCKS`], answering microseconds.
pub(super) fn microseconds(
    registered: impl Fn(&str) -> Option<Arc<ScalarUDF>>,
) -> Vec<Arc<ScalarUDF>> {
    CLOCKS
        .iter()
        .filter_map(|name| registered(name))
        .map(|inner| Arc::new(ScalarUDF::new_from_impl(Microseconds { inner })))
        .collect()
}

/// `now()`, `current_timestamp` and `current_time` in microseconds, as PostgreSQL and DuckDB
/// answer them and as Apiary's `TIMESTAMP` and `TIME` mean. DataFusion's answer nanoseconds
/// from a clock that has them: a Python DB-API client (ADBC's `fetchall`) could not turn such a
/// value into a `datetime` and failed `SELECT now()` ("not safely convertible to
/// microseconds") unless pandas was installed. The instant is floored to its microsecond.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Microseconds {
    inner: Arc<ScalarUDF>,
}

/// `t` with nanoseconds read as microseconds.
fn in_micros(t: &DataType) -> DataType {
    match t {
        DataType::Timestamp(TimeUnit::Nanosecond, zone) => {
            DataType::Timestamp(TimeUnit::Microsecond, zone.clone())
        }
        DataType::Time64(TimeUnit::Nanosecond) => DataType::Time64(TimeUnit::Microsecond),
        t => t.clone(),
    }
}

impl ScalarUDFImpl for Microseconds {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    // DataFusion's `now` takes the session's time zone from here.
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Microseconds {
            inner: Arc::new(inner),
        }))
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(in_micros(&self.inner.return_type(args)?))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let field = self.inner.return_field_from_args(args)?;
        let micros = in_micros(field.data_type());
        Ok(Arc::new(field.as_ref().clone().with_data_type(micros)))
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        Ok(match self.inner.simplify(args, info)? {
            ExprSimplifyResult::Simplified(Expr::Literal(v, meta)) => {
                let floored = match v {
                    ScalarValue::TimestampNanosecond(n, zone) => {
                        ScalarValue::TimestampMicrosecond(n.map(|n| n.div_euclid(1000)), zone)
                    }
                    ScalarValue::Time64Nanosecond(n) => {
                        ScalarValue::Time64Microsecond(n.map(|n| n.div_euclid(1000)))
                    }
                    v => v,
                };
                ExprSimplifyResult::Simplified(Expr::Literal(floored, meta))
            }
            other => other,
        })
    }

    // Both are simplified to a literal while planning; were one not, its answer is cast.
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let micros = args.return_field.data_type().clone();
        self.inner.invoke_with_args(args)?.cast_to(&micros, None)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// A function whose answer is fixed for the statement's session: who runs it and where
/// (`current_user`, `session_user`, `current_role`, `current_catalog`, `current_schema()`,
/// `current_database()`).
/// Registered into each statement's state, and replaced by its value when the statement is
/// simplified, so a plan that travels to another node carries a literal.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionValue {
    name: &'static str,
    value: String,
    about: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for SessionValue {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    // Never NULL: the literal it simplifies to must keep the field's nullability.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        if !args.arg_fields.is_empty() {
            return plan_err!("{}() takes no arguments", self.name);
        }
        Ok(Arc::new(Field::new(self.name, DataType::Utf8, false)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            self.value.clone(),
        ))))
    }

    fn simplify(&self, _args: Vec<Expr>, _info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        Ok(ExprSimplifyResult::Simplified(lit(self.value.clone())))
    }

    fn documentation(&self) -> Option<&Documentation> {
        // Documentation is static per name; the six are known.
        static DOCS: OnceLock<Vec<(&'static str, Documentation)>> = OnceLock::new();
        let docs = DOCS.get_or_init(|| {
            SESSION_FUNCTIONS
                .iter()
                .map(|(name, about)| {
                    let doc = Documentation::builder(
                        DocSection {
                            include: true,
                            label: "Other Functions",
                            description: None,
                        },
                        *about,
                        if matches!(
                            *name,
                            "current_schema" | "current_role" | "current_database"
                        ) {
                            format!("{name}()")
                        } else {
                            name.to_string()
                        },
                    )
                    .build();
                    (*name, doc)
                })
                .collect()
        });
        docs.iter().find(|(n, _)| *n == self.name).map(|(_, d)| d)
    }
}

/// The session functions, with what each answers.
const SESSION_FUNCTIONS: [(&str, &str); 6] = [
    (
        "current_user",
        "Returns the name of the user running the statement.",
    ),
    (
        "session_user",
        "Returns the name of the user who opened the session (the same as current_user).",
    ),
    (
        "current_role",
        "Returns the role of the user running the statement: admin, writer or reader.",
    ),
    (
        "current_catalog",
        "Returns the session's current hive (catalog), as set with USE.",
    ),
    (
        "current_schema",
        "Returns the session's current box (schema), as set with USE.",
    ),
    (
        "current_database",
        "Returns the session's current hive (catalog), as PostgreSQL names its database.",
    ),
];

/// The session functions for one statement's `session`.
pub(super) fn for_session(session: &Session) -> Vec<Arc<ScalarUDF>> {
    SESSION_FUNCTIONS
        .iter()
        .map(|(name, about)| {
            let value = match *name {
                "current_user" | "session_user" => session.user.clone(),
                "current_role" => session.role.as_str().to_string(),
                "current_catalog" | "current_database" => session.hive.to_string(),
                _ => session.box_name.to_string(),
            };
            Arc::new(ScalarUDF::from(SessionValue {
                name,
                value,
                about,
                signature: Signature::nullary(Volatility::Stable),
            }))
        })
        .collect()
}
