//! Study tools behind the `crossmodal gradcheck` and `crossmodal bench`
//! subcommands: gradient checks of every op and of whole experiment
//! models ([`gradcheck`]), and kernel and training-step timings against
//! the adapter's own measured peaks ([`bench`]).

pub mod bench;
pub mod gradcheck;
