//! The `twolayer` program: the command line of [`twolayer_cli`], itself a
//! thin layer over the `twolayer` library.

fn main() -> std::process::ExitCode {
    twolayer_cli::main()
}
