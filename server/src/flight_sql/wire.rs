//! What travels on the wire: result types and schemas, FlightData encoding, bound parameters
//! (Arrow IPC), DoPut streams, action results.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::{IpcMessage, SchemaAsIpc};
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use prost_types::Timestamp;
use tonic::{Response, Status};

use crate::error::{Error, Result};

/// A stream of responses as tonic wants it.
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Target size of one FlightData message; arrow-flight splits larger batches by rows. Well under
/// the 4 MiB gRPC default that many clients keep.
const MAX_FLIGHT_DATA: usize = 2 * 1024 * 1024;

/// The type a result column travels in: view types become their plain forms, which every client
/// (JDBC up to v18 included) reads, and which avoids shipping shared view buffers with every
/// batch (arrow-rs #7185); dictionaries and run-end encodings are sent decoded, as their value
/// type (the encoder would hydrate dictionaries anyway, and announcing them encoded made
/// FlightInfo and the stream disagree).
pub(super) fn wire_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Dictionary(_, values) => wire_type(values),
        DataType::RunEndEncoded(_, values) => wire_type(values.data_type()),
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        // Large lists travel as lists: arrow-flight 59's encoder rewrites a LargeList field of
        // the schema it sends into a List while the batches stay large (the client then reads a
        // schema that differs from FlightInfo's); a batch is at most a few MiB, so 32-bit
        // offsets always suffice.
        DataType::ListView(f) | DataType::LargeListView(f) | DataType::LargeList(f) => {
            DataType::List(Arc::new(wire_field(f)))
        }
        DataType::List(f) => DataType::List(Arc::new(wire_field(f))),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(Arc::new(wire_field(f)), *n),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Arc::new(wire_field(f)))
                .collect::<Vec<_>>()
                .into(),
        ),
        DataType::Map(f, sorted) => DataType::Map(Arc::new(wire_field(f)), *sorted),
        other => other.clone(),
    }
}

fn wire_field(f: &Field) -> Field {
    f.clone().with_data_type(wire_type(f.data_type()))
}

/// The schema announced in FlightInfo and sent first on every DoGet stream.
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| wire_field(f))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// Whether a result planned now has the columns `announced` before (a prepared statement's
/// schema, a ticket's): the same names and, in wire types, the same values. Two plannings of one
/// statement may differ in what cannot change a value (list item names, nested nullability);
/// anything else means what it reads has changed since (a table replaced, a view redefined), and
/// a stream cast to the old schema by position would put values under other names or truncate
/// them.
pub(super) fn same_columns(announced: &Schema, planned: &Schema) -> bool {
    announced.fields().len() == planned.fields().len()
        && announced
            .fields()
            .iter()
            .zip(planned.fields())
            .all(|(a, p)| a.name() == p.name() && same_values(a.data_type(), p.data_type()))
}

/// [`same_columns`] for wire types: equal, but for list item names and nested nullability.
fn same_values(a: &DataType, b: &DataType) -> bool {
    use DataType::*;
    match (a, b) {
        (List(x), List(y)) | (Map(x, _), Map(y, _)) => same_values(x.data_type(), y.data_type()),
        (FixedSizeList(x, n), FixedSizeList(y, m)) => {
            n == m && same_values(x.data_type(), y.data_type())
        }
        (Struct(x), Struct(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(x, y)| x.name() == y.name() && same_values(x.data_type(), y.data_type()))
        }
        _ => a == b,
    }
}

/// `announced`, each column nullable where `planned`'s is: the values are `planned`'s.
pub(super) fn nullable_as(announced: &Schema, planned: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        announced
            .fields()
            .iter()
            .zip(planned.fields())
            .map(|(a, p)| {
                let nullable = a.is_nullable() || p.is_nullable();
                Arc::new(a.as_ref().clone().with_nullable(nullable))
            })
            .collect::<Vec<_>>(),
        announced.metadata().clone(),
    ))
}

/// Make a batch carry exactly the announced schema (types cast, nullability relabelled).
fn to_wire(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// Encode a result stream as FlightData in its wire schema: the schema first (even for zero
/// rows), batches split to at most [`MAX_FLIGHT_DATA`] per message.
pub(super) fn encode_stream(
    stream: datafusion::execution::SendableRecordBatchStream,
) -> BoxStream<arrow_flight::FlightData> {
    encode_stream_as(stream, None)
}

/// [`encode_stream`] in the schema a FlightInfo announced (every batch is cast to it), or in the
/// stream's own wire schema.
pub(super) fn encode_stream_as(
    stream: datafusion::execution::SendableRecordBatchStream,
    announced: Option<SchemaRef>,
) -> BoxStream<arrow_flight::FlightData> {
    let schema = announced
        .filter(|a| a.fields().len() == stream.schema().fields().len())
        .unwrap_or_else(|| wire_schema(&stream.schema()));
    let wire = schema.clone();
    let batches = stream.map(move |r| match r {
        Ok(b) => to_wire(b, &wire).map_err(FlightError::Arrow),
        Err(e) => Err(FlightError::Tonic(Box::new(
            Error::Runtime(apiary_runtime::Error::from(e)).into(),
        ))),
    });
    let encoder = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_max_flight_data_size(MAX_FLIGHT_DATA)
        .build(batches);
    Box::pin(encoder.map_err(|e| {
        match e {
            FlightError::Tonic(s) => *s,
            // Casting our own result to its wire type failed: ours to fix.
            other => Error::Encode {
                context: "a result batch",
                source: Box::new(other),
            }
            .into(),
        }
    }))
}

/// A one-batch result (metadata listings).
pub(super) fn one_batch(batch: RecordBatch) -> BoxStream<arrow_flight::FlightData> {
    let schema = batch.schema();
    encode_stream(Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(vec![Ok(batch)]),
        ),
    ))
}

/// IPC-encode a schema the way FlightInfo and prepared-statement results carry it.
pub(super) fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(Error::encode("a schema message"))?;
    Ok(bytes)
}

/// Bound parameters travel as an Arrow IPC stream.
pub(super) fn encode_params(batches: &[RecordBatch]) -> Result<bytes::Bytes> {
    let Some(first) = batches.first() else {
        return Ok(bytes::Bytes::new());
    };
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &first.schema())
            .map_err(Error::client_data("parameters"))?;
        for b in batches {
            w.write(b).map_err(Error::client_data("parameters"))?;
        }
        w.finish().map_err(Error::client_data("parameters"))?;
    }
    Ok(buf.into())
}

/// Parameter rows of an IPC stream, one `Vec<ScalarValue>` per row.
pub(super) fn decode_param_rows(bytes: &[u8]) -> Result<Vec<Vec<ScalarValue>>> {
    if bytes.is_empty() {
        return Ok(vec![]);
    }
    // Client bytes: a decoder panic is bad data, not a crash.
    std::panic::catch_unwind(|| decode_params_unguarded(bytes)).unwrap_or_else(|_| {
        Err(Error::invalid(
            "malformed parameters (an Arrow IPC message does not match its header)",
        ))
    })
}

fn decode_params_unguarded(bytes: &[u8]) -> Result<Vec<Vec<ScalarValue>>> {
    check_ipc_stream(bytes)?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(Error::client_data("parameters"))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(Error::client_data("parameters"))?;
        rows.extend(batch_rows(&batch)?);
    }
    Ok(rows)
}

/// The most bytes one client message may decode to (compressed buffers declare their size;
/// arrow-ipc allocates what they declare, and an allocation that fails aborts the process).
const MAX_DECODED_MESSAGE: u64 = 1 << 30;

/// Rows a client message may declare beyond one per bit of data it holds. A column of the null
/// type, or a batch of no columns, holds no data at all whatever its length: a 325-byte message
/// declaring 2^40 rows aborted the process when its rows were turned into parameters or its
/// NULLs cast to a column's type.
const FREE_ROWS: u64 = 1 << 16;

/// Most bytes of dictionaries one client stream may hold: arrow-flight's decoder keeps each
/// dictionary, and appends a delta to the one before, so a stream of deltas and no batch grew
/// the server's memory without bound.
const MAX_STREAM_DICTIONARY_BYTES: u64 = 256 << 20;

/// Check the framing of an Arrow IPC stream a client sent before arrow-ipc reads it: every
/// message's metadata and body fit in the bytes given, and each passes [`check_ipc_message`].
fn check_ipc_stream(bytes: &[u8]) -> Result<()> {
    let bad = |what: &str| Error::invalid(format!("malformed parameters: {what}"));
    let mut at = 0usize;
    let word = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    while at < bytes.len() {
        let mut len = word(at).ok_or_else(|| bad("a truncated message length"))?;
        at += 4;
        if len == 0xFFFF_FFFF {
            len = word(at).ok_or_else(|| bad("a truncated message length"))?;
            at += 4;
        }
        if len == 0 {
            return Ok(()); // end of stream
        }
        let len = usize::try_from(len).map_err(|_| bad("a message length"))?;
        let header = bytes
            .get(at..at.saturating_add(len))
            .ok_or_else(|| bad("a message longer than the bytes sent"))?;
        at += len;
        let msg = arrow::ipc::root_as_message(header)
            .map_err(|e| bad(&format!("a message header that does not parse ({e})")))?;
        let body_len =
            usize::try_from(msg.bodyLength()).map_err(|_| bad("a negative body length"))?;
        let body = bytes
            .get(at..at.saturating_add(body_len))
            .ok_or_else(|| bad("a message body longer than the bytes sent"))?;
        check_ipc_message(header, body)?;
        at += body_len;
    }
    Ok(())
}

/// Check one Arrow IPC message (flatbuffer header and body) a client sent before it is decoded:
/// the body is as long as the header says, every buffer lies inside it, and what the message
/// declares it decodes to (compressed buffers state their own size) is bounded.
pub(super) fn check_ipc_message(header: &[u8], body: &[u8]) -> Result<()> {
    let bad = |what: String| Error::invalid(format!("malformed Arrow IPC message: {what}"));
    let msg = arrow::ipc::root_as_message(header)
        .map_err(|e| bad(format!("its header does not parse ({e})")))?;
    let declared = u64::try_from(msg.bodyLength()).map_err(|_| bad("negative body".into()))?;
    if declared > body.len() as u64 {
        return Err(bad(format!(
            "its header declares a body of {declared} bytes, {} were sent",
            body.len()
        )));
    }
    let batch = msg
        .header_as_record_batch()
        .or_else(|| msg.header_as_dictionary_batch().and_then(|d| d.data()));
    let Some(batch) = batch else {
        return Ok(());
    };
    let compressed = batch.compression().is_some();
    let total = decoded_bytes(batch, body, compressed)?;
    if total > MAX_DECODED_MESSAGE {
        return Err(bad(format!(
            "it declares {total} bytes of data; one message may hold at most {MAX_DECODED_MESSAGE}"
        )));
    }
    // Every row of real data costs at least a bit (a validity or boolean bit).
    let most_rows = total.saturating_mul(8).saturating_add(FREE_ROWS);
    let declared = std::iter::once(batch.length())
        .chain(
            batch
                .nodes()
                .iter()
                .flat_map(|n| n.iter())
                .map(|n| n.length()),
        )
        .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
        .max()
        .unwrap_or(0);
    if declared > most_rows {
        return Err(bad(format!(
            "it declares {declared} rows for {total} bytes of data; a message may declare at \
             most {FREE_ROWS} rows more than it has bits of data"
        )));
    }
    Ok(())
}

/// The bytes `batch`'s buffers decode to (a compressed buffer states its own length), every
/// buffer checked to lie inside `body`.
fn decoded_bytes(batch: arrow::ipc::RecordBatch<'_>, body: &[u8], compressed: bool) -> Result<u64> {
    let bad = |what: String| Error::invalid(format!("malformed Arrow IPC message: {what}"));
    let mut total: u64 = 0;
    for b in batch.buffers().iter().flat_map(|v| v.iter()) {
        let (offset, length) = (b.offset(), b.length());
        let range = u64::try_from(offset)
            .ok()
            .zip(u64::try_from(length).ok())
            .and_then(|(o, l)| Some((o, o.checked_add(l)?)))
            .filter(|(_, end)| *end <= body.len() as u64)
            .ok_or_else(|| bad("a buffer outside its body".into()))?;
        let decoded = match compressed {
            // Each compressed buffer starts with its uncompressed length (-1: stored as is).
            true if length >= 8 => {
                let at = range.0 as usize;
                let mut word = [0u8; 8];
                word.copy_from_slice(&body[at..at + 8]);
                u64::try_from(i64::from_le_bytes(word)).unwrap_or(length as u64)
            }
            _ => length as u64,
        };
        total = total.saturating_add(decoded);
    }
    Ok(total)
}

/// The rows of a batch of parameters.
pub(super) fn batch_rows(batch: &RecordBatch) -> Result<Vec<Vec<ScalarValue>>> {
    (0..batch.num_rows())
        .map(|r| {
            batch
                .columns()
                .iter()
                .map(|c| {
                    ScalarValue::try_from_array(c, r)
                        .map_err(|e| Error::invalid(format!("parameter value in row {r}: {e}")))
                })
                .collect()
        })
        .collect()
}

/// The Arrow messages of a DoPut stream; descriptor-only messages (empty IPC header) carry no
/// data and are skipped. Decoding bytes a client sent may panic inside arrow-ipc (a body shorter
/// than its header declares): such a panic is caught and answered as bad data.
pub(super) fn arrow_messages(stream: PeekableFlightDataStream) -> ClientBatches {
    let mut dictionaries = Dictionaries::default();
    ClientBatches {
        inner: FlightRecordBatchStream::new_from_flight_data(
            stream
                .try_filter(|fd| futures::future::ready(!fd.data_header.is_empty()))
                .map_err(FlightError::from)
                .and_then(move |fd| {
                    let checked = check_ipc_message(&fd.data_header, &fd.data_body)
                        .and_then(|_| dictionaries.take(&fd.data_header, &fd.data_body));
                    futures::future::ready(
                        checked
                            .map(|_| fd)
                            .map_err(|e| FlightError::ProtocolError(e.to_string())),
                    )
                }),
        ),
        poisoned: false,
    }
}

/// The dictionaries a client stream's decoder holds, by id: a dictionary replaces the one
/// before under its id, a delta is appended to it.
#[derive(Default)]
struct Dictionaries {
    bytes: std::collections::HashMap<i64, u64>,
}

impl Dictionaries {
    /// Account for one message (checked by [`check_ipc_message`]); refuse it when the
    /// dictionaries would hold more than [`MAX_STREAM_DICTIONARY_BYTES`].
    fn take(&mut self, header: &[u8], body: &[u8]) -> Result<()> {
        let Some(d) = arrow::ipc::root_as_message(header)
            .ok()
            .and_then(|m| m.header_as_dictionary_batch())
        else {
            return Ok(());
        };
        let size = d
            .data()
            .map(|b| decoded_bytes(b, body, b.compression().is_some()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let held = self.bytes.entry(d.id()).or_default();
        *held = match d.isDelta() {
            true => held.saturating_add(size),
            false => size,
        };
        let total = self
            .bytes
            .values()
            .fold(0u64, |sum, b| sum.saturating_add(*b));
        match total > MAX_STREAM_DICTIONARY_BYTES {
            true => Err(Error::invalid(format!(
                "the stream's dictionaries would hold more than {MAX_STREAM_DICTIONARY_BYTES} \
                 bytes; send plain arrays"
            ))),
            false => Ok(()),
        }
    }
}

/// Batches decoded from a client's stream, with decoder panics turned into errors.
pub(super) struct ClientBatches {
    inner: FlightRecordBatchStream,
    poisoned: bool,
}

impl ClientBatches {
    /// The stream's schema, once its first message was read.
    pub(super) fn schema(&self) -> Option<&SchemaRef> {
        self.inner.schema()
    }
}

impl Stream for ClientBatches {
    type Item = Result<RecordBatch, FlightError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.poisoned {
            return std::task::Poll::Ready(None);
        }
        let this = &mut *self;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            this.inner.poll_next_unpin(cx)
        })) {
            Ok(p) => p,
            Err(_) => {
                this.poisoned = true;
                std::task::Poll::Ready(Some(Err(FlightError::ProtocolError(
                    "malformed Arrow IPC message (its body does not match its header)".into(),
                ))))
            }
        }
    }
}

/// The batches of rows of a DoPut stream of parameters, at most `max_rows` rows in all (counted
/// as they arrive; batches of no rows are dropped).
pub(super) async fn read_batches(
    stream: PeekableFlightDataStream,
    max_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let mut s = arrow_messages(stream);
    let (mut out, mut rows) = (Vec::new(), 0usize);
    while let Some(b) = s.next().await {
        let b = b?;
        rows = rows.saturating_add(b.num_rows());
        if rows > max_rows {
            return Err(Error::invalid(format!(
                "more than {max_rows} parameter rows; the limit is {max_rows} \
                 (--max-param-rows); use bulk ingest for more"
            )));
        }
        if b.num_rows() > 0 {
            out.push(b);
        }
    }
    Ok(out)
}

/// One protobuf message as the result of an action.
pub(super) fn action_result(msg: impl Message) -> Response<BoxStream<arrow_flight::Result>> {
    let body = msg.encode_to_vec();
    Response::new(Box::pin(futures::stream::iter(vec![Ok(
        arrow_flight::Result { body: body.into() },
    )])))
}

pub(super) fn timestamp_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

#[cfg(test)]
mod wire_type_tests {
    use super::*;
    use arrow::datatypes::{IntervalUnit, TimeUnit, UnionFields, UnionMode};

    /// No encoding a client might not read, and nothing arrow-flight's encoder rewrites.
    fn plain(dt: &DataType) -> bool {
        match dt {
            DataType::Dictionary(..)
            | DataType::RunEndEncoded(..)
            | DataType::Utf8View
            | DataType::BinaryView
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::LargeList(_) => false,
            DataType::List(f) | DataType::FixedSizeList(f, _) | DataType::Map(f, _) => {
                plain(f.data_type())
            }
            DataType::Struct(fs) => fs.iter().all(|f| plain(f.data_type())),
            _ => true,
        }
    }

    #[test]
    fn every_type_travels_plain_and_batches_cast_to_it() {
        let item = |dt: DataType| Arc::new(Field::new("item", dt, true));
        let types = vec![
            DataType::Null,
            DataType::Boolean,
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt8,
            DataType::UInt16,
            DataType::UInt32,
            DataType::UInt64,
            DataType::Float16,
            DataType::Float32,
            DataType::Float64,
            DataType::Timestamp(TimeUnit::Second, None),
            DataType::Timestamp(TimeUnit::Millisecond, Some("Asia/Tokyo".into())),
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Date32,
            DataType::Date64,
            DataType::Time32(TimeUnit::Second),
            DataType::Time32(TimeUnit::Millisecond),
            DataType::Time64(TimeUnit::Microsecond),
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Duration(TimeUnit::Millisecond),
            DataType::Interval(IntervalUnit::MonthDayNano),
            DataType::Binary,
            DataType::FixedSizeBinary(16),
            DataType::LargeBinary,
            DataType::BinaryView,
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Utf8View,
            DataType::List(item(DataType::Utf8View)),
            DataType::ListView(item(DataType::Int64)),
            DataType::FixedSizeList(item(DataType::Int32), 3),
            DataType::LargeList(item(DataType::Int64)),
            DataType::LargeListView(item(DataType::Utf8)),
            DataType::Struct(
                vec![
                    Field::new("a", DataType::Utf8View, true),
                    Field::new("b", DataType::LargeList(item(DataType::Int64)), true),
                ]
                .into(),
            ),
            DataType::Union(
                UnionFields::try_new(vec![0], vec![Field::new("u", DataType::Int32, true)])
                    .unwrap(),
                UnionMode::Dense,
            ),
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            DataType::Dictionary(Box::new(DataType::UInt8), Box::new(DataType::LargeUtf8)),
            DataType::Decimal32(9, 2),
            DataType::Decimal64(18, 4),
            DataType::Decimal128(38, 10),
            DataType::Decimal256(76, 20),
            DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(
                        vec![
                            Field::new("key", DataType::Utf8View, false),
                            Field::new("value", DataType::Int64, true),
                        ]
                        .into(),
                    ),
                    false,
                )),
                false,
            ),
            DataType::RunEndEncoded(
                Arc::new(Field::new("run_ends", DataType::Int32, false)),
                Arc::new(Field::new("values", DataType::Utf8, true)),
            ),
        ];
        for dt in types {
            let wire = wire_type(&dt);
            assert!(plain(&wire), "{dt} travels as {wire}");
            // A batch of that type casts to its wire schema.
            let schema = Arc::new(Schema::new(vec![Field::new("c", dt.clone(), true)]));
            let batch =
                RecordBatch::try_new(schema.clone(), vec![arrow::array::new_null_array(&dt, 3)]);
            if let Ok(batch) = batch {
                let out = to_wire(batch, &wire_schema(&schema));
                assert!(out.is_ok(), "{dt} → {wire}: {:?}", out.err());
            }
        }
    }
}
