//! `twolayer compare BASELINE CURRENT`: the regression gate (see
//! [`crate::bench::compare`] for the statistics).

use crate::bench::compare::{compare, to_markdown, Verdict};
use crate::bench::report::Report;
use crate::cli::CompareArgs;
use crate::error::Result;

/// Runs the comparison and prints the table; `Ok(true)` when no point is
/// slower beyond the threshold.
pub fn run(args: &CompareArgs) -> Result<bool> {
    let base = Report::read(&args.baseline)?;
    let cur = Report::read(&args.current)?;
    let rows = compare(&base, &cur, args.max_slowdown)?;
    print!("{}", to_markdown(&rows, &base, &cur, args.max_slowdown));
    let slower: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict == Verdict::Slower)
        .map(|r| r.label.as_str())
        .collect();
    if !slower.is_empty() {
        eprintln!(
            "twolayer: regression: {} point(s) slower than the baseline by more than {:.0}%: {}",
            slower.len(),
            args.max_slowdown * 100.0,
            slower.join("; ")
        );
    }
    Ok(slower.is_empty())
}
