//! The benchmark harness behind `twolayer sweep` and `twolayer info`:
//! grids of points ([`grid`]), their measurement ([`measure`]), the
//! environment block ([`env`](mod@env)), reports in JSON, CSV and Markdown
//! ([`report`]; the command line draws its SVG charts), the regression gate
//! ([`compare`]) and its history ([`history`]), and the same measurements across MPI ranks
//! (`data_parallel`, feature `mpi`).

pub mod compare;
#[cfg(feature = "mpi")]
pub mod data_parallel;
pub mod env;
pub mod grid;
pub mod history;
pub mod measure;
pub mod quality;
pub mod render;
pub mod report;
pub mod run;
