//! Bulk ingest (`CommandStatementIngest`): decode the command into a runtime
//! [`IngestRequest`]; the create/append/replace rules live in the runtime, shared with
//! `CREATE TABLE AS`.
//!
//! | ADBC mode       | if_exists | if_not_exist |
//! |-----------------|-----------|--------------|
//! | `create`        | FAIL      | CREATE       |
//! | `append`        | APPEND    | FAIL         |
//! | `replace`       | REPLACE   | CREATE       |
//! | `create_append` | APPEND    | CREATE       |
//!
//! `apiary.partition_by` (comma-separated columns) in the command's options partitions a frame
//! the ingest creates, `apiary.cluster_by` clusters it (`CLUSTER BY`); `apiary.merge_schema` = `true` (in the options, or set in the session
//! with `SET apiary.merge_schema = true`) lets an append add the columns the frame lacks
//! (nullable) instead of failing.

use std::sync::Arc;

use apiary_runtime::{IfExists, IfMissing, IngestRequest, WriteMode};
use apiary_storage::{FrameRef, Ident};
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};

use super::FlightSql;
use super::ticket::session_of;
use super::wire::arrow_messages;
use crate::auth::Principal;
use crate::error::{Error, Result};

/// The write mode an ingest command asks for.
fn write_mode(cmd: &CommandStatementIngest) -> Result<WriteMode> {
    let opts = cmd
        .table_definition_options
        .as_ref()
        .ok_or_else(|| Error::invalid("ingest needs table_definition_options"))?;
    let if_missing = match TableNotExistOption::try_from(opts.if_not_exist) {
        Ok(TableNotExistOption::Create) => IfMissing::Create,
        Ok(TableNotExistOption::Fail) => IfMissing::Fail,
        _ => return Err(Error::invalid("ingest needs if_not_exist to be specified")),
    };
    let if_exists = match TableExistsOption::try_from(opts.if_exists) {
        Ok(TableExistsOption::Fail) => IfExists::Fail,
        Ok(TableExistsOption::Append) => IfExists::Append,
        Ok(TableExistsOption::Replace) => IfExists::Replace,
        _ => return Err(Error::invalid("ingest needs if_exists to be specified")),
    };
    let columns = |key: &str| {
        cmd.options.get(key).map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
    };
    let partition_by = columns("apiary.partition_by");
    let cluster_by = columns("apiary.cluster_by");
    let merge_schema = match cmd.options.get("apiary.merge_schema").map(|v| v.trim()) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(Error::invalid(format!(
                "apiary.merge_schema is true or false, not {v:?}"
            )));
        }
    };
    Ok(WriteMode {
        if_exists,
        if_missing,
        partition_by,
        cluster_by,
        merge_schema,
    })
}

impl FlightSql {
    pub(super) async fn ingest(
        &self,
        who: &Principal,
        cmd: CommandStatementIngest,
        stream: PeekableFlightDataStream,
    ) -> Result<i64> {
        let mut mode = write_mode(&cmd)?;
        if cmd.temporary {
            return Err(Error::Unimplemented(
                "temporary frames are not supported".into(),
            ));
        }
        if cmd.transaction_id.is_some() {
            return Err(Error::Unimplemented(
                "transactions are not supported".into(),
            ));
        }
        let session = session_of(who)?;
        // `SET apiary.merge_schema = true` earlier in the session asks for it too.
        mode.merge_schema |= apiary_runtime::merges_schema(&session.options);
        let frame = FrameRef::new(
            match cmd.catalog.as_deref().filter(|c| !c.is_empty()) {
                Some(c) => Ident::parse(c)?,
                None => session.hive.clone(),
            },
            match cmd.schema.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => Ident::parse(s)?,
                None => session.box_name.clone(),
            },
            Ident::parse(&cmd.table)?,
        );
        let mut batches = arrow_messages(stream);
        // The first message carries the schema; read until it is known (or the stream ends).
        let first = batches.next().await.transpose()?;
        let incoming: Option<SchemaRef> = batches.schema().cloned();
        let schema = incoming
            .clone()
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        // Batches flow from the client straight into cells; nothing is buffered whole.
        let rest =
            futures::stream::iter(first.map(Ok)).chain(batches.map_err(|e| {
                datafusion::error::DataFusionError::External(Box::new(Error::from(e)))
            }));
        let data = Box::pin(RecordBatchStreamAdapter::new(schema, rest));
        let request = IngestRequest {
            frame,
            mode,
            user: who.user.clone(),
            role: who.role,
        };
        let rows = self.service.ingest(request, incoming, data).await?;
        Ok(rows as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_flight::sql::TableDefinitionOptions;

    fn cmd(
        if_not_exist: TableNotExistOption,
        if_exists: TableExistsOption,
    ) -> CommandStatementIngest {
        CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions {
                if_not_exist: if_not_exist as i32,
                if_exists: if_exists as i32,
            }),
            table: "t".into(),
            ..Default::default()
        }
    }

    #[test]
    fn adbc_modes_map_to_write_modes() {
        let m = write_mode(&cmd(TableNotExistOption::Create, TableExistsOption::Append)).unwrap();
        assert_eq!(
            (m.if_exists, m.if_missing),
            (IfExists::Append, IfMissing::Create)
        );
        let m = write_mode(&cmd(TableNotExistOption::Fail, TableExistsOption::Append)).unwrap();
        assert_eq!(
            (m.if_exists, m.if_missing),
            (IfExists::Append, IfMissing::Fail)
        );
        assert!(
            write_mode(&cmd(
                TableNotExistOption::Unspecified,
                TableExistsOption::Append
            ))
            .is_err()
        );
        assert!(write_mode(&CommandStatementIngest::default()).is_err());
        let mut c = cmd(TableNotExistOption::Create, TableExistsOption::Fail);
        c.options
            .insert("apiary.cluster_by".into(), " l_shipdate , x,".into());
        c.options.insert("apiary.partition_by".into(), "r".into());
        let m = write_mode(&c).unwrap();
        assert_eq!(
            m.cluster_by,
            Some(vec!["l_shipdate".to_string(), "x".to_string()])
        );
        assert_eq!(m.partition_by, Some(vec!["r".to_string()]));
        let m = write_mode(&cmd(TableNotExistOption::Create, TableExistsOption::Fail)).unwrap();
        assert_eq!(m.cluster_by, None);
    }
}
