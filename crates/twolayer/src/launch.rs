//! How this process was started: alone, or as one of several copies by an
//! MPI launcher (OpenMPI's mpirun, or a PMI-based one such as Slurm's srun
//! or MPICH's mpiexec). Known without MPI itself, so a build without the
//! `mpi` feature can refuse to run as N unrelated copies of one job.

/// The number of processes the MPI launcher started, when it started
/// this one.
pub fn mpi_job_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
        .or_else(|| std::env::var_os("PMIX_RANK").map(|_| 1))
}

/// Whether an MPI launcher started this process.
pub fn launched_by_mpi() -> bool {
    mpi_job_size().is_some()
}

/// Fails when an MPI launcher started several copies of a build without
/// the `mpi` feature: each would run the whole job on its own and write
/// the same files.
pub fn check_mpi_support(with_mpi: bool) -> crate::Result<()> {
    match mpi_job_size() {
        Some(k) if k > 1 && !with_mpi => Err(crate::Error::invalid(format!(
            "an MPI launcher started {k} copies of a twolayer built without MPI: each would run the whole job and write the same files; rebuild with `cargo build --release --features mpi`, or run one process"
        ))),
        _ => Ok(()),
    }
}
