//! shimtrace's report renderer. A report is built once as a [`Document`] (headings, paragraphs
//! with code spans and emphasis, key/value lists, aligned tables, charts, notes) and written in
//! any of three formats:
//!
//! - [`Document::to_markdown`]: GitHub-flavoured Markdown, charts as text listings (or left out
//!   where a table beside them carries the numbers);
//! - [`Document::to_html`]: one self-contained page, charts as inline SVG;
//! - [`Document::to_text`]: plain text for a terminal.
//!
//! ```
//! use shimtrace_render::{Column, Document, Table, Text};
//!
//! let mut doc = Document::new("Cold start");
//! doc.heading(2, Text::new().plain("Runtime ").code("runc"));
//! let mut table = Table::new([Column::left("phase"), Column::right("p50")]);
//! table.row(["Create", "46.760 ms"]);
//! doc.push(table);
//! assert!(doc.to_markdown().contains("| Create | 46.760 ms |"));
//! assert!(doc.to_html().contains("<td class=\"r\">46.760 ms</td>"));
//! ```

pub mod chart;
mod document;
mod escape;
pub mod html;
pub mod markdown;
mod svg;
pub mod text;

pub use chart::{BarRow, Bars, Bin, Chart, Histogram, Marker, Waterfall, WaterfallRow, PALETTE};
pub use document::{
    Align, Block, Cell, Column, Document, Figure, InText, ListItem, Span, Table, Text, Tone,
};
pub use escape::for_terminal;
pub use html::esc;

impl Document {
    /// The document as GitHub-flavoured Markdown.
    pub fn to_markdown(&self) -> String {
        markdown::render(self)
    }

    /// The document as one self-contained HTML page.
    pub fn to_html(&self) -> String {
        html::render(self)
    }

    /// The document as plain terminal text.
    pub fn to_text(&self) -> String {
        text::render(self)
    }
}
