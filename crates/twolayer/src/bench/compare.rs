//! The regression gate behind `twolayer compare`: two sets of sweep reports
//! (a baseline and a current build), point by point, with a statistical
//! test and an effect-size threshold on **wall time per step**.
//!
//! ## What is gated, and why
//!
//! Wall time per step is what users feel, and every kind of slowdown shows
//! in it: extra work between the GEMMs, but also a worse block size, a
//! thread split that oversubscribes the cores, or an operand that falls off
//! the cblas path, which slow the GEMMs themselves. (An earlier gate took
//! step time / its own GEMMs' time, which cancels the machine's speed and,
//! with it, every regression inside the GEMMs; that ratio stays in the
//! table as a diagnostic.)
//!
//! Wall time on a shared machine moves 10–20% between runs and sometimes a
//! whole process lands in a slow mode, so each side is measured in several
//! fresh processes, and the gate treats the *process* as the unit of
//! variation:
//!
//! - each process gives one number per point, the median of its steps;
//! - paired sides (the usual CI mode, `--paired`: base and current run
//!   alternately in one job, process i of each side next to each other in
//!   time) give R = median over pairs of current_i / base_i, so a noisy
//!   period that hits a pair hits both of its halves;
//! - unpaired sides (a baseline committed earlier) give R = median of the
//!   current processes / median of the baseline processes.
//!
//! ## The decision
//!
//! A 95% interval for R comes from a hierarchical bootstrap (2,000
//! resamples, fixed seed, so the same reports always give the same
//! verdict): processes (pairs, when paired) are drawn with replacement,
//! then each drawn process's steps are drawn with replacement and their
//! median taken. A point is *slower* when R > 1 + t **and** the interval's
//! lower end is above 1 + t/2 (the change is both large and real), *faster*
//! symmetrically, *within noise* otherwise (t = `--max-slowdown`). The same
//! rule is applied to the geometric mean of R over all points, from the
//! same resamples ("overall"). The gate fails when any point or the overall
//! mean is slower.
//!
//! Reports that cannot be compared fail with exit status 2 instead of a
//! verdict: points on one side only, a point listed twice, samples that are
//! not positive and finite, too few samples, and (unless allowed) reports
//! from different environments, whose differences are listed.

pub use super::grid::ThresholdRule;
pub use super::report::PointId;
use super::report::{PointReport, Report};
use crate::error::{Error, Result};
use crate::scalar::Dtype;
use crate::stats::{bootstrap, median, PointSamples};
use crate::step::{Form, StepMode};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What the gate concluded about one point (or about all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Faster beyond the threshold, with confidence.
    Faster,
    /// Slower beyond the threshold, with confidence: fails the gate.
    Slower,
    /// Neither.
    WithinNoise,
}

impl Verdict {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "**slower**",
            Verdict::WithinNoise => "within noise",
        }
    }

    /// The rule: slower when the change is large (`change` > 1 + t) and
    /// real with a margin (the 95% interval's lower end above 1 + t/2);
    /// faster in mirror image.
    pub fn of(change: f64, ci: (f64, f64), t: f64) -> Verdict {
        if change > 1.0 + t && ci.0 > 1.0 + t / 2.0 {
            Verdict::Slower
        } else if change < 1.0 - t && ci.1 < 1.0 - t / 2.0 {
            Verdict::Faster
        } else {
            Verdict::WithinNoise
        }
    }
}

/// One side of a comparison: the reports of one build, one per process.
#[derive(Clone, Debug)]
pub struct Side {
    /// Where each report was read from.
    pub paths: Vec<PathBuf>,
    /// The reports, in the order of `paths`.
    pub reports: Vec<Report>,
}

impl Side {
    /// Reads a side: a `report.json` (one process), or a folder whose
    /// subfolders each hold a `report.json` (one process each, in the
    /// order of the subfolders' names).
    pub fn read(path: &Path) -> Result<Side> {
        let paths = if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| Error::read(path, e))?;
            let mut paths = Vec::new();
            for e in entries {
                let e = e.map_err(|e| Error::read(path, e))?;
                let report = e.path().join("report.json");
                if report.is_file() {
                    paths.push(report);
                }
            }
            paths.sort();
            if paths.is_empty() {
                return Err(Error::read(
                    path,
                    "a folder of runs needs subfolders that each hold a report.json",
                ));
            }
            paths
        } else {
            vec![path.to_path_buf()]
        };
        // Read in parallel: parsing is most of a large comparison's time.
        let reports = paths
            .par_iter()
            .map(|p| Report::read(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Side { paths, reports })
    }

    /// A side made of reports already in memory.
    pub fn from_reports(reports: Vec<Report>) -> Side {
        Side {
            paths: vec![PathBuf::new(); reports.len()],
            reports,
        }
    }
}

/// How to compare.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The slowdown that fails the gate, as a fraction (0.1 = 10%): every
    /// point's unless a rule of `thresholds` sets its own, and the overall
    /// mean's.
    pub max_slowdown: f64,
    /// Per-point thresholds (a grid file's `[[gate.point]]` tables): a
    /// point takes the last rule that matches it.
    pub thresholds: Vec<ThresholdRule>,
    /// The two sides' processes ran alternately: pair them in order.
    pub paired: bool,
    /// Points on one side only are an error (exit 2) instead of being
    /// reported as new or removed.
    pub strict_points: bool,
}

/// A threshold as a fraction strictly between 0 and 1, or the error that
/// says what `what` should be.
fn check_threshold(t: f64, what: &str) -> Result<()> {
    if t.is_finite() && t > 0.0 && t < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} must be a fraction between 0 and 1 (0.1 = 10%), got {t}"
        )))
    }
}

/// An environment field on which the reports differ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnvDifference {
    /// The field, as the report names it.
    pub field: &'static str,
    /// Its values in the baseline's reports.
    pub baseline: Vec<String>,
    /// Its values in the current reports.
    pub current: Vec<String>,
}

/// One point of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointComparison {
    /// `(N, D_in, H, D_out) dtype ×threads`.
    pub label: String,
    /// The same, as fields.
    pub point: PointId,
    /// Median over the baseline's processes of their median ms per step.
    pub base_ms: f64,
    /// The same, now.
    pub current_ms: f64,
    /// R: the gated change of wall time (1.0 = unchanged, 1.2 = 20% slower).
    pub change: f64,
    /// 95% hierarchical-bootstrap interval of `change`.
    pub ci: (f64, f64),
    /// The conclusion.
    pub verdict: Verdict,
    /// The threshold this point was judged at (the comparison's, or its
    /// own from a rule).
    pub max_slowdown: f64,
    /// Diagnostic: step time / its GEMMs' time, baseline and now.
    pub step_per_gemm: (f64, f64),
    /// Diagnostic: the GEMMs' rate as a fraction of the machine's square
    /// GEMM rate, baseline and now.
    pub gemm_share: (f64, f64),
    /// The step's form on each side, when they differ (the baseline timed
    /// the primal step where the current build times the dual form, say):
    /// the change then measures the form as well as the code. Points are
    /// paired by shape, dtype, threads, mode and ranks, not by form, since
    /// a sweep times the form `twolayer train` runs and a change of that
    /// form is a change users see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form_change: Option<(Form, Form)>,
}

/// The geometric mean of the points' changes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overall {
    /// Geometric mean of R over the points.
    pub change: f64,
    /// Its 95% interval, from the same resamples.
    pub ci: (f64, f64),
    /// The same rule as a point's.
    pub verdict: Verdict,
}

/// The whole comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// `wall_time_per_step`.
    pub metric: &'static str,
    /// The threshold t.
    pub max_slowdown: f64,
    /// Whether processes were paired.
    pub paired: bool,
    /// Processes on each side (baseline, current).
    pub processes: (usize, usize),
    /// Commits of each side (as their reports name them).
    pub commits: (Vec<String>, Vec<String>),
    /// Environment fields that differ between the reports.
    pub env_differences: Vec<EnvDifference>,
    /// Point by point, in the baseline's order: the points both sides ran.
    pub points: Vec<PointComparison>,
    /// Points only the current side ran (a grid that gained them): new,
    /// not judged.
    pub new_points: Vec<PointId>,
    /// Points only the baseline ran: removed, not judged.
    pub removed_points: Vec<PointId>,
    /// All points together.
    pub overall: Overall,
}

impl Comparison {
    /// Points judged slower.
    pub fn slower(&self) -> Vec<&PointComparison> {
        self.points
            .iter()
            .filter(|p| p.verdict == Verdict::Slower)
            .collect()
    }

    /// Whether the gate passes: no point and not the overall mean slower.
    pub fn passes(&self) -> bool {
        self.slower().is_empty() && self.overall.verdict != Verdict::Slower
    }
}

/// A point's key in one report, with the check that no report lists a
/// point twice.
type Key = (usize, usize, usize, usize, Dtype, usize, StepMode, usize);

fn index_points<'a>(r: &'a Report, path: &Path) -> Result<BTreeMap<Key, &'a PointReport>> {
    let mut map = BTreeMap::new();
    for p in &r.points {
        if map.insert(p.key(), p).is_some() {
            return Err(Error::read(
                path,
                format!(
                    "point {} {} ×{} is listed twice",
                    p.shape_label(),
                    p.run.dtype,
                    p.run.threads
                ),
            ));
        }
        check_samples(p, path)?;
    }
    Ok(map)
}

/// [`index_points`] for every report of a side.
fn index_side(side: &Side) -> Result<Vec<BTreeMap<Key, &PointReport>>> {
    side.reports
        .par_iter()
        .zip(&side.paths)
        .map(|(r, p)| index_points(r, p))
        .collect()
}

/// The shortest sample time a comparison accepts: 1 ns, in ms.
const SAMPLE_MS_MIN: f64 = 1e-6;
/// The longest: 10^9 ms.
const SAMPLE_MS_MAX: f64 = 1e9;

/// Every step and GEMM sample positive and finite, as many GEMM samples as
/// step samples, and at least 3 of them.
fn check_samples(p: &PointReport, path: &Path) -> Result<()> {
    let label = || format!("{} {} ×{}", p.shape_label(), p.run.dtype, p.run.threads);
    let s = &p.ms_per_step.samples;
    if s.len() < 3 {
        return Err(Error::read(
            path,
            format!("point {} has {} samples; the gate needs at least 3 (sweep with --min-steps 3 or more)", label(), s.len()),
        ));
    }
    if p.gemm_ms_samples.len() != s.len() {
        return Err(Error::read(
            path,
            format!(
                "point {} has {} step samples but {} GEMM samples",
                label(),
                s.len(),
                p.gemm_ms_samples.len()
            ),
        ));
    }
    // A time outside 1 ns ..= 10^9 ms (11 days) is no measurement of a
    // step; subnormal ones (5e-324) made every ratio infinite or NaN.
    if let Some(v) = s
        .iter()
        .chain(&p.gemm_ms_samples)
        .find(|v| !(SAMPLE_MS_MIN..=SAMPLE_MS_MAX).contains(*v))
    {
        return Err(Error::read(
            path,
            format!(
                "point {} has a sample of {v:e} ms; times must lie between {SAMPLE_MS_MIN:e} and {SAMPLE_MS_MAX:e} ms",
                label()
            ),
        ));
    }
    Ok(())
}

/// What [`env_fields`] says for a field an older report does not have.
const NOT_RECORDED: &str = "not recorded";

/// The environment fields a comparison must hold equal, as strings.
fn env_fields(r: &Report) -> [(&'static str, String); 10] {
    let e = &r.env;
    [
        (
            "openblas_library",
            e.openblas_library
                .as_ref()
                .map(|l| format!("{} ({})", l.key(), l.path))
                .unwrap_or_else(|| NOT_RECORDED.into()),
        ),
        ("cpu_model", e.cpu_model.clone()),
        ("cores", e.cores.to_string()),
        ("openblas_version", e.openblas_version.clone()),
        ("openblas_core", e.openblas_core.clone()),
        ("openblas_config", e.openblas_config.clone()),
        ("openblas_env", format!("[{}]", e.openblas_env.join(" "))),
        ("rustc", e.rustc.clone()),
        ("profile", e.profile.clone()),
        (
            "timing",
            format!(
                "warmup {}, min_steps {}, budget_s {}, rounds {}",
                r.timing.warmup, r.timing.min_steps, r.timing.budget_s, r.timing.rounds
            ),
        ),
    ]
}

/// The environment fields on which any two reports of either side differ.
pub fn env_differences(base: &Side, cur: &Side) -> Vec<EnvDifference> {
    let values = |side: &Side, i: usize| -> Vec<String> {
        let mut v: Vec<String> = side
            .reports
            .iter()
            .map(|r| env_fields(r)[i].1.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let names = env_fields(&base.reports[0]).map(|(n, _)| n);
    let mut out = Vec::new();
    for (i, field) in names.into_iter().enumerate() {
        let (b, c) = (values(base, i), values(cur, i));
        // A field that older reports do not record is compared only among
        // the reports that do (openblas_config still tells builds apart).
        let recorded = |v: Vec<String>| -> Vec<String> {
            v.into_iter().filter(|s| s != NOT_RECORDED).collect()
        };
        let (b, c) = if b.iter().chain(&c).any(|s| s == NOT_RECORDED) {
            (recorded(b), recorded(c))
        } else {
            (b, c)
        };
        if b.is_empty() || c.is_empty() {
            continue;
        }
        if b.len() > 1 || c.len() > 1 || b != c {
            out.push(EnvDifference {
                field,
                baseline: b,
                current: c,
            });
        }
    }
    out
}

/// Compares two sides point by point. Fails (for exit status 2) when they
/// cannot be compared: points on one side only or listed twice, different
/// dtypes for the same shape, samples that are too few, not positive or
/// not finite, or `paired` with different numbers of processes. The
/// environment differences are returned, not judged: the caller decides.
pub fn compare(base: &Side, cur: &Side, opts: Options) -> Result<Comparison> {
    let t = opts.max_slowdown;
    check_threshold(t, "--max-slowdown")?;
    for r in &opts.thresholds {
        check_threshold(r.max_slowdown, "a [[gate.point]]'s max_slowdown")?;
    }
    if opts.paired && base.reports.len() != cur.reports.len() {
        return Err(Error::invalid(format!(
            "--paired needs as many runs on each side; the baseline has {}, the current {}",
            base.reports.len(),
            cur.reports.len()
        )));
    }
    let (bi, ci) = (index_side(base)?, index_side(cur)?);

    // Every report of a side must hold the same points as that side's
    // first (looked up in sets: a list made this quadratic, 100,000 points
    // ran past a minute). Between the sides, points both ran are judged;
    // a point one side alone ran is new or removed (a grid that grew),
    // an error only under `strict_points`.
    for (side, s, maps) in [("baseline", base, &bi), ("current", cur, &ci)] {
        let first = &s.reports[0];
        if first.points.is_empty() {
            return Err(Error::read(
                &s.paths[0],
                "the report has no points: nothing to compare",
            ));
        }
        let keys: std::collections::BTreeSet<Key> = first.points.iter().map(|p| p.key()).collect();
        for (map, r) in maps.iter().zip(s.reports.iter()) {
            if let Some(p) = first.points.iter().find(|p| !map.contains_key(&p.key())) {
                return Err(missing(p, side));
            }
            if let Some(p) = r.points.iter().find(|p| !keys.contains(&p.key())) {
                return Err(missing(p, side));
            }
        }
    }
    let (first, now) = (&base.reports[0], &cur.reports[0]);
    let want: Vec<Key> = first
        .points
        .iter()
        .map(|p| p.key())
        .filter(|k| ci[0].contains_key(k))
        .collect();
    let removed_points: Vec<PointId> = first
        .points
        .iter()
        .filter(|p| !ci[0].contains_key(&p.key()))
        .map(PointId::of)
        .collect();
    let new_points: Vec<PointId> = now
        .points
        .iter()
        .filter(|p| !bi[0].contains_key(&p.key()))
        .map(PointId::of)
        .collect();
    if opts.strict_points {
        if let Some(p) = first.points.iter().find(|p| !ci[0].contains_key(&p.key())) {
            return Err(missing(p, "current"));
        }
        if let Some(p) = now.points.iter().find(|p| !bi[0].contains_key(&p.key())) {
            return Err(missing(p, "baseline"));
        }
    }
    if want.is_empty() {
        return Err(Error::invalid(
            "the two sides share no point: compare reports of the same grid",
        ));
    }

    let samples: Vec<PointSamples> = want
        .iter()
        .map(|k| PointSamples {
            base: bi
                .iter()
                .map(|m| m[k].ms_per_step.samples.as_slice())
                .collect(),
            cur: ci
                .iter()
                .map(|m| m[k].ms_per_step.samples.as_slice())
                .collect(),
        })
        .collect();
    let (stats, (g, gci)) = bootstrap(&samples, opts.paired);

    let diag = |maps: &[BTreeMap<Key, &PointReport>], k: &Key, f: &dyn Fn(&PointReport) -> f64| {
        median(&maps.iter().map(|m| f(m[k])).collect::<Vec<_>>())
    };
    let points = want
        .par_iter()
        .zip(&stats)
        .map(|(k, &(change, ci_))| {
            let p = bi[0][k];
            let id = PointId::of(p);
            let forms = (p.run.form, ci[0][k].run.form);
            let own = opts
                .thresholds
                .iter()
                .rev()
                .find(|r| r.matches(&id))
                .map_or(t, |r| r.max_slowdown);
            PointComparison {
                label: match forms {
                    (b, c) if b != c => format!(
                        "{} {} ×{} ({} → {})",
                        p.shape_label(),
                        p.run.dtype,
                        p.run.threads,
                        b.name(),
                        c.name()
                    ),
                    _ => format!("{} {} ×{}", p.shape_label(), p.run.dtype, p.run.threads),
                },
                point: id,
                base_ms: diag(&bi, k, &|p| median(&p.ms_per_step.samples)),
                current_ms: diag(&ci, k, &|p| median(&p.ms_per_step.samples)),
                change,
                ci: ci_,
                verdict: Verdict::of(change, ci_, own),
                max_slowdown: own,
                step_per_gemm: (
                    diag(&bi, k, &PointReport::median_step_per_gemm),
                    diag(&ci, k, &PointReport::median_step_per_gemm),
                ),
                gemm_share: (diag(&bi, k, &gemm_share), diag(&ci, k, &gemm_share)),
                form_change: (forms.0 != forms.1).then_some(forms),
            }
        })
        .collect();
    let commits = |s: &Side| {
        let mut v: Vec<String> = s.reports.iter().map(|r| r.env.git_commit.clone()).collect();
        v.dedup();
        v
    };
    Ok(Comparison {
        metric: "wall_time_per_step",
        max_slowdown: t,
        paired: opts.paired,
        processes: (base.reports.len(), cur.reports.len()),
        commits: (commits(base), commits(cur)),
        env_differences: env_differences(base, cur),
        points,
        new_points,
        removed_points,
        overall: Overall {
            change: g,
            ci: gci,
            verdict: Verdict::of(g, gci, t),
        },
    })
}

/// The error for point `p`, which a `side` report lacks.
fn missing(p: &PointReport, side: &str) -> Error {
    Error::invalid(format!(
        "point {} {} ×{} ({}) is missing from a {side} report; compare reports of the same grid and dtypes",
        p.shape_label(),
        p.run.dtype,
        p.run.threads,
        p.run.step_mode
    ))
}

/// The GEMMs' rate as a fraction of the machine's square-GEMM rate.
fn gemm_share(p: &PointReport) -> f64 {
    p.shape().flops_per_step() / (p.gemm_ms * 1e-3) / 1e9 / p.machine_gemm_gflops
}

fn pct(x: f64) -> String {
    format!("{:+.1}%", (x - 1.0) * 100.0)
}

impl Comparison {
    /// The environment differences, one line each.
    pub fn env_lines(&self) -> Vec<String> {
        self.env_differences
            .iter()
            .map(|d| {
                format!(
                    "{}: baseline {}; current {}",
                    d.field,
                    d.baseline.join(" | "),
                    d.current.join(" | ")
                )
            })
            .collect()
    }

    /// The comparison as Markdown: a header, the table, the summary.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let (kb, kc) = self.processes;
        let how = if self.paired {
            "paired: the two sides ran alternately in one job"
        } else {
            "unpaired"
        };
        let _ = writeln!(
            s,
            "Gated metric: wall time per step, median over processes ({how}). Baseline {} ({kb} process(es)), current {} ({kc} process(es)); slower means > {:.0}% with 95% confidence (hierarchical bootstrap over processes and their steps).\n",
            self.commits.0.join(","),
            self.commits.1.join(","),
            self.max_slowdown * 100.0
        );
        if kb == 1 || kc == 1 {
            s.push_str("Note: a side with one process: the interval leaves out the variation between processes, the largest on a shared machine.\n\n");
        }
        if !self.env_differences.is_empty() {
            s.push_str("Environments differ:\n");
            for l in self.env_lines() {
                let _ = writeln!(s, "- {l}");
            }
            s.push('\n');
        }
        s.push_str("| point | ms/step base | now | change [95% CI] | verdict | step/GEMM base → now | GEMM share of rate base → now |\n|---|---:|---:|---:|---|---:|---:|\n");
        for r in &self.points {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} [{}, {}] | {} | {:.3} → {:.3} | {:.0}% → {:.0}% |",
                r.label,
                super::report::fmt_ms(r.base_ms),
                super::report::fmt_ms(r.current_ms),
                pct(r.change),
                pct(r.ci.0),
                pct(r.ci.1),
                if r.max_slowdown == self.max_slowdown {
                    r.verdict.name().to_string()
                } else {
                    format!("{} (at {:.0}%)", r.verdict.name(), r.max_slowdown * 100.0)
                },
                r.step_per_gemm.0,
                r.step_per_gemm.1,
                r.gemm_share.0 * 100.0,
                r.gemm_share.1 * 100.0,
            );
        }
        let slower = self.slower().len();
        let faster = self
            .points
            .iter()
            .filter(|r| r.verdict == Verdict::Faster)
            .count();
        let o = &self.overall;
        let _ = writeln!(
            s,
            "\nOverall (geometric mean): {} [{}, {}], {}.\n{} points: {slower} slower, {faster} faster, {} within noise.",
            pct(o.change),
            pct(o.ci.0),
            pct(o.ci.1),
            o.verdict.name().trim_matches('*'),
            self.points.len(),
            self.points.len() - slower - faster
        );
        let changed: Vec<&str> = self
            .points
            .iter()
            .filter(|r| r.form_change.is_some())
            .map(|r| r.label.as_str())
            .collect();
        if !changed.is_empty() {
            let _ = writeln!(
                s,
                "Form changed at {} point(s): {}. The two sides timed different steps there (each the form `twolayer train` runs, or the grid's `form`): the change is the form's as well as the code's.",
                changed.len(),
                changed.join("; ")
            );
        }
        let label = |p: &PointId| {
            format!(
                "({}, {}, {}, {}) {} ×{}",
                p.n, p.d_in, p.hidden, p.d_out, p.dtype, p.threads
            )
        };
        for (what, list) in [
            ("New (the current side only; not judged)", &self.new_points),
            (
                "Removed (the baseline only; not judged)",
                &self.removed_points,
            ),
        ] {
            if !list.is_empty() {
                let names: Vec<String> = list.iter().map(label).collect();
                let _ = writeln!(s, "{what}: {}.", names.join("; "));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(center: f64, n: usize, salt: usize) -> Vec<f64> {
        (0..n)
            .map(|i| center * (1.0 + 0.02 * (((i * 37 + salt * 11) % 17) as f64 / 17.0)))
            .collect()
    }

    #[test]
    fn a_clear_shift_is_found_and_no_shift_is_not() {
        for paired in [true, false] {
            let base: Vec<Vec<f64>> = (0..5).map(|k| noisy(1.0, 40, k)).collect();
            let slow: Vec<Vec<f64>> = (0..5).map(|k| noisy(1.2, 40, k + 5)).collect();
            let same: Vec<Vec<f64>> = (0..5).map(|k| noisy(1.0, 40, k + 5)).collect();
            fn pts<'a>(base: &'a [Vec<f64>], cur: &'a [Vec<f64>]) -> Vec<PointSamples<'a>> {
                vec![PointSamples {
                    base: base.iter().map(Vec::as_slice).collect(),
                    cur: cur.iter().map(Vec::as_slice).collect(),
                }]
            }
            let (r, _) = bootstrap(&pts(&base, &slow), paired);
            let (e, ci) = r[0];
            assert!(
                (e - 1.2).abs() < 0.02 && ci.0 > 1.1 && ci.1 < 1.3,
                "{e} {ci:?}"
            );
            assert_eq!(Verdict::of(e, ci, 0.1), Verdict::Slower);
            let (r, _) = bootstrap(&pts(&base, &same), paired);
            let (e, ci) = r[0];
            assert!(
                (e - 1.0).abs() < 0.02 && ci.0 <= 1.0 && ci.1 >= 1.0,
                "{e} {ci:?}"
            );
            assert_eq!(Verdict::of(e, ci, 0.1), Verdict::WithinNoise);
        }
    }

    #[test]
    fn one_process_in_a_slow_mode_does_not_decide() {
        // Five processes per side; the current side's third ran 1.5x slower
        // for its whole life (seen on these machines).
        let base: Vec<Vec<f64>> = (0..5).map(|k| noisy(1.0, 40, k)).collect();
        let mut cur: Vec<Vec<f64>> = (0..5).map(|k| noisy(1.0, 40, k + 5)).collect();
        cur[2] = noisy(1.5, 40, 9);
        for paired in [true, false] {
            let (r, _) = bootstrap(
                &[PointSamples {
                    base: base.iter().map(Vec::as_slice).collect(),
                    cur: cur.iter().map(Vec::as_slice).collect(),
                }],
                paired,
            );
            let (e, ci) = r[0];
            assert_eq!(Verdict::of(e, ci, 0.1), Verdict::WithinNoise, "{e} {ci:?}");
        }
    }
}
