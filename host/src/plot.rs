//! What every plot of `edgeloop` shares.

/// Registers the bundled font (DejaVu Sans) as `sans-serif`, so plots look
/// the same on machines without fonts. Idempotent.
pub fn register_font() -> Result<(), String> {
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        include_bytes!("../assets/DejaVuSans.ttf"),
    )
    .map_err(|_| "invalid bundled font".to_string())
}
