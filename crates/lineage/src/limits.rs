//! The size limits of lineage recovery, each defined once with the reason for its value.
//!
//! Every count that bounds how much work the index or a solver does lives here: how large an architecture
//! group may grow before candidate pairs are screened rather than all compared, how many screened neighbours
//! and candidate parents a model keeps, how many relatives a merge fit tries. Thresholds on measured
//! quantities (distances, residuals, cosines) are [`crate::Options`] fields or named beside the rule that uses
//! them. Code, examples, tests and documentation refer to these by name.

/// Architecture groups up to this size compare every pair of models exactly; larger groups compare each model
/// only with its screened nearest neighbours (design §4.1). All-pairs is O(n²·tensors), affordable at this size
/// and exact; 300 keeps every zoo (and most real architectures' families) on the exact path. The default of
/// [`crate::Options::dense_limit`]; [`crate::Index`] also uses that option to bound the adapter-base search.
pub const DENSE_LIMIT: usize = 300;

/// Families above this many models give the arborescence only each model's [`NEAREST_PARENTS`] nearest related
/// candidates (plus declared bases). The same bound as [`DENSE_LIMIT`]: a family within it keeps all its
/// related pairs, as its group compared all of them.
pub const SPARSE_ABOVE: usize = DENSE_LIMIT;

/// Length of the screening vector (a CountSketch of a model's unit-normalised sketches). Its squared distance
/// estimates `2·(1 − mean sketch cosine)` with a relative error near `√(2/(SCREEN_DIM·slots))`, enough to keep
/// parents, children and siblings among the nearest.
pub const SCREEN_DIM: usize = 64;

/// Screened nearest neighbours per model in a large group (the default of
/// [`crate::Options::screen_neighbours`]): well above [`NEAREST_PARENTS`], so the screen's error rarely hides
/// one of the candidate parents the solver keeps.
pub const SCREEN_NEIGHBOURS: usize = 32;

/// Candidate parents per model in a family above [`SPARSE_ABOVE`]. 12 rather than 24 halves the arborescence's
/// edges (and the incremental re-solve of a 10,000-model family); on the synthetic 10,000-model bench edge
/// accuracy went from 0.995 to 0.996.
pub const NEAREST_PARENTS: usize = 12;

/// The low-rank (LoRA) test costs SVDs: it runs for a model's this many nearest candidate parents (and its
/// declared bases) when costing edges. A LoRA child sits close to its parent, so three suffice.
pub const LOW_RANK_TESTED: usize = 3;

/// Slots (spread over depth) whose sketched difference is ranked for the low-rank test: the median rank over
/// 16 layers is stable, and each costs one k×k SVD.
pub const RANK_SLOTS: usize = 16;

/// Merge parents are searched among this many nearest relatives of the child (pairs: 66 fits).
pub const MERGE_CANDIDATES: usize = 12;

/// Three-regressor (task-arithmetic) fits try every triple of this many nearest relatives (56 fits).
pub const MERGE_TRIPLE_CANDIDATES: usize = 8;

/// Rounds of cycle repair after merges: each removes one edge, so this bounds the work, not correctness.
pub const MERGE_REPAIRS: usize = 64;

/// Sketch entries per tensor of the adapter-base search's quick first pass: enough to tell a fit (≪ 1) from a
/// miss (≥ 1), a sixteenth of a k = 64 sketch.
pub const QUICK_ENTRIES: usize = 256;
