//! The bench's headline figures: one value each, with its target and whether it was met, printed
//! as a table and written as JSON.

use serde::{Deserialize, Serialize};

/// What a figure must be to meet its target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    Equals(f64),
}

impl Target {
    pub fn met_by(self, value: f64) -> bool {
        match self {
            Target::AtMost(limit) => value <= limit,
            Target::AtLeast(limit) => value >= limit,
            Target::Equals(expected) => value == expected,
        }
    }

    fn describe(self, unit: &str) -> String {
        let (op, v) = match self {
            Target::AtMost(v) => ("≤", v),
            Target::AtLeast(v) => ("≥", v),
            Target::Equals(v) => ("=", v),
        };
        format!("{op} {}", with_unit(v, unit))
    }
}

/// One measured number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable machine name (see [`FIGURE_KEYS`]).
    pub key: String,
    /// What a reader sees in the table.
    pub label: String,
    pub value: f64,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// `None` when the figure has no target (context for the ones that do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

impl Figure {
    pub fn new(key: &str, label: &str, value: f64, unit: &str, target: Option<Target>) -> Figure {
        Figure {
            key: key.into(),
            label: label.into(),
            value,
            unit: unit.into(),
            target,
            met: target.map(|t| value.is_finite() && t.met_by(value)),
        }
    }
}

/// Every figure a complete run produces, in table order; the smoke test checks each one.
pub const FIGURE_KEYS: &[&str] = &[
    "state_p50_direct_us",
    "state_p50_proxy_us",
    "state_p50_ratio",
    "state_p50_bare_ratio",
    "state_p90_ratio",
    "state_p99_direct_us",
    "state_p99_proxy_us",
    "state_p99_ratio",
    "state_p99_bare_ratio",
    "connect_p50_direct_us",
    "connect_p50_proxy_us",
    "connect_p50_ratio",
    "connect_p50_bare_ratio",
    "connect_p90_ratio",
    "connect_p99_direct_us",
    "connect_p99_proxy_us",
    "connect_p99_ratio",
    "connect_p99_bare_ratio",
    "cold_ctr_median_direct_ms",
    "cold_ctr_median_wrapped_ms",
    "cold_ctr_ratio",
    "cold_ctr_ratio_ci95_low",
    "cold_ctr_ratio_ci95_high",
    "cold_api_median_direct_ms",
    "cold_api_median_wrapped_ms",
    "cold_api_ratio",
    "cold_api_ratio_ci95_low",
    "cold_api_ratio_ci95_high",
    "proxy_rss_after_calls_kib",
    "proxy_rss_after_containers_kib",
    "proxy_rss_growth_kib",
    "group_failures",
    "ingest_spans_per_s",
    "report_s",
    "parallel_failures",
    "parallel_wall_direct_s",
    "parallel_wall_wrapped_s",
    "parallel_ratio",
];

fn with_unit(value: f64, unit: &str) -> String {
    let number = if !value.is_finite() {
        format!("{value}")
    } else if value.abs() >= 10_000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    };
    match unit {
        "" | "×" => format!("{number}{unit}"),
        _ => format!("{number} {unit}"),
    }
}

/// The figures as a plain-text table: figure, value, target, met?
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 4]> = figures
        .iter()
        .map(|f| {
            [
                f.label.clone(),
                with_unit(f.value, &f.unit),
                f.target
                    .map(|t| t.describe(&f.unit))
                    .unwrap_or_else(|| "-".into()),
                match f.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let header = [
        "figure".to_string(),
        "value".into(),
        "target".into(),
        "met?".into(),
    ];
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 4]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header);
    out.push_str(&format!(
        "|{}|\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    ));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_decide_met_and_nan_never_meets() {
        assert_eq!(
            Figure::new("a", "a", 1.5, "×", Some(Target::AtMost(1.5))).met,
            Some(true)
        );
        assert_eq!(
            Figure::new("a", "a", 99.0, "", Some(Target::AtLeast(100.0))).met,
            Some(false)
        );
        assert_eq!(
            Figure::new("a", "a", f64::NAN, "", Some(Target::AtMost(1.0))).met,
            Some(false)
        );
        assert_eq!(
            Figure::new("a", "a", 0.0, "", Some(Target::Equals(0.0))).met,
            Some(true)
        );
        assert_eq!(Figure::new("a", "a", 3.0, "ms", None).met, None);
    }

    #[test]
    fn table_has_a_row_per_figure_with_target_and_verdict() {
        let figures = [
            Figure::new("r", "proxy p50", 1.234, "×", Some(Target::AtMost(1.5))),
            Figure::new(
                "t",
                "ingest",
                123_456.0,
                "spans/s",
                Some(Target::AtLeast(100_000.0)),
            ),
            Figure::new("m", "median", 250.5, "ms", None),
        ];
        let text = table(&figures);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[2].contains("1.234×") && lines[2].contains("≤ 1.500×"));
        assert!(lines[2].contains("| yes"));
        assert!(lines[3].contains("123456 spans/s") && lines[3].contains("≥ 100000 spans/s"));
        assert!(lines[4].contains("250.5 ms") && lines[4].contains("| - "));
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "aligned: {text}");
    }

    #[test]
    fn figures_round_trip_through_json() {
        let f = Figure::new("k", "l", 2.0, "ms", Some(Target::AtMost(3.0)));
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains(r#""target":{"at_most":3.0}"#), "{json}");
        assert_eq!(serde_json::from_str::<Figure>(&json).unwrap(), f);
    }
}
