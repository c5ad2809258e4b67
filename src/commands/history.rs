//! `twolayer history FILE`: the regression gate's history
//! ([`twolayer::bench::history`]) as a table, its entries as JSON, and its
//! trend as a chart.

use crate::cli::HistoryArgs;
use twolayer::bench::history;
use twolayer::error::{Error, Result};

/// Runs `twolayer history`.
pub fn run(args: &HistoryArgs) -> Result<()> {
    let entries = history::read(&args.file)?;
    if entries.is_empty() {
        return Err(Error::read(&args.file, "the history has no entries yet"));
    }
    if let Some(p) = &args.chart {
        twolayer::output::check_distinct(&[("FILE", &args.file)], &[("--chart", p)])?;
        crate::charts::write_trend_chart(&entries, p)?;
    }
    args.output.write_json(&entries)?;
    args.output.text(&history::to_markdown(&entries));
    Ok(())
}
