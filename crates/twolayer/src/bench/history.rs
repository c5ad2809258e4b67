//! The regression gate's history: one JSON line per comparison, appended
//! by `twolayer compare --history FILE`, so that a slowdown too small for
//! one merge's gate (3% a merge passes a 10% gate forever) shows as a
//! trend, and the gate's comparison against an older anchor
//! (`scripts/bench-gate.sh --anchor`) is kept beside the per-merge one.
//! `twolayer history FILE` prints it and draws it (charts/trend.rs).

use super::compare::{Comparison, Verdict};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Largest history file read (a line is ~2 KB: half a million gate runs).
pub const HISTORY_LIMIT: u64 = 1 << 30;

/// One comparison, as the history keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// When it was appended (UTC, RFC 3339).
    pub date: String,
    /// What the baseline was: `base` (the main a change was built on) or
    /// `anchor` (an older main, for creep): one of [`AGAINST`].
    pub against: String,
    /// The baseline's commits.
    pub baseline: Vec<String>,
    /// The current side's commits.
    pub current: Vec<String>,
    /// The threshold of the overall verdict.
    pub max_slowdown: f64,
    /// Geometric mean of the points' changes (1.0 = unchanged).
    pub change: f64,
    /// Its 95% interval.
    pub ci: (f64, f64),
    /// `slower`, `faster` or `within noise`.
    pub verdict: String,
    /// Points judged slower, faster.
    pub slower: usize,
    /// Points judged faster.
    pub faster: usize,
    /// Points compared.
    pub points: usize,
}

/// The baselines a history records: `base` and `anchor`.
pub const AGAINST: &[&str] = &["base", "anchor"];

/// The verdicts an entry may hold.
const VERDICTS: &[&str] = &["slower", "faster", "within noise"];

/// Largest change (or interval end) an entry may hold, either way: a
/// thousandfold slowdown or speed-up is no gate's measurement.
pub const MAX_CHANGE: f64 = 1e3;

impl Entry {
    /// Why the entry is not one `compare` writes, if it is not: a change
    /// or interval that is not finite and positive (at most
    /// [`MAX_CHANGE`] either way), a change outside its interval, an
    /// unknown baseline or verdict, counts that do not add up. (Before, a
    /// change of 1e307 made `twolayer history --chart` hang.)
    pub fn invalid(&self) -> Option<String> {
        let sane = |v: f64| v.is_finite() && (1.0 / MAX_CHANGE..=MAX_CHANGE).contains(&v);
        let (lo, hi) = self.ci;
        if !(sane(self.change) && sane(lo) && sane(hi)) {
            return Some(format!(
                "a change of {} in [{lo}, {hi}] is not a measured one (finite, between 1/{MAX_CHANGE} and {MAX_CHANGE})",
                self.change
            ));
        }
        if !(lo <= self.change && self.change <= hi) {
            return Some(format!(
                "its change {} lies outside its interval [{lo}, {hi}]",
                self.change
            ));
        }
        if !AGAINST.contains(&self.against.as_str()) {
            return Some(format!(
                "it is against `{}`, not one of {}",
                self.against,
                AGAINST.join(", ")
            ));
        }
        if !VERDICTS.contains(&self.verdict.as_str()) {
            return Some(format!(
                "its verdict `{}` is not one compare gives",
                self.verdict
            ));
        }
        if !(self.max_slowdown.is_finite() && self.max_slowdown > 0.0)
            || self.slower + self.faster > self.points
        {
            return Some("its threshold or point counts are not ones compare writes".into());
        }
        None
    }

    /// The entry for `c`, compared against `against`, dated now.
    pub fn of(c: &Comparison, against: &str) -> Entry {
        let count = |v: Verdict| c.points.iter().filter(|p| p.verdict == v).count();
        Entry {
            date: crate::bench::env::utc_now(),
            against: against.to_string(),
            baseline: c.commits.0.clone(),
            current: c.commits.1.clone(),
            max_slowdown: c.max_slowdown,
            change: c.overall.change,
            // A percentile interval may, rarely, leave out the estimate
            // it is of; the history's holds it.
            ci: (
                c.overall.ci.0.min(c.overall.change),
                c.overall.ci.1.max(c.overall.change),
            ),
            verdict: c.overall.verdict.name().trim_matches('*').to_string(),
            slower: count(Verdict::Slower),
            faster: count(Verdict::Faster),
            points: c.points.len(),
        }
    }
}

/// Appends `e` to the history at `path` (created when missing) as one
/// line, in one write: a reader never sees half of it, and two gates
/// appending at once do not interleave their lines.
pub fn append(path: &Path, e: &Entry) -> Result<()> {
    let mut line = serde_json::to_string(e)
        .map_err(|err| Error::write(path, format!("cannot write JSON: {err}")))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| Error::write(path, err))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|err| Error::write(path, err))
}

/// Fails unless `path` can take [`append`]: absent, empty, or a history
/// whose every line is an entry and whose last line is complete (a file
/// that is not a history — a report, notes — is refused before anything
/// is appended to it).
pub fn check_appendable(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::read(path, e)),
        Ok(m) if !m.is_file() || m.len() == 0 => return Ok(()),
        Ok(_) => {}
    }
    let text = crate::input::read_text(path, HISTORY_LIMIT)?;
    parse(path, &text)?;
    if !text.ends_with('\n') {
        return Err(Error::read(
            path,
            "its last line is not complete: appending would glue an entry onto it",
        ));
    }
    Ok(())
}

/// Every entry of the history at `path`, oldest first. A line that is not
/// an entry is refused, naming its number.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    parse(path, &crate::input::read_text(path, HISTORY_LIMIT)?)
}

/// The entries of `text`, read from `path` (for messages).
fn parse(path: &Path, text: &str) -> Result<Vec<Entry>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let e: Entry = serde_json::from_str(l).map_err(|e| {
                Error::read(
                    path,
                    format!("line {} is not a gate history entry ({e})", i + 1),
                )
            })?;
            match e.invalid() {
                Some(why) => Err(Error::read(
                    path,
                    format!("line {} is not an entry compare writes: {why}", i + 1),
                )),
                None => Ok(e),
            }
        })
        .collect()
}

/// The history as a Markdown table, oldest first, with the compounded
/// change of the `base` comparisons since the first (what the per-merge
/// gate let through, one merge at a time).
pub fn to_markdown(entries: &[Entry]) -> String {
    let pct = |r: f64| format!("{:+.1}%", (r - 1.0) * 100.0);
    let mut s = String::from(
        "| # | date | against | baseline → current | change [95% CI] | verdict | points slower / faster | compounded (base) |\n|---:|---|---|---|---:|---|---:|---:|\n",
    );
    let mut compounded = 1.0;
    for (i, e) in entries.iter().enumerate() {
        if e.against == "base" {
            compounded *= e.change;
        }
        let short = |v: &[String]| {
            v.iter()
                .map(|c| c.chars().take(12).collect::<String>())
                .collect::<Vec<_>>()
                .join(",")
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} → {} | {} [{}, {}] | {} | {} / {} of {} | {} |\n",
            i + 1,
            e.date,
            e.against,
            short(&e.baseline),
            short(&e.current),
            pct(e.change),
            pct(e.ci.0),
            pct(e.ci.1),
            e.verdict,
            e.slower,
            e.faster,
            e.points,
            pct(compounded),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(against: &str, change: f64) -> Entry {
        Entry {
            date: "2026-12-01T00:00:00Z".into(),
            against: against.into(),
            baseline: vec!["aaaa".into()],
            current: vec!["bbbb".into()],
            max_slowdown: 0.1,
            change,
            ci: (change - 0.01, change + 0.01),
            verdict: "within noise".into(),
            slower: 0,
            faster: 0,
            points: 8,
        }
    }

    #[test]
    fn appended_entries_read_back_in_order_and_compound() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        for c in [1.03, 1.03, 1.03] {
            append(&p, &entry("base", c)).unwrap();
        }
        append(&p, &entry("anchor", 1.0927)).unwrap();
        let back = read(&p).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back[3].against, "anchor");
        let md = to_markdown(&back);
        // 1.03³ = 1.0927: three passing merges add up to +9.3%.
        assert!(md.contains("+9.3%"), "{md}");
        std::fs::write(&p, "{\"not\": 1}\n").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn entries_no_gate_writes_are_refused_when_read() {
        // Before, a change of 1e307 made `history --chart` hang; any
        // string passed as `against`.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        let bad = |f: &dyn Fn(&mut Entry)| {
            let mut e = entry("base", 1.02);
            f(&mut e);
            std::fs::write(
                &p,
                format!("{}\n", serde_json::to_string(&entry("base", 1.0)).unwrap()),
            )
            .unwrap();
            append(&p, &e).unwrap();
            read(&p).unwrap_err().to_string()
        };
        for (e, needle) in [
            (
                bad(&|e| {
                    e.change = 1e307;
                    e.ci = (1e306, 1e308);
                }),
                "not a measured one",
            ),
            (bad(&|e| e.change = f64::MIN_POSITIVE), "not a measured one"),
            (bad(&|e| e.ci = (1.1, 1.2)), "outside its interval"),
            (
                bad(&|e| e.against = "main".into()),
                "not one of base, anchor",
            ),
            (bad(&|e| e.verdict = "great".into()), "verdict"),
            (bad(&|e| e.slower = 9), "counts"),
        ] {
            assert!(e.contains("line 2") && e.contains(needle), "{e}");
        }
    }
}
