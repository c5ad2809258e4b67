//! SVG charts of a report, drawn with plotters: GFLOP/s per point (colour
//! by dtype) and the phase breakdown as stacked bars (percent of the step).
//! Every bar is labelled with its shape, dtype and threads.

use super::report::Report;
use crate::error::{Error, Result};
use crate::output::write_atomic;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;

const PHASE_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
];

fn dtype_color(dtype: &str) -> RGBColor {
    if dtype == "f32" {
        RGBColor(255, 127, 14)
    } else {
        RGBColor(31, 119, 180)
    }
}

/// Writes gflops.svg (GFLOP/s by point) into `dir`.
pub fn write_gflops_chart(report: &Report, dir: &Path) -> Result<()> {
    let path = dir.join("gflops.svg");
    let svg = render(report, draw_gflops).map_err(|e| Error::write(&path, e))?;
    write_atomic(&path, |w| w.write_all(svg.as_bytes()))
}

/// Writes phases.svg (where each point's step time goes) into `dir`.
pub fn write_phases_chart(report: &Report, dir: &Path) -> Result<()> {
    let path = dir.join("phases.svg");
    let svg = render(report, draw_phases).map_err(|e| Error::write(&path, e))?;
    write_atomic(&path, |w| w.write_all(svg.as_bytes()))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn render(
    report: &Report,
    draw: fn(&Report, &Area) -> DrawResult,
) -> std::result::Result<String, String> {
    let width = (140 + 46 * report.points.len().max(1)) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width.max(640), 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(report, &root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn label(p: &super::report::PointReport) -> String {
    format!("{} {} ×{}", p.shape_label(), p.dtype, p.threads)
}

/// Bars of GFLOP/s, one per point, with the machine's GEMM rate as a dashed
/// level per dtype.
fn draw_gflops(report: &Report, root: &Area) -> DrawResult {
    let k = report.points.len();
    let ymax = report
        .points
        .iter()
        .map(|p| p.gflops.max(p.machine_gemm_gflops))
        .fold(1.0f64, f64::max)
        * 1.35; // headroom for the legend
    let mut chart = ChartBuilder::on(root)
        .caption(
            "GFLOP/s per shape (bars) and the GEMM rate (line)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(190)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..k.max(1) as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .light_line_style(WHITE)
        .y_desc("GFLOP/s")
        .draw()?;
    for (i, p) in report.points.iter().enumerate() {
        let x = i as f64;
        let c = dtype_color(&p.dtype);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, p.gflops)],
            c.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, p.machine_gemm_gflops), (x + 1.0, p.machine_gemm_gflops)],
            c.stroke_width(2),
        )))?;
    }
    for dtype in ["f64", "f32"] {
        if report.points.iter().any(|p| p.dtype == dtype) {
            let c = dtype_color(dtype);
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
                .label(dtype)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    draw_x_labels(&chart, report, root)
}

/// Stacked bars: the share of each phase in the step, per point.
fn draw_phases(report: &Report, root: &Area) -> DrawResult {
    let k = report.points.len();
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Where a step's time goes (% of the instrumented step)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(190)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..k.max(1) as f64, 0f64..165f64)?; // legend above 100%
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .light_line_style(WHITE)
        .y_labels(8)
        .y_label_formatter(&|v| {
            if *v <= 100.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .y_desc("% of step")
        .draw()?;
    let names = report
        .points
        .first()
        .map(|p| p.phases.named().map(|(n, _)| n))
        .unwrap_or_default();
    for (i, p) in report.points.iter().enumerate() {
        let x = i as f64;
        let phases = p.phases.named();
        let total: f64 = phases.iter().map(|(_, v)| v).sum::<f64>().max(1e-12);
        let mut bottom = 0.0;
        for (j, (_, v)) in phases.iter().enumerate() {
            let top = bottom + 100.0 * v / total;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, bottom), (x + 0.85, top)],
                PHASE_COLORS[j].filled(),
            )))?;
            bottom = top;
        }
    }
    for (j, name) in names.iter().enumerate() {
        let c = PHASE_COLORS[j];
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    draw_x_labels(&chart, report, root)
}

/// Writes each point's label under its bar, turned 90°.
fn draw_x_labels<DB: DrawingBackend>(
    chart: &ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    report: &Report,
    root: &Area,
) -> DrawResult {
    let style = TextStyle::from(("sans-serif", 12).into_font())
        .transform(FontTransform::Rotate90)
        .color(&BLACK);
    for (i, p) in report.points.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(label(p), (px + 4, py + 6), style.clone()))?;
    }
    Ok(())
}
