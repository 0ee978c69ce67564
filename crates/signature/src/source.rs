//! Signing a model from any source of bytes: a mapped file, an HTTP range reader, anything that can hand out a
//! byte range of a file.
//!
//! [`SignPlan`] is built from the parsed headers alone. It runs [`plan`](crate::plan::plan) to decide what the
//! signature holds, then lists every byte range the signature needs, in the order they are consumed: the
//! selected row blocks of each tensor ([`selected_row_blocks`]), a quantised weight's scale tensor before its
//! rows, a LoRA pair's two factors, a packed 4-bit module's whole packed tensors. Adjacent ranges of one file are merged into [`Read`]s of at most
//! [`ReadLimits::max_read`] bytes (ranges separated by at most [`ReadLimits::max_gap`] bytes are merged too,
//! the gap read and dropped), so a network reader issues few, bounded requests. [`SignPlan::run`] then pulls
//! those reads, in order, from a [`ByteSource`] and feeds the same [`TensorAccumulator`]s, scales and
//! [`lora_delta_signature`] the mmap reader uses. The accumulator's result does not depend on how rows are
//! split into pieces, so every source gives the signature [`crate::sign_files`] gives, bit for bit.
//!
//! Jobs run one after another, ordered by where their tensor lies in its file, so memory holds one read and
//! one accumulator at a time; a source that prefetches knows the whole list up front ([`SignPlan::reads`]).
//!
//! The module also holds the sans-IO pieces of [`crate::sign_model_dir`] a remote reader needs to make the
//! same decisions from a file listing: [`choose_layout`], [`check_index`] and [`parse_adapter_config`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::{Deref, Range};

use crate::accumulate::{Scales, SchemeError, TensorAccumulator, TensorError, validate_scheme};
use crate::adapter::{LoraConfig, TensorBytes, lora_delta_signature};
use crate::header::{Header, TensorInfo};
use crate::index::ShardIndex;
use crate::layout::{RowLayout, selected_row_blocks};
use crate::mmap::{MappedFile, Window};
use crate::model::{ModelSignature, Scheme, TensorSignature};
use crate::packed::{GptqFormat, PackedLayout, PackedTensors, packed_signature};
use crate::plan::{self, PlanError, TensorRef};
use crate::reader::{AdapterConfigError, MAX_ADAPTER_CONFIG_LEN, SignOptions};

/// One byte range of one of the files a plan was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// Index into the headers given to [`SignPlan::new`].
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

/// Something that hands out byte ranges of a model's files.
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

/// Why a plan cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SourcePlanError {
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("file {file}, tensor {tensor:?}: shape {shape:?} overflows 64 bits")]
    ShapeOverflow { file: usize, tensor: String, shape: Vec<u64> },
    #[error("file {file}, tensor {tensor:?}: a piece of {len} bytes exceeds the cap of {cap}")]
    PieceTooLarge { file: usize, tensor: String, len: u64, cap: u64 },
}

/// Why running a plan failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    #[error("reading bytes {}..{} of file {}: {source}", read.range.start, read.range.end, read.file)]
    Read { read: Read, source: E },
    #[error("read of bytes {}..{} of file {} returned {got} bytes", read.range.start, read.range.end, read.file)]
    WrongLength { read: Read, got: u64 },
    #[error("file {file}, tensor {tensor:?}: {source}")]
    Tensor { file: usize, tensor: String, source: TensorError },
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
    jobs: Vec<Work>,
    pieces: Vec<Piece>,
    fetches: Vec<Fetch>,
    reads: Vec<Read>,
}

impl SignPlan {
    /// Plans the signature of the model stored in the files with these `headers` (in the order the reads will
    /// name them). `opts` decide dequantisation, the GPTQ zero-point format and the LoRA scaling, as for
    /// [`crate::sign_files`].
    ///
    /// # Errors
    /// [`SourcePlanError::Scheme`], [`SourcePlanError::Plan`] for duplicate tensors, and the size checks of
    /// [`ReadLimits::max_whole`].
    pub fn new(
        headers: &[&Header],
        scheme: &Scheme,
        opts: &SignOptions,
        limits: ReadLimits,
    ) -> Result<SignPlan, SourcePlanError> {
        validate_scheme(scheme)?;
        let tensors: Vec<&[TensorInfo]> = headers.iter().map(|h| h.tensors.as_slice()).collect();
        let stored = |r: TensorRef| Stored {
            file: r.file,
            data_start: headers[r.file].data_start,
            info: headers[r.file].tensors[r.tensor].clone(),
        };
        let mut jobs: Vec<Work> = plan::plan(&tensors, opts.dequantize)?
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
        for (j, work) in jobs.iter().enumerate() {
            match work {
                Work::Plain { name, t } => row_pieces(&mut pieces, j, name, t, scheme, limits)?,
                Work::Dequant { name, t, scale } => {
                    whole_piece(&mut pieces, j, 0, scale, limits)?;
                    row_pieces(&mut pieces, j, name, t, scheme, limits)?;
                }
                Work::Lora { a, b, .. } => {
                    whole_piece(&mut pieces, j, 0, a, limits)?;
                    whole_piece(&mut pieces, j, 1, b, limits)?;
                }
                // Packed words interleave the weight's rows: the packed tensors are read whole (see `packed`).
                Work::Packed { tensors: t, .. } => {
                    for (slot, part) in
                        [Some(&t.qweight), Some(&t.qzeros), Some(&t.scales), t.g_idx.as_ref()].into_iter().enumerate()
                    {
                        if let Some(part) = part {
                            whole_piece(&mut pieces, j, slot, part, limits)?;
                        }
                    }
                }
            }
        }
        let file_of = |p: &Piece| jobs[p.job].file_of(p.usage);
        let fetches = coalesce(&pieces, file_of, limits);
        let reads = fetches.iter().map(|f| f.read.clone()).collect();
        Ok(SignPlan { scheme: *scheme, lora: opts.lora, gptq: opts.gptq_format, jobs, pieces, fetches, reads })
    }

    /// The reads [`SignPlan::run`] will make, in order.
    pub fn reads(&self) -> &[Read] {
        &self.reads
    }

    /// Bytes read in total (gaps included).
    pub fn read_bytes(&self) -> u64 {
        self.reads.iter().map(Read::len).sum()
    }

    /// Number of signatures the plan produces.
    pub fn tensors(&self) -> usize {
        self.jobs.len()
    }

    /// Pulls every read from `source`, in order, and returns the model's signature.
    ///
    /// # Errors
    /// [`RunError::Read`] when the source fails, [`RunError::WrongLength`] when it returns the wrong number of
    /// bytes, [`RunError::Tensor`] when a tensor's bytes cannot be signed.
    pub fn run<S: ByteSource>(&self, source: &mut S) -> Result<ModelSignature, RunError<S::Error>> {
        let mut runner = Runner { plan: self, next_job: 0, active: None, done: Vec::with_capacity(self.jobs.len()) };
        for fetch in &self.fetches {
            let buf = source.read(&fetch.read).map_err(|source| RunError::Read { read: fetch.read.clone(), source })?;
            if buf.len() as u64 != fetch.read.len() {
                return Err(RunError::WrongLength { read: fetch.read.clone(), got: buf.len() as u64 });
            }
            for piece in &self.pieces[fetch.pieces.clone()] {
                let start = (piece.range.start - fetch.read.range.start) as usize;
                let end = (piece.range.end - fetch.read.range.start) as usize;
                // In bounds: coalesce() puts each piece inside its read, and the length was checked above.
                let bytes = buf.get(start..end).unwrap_or_default();
                runner.advance_to(piece.job)?;
                runner.apply(piece.usage, bytes)?;
            }
        }
        runner.advance_to(self.jobs.len())?;
        let mut tensors = runner.done;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ModelSignature { scheme: self.scheme, tensors })
    }
}

impl Work {
    fn file_of(&self, usage: Use) -> usize {
        match (self, usage) {
            (Work::Dequant { scale, .. }, Use::Whole { .. }) => scale.file,
            (Work::Lora { b, .. }, Use::Whole { slot: 1 }) => b.file,
            (Work::Packed { tensors: t, .. }, Use::Whole { slot: 1 }) => t.qzeros.file,
            (Work::Packed { tensors: t, .. }, Use::Whole { slot: 2 }) => t.scales.file,
            (Work::Packed { tensors: t, .. }, Use::Whole { slot: 3 }) => {
                t.g_idx.as_ref().map_or(t.qweight.file, |g| g.file)
            }
            _ => self.primary().file,
        }
    }
}

/// The pieces that feed the selected rows of `t`, each at most `max_read` bytes (but at least one row).
fn row_pieces(
    pieces: &mut Vec<Piece>,
    job: usize,
    name: &str,
    t: &Stored,
    scheme: &Scheme,
    limits: ReadLimits,
) -> Result<(), SourcePlanError> {
    let overflow =
        || SourcePlanError::ShapeOverflow { file: t.file, tensor: t.info.name.clone(), shape: t.info.shape.clone() };
    let layout = RowLayout::of(&t.info.shape).ok_or_else(overflow)?;
    if layout.numel() == 0 {
        // An empty tensor has no bytes to feed (TensorAccumulator selects no rows for it either).
        return Ok(());
    }
    let row_bytes = layout.row_len.checked_mul(t.info.dtype.size()).ok_or_else(overflow)?;
    if row_bytes > limits.max_whole {
        return Err(SourcePlanError::PieceTooLarge {
            file: t.file,
            tensor: t.info.name.clone(),
            len: row_bytes,
            cap: limits.max_whole,
        });
    }
    let rows_per_piece = (limits.max_read / row_bytes).max(1);
    let base = t.span().start;
    for block in selected_row_blocks(scheme, name, &t.info.shape) {
        let mut row = block.start;
        while row < block.end {
            let rows = rows_per_piece.min(block.end - row);
            let range = base + row * row_bytes..base + (row + rows) * row_bytes;
            pieces.push(Piece { job, range, usage: Use::Rows { first_row: row } });
            row += rows;
        }
    }
    Ok(())
}

/// The piece holding all of the small tensor `t`, unless it is empty.
fn whole_piece(
    pieces: &mut Vec<Piece>,
    job: usize,
    slot: usize,
    t: &Stored,
    limits: ReadLimits,
) -> Result<(), SourcePlanError> {
    let len = t.info.byte_len();
    if len > limits.max_whole {
        return Err(SourcePlanError::PieceTooLarge {
            file: t.file,
            tensor: t.info.name.clone(),
            len,
            cap: limits.max_whole,
        });
    }
    if len > 0 {
        pieces.push(Piece { job, range: t.span(), usage: Use::Whole { slot } });
    }
    Ok(())
}

/// Groups consecutive pieces into reads: same file, forward, total at most `max_read` (a piece longer than that
/// is a read of its own), and either adjacent or separated by at most `max_gap` bytes that no earlier read
/// fetched (a scale tensor read out of order must not make the next read fetch its neighbours again).
fn coalesce(pieces: &[Piece], file_of: impl Fn(&Piece) -> usize, limits: ReadLimits) -> Vec<Fetch> {
    let mut fetches: Vec<Fetch> = Vec::new();
    // Per file, the furthest byte fetched by the reads before the last one.
    let mut high_water: BTreeMap<usize, u64> = BTreeMap::new();
    for (i, p) in pieces.iter().enumerate() {
        let file = file_of(p);
        if let Some(last) = fetches.last_mut() {
            let r = &last.read.range;
            let at_frontier = high_water.get(&file).is_none_or(|&hw| r.end >= hw);
            let joins = last.read.file == file
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
        fetches.push(Fetch { read: Read { file, range: p.range.clone() }, pieces: i..i + 1 });
    }
    fetches
}

fn tensor_bytes<'b>(t: &'b Stored, bytes: &'b [u8]) -> TensorBytes<'b> {
    TensorBytes { dtype: t.info.dtype, shape: &t.info.shape, bytes }
}

/// The job being fed.
struct Active {
    job: usize,
    acc: Option<TensorAccumulator>,
    wholes: [Vec<u8>; 4],
}

struct Runner<'a> {
    plan: &'a SignPlan,
    next_job: usize,
    active: Option<Active>,
    done: Vec<TensorSignature>,
}

impl Runner<'_> {
    fn tensor_error<E: std::error::Error>(t: &Stored, source: TensorError) -> RunError<E> {
        RunError::Tensor { file: t.file, tensor: t.info.name.clone(), source }
    }

    /// Finishes every job before `job` (including jobs that read nothing) and makes `job` active;
    /// `job == jobs.len()` finishes them all.
    fn advance_to<E: std::error::Error>(&mut self, job: usize) -> Result<(), RunError<E>> {
        loop {
            if let Some(active) = self.active.take() {
                if active.job == job {
                    self.active = Some(active);
                    return Ok(());
                }
                let signature = self.finish(active)?;
                self.done.push(signature);
            }
            if self.next_job > job || self.next_job >= self.plan.jobs.len() {
                return Ok(());
            }
            let start = self.next_job;
            self.next_job += 1;
            let acc = match &self.plan.jobs[start] {
                Work::Plain { name, t } => Some(
                    TensorAccumulator::new(&self.plan.scheme, name, t.info.dtype, &t.info.shape)
                        .map_err(|e| Self::tensor_error(t, e))?,
                ),
                Work::Dequant { .. } | Work::Lora { .. } | Work::Packed { .. } => None,
            };
            self.active = Some(Active { job: start, acc, wholes: Default::default() });
        }
    }

    /// Builds a dequantised job's accumulator on first use: it needs the scales, read before the rows.
    fn ensure_accumulator<E: std::error::Error>(plan: &SignPlan, active: &mut Active) -> Result<(), RunError<E>> {
        if active.acc.is_none()
            && let Work::Dequant { name, t, scale } = &plan.jobs[active.job]
        {
            let scales = Scales::from_tensor(&t.info.shape, scale.info.dtype, &scale.info.shape, &active.wholes[0])
                .map_err(|e| Self::tensor_error(scale, e))?;
            let acc = TensorAccumulator::dequantized(&plan.scheme, name, t.info.dtype, &t.info.shape, scales)
                .map_err(|e| Self::tensor_error(t, e))?;
            active.acc = Some(acc);
        }
        Ok(())
    }

    /// Rows for a job without an accumulator (a LoRA job) would be a planning bug: reported, not a panic.
    fn no_accumulator<E: std::error::Error>(t: &Stored) -> RunError<E> {
        Self::tensor_error(t, TensorError::RowsOutsideSelection { first_row: 0, rows: 0 })
    }

    fn apply<E: std::error::Error>(&mut self, usage: Use, bytes: &[u8]) -> Result<(), RunError<E>> {
        let Some(active) = self.active.as_mut() else { return Ok(()) };
        match usage {
            Use::Whole { slot } => {
                if let Some(w) = active.wholes.get_mut(slot) {
                    w.clear();
                    w.extend_from_slice(bytes);
                }
                Ok(())
            }
            Use::Rows { first_row } => {
                let t = self.plan.jobs[active.job].primary();
                Self::ensure_accumulator(self.plan, active)?;
                let acc = active.acc.as_mut().ok_or_else(|| Self::no_accumulator(t))?;
                acc.feed_rows(first_row, bytes).map_err(|e| Self::tensor_error(t, e))
            }
        }
    }

    fn finish<E: std::error::Error>(&self, mut active: Active) -> Result<TensorSignature, RunError<E>> {
        match &self.plan.jobs[active.job] {
            Work::Plain { t, .. } | Work::Dequant { t, .. } => {
                Self::ensure_accumulator(self.plan, &mut active)?;
                let acc = active.acc.take().ok_or_else(|| Self::no_accumulator(t))?;
                acc.finish().map_err(|e| Self::tensor_error(t, e))
            }
            Work::Lora { name, a, b } => {
                let r = a.info.shape.first().copied().unwrap_or(1);
                let scaling = self.plan.lora.map_or(1.0, |l| l.scaling(r));
                let fa = TensorBytes { dtype: a.info.dtype, shape: &a.info.shape, bytes: &active.wholes[0] };
                let fb = TensorBytes { dtype: b.info.dtype, shape: &b.info.shape, bytes: &active.wholes[1] };
                lora_delta_signature(&self.plan.scheme, name, fa, fb, scaling).map_err(|e| Self::tensor_error(a, e))
            }
            Work::Packed { name, layout, tensors: t } => {
                let [qweight, qzeros, scales, g_idx] = &active.wholes;
                let parts = PackedTensors {
                    qweight: tensor_bytes(&t.qweight, qweight),
                    qzeros: tensor_bytes(&t.qzeros, qzeros),
                    scales: tensor_bytes(&t.scales, scales),
                    g_idx: t.g_idx.as_ref().map(|g| tensor_bytes(g, g_idx)),
                };
                packed_signature(&self.plan.scheme, name, layout, self.plan.gptq, parts)
                    .map_err(|e| Self::tensor_error(&t.qweight, e))
            }
        }
    }
}

/// A [`ByteSource`] over mapped local files, in the order of the headers the plan was built from.
#[derive(Debug)]
pub struct MappedSource<'a> {
    files: &'a [MappedFile],
}

impl<'a> MappedSource<'a> {
    pub fn new(files: &'a [MappedFile]) -> MappedSource<'a> {
        MappedSource { files }
    }
}

impl ByteSource for MappedSource<'_> {
    type Buf = Window;
    type Error = io::Error;

    fn read(&mut self, read: &Read) -> io::Result<Window> {
        let file = self
            .files
            .get(read.file)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read names a file the source does not have"))?;
        file.window(read.range.start, read.len(), true)
    }
}

/// Which files of a repository make up its model, decided from the file names alone (the rules of
/// [`crate::sign_model_dir`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirLayout {
    /// `adapter_model.safetensors`, scaled by `adapter_config.json` when `config` is true.
    Adapter { config: bool },
    /// The shards named by the index file `index`.
    Sharded { index: String },
    /// Every `*.safetensors` file, sorted.
    Files { files: Vec<String> },
}

/// The name of a PEFT adapter's weights file.
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";

/// The name of a PEFT adapter's configuration.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// Why a listing does not hold one model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("an adapter sits beside full weights ({other})")]
    AdapterBesideWeights { other: String },
    #[error("several shard indexes: {found:?}")]
    AmbiguousIndex { found: Vec<String> },
    #[error("no safetensors files")]
    NoSafetensors,
}

/// Decides, from the names of the files directly in a model directory or repository root, which files hold
/// the model: an adapter, else the shards of the one `*.safetensors.index.json`, else every `*.safetensors`.
///
/// # Errors
/// [`LayoutError`] for an adapter beside other weights, several indexes, or no safetensors at all.
pub fn choose_layout(names: &BTreeSet<String>) -> Result<DirLayout, LayoutError> {
    let safetensors: Vec<&String> = names.iter().filter(|n| n.ends_with(".safetensors")).collect();
    let indexes: Vec<&String> = names.iter().filter(|n| n.ends_with(".safetensors.index.json")).collect();
    if names.contains(ADAPTER_FILE) {
        if let Some(other) = safetensors.iter().find(|n| n.as_str() != ADAPTER_FILE) {
            return Err(LayoutError::AdapterBesideWeights { other: (*other).clone() });
        }
        return Ok(DirLayout::Adapter { config: names.contains(ADAPTER_CONFIG_FILE) });
    }
    match indexes.as_slice() {
        [] => {}
        [index] => return Ok(DirLayout::Sharded { index: (*index).clone() }),
        _ => return Err(LayoutError::AmbiguousIndex { found: indexes.iter().map(|s| (*s).clone()).collect() }),
    }
    if safetensors.is_empty() {
        return Err(LayoutError::NoSafetensors);
    }
    Ok(DirLayout::Files { files: safetensors.into_iter().cloned().collect() })
}

/// How an index disagrees with the shards it names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexMismatch {
    #[error("index maps {tensor:?} to {indexed:?} but it is in {found:?}")]
    WrongShard { tensor: String, indexed: String, found: String },
    #[error("index maps {tensor:?} to {indexed:?} but no shard holds it")]
    IndexedTensorMissing { tensor: String, indexed: String },
    #[error("tensor {tensor:?} of {file:?} is not in the index")]
    TensorNotIndexed { tensor: String, file: String },
}

/// Checks that `index` names exactly the tensors the `shards` (file name, header tensors) hold, each in the
/// shard that holds it.
///
/// # Errors
/// The first [`IndexMismatch`] found.
pub fn check_index(index: &ShardIndex, shards: &[(&str, &[TensorInfo])]) -> Result<(), IndexMismatch> {
    let mut found: BTreeMap<&str, &str> = BTreeMap::new();
    for (shard, tensors) in shards {
        for t in *tensors {
            found.insert(&t.name, shard);
        }
    }
    for (tensor, indexed) in &index.weight_map {
        match found.get(tensor.as_str()) {
            Some(&shard) if shard == indexed => {}
            Some(&shard) => {
                return Err(IndexMismatch::WrongShard {
                    tensor: tensor.clone(),
                    indexed: indexed.clone(),
                    found: shard.to_owned(),
                });
            }
            None => {
                return Err(IndexMismatch::IndexedTensorMissing { tensor: tensor.clone(), indexed: indexed.clone() });
            }
        }
    }
    if let Some((tensor, file)) = found.iter().find(|(t, _)| !index.weight_map.contains_key(**t)) {
        return Err(IndexMismatch::TensorNotIndexed { tensor: (*tensor).to_owned(), file: (*file).to_owned() });
    }
    Ok(())
}

/// Reads the LoRA scaling from the bytes of an (untrusted) `adapter_config.json`, as [`crate::sign_model_dir`]
/// does: a missing `lora_alpha` takes PEFT's default of 8, `use_rslora` defaults to false.
///
/// # Errors
/// An [`AdapterConfigError`] for a file over [`MAX_ADAPTER_CONFIG_LEN`], invalid JSON, or bad field types.
pub fn parse_adapter_config(bytes: &[u8]) -> Result<LoraConfig, AdapterConfigError> {
    if bytes.len() as u64 > MAX_ADAPTER_CONFIG_LEN {
        return Err(AdapterConfigError::TooLarge { len: bytes.len() as u64, cap: MAX_ADAPTER_CONFIG_LEN });
    }
    // serde_json bounds recursion itself (128 levels) and the input is capped; its Value is fine here.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| AdapterConfigError::Json { message: e.to_string() })?;
    let object = value.as_object().ok_or(AdapterConfigError::NotAnObject)?;
    let alpha = match object.get("lora_alpha") {
        None | Some(serde_json::Value::Null) => 8.0,
        Some(v) => v.as_f64().filter(|a| a.is_finite() && *a > 0.0).ok_or(AdapterConfigError::Alpha)?,
    };
    let use_rslora = match object.get("use_rslora") {
        None | Some(serde_json::Value::Null) => false,
        Some(v) => v.as_bool().ok_or(AdapterConfigError::Rslora)?,
    };
    Ok(LoraConfig { alpha, use_rslora })
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

    fn signed_through_plan(
        paths: &[PathBuf],
        scheme: &Scheme,
        opts: &SignOptions,
        limits: ReadLimits,
    ) -> (ModelSignature, usize) {
        let files: Vec<MappedFile> = paths.iter().map(|p| MappedFile::open(p).expect("open")).collect();
        let headers: Vec<Header> = paths
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).expect("read");
                parse_header(&bytes, None).expect("valid header")
            })
            .collect();
        let refs: Vec<&Header> = headers.iter().collect();
        let plan = SignPlan::new(&refs, scheme, opts, limits).expect("plan");
        let sig = plan.run(&mut MappedSource::new(&files)).expect("run");
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
        let plan = SignPlan::new(&[&header], &scheme, &SignOptions::default(), limits).expect("plan");
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
        match SignPlan::new(&[&header], &Scheme::default(), &SignOptions::default(), tiny) {
            Err(SourcePlanError::PieceTooLarge { tensor, len, cap: 40, .. }) => {
                assert_eq!((tensor.as_str(), len), ("model.embed_tokens.weight", 48));
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
        let plan = SignPlan::new(&[&header], &Scheme::default(), &SignOptions::default(), ReadLimits::default())
            .expect("plan");
        assert!(matches!(plan.run(&mut Short(bytes.clone())), Err(RunError::WrongLength { .. })));
        let files: Vec<MappedFile> = Vec::new();
        assert!(matches!(plan.run(&mut MappedSource::new(&files)), Err(RunError::Read { .. })));
    }

    #[test]
    fn malformed_packed_modules_are_refused_at_planning() {
        for case in packed_cases() {
            let bytes = packed_case_file(&case);
            let header = parse_header(&bytes, None).expect("valid header");
            let got = SignPlan::new(&[&header], &Scheme::default(), &SignOptions::default(), ReadLimits::default());
            let expected = PlanError::Packed { module: "m".into(), source: case.expected.clone() };
            assert!(matches!(got, Err(SourcePlanError::Plan(ref e)) if *e == expected), "{}: {got:?}", case.name);
        }
    }

    #[test]
    fn layouts_follow_the_directory_rules() {
        let set = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<String>>();
        let check = |names: &[&str], expected: Result<DirLayout, LayoutError>| {
            assert_eq!(choose_layout(&set(names)), expected, "{names:?}");
        };
        check(&["adapter_model.safetensors", "adapter_config.json"], Ok(DirLayout::Adapter { config: true }));
        check(&["adapter_model.safetensors"], Ok(DirLayout::Adapter { config: false }));
        check(
            &["adapter_model.safetensors", "model.safetensors"],
            Err(LayoutError::AdapterBesideWeights { other: "model.safetensors".into() }),
        );
        check(
            &["a.safetensors", "model.safetensors.index.json", "config.json"],
            Ok(DirLayout::Sharded { index: "model.safetensors.index.json".into() }),
        );
        check(
            &["a.safetensors.index.json", "b.safetensors.index.json"],
            Err(LayoutError::AmbiguousIndex {
                found: vec!["a.safetensors.index.json".into(), "b.safetensors.index.json".into()],
            }),
        );
        check(
            &["b.safetensors", "a.safetensors", "README.md"],
            Ok(DirLayout::Files { files: vec!["a.safetensors".into(), "b.safetensors".into()] }),
        );
        check(&["pytorch_model.bin"], Err(LayoutError::NoSafetensors));
    }

    #[test]
    fn index_checks_and_adapter_configs() {
        let info = |name: &str| TensorInfo { name: name.into(), dtype: Dtype::F32, shape: vec![1], begin: 0, end: 4 };
        let (a, b) = ([info("x"), info("y")], [info("z")]);
        let index = |pairs: &[(&str, &str)]| ShardIndex {
            total_size: None,
            weight_map: pairs.iter().map(|(t, f)| ((*t).to_owned(), (*f).to_owned())).collect(),
        };
        let shards: [(&str, &[TensorInfo]); 2] = [("s1", &a), ("s2", &b)];
        assert_eq!(check_index(&index(&[("x", "s1"), ("y", "s1"), ("z", "s2")]), &shards), Ok(()));
        assert_eq!(
            check_index(&index(&[("x", "s1"), ("y", "s2"), ("z", "s2")]), &shards),
            Err(IndexMismatch::WrongShard { tensor: "y".into(), indexed: "s2".into(), found: "s1".into() })
        );
        assert_eq!(
            check_index(&index(&[("x", "s1"), ("y", "s1"), ("z", "s2"), ("w", "s2")]), &shards),
            Err(IndexMismatch::IndexedTensorMissing { tensor: "w".into(), indexed: "s2".into() })
        );
        assert_eq!(
            check_index(&index(&[("x", "s1"), ("z", "s2")]), &shards),
            Err(IndexMismatch::TensorNotIndexed { tensor: "y".into(), file: "s1".into() })
        );

        let check = |json: &str, expected: Result<LoraConfig, AdapterConfigError>| {
            assert_eq!(parse_adapter_config(json.as_bytes()), expected, "{json}");
        };
        check(r#"{"lora_alpha":16,"use_rslora":true}"#, Ok(LoraConfig { alpha: 16.0, use_rslora: true }));
        check("{}", Ok(LoraConfig { alpha: 8.0, use_rslora: false }));
        check(r#"{"lora_alpha":"16"}"#, Err(AdapterConfigError::Alpha));
        check(r#"{"use_rslora":1}"#, Err(AdapterConfigError::Rslora));
        check("[1]", Err(AdapterConfigError::NotAnObject));
        assert!(matches!(parse_adapter_config(b"{"), Err(AdapterConfigError::Json { .. })));
        let big = vec![b' '; MAX_ADAPTER_CONFIG_LEN as usize + 1];
        assert_eq!(
            parse_adapter_config(&big),
            Err(AdapterConfigError::TooLarge { len: MAX_ADAPTER_CONFIG_LEN + 1, cap: MAX_ADAPTER_CONFIG_LEN })
        );
    }
}
