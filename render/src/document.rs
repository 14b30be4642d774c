//! The document model: what a report says, independent of the format it is written in.

use crate::chart::Chart;

/// A report: a title and its blocks, in reading order.
#[derive(Debug, Clone, Default)]
pub struct Document {
    /// The top-level heading (and the HTML page's `<title>`).
    pub title: String,
    pub blocks: Vec<Block>,
}

/// One block of a document.
#[derive(Debug, Clone)]
pub enum Block {
    /// A section heading; level 2 and deeper (level 1 is the document's title).
    Heading {
        level: u8,
        text: Text,
    },
    Paragraph(Text),
    /// Secondary text (where raw data lives, why something is missing): a paragraph in Markdown and
    /// plain text, set in smaller, muted type in HTML.
    Note(Text),
    /// A bulleted list; items may carry a key (`Key: value`) and nested items.
    List(Vec<ListItem>),
    Table(Table),
    Figure(Figure),
}

/// Inline text: plain runs, code spans and strong emphasis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Text(pub Vec<Span>);

/// A run of inline text.
#[derive(Debug, Clone, PartialEq)]
pub enum Span {
    /// Written as given; in Markdown, any Markdown characters in it keep their meaning.
    Plain(String),
    Code(String),
    Strong(String),
}

/// A list item: an optional key, its text, and nested items.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListItem {
    pub key: Option<String>,
    pub text: Text,
    pub children: Vec<ListItem>,
}

/// A table: its columns (header and alignment) and rows of cells.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub columns: Vec<Column>,
    /// Rows shorter than `columns` are padded with empty cells.
    pub rows: Vec<Vec<Cell>>,
}

/// A table column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub header: Text,
    pub align: Align,
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Align {
    #[default]
    Left,
    Right,
    Center,
}

/// A table cell.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cell {
    pub text: Text,
    pub tone: Tone,
}

/// A judgement a cell carries beyond its text (HTML colours it; the text must say it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    #[default]
    Neutral,
    Good,
    Bad,
}

/// A chart with an optional caption.
#[derive(Debug, Clone)]
pub struct Figure {
    pub chart: Chart,
    pub caption: Option<Text>,
    pub in_text: InText,
}

/// What the text formats (Markdown, terminal), which cannot draw, do with a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InText {
    /// The caption, then the chart's numbers as a preformatted listing.
    Listing,
    /// Nothing: a table beside the figure already carries its numbers.
    Omit,
}

impl Document {
    pub fn new(title: impl Into<String>) -> Document {
        Document {
            title: title.into(),
            blocks: Vec::new(),
        }
    }

    pub fn push(&mut self, block: impl Into<Block>) -> &mut Document {
        self.blocks.push(block.into());
        self
    }

    pub fn extend(&mut self, blocks: impl IntoIterator<Item = Block>) -> &mut Document {
        self.blocks.extend(blocks);
        self
    }

    /// Appends a heading of `level` (2 for a section, 3 for a subsection, …).
    pub fn heading(&mut self, level: u8, text: impl Into<Text>) -> &mut Document {
        self.push(Block::Heading {
            level,
            text: text.into(),
        })
    }

    pub fn paragraph(&mut self, text: impl Into<Text>) -> &mut Document {
        self.push(Block::Paragraph(text.into()))
    }

    pub fn note(&mut self, text: impl Into<Text>) -> &mut Document {
        self.push(Block::Note(text.into()))
    }

    /// Appends a list; an empty one adds nothing.
    pub fn list(&mut self, items: impl IntoIterator<Item = impl Into<ListItem>>) -> &mut Document {
        let items: Vec<ListItem> = items.into_iter().map(Into::into).collect();
        if !items.is_empty() {
            self.push(Block::List(items));
        }
        self
    }
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Text from a string whose backtick-quoted parts are code (`` run `ctr` `` → "run " + code
    /// "ctr"); an unpaired backtick stays plain.
    pub fn with_code_spans(s: &str) -> Text {
        let mut text = Text::new();
        let mut rest = s;
        while let Some(open) = rest.find('`') {
            let Some(len) = rest[open + 1..].find('`') else {
                break;
            };
            text = text
                .plain(&rest[..open])
                .code(&rest[open + 1..open + 1 + len]);
            rest = &rest[open + 1 + len + 1..];
        }
        text.plain(rest)
    }

    pub fn plain(mut self, s: impl Into<String>) -> Text {
        let s = s.into();
        if !s.is_empty() {
            self.0.push(Span::Plain(s));
        }
        self
    }

    pub fn code(mut self, s: impl Into<String>) -> Text {
        self.0.push(Span::Code(s.into()));
        self
    }

    pub fn strong(mut self, s: impl Into<String>) -> Text {
        self.0.push(Span::Strong(s.into()));
        self
    }

    /// Appends another text's spans.
    pub fn then(mut self, other: impl Into<Text>) -> Text {
        self.0.extend(other.into().0);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|s| match s {
            Span::Plain(t) | Span::Strong(t) => t.is_empty(),
            Span::Code(_) => false,
        })
    }

    /// The text without markup (code and emphasis as their words).
    pub fn to_plain(&self) -> String {
        self.0
            .iter()
            .map(|s| match s {
                Span::Plain(t) | Span::Code(t) | Span::Strong(t) => t.as_str(),
            })
            .collect()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::new().plain(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::new().plain(s)
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text::new().plain(s.as_str())
    }
}

impl ListItem {
    pub fn new(text: impl Into<Text>) -> ListItem {
        ListItem {
            key: None,
            text: text.into(),
            children: Vec::new(),
        }
    }

    /// A `key: value` item.
    pub fn keyed(key: impl Into<String>, value: impl Into<Text>) -> ListItem {
        ListItem {
            key: Some(key.into()),
            ..ListItem::new(value)
        }
    }

    pub fn with_children(mut self, children: impl IntoIterator<Item = ListItem>) -> ListItem {
        self.children.extend(children);
        self
    }
}

impl<T: Into<Text>> From<T> for ListItem {
    fn from(text: T) -> ListItem {
        ListItem::new(text)
    }
}

impl Table {
    pub fn new(columns: impl IntoIterator<Item = Column>) -> Table {
        Table {
            columns: columns.into_iter().collect(),
            rows: Vec::new(),
        }
    }

    /// A table whose first column, `key`, names each row (left-aligned) and whose other columns,
    /// headed `figures`, hold numbers (right-aligned).
    pub fn keyed<'a>(key: &str, figures: impl IntoIterator<Item = &'a str>) -> Table {
        Table::new(std::iter::once(Column::left(key)).chain(figures.into_iter().map(Column::right)))
    }

    pub fn row(&mut self, cells: impl IntoIterator<Item = impl Into<Cell>>) -> &mut Table {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// The cells of `row`, padded with empty cells to the number of columns.
    pub(crate) fn padded(&self, row: &[Cell]) -> Vec<Cell> {
        let mut cells = row.to_vec();
        if cells.len() < self.columns.len() {
            cells.resize(self.columns.len(), Cell::default());
        }
        cells
    }
}

impl Column {
    pub fn left(header: impl Into<Text>) -> Column {
        Column {
            header: header.into(),
            align: Align::Left,
        }
    }

    pub fn right(header: impl Into<Text>) -> Column {
        Column {
            header: header.into(),
            align: Align::Right,
        }
    }

    pub fn center(header: impl Into<Text>) -> Column {
        Column {
            header: header.into(),
            align: Align::Center,
        }
    }
}

impl Cell {
    pub fn new(text: impl Into<Text>) -> Cell {
        Cell {
            text: text.into(),
            tone: Tone::Neutral,
        }
    }

    pub fn toned(text: impl Into<Text>, tone: Tone) -> Cell {
        Cell {
            text: text.into(),
            tone,
        }
    }
}

impl<T: Into<Text>> From<T> for Cell {
    fn from(text: T) -> Cell {
        Cell::new(text)
    }
}

impl Figure {
    /// A figure the text formats write as its caption and a listing of the chart's numbers.
    pub fn listed(chart: impl Into<Chart>, caption: impl Into<Text>) -> Figure {
        Figure {
            chart: chart.into(),
            caption: Some(caption.into()),
            in_text: InText::Listing,
        }
    }

    /// A figure only HTML shows (a table beside it carries the same numbers).
    pub fn drawn_only(chart: impl Into<Chart>, caption: impl Into<Text>) -> Figure {
        Figure {
            chart: chart.into(),
            caption: Some(caption.into()),
            in_text: InText::Omit,
        }
    }
}

impl From<Table> for Block {
    fn from(t: Table) -> Block {
        Block::Table(t)
    }
}

impl From<Figure> for Block {
    fn from(f: Figure) -> Block {
        Block::Figure(f)
    }
}

/// How a line-oriented format (Markdown, plain text) writes each kind of block: headings by level,
/// text, lists from a nesting depth, tables and figures (`None` for a figure it leaves out).
/// Blocks are one blank line apart, the title first.
pub(crate) struct LineFormat(
    pub fn(u8, &Text) -> String,
    pub fn(&Text) -> String,
    pub fn(&mut String, &[ListItem], usize),
    pub fn(&Table) -> String,
    pub fn(&Figure) -> Option<String>,
);

impl LineFormat {
    /// `doc` in this format, under its already formatted `title`.
    pub(crate) fn render(&self, title: String, doc: &Document) -> String {
        let mut blocks = vec![title];
        blocks.extend(doc.blocks.iter().filter_map(|b| self.block(b)));
        blocks.join("\n")
    }

    /// One block, ending in a newline; `None` for an empty paragraph or a figure left out.
    fn block(&self, b: &Block) -> Option<String> {
        let LineFormat(heading, text, list, table, figure) = self;
        match b {
            Block::Heading { level, text } => Some(heading(*level, text)),
            Block::Paragraph(t) | Block::Note(t) => {
                (!t.is_empty()).then(|| format!("{}\n", text(t)))
            }
            Block::List(items) => {
                let mut out = String::new();
                list(&mut out, items, 0);
                Some(out)
            }
            Block::Table(t) => Some(table(t)),
            Block::Figure(f) => figure(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_are_found_between_backtick_pairs() {
        let t = Text::with_code_spans("run `ctr` then `x` and ` alone");
        assert_eq!(
            t.0,
            vec![
                Span::Plain("run ".into()),
                Span::Code("ctr".into()),
                Span::Plain(" then ".into()),
                Span::Code("x".into()),
                Span::Plain(" and ` alone".into()),
            ]
        );
        assert_eq!(t.to_plain(), "run ctr then x and ` alone");
        assert!(Text::with_code_spans("").is_empty());
        assert!(!Text::new().code("").is_empty());
    }

    #[test]
    fn short_rows_are_padded_to_the_columns() {
        let mut t = Table::new([Column::left("a"), Column::right("b")]);
        t.row(["only"]);
        let cells = t.padded(&t.rows[0]);
        assert_eq!(cells.len(), 2);
        assert!(cells[1].text.is_empty());
    }
}
