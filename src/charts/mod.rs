//! SVG charts of a report, drawn with plotters, each in its own file:
//!
//! - `throughput.rs` → gflops.svg: GFLOP/s per shape, f32 and f64 side by
//!   side, p10–p90 whiskers, the machine's GEMM rate as a labelled
//!   reference;
//! - `phases.rs` → phases.svg: where the step's time goes, as shares of
//!   the step (0–100%) with each phase's milliseconds written on it;
//! - `scaling.rs` → scaling.svg: samples/s against N, and against threads
//!   when the grid varies them;
//! - `gate.rs` → compare's chart: each point's change with its interval
//!   against the gate's threshold;
//! - `trend.rs` → history's chart: the gate's overall change over its
//!   history, against the merge's base and an older anchor.
//!
//! Every chart draws its legend in a strip of its own (it never covers a
//! mark), writes its labels horizontally, and names every mark it draws.

mod gate;
mod phases;
mod scaling;
mod throughput;
mod trend;

pub use gate::write_compare_chart;
pub use phases::write_phases_chart;
pub use scaling::write_scaling_chart;
pub use throughput::write_gflops_chart;
pub use trend::write_trend_chart;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::io::Write;
use std::path::Path;
use twolayer::bench::report::PointReport;
use twolayer::error::{Error, Result};
use twolayer::output::write_atomic;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Font of every label.
const FONT: &str = "sans-serif";

/// A colour per dtype: f64 blue, f32 orange, bf16 green (matplotlib's
/// first three).
fn dtype_color(dtype: twolayer::scalar::Dtype) -> RGBColor {
    match dtype {
        twolayer::scalar::Dtype::F32 => RGBColor(255, 127, 14),
        twolayer::scalar::Dtype::Bf16 => RGBColor(44, 160, 44),
        twolayer::scalar::Dtype::F64 => RGBColor(31, 119, 180),
    }
}

/// A darker shade of `c`, for marks drawn over it.
fn darker(c: RGBColor) -> RGBColor {
    RGBColor(c.0 / 2, c.1 / 2, c.2 / 2)
}

/// Ten distinguishable colours (matplotlib's tab10), for series.
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// `n` colours, all different: the ten of [`SERIES_COLORS`] when they
/// suffice, else hues evenly spaced round the wheel, alternately darker
/// and lighter so that neighbours differ in two ways.
fn palette(n: usize) -> Vec<RGBColor> {
    if n <= SERIES_COLORS.len() {
        return SERIES_COLORS[..n].to_vec();
    }
    (0..n)
        .map(|i| {
            let hue = i as f64 / n as f64;
            let light = if i % 2 == 0 { 0.38 } else { 0.55 };
            hsl(hue, 0.75, light)
        })
        .collect()
}

/// An HSL colour (each in 0–1) as RGB.
fn hsl(h: f64, s: f64, l: f64) -> RGBColor {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h * 6.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let to = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    RGBColor(to(r), to(g), to(b))
}

/// How a legend entry shows its mark.
#[derive(Clone, Copy)]
enum Mark {
    /// A filled box.
    Box(RGBColor),
    /// A dashed line.
    Dashed(RGBColor),
    /// A solid line with a marker: a dot, or a triangle for the second
    /// ten series.
    Line(RGBColor, bool),
    /// A whisker (an interval).
    Whisker(RGBColor),
}

/// Where a legend strip `width` pixels wide puts each entry (its mark's
/// left end and its row's middle, in pixels): left to right, wrapping to
/// the next row.
fn legend_layout(entries: &[(Mark, String)], width: u32) -> Vec<(i32, i32)> {
    let (mut x, mut y) = (12i32, 12i32);
    entries
        .iter()
        .map(|(_, text)| {
            let w = 30 + 8 * text.chars().count() as i32;
            if x + w > width as i32 - 8 && x > 12 {
                x = 12;
                y += 22;
            }
            let at = (x, y);
            x += w;
            at
        })
        .collect()
}

/// Rows a legend of `entries` takes in `width` pixels.
fn legend_rows(entries: &[(Mark, String)], width: u32) -> u32 {
    legend_layout(entries, width)
        .last()
        .map_or(1, |&(_, y)| 1 + (y as u32 - 12) / 22)
}

/// Draws a legend strip in an area of its own above the chart.
fn draw_legend(area: &Area, entries: &[(Mark, String)]) -> DrawResult {
    let (w, _) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 13).into_font()).color(&BLACK);
    for ((mark, text), (x, y)) in entries.iter().zip(legend_layout(entries, w)) {
        match *mark {
            Mark::Box(c) => {
                area.draw(&Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()))?
            }
            Mark::Dashed(c) => area.draw(&DashedPathElement::new(
                vec![(x, y), (x + 18, y)],
                4,
                3,
                c.stroke_width(2),
            ))?,
            Mark::Line(c, triangle) => {
                area.draw(&PathElement::new(
                    vec![(x, y), (x + 18, y)],
                    c.stroke_width(2),
                ))?;
                if triangle {
                    area.draw(&TriangleMarker::new((x + 9, y), 5, c.filled()))?;
                } else {
                    area.draw(&Circle::new((x + 9, y), 3, c.filled()))?;
                }
            }
            Mark::Whisker(c) => {
                area.draw(&PathElement::new(vec![(x + 8, y - 7), (x + 8, y + 7)], c))?;
                area.draw(&PathElement::new(vec![(x + 4, y - 7), (x + 12, y - 7)], c))?;
                area.draw(&PathElement::new(vec![(x + 4, y + 7), (x + 12, y + 7)], c))?;
            }
        }
        area.draw(&Text::new(
            text.clone(),
            (x + 24, y),
            style.pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// Renders a chart of `size` pixels: a title, a legend strip, then what
/// `draw` draws in the rest.
fn render(
    size: (u32, u32),
    title: &str,
    legend: &[(Mark, String)],
    draw: impl FnOnce(&Area) -> DrawResult,
) -> std::result::Result<String, String> {
    let mut svg = String::new();
    {
        let legend_h = 8 + 22 * legend_rows(legend, size.0);
        let root =
            SVGBackend::with_string(&mut svg, (size.0, size.1 + legend_h)).into_drawing_area();
        let go = || -> DrawResult {
            root.fill(&WHITE)?;
            let body = root.titled(title, (FONT, 18))?;
            let (top, rest) = body.split_vertically(legend_h);
            draw_legend(&top, legend)?;
            draw(&rest)?;
            root.present()?;
            Ok(())
        };
        go().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Writes `svg` to `path` atomically.
fn write_svg(path: &Path, svg: std::result::Result<String, String>) -> Result<()> {
    let svg = svg.map_err(|e| Error::write(path, e))?;
    write_atomic(path, |w| w.write_all(svg.as_bytes()))
}

/// `(N, D_in, H, D_out)`, threads (and ranks under MPI): what a group of
/// bars shares.
fn group_label(p: &PointReport) -> (String, String) {
    let who = match p.ranks() {
        1 => format!(
            "{} thread{}",
            p.run.threads,
            if p.run.threads == 1 { "" } else { "s" }
        ),
        k => format!("{k} ranks × {} threads", p.run.threads),
    };
    let mode = if p.run.step_mode == twolayer::step::StepMode::Fused {
        String::new()
    } else {
        format!(", {}", p.run.step_mode)
    };
    let form = if p.run.form == twolayer::step::Form::Dual {
        ", dual form"
    } else {
        ""
    };
    (p.shape_label(), format!("{who}{mode}{form}"))
}

/// A short label of one point: shape, dtype, threads.
fn point_label(p: &PointReport) -> String {
    let (shape, who) = group_label(p);
    format!("{shape} {} · {who}", p.run.dtype)
}

/// A chart's pixel position (`ChartContext::backend_coord`, counted from
/// the whole canvas) as a position in `area`, for text drawn beside the
/// plot.
fn in_area(area: &Area, (x, y): (i32, i32)) -> (i32, i32) {
    let (bx, by) = area.get_base_pixel();
    (x - bx, y - by)
}

/// GFLOP/s of `p` at a step time of `ms`.
fn gflops_at(p: &PointReport, ms: f64) -> f64 {
    p.gflops * p.ms_per_step.median / ms
}
