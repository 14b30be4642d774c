//! The HTML report renders in headless Chromium (Debian's `chromium`) and its SVG charts are drawn:
//! the screenshot holds the waterfall's and the histograms' bar colours.

use std::path::Path;
use std::process::Command;

use shimtrace_testkit::cli::{self, output_ok};

fn shimtrace(args: &[&str]) {
    output_ok(cli::shimtrace().args(args));
}

fn chromium(profile: &Path, extra: &[&str], page: &Path) -> std::process::Output {
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()));
    output_ok(&mut command)
}

/// Pixels of exactly `rgb` (bar interiors are solid, so anti-aliasing does not matter).
fn count_color(png_path: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|px| px[..3] == rgb)
        .count()
}

#[test]
fn html_report_draws_its_charts_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let walls = dir.path().join("walls.jsonl");
    let html = dir.path().join("report.html");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    shimtrace(&[
        "synth",
        "--spool",
        &s(&spool),
        "--containers",
        "60",
        "--wall-times",
        &s(&walls),
    ]);
    shimtrace(&[
        "report",
        "--spool",
        &s(&spool),
        "--wall-times",
        &s(&walls),
        "--format",
        "html",
        "-o",
        &s(&html),
    ]);
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(
        !text.contains("src=") && !text.contains("<link"),
        "the page must have no external assets"
    );

    // The DOM Chromium built holds the charts with non-zero geometry.
    let dom = chromium(&dir.path().join("profile-dom"), &["--dump-dom"], &html);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg class=\"waterfall\"").count(), 3, "{dom}");
    assert_eq!(dom.matches("<svg class=\"histogram\"").count(), 3);
    let bars = dom.matches("<rect class=\"bar\"").count();
    assert_eq!(bars, 30);
    assert!(!dom.contains("width=\"0.00\""));

    // The screenshot shows them: root-span bars (#4e79a7) and two runtimes' histogram bins
    // (#59a14f, #e15759), colours used nowhere else on the page.
    let shot = dir.path().join("shot.png");
    chromium(
        &dir.path().join("profile-shot"),
        &[
            "--window-size=1100,5200",
            &format!("--screenshot={}", shot.display()),
        ],
        &html,
    );
    let root_bars = count_color(&shot, [0x4e, 0x79, 0xa7]);
    let crun_bins = count_color(&shot, [0x59, 0xa1, 0x4f]);
    let runsc_bins = count_color(&shot, [0xe1, 0x57, 0x59]);
    assert!(
        root_bars > 3 * 200,
        "waterfall root bars not drawn: {root_bars} px"
    );
    assert!(crun_bins > 2000, "histogram not drawn: {crun_bins} px");
    assert!(runsc_bins > 2000, "histogram not drawn: {runsc_bins} px");
}
