//! What the server says about itself: SqlInfo, XDBC type info, and the schemas of the key
//! commands (Apiary frames declare no keys).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity,
    SqlSupportedTransaction, SqlSupportedTransactions, XdbcDataType,
};

/// The limits SqlInfo reports (JDBC's `DatabaseMetaData.getMaxColumnsInTable`,
/// `getMaxStatementLength`); 0 says none is known.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ReportedLimits {
    /// `--max-columns`.
    pub columns_in_table: i64,
    /// `--max-sql-bytes`.
    pub statement_length: i64,
    /// `--max-sql-relations`.
    pub tables_in_select: i64,
    /// `--ticket-ttl` in milliseconds: how long a prepared statement's handle lasts from
    /// when it was prepared or last bound.
    pub statement_timeout_ms: i32,
}

/// Every SqlInfo id this server answers (an empty GetSqlInfo request returns all of them).
pub(super) fn sql_info(limits: ReportedLimits) -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Apiary");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerSubstraitMinVersion, "");
    b.append(SqlInfo::FlightSqlServerSubstraitMaxVersion, "");
    // Transactions: every statement commits on its own (one Delta commit per frame).
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(
        SqlInfo::FlightSqlServerStatementTimeout,
        limits.statement_timeout_ms,
    );
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);

    b.append(SqlInfo::SqlDdlCatalog, true);
    b.append(SqlInfo::SqlDdlSchema, true);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i64,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i64,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i64,
    );
    let keywords: &[&str] = &[
        "HIVE",
        "BOX",
        "FRAME",
        "HIVES",
        "BOXES",
        "FRAMES",
        "PARTITIONED",
        "USE",
        "DESCRIBE",
        "EXPLAIN",
        "OVERWRITE",
    ];
    b.append(SqlInfo::SqlKeywords, keywords);
    let numeric: &[&str] = &[
        "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "exp", "floor", "ln", "log",
        "log10", "log2", "pi", "power", "round", "signum", "sin", "sqrt", "tan", "trunc",
    ];
    b.append(SqlInfo::SqlNumericFunctions, numeric);
    let string: &[&str] = &[
        "ascii",
        "btrim",
        "char_length",
        "concat",
        "initcap",
        "left",
        "length",
        "lower",
        "lpad",
        "ltrim",
        "md5",
        "repeat",
        "replace",
        "reverse",
        "right",
        "rpad",
        "rtrim",
        "split_part",
        "starts_with",
        "strpos",
        "substr",
        "translate",
        "trim",
        "upper",
    ];
    b.append(SqlInfo::SqlStringFunctions, string);
    let system: &[&str] = &["arrow_typeof", "version"];
    b.append(SqlInfo::SqlSystemFunctions, system);
    let datetime: &[&str] = &[
        "current_date",
        "current_time",
        "date_bin",
        "date_part",
        "date_trunc",
        "extract",
        "now",
        "to_timestamp",
    ];
    b.append(SqlInfo::SqlDatetimeFunctions, datetime);
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(
        SqlInfo::SqlSupportsConvert,
        BTreeMap::<i32, Vec<i32>>::new(),
    );
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportedGroupBy, 3i32);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlSupportedGrammar, 3i32);
    b.append(SqlInfo::SqlAnsi92SupportedLevel, 3i32);
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    // SqlOuterJoinsSupportLevel::SqlFullOuterJoins
    b.append(SqlInfo::SqlOuterJoinsSupportLevel, 2i32);
    b.append(SqlInfo::SqlSchemaTerm, "box");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "hive");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlSupportedSubqueries, 15i32);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlSupportedUnions, 3i32);
    for id in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        // 0: no limit known.
        b.append(id, 0i64);
    }
    b.append(SqlInfo::SqlMaxColumnsInTable, limits.columns_in_table);
    b.append(SqlInfo::SqlMaxStatementLength, limits.statement_length);
    b.append(SqlInfo::SqlMaxTablesInSelect, limits.tables_in_select);
    b.append(SqlInfo::SqlMaxColumnNameLength, 1024i64);
    b.append(
        SqlInfo::SqlDbSchemaNameLength,
        apiary_storage::paths::MAX_NAME_LEN as i64,
    );
    b.append(
        SqlInfo::SqlMaxCatalogNameLength,
        apiary_storage::paths::MAX_NAME_LEN as i64,
    );
    b.append(
        SqlInfo::SqlMaxTableNameLength,
        apiary_storage::paths::MAX_NAME_LEN as i64,
    );
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, true);
    b.append(
        SqlInfo::SqlDefaultTransactionIsolation,
        SqlSupportedTransactions::SqlTransactionUnspecified as i64,
    );
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, true);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, false);
    // SQL_RESULT_SET_TYPE_FORWARD_ONLY
    b.append(SqlInfo::SqlSupportedResultSetTypes, 2i32);
    for id in [
        SqlInfo::SqlSupportedConcurrenciesForResultSetUnspecified,
        SqlInfo::SqlSupportedConcurrenciesForResultSetForwardOnly,
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollSensitive,
        SqlInfo::SqlSupportedConcurrenciesForResultSetScrollInsensitive,
    ] {
        // SQL_RESULT_SET_CONCURRENCY_READ_ONLY
        b.append(id, 2i32);
    }
    b.append(SqlInfo::SqlBatchUpdatesSupported, true);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("static SqlInfo data builds")
}

fn xdbc(name: &str, data_type: XdbcDataType, size: Option<i32>, quoted: bool) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size: size,
        literal_prefix: quoted.then(|| "'".to_string()),
        literal_suffix: quoted.then(|| "'".to_string()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: quoted,
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        fixed_prec_scale: false,
        auto_increment: Some(false),
        local_type_name: Some(name.to_string()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    }
}

/// The SQL types a frame column can have.
pub(super) fn xdbc_info() -> XdbcTypeInfoData {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(xdbc("BOOLEAN", XdbcDataType::XdbcBit, Some(1), false));
    b.append(xdbc("TINYINT", XdbcDataType::XdbcTinyint, Some(3), false));
    b.append(xdbc("SMALLINT", XdbcDataType::XdbcSmallint, Some(5), false));
    b.append(xdbc("INT", XdbcDataType::XdbcInteger, Some(10), false));
    b.append(xdbc("BIGINT", XdbcDataType::XdbcBigint, Some(19), false));
    b.append(xdbc("REAL", XdbcDataType::XdbcReal, Some(24), false));
    b.append(xdbc("DOUBLE", XdbcDataType::XdbcDouble, Some(53), false));
    let mut dec = xdbc("DECIMAL", XdbcDataType::XdbcDecimal, Some(38), false);
    dec.create_params = Some(vec!["precision".into(), "scale".into()]);
    dec.minimum_scale = Some(0);
    dec.maximum_scale = Some(38);
    b.append(dec);
    b.append(xdbc(
        "VARCHAR",
        XdbcDataType::XdbcVarchar,
        Some(i32::MAX),
        true,
    ));
    b.append(xdbc(
        "VARBINARY",
        XdbcDataType::XdbcVarbinary,
        Some(i32::MAX),
        true,
    ));
    b.append(xdbc("DATE", XdbcDataType::XdbcDate, Some(10), true));
    b.append(xdbc(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        Some(26),
        true,
    ));
    b.build().expect("static XDBC data builds")
}

/// Schema of GetPrimaryKeys results (FlightSql.proto).
pub(super) fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        // FlightSql.proto's order (arrow-java's server puts key_sequence first; clients
        // generated from the .proto read by position).
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// Schema of GetExportedKeys, GetImportedKeys and GetCrossReference results.
pub(super) fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_info_has_the_ids_clients_read() {
        let data = sql_info(Default::default());
        let batch = data.record_batch(std::iter::empty()).unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::UInt32Array>()
            .unwrap();
        let ids: Vec<u32> = ids.values().to_vec();
        for id in (0..=11).chain([100, 101]).chain(500..=576) {
            assert!(ids.contains(&id), "SqlInfo {id} missing");
        }
    }
}
