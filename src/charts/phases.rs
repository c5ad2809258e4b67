//! phases.svg: where each point's step goes. One horizontal bar per point
//! across 0–100% of its instrumented step, a segment per phase in step
//! order with its milliseconds written on it when it is wide enough, and
//! the step's milliseconds at the bar's end.

use super::{in_area, point_label, render, write_svg, Area, DrawResult, Mark, FONT, SERIES_COLORS};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use twolayer::bench::report::{fmt_ms, Report};
use twolayer::error::Result;

/// One colour per phase, in [`twolayer::step::Phase::ALL`] order: the
/// GEMMs blue and purple, the passes around them in the other colours.
const PHASE_COLORS: [RGBColor; 7] = [
    SERIES_COLORS[0],
    SERIES_COLORS[1],
    SERIES_COLORS[2],
    SERIES_COLORS[4],
    SERIES_COLORS[3],
    SERIES_COLORS[8],
    SERIES_COLORS[5],
];

/// What the legend calls each phase.
const PHASE_NAMES: [&str; 7] = [
    "forward GEMMs",
    "ReLU",
    "loss and g_y",
    "backward GEMMs",
    "ReLU mask",
    "join (waiting for the other shards)",
    "gradient sum and update",
];

/// Writes phases.svg into `dir`.
pub fn write_phases_chart(report: &Report, dir: &Path) -> Result<()> {
    let legend: Vec<(Mark, String)> = PHASE_COLORS
        .iter()
        .zip(PHASE_NAMES)
        .map(|(c, n)| (Mark::Box(*c), n.to_string()))
        .collect();
    let height = 70 + 34 * report.points.len().max(1) as u32;
    write_svg(
        &dir.join("phases.svg"),
        render(
            (1100, height),
            "Where a step's time goes: share of the instrumented step, milliseconds on each part",
            &legend,
            |area| draw(report, area),
        ),
    )
}

fn draw(report: &Report, area: &Area) -> DrawResult {
    let k = report.points.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(110)
        .x_label_area_size(40)
        .y_label_area_size(330)
        .build_cartesian_2d(0f64..100f64, 0f64..k as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .light_line_style(WHITE)
        .x_labels(11)
        .x_label_formatter(&|v| format!("{v:.0}%"))
        .x_desc("share of the step")
        .label_style((FONT, 13))
        .draw()?;
    let label = TextStyle::from((FONT, 13).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    let on_bar = TextStyle::from((FONT, 11).into_font())
        .color(&WHITE)
        .pos(Pos::new(HPos::Center, VPos::Center));
    let after = TextStyle::from((FONT, 12).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, p) in report.points.iter().enumerate() {
        // Top to bottom in report order.
        let y = (k - 1 - i) as f64;
        let phases = p.phases.named();
        let total: f64 = phases.iter().map(|(_, v)| v.max(0.0)).sum::<f64>();
        let mut left = 0.0;
        for (j, (_, ms)) in phases.iter().enumerate() {
            let share = if total > 0.0 {
                100.0 * ms.max(0.0) / total
            } else {
                0.0
            };
            let right = (left + share).min(100.0);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(left, y + 0.15), (right, y + 0.85)],
                PHASE_COLORS[j].filled(),
            )))?;
            if share >= 9.0 {
                let (px, py) = in_area(area, chart.backend_coord(&((left + right) / 2.0, y + 0.5)));
                area.draw(&Text::new(fmt_ms(*ms), (px, py), on_bar.clone()))?;
            }
            left = right;
        }
        let (lx, ly) = in_area(area, chart.backend_coord(&(0.0, y + 0.5)));
        area.draw(&Text::new(point_label(p), (lx - 8, ly), label.clone()))?;
        let (rx, _) = in_area(area, chart.backend_coord(&(100.0, y + 0.5)));
        area.draw(&Text::new(
            format!("{} ms", fmt_ms(total)),
            (rx + 6, ly),
            after.clone(),
        ))?;
    }
    Ok(())
}
