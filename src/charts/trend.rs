//! The chart `twolayer history --chart` writes: the gate's overall change
//! (geometric mean over the points, with its 95% interval) at every
//! comparison of the history, one line for each baseline kind (`base`: the
//! merge's own gate; `anchor`: against an older main), the compounded
//! change of the `base` comparisons, and the thresholds as dashed lines.
//! A creep shows as the compounded line rising while every merge passes.

use super::{palette, render, write_svg, Area, DrawResult, Mark, FONT};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::path::Path;
use twolayer::bench::history::Entry;
use twolayer::error::Result;

const THRESHOLD: RGBColor = RGBColor(214, 39, 40);
const COMPOUNDED: RGBColor = RGBColor(90, 90, 90);

/// Writes the history's trend chart to `path` (SVG).
pub fn write_trend_chart(entries: &[Entry], path: &Path) -> Result<()> {
    let kinds = kinds(entries);
    let colors = palette(kinds.len());
    let mut legend: Vec<(Mark, String)> = kinds
        .iter()
        .zip(&colors)
        .enumerate()
        .map(|(i, (k, c))| {
            (
                Mark::Line(*c, i % 2 == 1),
                format!("against {k}: change (geometric mean)"),
            )
        })
        .collect();
    legend.push((Mark::Whisker(BLACK), "95% interval".into()));
    legend.push((
        Mark::Line(COMPOUNDED, false),
        "compounded change of the base comparisons".into(),
    ));
    legend.push((Mark::Dashed(THRESHOLD), "threshold".into()));
    write_svg(
        path,
        render(
            (1100, 460),
            "Regression gate history: overall change of wall time per step",
            &legend,
            |area| draw(entries, &kinds, &colors, area),
        ),
    )
}

/// The baseline kinds, in order of first appearance.
fn kinds(entries: &[Entry]) -> Vec<String> {
    let mut k: Vec<String> = Vec::new();
    for e in entries {
        if !k.contains(&e.against) {
            k.push(e.against.clone());
        }
    }
    k
}

fn draw(entries: &[Entry], kinds: &[String], colors: &[RGBColor], area: &Area) -> DrawResult {
    let pct = |r: f64| (r - 1.0) * 100.0;
    let mut compounded = Vec::new();
    let mut acc = 1.0;
    for (i, e) in entries.iter().enumerate() {
        if e.against == "base" {
            acc *= e.change;
            compounded.push(((i + 1) as f64, pct(acc)));
        }
    }
    let (mut lo, mut hi) = (-5.0f64, 5.0f64);
    for e in entries {
        lo = lo.min(pct(e.ci.0)).min(-e.max_slowdown * 100.0);
        hi = hi.max(pct(e.ci.1)).max(e.max_slowdown * 100.0);
    }
    for &(_, c) in &compounded {
        lo = lo.min(c);
        hi = hi.max(c);
    }
    let pad = (hi - lo) * 0.08;
    let n = entries.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..n + 0.5, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("comparison (oldest first)")
        .y_desc("change of wall time per step")
        .light_line_style(WHITE)
        .x_labels(entries.len().min(20) + 1)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-9 && *v >= 1.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{v:+.0}%"))
        .label_style((FONT, 13))
        .draw()?;
    // The thresholds in force, each as a dashed line across the chart.
    let mut thresholds: Vec<f64> = entries.iter().map(|e| e.max_slowdown * 100.0).collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    for t in thresholds {
        chart.draw_series(std::iter::once(DashedPathElement::new(
            vec![(0.5, t), (n + 0.5, t)],
            6,
            4,
            THRESHOLD.stroke_width(1),
        )))?;
    }
    for (k, (kind, &c)) in kinds.iter().zip(colors).enumerate() {
        let pts: Vec<(f64, &Entry)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| &e.against == kind)
            .map(|(i, e)| ((i + 1) as f64, e))
            .collect();
        chart.draw_series(std::iter::once(PathElement::new(
            pts.iter()
                .map(|&(x, e)| (x, pct(e.change)))
                .collect::<Vec<_>>(),
            c.stroke_width(2),
        )))?;
        for &(x, e) in &pts {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, pct(e.ci.0)), (x, pct(e.ci.1))],
                BLACK,
            )))?;
            if k % 2 == 1 {
                chart.draw_series(std::iter::once(TriangleMarker::new(
                    (x, pct(e.change)),
                    6,
                    c.filled(),
                )))?;
            } else {
                chart.draw_series(std::iter::once(Circle::new(
                    (x, pct(e.change)),
                    4,
                    c.filled(),
                )))?;
            }
        }
    }
    if compounded.len() > 1 {
        chart.draw_series(std::iter::once(PathElement::new(
            compounded,
            COMPOUNDED.stroke_width(2),
        )))?;
    }
    Ok(())
}
