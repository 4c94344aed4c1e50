//! `[rows]` and `[cols]` values: the host's vector program of a matrix kernel.
//!
//! A tensor of rank >= 2 is seen as `batch` matrices of `rows × cols` (the last two dims; the
//! leading dims are the batch, as torch's Adafactor factors them). A `[rows]` value has one
//! number per row (`batch · rows`, batch-major), a `[cols]` value one per column
//! (`batch · cols`). Row- and Col-scope reductions give such values; `[rows]`/`[cols]` states
//! hold them.
//!
//! The [`VectorProgram`] computes them on the host in f64, per tensor and step, between stages
//! (`docs/stages.md`, "Row and column values"): its nodes are evaluated lane by lane (a uniform
//! input is the same for every lane), `VecMean` sums a matrix's lanes in f64 in increasing order
//! and divides by their count, and each store's value is rounded to f32 where it is computed, so
//! every later use reads exactly what the state will hold. A stage reads the program's values as
//! `Expr::Vector` leaves: the value at the element's row, or at its column. The new values of
//! `[rows]`/`[cols]` states are written after the last stage of the step.

use crate::arena::{Arena, Handle};
use crate::expr::{Expr, Slot};
use crate::kernel::{Kernel, KernelError, StateShape, Store};
use crate::op::{select, Real};
use crate::reduce::{combine, ReduceOp, Scope};
use serde::{Deserialize, Serialize};

/// A tensor seen as `batch` matrices of `rows × cols` (row-major, batch-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatrixDims {
    /// The product of the leading dims (1 for a 2-D tensor).
    pub batch: usize,
    /// The second-to-last dim.
    pub rows: usize,
    /// The last dim.
    pub cols: usize,
}

impl MatrixDims {
    /// The dims of a tensor of `shape`, `None` for rank < 2 (or a size overflow).
    pub fn of_shape(shape: &[usize]) -> Option<MatrixDims> {
        match shape {
            [lead @ .., rows, cols] => {
                let batch = lead.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
                batch.checked_mul(*rows)?.checked_mul(*cols)?;
                Some(MatrixDims {
                    batch,
                    rows: *rows,
                    cols: *cols,
                })
            }
            _ => None,
        }
    }

    /// Elements of the tensor.
    pub fn numel(self) -> usize {
        self.batch * self.rows * self.cols
    }

    /// Values of a vector of `shape`: `batch · rows`, `batch · cols`, or `numel` for `Full`.
    pub fn len(self, shape: StateShape) -> usize {
        match shape {
            StateShape::Full => self.numel(),
            StateShape::Rows => self.batch * self.rows,
            StateShape::Cols => self.batch * self.cols,
        }
    }

    /// The row (in `0..batch·rows`) of element `i`.
    pub fn row_of(self, i: usize) -> usize {
        i / self.cols.max(1)
    }

    /// The column (in `0..batch·cols`) of element `i`.
    pub fn col_of(self, i: usize) -> usize {
        let per = (self.rows * self.cols).max(1);
        (i / per) * self.cols + i % self.cols.max(1)
    }
}

/// The lanes a vector value has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VecShape {
    /// One value, the same for every lane (an input or a literal).
    One,
    /// One per row.
    Rows,
    /// One per column.
    Cols,
}

impl VecShape {
    /// The shape of a state of `shape` (`None` for a full-shape state).
    pub fn of_state(shape: StateShape) -> Option<VecShape> {
        match shape {
            StateShape::Full => None,
            StateShape::Rows => Some(VecShape::Rows),
            StateShape::Cols => Some(VecShape::Cols),
        }
    }

    /// The shape of an op over operands of shapes `a` and `b` (`None`: rows with columns).
    pub fn join(a: VecShape, b: VecShape) -> Option<VecShape> {
        match (a, b) {
            (VecShape::One, x) | (x, VecShape::One) => Some(x),
            (x, y) if x == y => Some(x),
            _ => None,
        }
    }

    /// The state shape of a value of this shape.
    pub fn state_shape(self) -> StateShape {
        match self {
            VecShape::Rows => StateShape::Rows,
            VecShape::Cols => StateShape::Cols,
            VecShape::One => StateShape::Full,
        }
    }
}

/// The host's vector program of a kernel (empty for kernels without `[rows]`/`[cols]` values).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VectorProgram {
    /// The nodes, run in f64. Leaves: `Const`, `Bool`, `Uniform(i)` (the host value
    /// `inputs[i]`), `Reduced(r)` (a Row- or Col-scope reduction), `Load(State(s))` (a
    /// `[rows]`/`[cols]` state as it was when the step began); ops: `Unary`, `Binary`, `Select`,
    /// `VecMean`.
    pub nodes: Arena<Expr>,
    /// The host-program nodes the program reads.
    pub inputs: Vec<Handle<Expr>>,
    /// Per stage, the nodes its body reads: `Expr::Vector(i)` of stage `k` is
    /// `nodes[stages[k][i]]` (a missing entry: none).
    pub stages: Vec<Vec<Handle<Expr>>>,
    /// The new values of `[rows]`/`[cols]` states, rounded to f32, written after the last stage.
    pub stores: Vec<Store>,
}

impl VectorProgram {
    /// Whether the program is empty (the kernel has no `[rows]`/`[cols]` values).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.stores.is_empty()
    }

    /// The nodes stage `stage` reads.
    pub fn stage(&self, stage: usize) -> &[Handle<Expr>] {
        self.stages.get(stage).map_or(&[], Vec::as_slice)
    }
}

impl Kernel {
    /// The shape of every node of [`Kernel::vectors`], or what is wrong with the program.
    pub fn vector_shapes(&self) -> Result<Vec<VecShape>, KernelError> {
        let v = &self.vectors;
        let err = |reason: String| KernelError {
            rule: self.rule.clone(),
            reason: format!("vector program: {reason}"),
        };
        let mut shapes: Vec<VecShape> = Vec::with_capacity(v.nodes.len());
        for (h, e) in v.nodes.iter() {
            if e.operands().any(|o| o.index() >= h.index()) {
                return Err(err(format!("node {} uses a later node", h.index())));
            }
            let s = match *e {
                Expr::Const(_) | Expr::Bool(_) => VecShape::One,
                Expr::Uniform(u) if u.index() < v.inputs.len() => VecShape::One,
                Expr::Reduced(r) => match self.reductions.get(r.index()).map(|d| d.scope) {
                    Some(Scope::Row) => VecShape::Rows,
                    Some(Scope::Col) => VecShape::Cols,
                    _ => {
                        return Err(err(format!(
                            "node {} reads a reduction that is not a row or column one",
                            h.index()
                        )))
                    }
                },
                Expr::Load(Slot::State(s)) => {
                    match self
                        .states
                        .get(s.index())
                        .and_then(|d| VecShape::of_state(d.shape))
                    {
                        Some(shape) => shape,
                        None => {
                            return Err(err(format!(
                                "node {} loads a state that is not [rows] or [cols]",
                                h.index()
                            )))
                        }
                    }
                }
                Expr::VecMean(a) => match shapes[a.index()] {
                    VecShape::One => {
                        return Err(err(format!(
                            "node {} is the mean of a uniform value",
                            h.index()
                        )))
                    }
                    s => s,
                },
                Expr::Unary(..) | Expr::Binary(..) | Expr::Select(..) => {
                    let mut s = VecShape::One;
                    for o in e.operands() {
                        s = VecShape::join(s, shapes[o.index()]).ok_or_else(|| {
                            err(format!("node {} mixes [rows] and [cols] values", h.index()))
                        })?;
                    }
                    s
                }
                ref other => {
                    return Err(err(format!(
                        "node {} is not allowed here: {other:?}",
                        h.index()
                    )))
                }
            };
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// Checks the vector program against the rest of the kernel (part of [`Kernel::validate`]).
    pub(crate) fn validate_vectors(&self) -> Result<(), KernelError> {
        let v = &self.vectors;
        let err = |reason: String| KernelError {
            rule: self.rule.clone(),
            reason: format!("vector program: {reason}"),
        };
        let shapes = self.vector_shapes()?;
        if v.inputs.iter().any(|h| h.index() >= self.host.len()) {
            return Err(err("an input refers outside the host program".into()));
        }
        if v.stages.len() > self.stages.len() {
            return Err(err("more vector lists than stages".into()));
        }
        // The latest stage whose reductions each node reads.
        let mut after: Vec<Option<usize>> = Vec::with_capacity(v.nodes.len());
        for (_, e) in v.nodes.iter() {
            let own = match e {
                Expr::Reduced(r) => Some(self.reductions[r.index()].stage),
                _ => None,
            };
            after.push(e.operands().map(|o| after[o.index()]).fold(own, Ord::max));
        }
        for (k, list) in v.stages.iter().enumerate() {
            for h in list {
                let i = h.index();
                if i >= v.nodes.len() || shapes[i] == VecShape::One {
                    return Err(err(format!(
                        "a vector of stage {k} is out of range or uniform"
                    )));
                }
                if after[i].is_some_and(|s| s >= k) {
                    return Err(err(format!(
                        "a vector of stage {k} reads a reduction of stage {k} or later"
                    )));
                }
            }
        }
        let mut stored = Vec::new();
        for s in &v.stores {
            let Slot::State(id) = s.slot else {
                return Err(err("a vector store writes p or g".into()));
            };
            let shape = self.states.get(id.index()).map(|d| d.shape);
            let want = shape.and_then(VecShape::of_state);
            let got = shapes.get(s.value.index()).copied();
            if want.is_none() || got.is_none_or(|g| g != VecShape::One && Some(g) != want) {
                return Err(err(format!(
                    "state {} gets a value of another shape",
                    id.index()
                )));
            }
            if stored.contains(&id) || self.stages.iter().any(|st| st.stores_slot(s.slot)) {
                return Err(err(format!("state {} is stored twice", id.index())));
            }
            stored.push(id);
        }
        for (k, st) in self.stages.iter().enumerate() {
            let nv = v.stage(k).len();
            for (h, e) in st.body.iter() {
                match *e {
                    Expr::Vector(i) if i.index() >= nv => {
                        return Err(err(format!(
                            "stage {k} node {} reads vector {} of {nv}",
                            h.index(),
                            i.index()
                        )))
                    }
                    Expr::Load(Slot::State(s))
                        if self
                            .states
                            .get(s.index())
                            .is_some_and(|d| d.shape != StateShape::Full) =>
                    {
                        return Err(err(format!(
                            "stage {k} loads a [rows] or [cols] state per element"
                        )))
                    }
                    _ => {}
                }
            }
            if st.stores.iter().any(|s| matches!(s.slot, Slot::State(id) if self.states.get(id.index()).is_some_and(|d| d.shape != StateShape::Full))) {
                return Err(err(format!("stage {k} stores a [rows] or [cols] state per element")));
            }
        }
        Ok(())
    }

    /// Evaluates the vector program for one tensor of `dims`: `inputs` from
    /// [`crate::HostValues::inputs`], `reduced[r]` the values of each Row- or Col-scope reduction
    /// finalized so far (empty: not yet, read as NaN), `states[s]` each `[rows]`/`[cols]` state as
    /// it was when the step began (empty for other states), in the storage type `R` (f32; f64 for
    /// the interpreter's f64 mode), to which stored values are rounded. Returns every node's
    /// values (one value for a uniform node).
    pub fn eval_vectors<R: Real>(
        &self,
        dims: MatrixDims,
        inputs: &[f64],
        reduced: &[Vec<f64>],
        states: &[&[R]],
    ) -> Result<Vec<Vec<f64>>, KernelError> {
        let v = &self.vectors;
        let shapes = self.vector_shapes()?;
        let err = |reason: String| KernelError {
            rule: self.rule.clone(),
            reason: format!("vector program: {reason}"),
        };
        let lanes = |s: VecShape| match s {
            VecShape::One => 1,
            VecShape::Rows => dims.len(StateShape::Rows),
            VecShape::Cols => dims.len(StateShape::Cols),
        };
        let rounded: Vec<bool> = (0..v.nodes.len())
            .map(|i| v.stores.iter().any(|s| s.value.index() == i))
            .collect();
        let mut values: Vec<Vec<f64>> = Vec::with_capacity(v.nodes.len());
        for (h, e) in v.nodes.iter() {
            let n = lanes(shapes[h.index()]);
            let lane = |x: &Vec<f64>, i: usize| if x.len() == 1 { x[0] } else { x[i] };
            let mut out: Vec<f64> = match *e {
                Expr::Const(c) => vec![c],
                Expr::Bool(b) => vec![if b { 1.0 } else { 0.0 }],
                Expr::Uniform(u) => vec![*inputs
                    .get(u.index())
                    .ok_or_else(|| err("too few inputs".into()))?],
                Expr::Reduced(r) => match reduced.get(r.index()) {
                    Some(x) if x.len() == n => x.clone(),
                    _ => vec![f64::NAN; n],
                },
                Expr::Load(Slot::State(s)) => match states.get(s.index()) {
                    Some(x) if x.len() == n => x.iter().map(|&y| y.to_f64()).collect(),
                    _ => return Err(err(format!("state {} has the wrong length", s.index()))),
                },
                Expr::VecMean(a) => {
                    let x = &values[a.index()];
                    let per = n / dims.batch.max(1);
                    let mut out = Vec::with_capacity(n);
                    for m in x.chunks(per.max(1)) {
                        let mean = combine(ReduceOp::Sum, m.iter().copied()) / per as f64;
                        out.extend(std::iter::repeat_n(mean, m.len()));
                    }
                    out
                }
                Expr::Unary(op, a) => {
                    let x = &values[a.index()];
                    (0..n).map(|i| f64::unary(op, lane(x, i))).collect()
                }
                Expr::Binary(op, a, b) => {
                    let (x, y) = (&values[a.index()], &values[b.index()]);
                    (0..n)
                        .map(|i| f64::binary(op, lane(x, i), lane(y, i)))
                        .collect()
                }
                Expr::Select(c, a, b) => {
                    let (c, x, y) = (&values[c.index()], &values[a.index()], &values[b.index()]);
                    (0..n)
                        .map(|i| select(lane(c, i), lane(x, i), lane(y, i)))
                        .collect()
                }
                _ => return Err(err(format!("node {} is not allowed here", h.index()))),
            };
            if rounded[h.index()] {
                for x in &mut out {
                    *x = R::from_f64(*x).to_f64();
                }
            }
            values.push(out);
        }
        Ok(values)
    }

    /// The values stage `stage` reads (`Expr::Vector` leaves), rounded to `R`, from the node
    /// values of [`Kernel::eval_vectors`].
    pub fn stage_vectors<R: Real>(&self, stage: usize, values: &[Vec<f64>]) -> Vec<Vec<R>> {
        self.vectors
            .stage(stage)
            .iter()
            .map(|h| values[h.index()].iter().map(|&x| R::from_f64(x)).collect())
            .collect()
    }

    /// The new value of each stored `[rows]`/`[cols]` state (state index, values), from the node
    /// values of [`Kernel::eval_vectors`] with every reduction known; a uniform value is spread
    /// over the state's lanes.
    pub fn vector_stores<R: Real>(
        &self,
        dims: MatrixDims,
        values: &[Vec<f64>],
    ) -> Vec<(usize, Vec<R>)> {
        self.vectors
            .stores
            .iter()
            .filter_map(|s| match s.slot {
                Slot::State(id) => {
                    let len = dims.len(self.states[id.index()].shape);
                    let x = &values[s.value.index()];
                    let v = if x.len() == 1 {
                        vec![R::from_f64(x[0]); len]
                    } else {
                        x.iter().map(|&y| R::from_f64(y)).collect()
                    };
                    Some((id.index(), v))
                }
                _ => None,
            })
            .collect()
    }

    /// The shape of each value stage `stage` reads (`Rows` or `Cols`), in `Expr::Vector` order.
    pub fn stage_vector_shapes(&self, stage: usize) -> Result<Vec<VecShape>, KernelError> {
        let shapes = self.vector_shapes()?;
        Ok(self
            .vectors
            .stage(stage)
            .iter()
            .map(|h| shapes.get(h.index()).copied().unwrap_or(VecShape::One))
            .collect())
    }

    /// Whether some reduction has Row or Col scope, or some state is `[rows]`/`[cols]`: the
    /// kernel needs its tensors' matrix dims.
    pub fn is_factored(&self) -> bool {
        !self.vectors.is_empty()
            || self
                .reductions
                .iter()
                .any(|r| matches!(r.scope, Scope::Row | Scope::Col))
            || self.states.iter().any(|s| s.shape != StateShape::Full)
    }
}
