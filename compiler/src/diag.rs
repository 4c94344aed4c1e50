//! Diagnostics: defined once, with spans attached, rendered in one place.
//!
//! Every stage reports problems as [`Diagnostic`]s: a severity, a stable code, a message, a
//! primary span with a label, optional secondary spans, and hints. [`Diagnostics::render`] turns
//! them into `file:line:col` text with carets through codespan-reporting, in colour for a terminal
//! or plain for tests.

use codespan_reporting::diagnostic as cs;
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;
use std::fmt;

/// A byte range in the source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// The span from byte `start` to byte `end`.
    pub fn new(start: usize, end: usize) -> Span {
        let clamp = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        Span {
            start: clamp(start),
            end: clamp(end.max(start)),
        }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The rule cannot be compiled.
    Error,
    /// The rule compiles, but probably does not do what was meant.
    Warning,
}

/// One problem found in a rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code such as `E0101`, listed in `docs/language.md`.
    pub code: &'static str,
    /// What is wrong, in one line.
    pub message: String,
    /// Where, and a short label.
    pub primary: (Span, String),
    /// Related places.
    pub secondary: Vec<(Span, String)>,
    /// How to fix it.
    pub hints: Vec<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: (span, label.into()),
            secondary: Vec::new(),
            hints: Vec::new(),
        }
    }
    /// A warning at `span`.
    pub fn warning(
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, span, label)
        }
    }
    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
    /// Adds a related place.
    pub fn with(mut self, span: Span, label: impl Into<String>) -> Self {
        self.secondary.push((span, label.into()));
        self
    }
    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The diagnostics of one file, with the file's name and text for rendering.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    file_name: String,
    source: String,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty list for `file_name` with contents `source`.
    pub fn new(file_name: &str, source: &str) -> Self {
        Diagnostics {
            file_name: file_name.to_string(),
            source: source.to_string(),
            items: Vec::new(),
        }
    }
    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }
    /// All of them, in the order found.
    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }
    /// Whether any is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// The file name diagnostics are reported against.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// Renders every diagnostic as `file:line:col` text with carets and hints. With `color`, uses
    /// ANSI colours for a terminal.
    pub fn render(&self, color: bool) -> String {
        let file = SimpleFile::new(self.file_name.as_str(), self.source.as_str());
        let config = term::Config::default();
        let mut out = String::new();
        for d in &self.items {
            let diag = self.to_codespan(d);
            if color {
                let mut buf = term::termcolor::Buffer::ansi();
                if term::emit_to_write_style(&mut buf, &config, &file, &diag).is_ok() {
                    out.push_str(&String::from_utf8_lossy(buf.as_slice()));
                }
            } else if let Ok(text) = term::emit_into_string(&config, &file, &diag) {
                out.push_str(&text);
            }
        }
        out
    }

    fn to_codespan(&self, d: &Diagnostic) -> cs::Diagnostic<()> {
        let len = self.source.len();
        // Spans past the end (an unexpected end of file) point at the last byte.
        let fix = |s: Span| {
            let r = s.range();
            let start = r.start.min(len);
            let end = r.end.min(len).max(start);
            start..end
        };
        let mut labels = vec![cs::Label::primary((), fix(d.primary.0)).with_message(&d.primary.1)];
        for (s, l) in &d.secondary {
            labels.push(cs::Label::secondary((), fix(*s)).with_message(l));
        }
        let base = match d.severity {
            Severity::Error => cs::Diagnostic::error(),
            Severity::Warning => cs::Diagnostic::warning(),
        };
        base.with_code(d.code)
            .with_message(&d.message)
            .with_labels(labels)
            .with_notes(d.hints.iter().map(|h| format!("hint: {h}")).collect())
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diagnostics {}

/// The closest of `candidates` to `name`, if one is close enough to suggest.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, c)| *score > 0.8 && *c != name)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
