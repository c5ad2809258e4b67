//! The charts rendered to pixels, as a browser would draw them (resvg):
//! every mark and label inside the canvas, the colours of every series
//! present, no text drawn over another. A person looked at the same
//! renders; these checks keep what they saw true.

mod common;

use common::{run, stderr};
use resvg::{tiny_skia, usvg};
use std::path::Path;

/// The SVG at `path` rendered to a pixmap (and written beside it as PNG,
/// for a person to look at).
fn render(path: &Path) -> tiny_skia::Pixmap {
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let svg = std::fs::read_to_string(path).unwrap();
    let tree = usvg::Tree::from_str(&svg, &opt).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.save_png(path.with_extension("png")).unwrap();
    pixmap
}

/// Pixels of exactly this colour.
fn count(p: &tiny_skia::Pixmap, (r, g, b): (u8, u8, u8)) -> usize {
    p.pixels()
        .iter()
        .filter(|c| c.alpha() == 255 && (c.red(), c.green(), c.blue()) == (r, g, b))
        .count()
}

/// Every `<text>` of an SVG: its position and its words.
fn texts(path: &Path) -> (u32, u32, Vec<(f64, f64, String)>) {
    let svg = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let root = doc.root_element();
    let dim = |a: &str| root.attribute(a).unwrap().parse::<u32>().unwrap();
    let texts = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            let at = |a: &str| n.attribute(a).unwrap_or("0").parse::<f64>().unwrap();
            (at("x"), at("y"), n.text().unwrap_or("").trim().to_string())
        })
        .collect();
    (dim("width"), dim("height"), texts)
}

/// Every label inside the canvas (a label drawn in the wrong area's
/// coordinates once fell off the bottom), and no two labels at one spot.
fn labels_inside_and_apart(path: &Path) {
    let (w, h, texts) = texts(path);
    assert!(!texts.is_empty());
    for (x, y, t) in &texts {
        assert!(
            *x >= 0.0 && *x <= w as f64 && *y >= 0.0 && *y <= h as f64,
            "{path:?}: {t:?} at ({x}, {y}) is outside {w}×{h}"
        );
    }
    for (i, a) in texts.iter().enumerate() {
        for b in &texts[i + 1..] {
            assert!(
                (a.0 - b.0).abs() > 2.0 || (a.1 - b.1).abs() > 6.0,
                "{path:?}: {:?} and {:?} are drawn over each other",
                a.2,
                b.2
            );
        }
    }
}

#[test]
fn the_sweep_charts_draw_every_series_inside_the_canvas() {
    let dir = tempfile::tempdir().unwrap();
    let report = common::tiny_sweep(dir.path(), "9,10", "1,2");
    let d = dir.path();

    // gflops.svg: f64 blue and f32 orange bars, and every label inside.
    labels_inside_and_apart(&d.join("gflops.svg"));
    let g = render(&d.join("gflops.svg"));
    assert!(count(&g, (31, 119, 180)) > 500, "no f64 bars");
    assert!(count(&g, (255, 127, 14)) > 500, "no f32 bars");
    let (_, _, t) = texts(&d.join("gflops.svg"));
    let words: Vec<&str> = t.iter().map(|x| x.2.as_str()).collect();
    for needle in [
        "f64: step GFLOP/s (median)",
        "f32: 2048² GEMM rate, same threads (band: min–max)",
        "p10–p90 of the step time",
        "GFLOP/s",
        "2 threads",
    ] {
        assert!(
            words.iter().any(|w| w.contains(needle)),
            "gflops.svg lacks {needle:?}"
        );
    }

    // phases.svg: every phase's colour in the legend, the bars' total
    // milliseconds written beside them, the axis within 0–100%.
    labels_inside_and_apart(&d.join("phases.svg"));
    let p = render(&d.join("phases.svg"));
    for c in [
        (31, 119, 180),
        (148, 103, 189),
        (140, 86, 75),
        (188, 189, 34),
    ] {
        assert!(count(&p, c) > 100, "phases.svg lacks colour {c:?}");
    }
    let (_, _, t) = texts(&d.join("phases.svg"));
    assert_eq!(
        t.iter().filter(|x| x.2.ends_with(" ms")).count(),
        report.points.len()
    );
    assert!(t.iter().any(|x| x.2 == "100%") && !t.iter().any(|x| x.2 == "110%"));
    assert!(t.iter().any(|x| x.2.starts_with("join")));

    // scaling.svg: against N, and against threads (the grid varies both).
    labels_inside_and_apart(&d.join("scaling.svg"));
    render(&d.join("scaling.svg"));
    let (_, _, t) = texts(&d.join("scaling.svg"));
    assert!(t.iter().any(|x| x.2 == "against N"));
    assert!(t.iter().any(|x| x.2 == "against threads"));
    assert!(t.iter().any(|x| x.2.starts_with("threads: (8, 12, 9, 3)")));
    // The axes label the values the grid ran: N 8 and 16 on the log axis
    // (left to itself it labelled only 10), threads 1 and 2.
    for v in ["8", "16", "1", "2"] {
        assert!(t.iter().any(|x| x.2 == v), "scaling.svg has no tick {v}");
    }
}

/// A dual-form point (the seed shape, where `twolayer train` runs the dual
/// form) is its own series, named so: before, it sat on the primal points'
/// line over N, which then read as the primal step scaling.
#[test]
fn the_scaling_chart_keeps_a_dual_point_off_the_primal_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut report = common::tiny_sweep(dir.path(), "9", "1");
    let n_lines = |d: &Path| {
        let (_, _, t) = texts(&d.join("scaling.svg"));
        t.into_iter()
            .filter(|x| x.2.starts_with("N: "))
            .map(|x| x.2)
            .collect::<Vec<_>>()
    };
    let before = n_lines(dir.path());
    assert!(before.iter().all(|l| !l.contains("dual")), "{before:?}");
    let smallest = (0..report.points.len())
        .min_by_key(|&i| report.points[i].run.n)
        .unwrap();
    report.points[smallest].run.form = twolayer::step::Form::Dual;
    let out = dir.path().join("dual");
    std::fs::create_dir_all(&out).unwrap();
    twolayer_cli::charts::write_scaling_chart(&report, &out).unwrap();
    labels_inside_and_apart(&out.join("scaling.svg"));
    let after = n_lines(&out);
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert_eq!(
        after.iter().filter(|l| l.ends_with("· dual form")).count(),
        1,
        "{after:?}"
    );
}

#[test]
fn compare_draws_each_points_change_and_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let base = common::tiny_sweep(&a, "9", "1");
    common::tiny_sweep(&b, "9", "1");
    let chart = dir.path().join("change.svg");
    let o = run(&[
        "compare",
        a.join("report.json").to_str().unwrap(),
        b.join("report.json").to_str().unwrap(),
        "--max-slowdown",
        "0.5",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(o.status.code().is_some_and(|c| c < 2), "{}", stderr(&o));
    labels_inside_and_apart(&chart);
    render(&chart);
    let (_, _, t) = texts(&chart);
    for p in &base.points {
        let label = format!("{} {} ×{}", p.shape_label(), p.run.dtype, p.run.threads);
        assert!(t.iter().any(|x| x.2 == label), "the chart lacks {label}");
    }
    assert!(t.iter().any(|x| x.2 == "all points (geometric mean)"));
    assert!(t.iter().any(|x| x.2 == "threshold ±50%"));
    // A chart that would overwrite an input is refused.
    let o = run(&[
        "compare",
        a.join("report.json").to_str().unwrap(),
        b.join("report.json").to_str().unwrap(),
        "--chart",
        a.join("report.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("would destroy the input"));
}
