//! The cost–quality picture of a savings run (plotters, PNG).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// What one picture shows; costs in USD over the test split, qualities as mean scores.
pub struct Figure {
    pub title: String,
    /// The router's curve as its quality bar goes from 0 to 1: (cost, quality).
    pub router: Vec<(f64, f64)>,
    /// The oracle's curve over the same bars.
    pub oracle: Vec<(f64, f64)>,
    /// Every single model: (name, cost, quality).
    pub single: Vec<(String, f64, f64)>,
    pub strong: String,
    pub cheap: String,
    /// The router's reported operating point.
    pub operating_point: (f64, f64),
}

const ROUTER: RGBColor = RGBColor(214, 39, 40);
const ORACLE: RGBColor = RGBColor(44, 160, 44);
const RANDOM: RGBColor = RGBColor(127, 127, 127);
const MODEL: RGBColor = RGBColor(31, 119, 180);

/// Registers the embedded font (the `dejavu` crate), so no system font is needed.
fn register_font() -> Result<(), Box<dyn std::error::Error>> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the embedded DejaVu Sans font did not load")?;
    Ok(())
}

/// Draws `fig` to a 1200×760 PNG at `path`, cost on a log axis.
pub fn draw(path: &Path, fig: &Figure) -> Result<(), Box<dyn std::error::Error>> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 760)).into_drawing_area();
    root.fill(&WHITE)?;

    let costs = fig.router.iter().chain(&fig.oracle).map(|p| p.0).chain(fig.single.iter().map(|s| s.1));
    let (mut lo, mut hi) = costs.fold((f64::INFINITY, 0.0f64), |(lo, hi), c| (lo.min(c), hi.max(c)));
    lo = (lo * 0.7).max(1e-9);
    // Room on the right for the names of the most expensive models.
    hi = (hi * 2.5).max(lo * 10.0);
    let qualities = fig.router.iter().chain(&fig.oracle).map(|p| p.1).chain(fig.single.iter().map(|s| s.2));
    let (qlo, qhi) = qualities.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), q| (a.min(q), b.max(q)));
    let (qlo, qhi) = ((qlo - 0.05).max(0.0), (qhi + 0.05).min(1.0));

    let mut chart = ChartBuilder::on(&root)
        .caption(&fig.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((lo..hi).log_scale(), qlo..qhi)?;
    chart
        .configure_mesh()
        .x_desc("total cost of the test split, USD (log scale)")
        .y_desc("mean quality")
        .x_labels(12)
        .x_label_formatter(&|c| format_usd(*c))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;

    // Random routing between the cheap and the strong model: a straight mix of the two.
    let end = |name: &str| fig.single.iter().find(|s| s.0 == name).map(|s| (s.1, s.2));
    if let (Some(a), Some(b)) = (end(&fig.cheap), end(&fig.strong)) {
        let mix = (0..=50).map(|i| {
            let t = i as f64 / 50.0;
            (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
        });
        chart
            .draw_series(LineSeries::new(mix, RANDOM.stroke_width(2)))?
            .label(format!("random mix of {} and {}", fig.cheap, fig.strong))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RANDOM.stroke_width(2)));
    }
    let mut oracle = fig.oracle.clone();
    oracle.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(mixes(&oracle), ORACLE.stroke_width(2)))?
        .label("oracle (knows the test scores)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORACLE.stroke_width(2)));
    // The router's curve in the order of its quality bar: each bar is one operating point.
    chart
        .draw_series(LineSeries::new(fig.router.iter().copied(), ROUTER.stroke_width(3)))?
        .label("semroute (its knob swept)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ROUTER.stroke_width(3)));
    chart.draw_series(fig.router.iter().map(|&p| Circle::new(p, 2, ROUTER.filled())))?;
    chart
        .draw_series(fig.single.iter().map(|s| Circle::new((s.1, s.2), 4, MODEL.filled())))?
        .label("single models")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, MODEL.filled()));
    // Name the reference models (and every model when there are few).
    let named = fig.single.iter().filter(|s| fig.single.len() <= 6 || s.0 == fig.strong || s.0 == fig.cheap);
    chart.draw_series(
        named.map(|s| EmptyElement::at((s.1, s.2)) + Text::new(s.0.clone(), (6, 4), ("sans-serif", 14).into_font().color(&MODEL))),
    )?;
    chart.draw_series(std::iter::once(Cross::new(fig.operating_point, 8, ROUTER.stroke_width(3))))?;
    chart.draw_series(std::iter::once(
        EmptyElement::at(fig.operating_point)
            + Text::new("router at the 95% target", (12, 6), ("sans-serif", 14).into_font().color(&ROUTER)),
    ))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The straight mixes between successive operating points (reachable by routing a share of the
/// prompts one way and the rest the other), sampled densely so they draw right on a log axis.
fn mixes(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for w in points.windows(2) {
        out.extend((0..20).map(|i| {
            let t = i as f64 / 20.0;
            (w[0].0 + t * (w[1].0 - w[0].0), w[0].1 + t * (w[1].1 - w[0].1))
        }));
    }
    out.extend(points.last().copied());
    out
}

fn format_usd(c: f64) -> String {
    if c >= 1.0 {
        format!("${c:.0}")
    } else if c >= 0.01 {
        format!("${c:.2}")
    } else {
        format!("${c:.4}")
    }
}

/// Draws cumulative costs, one line per `(name, USD after each step)`, to a 1200×700 PNG.
pub fn draw_cumulative(path: &Path, title: &str, lines: &[(String, Vec<f64>)]) -> Result<(), Box<dyn std::error::Error>> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let steps = lines.iter().map(|l| l.1.len()).max().unwrap_or(1).max(1);
    let top = lines.iter().filter_map(|l| l.1.last().copied()).fold(0.0f64, f64::max).max(1e-6) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0..steps, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("steps routed (sessions one after another)")
        .y_desc("cumulative cost, USD")
        .y_label_formatter(&|c| format_usd(*c))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()?;
    let colours = [RANDOM, MODEL, ROUTER];
    for (i, (name, costs)) in lines.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(costs.iter().enumerate().map(|(x, y)| (x + 1, *y)), colour.stroke_width(3)))?
            .label(format!("{name}: {}", format_usd(costs.last().copied().unwrap_or(0.0))))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 17))
        .draw()?;
    root.present()?;
    Ok(())
}
