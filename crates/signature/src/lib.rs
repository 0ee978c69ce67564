//! Strict safetensors parsing and per-tensor weight signatures: the signing engine.
//!
//! A model's weights come in as untrusted bytes; a [`ModelSignature`] goes out. The path in between:
//!
//! - [`header`] parses a safetensors header strictly ([`parse_header`]), [`index`] a shard index
//!   ([`parse_index`]). Both reject every malformed input with a specific error variant and never panic.
//! - [`layout`] decides which rows of a tensor a scheme reads ([`selected_row_blocks`]) so a network reader can
//!   fetch just those byte ranges; [`accumulate`] turns those rows, fed in order as raw bytes, into one
//!   [`TensorSignature`] ([`TensorAccumulator`]): blake3 content hash, mergeable moments ([`moments`]), a
//!   two-sided CountSketch ([`sketch`]) and seeded samples, with optional dequantisation; [`adapter`] does the
//!   same for the `B·A` update of a LoRA adapter. The hot loops live in `kernel`, dispatched to AVX2 at run
//!   time and bit-for-bit identical on every CPU.
//! - [`plan`](mod@plan) decides from the headers alone what a model's signature holds (which tensors are
//!   dequantised, which LoRA pairs become deltas); [`packed`] checks and dequantises the packed 4-bit weights
//!   of GPTQ and AWQ checkpoints.
//!
//! The engine around those pieces has two parts, both without IO, and every caller wraps the same two:
//! - [`checkpoint`]: the orchestrator of "which files make this model". A [`Checkpoint`] chooses the layout
//!   (adapter, shard index, or every `*.safetensors`), asks its caller for the small files it needs
//!   (`adapter_config.json`, the index) and for each weights file's header ([`read_header`]), checks the
//!   index against the headers, and builds the plan. Its refusals are one error type, [`ModelError`].
//! - [`source`]: the executor. A [`SignPlan`] lists every byte range the signature needs and turns those bytes
//!   into the [`ModelSignature`], either in parallel over tensors from a [`RandomAccess`] source or in order
//!   from a streaming [`ByteSource`]; both run each tensor through the same code.
//!
//! [`reader`] is the local caller: [`sign_model_dir`] and [`sign_files`] read through [`file`] (positioned
//! reads, so a file truncated while being signed is an error, not a SIGBUS) and run the plan in parallel;
//! [`sign_immutable_dir`] does the same for files that never change underneath (a Hugging Face cache snapshot)
//! through memory maps ([`mmap`]). The `hub` crate is the remote caller: it reads the same things as HTTP
//! ranges and streams them into [`SignPlan::run`].
//!
//! **Adding a file format** (GGUF, PyTorch `.bin`) means adding a header parser that yields a [`Header`] and
//! teaching [`checkpoint`] which file names hold it and how its header is read; see the [`checkpoint`] docs.
//! Neither caller changes.
//!
//! **Invariant:** no network IO and no SQL here; the only IO is [`reader`]'s, on local files. The only `unsafe`
//! code of the project is the file mapping in [`mmap`], used only for files that cannot change underneath.

pub mod accumulate;
pub mod adapter;
pub mod checkpoint;
pub mod decode;
pub mod file;
pub mod header;
pub mod index;
mod json;
pub mod layout;
pub mod mmap;
pub mod model;
pub mod moments;
pub mod packed;
pub mod plan;
pub mod reader;
pub mod sketch;
pub mod source;

#[cfg(test)]
mod corpus;
mod hashing;
mod kernel;

pub use accumulate::{MAX_SAMPLES, MAX_SKETCH_K, Scales, SchemeError, TensorAccumulator, TensorError, validate_scheme};
pub use adapter::{LoraConfig, TensorBytes, lora_delta_signature};
pub use checkpoint::{
    AdapterConfigError, Checkpoint, FIRST_HEADER_READ, HeaderStep, Layout, ModelError, Need, Planned,
    parse_adapter_config, read_header,
};
pub use decode::{DecodeError, decode_f32, decode_f64};
pub use header::{Header, HeaderError, MAX_HEADER_LEN, TensorInfo, parse_header};
pub use index::{IndexError, ShardIndex, parse_index};
pub use layout::{RowLayout, selected_row_blocks};
pub use model::{Dtype, ModelSignature, Moments, SCHEME_VERSION, Scheme, Sketch, TensorSignature, ValueSource};
pub use packed::{
    GptqFormat, PackedError, PackedFormat, PackedLayout, PackedTensors, dequantize as dequantize_packed, packed_layout,
    packed_signature,
};
pub use plan::{Job, PlanError, TensorRef, plan};
pub use reader::{FileUsed, ModelDir, SignError, sign_files, sign_immutable_dir, sign_model_dir};
pub use source::{
    ByteSource, LocalSource, MappedSource, RandomAccess, Read, ReadLimits, RunError, SignOptions, SignPlan,
};
