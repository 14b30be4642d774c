//! Charts: the model, and the listing the text formats write in a chart's place.
//!
//! Values are plain numbers in whatever unit the caller measures; each chart carries the function
//! that writes a value for a reader (`12.345 ms`), so the renderers never guess units.

/// Bar colours (Tableau 10): by nesting depth in a waterfall, by series in a bar chart.
pub const PALETTE: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// Writes a value for a reader, unit included.
pub type Format = fn(f64) -> String;

/// A chart.
#[derive(Debug, Clone)]
pub enum Chart {
    Waterfall(Waterfall),
    Histogram(Histogram),
    Bars(Bars),
}

/// Spans on a timeline, one row each, indented by depth, with optional vertical markers.
#[derive(Debug, Clone)]
pub struct Waterfall {
    /// The chart's accessible name.
    pub title: String,
    pub rows: Vec<WaterfallRow>,
    pub markers: Vec<Marker>,
    pub format: Format,
}

/// One span of a waterfall: it starts `start` after the timeline's origin and lasts `length`.
#[derive(Debug, Clone)]
pub struct WaterfallRow {
    pub label: String,
    pub depth: usize,
    pub start: f64,
    pub length: f64,
}

/// A labelled instant on a waterfall's timeline.
#[derive(Debug, Clone)]
pub struct Marker {
    pub label: String,
    pub at: f64,
}

/// Counts per value bin.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub title: String,
    pub bins: Vec<Bin>,
    /// Index into [`PALETTE`].
    pub color: usize,
    pub format: Format,
}

/// A histogram bin `[lo, hi)`.
#[derive(Debug, Clone)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
}

/// Horizontal grouped bars: one group per row, one bar per series (a p50 and a p99, say).
#[derive(Debug, Clone)]
pub struct Bars {
    pub title: String,
    pub series: Vec<String>,
    pub rows: Vec<BarRow>,
    pub format: Format,
}

/// A group of bars; a value that is not finite is "no value" (no bar, `n/a`).
#[derive(Debug, Clone)]
pub struct BarRow {
    pub label: String,
    pub values: Vec<f64>,
}

impl From<Waterfall> for Chart {
    fn from(w: Waterfall) -> Chart {
        Chart::Waterfall(w)
    }
}

impl From<Histogram> for Chart {
    fn from(h: Histogram) -> Chart {
        Chart::Histogram(h)
    }
}

impl From<Bars> for Chart {
    fn from(b: Bars) -> Chart {
        Chart::Bars(b)
    }
}

impl Waterfall {
    /// The end of the timeline: the last row's end or marker, at least a tiny positive width.
    pub(crate) fn end(&self) -> f64 {
        self.rows
            .iter()
            .map(|r| r.start + r.length)
            .chain(self.markers.iter().map(|m| m.at))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE)
    }
}

/// Width of a listing's bars, in characters.
const LISTING_BAR: f64 = 30.0;

fn bar(value: f64, max: f64) -> String {
    if !(value.is_finite() && max > 0.0) {
        return String::new();
    }
    "█".repeat((value / max * LISTING_BAR).round().max(0.0) as usize)
}

/// The chart's numbers as text lines, for formats that cannot draw.
pub(crate) fn listing(chart: &Chart) -> Vec<String> {
    match chart {
        Chart::Waterfall(w) => {
            let fmt = w.format;
            let mut lines: Vec<String> = w
                .rows
                .iter()
                .map(|r| {
                    format!(
                        "{:>12} {:>12}  {}{}",
                        format!("+{}", fmt(r.start)),
                        fmt(r.length),
                        "  ".repeat(r.depth),
                        r.label
                    )
                })
                .collect();
            lines.extend(w.markers.iter().map(|m| {
                format!(
                    "{:>12} {:>12}  | {}",
                    format!("+{}", fmt(m.at)),
                    "",
                    m.label
                )
            }));
            lines
        }
        Chart::Histogram(h) => {
            let max = h.bins.iter().map(|b| b.count).max().unwrap_or(0) as f64;
            h.bins
                .iter()
                .map(|b| {
                    format!(
                        "{:>12} – {:<12} {:>6}  {}",
                        (h.format)(b.lo),
                        (h.format)(b.hi),
                        b.count,
                        bar(b.count as f64, max)
                    )
                    .trim_end()
                    .to_string()
                })
                .collect()
        }
        Chart::Bars(b) => {
            let max = b
                .rows
                .iter()
                .flat_map(|r| r.values.iter().copied())
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            let label_w = b.rows.iter().map(|r| r.label.chars().count()).max();
            let series_w = b.series.iter().map(|s| s.chars().count()).max();
            let (label_w, series_w) = (label_w.unwrap_or(0), series_w.unwrap_or(0));
            let mut lines = Vec::new();
            for row in &b.rows {
                for (i, series) in b.series.iter().enumerate() {
                    let v = row.values.get(i).copied().unwrap_or(f64::NAN);
                    let value = if v.is_finite() {
                        (b.format)(v)
                    } else {
                        "n/a".to_string()
                    };
                    let label = if i == 0 { row.label.as_str() } else { "" };
                    lines.push(
                        format!(
                            "{label:<label_w$}  {series:<series_w$}  {value:>12}  {}",
                            bar(v, max)
                        )
                        .trim_end()
                        .to_string(),
                    );
                }
            }
            lines
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: f64) -> String {
        format!("{v:.1} ms")
    }

    #[test]
    fn waterfall_listing_indents_by_depth_and_lists_markers() {
        let w = Waterfall {
            title: "t".into(),
            rows: vec![
                WaterfallRow {
                    label: "root".into(),
                    depth: 0,
                    start: 0.0,
                    length: 10.0,
                },
                WaterfallRow {
                    label: "child".into(),
                    depth: 1,
                    start: 2.5,
                    length: 5.0,
                },
            ],
            markers: vec![Marker {
                label: "wall".into(),
                at: 12.0,
            }],
            format: ms,
        };
        assert_eq!(w.end(), 12.0);
        assert_eq!(
            listing(&w.into()),
            [
                "     +0.0 ms      10.0 ms  root",
                "     +2.5 ms       5.0 ms    child",
                "    +12.0 ms               | wall",
            ]
        );
    }

    #[test]
    fn histogram_and_bar_listings_scale_bars_to_the_largest_value() {
        let h = Histogram {
            title: "h".into(),
            bins: vec![
                Bin {
                    lo: 0.0,
                    hi: 1.0,
                    count: 2,
                },
                Bin {
                    lo: 1.0,
                    hi: 2.0,
                    count: 0,
                },
            ],
            color: 0,
            format: ms,
        };
        let lines = listing(&h.into());
        assert_eq!(lines[0].matches('█').count(), 30);
        assert!(lines[1].ends_with(" 0"), "{lines:?}");
        let b = Bars {
            title: "b".into(),
            series: vec!["p50".into(), "p99".into()],
            rows: vec![BarRow {
                label: "runc".into(),
                values: vec![1.0, f64::NAN],
            }],
            format: ms,
        };
        let lines = listing(&b.into());
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("runc  p50") && lines[0].ends_with(&"█".repeat(30)));
        assert!(lines[1].starts_with("      p99") && lines[1].ends_with("n/a"));
    }
}
