//! One runner per subcommand: each takes its parsed flags and does the work,
//! returning an [`Error`](twolayer::Error) the binary prints on one line.

pub mod compare;
pub mod history;
pub mod info;
pub mod own_kernels;
pub mod paths;
pub mod predict;
pub mod result;
pub mod run_spec;
pub mod sweep;
pub mod train;
pub mod tune;
