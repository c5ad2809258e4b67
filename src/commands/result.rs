//! The one convention every subcommand follows for what it prints: `-q`
//! keeps its human-readable text quiet (errors and warnings still go to
//! stderr), and `--json [FILE]` writes its result as JSON — to FILE, or to
//! standard output when FILE is `-` or left out, the human text then going
//! to stderr so that stdout stays one JSON document.

use crate::cli::OutputArgs;
use serde::Serialize;
use std::io::Write as _;
use twolayer::error::{Error, Result};
use twolayer::input::is_stdio;

impl OutputArgs {
    /// Whether the JSON goes to standard output.
    pub fn json_to_stdout(&self) -> bool {
        self.json.as_deref().is_some_and(is_stdio)
    }

    /// The JSON file to check and write, when it is a file.
    pub fn json_file(&self) -> Option<&std::path::Path> {
        self.json.as_deref().filter(|p| !is_stdio(p))
    }

    /// Prints the human-readable `text`: on stdout, on stderr when stdout
    /// carries the JSON, nowhere with `-q`.
    pub fn text(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.json_to_stdout() {
            say!("{}", text.trim_end_matches('\n'));
        } else {
            out!("{text}");
        }
    }

    /// Writes `value` as `--json` asks (nothing without it): a file
    /// atomically, or standard output.
    pub fn write_json<T: Serialize>(&self, value: &T) -> Result<()> {
        let Some(p) = &self.json else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::invalid(format!("cannot write JSON: {e}")))?;
        if is_stdio(p) {
            out!("{text}\n");
            Ok(())
        } else {
            twolayer::output::write_atomic(p, |w| {
                w.write_all(text.as_bytes())?;
                w.write_all(b"\n")
            })
        }
    }
}
