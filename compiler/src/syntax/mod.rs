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

/// Refuses inputs nested too deeply, pointing at the first bracket past the limit.
fn check_depth(source: &str) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut prev = '\0';
    for (i, c) in source.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            prev = c;
            continue;
        }
        match c {
            '/' if prev == '/' => in_comment = true,
            '(' | '{' | '?' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Diagnostic::error(
                        "E0002",
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                        Span::new(i, i + 1),
                        "too deep",
                    )
                    .hint("split the expression with `let` bindings"));
                }
            }
            ')' | '}' | ':' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
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
        Rule::question => "`?`",
        Rule::colon => "`:`",
        Rule::op_or | Rule::op_and | Rule::op_cmp | Rule::op_add | Rule::op_mul | Rule::op_pow => {
            "an operator"
        }
        Rule::op_prefix => "`-` or `!`",
        _ => return None,
    })
}

fn pest_error(e: pest::error::Error<Rule>, source: &str) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p + 1),
        InputLocation::Span((a, b)) => (a, b.max(a + 1)),
    };
    let span = Span::new(start, end);
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
            let mut d = Diagnostic::error(
                "E0003",
                format!("syntax error: expected {expected}"),
                span,
                format!("expected {expected}"),
            );
            let word: String = source
                .get(start..)
                .unwrap_or("")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let keyword = [
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
            ];
            if positives.contains(&Rule::ident) && keyword.contains(&word.as_str()) {
                d = d.hint(format!("`{word}` is a keyword; pick another name"));
            } else if positives.contains(&Rule::header) || positives.contains(&Rule::kw_optimizer) {
                d = d.hint("a rule file starts with `optimizer NAME`");
            } else if positives.contains(&Rule::update) || positives.contains(&Rule::kw_update) {
                d = d.hint("declarations (`hyper`, `flag`, `state`, `scalar`) come first, then one `update { ... }` block");
            } else if positives.contains(&Rule::EOI) {
                d = d.hint("nothing may follow the `update { ... }` block");
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
    let mut exprs = Vec::new();
    for x in p.into_inner() {
        match x.as_rule() {
            Rule::ident => name = Some(ident(&x)),
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
            doc,
            span,
        }),
        _ => Err(internal(source)),
    }
}

fn build_block(p: Pair<'_, Rule>) -> Result<Block, Diagnostic> {
    let span = span_of(&p);
    let mut stmts = Vec::new();
    for s in p.into_inner() {
        stmts.push(build_stmt(s)?);
    }
    Ok(Block { stmts, span })
}

fn build_stmt(p: Pair<'_, Rule>) -> Result<Stmt, Diagnostic> {
    let span = span_of(&p);
    let rule = p.as_rule();
    let mut inner = p
        .into_inner()
        .filter(|x| !matches!(x.as_rule(), Rule::kw_let | Rule::kw_if | Rule::kw_else));
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

fn prefix(op: &str, e: Expr, op_span: Span) -> Expr {
    let span = op_span.to(e.span);
    let op = if op == "!" {
        UnaryOp::Not
    } else {
        UnaryOp::Neg
    };
    Expr {
        kind: ExprKind::Unary(op, Box::new(e)),
        span,
    }
}

fn binary(op: BinaryOp, a: Expr, b: Expr) -> Expr {
    let span = a.span.to(b.span);
    Expr {
        kind: ExprKind::Binary(op, Box::new(a), Box::new(b)),
        span,
    }
}

/// Builds an expression. Chains (`a + b + c`, `?:`, `^`, prefix operators) are folded with loops,
/// so recursion depth follows bracket nesting only, which [`check_depth`] bounds.
fn build_expr(p: Pair<'_, Rule>) -> Result<Expr, Diagnostic> {
    let span = span_of(&p);
    let bad = || Diagnostic::error("E0001", "internal parser error", span, "here");
    match p.as_rule() {
        Rule::expr => {
            // or (? expr : or)*  ==  or ? expr : (or ? expr : or)
            let mut items = p
                .into_inner()
                .filter(|x| !matches!(x.as_rule(), Rule::question | Rule::colon));
            let first = build_expr(items.next().ok_or_else(bad)?)?;
            let mut rest = Vec::new();
            while let Some(mid) = items.next() {
                let mid = build_expr(mid)?;
                let other = build_expr(items.next().ok_or_else(bad)?)?;
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
                let span = c.span.to(acc.span);
                acc = Expr {
                    kind: ExprKind::Ternary(Box::new(c), Box::new(m), Box::new(acc)),
                    span,
                };
            }
            Ok(acc)
        }
        Rule::logic_or | Rule::logic_and | Rule::comparison | Rule::sum | Rule::product => {
            let mut items = p.into_inner();
            let mut acc = build_expr(items.next().ok_or_else(bad)?)?;
            while let Some(op) = items.next() {
                let rhs = build_expr(items.next().ok_or_else(bad)?)?;
                acc = binary(binary_op(op.as_str()), acc, rhs);
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
                    base = Some(build_expr(x)?);
                }
            }
            let mut acc = base.ok_or_else(bad)?;
            while let Some((op, s)) = ops.pop() {
                acc = prefix(&op, acc, s);
            }
            Ok(acc)
        }
        Rule::power => {
            // primary (^ prefix* primary)*, right-associative; each prefix applies to the
            // power to its right: a ^ -b ^ c == a ^ (-(b ^ c)).
            let mut items = p.into_inner();
            let base = build_expr(items.next().ok_or_else(bad)?)?;
            let mut terms: Vec<(Vec<(String, Span)>, Expr)> = Vec::new();
            let mut pending = Vec::new();
            for x in items {
                match x.as_rule() {
                    Rule::op_pow => {}
                    Rule::op_prefix => pending.push((x.as_str().to_string(), span_of(&x))),
                    _ => terms.push((std::mem::take(&mut pending), build_expr(x)?)),
                }
            }
            let mut acc: Option<Expr> = None;
            while let Some((ops, e)) = terms.pop() {
                let mut v = match acc {
                    None => e,
                    Some(rhs) => binary(BinaryOp::Pow, e, rhs),
                };
                for (op, s) in ops.into_iter().rev() {
                    v = prefix(&op, v, s);
                }
                acc = Some(v);
            }
            Ok(match acc {
                None => base,
                Some(rhs) => binary(BinaryOp::Pow, base, rhs),
            })
        }
        Rule::paren => {
            let inner = p.into_inner().next().ok_or_else(bad)?;
            let mut e = build_expr(inner)?;
            e.span = span;
            Ok(e)
        }
        Rule::call => {
            let mut items = p.into_inner();
            let name = ident(&items.next().ok_or_else(bad)?);
            let args = items.map(build_expr).collect::<Result<Vec<_>, _>>()?;
            Ok(Expr {
                kind: ExprKind::Call(name, args),
                span,
            })
        }
        Rule::number => {
            let v: f64 = p.as_str().parse().map_err(|_| {
                Diagnostic::error("E0004", "malformed number", span, "not a number")
            })?;
            Ok(Expr {
                kind: ExprKind::Number(v),
                span,
            })
        }
        Rule::kw_true => Ok(Expr {
            kind: ExprKind::Bool(true),
            span,
        }),
        Rule::kw_false => Ok(Expr {
            kind: ExprKind::Bool(false),
            span,
        }),
        Rule::ident => Ok(Expr {
            kind: ExprKind::Name(p.as_str().to_string()),
            span,
        }),
        _ => Err(bad()),
    }
}
