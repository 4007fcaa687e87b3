//! Hash shuffle through storage, both halves.
//!
//! A producer task's plan ends in DataFusion's own `RepartitionExec(Hash(exprs, P))`, so rows
//! land in the partition DataFusion would put them in on one node, and two inputs of a
//! partitioned join hashed on the same keys are co-partitioned with no second shuffle. The
//! worker drains the P output partitions into a [`SliceWriter`]: each part object it writes is
//! the concatenation of one LZ4-framed Arrow IPC stream per partition that had rows, and the
//! `done` marker lists every slice (partition, part, byte range, rows, SHA-256).
//!
//! A consumer task `p` of the next stage reads, in place of each `RepartitionExec`, a
//! [`ShuffleReadExec`] naming the producer attempts that finished and the slices of partition
//! `p` they vouched for; it fetches only those byte ranges and checks each against its
//! checksum and row count. The coordinator writes a consumer's plan only once every producer
//! of its inputs is done, so a plan always names finished, immutable objects.

use std::fmt;
use std::sync::Arc;

use apiary_storage::Storage;
use apiary_storage::format::{SliceV1, hex};
use apiary_storage::paths::{self, AttemptKey};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use bytes::Bytes;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_proto::physical_plan::{
    DeduplicatingProtoConverter, PhysicalExtensionCodec, PhysicalProtoConverterExtension,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::parts::{PartSink, Written};
use crate::error::{Error, Result};

/// The largest slice a reader fetches: a slice lies inside one part, which is about
/// `--part-bytes` (8 MiB by default) plus one batch.
const MAX_SLICE_BYTES: u64 = 1 << 30;

/// Frame compression of shuffle streams.
const COMPRESSION: Option<CompressionType> = Some(CompressionType::LZ4_FRAME);

/// One finished producer attempt and the slices of one partition it wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ShuffleSource {
    pub(crate) stage: u32,
    pub(crate) task: u32,
    pub(crate) attempt: u32,
    pub(crate) slices: Vec<SliceV1>,
}

impl ShuffleSource {
    /// The same attempt with only the slices of `partition`; `None` if it wrote none.
    pub(crate) fn of_partition(&self, partition: u32) -> Option<ShuffleSource> {
        let slices: Vec<SliceV1> = self
            .slices
            .iter()
            .filter(|s| s.partition == partition)
            .cloned()
            .collect();
        (!slices.is_empty()).then_some(ShuffleSource {
            stage: self.stage,
            task: self.task,
            attempt: self.attempt,
            slices,
        })
    }
}

/// What a [`ShuffleReadExec`] is, serialised inside a task's plan.
#[derive(Debug, Serialize, Deserialize)]
struct ShuffleReadSpec {
    v: u32,
    query_id: String,
    /// The producing stage.
    stage: u32,
    partition: u32,
    sources: Vec<ShuffleSource>,
}

/// Reads one partition of a shuffled stage output (a consumer task's input).
pub(crate) struct ShuffleReadExec {
    query_id: String,
    stage: u32,
    partition: u32,
    sources: Vec<ShuffleSource>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Present on the worker that decoded the plan; a plan still on the coordinator has none.
    storage: Option<Storage>,
}

impl fmt::Debug for ShuffleReadExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShuffleReadExec(stage={}, partition={})",
            self.stage, self.partition
        )
    }
}

impl ShuffleReadExec {
    pub(crate) fn new(
        query_id: String,
        stage: u32,
        partition: u32,
        sources: Vec<ShuffleSource>,
        schema: SchemaRef,
        storage: Option<Storage>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            query_id,
            stage,
            partition,
            sources,
            schema,
            properties: Arc::new(properties),
            storage,
        }
    }

    pub(crate) fn query_id(&self) -> &str {
        &self.query_id
    }
}

impl DisplayAs for ShuffleReadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ShuffleReadExec: stage={}, partition={}, sources={}",
            self.stage,
            self.partition,
            self.sources.len()
        )
    }
}

impl ExecutionPlan for ShuffleReadExec {
    fn name(&self) -> &str {
        "ShuffleReadExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ShuffleReadExec has one partition, not {partition}"
            )));
        }
        let storage = self.storage.clone().ok_or_else(|| {
            DataFusionError::Internal("a shuffle read runs only in a decoded task plan".into())
        })?;
        let reads: Vec<(AttemptKey, SliceV1)> = self
            .sources
            .iter()
            .flat_map(|s| {
                let key = AttemptKey::new(self.query_id.clone(), s.stage, s.task, s.attempt);
                s.slices.iter().map(move |sl| (key.clone(), sl.clone()))
            })
            .collect();
        // One slice in memory at a time, fetched in order.
        let stream = futures::stream::iter(reads)
            .then(move |(key, slice)| {
                let storage = storage.clone();
                async move { read_slice(&storage, &key, &slice).await }
            })
            .flat_map(|r| {
                futures::stream::iter(match r {
                    Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
                    Err(e) => vec![Err(DataFusionError::External(Box::new(e)))],
                })
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

use futures::StreamExt;

/// Fetch one slice and check it against what its producer vouched for.
pub(crate) async fn read_slice(
    storage: &Storage,
    key: &AttemptKey,
    slice: &SliceV1,
) -> Result<Vec<RecordBatch>> {
    if slice.len > MAX_SLICE_BYTES {
        return Err(Error::NotAllowed(format!(
            "a shuffle slice of {} bytes (at most {MAX_SLICE_BYTES})",
            slice.len
        )));
    }
    let path = paths::task_part(key, slice.part)?;
    let body = storage
        .get_range_opt(&path, slice.offset..slice.offset + slice.len)
        .await
        .map_err(|e| match e {
            apiary_storage::Error::ObjectStore(o) => Error::DataLoss(format!(
                "shuffle input of {key} (part {}) cannot be read: {o}",
                slice.part
            )),
            other => other.into(),
        })?
        .ok_or_else(|| {
            Error::DataLoss(format!(
                "shuffle input of {key} is missing (part {} was deleted)",
                slice.part
            ))
        })?;
    if body.len() as u64 != slice.len || hex(&Sha256::digest(&body)) != slice.sha256 {
        return Err(Error::DataLoss(format!(
            "shuffle input of {key} is corrupt (part {}: checksum mismatch)",
            slice.part
        )));
    }
    let mut batches = Vec::new();
    for b in StreamReader::try_new(std::io::Cursor::new(body), None)? {
        batches.push(b?);
    }
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    if rows != slice.rows {
        return Err(Error::DataLoss(format!(
            "shuffle input of {key} is corrupt (part {}: {rows} rows, {} vouched for)",
            slice.part, slice.rows
        )));
    }
    Ok(batches)
}

/// Writes one attempt's hash-partitioned output: parts of about `part_bytes`, each holding one
/// IPC stream per partition.
pub(crate) struct SliceWriter {
    sink: PartSink,
    part_bytes: usize,
    streams: Vec<Option<(StreamWriter<Vec<u8>>, u64)>>,
    schema: Option<SchemaRef>,
    buffered: usize,
    rows: u64,
    slices: Vec<SliceV1>,
}

impl std::fmt::Debug for SliceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceWriter")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl SliceWriter {
    pub(crate) fn new(
        storage: Storage,
        key: AttemptKey,
        partitions: usize,
        part_bytes: usize,
    ) -> Self {
        Self {
            sink: PartSink::new(storage, key),
            part_bytes,
            streams: (0..partitions).map(|_| None).collect(),
            schema: None,
            buffered: 0,
            rows: 0,
            slices: Vec::new(),
        }
    }

    pub(crate) async fn write(&mut self, partition: usize, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let schema = self.schema.get_or_insert_with(|| batch.schema()).clone();
        let slot = self
            .streams
            .get_mut(partition)
            .ok_or_else(|| Error::Internal(format!("no output partition {partition}")))?;
        let (w, rows) = match slot {
            Some(s) => s,
            None => {
                let options = IpcWriteOptions::default().try_with_compression(COMPRESSION)?;
                slot.insert((
                    StreamWriter::try_new_with_options(Vec::new(), &schema, options)?,
                    0,
                ))
            }
        };
        let before = w.get_ref().len();
        w.write(&super::parts::compact_views(batch)?)?;
        *rows += batch.num_rows() as u64;
        self.rows += batch.num_rows() as u64;
        self.buffered += w.get_ref().len() - before;
        if self.buffered >= self.part_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let part = self.sink.next_part();
        let mut body = Vec::with_capacity(self.buffered + 1024);
        for (partition, slot) in self.streams.iter_mut().enumerate() {
            let Some((mut w, rows)) = slot.take() else {
                continue;
            };
            w.finish()?;
            let stream = w.into_inner()?;
            self.slices.push(SliceV1 {
                partition: partition as u32,
                part,
                offset: body.len() as u64,
                len: stream.len() as u64,
                rows,
                sha256: hex(&Sha256::digest(&stream)),
            });
            body.extend_from_slice(&stream);
        }
        self.buffered = 0;
        if body.is_empty() {
            return Ok(());
        }
        self.sink.put(Bytes::from(body)).await
    }

    pub(crate) async fn finish(mut self) -> Result<Written> {
        self.flush().await?;
        Ok(self.sink.written(self.rows, self.slices))
    }
}

/// Encodes and decodes the plan nodes of distributed execution that DataFusion does not know:
/// [`ShuffleReadExec`]. A decoding codec carries the storage its shuffle reads read through
/// (which query they may read is checked by `cut::validate_fragment`).
#[derive(Debug, Clone)]
pub(crate) struct DistCodec {
    storage: Option<Storage>,
}

impl DistCodec {
    /// For encoding (on the coordinator) and checking that a plan survives the trip.
    pub(crate) fn encoder() -> Self {
        Self { storage: None }
    }
}

impl PhysicalExtensionCodec for DistCodec {
    /// Checked arithmetic (`engine/checked.rs`) travels by name: one function per chain of
    /// integer operators (so no registry holds them all), and the decimal digits check.
    fn try_decode_udf(
        &self,
        name: &str,
        _buf: &[u8],
    ) -> DfResult<Arc<datafusion::logical_expr::ScalarUDF>> {
        crate::engine::planted_function(name)
            .ok_or_else(|| DataFusionError::Plan(format!("no function named {name}")))
    }

    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let bad = |why: &str| DataFusionError::Plan(format!("unknown plan node: {why}"));
        if !inputs.is_empty() {
            return Err(bad("a shuffle read has no inputs"));
        }
        let (len, rest) = buf
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad("truncated"));
        }
        let spec: ShuffleReadSpec =
            serde_json::from_slice(&rest[..len]).map_err(|e| bad(&e.to_string()))?;
        if spec.v != 1 {
            return Err(bad("unsupported version"));
        }
        let schema = StreamReader::try_new(std::io::Cursor::new(&rest[len..]), None)?.schema();
        Ok(Arc::new(ShuffleReadExec::new(
            spec.query_id,
            spec.stage,
            spec.partition,
            spec.sources,
            schema,
            self.storage.clone(),
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(read) = node.downcast_ref::<ShuffleReadExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot travel to another node",
                node.name()
            )));
        };
        let spec = serde_json::to_vec(&ShuffleReadSpec {
            v: 1,
            query_id: read.query_id.clone(),
            stage: read.stage,
            partition: read.partition,
            sources: read.sources.clone(),
        })
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        buf.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        buf.extend_from_slice(&spec);
        let mut w = StreamWriter::try_new(Vec::new(), &read.schema)?;
        w.finish()?;
        buf.extend_from_slice(&w.into_inner()?);
        Ok(())
    }
}

/// Serialise a task plan (which may hold shuffle reads). An expression used in several places
/// keeps one identity ([`DeduplicatingProtoConverter`]): a join filter is both in its join and
/// in the scans it reaches, and decoded as one, so the task's joins still fill their scans'
/// filters. The pacing of joins' inputs stays behind: the worker paces them again.
pub(crate) fn encode(plan: Arc<dyn ExecutionPlan>) -> DfResult<Bytes> {
    datafusion_proto::bytes::physical_plan_to_bytes_with_proto_converter(
        crate::engine::without_pacing(plan)?,
        &DistCodec::encoder(),
        &DeduplicatingProtoConverter {},
    )
}

/// Decode a task plan; shuffle reads in it read through `storage`.
pub(crate) fn decode(
    bytes: &[u8],
    ctx: &TaskContext,
    storage: Option<Storage>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let codec = DistCodec { storage };
    datafusion_proto::bytes::physical_plan_from_bytes_with_proto_converter(
        bytes,
        ctx,
        &codec,
        &DeduplicatingProtoConverter {},
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn slices_read_back_per_partition_and_tampering_is_caught() {
        let storage = Storage::open("memory://shuffle", &Default::default()).unwrap();
        let key = AttemptKey::new("0192f5a0-6f1c-7c2e-9b1d-2d6a1f3e4c01", 0, 1, 1);
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
        };
        // Tiny parts: every write flushes one.
        let mut w = SliceWriter::new(storage.clone(), key.clone(), 3, 1);
        w.write(0, &batch(vec![1, 2])).await.unwrap();
        w.write(2, &batch(vec![3])).await.unwrap();
        w.write(0, &batch(vec![4, 5, 6])).await.unwrap();
        let written = w.finish().await.unwrap();
        assert_eq!((written.rows, written.parts), (6, 3));
        let of = |p: u32| -> Vec<&SliceV1> {
            written.slices.iter().filter(|s| s.partition == p).collect()
        };
        assert_eq!(of(0).len(), 2);
        assert_eq!(of(1).len(), 0);
        let mut rows = 0;
        for s in of(0) {
            rows += read_slice(&storage, &key, s)
                .await
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>();
        }
        assert_eq!(rows, 5);
        let mut lie = of(2)[0].clone();
        lie.rows = 2;
        assert!(read_slice(&storage, &key, &lie).await.is_err());
        storage
            .put(
                &paths::task_part(&key, of(2)[0].part).unwrap(),
                Bytes::from_static(b"tampered"),
            )
            .await
            .unwrap();
        let err = read_slice(&storage, &key, of(2)[0]).await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        storage
            .delete(&paths::task_part(&key, of(0)[0].part).unwrap())
            .await
            .unwrap();
        let err = read_slice(&storage, &key, of(0)[0]).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
