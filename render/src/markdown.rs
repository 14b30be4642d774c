//! Markdown (GitHub flavoured): blocks one blank line apart, tables as pipe tables.
//!
//! Plain text is written as given, so a report reads the same raw as rendered; what would break the
//! structure is made safe: a `|` in a table cell is escaped, line breaks inside a cell or heading
//! become spaces, a list item's further lines are indented under it, and code spans and listings
//! take fences longer than any backtick run they hold. Control characters are escaped as on a
//! terminal ([`crate::for_terminal`]), where Markdown is read as often as rendered.

use crate::chart::listing;
use crate::document::{Align, Document, Figure, InText, LineFormat, ListItem, Span, Table, Text};

/// The document as Markdown.
pub fn render(doc: &Document) -> String {
    let markdown = LineFormat(heading, inline, list, table, figure)
        .render(format!("# {}\n", one_line(&doc.title)), doc);
    crate::escape::lines_for_terminal(&markdown)
}

fn heading(level: u8, text: &Text) -> String {
    format!(
        "{} {}\n",
        "#".repeat(usize::from(level.clamp(1, 6))),
        one_line(&inline(text))
    )
}

/// Inline text with its code spans and emphasis marked up.
pub(crate) fn inline(text: &Text) -> String {
    text.0
        .iter()
        .map(|span| match span {
            Span::Plain(s) => s.clone(),
            Span::Code(s) => code_span(s),
            Span::Strong(s) => format!("**{s}**"),
        })
        .collect()
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

fn code_span(s: &str) -> String {
    let fence = "`".repeat(longest_backtick_run(s) + 1);
    // CommonMark strips one space from each side of a code span that has both, so a span that
    // starts or ends with a backtick or has spaces on both sides gets a space of padding.
    let pad = s.starts_with('`')
        || s.ends_with('`')
        || s.is_empty()
        || (s.starts_with(' ') && s.ends_with(' ') && !s.trim().is_empty());
    if pad {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

fn one_line(s: &str) -> String {
    s.replace("\r\n", " ").replace(['\n', '\r'], " ")
}

fn list(out: &mut String, items: &[ListItem], depth: usize) {
    let indent = "  ".repeat(depth);
    let continuation = format!("\n{indent}  ");
    for item in items {
        let key = item
            .key
            .as_ref()
            .map(|k| format!("{}: ", one_line(k)))
            .unwrap_or_default();
        let text = inline(&item.text).replace('\n', &continuation);
        out.push_str(&format!("{indent}- {key}{text}\n"));
        list(out, &item.children, depth + 1);
    }
}

fn cell(text: &Text) -> String {
    one_line(&inline(text)).replace('|', "\\|")
}

fn table(t: &Table) -> String {
    let row = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = row(t.columns.iter().map(|c| cell(&c.header)).collect());
    out.push('|');
    for c in &t.columns {
        out.push_str(match c.align {
            Align::Left => "---|",
            Align::Right => "---:|",
            Align::Center => ":---:|",
        });
    }
    out.push('\n');
    for cells in &t.rows {
        out.push_str(&row(t
            .padded(cells)
            .iter()
            .map(|c| cell(&c.text))
            .collect()));
    }
    out
}

fn figure(f: &Figure) -> Option<String> {
    if f.in_text == InText::Omit {
        return None;
    }
    let lines = listing(&f.chart);
    let fence = "`".repeat(
        lines
            .iter()
            .map(|l| longest_backtick_run(l) + 1)
            .max()
            .unwrap_or(0)
            .max(3),
    );
    let mut out = String::new();
    if let Some(caption) = f.caption.as_ref().filter(|c| !c.is_empty()) {
        out.push_str(&format!("{}:\n\n", inline(caption)));
    }
    out.push_str(&fence);
    out.push('\n');
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&fence);
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart::{Waterfall, WaterfallRow};
    use crate::document::{Cell, Column, Figure, Tone};

    fn ms(v: f64) -> String {
        format!("{v:.3} ms")
    }

    #[test]
    fn control_characters_are_escaped() {
        let md = render(&crate::text::tests::hostile_document());
        assert!(
            !md.chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{md:?}"
        );
        assert!(md.contains("# R\\u{1b}]0;title\\u{7}\n"), "{md}");
        assert!(md.contains("`runc\\u{1b}[2J`"), "{md}");
        assert!(md.contains("shim.start\\u{1b}[8m"), "{md}");
    }

    #[test]
    fn blocks_are_one_blank_line_apart() {
        let mut doc = Document::new("Report");
        doc.paragraph(
            Text::new()
                .plain("3 traces, ")
                .strong("1 dropped")
                .plain("."),
        )
        .heading(2, Text::new().plain("Runtime ").code("runc"))
        .paragraph("")
        .note("see `report.json`")
        .list([
            ListItem::keyed("Host kernel", "6.1"),
            ListItem::new(Text::with_code_spans("image `busybox`"))
                .with_children([ListItem::new("a note")]),
        ]);
        assert_eq!(
            render(&doc),
            "# Report\n\n3 traces, **1 dropped**.\n\n## Runtime `runc`\n\nsee `report.json`\n\n\
             - Host kernel: 6.1\n- image `busybox`\n  - a note\n"
        );
    }

    #[test]
    fn table_cells_with_pipes_angles_and_newlines_stay_in_their_cell() {
        let mut t = Table::new([Column::left("a|b"), Column::right("n"), Column::center("c")]);
        t.row([
            Cell::new("x | y"),
            Cell::new("<b>\nnext"),
            Cell::toned(Text::new().code("p|q"), Tone::Good),
        ]);
        t.row(["short"]);
        let mut doc = Document::new("T");
        doc.push(t);
        assert_eq!(
            render(&doc),
            "# T\n\n| a\\|b | n | c |\n|---|---:|:---:|\n| x \\| y | <b> next | `p\\|q` |\n\
             | short |  |  |\n"
        );
    }

    #[test]
    fn code_spans_and_listings_fence_around_backticks() {
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("`x"), "`` `x ``");
        assert_eq!(code_span(" x "), "`  x  `");
        let mut doc = Document::new("W");
        doc.push(Figure::listed(
            Waterfall {
                title: "w".into(),
                rows: vec![WaterfallRow {
                    label: "a```b".into(),
                    depth: 1,
                    start: 1.0,
                    length: 2.0,
                }],
                markers: vec![],
                format: ms,
            },
            Text::new().plain("Median ").code("box"),
        ));
        doc.push(Figure::drawn_only(
            Waterfall {
                title: "hidden".into(),
                rows: vec![],
                markers: vec![],
                format: ms,
            },
            "not in Markdown",
        ));
        assert_eq!(
            render(&doc),
            "# W\n\nMedian `box`:\n\n````\n   +1.000 ms     2.000 ms    a```b\n````\n"
        );
    }

    #[test]
    fn multi_line_text_stays_in_its_list_item_and_heading() {
        let mut doc = Document::new("two\nlines");
        doc.list(["first\nsecond"]).heading(3, "a\nb");
        assert_eq!(
            render(&doc),
            "# two lines\n\n- first\n  second\n\n### a b\n"
        );
    }
}
