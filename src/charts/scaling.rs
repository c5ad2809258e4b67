//! scaling.svg: samples per second against the batch size N (log scale),
//! one line per (D_in, H, D_out, dtype, threads); and, when the grid runs
//! a shape at several thread counts, against threads, one line per (shape,
//! dtype). Whiskers span the p10–p90 step times.

use super::{palette, render, write_svg, Area, DrawResult, Mark, FONT};
use plotters::prelude::*;
use std::path::Path;
use twolayer::bench::report::{PointReport, Report};
use twolayer::error::Result;

/// A line of the chart: its label and its points' indices, by x.
struct Series {
    label: String,
    points: Vec<usize>,
}

/// Writes scaling.svg into `dir`.
pub fn write_scaling_chart(report: &Report, dir: &Path) -> Result<()> {
    let by_n = series(report, |p| {
        format!(
            "D_in {}, H {}, D_out {} · {} · {}{}",
            p.run.d_in,
            p.run.hidden,
            p.run.d_out,
            p.run.dtype,
            threads(p),
            mode(p)
        )
    });
    let by_n: Vec<Series> = by_n
        .into_iter()
        .map(|s| sorted(s, report, |p| p.run.n as f64))
        .collect();
    let by_threads: Vec<Series> = series(report, |p| {
        format!("{} · {}{}", p.shape_label(), p.run.dtype, mode(p))
    })
    .into_iter()
    .map(|s| sorted(s, report, |p| p.run.threads as f64))
    .filter(|s| {
        let first = report.points[s.points[0]].run.threads;
        s.points
            .iter()
            .any(|&i| report.points[i].run.threads != first)
    })
    .collect();
    // Each panel has its own colours, every series of a panel its own
    // (the legend's "N:" and "threads:" say which panel an entry is of).
    let (n_colors, t_colors) = (palette(by_n.len()), palette(by_threads.len()));
    let mut legend = Vec::new();
    for (i, s) in by_n.iter().enumerate() {
        legend.push((
            Mark::Line(n_colors[i], triangle(i)),
            format!("N: {}", s.label),
        ));
    }
    for (i, s) in by_threads.iter().enumerate() {
        legend.push((
            Mark::Line(t_colors[i], triangle(i)),
            format!("threads: {}", s.label),
        ));
    }
    legend.push((Mark::Whisker(BLACK), "p10–p90 of the step time".into()));
    let width = if by_threads.is_empty() { 900 } else { 1400 };
    write_svg(
        &dir.join("scaling.svg"),
        render(
            (width, 480),
            "Scaling: samples per second against the batch size N and the thread count",
            &legend,
            |area| {
                if by_threads.is_empty() {
                    panel(report, &by_n, &n_colors, Axis::N, area)
                } else {
                    let (l, r) = area.split_horizontally(width / 2);
                    panel(report, &by_n, &n_colors, Axis::N, &l)?;
                    panel(report, &by_threads, &t_colors, Axis::Threads, &r)
                }
            },
        ),
    )
}

/// Every other series marks its points with triangles, the rest with
/// dots: a second cue beside the colour.
fn triangle(i: usize) -> bool {
    i % 2 == 1
}

/// The distinct values of `x` over the points of `series`, ascending: the
/// axis's ticks (a log axis left to itself labels only powers of ten, and
/// a thread axis 0.5 steps, printed "0 1 2 2 2").
fn ticks(report: &Report, series: &[Series], x: impl Fn(&PointReport) -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&i| x(&report.points[i])))
        .collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// A rate for the y axis: 950, 12k, 3.4M.
fn rate_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn threads(p: &PointReport) -> String {
    match p.ranks() {
        1 => format!("{} thr", p.run.threads),
        k => format!("{k} ranks × {} thr", p.run.threads),
    }
}

/// What sets a point's step apart besides its shape, dtype and threads:
/// the explicit mode, the dual form. A series holds one kind of step: a
/// dual point (the seed shape, where `twolayer train` runs the dual form)
/// on the primal points' line would read as the primal step scaling.
fn mode(p: &PointReport) -> String {
    let mut s = String::new();
    if p.run.step_mode != twolayer::step::StepMode::Fused {
        s.push_str(" · explicit");
    }
    if p.run.form == twolayer::step::Form::Dual {
        s.push_str(" · dual form");
    }
    s
}

/// The points grouped by `key`, in order of first appearance.
fn series(report: &Report, key: impl Fn(&PointReport) -> String) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for (i, p) in report.points.iter().enumerate() {
        let k = key(p);
        match out.iter_mut().find(|s| s.label == k) {
            Some(s) => s.points.push(i),
            None => out.push(Series {
                label: k,
                points: vec![i],
            }),
        }
    }
    out
}

fn sorted(mut s: Series, report: &Report, x: impl Fn(&PointReport) -> f64) -> Series {
    s.points
        .sort_by(|&a, &b| x(&report.points[a]).total_cmp(&x(&report.points[b])));
    s
}

#[derive(Clone, Copy, PartialEq)]
enum Axis {
    N,
    Threads,
}

fn panel(
    report: &Report,
    series: &[Series],
    colors: &[RGBColor],
    axis: Axis,
    area: &Area,
) -> DrawResult {
    let x_of = |p: &PointReport| match axis {
        Axis::N => p.run.n as f64,
        Axis::Threads => p.run.threads as f64,
    };
    let rate = |p: &PointReport, ms: f64| p.run.n as f64 / (ms * 1e-3);
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&i| &report.points[i]));
    let (mut xmin, mut xmax, mut ymax) = (f64::INFINITY, 0f64, 1f64);
    for p in pts {
        xmin = xmin.min(x_of(p));
        xmax = xmax.max(x_of(p));
        ymax = ymax.max(rate(p, p.ms_per_step.p10));
    }
    if !xmin.is_finite() {
        (xmin, xmax) = (1.0, 2.0);
    }
    let ymax = ymax * 1.1;
    let mut b = ChartBuilder::on(area);
    b.margin(14).x_label_area_size(44).y_label_area_size(80);
    let (desc, caption) = match axis {
        Axis::N => ("batch size N (log scale)", "against N"),
        Axis::Threads => ("threads", "against threads"),
    };
    b.caption(caption, (FONT, 15));
    let keys = ticks(report, series, x_of);
    let key_set = keys.clone();
    macro_rules! draw_in {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(desc)
                .y_desc("samples/s")
                .light_line_style(WHITE)
                .x_labels(key_set.len() + 2)
                // Only the values the grid ran are labelled.
                .x_label_formatter(&|v| {
                    if key_set.iter().any(|k| (k - v).abs() <= 1e-9 * k.max(1.0)) {
                        format!("{v:.0}")
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|v| rate_label(*v))
                .label_style((FONT, 13))
                .draw()?;
            for (j, s) in series.iter().enumerate() {
                let c = colors[j];
                let xy: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .map(|&i| &report.points[i])
                    .map(|p| (x_of(p), p.samples_per_s))
                    .collect();
                chart.draw_series(std::iter::once(PathElement::new(
                    xy.clone(),
                    c.stroke_width(2),
                )))?;
                if triangle(j) {
                    chart
                        .draw_series(xy.iter().map(|&pt| TriangleMarker::new(pt, 6, c.filled())))?;
                } else {
                    chart.draw_series(xy.iter().map(|&pt| Circle::new(pt, 4, c.filled())))?;
                }
                for &i in &s.points {
                    let p = &report.points[i];
                    let x = x_of(p);
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![
                            (x, rate(p, p.ms_per_step.p90)),
                            (x, rate(p, p.ms_per_step.p10)),
                        ],
                        BLACK,
                    )))?;
                }
            }
            Ok(())
        }};
    }
    if series.iter().all(|s| s.points.len() < 2) && axis == Axis::N {
        area.draw(&Text::new(
            "(the grid has one N per series: no line to draw)",
            (100, 40),
            (FONT, 13),
        ))?;
    }
    match axis {
        Axis::N => draw_in!(b.build_cartesian_2d(
            ((xmin / 1.5).max(1.0)..xmax * 1.5)
                .log_scale()
                .with_key_points(keys),
            0f64..ymax
        )?),
        Axis::Threads => {
            draw_in!(b.build_cartesian_2d((xmin - 0.5).max(0.0)..xmax + 0.5, 0f64..ymax)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_of_a_panel_gets_its_own_colour() {
        assert_eq!(palette(10), super::super::SERIES_COLORS.to_vec());
        for n in [11, 14, 24, 40] {
            let p = palette(n);
            let mut seen = std::collections::HashSet::new();
            for c in &p {
                assert!(seen.insert((c.0, c.1, c.2)), "{n} series: {c:?} twice");
            }
        }
    }

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(rate_label(950.0), "950");
        assert_eq!(rate_label(12_300.0), "12k");
        assert_eq!(rate_label(3_400_000.0), "3.4M");
    }
}
