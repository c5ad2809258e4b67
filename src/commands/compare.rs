//! `twolayer compare BASELINE CURRENT`: the regression gate (see
//! [`twolayer::bench::compare`] for the statistics).

use crate::cli::CompareArgs;
use twolayer::bench::compare::{compare, Comparison, Options, Side};
use twolayer::error::{Error, Result};
use twolayer::output;

/// What `twolayer compare` concluded, for its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No regression (exit 0).
    Pass,
    /// A point, or all of them together, slower beyond the threshold (exit 1).
    Regression,
}

/// Runs the comparison, prints the table and writes `--json`. An `Err` is
/// input that cannot be compared (exit 2): unreadable reports, different
/// grids, bad samples, or (without `--allow-env-change`) different
/// environments.
pub fn run(args: &CompareArgs) -> Result<Outcome> {
    // `--json -` is standard output, not a file named "-".
    let json_file = args.output.json_file();
    let outputs: Vec<(&str, &std::path::Path)> = [
        ("--json", json_file),
        ("--chart", args.chart.as_deref()),
        ("--history", args.history.as_deref()),
    ]
    .into_iter()
    .filter_map(|(f, p)| p.map(|p| (f, p)))
    .collect();
    // The flags themselves were checked in main (commands/paths.rs); a
    // folder of runs adds the reports found in it, checked the same way
    // before anything is written.
    // Both sides at once: parsing is most of a large comparison's time.
    let (base, cur) = rayon::join(|| Side::read(&args.baseline), || Side::read(&args.current));
    let (base, cur) = (base?, cur?);
    let found: Vec<(&str, &std::path::Path)> = base
        .paths
        .iter()
        .map(|p| ("a report of BASELINE", p.as_path()))
        .chain(
            cur.paths
                .iter()
                .map(|p| ("a report of CURRENT", p.as_path())),
        )
        .collect();
    output::check_distinct(&found, &outputs)?;
    if let Some(h) = &args.history {
        // Appended to, so it must be a history already (or new): a line
        // glued onto another file's end would break both.
        twolayer::bench::history::check_appendable(h)?;
    }
    let gate = match &args.grid {
        Some(g) => crate::cli::read_grid(g)?.gate.unwrap_or_default(),
        None => Default::default(),
    };
    let max_slowdown = args.max_slowdown.or(gate.max_slowdown).unwrap_or(0.1);
    let opts = Options {
        max_slowdown,
        thresholds: gate.point,
        paired: args.paired,
        strict_points: args.strict_points,
    };
    let c = compare(&base, &cur, opts)?;
    if !c.env_differences.is_empty() {
        for l in c.env_lines() {
            say!("twolayer: environments differ: {l}");
        }
        if !args.allow_env_change {
            return Err(Error::invalid(format!(
                "the reports come from different environments ({}); measure both sides on one machine (scripts/bench-gate.sh), or pass --allow-env-change to compare them anyway",
                c.env_differences
                    .iter()
                    .map(|d| d.field)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let outcome = if c.passes() {
        Outcome::Pass
    } else {
        Outcome::Regression
    };
    if let Some(path) = &args.chart {
        crate::charts::write_compare_chart(&c, path)?;
    }
    if let Some(path) = &args.history {
        use twolayer::bench::history;
        history::append(path, &history::Entry::of(&c, &args.history_as))?;
    }
    // The verdicts to --json (stdout: alone, for a pipe; the table then
    // on stderr), the table as text unless -q.
    args.output.write_json(&Verdicts {
        exit_status: if outcome == Outcome::Pass { 0 } else { 1 },
        passed: outcome == Outcome::Pass,
        comparison: &c,
    })?;
    args.output.text(&c.to_markdown());
    if outcome == Outcome::Regression {
        let slower = c.slower();
        say!(
            "twolayer: regression: {} point(s) slower than the baseline beyond their threshold ({:.0}% unless the grid sets one){}{}",
            slower.len(),
            max_slowdown * 100.0,
            if slower.is_empty() { "" } else { ": " },
            listed(&slower)
        );
        if c.overall.verdict == twolayer::bench::compare::Verdict::Slower {
            say!(
                "twolayer: regression: all points together (geometric mean) {:+.1}% slower",
                (c.overall.change - 1.0) * 100.0
            );
        }
    }
    Ok(outcome)
}

/// Points slower than the threshold, by label: the first
/// [`LISTED_MAX`], then how many more (the table and `--json` hold all).
fn listed(slower: &[&twolayer::bench::compare::PointComparison]) -> String {
    let mut s = slower
        .iter()
        .take(LISTED_MAX)
        .map(|p| p.label.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if slower.len() > LISTED_MAX {
        s += &format!("; and {} more (see the table)", slower.len() - LISTED_MAX);
    }
    s
}

/// Slower points named in the one-line message.
const LISTED_MAX: usize = 10;

/// The verdicts as JSON, for machines: the [`Comparison`] and the exit
/// status it leads to.
#[derive(serde::Serialize)]
struct Verdicts<'a> {
    exit_status: u8,
    passed: bool,
    #[serde(flatten)]
    comparison: &'a Comparison,
}
