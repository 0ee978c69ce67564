//! The signing engine's executor: a [`SignPlan`] turns parsed headers into the byte ranges a signature needs,
//! and runs on any source of those bytes.
//!
//! [`SignPlan::new`] is built from the headers alone (format-independent: it sees tensor names, dtypes,
//! shapes and byte offsets). It runs [`plan`](crate::plan::plan) to decide what the signature holds, then
//! lists every byte range each signed tensor needs, in the order they are consumed: the selected row blocks
//! of a tensor ([`selected_row_blocks`]) in pieces of at most [`ReadLimits::max_read`] bytes, a quantised
//! weight's scale tensor before its rows, a LoRA pair's two factors, a packed 4-bit module's whole packed
//! tensors.
//!
//! Two drivers pull those bytes, and both hand them to the one per-tensor executor (`JobRun`: build the
//! [`TensorAccumulator`], scales, [`lora_delta_signature`] or [`packed_signature`], feed it, finish it), so
//! there is one piece of code from a plan plus bytes to a [`ModelSignature`]:
//! - [`SignPlan::run_parallel`] over a [`RandomAccess`] source (local files, [`LocalSource`]): one
//!   rayon task per signed tensor, largest first, each reading its own pieces and dropping them as they are
//!   consumed.
//! - [`SignPlan::run`] over a streaming [`ByteSource`] (HTTP ranges): adjacent pieces of one file are merged
//!   into [`Read`]s of at most [`ReadLimits::max_read`] bytes (pieces separated by at most
//!   [`ReadLimits::max_gap`] bytes are merged too, the gap read and dropped), pulled in order, so a network
//!   reader issues few, bounded requests and knows the whole list up front ([`SignPlan::reads`]). Jobs run
//!   one after another in file order, so memory holds one read and one accumulator at a time.
//!
//! The accumulator's result does not depend on how rows are split into pieces, so both drivers, with any
//! limits, give the same signature bit for bit.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::io;
use std::ops::{Deref, Range};

use rayon::prelude::*;

use crate::accumulate::{Scales, TensorAccumulator, TensorError};
use crate::adapter::{LoraConfig, TensorBytes, lora_delta_signature};
use crate::checkpoint::ModelError;
use crate::file::{Buffer, Buffers, LocalFile};
use crate::header::{Header, TensorInfo};
use crate::layout::{RowLayout, selected_row_blocks};
use crate::mmap::{MappedFile, Window};
use crate::model::{ModelSignature, Scheme, TensorSignature};
use crate::packed::{GptqFormat, PackedLayout, PackedTensors, packed_signature};
use crate::plan::{self, PlanError, TensorRef};

/// How to sign.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SignOptions {
    /// How LoRA updates are scaled; `None` scales `B·A` by 1. A [`crate::Checkpoint`] reads it from
    /// `adapter_config.json` when this is `None`.
    pub lora: Option<LoraConfig>,
    /// Sign I8/F8 weights with a `…weight_scale` sibling, and packed 4-bit GPTQ/AWQ modules, from their
    /// dequantised values.
    pub dequantize: bool,
    /// How GPTQ zero points are stored (from `quantization_config.checkpoint_format`, see
    /// [`GptqFormat::from_quantization_config`]); the default is the v1 format every GPTQ tool writes by default.
    pub gptq_format: GptqFormat,
}

impl Default for SignOptions {
    fn default() -> SignOptions {
        SignOptions { lora: None, dequantize: true, gptq_format: GptqFormat::V1 }
    }
}

/// One byte range of one of the files a plan was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// Index into the files given to [`SignPlan::new`].
    pub file: usize,
    /// Absolute byte offsets in that file, end exclusive.
    pub range: Range<u64>,
}

impl Read {
    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// A stream of byte ranges of a model's files, read in the order of [`SignPlan::reads`].
pub trait ByteSource {
    type Buf: Deref<Target = [u8]>;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Exactly the bytes of `read`. [`SignPlan::run`] asks for its reads in the order of [`SignPlan::reads`]
    /// and checks the length of what it gets.
    ///
    /// # Errors
    /// Whatever stops the source from delivering the bytes.
    fn read(&mut self, read: &Read) -> Result<Self::Buf, Self::Error>;
}

/// Byte ranges of a model's files, read in any order from several threads at once.
pub trait RandomAccess: Sync {
    type Buf: Deref<Target = [u8]>;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Exactly the bytes of `read`; [`SignPlan::run_parallel`] checks the length of what it gets.
    ///
    /// # Errors
    /// Whatever stops the source from delivering the bytes.
    fn read_at(&self, read: &Read) -> Result<Self::Buf, Self::Error>;
}

/// Bounds on the reads of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most bytes per read; a read is longer only when a single row (or a whole small tensor) is.
    pub max_read: u64,
    /// Two ranges of one file separated by at most this many unneeded bytes are read as one.
    pub max_gap: u64,
    /// Largest single piece accepted: one row of a tensor, or a whole scale tensor or LoRA factor. A plan
    /// needing more is refused, so memory stays bounded whatever the header declares.
    pub max_whole: u64,
}

/// Default [`ReadLimits::max_read`]: 16 MiB, enough to amortise a request, small enough to buffer a few.
pub const DEFAULT_MAX_READ: u64 = 16 << 20;

/// Default [`ReadLimits::max_whole`]: 256 MiB, above the largest row of real checkpoints (stacked MoE experts
/// reach ~160 MiB per row) and far above any scale tensor or LoRA factor.
pub const DEFAULT_MAX_WHOLE: u64 = 256 << 20;

impl Default for ReadLimits {
    fn default() -> ReadLimits {
        ReadLimits { max_read: DEFAULT_MAX_READ, max_gap: 0, max_whole: DEFAULT_MAX_WHOLE }
    }
}

/// Why running a plan failed: the source, or the bytes it gave.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    #[error("reading bytes {}..{} of file {}: {source}", read.range.start, read.range.end, read.file)]
    Read { read: Read, source: E },
    #[error("read of bytes {}..{} of file {} returned {got} bytes", read.range.start, read.range.end, read.file)]
    WrongLength { read: Read, got: u64 },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A stored tensor: its file and header entry.
#[derive(Clone, Debug)]
struct Stored {
    file: usize,
    data_start: u64,
    info: TensorInfo,
}

impl Stored {
    /// Absolute byte range of the whole tensor in its file.
    fn span(&self) -> Range<u64> {
        self.data_start + self.info.begin..self.data_start + self.info.end
    }
}

/// One signature to compute (see [`plan::Job`]).
#[derive(Debug)]
enum Work {
    Plain { name: String, t: Stored },
    Dequant { name: String, t: Stored, scale: Stored },
    Lora { name: String, a: Stored, b: Stored },
    Packed { name: String, layout: PackedLayout, tensors: Box<PackedTensors<Stored>> },
}

impl Work {
    fn primary(&self) -> &Stored {
        match self {
            Work::Plain { t, .. } | Work::Dequant { t, .. } => t,
            Work::Lora { a, .. } => a,
            Work::Packed { tensors, .. } => &tensors.qweight,
        }
    }

    /// Roughly how long the job takes, to start the longest first when running in parallel.
    fn cost(&self) -> u64 {
        match self {
            Work::Plain { t, .. } | Work::Dequant { t, .. } => t.info.byte_len(),
            // Forming B·A costs `out × r × in` multiply-adds: weigh it like reading that many bytes.
            Work::Lora { a, b, .. } => b.info.shape.first().copied().unwrap_or(0).saturating_mul(a.info.numel()),
            // Every element of the dequantised matrix is formed from a nibble: weigh it like its f32 bytes.
            Work::Packed { layout, .. } => layout.out.saturating_mul(layout.inputs).saturating_mul(4),
        }
    }
}

/// What a piece of a read is for.
#[derive(Clone, Copy, Debug)]
enum Use {
    /// Rows `first_row ..` of the job's accumulated tensor.
    Rows { first_row: u64 },
    /// A whole small tensor: slot 0 is a scale tensor or LoRA factor A, slot 1 LoRA factor B; for a packed
    /// module, slots 0–3 are `qweight`, `qzeros`, `scales` and `g_idx`.
    Whole { slot: usize },
}

#[derive(Clone, Debug)]
struct Piece {
    job: usize,
    file: usize,
    range: Range<u64>,
    usage: Use,
}

#[derive(Clone, Debug)]
struct Fetch {
    read: Read,
    pieces: Range<usize>,
}

/// Every read a model's signature needs and what each byte of them feeds; see the module docs.
#[derive(Debug)]
pub struct SignPlan {
    scheme: Scheme,
    lora: Option<LoraConfig>,
    gptq: GptqFormat,
    /// The files' names, for errors.
    names: Vec<String>,
    jobs: Vec<Work>,
    /// Every piece, grouped by job in job order.
    pieces: Vec<Piece>,
    /// Each job's pieces.
    job_pieces: Vec<Range<usize>>,
    fetches: Vec<Fetch>,
    reads: Vec<Read>,
}

impl SignPlan {
    /// Plans the signature of the model stored in the files `names` with these `headers` (same order, the
    /// order [`Read::file`] indexes). `opts` decide dequantisation, the GPTQ zero-point format and the LoRA
    /// scaling.
    ///
    /// # Errors
    /// [`ModelError::Scheme`], [`ModelError::DuplicateTensor`], [`ModelError::Packed`], and the size checks of
    /// [`ReadLimits::max_whole`].
    pub fn new(
        names: &[String],
        headers: &[&Header],
        scheme: &Scheme,
        opts: &SignOptions,
        limits: ReadLimits,
    ) -> Result<SignPlan, ModelError> {
        crate::accumulate::validate_scheme(scheme)?;
        let names: Vec<String> =
            (0..headers.len()).map(|i| names.get(i).cloned().unwrap_or_else(|| format!("file {i}"))).collect();
        let tensors: Vec<&[TensorInfo]> = headers.iter().map(|h| h.tensors.as_slice()).collect();
        let stored = |r: TensorRef| Stored {
            file: r.file,
            data_start: headers[r.file].data_start,
            info: headers[r.file].tensors[r.tensor].clone(),
        };
        let planned = plan::plan(&tensors, opts.dequantize).map_err(|e| match e {
            PlanError::DuplicateTensor { name, first, second } => {
                ModelError::DuplicateTensor { name, first: names[first].clone(), second: names[second].clone() }
            }
            PlanError::Packed { module, source } => ModelError::Packed { module, source },
        })?;
        let mut jobs: Vec<Work> = planned
            .into_iter()
            .map(|job| match job {
                plan::Job::Stored { name, tensor } => Work::Plain { name, t: stored(tensor) },
                plan::Job::Dequantized { name, weight, scale } => {
                    Work::Dequant { name, t: stored(weight), scale: stored(scale) }
                }
                plan::Job::LoraDelta { name, a, b } => Work::Lora { name, a: stored(a), b: stored(b) },
                plan::Job::Packed { name, layout, tensors: t } => {
                    let tensors = Box::new(PackedTensors {
                        qweight: stored(t.qweight),
                        qzeros: stored(t.qzeros),
                        scales: stored(t.scales),
                        g_idx: t.g_idx.map(stored),
                    });
                    Work::Packed { name, layout, tensors }
                }
            })
            .collect();
        // File order, so that consecutive jobs read consecutive bytes.
        jobs.sort_by_key(|w| {
            let p = w.primary();
            (p.file, p.info.begin, p.info.end)
        });
        let mut pieces = Vec::new();
        let mut job_pieces = Vec::with_capacity(jobs.len());
        for (j, work) in jobs.iter().enumerate() {
            let first = pieces.len();
            let mut add = Pieces { pieces: &mut pieces, job: j, names: &names, limits };
            match work {
                Work::Plain { name, t } => add.rows(name, t, scheme)?,
                Work::Dequant { name, t, scale } => {
                    add.whole(0, scale)?;
                    add.rows(name, t, scheme)?;
                }
                Work::Lora { a, b, .. } => {
                    add.whole(0, a)?;
                    add.whole(1, b)?;
                }
                // Packed words interleave the weight's rows: the packed tensors are read whole (see `packed`).
                Work::Packed { tensors: t, .. } => {
                    for (slot, part) in
                        [Some(&t.qweight), Some(&t.qzeros), Some(&t.scales), t.g_idx.as_ref()].into_iter().enumerate()
                    {
                        if let Some(part) = part {
                            add.whole(slot, part)?;
                        }
                    }
                }
            }
            job_pieces.push(first..pieces.len());
        }
        let fetches = coalesce(&pieces, limits);
        let reads = fetches.iter().map(|f| f.read.clone()).collect();
        Ok(SignPlan {
            scheme: *scheme,
            lora: opts.lora,
            gptq: opts.gptq_format,
            names,
            jobs,
            pieces,
            job_pieces,
            fetches,
            reads,
        })
    }

    /// The reads [`SignPlan::run`] will make, in order.
    pub fn reads(&self) -> &[Read] {
        &self.reads
    }

    /// Bytes [`SignPlan::run`] reads in total (gaps included).
    pub fn read_bytes(&self) -> u64 {
        self.reads.iter().map(Read::len).sum()
    }

    /// Number of signatures the plan produces.
    pub fn tensors(&self) -> usize {
        self.jobs.len()
    }

    /// The name of file `file`, as given to [`SignPlan::new`].
    pub fn file_name(&self, file: usize) -> &str {
        self.names.get(file).map_or("", String::as_str)
    }

    /// Pulls every read of [`SignPlan::reads`] from `source`, in order, and returns the model's signature.
    ///
    /// # Errors
    /// [`RunError::Read`] when the source fails, [`RunError::WrongLength`] when it returns the wrong number of
    /// bytes, [`RunError::Model`] when a tensor's bytes cannot be signed.
    pub fn run<S: ByteSource>(&self, source: &mut S) -> Result<ModelSignature, RunError<S::Error>> {
        let mut in_order = InOrder { plan: self, next_job: 0, active: None, done: Vec::with_capacity(self.jobs.len()) };
        for fetch in &self.fetches {
            let buf = checked(&fetch.read, source.read(&fetch.read))?;
            for piece in &self.pieces[fetch.pieces.clone()] {
                let start = (piece.range.start - fetch.read.range.start) as usize;
                let end = (piece.range.end - fetch.read.range.start) as usize;
                // In bounds: coalesce() puts each piece inside its read, and the length was checked.
                let bytes = buf.get(start..end).unwrap_or_default();
                if let Some(run) = in_order.advance_to(piece.job)? {
                    run.apply(piece.usage, bytes)?;
                }
            }
        }
        in_order.advance_to(self.jobs.len())?;
        Ok(self.assemble(in_order.done))
    }

    /// Runs the jobs in parallel on the current rayon pool, largest first, each reading its own pieces from
    /// `source`, and returns the model's signature.
    ///
    /// # Errors
    /// As [`SignPlan::run`].
    pub fn run_parallel<S: RandomAccess>(&self, source: &S) -> Result<ModelSignature, RunError<S::Error>> {
        let mut order: Vec<usize> = (0..self.jobs.len()).collect();
        // Largest first, so the biggest tensor does not start last and leave the other threads idle.
        order.sort_by_key(|&j| Reverse(self.jobs[j].cost()));
        let tensors = order
            .par_iter()
            .map(|&job| -> Result<TensorSignature, RunError<S::Error>> {
                let mut run = JobRun::start(self, job)?;
                for piece in &self.pieces[self.job_pieces[job].clone()] {
                    let read = Read { file: piece.file, range: piece.range.clone() };
                    let buf = checked(&read, source.read_at(&read))?;
                    run.apply(piece.usage, &buf)?;
                }
                Ok(run.finish()?)
            })
            .collect::<Result<Vec<_>, RunError<S::Error>>>()?;
        Ok(self.assemble(tensors))
    }

    /// The model's signature from every job's tensor signature.
    fn assemble(&self, mut tensors: Vec<TensorSignature>) -> ModelSignature {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        ModelSignature { scheme: self.scheme, tensors }
    }

    fn tensor_error(&self, t: &Stored, source: TensorError) -> ModelError {
        ModelError::Tensor { file: self.file_name(t.file).to_owned(), tensor: t.info.name.clone(), source }
    }
}

/// A source's answer to `read`, refused unless it has exactly the bytes asked for.
fn checked<B: Deref<Target = [u8]>, E: std::error::Error>(read: &Read, got: Result<B, E>) -> Result<B, RunError<E>> {
    let buf = got.map_err(|source| RunError::Read { read: read.clone(), source })?;
    if buf.len() as u64 != read.len() {
        return Err(RunError::WrongLength { read: read.clone(), got: buf.len() as u64 });
    }
    Ok(buf)
}

/// Adds one job's pieces to the plan.
struct Pieces<'a> {
    pieces: &'a mut Vec<Piece>,
    job: usize,
    names: &'a [String],
    limits: ReadLimits,
}

impl Pieces<'_> {
    fn too_large(&self, t: &Stored, len: u64) -> ModelError {
        ModelError::PieceTooLarge {
            file: self.names[t.file].clone(),
            tensor: t.info.name.clone(),
            len,
            cap: self.limits.max_whole,
        }
    }

    /// The pieces that feed the selected rows of `t`, each at most `max_read` bytes (but at least one row).
    fn rows(&mut self, name: &str, t: &Stored, scheme: &Scheme) -> Result<(), ModelError> {
        let overflow = || ModelError::ShapeOverflow {
            file: self.names[t.file].clone(),
            tensor: t.info.name.clone(),
            shape: t.info.shape.clone(),
        };
        let layout = RowLayout::of(&t.info.shape).ok_or_else(overflow)?;
        if layout.numel() == 0 {
            // An empty tensor has no bytes to feed (TensorAccumulator selects no rows for it either).
            return Ok(());
        }
        let row_bytes = layout.row_len.checked_mul(t.info.dtype.size()).ok_or_else(overflow)?;
        if row_bytes > self.limits.max_whole {
            return Err(self.too_large(t, row_bytes));
        }
        let rows_per_piece = (self.limits.max_read / row_bytes).max(1);
        let base = t.span().start;
        for block in selected_row_blocks(scheme, name, &t.info.shape) {
            let mut row = block.start;
            while row < block.end {
                let rows = rows_per_piece.min(block.end - row);
                let range = base + row * row_bytes..base + (row + rows) * row_bytes;
                self.pieces.push(Piece { job: self.job, file: t.file, range, usage: Use::Rows { first_row: row } });
                row += rows;
            }
        }
        Ok(())
    }

    /// The piece holding all of the small tensor `t`, unless it is empty.
    fn whole(&mut self, slot: usize, t: &Stored) -> Result<(), ModelError> {
        let len = t.info.byte_len();
        if len > self.limits.max_whole {
            return Err(self.too_large(t, len));
        }
        if len > 0 {
            self.pieces.push(Piece { job: self.job, file: t.file, range: t.span(), usage: Use::Whole { slot } });
        }
        Ok(())
    }
}

/// Groups consecutive pieces into reads: same file, forward, total at most `max_read` (a piece longer than that
/// is a read of its own), and either adjacent or separated by at most `max_gap` bytes that no earlier read
/// fetched (a scale tensor read out of order must not make the next read fetch its neighbours again).
fn coalesce(pieces: &[Piece], limits: ReadLimits) -> Vec<Fetch> {
    let mut fetches: Vec<Fetch> = Vec::new();
    // Per file, the furthest byte fetched by the reads before the last one.
    let mut high_water: BTreeMap<usize, u64> = BTreeMap::new();
    for (i, p) in pieces.iter().enumerate() {
        if let Some(last) = fetches.last_mut() {
            let r = &last.read.range;
            let at_frontier = high_water.get(&p.file).is_none_or(|&hw| r.end >= hw);
            let joins = last.read.file == p.file
                && p.range.start >= r.end
                && (p.range.start == r.end || (p.range.start - r.end <= limits.max_gap && at_frontier))
                && p.range.end - r.start <= limits.max_read;
            if joins {
                last.read.range.end = p.range.end;
                last.pieces.end = i + 1;
                continue;
            }
            let hw = high_water.entry(last.read.file).or_insert(0);
            *hw = (*hw).max(last.read.range.end);
        }
        fetches.push(Fetch { read: Read { file: p.file, range: p.range.clone() }, pieces: i..i + 1 });
    }
    fetches
}

fn tensor_bytes<'b>(t: &'b Stored, bytes: &'b [u8]) -> TensorBytes<'b> {
    TensorBytes { dtype: t.info.dtype, shape: &t.info.shape, bytes }
}

/// [`SignPlan::run`]'s jobs, started in plan order as their pieces arrive.
struct InOrder<'a> {
    plan: &'a SignPlan,
    next_job: usize,
    active: Option<JobRun<'a>>,
    done: Vec<TensorSignature>,
}

impl<'a> InOrder<'a> {
    /// Finishes every job before `job` (including jobs that read nothing, such as empty tensors) and returns
    /// `job`'s executor; `job == jobs.len()` finishes them all and returns none.
    fn advance_to(&mut self, job: usize) -> Result<Option<&mut JobRun<'a>>, ModelError> {
        if self.active.as_ref().is_none_or(|a| a.job != job) {
            if let Some(finished) = self.active.take() {
                self.done.push(finished.finish()?);
            }
            while self.next_job < job.min(self.plan.jobs.len()) {
                self.done.push(JobRun::start(self.plan, self.next_job)?.finish()?);
                self.next_job += 1;
            }
            if job < self.plan.jobs.len() {
                self.active = Some(JobRun::start(self.plan, job)?);
                self.next_job = job + 1;
            }
        }
        Ok(self.active.as_mut())
    }
}

/// The executor of one job: takes its pieces in plan order and gives its [`TensorSignature`]. Both drivers
/// run every job through here.
struct JobRun<'a> {
    plan: &'a SignPlan,
    job: usize,
    acc: Option<TensorAccumulator>,
    wholes: [Vec<u8>; 4],
}

impl<'a> JobRun<'a> {
    fn start(plan: &'a SignPlan, job: usize) -> Result<JobRun<'a>, ModelError> {
        let acc = match &plan.jobs[job] {
            Work::Plain { name, t } => Some(
                TensorAccumulator::new(&plan.scheme, name, t.info.dtype, &t.info.shape)
                    .map_err(|e| plan.tensor_error(t, e))?,
            ),
            // A dequantised job's accumulator needs the scales, which are read first (see `accumulator`).
            Work::Dequant { .. } | Work::Lora { .. } | Work::Packed { .. } => None,
        };
        Ok(JobRun { plan, job, acc, wholes: Default::default() })
    }

    /// The job's accumulator, built on first use for a dequantised job.
    fn accumulator(&mut self) -> Result<&mut TensorAccumulator, ModelError> {
        let plan = self.plan;
        let work = &plan.jobs[self.job];
        if self.acc.is_none()
            && let Work::Dequant { name, t, scale } = work
        {
            let scales = Scales::from_tensor(&t.info.shape, scale.info.dtype, &scale.info.shape, &self.wholes[0])
                .map_err(|e| plan.tensor_error(scale, e))?;
            let acc = TensorAccumulator::dequantized(&plan.scheme, name, t.info.dtype, &t.info.shape, scales)
                .map_err(|e| plan.tensor_error(t, e))?;
            self.acc = Some(acc);
        }
        // Rows for a job without an accumulator (a LoRA job) would be a planning bug: reported, not a panic.
        let t = work.primary();
        self.acc
            .as_mut()
            .ok_or_else(|| plan.tensor_error(t, TensorError::RowsOutsideSelection { first_row: 0, rows: 0 }))
    }

    fn apply(&mut self, usage: Use, bytes: &[u8]) -> Result<(), ModelError> {
        match usage {
            Use::Whole { slot } => {
                if let Some(w) = self.wholes.get_mut(slot) {
                    w.clear();
                    w.extend_from_slice(bytes);
                }
                Ok(())
            }
            Use::Rows { first_row } => {
                let plan = self.plan;
                let t = plan.jobs[self.job].primary();
                self.accumulator()?.feed_rows(first_row, bytes).map_err(|e| plan.tensor_error(t, e))
            }
        }
    }

    fn finish(mut self) -> Result<TensorSignature, ModelError> {
        let plan = self.plan;
        match &plan.jobs[self.job] {
            Work::Plain { t, .. } | Work::Dequant { t, .. } => {
                self.accumulator()?;
                let acc = self
                    .acc
                    .take()
                    .ok_or_else(|| plan.tensor_error(t, TensorError::RowsOutsideSelection { first_row: 0, rows: 0 }))?;
                acc.finish().map_err(|e| plan.tensor_error(t, e))
            }
            Work::Lora { name, a, b } => {
                let r = a.info.shape.first().copied().unwrap_or(1);
                let scaling = plan.lora.map_or(1.0, |l| l.scaling(r));
                let (fa, fb) = (tensor_bytes(a, &self.wholes[0]), tensor_bytes(b, &self.wholes[1]));
                lora_delta_signature(&plan.scheme, name, fa, fb, scaling).map_err(|e| plan.tensor_error(a, e))
            }
            Work::Packed { name, layout, tensors: t } => {
                let [qweight, qzeros, scales, g_idx] = &self.wholes;
                let parts = PackedTensors {
                    qweight: tensor_bytes(&t.qweight, qweight),
                    qzeros: tensor_bytes(&t.qzeros, qzeros),
                    scales: tensor_bytes(&t.scales, scales),
                    g_idx: t.g_idx.as_ref().map(|g| tensor_bytes(g, g_idx)),
                };
                packed_signature(&plan.scheme, name, layout, plan.gptq, parts)
                    .map_err(|e| plan.tensor_error(&t.qweight, e))
            }
        }
    }
}

/// Local files, in the order of the files the plan was built from. Each read is a positioned read into a pooled
/// buffer that returns to the pool once its bytes are consumed, so the resident set stays near
/// `threads × max_read`.
#[derive(Debug)]
pub struct LocalSource<'a> {
    files: &'a [LocalFile],
    buffers: Buffers,
}

impl<'a> LocalSource<'a> {
    pub fn new(files: &'a [LocalFile]) -> LocalSource<'a> {
        LocalSource { files, buffers: Buffers::default() }
    }
}

impl RandomAccess for LocalSource<'_> {
    type Buf = Buffer;
    type Error = io::Error;

    fn read_at(&self, read: &Read) -> io::Result<Buffer> {
        let file = self
            .files
            .get(read.file)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read names a file the source does not have"))?;
        file.read_pooled(read.range.start, read.len(), &self.buffers)
    }
}

/// Memory-mapped local files whose bytes never change while they are signed (a Hugging Face cache snapshot:
/// content-addressed blobs renamed into place whole); each read maps one window and unmaps it when consumed.
#[derive(Debug)]
pub struct MappedSource<'a> {
    files: &'a [MappedFile],
}

impl<'a> MappedSource<'a> {
    pub fn new(files: &'a [MappedFile]) -> MappedSource<'a> {
        MappedSource { files }
    }
}

impl RandomAccess for MappedSource<'_> {
    type Buf = Window;
    type Error = io::Error;

    fn read_at(&self, read: &Read) -> io::Result<Window> {
        let file = self
            .files
            .get(read.file)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read names a file the source does not have"))?;
        file.window(read.range.start, read.len(), false)
    }
}

impl ByteSource for LocalSource<'_> {
    type Buf = Buffer;
    type Error = io::Error;

    fn read(&mut self, read: &Read) -> io::Result<Buffer> {
        self.read_at(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{
        Tensor, bf16_bytes, f32_bytes, pack_int4, packed_case_file, packed_cases, safetensors_file, values,
    };
    use crate::header::parse_header;
    use crate::model::Dtype;
    use crate::packed::PackedFormat;
    use crate::reader::sign_files;
    use std::path::{Path, PathBuf};

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    fn tensor<'a>(name: &'a str, dtype: Dtype, shape: &[u64], seed: u64) -> Tensor<'a> {
        let n = shape.iter().product::<u64>() as usize;
        let v = values(n, seed, 0.05);
        let bytes = match dtype {
            Dtype::BF16 => bf16_bytes(&v),
            Dtype::F32 => f32_bytes(&v),
            Dtype::I8 => v.iter().map(|x| ((x * 2000.0) as i8) as u8).collect(),
            _ => unreachable!("test dtypes"),
        };
        Tensor { name, dtype, shape: shape.to_vec(), bytes }
    }

    /// Plain, quantised, LoRA and empty tensors over two files.
    fn model() -> (Vec<Tensor<'static>>, Vec<Tensor<'static>>) {
        let first = vec![
            tensor("model.embed_tokens.weight", Dtype::BF16, &[300, 24], 1),
            tensor("model.norm.weight", Dtype::F32, &[24], 2),
            tensor("q.weight", Dtype::I8, &[64, 24], 3),
            tensor("q.weight_scale", Dtype::F32, &[64, 1], 4),
            tensor("e.weight", Dtype::BF16, &[0, 8], 5),
        ];
        let mut second = vec![
            tensor("base_model.model.v.lora_A.weight", Dtype::F32, &[4, 24], 6),
            tensor("base_model.model.v.lora_B.weight", Dtype::F32, &[40, 4], 7),
            tensor("model.layers.0.mlp.down_proj.weight", Dtype::BF16, &[200, 48], 8),
        ];
        // Packed 4-bit modules, GPTQ (with an act-order g_idx) and AWQ, tall enough for several row blocks.
        let act_order: Vec<u32> = (0..64u32).map(|i| (i * 37 % 64) / 16).collect();
        second.extend(pack_int4("g", PackedFormat::Gptq, true, (96, 64, 4), &act_order, 9).tensors);
        let contiguous: Vec<u32> = (0..32u32).map(|i| i / 16).collect();
        second.extend(pack_int4("w", PackedFormat::Awq, false, (200, 32, 2), &contiguous, 10).tensors);
        (first, second)
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write test file");
        path
    }

    /// The signature by both drivers (they must agree), and the number of streamed reads.
    fn signed_through_plan(
        paths: &[PathBuf],
        scheme: &Scheme,
        opts: &SignOptions,
        limits: ReadLimits,
    ) -> (ModelSignature, usize) {
        let files: Vec<LocalFile> = paths.iter().map(|p| LocalFile::open(p).expect("open")).collect();
        let headers: Vec<Header> = paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).expect("read");
                parse_header(&bytes, None).expect("valid header")
            })
            .collect();
        let refs: Vec<&Header> = headers.iter().collect();
        let plan = SignPlan::new(&names(paths.len()), &refs, scheme, opts, limits).expect("plan");
        let sig = plan.run(&mut LocalSource::new(&files)).expect("run");
        let parallel = plan.run_parallel(&LocalSource::new(&files)).expect("run in parallel");
        assert_eq!(parallel, sig, "{limits:?}");
        (sig, plan.reads().len())
    }

    #[test]
    fn every_split_gives_the_parallel_readers_signature() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (first, second) = model();
        let paths = [
            write(dir.path(), "a.safetensors", &safetensors_file(&first)),
            write(dir.path(), "b.safetensors", &safetensors_file(&second)),
        ];
        let lora = Some(LoraConfig { alpha: 16.0, use_rslora: false });
        for fraction in [1.0, 0.25, 0.02] {
            let scheme = Scheme { row_fraction: fraction, sketch_k: 16, samples: 200, ..Scheme::default() };
            for opts in [SignOptions::default(), SignOptions { lora, dequantize: false, ..SignOptions::default() }] {
                let expected = sign_files(&paths, &scheme, &opts).expect("signed");
                assert!(expected.tensor("q.weight").is_some() && expected.tensor("v.weight").is_some());
                let dequantized = opts.dequantize;
                assert_eq!(expected.tensor("g.weight").is_some() && expected.tensor("w.weight").is_some(), dequantized);
                let mut counts = Vec::new();
                for limits in [
                    ReadLimits::default(),
                    ReadLimits { max_read: 100, max_gap: 0, max_whole: 1 << 20 },
                    ReadLimits { max_read: 4096, max_gap: 1 << 20, max_whole: 1 << 20 },
                ] {
                    let (got, reads) = signed_through_plan(&paths, &scheme, &opts, limits);
                    assert_eq!(got, expected, "fraction {fraction}, {limits:?}");
                    counts.push(reads);
                }
                assert!(counts[1] > counts[0] && counts[2] < counts[1], "{counts:?}");
            }
        }
    }

    #[test]
    fn reads_are_bounded_forward_and_cover_the_selection() {
        let (first, _) = model();
        let bytes = safetensors_file(&first);
        let header = parse_header(&bytes, None).expect("valid");
        let scheme = Scheme { row_fraction: 0.25, ..Scheme::default() };
        let limits = ReadLimits { max_read: 512, max_gap: 0, max_whole: 1 << 20 };
        let plan = SignPlan::new(&names(1), &[&header], &scheme, &SignOptions::default(), limits).expect("plan");
        // Reads never exceed max_read unless one row does (embed rows are 48 bytes, so none here).
        assert!(plan.reads().iter().all(|r| r.len() <= 512 && !r.is_empty()), "{:?}", plan.reads());
        assert!(plan.reads().iter().all(|r| r.range.start >= header.data_start && r.range.end <= header.file_len()));
        assert_eq!(plan.tensors(), 5);
        // Less than the whole data buffer is read at a quarter of the rows, plus the scale read twice.
        assert!(plan.read_bytes() < header.data_len());
    }

    #[test]
    fn oversized_pieces_are_refused_and_sources_are_checked() {
        let (first, _) = model();
        let bytes = safetensors_file(&first);
        let header = parse_header(&bytes, None).expect("valid");
        let tiny = ReadLimits { max_read: 16, max_gap: 0, max_whole: 40 };
        match SignPlan::new(&names(1), &[&header], &Scheme::default(), &SignOptions::default(), tiny) {
            Err(ModelError::PieceTooLarge { file, tensor, len, cap: 40 }) => {
                assert_eq!((file.as_str(), tensor.as_str(), len), ("f0", "model.embed_tokens.weight", 48));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }

        /// Returns one byte too few for every read.
        struct Short(Vec<u8>);
        impl ByteSource for Short {
            type Buf = Vec<u8>;
            type Error = io::Error;
            fn read(&mut self, read: &Read) -> io::Result<Vec<u8>> {
                Ok(self.0[read.range.start as usize..read.range.end as usize - 1].to_vec())
            }
        }
        let plan =
            SignPlan::new(&names(1), &[&header], &Scheme::default(), &SignOptions::default(), ReadLimits::default())
                .expect("plan");
        assert!(matches!(plan.run(&mut Short(bytes.clone())), Err(RunError::WrongLength { .. })));
        let files: Vec<LocalFile> = Vec::new();
        assert!(matches!(plan.run(&mut LocalSource::new(&files)), Err(RunError::Read { .. })));
        assert!(matches!(plan.run_parallel(&LocalSource::new(&files)), Err(RunError::Read { .. })));
    }

    #[test]
    fn malformed_packed_modules_are_refused_at_planning() {
        for case in packed_cases() {
            let bytes = packed_case_file(&case);
            let header = parse_header(&bytes, None).expect("valid header");
            let got = SignPlan::new(
                &names(1),
                &[&header],
                &Scheme::default(),
                &SignOptions::default(),
                ReadLimits::default(),
            );
            let expected = ModelError::Packed { module: "m".into(), source: case.expected.clone() };
            assert!(matches!(got, Err(ref e) if *e == expected), "{}: {got:?}", case.name);
        }
    }
}
