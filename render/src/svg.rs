//! Charts as inline SVG: fixed-size pictures with tooltips (`<title>`) on every bar, no scripts and
//! no external resources.

use std::fmt::Write as _;

use crate::chart::{Bars, Chart, Histogram, Waterfall, PALETTE};
use crate::escape::esc;

pub(crate) fn chart(c: &Chart) -> String {
    match c {
        Chart::Waterfall(w) => waterfall(w),
        Chart::Histogram(h) => histogram(h),
        Chart::Bars(b) => bars(b),
    }
}

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// One bar per row, indented labels on the left, the duration right of each bar, an axis from 0 to
/// the timeline's end, and markers as dashed vertical lines labelled under the axis.
fn waterfall(w: &Waterfall) -> String {
    let fmt = w.format;
    let (label_w, plot_w, row_h) = (300.0, 560.0, 20.0);
    let axis_y = w.rows.len() as f64 * row_h + 12.0;
    let height = row_h * w.rows.len() as f64 + 30.0 + 14.0 * w.markers.len() as f64;
    let end = w.end();
    let x_of = |v: f64| label_w + v.max(0.0) / end * plot_w;
    let mut svg = format!(
        r#"<svg class="waterfall" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{title}</title>"#,
        width = label_w + plot_w + 110.0,
        title = esc(&w.title)
    );
    for (i, r) in w.rows.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let x = x_of(r.start);
        let width = (r.length.max(0.0) / end * plot_w).max(1.5);
        let _ = write!(
            svg,
            r##"<text x="{tx}" y="{ty}" font-size="12" font-family="monospace">{name}</text><rect class="bar" x="{x:.2}" y="{y:.2}" width="{width:.2}" height="{h}" fill="{fill}"><title>{name}: +{off} {dur}</title></rect><text x="{lx:.2}" y="{ty}" font-size="11" fill="#555">{dur}</text>"##,
            tx = 4.0 + 12.0 * r.depth as f64,
            ty = y + 12.0,
            name = esc(&r.label),
            h = row_h - 6.0,
            fill = color(r.depth),
            off = esc(&fmt(r.start)),
            dur = esc(&fmt(r.length)),
            lx = x + width + 4.0,
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{label_w}" y1="{axis_y}" x2="{x2}" y2="{axis_y}" stroke="#333"/><text x="{label_w}" y="{ty}" font-size="11">0</text><text x="{x2}" y="{ty}" font-size="11" text-anchor="end">{end}</text>"##,
        x2 = label_w + plot_w,
        ty = axis_y + 14.0,
        end = esc(&fmt(end))
    );
    for (i, m) in w.markers.iter().enumerate() {
        let x = x_of(m.at);
        let _ = write!(
            svg,
            r##"<line class="marker" x1="{x:.2}" y1="0" x2="{x:.2}" y2="{axis_y}" stroke="#333" stroke-dasharray="4 2"/><text x="{x:.2}" y="{ty}" font-size="11" text-anchor="middle">{label} {at}</text>"##,
            ty = axis_y + 28.0 + 14.0 * i as f64,
            label = esc(&m.label),
            at = esc(&fmt(m.at)),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One bar per bin, the first bin's lower and the last bin's upper bound under the axis.
fn histogram(hist: &Histogram) -> String {
    let fmt = hist.format;
    let (w, h, pad) = (640.0, 220.0, 30.0);
    let bins = &hist.bins;
    let max = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
    let bar_w = (w - 2.0 * pad) / bins.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{title}</title>"#,
        title = esc(&hist.title)
    );
    for (i, b) in bins.iter().enumerate() {
        let bh = b.count as f64 / max * (h - 2.0 * pad);
        let _ = write!(
            svg,
            r#"<rect class="bin" x="{x:.2}" y="{y:.2}" width="{bw:.2}" height="{bh:.2}" fill="{fill}"><title>{lo} – {hi}: {n}</title></rect>"#,
            x = pad + i as f64 * bar_w,
            y = h - pad - bh,
            bw = (bar_w - 1.0).max(1.0),
            fill = color(hist.color),
            lo = esc(&fmt(b.lo)),
            hi = esc(&fmt(b.hi)),
            n = b.count
        );
    }
    if let (Some(first), Some(last)) = (bins.first(), bins.last()) {
        let _ = write!(
            svg,
            r##"<line x1="{pad}" y1="{ay}" x2="{x2}" y2="{ay}" stroke="#333"/><text x="{pad}" y="{ty}" font-size="11">{lo}</text><text x="{x2}" y="{ty}" font-size="11" text-anchor="end">{hi}</text><text x="{pad}" y="14" font-size="11">max {max} per bin</text>"##,
            ay = h - pad,
            x2 = w - pad,
            ty = h - pad + 16.0,
            lo = esc(&fmt(first.lo)),
            hi = esc(&fmt(last.hi)),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A legend of the series, then per row its label and one bar per series with its value.
fn bars(b: &Bars) -> String {
    let fmt = b.format;
    let max = b
        .rows
        .iter()
        .flat_map(|r| r.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let longest = b.rows.iter().map(|r| r.label.chars().count()).max();
    let left = (longest.unwrap_or(0) as f64 * 7.5 + 12.0).max(90.0);
    let (plot_w, bar_h) = (520.0, 14.0);
    let group_h = b.series.len() as f64 * (bar_h + 2.0) + 12.0;
    let height = 30.0 + b.rows.len() as f64 * group_h;
    let mut svg = format!(
        r#"<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{title}</title>"#,
        width = left + plot_w + 90.0,
        title = esc(&b.title)
    );
    for (i, s) in b.series.iter().enumerate() {
        let x = left + i as f64 * 110.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="6" width="10" height="10" fill="{fill}"/><text x="{tx}" y="15" font-size="12">{name}</text>"#,
            fill = color(i),
            tx = x + 14.0,
            name = esc(s)
        );
    }
    for (r, row) in b.rows.iter().enumerate() {
        let y = 26.0 + r as f64 * group_h;
        let _ = write!(
            svg,
            r#"<text x="0" y="{ty}" font-size="12">{label}</text>"#,
            ty = y + bar_h + 2.0,
            label = esc(&row.label)
        );
        for (i, s) in b.series.iter().enumerate() {
            let v = row.values.get(i).copied().unwrap_or(f64::NAN);
            let yy = y + i as f64 * (bar_h + 2.0);
            let (width, value) = if v.is_finite() {
                (v.max(0.0) / max * plot_w, fmt(v))
            } else {
                (0.0, "n/a".to_string())
            };
            if width > 0.0 {
                let _ = write!(
                    svg,
                    r#"<rect class="value" x="{left}" y="{yy}" width="{width:.2}" height="{bar_h}" fill="{fill}"><title>{label} {series}: {v}</title></rect>"#,
                    fill = color(i),
                    label = esc(&row.label),
                    series = esc(s),
                    v = esc(&value)
                );
            }
            let _ = write!(
                svg,
                r#"<text x="{tx:.2}" y="{ty}" font-size="11">{v}</text>"#,
                tx = left + width + 4.0,
                ty = yy + 11.0,
                v = esc(&value)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart::{BarRow, Bin, Marker, WaterfallRow};

    fn ms(v: f64) -> String {
        format!("{v:.1} ms")
    }

    #[test]
    fn waterfall_bars_are_never_zero_wide_and_escape_their_labels() {
        let svg = chart(
            &Waterfall {
                title: "box <1>".into(),
                rows: vec![
                    WaterfallRow {
                        label: "a&b".into(),
                        depth: 0,
                        start: 0.0,
                        length: 100.0,
                    },
                    WaterfallRow {
                        label: "instant".into(),
                        depth: 2,
                        start: 50.0,
                        length: 0.0,
                    },
                ],
                markers: vec![Marker {
                    label: "wall".into(),
                    at: 120.0,
                }],
                format: ms,
            }
            .into(),
        );
        assert!(svg.starts_with("<svg class=\"waterfall\"") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 2);
        assert!(svg.contains("<title>box &lt;1&gt;</title>") && svg.contains(">a&amp;b<"));
        assert!(svg.contains("width=\"1.50\"") && !svg.contains("width=\"0.00\""));
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[2]));
        // The timeline ends at the marker, so the 100 ms bar spans 100/120 of the plot.
        assert!(svg.contains("width=\"466.67\""), "{svg}");
        assert!(svg.contains("class=\"marker\"") && svg.contains("wall 120.0 ms"));
    }

    #[test]
    fn histogram_bins_scale_to_the_fullest() {
        let svg = chart(
            &Histogram {
                title: "cold start".into(),
                bins: vec![
                    Bin {
                        lo: 0.0,
                        hi: 1.0,
                        count: 4,
                    },
                    Bin {
                        lo: 1.0,
                        hi: 2.0,
                        count: 2,
                    },
                ],
                color: 3,
                format: ms,
            }
            .into(),
        );
        assert_eq!(svg.matches("<rect class=\"bin\"").count(), 2);
        assert!(svg.contains("height=\"160.00\"") && svg.contains("height=\"80.00\""));
        assert_eq!(svg.matches(PALETTE[3]).count(), 2);
        assert!(svg.contains("max 4 per bin") && svg.contains(">2.0 ms<"));
    }

    #[test]
    fn bars_skip_missing_values_and_write_n_a() {
        let svg = chart(
            &Bars {
                title: "latency".into(),
                series: vec!["p50".into(), "p99".into()],
                rows: vec![
                    BarRow {
                        label: "runc".into(),
                        values: vec![1.0, 2.0],
                    },
                    BarRow {
                        label: "<x>".into(),
                        values: vec![f64::NAN],
                    },
                ],
                format: ms,
            }
            .into(),
        );
        assert_eq!(svg.matches("<rect class=\"value\"").count(), 2);
        assert!(svg.contains("width=\"520.00\"") && svg.contains("width=\"260.00\""));
        assert_eq!(svg.matches(">n/a<").count(), 2);
        assert!(svg.contains("&lt;x&gt;") && !svg.contains("<x>"));
    }
}
