//! Declarations: duplicates, reserved names, and the form of each default and initial value.

use super::{Ty, BUILTIN_NAMES, FUNCTIONS};
use crate::diag::{did_you_mean, Diagnostic, Span};
use crate::syntax::ast::{self, DeclKind, ExprKind};
use optc_kernel::StateShape;
use std::collections::HashMap;

/// What a name declared at file level refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symbol {
    /// `p`.
    Param,
    /// `g`.
    Grad,
    /// `t`.
    Step,
    /// The i-th hyper.
    Hyper(usize),
    /// The i-th flag.
    Flag(usize),
    /// The i-th state.
    State(usize),
    /// The i-th scalar state.
    Scalar(usize),
    /// The i-th count: a flag whose default is an integer (`flag ns_steps = 5`), a compile-time
    /// integer for `repeat`.
    Count(usize),
}

/// The largest `repeat` count (torch's Muon refuses 100 Newton–Schulz steps and more).
pub const MAX_REPEAT: u32 = 99;

/// A count written on a command line or in a setting (`--set ns_steps=3`): a whole number from 0
/// to [`MAX_REPEAT`], or why not.
pub fn parse_count(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(v) if v <= MAX_REPEAT => Ok(v),
        _ => Err(format!(
            "an integer flag is a repeat count: a whole number from 0 to {MAX_REPEAT}"
        )),
    }
}

/// The count a `flag` declaration's default gives, when it is a whole number.
pub fn count_value(e: &ast::Expr) -> Option<u32> {
    match e.kind {
        ExprKind::Number(x) if x >= 0.0 && x.fract() == 0.0 && x <= MAX_REPEAT as f64 => {
            Some(x as u32)
        }
        _ => None,
    }
}

/// The hyper index of the built-in `rows` (`optc_kernel::matrix::ROWS`).
pub const ROWS_INDEX: usize = optc_kernel::matrix::ROWS.0 as usize;
/// The hyper index of the built-in `cols` (`optc_kernel::matrix::COLS`).
pub const COLS_INDEX: usize = optc_kernel::matrix::COLS.0 as usize;

/// The flag index of the built-in `matrix` condition (`crate::ir::MATRIX_FLAG`).
pub const MATRIX_FLAG_INDEX: usize = u32::MAX as usize;

/// The file-level names.
#[derive(Debug, Default)]
pub struct DeclTable {
    /// Name to symbol.
    pub names: HashMap<String, (Symbol, Span)>,
    /// The shape of each state, by state index (`state v[rows] = 0`).
    pub state_shapes: Vec<StateShape>,
}

impl DeclTable {
    /// The shape of state `i` (`Full` when out of range).
    pub fn state_shape(&self, i: usize) -> StateShape {
        self.state_shapes.get(i).copied().unwrap_or_default()
    }
}

impl DeclTable {
    /// Looks a name up, builtins included.
    pub fn get(&self, name: &str) -> Option<Symbol> {
        match name {
            "p" => Some(Symbol::Param),
            "g" => Some(Symbol::Grad),
            "t" => Some(Symbol::Step),
            "matrix" => Some(Symbol::Flag(MATRIX_FLAG_INDEX)),
            "rows" => Some(Symbol::Hyper(ROWS_INDEX)),
            "cols" => Some(Symbol::Hyper(COLS_INDEX)),
            _ => self.names.get(name).map(|(s, _)| *s),
        }
    }
    /// Every name, for suggestions.
    pub fn all_names(&self) -> impl Iterator<Item = &str> {
        BUILTIN_NAMES
            .iter()
            .copied()
            .chain(self.names.keys().map(String::as_str))
    }
}

pub(super) fn check_decls(file: &ast::File, out: &mut Vec<Diagnostic>) -> DeclTable {
    let mut table = DeclTable::default();
    let mut counts = [0usize; 5];
    for d in &file.decls {
        let name = &d.name.name;
        let is_count = d.kind == DeclKind::Flag && matches!(d.value.kind, ExprKind::Number(_));
        let idx = match d.kind {
            DeclKind::Hyper => 0,
            DeclKind::Flag if is_count => 4,
            DeclKind::Flag => 1,
            DeclKind::State => 2,
            DeclKind::Scalar => 3,
        };
        let id = counts[idx];
        counts[idx] += 1;
        let sym = match d.kind {
            DeclKind::Hyper => Symbol::Hyper(id),
            DeclKind::Flag if is_count => Symbol::Count(id),
            DeclKind::Flag => Symbol::Flag(id),
            DeclKind::State => Symbol::State(id),
            DeclKind::Scalar => Symbol::Scalar(id),
        };
        if BUILTIN_NAMES.contains(&name.as_str()) {
            out.push(
                Diagnostic::error(
                    "E0102",
                    format!("`{name}` is bound by the runtime and cannot be declared"),
                    d.name.span,
                    "built-in name",
                )
                .hint("`p` is the parameter, `g` its gradient and `t` the step number; pick another name"),
            );
        } else if FUNCTIONS.iter().any(|(f, _)| f == name) {
            out.push(Diagnostic::error(
                "E0102",
                format!("`{name}` is a built-in function and cannot be declared"),
                d.name.span,
                "built-in function",
            ));
        } else if let Some((_, first)) = table.names.get(name) {
            out.push(
                Diagnostic::error(
                    "E0101",
                    format!("`{name}` is declared twice"),
                    d.name.span,
                    "declared again here",
                )
                .with(*first, "first declared here")
                .hint("each hyper, flag, state and scalar needs its own name"),
            );
        } else {
            table.names.insert(name.clone(), (sym, d.name.span));
        }
    }
    table.state_shapes = file
        .decls
        .iter()
        .filter(|d| d.kind == DeclKind::State)
        .map(|d| match d.shape.as_ref().map(|s| s.name.as_str()) {
            Some("rows") => StateShape::Rows,
            Some("cols") => StateShape::Cols,
            _ => StateShape::Full,
        })
        .collect();
    for d in &file.decls {
        check_value(d, &table, out);
        check_shape(d, out);
    }
    check_torch_names(file, out);
    table
}

/// The names states and scalars have in torch-convention state files (`NAME.exp_avg`): a state's
/// `as` name or its own, a scalar's own. They must differ from each other and from `step`.
fn check_torch_names(file: &ast::File, out: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for d in &file.decls {
        let id = match d.kind {
            DeclKind::State => d.torch_name.as_ref().unwrap_or(&d.name),
            DeclKind::Scalar => &d.name,
            DeclKind::Hyper | DeclKind::Flag => continue,
        };
        let name = id.name.as_str();
        if name == "step" {
            out.push(
                Diagnostic::error(
                    "E0206",
                    format!(
                        "`{} {}` has the torch name `step`",
                        d.kind.keyword(),
                        d.name.name
                    ),
                    id.span,
                    "reserved for the step count",
                )
                .hint("torch state files keep the step count under `NAME.step`; pick another name"),
            );
        } else if let Some(first) = seen.get(name) {
            out.push(
                Diagnostic::error(
                    "E0206",
                    format!("two states have the torch name `{name}`"),
                    id.span,
                    "used again here",
                )
                .with(*first, "first used here")
                .hint("each state and scalar needs its own torch name (`state m = 0 as exp_avg`)"),
            );
        } else {
            seen.insert(name, id.span);
        }
    }
}

/// Checks that a declaration's value has the form its kind needs.
fn check_value(d: &ast::Decl, table: &DeclTable, out: &mut Vec<Diagnostic>) {
    let kw = d.kind.keyword();
    match d.kind {
        DeclKind::Hyper => {
            if let Err(bad) = const_form(&d.value, &|_| false) {
                let span = bad.span;
                out.push(
                    Diagnostic::error(
                        "E0201",
                        format!("the default of hyper `{}` must be a constant number", d.name.name),
                        span,
                        "not a constant",
                    )
                    .hint("write a literal such as `1e-3`; hypers are set at run time, the default is only a starting value"),
                );
            } else if let Some(v) = const_value(&d.value).filter(|v| !v.is_finite()) {
                out.push(
                    Diagnostic::error(
                        "E0205",
                        format!(
                            "the default of hyper `{}` is not a finite number",
                            d.name.name
                        ),
                        d.value.span,
                        format!("this is {v}"),
                    )
                    .hint("a default must be finite; check for an overflow or a division by zero"),
                );
            }
        }
        DeclKind::Flag => {
            if matches!(d.value.kind, ExprKind::Number(_)) && count_value(&d.value).is_none() {
                out.push(
                    Diagnostic::error(
                        "E0804",
                        format!(
                            "the count `{}` must be a whole number from 0 to {MAX_REPEAT}",
                            d.name.name
                        ),
                        d.value.span,
                        "not a repeat count",
                    )
                    .hint(
                        "an integer flag is a compile-time repeat count, as in `flag ns_steps = 5`",
                    ),
                );
            } else if !matches!(d.value.kind, ExprKind::Bool(_) | ExprKind::Number(_)) {
                out.push(
                    Diagnostic::error(
                        "E0202",
                        format!(
                            "the default of flag `{}` must be `true`, `false` or a whole number",
                            d.name.name
                        ),
                        d.value.span,
                        "not a boolean literal",
                    )
                    .hint("a flag is a compile-time switch; for a number use `hyper`"),
                );
            }
        }
        DeclKind::State | DeclKind::Scalar => {
            let is_p = matches!(&d.value.kind, ExprKind::Name(n) if n == "p");
            if !(is_p && d.kind == DeclKind::State) {
                let hyper = |n: &str| matches!(table.get(n), Some(Symbol::Hyper(_)));
                if let Err(bad) = const_form(&d.value, &hyper) {
                    let span = bad.span;
                    let what = if d.kind == DeclKind::State {
                        "`p`, or a number computed from literals and hypers"
                    } else {
                        "a number computed from literals and hypers"
                    };
                    out.push(
                        unknown_name(bad, table, table.all_names()).unwrap_or_else(|| {
                            Diagnostic::error(
                                "E0203",
                                format!(
                                    "the initial value of {kw} `{}` must be {what}",
                                    d.name.name
                                ),
                                span,
                                "not allowed in an initial value",
                            )
                            .hint(
                                "states are created before the first step, when only hypers are known",
                            )
                        }),
                    );
                }
            }
        }
    }
    if let Some(cond) = &d.condition {
        if let Err(bad) = flag_form(cond, table) {
            let flags = table
                .names
                .iter()
                .filter(|(_, (s, _))| matches!(s, Symbol::Flag(_)))
                .map(|(n, _)| n.as_str());
            if let Some(u) = unknown_name(bad, table, flags) {
                out.push(u);
                return;
            }
            let span = bad.span;
            out.push(
                Diagnostic::error(
                    "E0204",
                    format!(
                        "the condition of state `{}` must be made of flags",
                        d.name.name
                    ),
                    span,
                    "not a flag",
                )
                .hint("write `state v_max = 0 if amsgrad`; flags combine with `!`, `&&` and `||`"),
            );
        }
    }
}

/// Checks the shape of a `[rows]`/`[cols]` state: `rows` or `cols` (E0207), a number to start
/// from (E0207), and a condition that holds only for matrices (E0506).
fn check_shape(d: &ast::Decl, out: &mut Vec<Diagnostic>) {
    let Some(shape) = &d.shape else { return };
    let name = &d.name.name;
    if shape.name != "rows" && shape.name != "cols" {
        let mut diag = Diagnostic::error(
            "E0207",
            format!("state `{name}` has an unknown shape `[{}]`", shape.name),
            shape.span,
            "not a state shape",
        );
        if let Some(s) = suggest(&shape.name, ["rows", "cols"]) {
            diag = diag.hint(s);
        }
        out.push(diag.hint("a state is per element (no shape), `[rows]` (one value per row of a matrix) or `[cols]`"));
        return;
    }
    if matches!(&d.value.kind, ExprKind::Name(n) if n == "p") {
        out.push(
            Diagnostic::error(
                "E0207",
                format!(
                    "the [{}] state `{name}` cannot start as a copy of `p`",
                    shape.name
                ),
                d.value.span,
                "`p` has one value per element",
            )
            .hint("start it from a number, such as `0`"),
        );
    }
    if !d.condition.as_ref().is_some_and(implies_matrix) {
        let at = d.condition.as_ref().map_or(d.name.span, |c| c.span);
        out.push(
            Diagnostic::error(
                "E0506",
                format!("the [{}] state `{name}` must exist for matrices only", shape.name),
                at,
                "tensors of rank 0 or 1 have no rows and columns",
            )
            .hint(format!(
                "declare it `state {name}[{}] = 0 if matrix` and give vectors their own update under `if matrix {{ ... }} else {{ ... }}`",
                shape.name
            )),
        );
    }
}

/// Whether the boolean `e` can hold only for matrices: `matrix`, or a conjunction with it.
pub(super) fn implies_matrix(e: &ast::Expr) -> bool {
    match &e.kind {
        ExprKind::Name(n) => n == "matrix",
        ExprKind::Binary(optc_kernel::BinaryOp::And, a, b) => {
            implies_matrix(a) || implies_matrix(b)
        }
        _ => false,
    }
}

/// Whether the boolean `e` can hold only for tensors of rank 0 or 1: `!matrix`, or a conjunction
/// with it.
pub(super) fn implies_vector(e: &ast::Expr) -> bool {
    match &e.kind {
        ExprKind::Unary(optc_kernel::UnaryOp::Not, a) => {
            matches!(&a.kind, ExprKind::Name(n) if n == "matrix")
        }
        ExprKind::Binary(optc_kernel::BinaryOp::And, a, b) => {
            implies_vector(a) || implies_vector(b)
        }
        _ => false,
    }
}

/// An "unknown name" error when `bad` is a name that nothing declares, suggesting one of
/// `candidates`.
fn unknown_name<'a>(
    bad: &ast::Expr,
    table: &DeclTable,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<Diagnostic> {
    let ExprKind::Name(n) = &bad.kind else {
        return None;
    };
    if table.get(n).is_some() {
        return None;
    }
    let mut d = Diagnostic::error(
        "E0104",
        format!("unknown name `{n}`"),
        bad.span,
        "not declared",
    );
    if let Some(s) = suggest(n, candidates) {
        d = d.hint(s);
    }
    Some(d)
}

/// Whether `e` is numeric and made of literals, arithmetic, calls and names accepted by `name_ok`.
/// On failure, the first offending part.
fn const_form<'e>(e: &'e ast::Expr, name_ok: &dyn Fn(&str) -> bool) -> Result<(), &'e ast::Expr> {
    match &e.kind {
        ExprKind::Number(_) => Ok(()),
        ExprKind::Name(n) if name_ok(n) => Ok(()),
        ExprKind::Unary(op, a) if *op == optc_kernel::UnaryOp::Neg => const_form(a, name_ok),
        ExprKind::Binary(op, a, b) if !op.is_comparison() && !op.is_logical() => {
            const_form(a, name_ok)?;
            const_form(b, name_ok)
        }
        ExprKind::Call(f, args)
            if FUNCTIONS
                .iter()
                .any(|(n, k)| *n == f.name && *k == args.len()) =>
        {
            args.iter().try_for_each(|a| const_form(a, name_ok))
        }
        _ => Err(e),
    }
}

/// The value of a constant expression (one that passed [`const_form`] with no names), in f64 with
/// the ops' own meaning.
fn const_value(e: &ast::Expr) -> Option<f64> {
    use optc_kernel::{BinaryOp, Real, UnaryOp};
    Some(match &e.kind {
        ExprKind::Number(x) => *x,
        ExprKind::Unary(op, a) => f64::unary(*op, const_value(a)?),
        ExprKind::Binary(op, a, b) => f64::binary(*op, const_value(a)?, const_value(b)?),
        ExprKind::Call(f, args) => {
            let v: Vec<f64> = args.iter().map(const_value).collect::<Option<_>>()?;
            let un = |op| v.first().map(|x| f64::unary(op, *x));
            match (f.name.as_str(), v.as_slice()) {
                ("sqrt", _) => un(UnaryOp::Sqrt)?,
                ("rsqrt", _) => un(UnaryOp::Rsqrt)?,
                ("abs", _) => un(UnaryOp::Abs)?,
                ("sign", _) => un(UnaryOp::Sign)?,
                ("exp", _) => un(UnaryOp::Exp)?,
                ("log", _) => un(UnaryOp::Log)?,
                ("min", [a, b]) => f64::binary(BinaryOp::Min, *a, *b),
                ("max", [a, b]) => f64::binary(BinaryOp::Max, *a, *b),
                ("clamp", [x, lo, hi]) => {
                    f64::binary(BinaryOp::Min, f64::binary(BinaryOp::Max, *x, *lo), *hi)
                }
                ("lerp", [a, b, w]) => a + w * (b - a),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Whether `e` is a boolean made of flags, `!`, `&&`, `||` and `true`/`false`.
fn flag_form<'e>(e: &'e ast::Expr, table: &DeclTable) -> Result<(), &'e ast::Expr> {
    match &e.kind {
        ExprKind::Bool(_) => Ok(()),
        ExprKind::Name(n) if matches!(table.get(n), Some(Symbol::Flag(_))) => Ok(()),
        ExprKind::Unary(optc_kernel::UnaryOp::Not, a) => flag_form(a, table),
        ExprKind::Binary(op, a, b) if op.is_logical() => {
            flag_form(a, table)?;
            flag_form(b, table)
        }
        _ => Err(e),
    }
}

/// A suggestion line for an unknown name, if a close one exists.
pub(super) fn suggest<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    did_you_mean(name, names).map(|s| format!("did you mean `{s}`?"))
}

/// The type a declaration's name has when used in an expression.
pub(super) fn symbol_type(sym: Symbol) -> Ty {
    match sym {
        Symbol::Flag(_) => Ty::Bool,
        _ => Ty::Num,
    }
}
