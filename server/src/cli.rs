//! `apiary sql "<statements>"`: run statements against a storage root and print the results.

use apiary_runtime::{Output, Session};
use arrow::array::RecordBatch;
use futures::TryStreamExt;

use crate::assemble;
use crate::config::SqlArgs;

/// Run every statement in order; stop at the first error.
pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let engine = assemble::engine(&args.storage, &args.node).await?;
    let mut session = Session::new("local");
    let statements = engine.parse(&args.query)?;
    let mut out = std::io::stdout().lock();
    for stmt in &statements {
        match engine.execute(&mut session, stmt, None).await? {
            Output::Rows(stream) => {
                let schema = stream.schema();
                let batches: Vec<RecordBatch> = stream.try_collect().await?;
                print_batches(&mut out, &args.format, schema, &batches)?;
            }
            Output::Count(n) => {
                use std::io::Write;
                writeln!(out, "{n} row(s) written")?;
            }
            Output::Done => {
                use std::io::Write;
                writeln!(out, "OK")?;
            }
        }
    }
    Ok(())
}

fn print_batches(
    out: &mut impl std::io::Write,
    format: &str,
    schema: arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> anyhow::Result<()> {
    match format {
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        "json" => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        _ => {
            if batches.is_empty() {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}\n(0 rows)", names.join(" | "))?;
            } else {
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(batches)?
                )?;
            }
        }
    }
    Ok(())
}
