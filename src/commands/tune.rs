//! `twolayer tune`: for every point of a grid, measure the step's plans on
//! this machine ([`twolayer::tune`]) and store the fastest in the wisdom
//! file, which `train` and `sweep` then use; with `--exhaustive`, also time
//! every plan on the whole batch and say where the tuned plan and the
//! built-in rule stand against the best.

use crate::cli::TuneArgs;
use twolayer::bench::env::utc_now;
use twolayer::bench::report::fmt_ms;
use twolayer::error::{Error, Result};
use twolayer::scalar::Dtype;
use twolayer::step::{Plan, PlanChoice, StepMode};
use twolayer::tune::wisdom::{Entry, Key, Wisdom};
use twolayer::tune::{self, Tuning};

/// Runs `twolayer tune`.
pub fn run(args: &TuneArgs) -> Result<()> {
    let mode = args.step_mode;
    let mut spec = args.points.spec()?;
    if args.form.is_some() {
        spec.form = args.form;
    }
    let grid = spec.build(mode)?;
    let path = args.wisdom.clone().or_else(Wisdom::default_path).ok_or_else(|| {
        Error::invalid("no wisdom file: give --wisdom FILE (TWOLAYER_WISDOM is empty and there is no HOME)")
    })?;
    // A garbled file is refused, never overwritten.
    let mut wisdom = Wisdom::read_or_empty(&path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    }
    // The wisdom file by default (none given) is this command's own
    // find: checked here as main checks the ones given.
    if args.wisdom.is_none() {
        crate::commands::paths::check_writable_as(
            &path,
            crate::commands::paths::Writes::ReplaceMakingFolder,
        )?;
    }
    if let Some(j) = args.output.json_file() {
        twolayer::output::check_distinct(&[("--wisdom", &path)], &[("--json", j)])?;
    }
    let pools = twolayer::bench::run::pools(&grid)?;
    // The entries tuned now, for --json.
    let mut tuned: Vec<Entry> = Vec::new();
    for p in &grid.points {
        if p.form == twolayer::step::Form::Dual {
            // The form `twolayer train` runs here has nothing to plan.
            args.output.text(&format!(
                "{} {} ×{}: not tuned: `twolayer train` runs the dual form at this shape, which has no shards or blocks to plan (--form primal tunes the primal step's plan, the one a --data run with batches of this shape runs)\n",
                p.shape, p.dtype, p.threads
            ));
            continue;
        }
        if p.dtype == Dtype::Bf16 {
            args.output.text(&format!(
                "{} {} ×{}: not tuned: the bf16 step runs the whole batch through each GEMM, with no shards or blocks to plan\n",
                p.shape, p.dtype, p.threads
            ));
            continue;
        }
        let pool = &pools[&p.threads];
        let t: Tuning =
            pool.install(|| twolayer::with_storage!(p.dtype, F => tune::tune::<F>(p.shape, mode)))?;
        let rule = PlanChoice::of(Plan::new(p.shape, p.dtype, p.threads, mode), p.shape.n);
        let at = |c: PlanChoice| t.timings.iter().find(|(x, _)| *x == c).map(|x| x.1);
        let best_ms = at(t.best).unwrap_or(f64::NAN);
        let rule_line = match at(PlanChoice::of(
            rule.plan(sub(p.shape, t.rows), mode),
            t.rows,
        )) {
            Some(ms) => format!("the rule's ({rule}) {} ms", fmt_ms(ms)),
            None => format!("the rule's: {rule}"),
        };
        args.output.text(&format!(
            "{} {} ×{}: {} — {} ms/step on {} rows against {rule_line}; {} plans in {:.1} s\n",
            p.shape,
            p.dtype,
            p.threads,
            t.best,
            fmt_ms(best_ms),
            t.rows,
            t.timings.len(),
            t.seconds
        ));
        let entry = Entry {
            key: Key::of(p.run(mode)),
            plan: t.best,
            shape: [p.shape.n, p.shape.d_in, p.shape.hidden, p.shape.d_out],
            ms_per_step: best_ms,
            rows: t.rows,
            date: utc_now(),
            written_by: format!(
                "twolayer {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("TWOLAYER_GIT_COMMIT")
            ),
        };
        tuned.push(entry.clone());
        // Merged into the file as it is now after every point: an
        // interrupted tuning keeps the rest, and another tuning of the same
        // file at the same time keeps its own.
        wisdom = Wisdom::merge_into(&path, &[entry])?;
        if args.exhaustive {
            let all = pool.install(|| {
                twolayer::with_storage!(p.dtype, F => tune::exhaustive::<F>(p.shape, mode, args.exhaustive_rounds))
            })?;
            args.output.text(&report_exhaustive(
                &all,
                t.best,
                rule,
                p.shape.n,
                args.exhaustive_rounds,
            ));
        }
    }
    args.output.write_json(&tuned)?;
    if !args.output.quiet {
        // What happened, counted from what was tuned (a point skipped
        // above wrote nothing; none tuned, no file was written).
        let skipped = grid.points.len() - tuned.len();
        let skipped = match skipped {
            0 => String::new(),
            k => format!("; {k} point(s) not tuned (said above)"),
        };
        if tuned.is_empty() {
            say!(
                "twolayer: tuned nothing, so {} was not written{skipped}",
                path.display()
            );
        } else {
            say!(
                "twolayer: wrote {} tuned point(s) to {} ({} in all){skipped}",
                tuned.len(),
                path.display(),
                wisdom.entries.len()
            );
        }
    }
    Ok(())
}

/// `shape` with `rows` rows.
fn sub(shape: twolayer::Shape, rows: usize) -> twolayer::Shape {
    twolayer::Shape { n: rows, ..shape }
}

/// Where the tuned plan and the rule stand in the exhaustive search.
fn report_exhaustive(
    all: &[(PlanChoice, f64)],
    tuned: PlanChoice,
    rule: PlanChoice,
    n: usize,
    rounds: usize,
) -> String {
    let Some(&(best, best_ms)) = all.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return String::new();
    };
    // The same plan on the whole batch may be a different choice on the
    // sub-batch (a block as large as the shard): compare plans, not names.
    let find = |c: PlanChoice| {
        let want = c.plan(sub_n(n), StepMode::Fused);
        all.iter()
            .find(|(x, _)| x.plan(sub_n(n), StepMode::Fused) == want)
            .map(|x| x.1)
    };
    let pct = |ms: Option<f64>| {
        ms.map_or("not among the candidates".into(), |ms| {
            format!("{} ms ({:+.1}%)", fmt_ms(ms), (ms / best_ms - 1.0) * 100.0)
        })
    };
    format!(
        "  exhaustive, {} plans on all {n} rows, {rounds} interleaved rounds: best {best} {} ms; tuned {}; rule {}\n",
        all.len(),
        fmt_ms(best_ms),
        pct(find(tuned)),
        pct(find(rule)),
    )
}

/// A shape of `n` rows, for comparing plans (only N matters to them).
fn sub_n(n: usize) -> twolayer::Shape {
    twolayer::Shape {
        n,
        d_in: 1,
        hidden: 1,
        d_out: 1,
    }
}
