//! Syntax: source text to [`ast::File`].
//!
//! Takes the text of a `.opt` file, gives an AST with a span on every node, or a located
//! diagnostic. pest stays inside this module: the grammar is `grammar/opt.pest`. Nesting deeper
//! than [`MAX_DEPTH`] is refused before parsing, so no input can overflow the stack of the parser
//! or of the later recursive stages.

pub mod ast;

use crate::diag::{Diagnostic, Span};
use ast::*;
use optc_kernel::{BinaryOp, UnaryOp};
use pest::iterators::Pair;
use pest::Parser as _;

mod grammar {
    #![allow(missing_docs)]
    /// The pest parser generated from `grammar/opt.pest`.
    #[derive(pest_derive::Parser)]
    #[grammar = "../../grammar/opt.pest"]
    pub struct OptParser;
}
use grammar::{OptParser, Rule};

/// How deeply brackets, blocks and `?:` may nest.
pub const MAX_DEPTH: usize = 64;

/// How tall one expression's tree may be, operator chains included.
pub const MAX_EXPR_DEPTH: usize = 256;

/// Parses a rule file.
pub fn parse(source: &str) -> Result<File, Diagnostic> {
    check_depth(source)?;
    let mut pairs = OptParser::parse(Rule::file, source).map_err(|e| pest_error(e, source))?;
    let file = pairs.next().ok_or_else(|| internal(source))?;
    build_file(file, source)
}

fn internal(source: &str) -> Diagnostic {
    Diagnostic::error(
        "E0001",
        "internal parser error",
        Span::new(0, source.len().min(1)),
        "here",
    )
}

/// Whether `c` can be part of a name.
fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The text from byte `i` on, past whitespace and `//` comments.
fn next_token(source: &str, mut i: usize) -> &str {
    loop {
        let rest = source.get(i..).unwrap_or("");
        let trimmed = rest.trim_start();
        i += rest.len() - trimmed.len();
        if trimmed.starts_with("//") {
            i += trimmed.find('\n').unwrap_or(trimmed.len());
        } else {
            return trimmed;
        }
    }
}

/// Refuses inputs nested too deeply, pointing at the first bracket past the limit. Brackets,
/// braces and `?` open a level; so does each `else` of an `else if` chain (the chain nests in the
/// AST), until the chain ends at a `}` that no `else` follows.
fn check_depth(source: &str) -> Result<(), Diagnostic> {
    // Open levels: '(', '{', '?', or 'e' for an `else`.
    let mut open: Vec<char> = Vec::new();
    let mut in_comment = false;
    let mut prev = '\0';
    for (i, c) in source.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            prev = c;
            continue;
        }
        let opens = match c {
            '/' if prev == '/' => {
                in_comment = true;
                false
            }
            '(' | '{' | '?' => true,
            'e' if !is_ident_char(prev)
                && source[i..].starts_with("else")
                && !source[i + 4..].starts_with(is_ident_char) =>
            {
                true
            }
            ')' | ':' => {
                open.pop();
                false
            }
            '}' => {
                open.pop();
                if !next_token(source, i + 1).starts_with("else") {
                    while open.last() == Some(&'e') {
                        open.pop();
                    }
                }
                false
            }
            _ => false,
        };
        if opens {
            open.push(c);
            if open.len() > MAX_DEPTH {
                let width = if c == 'e' { 4 } else { 1 };
                let elses = open.iter().filter(|&&x| x == 'e').count();
                return Err(Diagnostic::error(
                    "E0002",
                    format!("nesting deeper than {MAX_DEPTH} levels"),
                    Span::new(i, i + width),
                    "too deep",
                )
                .hint(if elses * 2 > open.len() {
                    "each `else if` nests inside the one before; use fewer branches"
                } else {
                    "split the expression with `let` bindings"
                }));
            }
        }
        prev = c;
    }
    Ok(())
}

/// Punctuation pairs, which the AST builder skips.
fn is_punct(r: Rule) -> bool {
    matches!(r, Rule::assign | Rule::comma | Rule::rparen | Rule::rbrace)
}

fn rule_name(r: &Rule) -> Option<&'static str> {
    Some(match r {
        Rule::EOI => "end of file",
        Rule::header | Rule::kw_optimizer => "`optimizer NAME`",
        Rule::hyper_decl | Rule::kw_hyper => "`hyper`",
        Rule::flag_decl | Rule::kw_flag => "`flag`",
        Rule::state_decl | Rule::kw_state => "`state`",
        Rule::scalar_decl | Rule::kw_scalar => "`scalar`",
        Rule::update | Rule::kw_update => "`update`",
        Rule::block => "`{`",
        Rule::let_stmt | Rule::kw_let => "`let`",
        Rule::if_stmt | Rule::kw_if => "`if`",
        Rule::kw_else => "`else`",
        Rule::repeat_stmt | Rule::kw_repeat => "`repeat`",
        Rule::kw_as | Rule::torch_name => "`as NAME`",
        Rule::state_shape | Rule::shape_name => "`[rows]` or `[cols]`",
        Rule::assign_stmt => "an assignment",
        Rule::expr
        | Rule::logic_or
        | Rule::logic_and
        | Rule::comparison
        | Rule::sum
        | Rule::product
        | Rule::prefixed
        | Rule::power
        | Rule::paren
        | Rule::call => "an expression",
        Rule::number => "a number",
        Rule::ident => "a name",
        Rule::kw_true | Rule::kw_false => "`true` or `false`",
        // `?` continues an expression like any other operator.
        Rule::question => "an operator",
        Rule::colon => "`:`",
        Rule::op_or | Rule::op_and | Rule::op_cmp | Rule::op_add | Rule::op_mul | Rule::op_pow => {
            "an operator"
        }
        Rule::op_prefix => "`-` or `!`",
        Rule::assign => "`=`",
        Rule::comma => "`,`",
        Rule::rparen => "`)`",
        Rule::rbrace => "`}`",
        _ => return None,
    })
}

const KEYWORDS: [&str; 12] = [
    "optimizer",
    "hyper",
    "flag",
    "state",
    "scalar",
    "update",
    "let",
    "if",
    "else",
    "true",
    "false",
    "repeat",
];

/// The innermost `{` or `(` still open at byte `upto`, skipping comments.
fn unclosed(source: &str, upto: usize) -> Option<(usize, char)> {
    let mut open: Vec<(usize, char)> = Vec::new();
    let mut in_comment = false;
    let mut prev = '\0';
    for (i, c) in source.char_indices() {
        if i >= upto {
            break;
        }
        if in_comment {
            in_comment = c != '\n';
        } else {
            match c {
                '/' if prev == '/' => in_comment = true,
                '{' | '(' => open.push((i, c)),
                '}' | ')' => {
                    open.pop();
                }
                _ => {}
            }
        }
        prev = c;
    }
    open.pop()
}

/// The word that ends just before byte `at`, skipping whitespace.
fn word_before(source: &str, at: usize) -> &str {
    let before = source.get(..at).unwrap_or("").trim_end();
    let start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !is_ident_char(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    &before[start..]
}

/// pest reports a declaration or `let` that lacks its `=` at the keyword; this finds the place
/// where the `=` should be.
fn missing_equals(source: &str, start: usize) -> Option<Diagnostic> {
    let rest = source.get(start..)?;
    let kw = ["hyper", "flag", "state", "scalar", "let"]
        .into_iter()
        .find(|k| rest.starts_with(k) && !rest[k.len()..].starts_with(is_ident_char))?;
    let after_kw = &rest[kw.len()..];
    let name_at = after_kw.len() - after_kw.trim_start().len();
    let name_len = after_kw[name_at..]
        .find(|c: char| !is_ident_char(c))
        .unwrap_or(after_kw.len() - name_at);
    let name = &after_kw[name_at..name_at + name_len];
    if name.is_empty() || KEYWORDS.contains(&name) {
        return None;
    }
    let after_name = &after_kw[name_at + name_len..];
    let gap = after_name.len() - after_name.trim_start().len();
    if after_name[gap..].starts_with('=') {
        return None;
    }
    // Right after the name, where the `=` belongs.
    let at = start + kw.len() + name_at + name_len;
    // Not past a line end: the caret stays on the name's line.
    let width = match source[at..].chars().next() {
        Some('\n' | '\r') | None => 0,
        Some(c) => c.len_utf8(),
    };
    Some(
        Diagnostic::error(
            "E0003",
            format!("syntax error: expected `=` after `{kw} {name}`"),
            Span::new(at, at + width),
            "expected `=`",
        )
        .hint(format!("write `{kw} {name} = ...`")),
    )
}

fn pest_error(e: pest::error::Error<Rule>, source: &str) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let start = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((a, _)) => a,
    };
    // One character under the caret (none at the end of the file).
    let width = source
        .get(start..)
        .and_then(|r| r.chars().next())
        .map_or(1, char::len_utf8);
    // The whole word under the caret, or one character.
    let word_len = source.get(start..).map_or(0, |r| {
        r.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .count()
    });
    let span = Span::new(start, start + width.max(word_len));
    let at_eof = source.get(start..).is_none_or(|r| r.trim().is_empty());
    match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(rule_name).collect();
            names.sort();
            names.dedup();
            let expected = match names.len() {
                0 => "something else".to_string(),
                1 => names[0].to_string(),
                _ => {
                    let (last, rest) = names.split_last().unwrap_or((&"", &[]));
                    format!("{} or {}", rest.join(", "), last)
                }
            };
            let open = if at_eof {
                unclosed(source, start)
            } else {
                None
            };
            let (message, label) = match open {
                Some((_, c)) => {
                    let close = if c == '{' { '}' } else { ')' };
                    (
                        format!("syntax error: unexpected end of file inside `{c} ... {close}`"),
                        format!("expected `{close}`"),
                    )
                }
                None if at_eof => (
                    format!("syntax error: unexpected end of file, expected {expected}"),
                    format!("expected {expected}"),
                ),
                None => (
                    format!("syntax error: expected {expected}"),
                    format!("expected {expected}"),
                ),
            };
            if let Some(d) = missing_equals(source, start) {
                return d;
            }
            let mut d = Diagnostic::error("E0003", message, span, label);
            let word: String = source
                .get(start..)
                .unwrap_or("")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let is_keyword = KEYWORDS.contains(&word.as_str());
            let is_decl = ["hyper", "flag", "state", "scalar"].contains(&word.as_str());
            let names_here = ["optimizer", "hyper", "flag", "state", "scalar", "let"];
            let before = word_before(source, start);
            // The word before is on an earlier line: its name is missing, not misspelled.
            let line_break = source
                .get(..start)
                .is_some_and(|b| b.trim_end_matches([' ', '\t']).ends_with('\n'));
            if let Some((at, c)) = open {
                let close = if c == '{' { '}' } else { ')' };
                d = d
                    .with(Span::new(at, at + 1), format!("this `{c}` is never closed"))
                    .hint(format!("add the missing `{close}`"));
            }
            let keyword_expected = positives.iter().any(|r| {
                matches!(
                    r,
                    Rule::header
                        | Rule::hyper_decl
                        | Rule::flag_decl
                        | Rule::state_decl
                        | Rule::scalar_decl
                        | Rule::update
                        | Rule::let_stmt
                        | Rule::if_stmt
                        | Rule::kw_optimizer
                        | Rule::kw_hyper
                        | Rule::kw_flag
                        | Rule::kw_state
                        | Rule::kw_scalar
                        | Rule::kw_update
                        | Rule::kw_let
                        | Rule::kw_if
                        | Rule::kw_else
                )
            });
            if keyword_expected && !is_keyword && !word.is_empty() {
                if let Some(k) = crate::diag::did_you_mean(&word, KEYWORDS) {
                    d = d.hint(format!("did you mean `{k}`?"));
                }
            }
            let rest = source.get(start..).unwrap_or("");
            if positives.as_slice() == [Rule::assign] {
                if rest.starts_with("==") {
                    d = d.hint(format!("`==` compares; assign with `{before} = ...`"));
                } else if let Some(op) = ["+=", "-=", "*=", "/="]
                    .into_iter()
                    .find(|o| rest.starts_with(o))
                {
                    let o = &op[..1];
                    d = d.hint(format!(
                        "there is no `{op}`; write `{before} = {before} {o} ...`"
                    ));
                } else {
                    // `hyper lr 1e-3`: name the declaration in the hint.
                    let trimmed = source.get(..start).unwrap_or("").trim_end();
                    let kw = trimmed
                        .strip_suffix(before)
                        .map(|head| word_before(source, head.len()))
                        .filter(|k| ["hyper", "flag", "state", "scalar", "let"].contains(k));
                    match kw {
                        Some(k) => d = d.hint(format!("write `{k} {before} = ...`")),
                        None => d = d.hint(format!("write `{before} = ...`")),
                    }
                }
            } else if positives.contains(&Rule::ident) && names_here.contains(&before) && line_break
            {
                d = d.hint(format!("`{before}` needs a name after it"));
            } else if positives.contains(&Rule::ident) && is_keyword && names_here.contains(&before)
            {
                d = d.hint(format!("`{word}` is a keyword; pick another name"));
            } else if positives.contains(&Rule::assign_stmt)
                && source
                    .get(start + word.len()..)
                    .is_some_and(|r| r.trim_start().starts_with("=="))
            {
                d = d.hint(format!("`==` compares; assign with `{word} = ...`"));
            } else if let Some(op) = positives
                .contains(&Rule::assign_stmt)
                .then(|| source.get(start + word.len()..).unwrap_or("").trim_start())
                .and_then(|r| {
                    ["+=", "-=", "*=", "/="]
                        .into_iter()
                        .find(|o| r.starts_with(o))
                })
            {
                let o = &op[..1];
                d = d.hint(format!(
                    "there is no `{op}`; write `{word} = {word} {o} ...`"
                ));
            } else if source.get(..start).is_some_and(|b| b.ends_with('*'))
                && source.get(start..).is_some_and(|r| r.starts_with('*'))
            {
                d = d.hint("the power operator is `^`, as in `beta1 ^ t`");
            } else if source
                .get(start..)
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_alphabetic() && !c.is_ascii())
            {
                d = d.hint("names are made of ASCII letters, digits and `_`");
            } else if source
                .get(start..)
                .is_some_and(|r| ["<", ">", "==", "!="].iter().any(|o| r.starts_with(o)))
            {
                d = d.hint("comparisons do not chain: write `a < b && b < c`");
            } else if word == "else" {
                d = d.hint("`else` must follow the `}` of an `if` block");
            } else if positives.contains(&Rule::header) || positives.contains(&Rule::kw_optimizer) {
                d = d.hint("a rule file starts with `optimizer NAME`");
            } else if positives.contains(&Rule::update) || positives.contains(&Rule::kw_update) {
                d = d.hint("declarations (`hyper`, `flag`, `state`, `scalar`) come first, then one `update { ... }` block");
            } else if positives.contains(&Rule::EOI) && is_decl {
                d = d.hint(format!(
                    "declarations come before the `update` block; move this `{word}` above it"
                ));
            } else if positives.contains(&Rule::EOI) {
                d = d.hint("nothing may follow the `update { ... }` block");
            } else if is_decl {
                d = d.hint("declarations come before the `update` block");
            } else if names.contains(&"an expression") {
                d = d.hint("an expression is a number, a name, a call such as `sqrt(v)`, or operators between them");
            }
            d
        }
        ErrorVariant::CustomError { message } => {
            Diagnostic::error("E0003", format!("syntax error: {message}"), span, "here")
        }
    }
}

fn span_of(p: &Pair<'_, Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

/// The `///` lines directly above the line holding byte `offset`, joined with newlines.
fn doc_above(source: &str, offset: usize) -> String {
    let offset = offset.min(source.len());
    let line_start = source[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut lines = Vec::new();
    for line in source[..line_start].lines().rev() {
        match line.trim_start().strip_prefix("///") {
            Some(d) => lines.push(d.strip_prefix(' ').unwrap_or(d).trim_end()),
            None => break,
        }
    }
    lines.reverse();
    lines.join("\n")
}

fn build_file(file: Pair<'_, Rule>, source: &str) -> Result<File, Diagnostic> {
    let mut name = None;
    let mut doc = String::new();
    let mut decls = Vec::new();
    let mut update = None;
    for p in file.into_inner() {
        match p.as_rule() {
            Rule::header => {
                let start = p.as_span().start();
                doc = doc_above(source, start);
                let id = p.into_inner().find(|x| x.as_rule() == Rule::ident);
                name = id.map(|i| ident(&i));
            }
            Rule::hyper_decl | Rule::flag_decl | Rule::state_decl | Rule::scalar_decl => {
                decls.push(build_decl(p, source)?);
            }
            Rule::update => {
                let block = p.into_inner().find(|x| x.as_rule() == Rule::block);
                update = match block {
                    Some(b) => Some(build_block(b)?),
                    None => None,
                };
            }
            _ => {}
        }
    }
    match (name, update) {
        (Some(name), Some(update)) => Ok(File {
            doc,
            name,
            decls,
            update,
        }),
        _ => Err(internal(source)),
    }
}

fn ident(p: &Pair<'_, Rule>) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span_of(p),
    }
}

fn build_decl(p: Pair<'_, Rule>, source: &str) -> Result<Decl, Diagnostic> {
    let kind = match p.as_rule() {
        Rule::hyper_decl => DeclKind::Hyper,
        Rule::flag_decl => DeclKind::Flag,
        Rule::state_decl => DeclKind::State,
        _ => DeclKind::Scalar,
    };
    let span = span_of(&p);
    let doc = doc_above(source, span.start as usize);
    let mut name = None;
    let mut torch_name = None;
    let mut shape = None;
    let mut exprs = Vec::new();
    for x in p.into_inner() {
        match x.as_rule() {
            Rule::ident => name = Some(ident(&x)),
            Rule::torch_name => torch_name = Some(ident(&x)),
            Rule::state_shape => shape = x.into_inner().next().map(|n| ident(&n)),
            Rule::expr => exprs.push(build_expr(x)?),
            _ => {}
        }
    }
    let mut exprs = exprs.into_iter();
    match (name, exprs.next()) {
        (Some(name), Some(value)) => Ok(Decl {
            kind,
            name,
            value,
            condition: exprs.next(),
            torch_name,
            shape,
            doc,
            span,
        }),
        _ => Err(internal(source)),
    }
}

fn build_block(p: Pair<'_, Rule>) -> Result<Block, Diagnostic> {
    let span = span_of(&p);
    let mut stmts = Vec::new();
    for s in p.into_inner().filter(|x| !is_punct(x.as_rule())) {
        stmts.push(build_stmt(s)?);
    }
    Ok(Block { stmts, span })
}

fn build_stmt(p: Pair<'_, Rule>) -> Result<Stmt, Diagnostic> {
    let span = span_of(&p);
    let rule = p.as_rule();
    let mut inner = p
        .into_inner()
        .filter(|x| {
            !matches!(
                x.as_rule(),
                Rule::kw_let | Rule::kw_if | Rule::kw_else | Rule::kw_repeat
            )
        })
        .filter(|x| !is_punct(x.as_rule()));
    let bad = || Diagnostic::error("E0001", "internal parser error", span, "here");
    match rule {
        Rule::let_stmt | Rule::assign_stmt => {
            let name = inner.next().map(|x| ident(&x)).ok_or_else(bad)?;
            let value = build_expr(inner.next().ok_or_else(bad)?)?;
            Ok(if rule == Rule::let_stmt {
                Stmt::Let { name, value }
            } else {
                Stmt::Assign {
                    target: name,
                    value,
                }
            })
        }
        Rule::if_stmt => {
            let cond = build_expr(inner.next().ok_or_else(bad)?)?;
            let then = build_block(inner.next().ok_or_else(bad)?)?;
            let otherwise = match inner.next() {
                None => None,
                Some(x) if x.as_rule() == Rule::block => Some(build_block(x)?),
                Some(x) => {
                    let s = span_of(&x);
                    Some(Block {
                        stmts: vec![build_stmt(x)?],
                        span: s,
                    })
                }
            };
            Ok(Stmt::If {
                cond,
                then,
                otherwise,
                span,
            })
        }
        Rule::repeat_stmt => {
            let count = build_expr(inner.next().ok_or_else(bad)?)?;
            let body = build_block(inner.next().ok_or_else(bad)?)?;
            Ok(Stmt::Repeat { count, body, span })
        }
        _ => Err(bad()),
    }
}

fn binary_op(s: &str) -> BinaryOp {
    match s {
        "||" => BinaryOp::Or,
        "&&" => BinaryOp::And,
        "<=" => BinaryOp::Le,
        ">=" => BinaryOp::Ge,
        "==" => BinaryOp::Eq,
        "!=" => BinaryOp::Ne,
        "<" => BinaryOp::Lt,
        ">" => BinaryOp::Gt,
        "+" => BinaryOp::Add,
        "-" => BinaryOp::Sub,
        "*" => BinaryOp::Mul,
        "/" => BinaryOp::Div,
        _ => BinaryOp::Pow,
    }
}

/// An expression with the height of its tree, so that no tree taller than [`MAX_EXPR_DEPTH`] is
/// ever built (the later stages recurse over it, and so does dropping it).
struct Built {
    e: Expr,
    depth: usize,
}

/// A new node of height `depth`, or an error at `at` when that is too tall.
fn node(kind: ExprKind, span: Span, depth: usize, at: Span) -> Result<Built, Diagnostic> {
    if depth > MAX_EXPR_DEPTH {
        return Err(Diagnostic::error(
            "E0002",
            format!("expression nested deeper than {MAX_EXPR_DEPTH} levels"),
            at,
            "too deep",
        )
        .hint("operator chains count too: `a + b + c` is two levels; split the expression with `let` bindings"));
    }
    Ok(Built {
        e: Expr { kind, span },
        depth,
    })
}

fn leaf(kind: ExprKind, span: Span) -> Result<Built, Diagnostic> {
    node(kind, span, 1, span)
}

fn prefix(op: &str, b: Built, op_span: Span) -> Result<Built, Diagnostic> {
    let span = op_span.to(b.e.span);
    let op = if op == "!" {
        UnaryOp::Not
    } else {
        UnaryOp::Neg
    };
    node(
        ExprKind::Unary(op, Box::new(b.e)),
        span,
        b.depth + 1,
        op_span,
    )
}

fn binary(op: BinaryOp, a: Built, b: Built) -> Result<Built, Diagnostic> {
    let span = a.e.span.to(b.e.span);
    let at = b.e.span;
    node(
        ExprKind::Binary(op, Box::new(a.e), Box::new(b.e)),
        span,
        1 + a.depth.max(b.depth),
        at,
    )
}

fn matmul(a: Built, b: Built) -> Result<Built, Diagnostic> {
    let span = a.e.span.to(b.e.span);
    let at = b.e.span;
    node(
        ExprKind::MatMul(Box::new(a.e), Box::new(b.e)),
        span,
        1 + a.depth.max(b.depth),
        at,
    )
}

fn build_expr(p: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
    build(p).map(|b| b.e)
}

/// Builds an expression. Chains (`a + b + c`, `?:`, `^`, prefix operators) are folded with loops,
/// so recursion depth follows bracket nesting only, which [`check_depth`] bounds; the height of
/// the tree is bounded by [`MAX_EXPR_DEPTH`].
fn build(p: Pair<'_, Rule>) -> Result<Built, Diagnostic> {
    let span = span_of(&p);
    let bad = || Diagnostic::error("E0001", "internal parser error", span, "here");
    match p.as_rule() {
        Rule::expr => {
            // or (? expr : or)*  ==  or ? expr : (or ? expr : or)
            let mut items = p
                .into_inner()
                .filter(|x| !matches!(x.as_rule(), Rule::question | Rule::colon));
            let first = build(items.next().ok_or_else(bad)?)?;
            let mut rest = Vec::new();
            while let Some(mid) = items.next() {
                let mid = build(mid)?;
                let other = build(items.next().ok_or_else(bad)?)?;
                rest.push((mid, other));
            }
            // conds: first, rest[0].1, rest[1].1, ...; the last `other` is the final else.
            let mut conds = vec![first];
            let mut mids = Vec::new();
            for (m, o) in rest {
                mids.push(m);
                conds.push(o);
            }
            let mut acc = conds.pop().ok_or_else(bad)?;
            while let Some(m) = mids.pop() {
                let c = conds.pop().ok_or_else(bad)?;
                let span = c.e.span.to(acc.e.span);
                let depth = 1 + c.depth.max(m.depth).max(acc.depth);
                let at = c.e.span;
                acc = node(
                    ExprKind::Ternary(Box::new(c.e), Box::new(m.e), Box::new(acc.e)),
                    span,
                    depth,
                    at,
                )?;
            }
            Ok(acc)
        }
        Rule::logic_or | Rule::logic_and | Rule::comparison | Rule::sum | Rule::product => {
            let mut items = p.into_inner();
            let mut acc = build(items.next().ok_or_else(bad)?)?;
            while let Some(op) = items.next() {
                let rhs = build(items.next().ok_or_else(bad)?)?;
                acc = if op.as_str() == "@" {
                    matmul(acc, rhs)?
                } else {
                    binary(binary_op(op.as_str()), acc, rhs)?
                };
            }
            Ok(acc)
        }
        Rule::prefixed => {
            let mut ops = Vec::new();
            let mut base = None;
            for x in p.into_inner() {
                if x.as_rule() == Rule::op_prefix {
                    ops.push((x.as_str().to_string(), span_of(&x)));
                } else {
                    base = Some(build(x)?);
                }
            }
            let mut acc = base.ok_or_else(bad)?;
            while let Some((op, s)) = ops.pop() {
                acc = prefix(&op, acc, s)?;
            }
            Ok(acc)
        }
        Rule::power => {
            // primary (^ prefix* primary)*, right-associative; each prefix applies to the
            // power to its right: a ^ -b ^ c == a ^ (-(b ^ c)).
            let mut items = p.into_inner();
            let base = build(items.next().ok_or_else(bad)?)?;
            let mut terms: Vec<(Vec<(String, Span)>, Built)> = Vec::new();
            let mut pending = Vec::new();
            for x in items {
                match x.as_rule() {
                    Rule::op_pow => {}
                    Rule::op_prefix => pending.push((x.as_str().to_string(), span_of(&x))),
                    _ => terms.push((std::mem::take(&mut pending), build(x)?)),
                }
            }
            let mut acc: Option<Built> = None;
            while let Some((ops, e)) = terms.pop() {
                let mut v = match acc {
                    None => e,
                    Some(rhs) => binary(BinaryOp::Pow, e, rhs)?,
                };
                for (op, s) in ops.into_iter().rev() {
                    v = prefix(&op, v, s)?;
                }
                acc = Some(v);
            }
            match acc {
                None => Ok(base),
                Some(rhs) => binary(BinaryOp::Pow, base, rhs),
            }
        }
        Rule::paren => {
            let inner = p.into_inner().next().ok_or_else(bad)?;
            let mut b = build(inner)?;
            b.e.span = span;
            Ok(b)
        }
        Rule::call => {
            let mut items = p.into_inner();
            let name = ident(&items.next().ok_or_else(bad)?);
            let args = items
                .filter(|x| !is_punct(x.as_rule()))
                .map(build)
                .collect::<Result<Vec<_>, _>>()?;
            let depth = 1 + args.iter().map(|a| a.depth).max().unwrap_or(0);
            let args = args.into_iter().map(|a| a.e).collect();
            node(ExprKind::Call(name, args), span, depth, span)
        }
        Rule::number => {
            let v: f64 = p.as_str().parse().map_err(|_| {
                Diagnostic::error("E0004", "malformed number", span, "not a number")
            })?;
            if v.is_infinite() {
                return Err(Diagnostic::error(
                    "E0004",
                    "number too large",
                    span,
                    "larger than the largest f64",
                )
                .hint("numbers are f64: at most about 1.8e308"));
            }
            leaf(ExprKind::Number(v), span)
        }
        Rule::kw_true => leaf(ExprKind::Bool(true), span),
        Rule::kw_false => leaf(ExprKind::Bool(false), span),
        Rule::ident => leaf(ExprKind::Name(p.as_str().to_string()), span),
        _ => Err(bad()),
    }
}
