//! Escaping: HTML for the page and its inline SVG charts, control characters for a terminal.

use std::borrow::Cow;

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` safe to print on a terminal: control characters (C0, DEL, C1) and bidirectional
/// overrides are escaped (`\r`, `\n`, `\t`, else `\u{1b}`-style); everything else is unchanged.
/// What spans carry comes from the spool, which whoever can talk to a shim can influence: escaped,
/// it can neither move the cursor, clear the screen or retitle the terminal, nor reorder the line.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            // Every such character escapes as `\t`, `\r`, `\n` or `\u{…}`.
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`for_terminal`] line by line: the line breaks stay.
pub(crate) fn lines_for_terminal(text: &str) -> String {
    text.split('\n')
        .map(for_terminal)
        .collect::<Vec<_>>()
        .join("\n")
}
