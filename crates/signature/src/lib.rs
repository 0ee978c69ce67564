//! Strict safetensors parsing and per-tensor weight signatures.
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
//!   dequantised, which LoRA pairs become deltas), for every reader; [`packed`] checks and dequantises the
//!   packed 4-bit weights of GPTQ and AWQ checkpoints.
//! - [`reader`] signs local files: [`sign_files`] for one model in one or more safetensors files,
//!   [`sign_model_dir`] for a directory (single file, sharded with an index, or a PEFT adapter), reading
//!   through the narrow [`mmap`] wrapper, in parallel over tensors.
//!
//! - [`source`] signs from any [`ByteSource`] through a [`SignPlan`]: the list of byte ranges a signature
//!   needs, fed to the same accumulators; the Hub client's ranged reads use it.
//!
//! **Invariant:** no network IO and no SQL here. The only `unsafe` code of the project is the file mapping in
//! [`mmap`].

pub mod accumulate;
pub mod adapter;
pub mod decode;
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
pub use reader::{
    AdapterConfigError, FileError, FileUsed, Layout, ModelDir, SignError, SignOptions, sign_files, sign_model_dir,
};
pub use source::{
    ByteSource, DirLayout, IndexMismatch, LayoutError, MappedSource, Read, ReadLimits, RunError, SignPlan,
    SourcePlanError, check_index, choose_layout, parse_adapter_config,
};
