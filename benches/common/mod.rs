//! Shared by the criterion benchmarks.

use criterion::Criterion;

/// Criterion with the embedded DejaVu font registered: plotters is built with `ab_glyph` for the
/// savings plots, so criterion's charts need a registered font too.
pub fn config() -> Criterion {
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, dejavu::sans::regular())
        .unwrap_or_else(|_| panic!("the embedded DejaVu font did not load"));
    Criterion::default()
}
