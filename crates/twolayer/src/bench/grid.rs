//! Which points a sweep runs: shapes × dtypes × thread counts, from
//! comma-separated flags, a TOML file, or a preset; and how long each point
//! is measured. Everything is validated before anything runs.

use crate::error::{Error, Result};
use crate::run::RunDescription;
use crate::scalar::Dtype;
use crate::shape::Shape;
use crate::step::dual::Dual;
use crate::step::dual::TRAIN_DEFAULT_STEPS;
use crate::step::{Form, FormChoice, Plan, StepMode};
use serde::{Deserialize, Serialize};

use super::report::PointId;
pub use super::report::Timing;

/// One point of a sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Point {
    /// The network's dimensions.
    pub shape: Shape,
    /// Element type.
    pub dtype: Dtype,
    /// Thread budget (rayon and OpenBLAS).
    pub threads: usize,
    /// The step's form at this point: by default the one `twolayer train`
    /// runs for the shape ([`Form::as_train_runs`]), so that a sweep, the
    /// tuner and the regression gate time what users run.
    pub form: Form,
}

impl Point {
    /// The run this point times with the step in `mode`.
    pub fn run(&self, mode: StepMode) -> RunDescription {
        RunDescription::new(self.shape, self.dtype, self.threads, mode, self.form)
    }
}

/// A validated list of points and how to time them.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Points, in the order they run.
    pub points: Vec<Point>,
    /// Per-point timing.
    pub timing: Timing,
}

/// The shape of a grid file, before validation. Either the four axes (their
/// Cartesian product is taken) or an explicit `shapes` list.
///
/// ```toml
/// n = [64, 4096]
/// d_in = [1000]
/// hidden = [100]
/// d_out = [10]
/// dtype = ["f32", "f64"]
/// threads = [2]
/// # or instead of the four axes:
/// # shapes = [[64, 1000, 100, 10], [8192, 4096, 1024, 256]]
/// [timing]
/// warmup = 3
/// min_steps = 10
/// budget_s = 1.0
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// Batch sizes.
    pub n: Option<Vec<usize>>,
    /// Input widths.
    pub d_in: Option<Vec<usize>>,
    /// Hidden widths.
    pub hidden: Option<Vec<usize>>,
    /// Output widths.
    pub d_out: Option<Vec<usize>>,
    /// Explicit (N, D_in, H, D_out) shapes, instead of the axes.
    pub shapes: Option<Vec<[usize; 4]>>,
    /// Element types, "f32" and/or "f64".
    pub dtype: Option<Vec<String>>,
    /// Thread counts.
    pub threads: Option<Vec<usize>>,
    /// The step's form: auto (the default: the form `twolayer train`
    /// runs for each shape), primal or dual.
    pub form: Option<FormChoice>,
    /// Per-point timing.
    pub timing: Option<Timing>,
    /// The regression gate's thresholds (read by `twolayer compare
    /// --grid`; a sweep leaves them alone).
    pub gate: Option<GateSpec>,
}

/// A grid file's `[gate]` table: the threshold of `twolayer compare
/// --grid FILE`, and thresholds of their own for some points.
///
/// ```toml
/// [gate]
/// max_slowdown = 0.10
/// [[gate.point]]
/// n = 64
/// max_slowdown = 0.15
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// Every point's threshold unless a rule sets its own (a fraction).
    pub max_slowdown: Option<f64>,
    /// Per-point thresholds; a point takes the last that matches.
    #[serde(default)]
    pub point: Vec<ThresholdRule>,
}

/// The built-in grids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// About 15 s per process on a 2-core machine; all four axes varied.
    /// Its smallest step is the reference shape's (~0.2 ms): below ~0.1 ms
    /// a step is mostly thread hand-offs, whose cost on a shared machine
    /// swings by 30% from one process to the next, too much to gate on.
    Quick,
    /// The four reference shapes, f32 and f64.
    Reference,
}

crate::named!(Preset, "preset", {
    Quick => "quick", "about 15 s per process on 2 cores; all four axes varied",
    Reference => "reference", "the four reference shapes, f32 and f64",
});

impl Preset {
    /// The preset as a grid spec, on `threads` threads.
    pub fn spec(self, threads: usize) -> GridSpec {
        match self {
            Preset::Quick => GridSpec {
                n: Some(vec![64, 1024]),
                d_in: Some(vec![1000, 2000]),
                hidden: Some(vec![100, 256]),
                d_out: Some(vec![10, 64]),
                dtype: Some(vec!["f32".into(), "f64".into()]),
                threads: Some(vec![threads]),
                timing: Some(Timing {
                    warmup: 3,
                    min_steps: 30,
                    budget_s: 0.15,
                    rounds: 3,
                }),
                ..GridSpec::default()
            },
            Preset::Reference => GridSpec {
                shapes: Some(vec![
                    [64, 1000, 100, 10],
                    [4096, 1000, 100, 10],
                    [65536, 1000, 100, 10],
                    [8192, 4096, 1024, 256],
                ]),
                dtype: Some(vec!["f32".into(), "f64".into()]),
                threads: Some(vec![threads]),
                timing: Some(Timing::default()),
                ..GridSpec::default()
            },
        }
    }
}

/// Most points a grid may have.
pub const MAX_POINTS: usize = 10_000;

impl GridSpec {
    /// Parses a comma-separated list of numbers given for `--name`.
    pub fn parse_list(name: &str, s: &str) -> Result<Vec<usize>> {
        s.split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| Error::invalid(format!("--{name}: '{v}' is not a whole number")))
            })
            .collect()
    }

    /// Checks the spec and expands it into points: no empty list, no zero
    /// dimension, known dtypes, thread counts in range, and every point's
    /// buffers, as a step of `mode` lays them out, within the memory
    /// available now.
    pub fn build(self, mode: StepMode) -> Result<Grid> {
        let axes = [&self.n, &self.d_in, &self.hidden, &self.d_out];
        let shapes: Vec<Shape> = match (&self.shapes, axes.iter().any(|a| a.is_some())) {
            (Some(_), true) => return Err(Error::invalid(
                "a grid gives either `shapes` or the four axes (n, d_in, hidden, d_out), not both",
            )),
            (Some(list), false) => {
                if list.is_empty() {
                    return Err(Error::invalid("the grid's `shapes` list is empty"));
                }
                list.iter()
                    .map(|&[n, d, h, o]| Shape::new(n, d, h, o))
                    .collect::<Result<_>>()?
            }
            (None, _) => {
                let names = ["n", "d-in", "hidden", "d-out"];
                let mut lists = Vec::new();
                for (name, axis) in names.iter().zip(axes) {
                    let list = axis.as_ref().ok_or_else(|| {
                        Error::invalid(format!("the grid gives no values for --{name}"))
                    })?;
                    if list.is_empty() {
                        return Err(Error::invalid(format!("the list for --{name} is empty")));
                    }
                    lists.push(list.clone());
                }
                // Bounded before it is expanded: 1000 values on three axes
                // once grew until memory ran out.
                let count = lists
                    .iter()
                    .map(Vec::len)
                    .chain([
                        self.dtype.as_ref().map_or(1, Vec::len),
                        self.threads.as_ref().map_or(1, Vec::len),
                    ])
                    .try_fold(1usize, |a, b| a.checked_mul(b))
                    .filter(|&c| c <= MAX_POINTS);
                if count.is_none() {
                    return Err(Error::invalid(format!(
                        "the grid has more than {MAX_POINTS} points (the product of its lists' lengths); split it into several sweeps"
                    )));
                }
                let mut shapes = Vec::new();
                for &n in &lists[0] {
                    for &d in &lists[1] {
                        for &h in &lists[2] {
                            for &o in &lists[3] {
                                shapes.push(Shape::new(n, d, h, o)?);
                            }
                        }
                    }
                }
                shapes
            }
        };
        let dtypes: Vec<Dtype> = match &self.dtype {
            None => vec![Dtype::F64],
            Some(l) if l.is_empty() => return Err(Error::invalid("the list for --dtype is empty")),
            Some(l) => l
                .iter()
                .map(|s| s.trim().parse().map_err(Error::invalid))
                .collect::<Result<_>>()?,
        };
        let threads = match &self.threads {
            None => vec![crate::threads::available_cores()],
            Some(l) if l.is_empty() => {
                return Err(Error::invalid("the list for --threads is empty"))
            }
            Some(l) => l.clone(),
        };
        for &t in &threads {
            if t == 0 || t > crate::threads::MAX_THREADS {
                return Err(Error::invalid(format!(
                    "--threads must be between 1 and {}, got {t}",
                    crate::threads::MAX_THREADS
                )));
            }
        }
        if shapes
            .len()
            .saturating_mul(dtypes.len())
            .saturating_mul(threads.len())
            > MAX_POINTS
        {
            return Err(Error::invalid(format!(
                "the grid has more than {MAX_POINTS} points; split it into several sweeps"
            )));
        }
        let timing = self.timing.unwrap_or_default();
        if timing.min_steps == 0
            || timing.rounds == 0
            || !(timing.budget_s >= 0.0 && timing.budget_s.is_finite())
        {
            return Err(Error::invalid(
                "timing needs min_steps ≥ 1, rounds ≥ 1 and a finite budget_s ≥ 0",
            ));
        }
        // Honoured or refused, never capped silently.
        let most = crate::bench::measure::MAX_SAMPLES;
        if timing.min_steps > most {
            return Err(Error::invalid(format!(
                "min_steps {} is more than the {most} samples a point keeps; ask for {most} or fewer",
                timing.min_steps
            )));
        }
        // As `twolayer train` runs the shape for its default steps.
        let form_of = |shape: Shape, dtype: Dtype| {
            self.form
                .unwrap_or_default()
                .resolve(shape, TRAIN_DEFAULT_STEPS, mode, dtype)
        };
        let mut points = Vec::new();
        for &shape in &shapes {
            for &dtype in &dtypes {
                let form = form_of(shape, dtype)?;
                for &t in &threads {
                    let plan = Plan::new(shape, dtype, t, mode);
                    plan.check_fits_memory(shape, dtype, mode)?;
                    if form == Form::Dual {
                        shape.check_bytes_fit(Dual::<f64>::bytes(shape, dtype), dtype)?;
                    }
                    points.push(Point {
                        shape,
                        dtype,
                        threads: t,
                        form,
                    });
                }
            }
        }
        Ok(Grid { points, timing })
    }
}

/// A threshold of its own for the points it matches: every field given
/// must agree with the point (fields left out match anything).
///
/// ```toml
/// [[gate.point]]
/// n = 64
/// dtype = "f64"
/// max_slowdown = 0.15
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Batch size N.
    pub n: Option<usize>,
    /// D_in.
    pub d_in: Option<usize>,
    /// H.
    pub hidden: Option<usize>,
    /// D_out.
    pub d_out: Option<usize>,
    /// `f32` or `f64`.
    pub dtype: Option<Dtype>,
    /// Thread budget.
    pub threads: Option<usize>,
    /// The slowdown that fails these points (0.15 = 15%).
    pub max_slowdown: f64,
}

impl ThresholdRule {
    /// Whether the rule applies to `p`.
    pub fn matches(&self, p: &PointId) -> bool {
        self.n.is_none_or(|v| v == p.n)
            && self.d_in.is_none_or(|v| v == p.d_in)
            && self.hidden.is_none_or(|v| v == p.hidden)
            && self.d_out.is_none_or(|v| v == p.d_out)
            && self.dtype.is_none_or(|v| v == p.dtype)
            && self.threads.is_none_or(|v| v == p.threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_past_the_point_limit_are_refused_before_they_are_expanded() {
        let axis: Vec<usize> = (1..=1000).collect();
        let spec = GridSpec {
            n: Some(axis.clone()),
            d_in: Some(axis.clone()),
            hidden: Some(axis),
            d_out: Some(vec![1]),
            ..GridSpec::default()
        };
        let e = spec.build(StepMode::Fused).unwrap_err().to_string();
        assert!(e.contains("more than 10000 points"), "{e}");
    }

    #[test]
    fn quick_preset_varies_every_axis() {
        let g = Preset::Quick.spec(2).build(StepMode::Fused).unwrap();
        assert_eq!(g.points.len(), 32);
        let distinct = |f: fn(&Point) -> usize| {
            let mut v: Vec<usize> = g.points.iter().map(f).collect();
            v.sort();
            v.dedup();
            v.len()
        };
        assert!(distinct(|p| p.shape.n) > 1 && distinct(|p| p.shape.d_in) > 1);
        assert!(distinct(|p| p.shape.hidden) > 1 && distinct(|p| p.shape.d_out) > 1);
    }

    #[test]
    fn reference_preset_is_the_four_shapes_in_both_dtypes() {
        let g = Preset::Reference.spec(2).build(StepMode::Fused).unwrap();
        assert_eq!(g.points.len(), 8);
        assert_eq!(g.points[0].shape, Shape::REFERENCE);
        assert_eq!(
            g.points[7].shape,
            Shape::new(8192, 4096, 1024, 256).unwrap()
        );
    }

    #[test]
    fn bad_grids_fail_before_running() {
        let spec = |n: Vec<usize>| GridSpec {
            n: Some(n),
            d_in: Some(vec![10]),
            hidden: Some(vec![10]),
            d_out: Some(vec![10]),
            ..GridSpec::default()
        };
        let e = spec(vec![]).build(StepMode::Fused).unwrap_err().to_string();
        assert!(e.contains("--n is empty"), "{e}");
        let e = spec(vec![4, 0])
            .build(StepMode::Fused)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n must be at least 1"), "{e}");
        let mut huge = spec(vec![1 << 30]);
        huge.d_in = Some(vec![1 << 20]);
        let e = huge.build(StepMode::Fused).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
        let e = GridSpec::default()
            .build(StepMode::Fused)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no values for --n"), "{e}");
        let toml_err = toml::from_str::<GridSpec>("n = [1]\nbogus = 3").unwrap_err();
        assert!(toml_err.to_string().contains("bogus"));
    }

    #[test]
    fn memory_is_checked_for_the_step_mode_that_will_run() {
        // One thread and a small batch: the fused step keeps no gradient
        // buffers, the explicit one two sets of D_in×H. Weights of about
        // half the memory available fit fused and not explicit.
        let avail = crate::machine::available_memory_bytes();
        if avail == u64::MAX {
            return; // no limit to check against on this system
        }
        let h = 1000;
        let d_in = (avail / 2 / 8 / h as u64) as usize;
        let spec = || GridSpec {
            n: Some(vec![1]),
            d_in: Some(vec![d_in]),
            hidden: Some(vec![h]),
            d_out: Some(vec![1]),
            threads: Some(vec![1]),
            ..GridSpec::default()
        };
        assert!(spec().build(StepMode::Fused).is_ok());
        let e = spec().build(StepMode::Explicit).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let toml_err = toml::from_str::<GridSpec>("n = [1]\nbogus = 3").unwrap_err();
        assert!(toml_err.to_string().contains("bogus"));
    }
}
