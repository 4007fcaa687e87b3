//! Functions Apiary answers differently from DataFusion.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::DataType;
use datafusion::common::{Result as DfResult, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, DocSection, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};

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

/// Apiary's functions, each replacing DataFusion's of the same name.
pub(super) fn own() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(ScalarUDF::from(Version {
        signature: Signature::nullary(Volatility::Immutable),
    }))]
}
