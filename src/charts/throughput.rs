//! gflops.svg: GFLOP/s of every point, grouped by shape and threads with
//! the dtypes side by side; a whisker from the GFLOP/s of the p90 step
//! time to that of the p10; the machine's 2048² GEMM rate (median of its
//! samples, same dtype and threads) as a dashed level across each bar, its
//! min–max as a pale band.

use super::{
    darker, dtype_color, gflops_at, group_label, in_area, render, write_svg, Area, DrawResult,
    Mark, FONT,
};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use twolayer::bench::report::{PointReport, Report};
use twolayer::error::Result;
use twolayer::scalar::Dtype;

/// Writes gflops.svg into `dir`.
pub fn write_gflops_chart(report: &Report, dir: &Path) -> Result<()> {
    let groups = groups(report);
    let dtypes = dtypes(report);
    let width = (110 + 170 * groups.len()).max(720) as u32;
    let mut legend: Vec<(Mark, String)> = dtypes
        .iter()
        .map(|d| {
            (
                Mark::Box(dtype_color(*d)),
                format!("{d}: step GFLOP/s (median)"),
            )
        })
        .collect();
    legend.push((Mark::Whisker(BLACK), "p10–p90 of the step time".into()));
    for d in &dtypes {
        legend.push((
            Mark::Dashed(darker(dtype_color(*d))),
            format!("{d}: 2048² GEMM rate, same threads (band: min–max)"),
        ));
    }
    write_svg(
        &dir.join("gflops.svg"),
        render(
            (width, 470),
            "Throughput per shape: GFLOP/s of the step against the machine's GEMM rate (% under each bar top; \"pk\": of the cores' peak)",
            &legend,
            |area| draw(report, &groups, &dtypes, area),
        ),
    )
}

/// The points' groups, in order of first appearance: each the indices of
/// its points.
fn groups(report: &Report) -> Vec<Vec<usize>> {
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, p) in report.points.iter().enumerate() {
        let k = group_label(p);
        match keys.iter().position(|x| *x == k) {
            Some(j) => groups[j].push(i),
            None => {
                keys.push(k);
                groups.push(vec![i]);
            }
        }
    }
    groups
}

/// The dtypes present, f64 first.
fn dtypes(report: &Report) -> Vec<Dtype> {
    [Dtype::F64, Dtype::F32, Dtype::Bf16]
        .into_iter()
        .filter(|d| report.points.iter().any(|p| p.run.dtype == *d))
        .collect()
}

fn draw(report: &Report, groups: &[Vec<usize>], dtypes: &[Dtype], area: &Area) -> DrawResult {
    let high = |p: &PointReport| {
        let rate = p
            .machine_gemm
            .as_ref()
            .map_or(p.machine_gemm_gflops, |r| r.max);
        gflops_at(p, p.ms_per_step.p10).max(rate)
    };
    let ymax = report.points.iter().map(high).fold(1.0f64, f64::max) * 1.12;
    let k = groups.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..k as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(WHITE)
        .y_desc("GFLOP/s")
        .label_style((FONT, 13))
        .draw()?;
    let slots = dtypes.len().max(1) as f64;
    let slot_w = 0.8 / slots;
    for (g, members) in groups.iter().enumerate() {
        for &i in members {
            let p = &report.points[i];
            let s = dtypes.iter().position(|d| *d == p.run.dtype).unwrap_or(0) as f64;
            let x0 = g as f64 + 0.1 + s * slot_w;
            let (x1, xm) = (x0 + slot_w * 0.9, x0 + slot_w * 0.45);
            let c = dtype_color(p.run.dtype);
            // The GEMM rate's band and level, behind the bar.
            if let Some(r) = &p.machine_gemm {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0 - 0.02, r.min), (x1 + 0.02, r.max)],
                    darker(c).mix(0.18).filled(),
                )))?;
            }
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x1, p.gflops)],
                c.filled(),
            )))?;
            chart.draw_series(std::iter::once(DashedPathElement::new(
                vec![
                    (x0 - 0.02, p.machine_gemm_gflops),
                    (x1 + 0.02, p.machine_gemm_gflops),
                ],
                5,
                3,
                darker(c).stroke_width(2),
            )))?;
            // p10–p90 whisker: a long step time is a low rate.
            let (lo, hi) = (
                gflops_at(p, p.ms_per_step.p90),
                gflops_at(p, p.ms_per_step.p10),
            );
            let cap = slot_w * 0.15;
            for seg in [
                vec![(xm, lo), (xm, hi)],
                vec![(xm - cap, lo), (xm + cap, lo)],
                vec![(xm - cap, hi), (xm + cap, hi)],
            ] {
                chart.draw_series(std::iter::once(PathElement::new(seg, BLACK)))?;
            }
            // The value, and its share of the GEMM rate, under the bar top.
            let (px, py) = in_area(area, chart.backend_coord(&(xm, p.gflops)));
            let inside = TextStyle::from((FONT, 12).into_font())
                .color(&WHITE)
                .pos(Pos::new(HPos::Center, VPos::Top));
            let (_, base) = in_area(area, chart.backend_coord(&(xm, 0.0)));
            if base - py > 34 {
                area.draw(&Text::new(
                    format!("{:.0}", p.gflops),
                    (px, py + 4),
                    inside.clone(),
                ))?;
                area.draw(&Text::new(
                    format!("{:.0}%", p.peak_fraction * 100.0),
                    (px, py + 18),
                    inside.clone(),
                ))?;
                // And of the cores' peak, when probed and there is room.
                if let Some(f) = p.core_peak_fraction.filter(|_| base - py > 48) {
                    area.draw(&Text::new(
                        format!("{:.0}% pk", f * 100.0),
                        (px, py + 32),
                        inside,
                    ))?;
                }
            }
        }
        // The group's label, two horizontal lines under it.
        let p = &report.points[members[0]];
        let (shape, who) = group_label(p);
        let (cx, cy) = in_area(area, chart.backend_coord(&(g as f64 + 0.5, 0.0)));
        let style = TextStyle::from((FONT, 13).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        area.draw(&Text::new(shape, (cx, cy + 8), style.clone()))?;
        area.draw(&Text::new(who, (cx, cy + 25), style))?;
    }
    Ok(())
}
