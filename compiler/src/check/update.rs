//! The update block: name resolution with `let` scopes, assignment targets, types, uniformity,
//! and the states that are read but never written.

use super::decls::{
    count_value, implies_matrix, implies_vector, suggest, symbol_type, DeclTable, Symbol,
    MAX_REPEAT,
};
use super::matrix;
use super::{Ty, Uniformity, FUNCTIONS, MATRIX_FUNCTIONS, REDUCTIONS};
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{self, ExprKind, Stmt};
use optc_kernel::{BinaryOp, UnaryOp};
use std::collections::BTreeSet;

#[derive(Clone, Debug)]
struct Local {
    name: String,
    ty: Ty,
    uni: Uniformity,
}

struct Checker<'a> {
    table: &'a DeclTable,
    locals: Vec<Local>,
    out: &'a mut Vec<Diagnostic>,
    read_states: BTreeSet<usize>,
    written_states: BTreeSet<usize>,
    first_read: Vec<Option<Span>>,
    assigns_p: bool,
    /// How many enclosing `if matrix` branches (or `matrix ? a : b` true branches) there are:
    /// `[rows]`/`[cols]` values need at least one (E0505).
    under_matrix: usize,
    /// The first matrix operation (`@`, `transpose`, `round_bf16`).
    first_matrix_op: Option<Span>,
    /// Whether the update reads the built-in `matrix`.
    reads_matrix: bool,
}

pub(super) fn check_update(file: &ast::File, table: &DeclTable, out: &mut Vec<Diagnostic>) {
    let n_states = file
        .decls
        .iter()
        .filter(|d| d.kind == ast::DeclKind::State)
        .count();
    let mut c = Checker {
        table,
        locals: Vec::new(),
        out,
        read_states: BTreeSet::new(),
        written_states: BTreeSet::new(),
        first_read: vec![None; n_states],
        assigns_p: false,
        under_matrix: 0,
        first_matrix_op: None,
        reads_matrix: false,
    };
    c.block(&file.update);
    let decl_reads_matrix = file.decls.iter().any(|d| {
        d.condition
            .as_ref()
            .is_some_and(|c| format!("{:?}", c.kind).contains("Name(\"matrix\")"))
    });
    if let (Some(at), false) = (c.first_matrix_op, c.reads_matrix || decl_reads_matrix) {
        c.out.push(
            Diagnostic::error(
                "E0803",
                "a matrix operation in a rule that runs on every tensor",
                at,
                "vectors (0 or 1 dims) have no matrix",
            )
            .hint("put matrix code under `if matrix { ... }` and give vectors a fallback (`matrix ? ... : ...`)"),
        );
    }
    let states: Vec<&ast::Decl> = file
        .decls
        .iter()
        .filter(|d| d.kind == ast::DeclKind::State)
        .collect();
    for (i, d) in states.iter().enumerate() {
        if c.read_states.contains(&i) && !c.written_states.contains(&i) {
            let at = c.first_read[i].unwrap_or(d.name.span);
            c.out.push(
                Diagnostic::warning(
                    "W0001",
                    format!("state `{}` is read but never written", d.name.name),
                    at,
                    "read here",
                )
                .with(d.name.span, "declared here")
                .hint("it keeps its initial value forever; assign it in `update`, or make it a `hyper`"),
            );
        }
    }
    if !c.assigns_p {
        c.out.push(
            Diagnostic::warning(
                "W0002",
                "the update never assigns `p`",
                Span::new(
                    file.update.span.start as usize,
                    file.update.span.start as usize + 1,
                ),
                "this block leaves `p` unchanged",
            )
            .hint("an optimizer step ends with `p = ...`"),
        );
    }
}

impl Checker<'_> {
    fn block(&mut self, b: &ast::Block) {
        let mark = self.locals.len();
        for s in &b.stmts {
            self.stmt(s);
        }
        self.locals.truncate(mark);
    }

    fn find_local(&self, name: &str) -> Option<usize> {
        self.locals.iter().rposition(|l| l.name == name)
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Let { name, value } => {
                let (ty, uni) = self.expr(value);
                if let Some(sym) = self.table.get(&name.name) {
                    let what = match sym {
                        Symbol::State(_) | Symbol::Param | Symbol::Scalar(_) => {
                            format!(
                                "`{}` is a state; assign it with `{} = ...`",
                                name.name, name.name
                            )
                        }
                        _ => format!("`{}` is already declared", name.name),
                    };
                    self.out.push(
                        Diagnostic::error(
                            "E0103",
                            format!("`let {}` hides a declared name", name.name),
                            name.span,
                            what,
                        )
                        .hint("pick another name for the local, such as `grad` for a modified `g`"),
                    );
                }
                if FUNCTIONS.iter().any(|(f, _)| *f == name.name) {
                    self.out.push(Diagnostic::error(
                        "E0103",
                        format!("`let {}` hides a built-in function", name.name),
                        name.span,
                        "built-in function",
                    ));
                }
                self.locals.push(Local {
                    name: name.name.clone(),
                    ty,
                    uni,
                });
            }
            Stmt::Assign { target, value } => self.assign(target, value),
            Stmt::Repeat { count, body, .. } => {
                let ok = match &count.kind {
                    ast::ExprKind::Number(_) => count_value(count).is_some(),
                    ast::ExprKind::Name(n) => {
                        self.find_local(n).is_none()
                            && matches!(self.table.get(n), Some(Symbol::Count(_)))
                    }
                    _ => false,
                };
                if !ok {
                    self.out.push(
                        Diagnostic::error(
                            "E0804",
                            "the count of `repeat` must be a compile-time integer",
                            count.span,
                            "not known when the rule is compiled",
                        )
                        .hint(format!(
                            "write a whole number from 0 to {MAX_REPEAT}, or declare an integer flag such as `flag ns_steps = 5`"
                        )),
                    );
                }
                self.block(body);
            }
            Stmt::If {
                cond,
                then,
                otherwise,
                ..
            } => {
                let (ty, uni) = self.expr(cond);
                if ty != Ty::Bool {
                    self.out.push(
                        Diagnostic::error(
                            "E0402",
                            "the condition of `if` must be a boolean",
                            cond.span,
                            "this is a number",
                        )
                        .hint("compare it: `if momentum != 0 { ... }`"),
                    );
                }
                if uni != Uniformity::Uniform {
                    self.out.push(
                        Diagnostic::error("E0502", "the condition of `if` must be uniform", cond.span, format!("this is {}", uni.name()))
                            .hint("a flag condition must be uniform; to choose per element, use `cond ? a : b`"),
                    );
                }
                let before = self.locals.clone();
                let (m_then, m_else) =
                    (implies_matrix(cond) as usize, implies_vector(cond) as usize);
                self.under_matrix += m_then;
                self.block(then);
                self.under_matrix -= m_then;
                let after_then = std::mem::replace(&mut self.locals, before);
                if let Some(b) = otherwise {
                    self.under_matrix += m_else;
                    self.block(b);
                    self.under_matrix -= m_else;
                }
                // A local assigned a per-element value in either branch is per-element after.
                for (l, t) in self.locals.iter_mut().zip(after_then) {
                    l.uni = l.uni.join(t.uni);
                }
            }
        }
    }

    fn assign(&mut self, target: &ast::Ident, value: &ast::Expr) {
        let (ty, uni) = self.expr(value);
        let name = &target.name;
        if let Some(i) = self.find_local(name) {
            let local = &mut self.locals[i];
            if local.ty != ty {
                let want = local.ty.name();
                self.out.push(Diagnostic::error(
                    "E0401",
                    format!("`{name}` holds {want}, but this is {}", ty.name()),
                    value.span,
                    format!("expected {want}"),
                ));
            }
            local.uni = uni;
            return;
        }
        let readonly = |code, msg: String, hint: &str| {
            Diagnostic::error(code, msg, target.span, "cannot be assigned").hint(hint)
        };
        match self.table.get(name) {
            Some(Symbol::Grad) => self.out.push(readonly(
                "E0301",
                "`g` is read-only".into(),
                "bind a local instead: `let grad = g + weight_decay * p`",
            )),
            Some(Symbol::Step) => self.out.push(readonly(
                "E0302",
                "`t` is read-only".into(),
                "`t` is the step number, kept by the runtime",
            )),
            Some(Symbol::Hyper(_)) => self.out.push(readonly(
                "E0303",
                format!("hyper `{name}` cannot be assigned"),
                "hypers are set from the host between steps; bind a local with `let` for a derived value",
            )),
            Some(Symbol::Flag(_)) | Some(Symbol::Count(_)) => self.out.push(readonly(
                "E0304",
                format!("flag `{name}` cannot be assigned"),
                "flags are fixed when the kernel is compiled",
            )),
            Some(Symbol::Param) | Some(Symbol::State(_)) | Some(Symbol::Scalar(_)) => {
                let sym = self.table.get(name);
                if ty == Ty::Bool {
                    self.out.push(Diagnostic::error(
                        "E0401",
                        format!("`{name}` holds a number, but this is a boolean"),
                        value.span,
                        "expected a number",
                    ));
                } else if let Err(d) = matrix::as_elements((ty, uni, value.span)) {
                    self.out.push(d);
                }
                match sym {
                    Some(Symbol::Param) => self.assigns_p = true,
                    Some(Symbol::State(i)) => {
                        self.written_states.insert(i);
                        let want = match self.table.state_shape(i) {
                            optc_kernel::StateShape::Rows => Some(Uniformity::Rows),
                            optc_kernel::StateShape::Cols => Some(Uniformity::Cols),
                            optc_kernel::StateShape::Full => None,
                        };
                        if let Some(want) = want.filter(|w| uni != *w && uni != Uniformity::Uniform) {
                            let hint = match uni {
                                Uniformity::PerElement if want == Uniformity::Rows => "reduce it over each row first, as in `row_mean(g * g)`",
                                Uniformity::PerElement => "reduce it over each column first, as in `col_mean(g * g)`",
                                _ => "a [rows] state takes [rows] values (and uniform ones); a [cols] state takes [cols] values",
                            };
                            self.out.push(
                                Diagnostic::error(
                                    "E0508",
                                    format!("`{name}` is {} state, but this is {}", if want == Uniformity::Rows { "a [rows]" } else { "a [cols]" }, uni.name()),
                                    value.span,
                                    format!("expected {}", want.name()),
                                )
                                .hint(hint),
                            );
                        }
                    }
                    Some(Symbol::Scalar(_)) if uni != Uniformity::Uniform => {
                        self.out.push(
                            Diagnostic::error(
                                "E0501",
                                format!("scalar state `{name}` must get a uniform value"),
                                value.span,
                                format!("this is {}", uni.name()),
                            )
                            .hint("a scalar state is one number per tensor; compute it from hypers, `t` and scalar states"),
                        );
                    }
                    _ => {}
                }
            }
            None => {
                let mut d = Diagnostic::error("E0105", format!("cannot assign to unknown name `{name}`"), target.span, "not declared");
                let names: Vec<String> = self.visible_names();
                if let Some(s) = suggest(name, names.iter().map(String::as_str)) {
                    d = d.hint(s);
                }
                d = d.hint(format!("declare a local with `let {name} = ...`, or a state with `state {name} = 0`"));
                self.out.push(d);
            }
        }
    }

    fn visible_names(&self) -> Vec<String> {
        self.table
            .all_names()
            .map(String::from)
            .chain(self.locals.iter().map(|l| l.name.clone()))
            .collect()
    }

    /// Checks an expression; gives its type and uniformity. After an error the type is a guess
    /// that avoids cascades.
    fn expr(&mut self, e: &ast::Expr) -> (Ty, Uniformity) {
        match &e.kind {
            ExprKind::Number(_) => (Ty::Num, Uniformity::Uniform),
            ExprKind::Bool(_) => (Ty::Bool, Uniformity::Uniform),
            ExprKind::Name(n) => self.name(n, e.span),
            ExprKind::Unary(op, a) => {
                let (ty, uni) = self.expr(a);
                if matrix::is_matrix(ty) && *op == UnaryOp::Neg {
                    return (ty, uni);
                }
                let want = if *op == UnaryOp::Not {
                    Ty::Bool
                } else {
                    Ty::Num
                };
                if ty != want {
                    let sym = if *op == UnaryOp::Not { "!" } else { "-" };
                    self.out.push(Diagnostic::error(
                        "E0403",
                        format!("`{sym}` needs {}, found {}", want.name(), ty.name()),
                        a.span,
                        format!("this is {}", ty.name()),
                    ));
                }
                (want, uni)
            }
            ExprKind::Binary(op, a, b) => {
                let (ta, ua) = self.expr(a);
                let (tb, ub) = self.expr(b);
                if let Some(r) = matrix::binary(*op, (ta, ua, a.span), (tb, ub, b.span), e.span) {
                    return self.matrix_result(r);
                }
                let uni = ua.join(ub);
                let (want, result) = if op.is_logical() {
                    (Some(Ty::Bool), Ty::Bool)
                } else if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
                    (None, Ty::Bool)
                } else if op.is_comparison() {
                    (Some(Ty::Num), Ty::Bool)
                } else {
                    (Some(Ty::Num), Ty::Num)
                };
                let sym = op.symbol();
                match want {
                    Some(w) => {
                        for (t, x) in [(ta, a), (tb, b)] {
                            if t != w {
                                self.out.push(
                                    Diagnostic::error(
                                        "E0403",
                                        format!("`{sym}` needs {}, found {}", w.name(), t.name()),
                                        x.span,
                                        format!("this is {}", t.name()),
                                    )
                                    .hint(if w == Ty::Num {
                                        "booleans are not numbers; choose a number with `cond ? a : b`"
                                    } else {
                                        "compare numbers to get a boolean, as in `x > 0`"
                                    }),
                                );
                            }
                        }
                    }
                    None if ta != tb => self.out.push(
                        Diagnostic::error(
                            "E0403",
                            format!("`{sym}` compares {} with {}", ta.name(), tb.name()),
                            e.span,
                            "mismatched types",
                        )
                        .hint("a flag or comparison is already a boolean: use it directly, or negate it with `!`"),
                    ),
                    None => {}
                }
                (result, uni)
            }
            ExprKind::Ternary(c, a, b) => {
                let (tc, uc) = self.expr(c);
                let (m_a, m_b) = (implies_matrix(c) as usize, implies_vector(c) as usize);
                self.under_matrix += m_a;
                let (ta, ua) = self.expr(a);
                self.under_matrix -= m_a;
                self.under_matrix += m_b;
                let (tb, ub) = self.expr(b);
                self.under_matrix -= m_b;
                if tc != Ty::Bool {
                    self.out.push(
                        Diagnostic::error(
                            "E0402",
                            "the condition of `?:` must be a boolean",
                            c.span,
                            "this is a number",
                        )
                        .hint("compare it, as in `x > 0 ? a : b`"),
                    );
                }
                // An m×n matrix and a per-element value: the value is lifted to its matrix.
                let wide = Ty::Matrix(optc_kernel::matrix::Dim::M, optc_kernel::matrix::Dim::N);
                let lifts = |x: Ty, y: Ty, uy: Uniformity| {
                    x == wide && y == Ty::Num && uy == Uniformity::PerElement
                };
                if lifts(ta, tb, ub) || lifts(tb, ta, ua) {
                    return (wide, Uniformity::PerElement);
                }
                if ta != tb {
                    self.out.push(
                        Diagnostic::error(
                            "E0404",
                            format!(
                                "the branches of `?:` differ: {} and {}",
                                ta.name(),
                                tb.name()
                            ),
                            b.span,
                            format!("this is {}", tb.name()),
                        )
                        .with(a.span, format!("this is {}", ta.name()))
                        .hint("both branches must be numbers, or both booleans"),
                    );
                }
                (ta, uc.join(ua).join(ub))
            }
            ExprKind::MatMul(a, b) => {
                self.first_matrix_op.get_or_insert(e.span);
                let (ta, ua) = self.expr(a);
                let (tb, ub) = self.expr(b);
                let r = matrix::matmul((ta, ua, a.span), (tb, ub, b.span));
                self.matrix_result(r.map(|t| (t, Uniformity::PerElement)))
            }
            ExprKind::Call(f, args) => {
                let typed: Vec<matrix::Operand> = args
                    .iter()
                    .map(|a| {
                        let (t, u) = self.expr(a);
                        (t, u, a.span)
                    })
                    .collect();
                if MATRIX_FUNCTIONS.iter().any(|(n, _)| *n == f.name) {
                    self.first_matrix_op.get_or_insert(e.span);
                    if args.len() != 1 {
                        self.out.push(
                            Diagnostic::error(
                                "E0107",
                                format!("`{}` takes 1 argument, found {}", f.name, args.len()),
                                e.span,
                                "expected 1 argument",
                            )
                            .hint(signature(&f.name)),
                        );
                        return (
                            Ty::Matrix(optc_kernel::matrix::Dim::M, optc_kernel::matrix::Dim::N),
                            Uniformity::PerElement,
                        );
                    }
                }
                if let Some(r) = matrix::call(&f.name, &typed, e.span) {
                    let uni = if matches!(r, Ok(Ty::Num)) {
                        Uniformity::Uniform
                    } else {
                        Uniformity::PerElement
                    };
                    return self.matrix_result(r.map(|t| (t, uni)));
                }
                let mut uni = Uniformity::Uniform;
                for (a, &(t, u, _)) in args.iter().zip(&typed) {
                    uni = uni.join(u);
                    // An m×n matrix passes here only as a reduction's argument (`matrix::call`).
                    let wide = Ty::Matrix(optc_kernel::matrix::Dim::M, optc_kernel::matrix::Dim::N);
                    if t != Ty::Num && t != wide {
                        self.out.push(Diagnostic::error(
                            "E0403",
                            format!("`{}` needs numbers, found a boolean", f.name),
                            a.span,
                            "this is a boolean",
                        ));
                    }
                }
                if let Some((_, arity)) = REDUCTIONS.iter().find(|(n, _)| *n == f.name) {
                    if *arity != args.len() {
                        let s = if *arity == 1 { "" } else { "s" };
                        self.out.push(
                            Diagnostic::error(
                                "E0107",
                                format!(
                                    "`{}` takes {arity} argument{s}, found {}",
                                    f.name,
                                    args.len()
                                ),
                                e.span,
                                format!("expected {arity} argument{s}"),
                            )
                            .hint(signature(&f.name)),
                        );
                    } else if let Some(u) = self.vector_reduction(&f.name, uni, e.span) {
                        return (Ty::Num, u);
                    } else if uni == Uniformity::Uniform {
                        self.out.push(
                            Diagnostic::error(
                                "E0503",
                                format!("`{}` of a uniform value", f.name),
                                e.span,
                                "every element has the same value here",
                            )
                            .hint(format!(
                                "`{}` reduces per-element values such as `g`, `p` or a state; \
                                 a uniform value needs no reduction",
                                f.name
                            )),
                        );
                    }
                    return (Ty::Num, Uniformity::Uniform);
                }
                match FUNCTIONS.iter().find(|(n, _)| *n == f.name) {
                    Some((_, 2)) if f.name == "max" && args.len() == 1 => {
                        self.out.push(
                            Diagnostic::error(
                                "E0107",
                                "`max` takes 2 arguments, found 1",
                                e.span,
                                "elementwise `max(a, b)` needs two values",
                            )
                            .hint("for the largest element of a tensor, use `amax(x)`"),
                        );
                    }
                    Some((_, arity)) if *arity != args.len() => {
                        let s = if *arity == 1 { "" } else { "s" };
                        self.out.push(
                            Diagnostic::error(
                                "E0107",
                                format!(
                                    "`{}` takes {arity} argument{s}, found {}",
                                    f.name,
                                    args.len()
                                ),
                                e.span,
                                format!("expected {arity} argument{s}"),
                            )
                            .hint(signature(&f.name)),
                        );
                    }
                    Some(_) => {}
                    None => {
                        let mut d = Diagnostic::error(
                            "E0106",
                            format!("unknown function `{}`", f.name),
                            f.span,
                            "not a built-in function",
                        );
                        let known = FUNCTIONS
                            .iter()
                            .chain(REDUCTIONS)
                            .chain(MATRIX_FUNCTIONS)
                            .map(|(n, _)| *n);
                        if let Some(s) = suggest(&f.name, known) {
                            d = d.hint(s);
                        }
                        d = d.hint("the built-in functions are sqrt, rsqrt, abs, sign, exp, log, min, max, clamp and lerp; the reductions are sum, mean, norm, dot, amax, global_norm, row_mean and col_mean");
                        self.out.push(d);
                    }
                }
                (Ty::Num, uni)
            }
        }
    }

    /// Reports the diagnostic of a matrix rule, or gives its type.
    fn matrix_result(&mut self, r: Result<(Ty, Uniformity), Diagnostic>) -> (Ty, Uniformity) {
        match r {
            Ok(x) => x,
            Err(d) => {
                self.out.push(d);
                (Ty::Num, Uniformity::PerElement)
            }
        }
    }

    fn name(&mut self, n: &str, span: Span) -> (Ty, Uniformity) {
        if let Some(i) = self.find_local(n) {
            return (self.locals[i].ty, self.locals[i].uni);
        }
        if n == "matrix" {
            self.reads_matrix = true;
        }
        match self.table.get(n) {
            Some(Symbol::Count(_)) => {
                self.out.push(
                    Diagnostic::error(
                        "E0804",
                        format!("`{n}` is a repeat count, not a value"),
                        span,
                        "an integer flag",
                    )
                    .hint(format!("use it as `repeat {n} {{ ... }}`")),
                );
                (Ty::Num, Uniformity::Uniform)
            }
            Some(sym) => {
                let uni = match sym {
                    Symbol::State(i) => match self.table.state_shape(i) {
                        optc_kernel::StateShape::Rows => Uniformity::Rows,
                        optc_kernel::StateShape::Cols => Uniformity::Cols,
                        optc_kernel::StateShape::Full => Uniformity::PerElement,
                    },
                    Symbol::Param | Symbol::Grad => Uniformity::PerElement,
                    _ => Uniformity::Uniform,
                };
                if uni.is_vector() && self.under_matrix == 0 {
                    self.out.push(self.not_under_matrix(
                        format!(
                            "`{n}` is {} state, which only matrices have",
                            if uni == Uniformity::Rows {
                                "a [rows]"
                            } else {
                                "a [cols]"
                            }
                        ),
                        span,
                    ));
                }
                if let Symbol::State(i) = sym {
                    self.read_states.insert(i);
                    if let Some(slot) = self.first_read.get_mut(i) {
                        slot.get_or_insert(span);
                    }
                }
                (symbol_type(sym), uni)
            }
            None => {
                let mut d =
                    Diagnostic::error("E0104", format!("unknown name `{n}`"), span, "not declared");
                if FUNCTIONS.iter().any(|(f, _)| *f == n) {
                    d = d.hint(format!("`{n}` is a function; call it, as in `{n}(x)`"));
                } else {
                    let names = self.visible_names();
                    if let Some(s) = suggest(n, names.iter().map(String::as_str)) {
                        d = d.hint(s);
                    }
                }
                self.out.push(d);
                (Ty::Num, Uniformity::Uniform)
            }
        }
    }
}

impl Checker<'_> {
    /// The row and column rules of reductions: `row_mean`/`col_mean` take a per-element value
    /// and give a `[rows]`/`[cols]` one, under `matrix` (E0505); `mean` of a `[rows]`/`[cols]`
    /// value is its per-matrix mean (a value of the same kind); every other reduction of a
    /// `[rows]`/`[cols]` value is E0507. Returns the result's uniformity when the reduction is
    /// one of these (after reporting any error), `None` for an ordinary tensor reduction.
    fn vector_reduction(&mut self, f: &str, arg: Uniformity, span: Span) -> Option<Uniformity> {
        let result = match f {
            "row_mean" | "col_mean" => {
                if self.under_matrix == 0 {
                    self.out
                        .push(self.not_under_matrix(format!("`{f}` needs a matrix"), span));
                }
                if arg == Uniformity::Uniform {
                    self.out.push(
                        Diagnostic::error("E0503", format!("`{f}` of a uniform value"), span, "every element has the same value here")
                            .hint(format!("`{f}` reduces per-element values such as `g * g`; a uniform value needs no reduction")),
                    );
                } else if arg.is_vector() {
                    self.out.push(
                        Diagnostic::error(
                            "E0507",
                            format!("`{f}` reduces a per-element value, but this is {}", arg.name()),
                            span,
                            format!("`{f}` of {}", arg.name()),
                        )
                        .hint("`mean(x)` of a [rows] or [cols] value averages it over the rows or columns of each matrix"),
                    );
                }
                if f == "row_mean" {
                    Uniformity::Rows
                } else {
                    Uniformity::Cols
                }
            }
            "mean" if arg.is_vector() => arg,
            _ if arg.is_vector() => {
                self.out.push(
                    Diagnostic::error(
                        "E0507",
                        format!("`{f}` of {}", arg.name()),
                        span,
                        "reductions over the tensor take per-element values",
                    )
                    .hint("`mean(x)` of a [rows] or [cols] value averages it over the rows or columns of each matrix; it is the only reduction of such values"),
                );
                Uniformity::Uniform
            }
            _ => return None,
        };
        Some(result)
    }

    fn not_under_matrix(&self, message: String, span: Span) -> Diagnostic {
        Diagnostic::error("E0505", message, span, "used where the tensor may have rank 0 or 1")
            .hint("use it under `if matrix { ... }` (or `matrix ? ... : ...`) and give tensors of rank 0 or 1 their own update, as torch's Adafactor does")
    }
}

fn signature(f: &str) -> String {
    match f {
        "min" | "max" => format!("usage: {f}(a, b)"),
        "clamp" => "usage: clamp(x, lo, hi)".into(),
        "lerp" => "usage: lerp(a, b, w) = a + w * (b - a)".into(),
        "dot" => "usage: dot(a, b) = sum(a * b) over the tensor".into(),
        "transpose" => "usage: transpose(x), x a matrix or the tensor's values".into(),
        "round_bf16" => "usage: round_bf16(x), every element rounded to bfloat16".into(),
        _ => format!("usage: {f}(x)"),
    }
}
