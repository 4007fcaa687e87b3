//! The output format of a task, both halves: a worker writes its result as Arrow IPC stream
//! objects of about `part_bytes` each (`out-<attempt>/part-NNNNN.arrow`) and vouches for them in
//! its `done` marker (row count, part count, SHA-256 over the parts' bytes in order); the
//! coordinator reads exactly those parts and refuses them if any figure differs. On an object
//! store the streams' buffers are LZ4-framed ([`compression_for`]); readers need no flag.

use apiary_storage::format::{DoneV1, SliceV1, hex};
use apiary_storage::paths::{self, AttemptKey};
use apiary_storage::{BackendKind, Storage};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// `batch` with each string or binary view column cut down to the bytes its rows use, when its
/// data buffers hold much more. Arrow IPC writes a view array's data buffers whole (arrow-rs
/// #7185), and a scan's views point into the whole page they were decoded from, which a filter
/// or a hash split leaves shared by every batch cut from it.
pub(crate) fn compact_views(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, AsArray};
    use arrow::datatypes::DataType;
    fn loose(buffers: &[arrow::buffer::Buffer], used: usize) -> bool {
        buffers.iter().map(|b| b.len()).sum::<usize>() > 2 * used + 4096
    }
    let mut columns: Option<Vec<ArrayRef>> = None;
    for (i, column) in batch.columns().iter().enumerate() {
        let compacted: Option<ArrayRef> = match column.data_type() {
            DataType::Utf8View => {
                let a = column.as_string_view();
                loose(a.data_buffers(), a.total_buffer_bytes_used())
                    .then(|| std::sync::Arc::new(a.gc()) as ArrayRef)
            }
            DataType::BinaryView => {
                let a = column.as_binary_view();
                loose(a.data_buffers(), a.total_buffer_bytes_used())
                    .then(|| std::sync::Arc::new(a.gc()) as ArrayRef)
            }
            _ => None,
        };
        if let Some(c) = compacted {
            columns.get_or_insert_with(|| batch.columns().to_vec())[i] = c;
        }
    }
    match columns {
        None => Ok(batch.clone()),
        Some(columns) => Ok(RecordBatch::try_new(batch.schema(), columns)?),
    }
}

/// What a finished writer vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) parts: u32,
    /// SHA-256 (hex) over the parts' bytes, in order.
    pub(crate) sha256: String,
    /// Where each partition's rows are, for a hash-partitioned output; empty otherwise.
    pub(crate) slices: Vec<SliceV1>,
}

/// Where an attempt's parts go, both writers share it: numbers the parts, puts them, and keeps
/// the running byte count and checksum its `done` marker vouches for.
pub(crate) struct PartSink {
    storage: Storage,
    key: AttemptKey,
    parts: u32,
    bytes: u64,
    hasher: Sha256,
}

impl std::fmt::Debug for PartSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartSink")
            .field("key", &self.key)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl PartSink {
    pub(crate) fn new(storage: Storage, key: AttemptKey) -> Self {
        Self {
            storage,
            key,
            parts: 0,
            bytes: 0,
            hasher: Sha256::new(),
        }
    }

    /// The number the next part gets.
    pub(crate) fn next_part(&self) -> u32 {
        self.parts
    }

    /// Put the next part.
    pub(crate) async fn put(&mut self, body: Bytes) -> Result<()> {
        self.hasher.update(&body);
        self.bytes += body.len() as u64;
        let key = paths::task_part(&self.key, self.parts)?;
        self.storage.put(&key, body).await?;
        self.parts += 1;
        Ok(())
    }

    /// What the parts put so far vouch for.
    pub(crate) fn written(self, rows: u64, slices: Vec<SliceV1>) -> Written {
        Written {
            rows,
            bytes: self.bytes,
            parts: self.parts,
            sha256: hex(&self.hasher.finalize()),
            slices,
        }
    }
}

/// How a stage's output parts are compressed on `kind` of storage. On an object store the
/// parts cross a network (or an S3 server's own copying): LZ4 frames cut a leaf stage's output
/// to about a third (q10 at SF1 ships 60 MB of keys and decimals) for a few milliseconds of CPU
/// per 8 MiB part. On a local root a put is a copy into the page cache, which costs less than
/// compressing (bench/results/swarm-2-pinned-views-s3.md).
pub(crate) fn compression_for(kind: BackendKind) -> Option<CompressionType> {
    match kind {
        BackendKind::S3 => Some(CompressionType::LZ4_FRAME),
        BackendKind::Local | BackendKind::Memory => None,
    }
}

/// Writes one attempt's output.
pub(crate) struct PartWriter {
    sink: PartSink,
    part_bytes: usize,
    compression: Option<CompressionType>,
    buf: Option<StreamWriter<Vec<u8>>>,
    schema: Option<SchemaRef>,
    rows: u64,
}

impl std::fmt::Debug for PartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartWriter")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl PartWriter {
    pub(crate) fn new(storage: Storage, key: AttemptKey, part_bytes: usize) -> Self {
        Self {
            compression: compression_for(storage.kind()),
            sink: PartSink::new(storage, key),
            part_bytes,
            buf: None,
            schema: None,
            rows: 0,
        }
    }

    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let schema = self.schema.get_or_insert_with(|| batch.schema()).clone();
        let w = match &mut self.buf {
            Some(w) => w,
            None => {
                let options = IpcWriteOptions::default().try_with_compression(self.compression)?;
                self.buf.insert(StreamWriter::try_new_with_options(
                    Vec::new(),
                    &schema,
                    options,
                )?)
            }
        };
        w.write(&compact_views(batch)?)?;
        self.rows += batch.num_rows() as u64;
        if w.get_ref().len() >= self.part_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let Some(mut w) = self.buf.take() else {
            return Ok(());
        };
        w.finish()?;
        self.sink.put(Bytes::from(w.into_inner()?)).await
    }

    pub(crate) async fn finish(mut self) -> Result<Written> {
        self.flush().await?;
        Ok(self.sink.written(self.rows, Vec::new()))
    }
}

/// Fetch the parts `done` vouches for and check them against it.
pub(crate) async fn read(
    storage: &Storage,
    key: &AttemptKey,
    done: &DoneV1,
) -> Result<Vec<RecordBatch>> {
    let mut hasher = Sha256::new();
    let mut batches = Vec::new();
    let mut bytes = 0u64;
    for part in 0..done.parts {
        let path = paths::task_part(key, part)?;
        let (body, _) = storage
            .get_opt(&path)
            .await?
            .ok_or_else(|| Error::DataLoss(format!("{key}: output part {part} is missing")))?;
        hasher.update(&body);
        bytes += body.len() as u64;
        if bytes > done.bytes {
            return Err(Error::DataLoss(format!(
                "output of {key} is larger than its done marker says"
            )));
        }
        for b in StreamReader::try_new(std::io::Cursor::new(body), None)? {
            batches.push(b?);
        }
    }
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    if hex(&hasher.finalize()) != done.sha256 || rows != done.rows || bytes != done.bytes {
        return Err(Error::DataLoss(format!(
            "output of {key} is corrupt (checksum or row count mismatch)"
        )));
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    #[test]
    fn view_columns_are_compacted_before_they_are_written() {
        use arrow::array::{Array, AsArray, StringViewArray};
        // 1,000 distinct 40-byte strings; a filter keeps 10 of them, still pointing into the
        // whole buffer.
        let all = StringViewArray::from_iter_values((0..1000).map(|i| format!("{i:040}")));
        let kept = arrow::compute::filter(
            &all,
            &arrow::array::BooleanArray::from_iter((0..1000).map(|i| Some(i % 100 == 0))),
        )
        .unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("s", arrow::datatypes::DataType::Utf8View, false),
        ]));
        let batch = RecordBatch::try_new(schema, vec![kept]).unwrap();
        let held = |b: &RecordBatch| -> usize {
            let a = b.column(0).as_string_view();
            a.data_buffers().iter().map(|b| b.len()).sum()
        };
        assert!(held(&batch) >= 40_000);
        let compact = compact_views(&batch).unwrap();
        assert_eq!(held(&compact), 400);
        assert_eq!(compact.column(0).as_ref(), batch.column(0).as_ref());
        // Tight arrays and other types pass through untouched.
        let again = compact_views(&compact).unwrap();
        assert_eq!(held(&again), 400);
        assert_eq!(again.column(0).len(), 10);
    }

    /// The `done` marker a worker writes for `written`.
    fn done_for(written: &Written, attempt: u32) -> DoneV1 {
        DoneV1 {
            v: 1,
            node_id: "n".into(),
            attempt,
            rows: written.rows,
            bytes: written.bytes,
            parts: written.parts,
            sha256: written.sha256.clone(),
            dispatch_ms: 0,
            run_ms: 0,
            slices: vec![],
        }
    }

    #[tokio::test]
    async fn compressed_parts_are_smaller_and_read_back_equal() {
        let storage = Storage::open("memory://lz4parts", &Default::default()).unwrap();
        // Prices as a leaf stage ships them: DECIMAL(15, 2), 16 bytes a value, mostly zeros.
        let price = arrow::datatypes::DataType::Decimal128(15, 2);
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("price", price.clone(), false),
        ]));
        let prices = arrow::array::Decimal128Array::from_iter_values(
            (0..100_000i128).map(|i| 90_000 + i * 7_919 % 10_400_000),
        )
        .with_data_type(price);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(prices)]).unwrap();
        let mut sizes = Vec::new();
        for (attempt, compression) in [None, compression_for(BackendKind::S3)]
            .into_iter()
            .enumerate()
        {
            let key = AttemptKey::new(
                "0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4c02",
                0,
                0,
                attempt as u32 + 1,
            );
            let mut w = PartWriter::new(storage.clone(), key.clone(), 1 << 20);
            w.compression = compression;
            w.write(&batch).await.unwrap();
            let written = w.finish().await.unwrap();
            let done = done_for(&written, attempt as u32 + 1);
            let back = read(&storage, &key, &done).await.unwrap();
            assert_eq!(back, vec![batch.clone()]);
            sizes.push(written.bytes);
        }
        // 1.6 MB of decimals: LZ4 frames take well under half.
        assert!(sizes[0] > 1_600_000 && sizes[1] * 2 < sizes[0], "{sizes:?}");
        assert_eq!(compression_for(BackendKind::Local), None);
    }

    #[tokio::test]
    async fn written_parts_read_back_and_tampering_is_caught() {
        let storage = Storage::open("memory://parts", &Default::default()).unwrap();
        let key = AttemptKey::new("0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4c01", 0, 3, 1);
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
        ]));
        // Tiny parts: every batch flushes one.
        let mut w = PartWriter::new(storage.clone(), key.clone(), 1);
        for i in 0..3 {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(vec![i, i + 10]))],
            )
            .unwrap();
            w.write(&b).await.unwrap();
        }
        let written = w.finish().await.unwrap();
        assert_eq!((written.rows, written.parts), (6, 3));
        let mut done = done_for(&written, 1);
        let back = read(&storage, &key, &done).await.unwrap();
        assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
        done.rows = 7;
        assert!(read(&storage, &key, &done).await.is_err());
        done.rows = 6;
        storage
            .put(
                &paths::task_part(&key, 1).unwrap(),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        assert!(read(&storage, &key, &done).await.is_err());
    }
}
