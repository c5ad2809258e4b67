//! The `twolayer` binary: a thin command line over the library. `cli` holds
//! the clap definitions, `commands` one runner per subcommand; this file
//! parses, makes OpenBLAS stop spinning, and dispatches. Errors end as one
//! line on stderr and a non-zero exit status.

/// `eprintln!` that never panics: a full or closed stderr (`2>/dev/full`)
/// loses the message, not the run or its exit status.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `print!` that never panics: a closed stdout (`| head`) ends the output,
/// not the program with a panic. A failed write is remembered
/// ([`stdout_result`]) so that the command exits non-zero when its output
/// did not reach a full disk or device (`> /dev/full`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($t)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// The first error writing stdout, if any.
static STDOUT_ERROR: std::sync::OnceLock<std::io::Error> = std::sync::OnceLock::new();

/// Records a failed write to stdout (the first one is kept).
fn stdout_failed(e: std::io::Error) {
    let _ = STDOUT_ERROR.set(e);
}

/// Flushes stdout and says whether everything written to it arrived: a
/// closed pipe (`| head`, whose reader had enough) counts as arrived, any
/// other failure is an error.
fn stdout_result() -> twolayer::Result<()> {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().flush() {
        stdout_failed(e);
    }
    match STDOUT_ERROR.get() {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(twolayer::Error::write(
            std::path::Path::new("<stdout>"),
            e.to_string(),
        )),
        _ => Ok(()),
    }
}

pub mod charts;
mod cli;
mod commands;
mod progress;
mod signals;

use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};
use std::process::ExitCode;
use twolayer::blas;

/// Runs the command line: parses the flags, dispatches, and turns the
/// outcome into an exit status.
pub fn main() -> ExitCode {
    // Parsed once: the typed flags for the commands, the raw matches for
    // the one rule every command's files obey (commands/paths.rs).
    let definition = Cli::command();
    let parsed = definition
        .clone()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    twolayer::output::set_follow_links(cli.follow_links);
    // OpenBLAS reads its idle-spin setting only at load time: restart with
    // it set (a no-op when it already is). See `blas` for why it matters.
    if let Some(e) = blas::reexec_with_short_spin() {
        say!(
            "twolayer: warning: could not restart with a short OpenBLAS spin ({e}); running as is"
        );
    }
    // A build without MPI under mpirun -np K would run K whole jobs that
    // write the same files.
    if let Err(e) = twolayer::launch::check_mpi_support(cfg!(feature = "mpi")) {
        say!("twolayer: error: {e}");
        return ExitCode::FAILURE;
    }
    // No output onto an input or another output, in any subcommand,
    // before anything is read or written.
    if let Err(e) = commands::paths::check(&definition, &matches) {
        say!("twolayer: error: {e}");
        // compare's 1 means "a regression": input it cannot use is 2.
        return match cli.command {
            Command::Compare(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        };
    }
    let result = match &cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Sweep(args) => commands::sweep::run(args),
        Command::Tune(args) => commands::tune::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Predict(args) => commands::predict::run_predict(args),
        Command::Eval(args) => commands::predict::run_eval(args),
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "twolayer", &mut text);
            out!("{}", String::from_utf8_lossy(&text));
            Ok(())
        }
        Command::History(args) => commands::history::run(args),
        Command::Compare(args) => {
            // 0: no regression; 1: a regression; 2: reports that cannot be
            // compared (a gate must not read those as "no regression").
            return match commands::compare::run(args).and_then(|o| stdout_result().map(|()| o)) {
                Ok(commands::compare::Outcome::Pass) => ExitCode::SUCCESS,
                Ok(commands::compare::Outcome::Regression) => ExitCode::FAILURE,
                Err(e) => {
                    say!("twolayer: error: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result.and_then(|()| stdout_result()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(twolayer::Error::Interrupted { signal, msg }) => {
            // Empty when already said (an MPI rank says it before MPI ends).
            if !msg.is_empty() {
                say!("twolayer: {msg}");
            }
            ExitCode::from((128 + signal) as u8)
        }
        Err(e) => {
            say!("twolayer: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap prints them. A usage error becomes one
/// line with exit status 2: clap's first line, then its advice folded in
/// (the valid values, "a similar argument exists"), without the usage
/// block.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Printed, flushed and checked like any output: into /dev/full or
        // a closed stdout it did not arrive (a closed pipe is a quiet end).
        use std::io::Write as _;
        let printed = twolayer::output::check_stdout_open()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| e.print())
            .and_then(|()| std::io::stdout().flush());
        return match printed {
            Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                say!("twolayer: error: cannot write the help to standard output: {err}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let advice: Vec<&str> = lines
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| l.starts_with("tip:") || l.starts_with('['))
        .collect();
    let mut line = format!("twolayer: error: {first}");
    for a in advice {
        line.push_str("; ");
        line.push_str(a);
    }
    say!("{line} (see twolayer --help)");
    ExitCode::from(2)
}
