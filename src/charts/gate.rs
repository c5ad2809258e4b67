//! The chart `twolayer compare --chart` writes: one row per point, the
//! gated change of wall time per step (current / baseline − 1) as a dot
//! coloured by verdict with its 95% interval, the threshold and its
//! mirror as dashed lines, and the two medians written beside each row.

use super::{in_area, render, write_svg, Area, DrawResult, Mark, FONT};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use twolayer::bench::compare::{Comparison, Verdict};
use twolayer::bench::report::fmt_ms;
use twolayer::error::Result;

const SLOWER: RGBColor = RGBColor(214, 39, 40);
const FASTER: RGBColor = RGBColor(44, 160, 44);
const WITHIN: RGBColor = RGBColor(90, 90, 90);

fn verdict_color(v: Verdict) -> RGBColor {
    match v {
        Verdict::Slower => SLOWER,
        Verdict::Faster => FASTER,
        Verdict::WithinNoise => WITHIN,
    }
}

/// Writes the comparison's chart to `path` (SVG).
pub fn write_compare_chart(c: &Comparison, path: &Path) -> Result<()> {
    let t = c.max_slowdown * 100.0;
    let legend = vec![
        (Mark::Box(SLOWER), "slower (fails the gate)".to_string()),
        (Mark::Box(FASTER), "faster".to_string()),
        (Mark::Box(WITHIN), "within noise".to_string()),
        (Mark::Whisker(BLACK), "95% interval".to_string()),
        (Mark::Dashed(SLOWER), format!("threshold ±{t:.0}%")),
    ];
    let rows = c.points.len() + 1;
    write_svg(
        path,
        render(
            (1100, 70 + 30 * rows as u32),
            "Current against baseline: change of wall time per step, point by point",
            &legend,
            |area| draw(c, area),
        ),
    )
}

fn draw(c: &Comparison, area: &Area) -> DrawResult {
    let t = c.max_slowdown * 100.0;
    let pct = |r: f64| (r - 1.0) * 100.0;
    let mut lo = -t * 1.5;
    let mut hi = t * 1.5;
    for p in &c.points {
        lo = lo.min(pct(p.ci.0));
        hi = hi.max(pct(p.ci.1));
    }
    lo = lo.min(pct(c.overall.ci.0));
    hi = hi.max(pct(c.overall.ci.1));
    let pad = (hi - lo) * 0.05;
    let k = c.points.len() + 1;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(190)
        .x_label_area_size(40)
        .y_label_area_size(330)
        .build_cartesian_2d(lo - pad..hi + pad, 0f64..k as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .light_line_style(WHITE)
        .x_label_formatter(&|v| format!("{v:+.0}%"))
        .x_desc("change of wall time per step (current / baseline − 1)")
        .label_style((FONT, 13))
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 0.0), (0.0, k as f64)],
        BLACK.stroke_width(1),
    )))?;
    for x in [t, -t] {
        chart.draw_series(std::iter::once(DashedPathElement::new(
            vec![(x, 0.0), (x, k as f64)],
            6,
            4,
            SLOWER.stroke_width(1),
        )))?;
    }
    let label = TextStyle::from((FONT, 13).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    let after = TextStyle::from((FONT, 12).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let rows = c
        .points
        .iter()
        .map(|p| {
            (
                p.label.clone(),
                p.change,
                p.ci,
                p.verdict,
                format!("{} → {} ms", fmt_ms(p.base_ms), fmt_ms(p.current_ms)),
            )
        })
        .chain(std::iter::once((
            "all points (geometric mean)".to_string(),
            c.overall.change,
            c.overall.ci,
            c.overall.verdict,
            String::new(),
        )));
    for (i, (name, change, ci, verdict, ms)) in rows.enumerate() {
        let y = (k - 1 - i) as f64 + 0.5;
        let col = verdict_color(verdict);
        let (a, b) = (pct(ci.0), pct(ci.1));
        for seg in [
            vec![(a, y), (b, y)],
            vec![(a, y - 0.2), (a, y + 0.2)],
            vec![(b, y - 0.2), (b, y + 0.2)],
        ] {
            chart.draw_series(std::iter::once(PathElement::new(seg, BLACK)))?;
        }
        chart.draw_series(std::iter::once(Circle::new(
            (pct(change), y),
            5,
            col.filled(),
        )))?;
        let (lx, ly) = in_area(area, chart.backend_coord(&(lo - pad, y)));
        area.draw(&Text::new(name, (lx - 8, ly), label.clone()))?;
        let (rx, _) = in_area(area, chart.backend_coord(&(hi + pad, y)));
        area.draw(&Text::new(
            format!("{:+.1}% {ms}", pct(change)),
            (rx + 6, ly),
            after.clone(),
        ))?;
    }
    Ok(())
}
