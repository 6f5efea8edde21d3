//! Study tools: look inside an experiment's model, check and time it.
//!
//! - [`inspect`]: the model summary, memory plan, forward/backward graph
//!   (Graphviz, Mermaid), the kernel schedule of a training step and, on
//!   request, its per-kernel GPU profile beside the CPU reference's times.
//! - [`shadow`]: the first training steps on both backends, node by node,
//!   reporting the first value or gradient that diverges.
//! - [`gradcheck`]: gradient checks of every op and of whole experiment
//!   models (`crossmodal gradcheck`).
//! - [`bench`]: kernel and training-step timings against the adapter's own
//!   measured peaks (`crossmodal bench`).
//! - [`saliency`]: which pixels and words one prediction is most sensitive
//!   to (`crossmodal predict --explain`).

pub mod bench;
pub mod gradcheck;
pub mod inspect;
pub mod saliency;
pub mod shadow;
