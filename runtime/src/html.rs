//! A tiny server-side HTML writer for the status pages: a page with a
//! title, fact cards, section headings, tables and notes, styled by one
//! inline style sheet (no scripts, no external resources).
//!
//! What it guarantees: every piece of text given to it — titles, cells,
//! hints, notes — is HTML-escaped (`&`, `<`, `>`, `"`, `'`), so values that
//! come from the network (sender identities, pod names, error messages)
//! cannot become markup. Tables and pages close their elements when they
//! are finished or dropped, so the document is always well formed. Output
//! goes into a caller-owned `String`.

use std::borrow::Cow;

/// Appends `text` with `&`, `<`, `>`, `"` and `'` escaped.
pub fn push_escaped(out: &mut String, text: &str) {
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escaped = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

/// How a value should read: fine, worth a look, wrong, or unimportant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    /// No judgement.
    #[default]
    Neutral,
    /// As it should be.
    Good,
    /// Worth a look.
    Warn,
    /// Something is wrong.
    Bad,
    /// Unimportant or absent.
    Muted,
}

impl Tone {
    fn class(self) -> Option<&'static str> {
        match self {
            Tone::Neutral => None,
            Tone::Good => Some("good"),
            Tone::Warn => Some("warn"),
            Tone::Bad => Some("bad"),
            Tone::Muted => Some("muted"),
        }
    }
}

/// One value: text, a tone, and an optional hint shown on hover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cell<'a> {
    text: Cow<'a, str>,
    tone: Tone,
    hint: Option<Cow<'a, str>>,
    numeric: bool,
}

impl<'a> Cell<'a> {
    /// A text value.
    pub fn text(text: impl Into<Cow<'a, str>>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// A number, right-aligned in tables.
    pub fn num(text: impl Into<Cow<'a, str>>) -> Self {
        Self {
            text: text.into(),
            numeric: true,
            ..Self::default()
        }
    }

    /// An integer, right-aligned, with thousands separated by thin spaces.
    pub fn count(value: u64) -> Self {
        Self::num(group_thousands(value))
    }

    /// Sets the tone.
    pub fn tone(mut self, tone: Tone) -> Self {
        self.tone = tone;
        self
    }

    /// Sets the hover hint.
    pub fn hint(mut self, hint: impl Into<Cow<'a, str>>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn write(&self, out: &mut String, tag: &str) {
        out.push('<');
        out.push_str(tag);
        let mut classes = Vec::new();
        if self.numeric {
            classes.push("num");
        }
        if let Some(class) = self.tone.class() {
            classes.push(class);
        }
        if !classes.is_empty() {
            out.push_str(" class=\"");
            out.push_str(&classes.join(" "));
            out.push('"');
        }
        if let Some(hint) = &self.hint {
            out.push_str(" title=\"");
            push_escaped(out, hint);
            out.push('"');
        }
        out.push('>');
        push_escaped(out, &self.text);
        out.push_str("</");
        out.push_str(tag);
        out.push('>');
    }
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(text: &'a str) -> Self {
        Cell::text(text)
    }
}

impl From<String> for Cell<'_> {
    fn from(text: String) -> Self {
        Cell::text(text)
    }
}

/// `1234567` → `1 234 567` (thin spaces).
pub fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() * 2);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    out
}

const STYLE: &str = "\
:root{color-scheme:light;--fg:#1d2330;--muted:#6b7385;--line:#e3e6ee;--bg:#f5f6fa;--card:#fff;\
--good:#137a3f;--good-bg:#e3f5ea;--warn:#8a5a00;--warn-bg:#fff1d6;--bad:#a4161a;--bad-bg:#fde2e1}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif}\
header{background:#1f2a44;color:#fff;padding:18px 32px}\
header h1{margin:0;font-size:20px;font-weight:600}\
header p{margin:4px 0 0;color:#c5cbe0}\
main{padding:20px 32px 32px;max-width:1400px}\
h2{font-size:15px;font-weight:600;margin:26px 0 10px;color:#2c3550;text-transform:uppercase;letter-spacing:.04em}\
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:10px;margin:0}\
.fact{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}\
.fact dt{color:var(--muted);font-size:12px;margin-bottom:2px}\
.fact dd{margin:0;font-size:15px;font-weight:500;overflow-wrap:anywhere}\
.fact dd.num{text-align:left}\
table{border-collapse:separate;border-spacing:0;width:100%;background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden}\
th{background:#eef0f6;color:#3a4360;font-size:12px;font-weight:600;text-align:left;padding:8px 12px;border-bottom:1px solid var(--line);white-space:nowrap}\
td{padding:8px 12px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}\
tr:last-child td{border-bottom:none}\
tbody tr:nth-child(even) td{background:#fafbfd}\
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
td.good,td.warn,td.bad,dd.good,dd.warn,dd.bad{font-weight:600}\
td.good,dd.good{color:var(--good)}td.warn,dd.warn{color:var(--warn)}td.bad,dd.bad{color:var(--bad)}\
td.good:not(.num),td.warn:not(.num),td.bad:not(.num){white-space:nowrap}\
.muted{color:var(--muted)}\
.fact dd.good::before,.fact dd.warn::before,.fact dd.bad::before{content:'\\25CF\\00A0';font-size:12px;vertical-align:1px}\
p.note{color:var(--muted);margin:8px 0 0;font-size:13px}\
footer{color:var(--muted);font-size:12px;margin-top:28px}\
a{color:#2456c8}";

/// An HTML page being written into a `String`.
#[derive(Debug)]
pub struct Page<'a> {
    out: &'a mut String,
    closed: bool,
}

impl<'a> Page<'a> {
    /// Starts a page (clearing `out`): the document head, the style sheet,
    /// a header with `title` and `subtitle`. With `refresh_seconds` the
    /// browser reloads the page on its own.
    pub fn begin(
        out: &'a mut String,
        title: &str,
        subtitle: &str,
        refresh_seconds: Option<u32>,
    ) -> Self {
        out.clear();
        out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        if let Some(seconds) = refresh_seconds {
            out.push_str("<meta http-equiv=\"refresh\" content=\"");
            out.push_str(&seconds.to_string());
            out.push_str("\">");
        }
        out.push_str("<title>");
        push_escaped(out, title);
        out.push_str("</title><style>");
        out.push_str(STYLE);
        out.push_str("</style></head>\n<body><header><h1>");
        push_escaped(out, title);
        out.push_str("</h1><p>");
        push_escaped(out, subtitle);
        out.push_str("</p></header>\n<main>");
        Self { out, closed: false }
    }

    /// A section heading.
    pub fn section(&mut self, title: &str) {
        self.out.push_str("\n<h2>");
        push_escaped(self.out, title);
        self.out.push_str("</h2>");
    }

    /// Labelled values shown as cards.
    pub fn facts(&mut self, facts: &[(&str, Cell<'_>)]) {
        self.out.push_str("\n<dl class=\"facts\">");
        for (label, value) in facts {
            self.out.push_str("<div class=\"fact\"><dt>");
            push_escaped(self.out, label);
            self.out.push_str("</dt>");
            value.write(self.out, "dd");
            self.out.push_str("</div>");
        }
        self.out.push_str("</dl>");
    }

    /// A table with these column headings; add rows, then drop or end it.
    pub fn table(&mut self, headings: &[&str]) -> Table<'_> {
        self.out.push_str("\n<table><thead><tr>");
        for heading in headings {
            self.out.push_str("<th>");
            push_escaped(self.out, heading);
            self.out.push_str("</th>");
        }
        self.out.push_str("</tr></thead><tbody>");
        Table {
            out: self.out,
            columns: headings.len(),
        }
    }

    /// A muted paragraph.
    pub fn note(&mut self, text: &str) {
        self.out.push_str("\n<p class=\"note\">");
        push_escaped(self.out, text);
        self.out.push_str("</p>");
    }

    /// A footer line with links (`(href, text)`), separated by ` · `.
    pub fn footer(&mut self, text: &str, links: &[(&str, &str)]) {
        self.out.push_str("\n<footer>");
        push_escaped(self.out, text);
        for (href, label) in links {
            self.out.push_str(" · <a href=\"");
            push_escaped(self.out, href);
            self.out.push_str("\">");
            push_escaped(self.out, label);
            self.out.push_str("</a>");
        }
        self.out.push_str("</footer>");
    }

    /// Closes the page.
    pub fn end(mut self) {
        self.close();
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.out.push_str("\n</main></body></html>\n");
        }
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A table being written; closed when ended or dropped.
#[derive(Debug)]
pub struct Table<'p> {
    out: &'p mut String,
    columns: usize,
}

impl Table<'_> {
    /// A row; missing cells are left empty, extra ones are dropped.
    pub fn row(&mut self, cells: &[Cell<'_>]) {
        self.out.push_str("<tr>");
        for cell in cells.iter().take(self.columns) {
            cell.write(self.out, "td");
        }
        for _ in cells.len()..self.columns {
            self.out.push_str("<td></td>");
        }
        self.out.push_str("</tr>");
    }

    /// A row spanning every column, in muted text (e.g. "no senders yet").
    pub fn empty(&mut self, text: &str) {
        self.out.push_str("<tr><td class=\"muted\" colspan=\"");
        self.out.push_str(&self.columns.to_string());
        self.out.push_str("\">");
        push_escaped(self.out, text);
        self.out.push_str("</td></tr>");
    }

    /// Closes the table.
    pub fn end(self) {}
}

impl Drop for Table<'_> {
    fn drop(&mut self) {
        self.out.push_str("</tbody></table>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere() {
        let mut s = String::new();
        push_escaped(&mut s, "a<b>&\"c\"'d'");
        assert_eq!(s, "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;");
        s.clear();
        push_escaped(&mut s, "plain ünïcode");
        assert_eq!(s, "plain ünïcode");

        let evil = "<script>alert(1)</script>";
        let mut out = String::new();
        let mut page = Page::begin(&mut out, evil, evil, None);
        page.section(evil);
        page.facts(&[(evil, Cell::text(evil).hint("\" onmouseover=\"x"))]);
        {
            let mut table = page.table(&[evil]);
            table.row(&[Cell::text(evil).tone(Tone::Bad)]);
            table.empty(evil);
        }
        page.note(evil);
        page.footer(evil, &[("\"><script>", evil)]);
        page.end();
        assert!(!out.contains("<script>"), "{out}");
        assert!(!out.contains("\" onmouseover"), "{out}");
        assert!(out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn pages_and_tables_are_well_formed_even_when_dropped() {
        let mut out = String::new();
        {
            let mut page = Page::begin(&mut out, "t", "s", Some(10));
            let mut table = page.table(&["a", "b", "c"]);
            table.row(&[Cell::text("1"), Cell::count(1234567).tone(Tone::Good)]);
            table.row(&[Cell::text("x"), "y".into(), "z".into(), "dropped".into()]);
        }
        assert!(out.starts_with("<!DOCTYPE html>"));
        assert!(out.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(out.contains(
            "<tr><td>1</td><td class=\"num good\">1\u{2009}234\u{2009}567</td><td></td></tr>"
        ));
        assert!(!out.contains("dropped"));
        assert!(out.contains("</tbody></table>"));
        assert!(out.ends_with("</main></body></html>\n"));
        assert_eq!(out.matches("<tr>").count(), 3);
        assert_eq!(out.matches("</tr>").count(), 3);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1\u{2009}000");
        assert_eq!(
            group_thousands(u64::MAX),
            "18\u{2009}446\u{2009}744\u{2009}073\u{2009}709\u{2009}551\u{2009}615"
        );
    }
}
