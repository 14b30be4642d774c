//! Plain text for a terminal: underlined headings, columns padded to line up, charts as listings;
//! no markup and no colour, so it reads the same in a pipe or a log. Control characters are
//! escaped ([`for_terminal`]): a report quotes names and ids from the spool.

use crate::chart::listing;
use crate::document::{Align, Document, Figure, InText, LineFormat, ListItem, Table, Text};
use crate::escape::{for_terminal, lines_for_terminal};

/// The document as plain text.
pub fn render(doc: &Document) -> String {
    let title = underlined(&one_line(&doc.title), '=');
    // Cells are escaped before columns are measured; every line is escaped once more on the way
    // out, which catches what no block escaped (escaping escaped text changes nothing).
    lines_for_terminal(&LineFormat(heading, Text::to_plain, list, table, figure).render(title, doc))
}

fn one_line(s: &str) -> String {
    for_terminal(&s.replace("\r\n", " ").replace(['\n', '\r'], " ")).into_owned()
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn underlined(s: &str, with: char) -> String {
    format!("{s}\n{}\n", with.to_string().repeat(width(s)))
}

fn heading(level: u8, text: &Text) -> String {
    let text = one_line(&text.to_plain());
    match level {
        0..=2 => underlined(&text, '-'),
        3 => underlined(&text, '~'),
        _ => format!("{text}\n"),
    }
}

/// Items with keys have their values lined up after the longest key of their level.
fn list(out: &mut String, items: &[ListItem], depth: usize) {
    let indent = "  ".repeat(depth);
    let key_w = items
        .iter()
        .filter_map(|i| i.key.as_deref().map(|k| width(&one_line(k)) + 1))
        .max()
        .unwrap_or(0);
    for item in items {
        let key = match &item.key {
            Some(k) => format!("{:<key_w$} ", format!("{}:", one_line(k))),
            None => String::new(),
        };
        let text = item.text.to_plain().replace('\n', &format!("\n{indent}  "));
        out.push_str(&format!("{indent}- {key}{text}\n"));
        list(out, &item.children, depth + 1);
    }
}

fn pad(s: &str, w: usize, align: Align) -> String {
    match align {
        Align::Left => format!("{s:<w$}"),
        Align::Right => format!("{s:>w$}"),
        Align::Center => format!("{s:^w$}"),
    }
}

fn table(t: &Table) -> String {
    let cell = |text: &Text| one_line(&text.to_plain());
    let header: Vec<String> = t.columns.iter().map(|c| cell(&c.header)).collect();
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| t.padded(r).iter().map(|c| cell(&c.text)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).fold(header.len(), usize::max);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .filter_map(|r| r.get(i).map(|c| width(c)))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let align = |i: usize| t.columns.get(i).map(|c| c.align).unwrap_or_default();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| pad(c, widths[i], align(i)))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("{}\n", rule.join("  ")));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

fn figure(f: &Figure) -> Option<String> {
    if f.in_text == InText::Omit {
        return None;
    }
    let mut out = String::new();
    if let Some(caption) = f.caption.as_ref().filter(|c| !c.is_empty()) {
        out.push_str(&format!("{}:\n\n", caption.to_plain()));
    }
    for line in listing(&f.chart) {
        out.push_str(&format!("  {line}\n"));
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chart::{Waterfall, WaterfallRow};
    use crate::document::{Cell, Column};

    #[test]
    fn headings_underline_and_markup_disappears() {
        let mut doc = Document::new("Report");
        doc.heading(2, Text::new().plain("Runtime ").code("runc"))
            .paragraph(
                Text::new()
                    .strong("5 spans dropped")
                    .plain(" by the shims."),
            )
            .heading(3, "Phases")
            .list([
                ListItem::keyed("Host kernel", "6.1"),
                ListItem::keyed("CPU", "x86\nmore"),
                ListItem::new("no key"),
            ]);
        assert_eq!(
            render(&doc),
            "Report\n======\n\nRuntime runc\n------------\n\n5 spans dropped by the shims.\n\n\
             Phases\n~~~~~~\n\n- Host kernel: 6.1\n- CPU:         x86\n  more\n- no key\n"
        );
    }

    #[test]
    fn table_columns_line_up_by_alignment_and_cells_stay_on_one_line() {
        let mut t = Table::new([
            Column::left("phase"),
            Column::right("p50"),
            Column::center("c"),
        ]);
        t.row([
            Cell::new("Create | <x>"),
            Cell::new("46.760 ms"),
            Cell::new("y"),
        ]);
        t.row([Cell::new("a\nb"), Cell::new("4 ms")]);
        let mut doc = Document::new("T");
        doc.push(t);
        assert_eq!(
            render(&doc),
            "T\n=\n\nphase               p50  c\n------------  ---------  -\n\
             Create | <x>  46.760 ms  y\na b                4 ms\n"
        );
    }

    /// Every place a report puts names and ids from the spool.
    pub(crate) fn hostile_document() -> Document {
        let mut doc = Document::new("R\u{1b}]0;title\u{7}");
        doc.heading(2, Text::new().plain("Runtime ").code("runc\u{1b}[2J"))
            .paragraph("container c\u{9b}31m")
            .list([ListItem::keyed("k\u{1b}", "v\u{7f}")]);
        let mut t = Table::new([Column::left("runtime"), Column::right("n")]);
        t.row([Cell::new("runc\u{202e}x"), Cell::new("1")]);
        t.row([Cell::new("crun"), Cell::new("22")]);
        doc.push(t);
        doc.push(crate::Figure::listed(
            Waterfall {
                title: "w".into(),
                rows: vec![WaterfallRow {
                    label: "shim.start\u{1b}[8m".into(),
                    depth: 0,
                    start: 0.0,
                    length: 8.0,
                }],
                markers: vec![],
                format: |v| format!("{v:.3} ms"),
            },
            Text::new()
                .plain("Median start: container ")
                .code("box\u{1b}c"),
        ));
        doc
    }

    #[test]
    fn control_characters_are_escaped_and_columns_still_line_up() {
        let text = render(&hostile_document());
        assert!(
            !text
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{text:?}"
        );
        for escaped in [
            "R\\u{1b}]0;title\\u{7}",
            "Runtime runc\\u{1b}[2J",
            "container c\\u{9b}31m",
            "- k\\u{1b}: v\\u{7f}",
            "box\\u{1b}c",
            "shim.start\\u{1b}[8m",
        ] {
            assert!(text.contains(escaped), "{escaped} in {text}");
        }
        // The escaped cell is measured as printed.
        assert!(
            text.contains("runc\\u{202e}x   1\ncrun           22\n"),
            "{text}"
        );
    }

    #[test]
    fn listed_figures_are_indented_under_their_caption() {
        let mut doc = Document::new("W");
        doc.push(crate::Figure::listed(
            Waterfall {
                title: "w".into(),
                rows: vec![WaterfallRow {
                    label: "shim.start".into(),
                    depth: 0,
                    start: 0.0,
                    length: 8.0,
                }],
                markers: vec![],
                format: |v| format!("{v:.3} ms"),
            },
            Text::new().plain("Median start: container ").code("box"),
        ));
        assert_eq!(
            render(&doc),
            "W\n=\n\nMedian start: container box:\n\n     +0.000 ms     8.000 ms  shim.start\n"
        );
    }
}
