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

/// `apiary version`: this build and what it speaks.
pub fn version() -> String {
    format!(
        "apiary {}\n  Flight SQL over Arrow {} (tickets v{})\n  engine: DataFusion {}\n  tables: Delta Lake (delta-rs 1.1); objects in storage: format v1\n",
        env!("CARGO_PKG_VERSION"),
        arrow::ARROW_VERSION,
        apiary_proto::ENVELOPE_FORMAT_VERSION,
        datafusion::DATAFUSION_VERSION,
    )
}

/// `apiary health`: GET a node's `/healthz` (plain HTTP on the metrics listener) and succeed on
/// `200`. No HTTP client library: one request, one status line.
pub async fn health(args: &crate::config::HealthArgs) -> anyhow::Result<()> {
    use anyhow::{Context, bail};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = args
        .url
        .strip_prefix("http://")
        .context("--url must be an http:// URL")?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, "/healthz".to_string()),
    };
    let check = async {
        let mut conn = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = conn.read(&mut head).await?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status = line.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!(
                "{} answered {:?}",
                args.url,
                line.lines().next().unwrap_or("")
            );
        }
        Ok(())
    };
    tokio::time::timeout(args.timeout, check)
        .await
        .with_context(|| format!("{} did not answer within {:?}", args.url, args.timeout))?
}
