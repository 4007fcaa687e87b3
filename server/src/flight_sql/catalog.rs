//! Catalog metadata: GetCatalogs, GetDbSchemas, GetTables (with each hive's
//! `information_schema`, as SQL sees it), GetTableTypes, the key commands
//! (always empty: frames declare no keys), SqlInfo and XDBC types — each as one FlightInfo whose
//! ticket is the command itself, answered by one match.

use apiary_runtime::system::{SYSTEM_TABLES, SystemTables};
use apiary_storage::FrameRef;
use apiary_storage::paths::SYSTEM_HIVE;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow_flight::sql::metadata::{GetCatalogsBuilder, GetTablesBuilder};
use arrow_flight::sql::{Command, CommandGetDbSchemas, CommandGetTables};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::catalog::information_schema::{
    INFORMATION_SCHEMA, INFORMATION_SCHEMA_TABLES, InformationSchemaProvider,
};
use datafusion::catalog::{MemoryCatalogProviderList, SchemaProvider};
use futures::{StreamExt, TryStreamExt};
use prost::Message;

use super::FlightSql;
use super::sql_info::{foreign_keys_schema, primary_keys_schema};
use super::wire::wire_schema;
use crate::error::{Error, Result};

/// Table types in GetTables / GetTableTypes.
const FRAME_TABLE: &str = "TABLE";
const SYSTEM_TABLE: &str = "SYSTEM TABLE";
const VIEW: &str = "VIEW";
/// information_schema's tables: views over the catalog, which clients (as for PostgreSQL) list
/// apart from the user's own views.
const SYSTEM_VIEW: &str = "SYSTEM VIEW";

impl FlightSql {
    /// The schema a metadata command returns; `None` for commands that are not metadata.
    pub(super) fn metadata_schema(&self, cmd: &Command) -> Option<SchemaRef> {
        Some(match cmd {
            Command::CommandGetCatalogs(c) => c.into_builder().schema(),
            Command::CommandGetDbSchemas(c) => c.clone().into_builder().schema(),
            Command::CommandGetTables(c) => c.clone().into_builder().schema(),
            Command::CommandGetTableTypes(c) => c.into_builder().schema(),
            Command::CommandGetSqlInfo(_) => self.sql_info.schema(),
            Command::CommandGetXdbcTypeInfo(_) => self.xdbc.schema(),
            Command::CommandGetPrimaryKeys(_) => primary_keys_schema(),
            Command::CommandGetExportedKeys(_)
            | Command::CommandGetImportedKeys(_)
            | Command::CommandGetCrossReference(_) => foreign_keys_schema(),
            _ => return None,
        })
    }

    /// GetFlightInfo for a metadata command: its schema, and the command as the ticket.
    pub(super) fn metadata_info(
        &self,
        cmd: Command,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        let schema = self
            .metadata_schema(&cmd)
            .ok_or_else(|| Error::Unimplemented(format!("{} is not metadata", cmd.type_url())))?;
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(cmd.into_any().encode_to_vec()));
        Ok(FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(Error::encode("a FlightInfo"))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1))
    }

    /// DoGet of a metadata command: one batch.
    pub(super) async fn metadata_batch(&self, cmd: Command) -> Result<RecordBatch> {
        let build = Error::encode::<arrow_flight::error::FlightError>("a metadata result");
        match cmd {
            Command::CommandGetCatalogs(_) => self.catalogs_batch().await,
            Command::CommandGetDbSchemas(c) => self.schemas_batch(c).await,
            Command::CommandGetTables(c) => self.tables_batch(c).await,
            Command::CommandGetTableTypes(c) => {
                let mut b = c.into_builder();
                b.append(FRAME_TABLE);
                b.append(SYSTEM_TABLE);
                b.append(VIEW);
                b.append(SYSTEM_VIEW);
                b.build().map_err(build)
            }
            Command::CommandGetSqlInfo(c) => c.into_builder(&self.sql_info).build().map_err(build),
            Command::CommandGetXdbcTypeInfo(c) => c.into_builder(&self.xdbc).build().map_err(build),
            other => match self.metadata_schema(&other) {
                // Keys: Apiary frames declare none.
                Some(schema) => Ok(RecordBatch::new_empty(schema)),
                None => Err(Error::Unimplemented(format!(
                    "{} is not metadata",
                    other.type_url()
                ))),
            },
        }
    }

    async fn catalogs_batch(&self) -> Result<RecordBatch> {
        let mut b = GetCatalogsBuilder::new();
        for h in self.service.list_hives().await? {
            b.append(h.as_str());
        }
        b.append(SYSTEM_HIVE);
        b.build().map_err(Error::encode("GetCatalogs"))
    }

    async fn schemas_batch(&self, mut cmd: CommandGetDbSchemas) -> Result<RecordBatch> {
        // Filter here, with the bounded matcher: the builder would compile patterns to regexes.
        let catalog = cmd.catalog.take();
        let pattern = cmd.db_schema_filter_pattern.take();
        let wanted = |hive: &str, b: &str| {
            catalog.as_deref().is_none_or(|c| c == hive)
                && pattern.as_deref().is_none_or(|p| like(p, b))
        };
        let mut b = cmd.into_builder();
        for bx in self.service.list_boxes(None).await? {
            if wanted(bx.hive.as_str(), bx.name.as_str()) {
                b.append(bx.hive.as_str(), bx.name.as_str());
            }
        }
        // Every hive answers SQL on information_schema (as DataFusion's catalogs do).
        for hive in self.service.list_hives().await? {
            if wanted(hive.as_str(), INFORMATION_SCHEMA) {
                b.append(hive.as_str(), INFORMATION_SCHEMA);
            }
        }
        if wanted(SYSTEM_HIVE, INFORMATION_SCHEMA) {
            b.append(SYSTEM_HIVE, INFORMATION_SCHEMA);
        }
        let mut system_boxes: Vec<&str> = SYSTEM_TABLES.iter().map(|(bx, _)| *bx).collect();
        system_boxes.dedup();
        for bx in system_boxes {
            if wanted(SYSTEM_HIVE, bx) {
                b.append(SYSTEM_HIVE, bx);
            }
        }
        b.build().map_err(Error::encode("GetDbSchemas"))
    }

    async fn tables_batch(&self, mut cmd: CommandGetTables) -> Result<RecordBatch> {
        // Filter here, with the bounded matcher: the builder would compile patterns to regexes.
        let include_schema = cmd.include_schema;
        let catalog_filter = cmd.catalog.take();
        let schema_pattern = cmd.db_schema_filter_pattern.take();
        let table_pattern = cmd.table_name_filter_pattern.take();
        let types = std::mem::take(&mut cmd.table_types);
        let mut b: GetTablesBuilder = cmd.into_builder();
        let build = Error::encode::<arrow_flight::error::FlightError>("GetTables");
        let wants = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
        let matches =
            |pattern: &Option<String>, v: &str| pattern.as_ref().is_none_or(|p| like(p, v));
        if wants(SYSTEM_TABLE) {
            for (bx, t) in SYSTEM_TABLES {
                let selected = catalog_filter.as_ref().is_none_or(|c| c == SYSTEM_HIVE)
                    && matches(&schema_pattern, bx)
                    && matches(&table_pattern, t);
                if !selected {
                    continue;
                }
                let schema = match SystemTables::schema_of(bx, t) {
                    Some(s) if include_schema => annotate_schema(&s, SYSTEM_HIVE, bx, t),
                    _ => Schema::empty(),
                };
                b.append(SYSTEM_HIVE, bx, t, SYSTEM_TABLE, &schema)
                    .map_err(Error::encode("GetTables"))?;
            }
        }
        if wants(SYSTEM_VIEW) && matches(&schema_pattern, INFORMATION_SCHEMA) {
            // DataFusion's information_schema tables (views over the catalog).
            let mut hives: Vec<String> = self
                .service
                .list_hives()
                .await?
                .iter()
                .map(|h| h.as_str().to_string())
                .collect();
            hives.push(SYSTEM_HIVE.to_string());
            hives.retain(|h| catalog_filter.as_ref().is_none_or(|c| c == h));
            let tables: Vec<&str> = INFORMATION_SCHEMA_TABLES
                .iter()
                .copied()
                .filter(|t| matches(&table_pattern, t))
                .collect();
            if !hives.is_empty() && !tables.is_empty() {
                let provider = InformationSchemaProvider::new(std::sync::Arc::new(
                    MemoryCatalogProviderList::new(),
                ));
                for t in tables {
                    let schema = match provider.table(t).await {
                        Ok(Some(table)) if include_schema => Some(table.schema()),
                        _ => None,
                    };
                    for hive in &hives {
                        let schema = match &schema {
                            Some(s) => annotate_schema(s, hive, INFORMATION_SCHEMA, t),
                            None => Schema::empty(),
                        };
                        b.append(hive, INFORMATION_SCHEMA, t, SYSTEM_VIEW, &schema)
                            .map_err(Error::encode("GetTables"))?;
                    }
                }
            }
        }
        if !wants(FRAME_TABLE) && !wants(VIEW) {
            return b.build().map_err(build);
        }
        let mut selected = Vec::new();
        for bx in self.service.list_boxes(None).await? {
            if catalog_filter
                .as_ref()
                .is_some_and(|c| c != bx.hive.as_str())
                || !matches(&schema_pattern, bx.name.as_str())
            {
                continue;
            }
            for f in self.service.list_frames(&bx).await? {
                if matches(&table_pattern, f.as_str()) {
                    selected.push(FrameRef::new(bx.hive.clone(), bx.name.clone(), f));
                }
            }
        }
        // Schemas come from each frame's log: load a bounded number at once, in listing order.
        let service = &self.service;
        let mut entries = futures::stream::iter(selected.into_iter().map(|fr| async move {
            let entry = service.frame_entry(&fr, include_schema).await?;
            Ok::<_, Error>((fr, entry))
        }))
        .buffered(SCHEMA_LOADS_AT_ONCE);
        while let Some((fr, entry)) = entries.try_next().await? {
            let (hive, bx, f) = (fr.hive.as_str(), fr.box_name.as_str(), fr.name.as_str());
            // Dropped since it was listed.
            let Some(entry) = entry else { continue };
            let kind = if entry.view { VIEW } else { FRAME_TABLE };
            if !wants(kind) {
                continue;
            }
            let schema = match entry.schema {
                Some(s) => annotate_schema(&wire_schema(&s), hive, bx, f),
                None => Schema::empty(),
            };
            b.append(hive, bx, f, kind, &schema)
                .map_err(Error::encode("GetTables"))?;
        }
        b.build().map_err(build)
    }
}

/// Frame logs GetTables reads at once for `include_schema`.
const SCHEMA_LOADS_AT_ONCE: usize = 16;

/// One element of a metadata pattern.
#[derive(Clone, Copy, PartialEq)]
enum Pat {
    /// `%`: any run of characters.
    Any,
    /// `_`: one character.
    One,
    Char(char),
}

/// SQL `LIKE` with `%` and `_`, for metadata patterns, and `\` escaping the next character (the
/// search string escape SqlInfo announces: JDBC tools send `order\_items` for the exact
/// name). Iterative, with one backtrack point (the last `%`), so time is at most pattern ×
/// value and the stack is flat whatever the pattern.
pub(super) fn like(pattern: &str, value: &str) -> bool {
    let mut p: Vec<Pat> = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        p.push(match c {
            '%' => Pat::Any,
            '_' => Pat::One,
            // A trailing escape stands for itself.
            '\\' => Pat::Char(chars.next().unwrap_or('\\')),
            c => Pat::Char(c),
        });
    }
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        match p.get(pi) {
            Some(Pat::Any) => {
                star = Some((pi, vi));
                pi += 1;
            }
            Some(Pat::One) => {
                pi += 1;
                vi += 1;
            }
            Some(Pat::Char(c)) if *c == v[vi] => {
                pi += 1;
                vi += 1;
            }
            _ => match star {
                // Let the last % swallow one more character and try again.
                Some((sp, sv)) => {
                    star = Some((sp, sv + 1));
                    pi = sp + 1;
                    vi = sv + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == Pat::Any)
}

/// (precision, scale) as JDBC expects them for a column type.
fn precision_scale(dt: &DataType) -> (Option<i32>, Option<i32>) {
    match dt {
        DataType::Boolean => (Some(1), None),
        DataType::Int8 => (Some(3), Some(0)),
        DataType::Int16 => (Some(5), Some(0)),
        DataType::Int32 => (Some(10), Some(0)),
        DataType::Int64 => (Some(19), Some(0)),
        DataType::UInt8 => (Some(3), Some(0)),
        DataType::UInt16 => (Some(5), Some(0)),
        DataType::UInt32 => (Some(10), Some(0)),
        DataType::UInt64 => (Some(20), Some(0)),
        DataType::Float32 => (Some(24), None),
        DataType::Float64 => (Some(53), None),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => (Some(*p as i32), Some(*s as i32)),
        DataType::Date32 | DataType::Date64 => (Some(10), None),
        // Characters of `yyyy-mm-dd hh:mm:ss[.f…]`, and the digits of the fraction.
        DataType::Timestamp(unit, _) => {
            let digits = fraction_digits(unit);
            (Some(19 + digits + (digits > 0) as i32), Some(digits))
        }
        // `hh:mm:ss[.f…]`.
        DataType::Time32(unit) | DataType::Time64(unit) => {
            let digits = fraction_digits(unit);
            (Some(8 + digits + (digits > 0) as i32), Some(digits))
        }
        _ => (None, None),
    }
}

fn fraction_digits(unit: &TimeUnit) -> i32 {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    }
}

/// A frame's schema with the `ARROW:FLIGHT:SQL:*` metadata clients read in GetTables.
fn annotate_schema(schema: &Schema, hive: &str, box_name: &str, frame: &str) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut md = std::collections::HashMap::new();
            md.insert(
                "ARROW:FLIGHT:SQL:CATALOG_NAME".to_string(),
                hive.to_string(),
            );
            md.insert(
                "ARROW:FLIGHT:SQL:SCHEMA_NAME".to_string(),
                box_name.to_string(),
            );
            md.insert("ARROW:FLIGHT:SQL:TABLE_NAME".to_string(), frame.to_string());
            md.insert(
                "ARROW:FLIGHT:SQL:TYPE_NAME".to_string(),
                apiary_storage::schema::column_type_name(f),
            );
            // A declared `VARCHAR(n)`'s precision is n, as JDBC's column size.
            let (p, s) = match apiary_storage::lengths::Declared::of(f) {
                Some(declared) => (Some(declared.length() as i32), None),
                None => precision_scale(f.data_type()),
            };
            if let Some(p) = p {
                md.insert("ARROW:FLIGHT:SQL:PRECISION".to_string(), p.to_string());
            }
            if let Some(s) = s {
                md.insert("ARROW:FLIGHT:SQL:SCALE".to_string(), s.to_string());
            }
            md.insert(
                "ARROW:FLIGHT:SQL:IS_AUTO_INCREMENT".to_string(),
                "0".to_string(),
            );
            md.insert(
                "ARROW:FLIGHT:SQL:IS_CASE_SENSITIVE".to_string(),
                if matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) {
                    "1"
                } else {
                    "0"
                }
                .to_string(),
            );
            md.insert("ARROW:FLIGHT:SQL:IS_READ_ONLY".to_string(), "0".to_string());
            md.insert(
                "ARROW:FLIGHT:SQL:IS_SEARCHABLE".to_string(),
                "1".to_string(),
            );
            f.as_ref().clone().with_metadata(md)
        })
        .collect();
    Schema::new(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_and_scale_of_decimals_times_and_timestamps() {
        use DataType::*;
        assert_eq!(precision_scale(&Decimal64(18, 4)), (Some(18), Some(4)));
        assert_eq!(precision_scale(&Decimal256(50, 3)), (Some(50), Some(3)));
        assert_eq!(
            precision_scale(&Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
            (Some(26), Some(6))
        );
        assert_eq!(
            precision_scale(&Timestamp(TimeUnit::Second, None)),
            (Some(19), Some(0))
        );
        assert_eq!(
            precision_scale(&Timestamp(TimeUnit::Nanosecond, None)),
            (Some(29), Some(9))
        );
        assert_eq!(
            precision_scale(&Time32(TimeUnit::Millisecond)),
            (Some(12), Some(3))
        );
        assert_eq!(precision_scale(&UInt64), (Some(20), Some(0)));
    }

    #[test]
    fn like_patterns() {
        assert!(like("%", "anything"));
        assert!(like("%", ""));
        assert!(like("", ""));
        assert!(!like("", "x"));
        assert!(like("or%", "orders"));
        assert!(like("o_ders", "orders"));
        assert!(!like("o_ders", "oders"));
        assert!(like("%der%", "orders"));
        assert!(like("%d%r%", "orders"));
        assert!(like("%s", "orders"));
        assert!(!like("%x", "orders"));
        assert!(!like("x%", "orders"));
        assert!(like("a%b%c", "aXbYc"));
        assert!(!like("a%b%c", "aXbY"));
        // `\` escapes the next character, as SqlInfo's search string escape says.
        assert!(like(r"order\_1", "order_1"));
        assert!(!like(r"order\_1", "orderx1"));
        assert!(like("order_1", "orderx1"));
        assert!(like(r"50\%", "50%"));
        assert!(!like(r"50\%", "500"));
        assert!(like(r"a\\b", r"a\b"));
        assert!(like("end\\", "end\\"));
    }

    #[test]
    fn like_is_bounded_on_hostile_patterns() {
        // 200,000 '%' once overflowed a recursive matcher's stack; a short pattern that does
        // not match once backtracked for hours.
        let many = "%".repeat(200_000);
        assert!(like(&many, "orders"));
        let evil = "%a%a%a%a%a%a%a%a%b";
        let value = "a".repeat(200);
        assert!(!like(evil, &value));
    }
}
