//! Study tools: look inside an experiment's model without training it.
//!
//! - [`inspect`]: the model summary, memory plan, forward/backward graph
//!   (Graphviz, Mermaid), the kernel schedule of a training step and, on
//!   request, its per-kernel GPU profile beside the CPU reference's times.
//! - [`shadow`]: the first training steps on both backends, node by node,
//!   reporting the first value or gradient that diverges.

pub mod inspect;
pub mod shadow;
