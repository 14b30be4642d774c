//! HTML: one self-contained page (inline style, charts as inline SVG; no scripts, no external
//! resources), every piece of text escaped.

use std::fmt::Write as _;

use crate::document::{Align, Block, Document, Figure, ListItem, Span, Table, Text, Tone};
pub use crate::escape::esc;
use crate::svg;

const STYLE: &str = "\
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.r { text-align: right; } .c { text-align: center; }
.good { color: #272; } .bad { color: #a33; }
code { background: #f6f6f6; }
figure { margin: 1em 0; } figcaption, .note { font-size: 0.9em; color: #555; }
";

/// The document as a self-contained HTML page.
pub fn render(doc: &Document) -> String {
    let title = esc(&doc.title);
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>\n{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    for b in &doc.blocks {
        block(&mut out, b);
    }
    out.push_str("</body></html>\n");
    out
}

fn block(out: &mut String, b: &Block) {
    match b {
        Block::Heading { level, text } => {
            let level = (*level).clamp(1, 6);
            let _ = writeln!(out, "<h{level}>{}</h{level}>", inline(text));
        }
        Block::Paragraph(text) if !text.is_empty() => {
            let _ = writeln!(out, "<p>{}</p>", inline(text));
        }
        Block::Note(text) if !text.is_empty() => {
            let _ = writeln!(out, "<p class=\"note\">{}</p>", inline(text));
        }
        Block::Paragraph(_) | Block::Note(_) => {}
        Block::List(items) => {
            list(out, items);
            out.push('\n');
        }
        Block::Table(t) => table(out, t),
        Block::Figure(f) => figure(out, f),
    }
}

/// Escaped inline text with its code spans and emphasis as elements.
pub(crate) fn inline(text: &Text) -> String {
    let mut out = String::new();
    for span in &text.0 {
        match span {
            Span::Plain(s) => out.push_str(&esc(s)),
            Span::Code(s) => {
                let _ = write!(out, "<code>{}</code>", esc(s));
            }
            Span::Strong(s) => {
                let _ = write!(out, "<strong>{}</strong>", esc(s));
            }
        }
    }
    out
}

fn list(out: &mut String, items: &[ListItem]) {
    out.push_str("<ul>");
    for item in items {
        out.push_str("<li>");
        if let Some(key) = &item.key {
            let _ = write!(out, "<span class=\"key\">{}:</span> ", esc(key));
        }
        out.push_str(&inline(&item.text));
        if !item.children.is_empty() {
            list(out, &item.children);
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
}

fn class_attr(align: Align, tone: Tone) -> String {
    let classes: Vec<&str> = [
        match align {
            Align::Left => None,
            Align::Right => Some("r"),
            Align::Center => Some("c"),
        },
        match tone {
            Tone::Neutral => None,
            Tone::Good => Some("good"),
            Tone::Bad => Some("bad"),
        },
    ]
    .into_iter()
    .flatten()
    .collect();
    if classes.is_empty() {
        String::new()
    } else {
        format!(" class=\"{}\"", classes.join(" "))
    }
}

fn table(out: &mut String, t: &Table) {
    out.push_str("<table><thead><tr>");
    for c in &t.columns {
        let _ = write!(
            out,
            "<th{}>{}</th>",
            class_attr(c.align, Tone::Neutral),
            inline(&c.header)
        );
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for (i, cell) in t.padded(row).iter().enumerate() {
            let align = t.columns.get(i).map(|c| c.align).unwrap_or_default();
            let _ = write!(
                out,
                "<td{}>{}</td>",
                class_attr(align, cell.tone),
                inline(&cell.text)
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn figure(out: &mut String, f: &Figure) {
    out.push_str("<figure>");
    out.push_str(&svg::chart(&f.chart));
    if let Some(caption) = f.caption.as_ref().filter(|c| !c.is_empty()) {
        let _ = write!(out, "<figcaption>{}</figcaption>", inline(caption));
    }
    out.push_str("</figure>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart::{Histogram, PALETTE};
    use crate::document::{Cell, Column, Figure};

    #[test]
    fn esc_covers_markup_and_both_quotes() {
        assert_eq!(
            esc(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("plain – ü"), "plain – ü");
    }

    #[test]
    fn page_is_self_contained_and_escapes_every_text() {
        let mut doc = Document::new("R&D <report>");
        doc.heading(2, Text::new().plain("Runtime ").code("<runc>"))
            .paragraph(Text::new().plain("a < b, ").strong("5 dropped"))
            .note("see report.json")
            .list([ListItem::keyed("Host <cpu>", "x86").with_children([ListItem::new("n")])]);
        let html = render(&doc);
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</body></html>\n"));
        assert!(html.contains("<title>R&amp;D &lt;report&gt;</title>"));
        assert!(html.contains("<h1>R&amp;D &lt;report&gt;</h1>"));
        assert!(html.contains("<h2>Runtime <code>&lt;runc&gt;</code></h2>"));
        assert!(html.contains("<p>a &lt; b, <strong>5 dropped</strong></p>"));
        assert!(html.contains("<p class=\"note\">see report.json</p>"));
        assert!(html.contains(
            "<ul><li><span class=\"key\">Host &lt;cpu&gt;:</span> x86<ul><li>n</li></ul></li></ul>"
        ));
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<link"));
    }

    #[test]
    fn table_cells_carry_alignment_and_tone_and_escape_odd_characters() {
        let mut t = Table::new([Column::left("a|b"), Column::right("n")]);
        t.row([
            Cell::new("x | <y>\nnext"),
            Cell::toned("4.4.0 (differs)", Tone::Good),
        ]);
        t.row(["short"]);
        let mut doc = Document::new("T");
        doc.push(t);
        let html = render(&doc);
        assert!(
            html.contains("<th>a|b</th><th class=\"r\">n</th>"),
            "{html}"
        );
        assert!(html.contains(
            "<tr><td>x | &lt;y&gt;\nnext</td><td class=\"r good\">4.4.0 (differs)</td></tr>"
        ));
        assert!(html.contains("<tr><td>short</td><td class=\"r\"></td></tr>"));
    }

    #[test]
    fn figures_draw_their_chart_with_a_caption_whatever_the_text_formats_do() {
        let mut doc = Document::new("F");
        doc.push(Figure::drawn_only(
            Histogram {
                title: "h".into(),
                bins: vec![],
                color: 1,
                format: |v| format!("{v}"),
            },
            Text::new().plain("cold start of ").code("box"),
        ));
        let html = render(&doc);
        assert!(html.contains("<figure><svg class=\"histogram\""));
        assert!(
            html.contains("</svg><figcaption>cold start of <code>box</code></figcaption></figure>")
        );
        assert!(!html.contains(PALETTE[1]), "no bins, no bars");
    }
}
