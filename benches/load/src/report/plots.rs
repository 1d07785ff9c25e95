//! PNG plots: latency over time, and the latency percentile distribution (HdrHistogram style:
//! the x axis counts "nines", so the tail is as wide as the median).
//!
//! Text is drawn with `ab_glyph` from a font shipped in `benches/load/assets`, so plotting
//! needs no fontconfig or system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::recorder::PercentilePoint;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");
const SIZE: (u32, u32) = (1100, 600);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
/// Percentiles up to 99.999 % (five nines).
const MAX_NINES: f64 = 5.0;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            eprintln!("the plot font could not be loaded; plots will have no text");
        }
    });
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

/// A named line: (x, y) points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The y range of a log-scale latency axis that holds every point, in ms.
fn latency_range(lines: &[Line]) -> (f64, f64) {
    let ys = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|y| *y > 0.0);
    let (lo, hi) = ys.fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if hi <= 0.0 {
        return (0.01, 1.0);
    }
    (lo * 0.8, hi * 1.25)
}

fn draw(
    path: &Path,
    title: &str,
    x_desc: &str,
    x_range: std::ops::Range<f64>,
    x_label: &dyn Fn(&f64) -> String,
    lines: &[Line],
) -> anyhow::Result<()> {
    register_font();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (lo, hi) = latency_range(lines);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, (lo..hi).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_labels(12)
        .x_desc(x_desc)
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(x_label)
        .y_label_formatter(&|v| match *v {
            v if v >= 1.0 => format!("{v:.0}"),
            v if v >= 0.1 => format!("{v:.1}"),
            v => format!("{v:.2}"),
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = line.points.iter().copied().filter(|p| p.1 > 0.0);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(line.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Latency per second of the run (x: seconds since the start).
pub fn latency_over_time(path: &Path, title: &str, lines: &[Line]) -> anyhow::Result<()> {
    let end = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    draw(
        path,
        title,
        "seconds since start (by scheduled send time)",
        0.0..end + 1.0,
        &|x| integral(*x).map(|s| format!("{s:.0}")).unwrap_or_default(),
        lines,
    )
}

/// Where a percentile sits on the "nines" axis: 90 % → 1, 99 % → 2, 99.9 % → 3.
pub fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(10f64.powf(-MAX_NINES));
    -rest.log10()
}

/// `x` when it is a whole number: tick labels only there, so none repeats after rounding.
fn integral(x: f64) -> Option<f64> {
    ((x - x.round()).abs() < 1e-6).then(|| x.round())
}

/// "90%", "99%", "99.9%"... at whole nines; nothing between them.
fn percentile_label(x: f64) -> String {
    let Some(n) = integral(x) else {
        return String::new();
    };
    let p = 100.0 * (1.0 - 10f64.powf(-n));
    format!("{p:.*}%", (n as usize).saturating_sub(2))
}

/// The latency distribution of each named series.
pub fn percentile_distribution(
    path: &Path,
    title: &str,
    series: &[(String, Vec<PercentilePoint>)],
) -> anyhow::Result<()> {
    let lines: Vec<Line> = series
        .iter()
        .map(|(name, points)| Line {
            name: name.clone(),
            points: points
                .iter()
                .map(|p| (nines(p.percentile), p.latency_ms))
                .collect(),
        })
        .collect();
    draw(
        path,
        title,
        "percentile",
        0.0..MAX_NINES,
        &|x| percentile_label(*x),
        &lines,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nines_axis_spreads_the_tail() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(3.5), "");
    }

    #[test]
    fn writes_png_files() {
        let dir = std::env::temp_dir().join(format!("paystream-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let over_time = dir.join("time.png");
        latency_over_time(
            &over_time,
            "test",
            &[Line {
                name: "p99".into(),
                points: vec![(0.0, 1.5), (1.0, 2.5), (2.0, 40.0)],
            }],
        )
        .unwrap();
        let dist = dir.join("dist.png");
        let points = [50.0, 90.0, 99.0, 99.9]
            .iter()
            .map(|p| PercentilePoint {
                percentile: *p,
                latency_ms: *p / 10.0,
            })
            .collect();
        percentile_distribution(&dist, "test", &[("http".into(), points)]).unwrap();
        for f in [over_time, dist] {
            let bytes = std::fs::read(&f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", f.display());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
