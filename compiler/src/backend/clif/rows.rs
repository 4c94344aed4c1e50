//! The row form of a kernel with `[rows]`/`[cols]` values: how the CPU backend runs Row and Col
//! scopes without new code generation.
//!
//! A factored kernel ([`Kernel::is_factored`]) runs one call of each stage per row of the tensor
//! (`cols` elements; see `docs/stages.md`, "Row and column values"). [`row_form`] rewrites it into
//! an ordinary kernel (full-shape buffers, Tensor-scope reduce outputs) that [`super::emit`]
//! lowers as usual, whose stage `k` takes, per row call:
//!
//! - the stage's uniforms, then one uniform per `[rows]` value the stage reads (that row's
//!   value, splat by the usual uniform lowering), in [`RowStage::row_vectors`] order;
//! - the buffers `p`, `g`, every state of the original kernel (`[rows]`/`[cols]` states are never
//!   accessed), then one buffer per `[cols]` value the stage reads (the matrix's `cols` values,
//!   which line up with the row's elements), then one accumulator buffer per Col-scope reduce
//!   output, updated as `acc = acc ⊕ x` for each element: the column fold of
//!   [`optc_kernel::reduce::col_partials`], when the runtime gives each block of
//!   [`optc_kernel::COL_BLOCK_ROWS`] rows its own accumulator starting at the identity;
//! - reduce outputs for the stage's Row-, Tensor- and Step-scope outputs, whose block partials
//!   over the row are exactly [`optc_kernel::reduce::row_partials`] of that row.

use optc_kernel::{
    Arena, BinaryOp, Expr, Handle, Init, Kernel, RankClass, ReduceOp, ReduceOutput, ReductionDecl,
    ReductionId, Scope, Slot, Stage, StateDecl, StateId, StateShape, Store, UniformId, VecShape,
};

/// How one stage of the row form maps to the original kernel's stage.
#[derive(Clone, Debug, PartialEq)]
pub struct RowStage {
    /// The original stage's uniform count: the row values follow.
    pub uniforms: usize,
    /// The stage vectors (`Expr::Vector` ids) passed as uniforms, in order.
    pub row_vectors: Vec<usize>,
    /// The stage vectors passed as buffers (`[cols]`), in order; the first is buffer
    /// [`RowForm::buffers_of`]`(k).0`.
    pub col_vectors: Vec<usize>,
    /// The Col-scope reduce outputs (positions in the original `Stage::reduce`) and their ops,
    /// each with an accumulator buffer after the `[cols]` value buffers.
    pub col_outputs: Vec<(usize, ReduceOp)>,
    /// For each reduce output of the row form's stage, its position in the original
    /// `Stage::reduce`.
    pub outputs: Vec<usize>,
}

/// A factored kernel rewritten for per-row calls. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct RowForm {
    /// The rewritten kernel: full-shape states only, no vector program.
    pub kernel: Kernel,
    /// Per stage, how it maps back.
    pub stages: Vec<RowStage>,
    /// The original kernel's state count (the extra buffers follow them).
    pub states: usize,
}

impl RowForm {
    /// The buffer index (in the row form's `Kernel::buffers` order) of the first `[cols]` value
    /// buffer of stage `k`, and of its first Col accumulator.
    pub fn buffers_of(&self, k: usize) -> (usize, usize) {
        let before: usize = self.stages[..k]
            .iter()
            .map(|s| s.col_vectors.len() + s.col_outputs.len())
            .sum();
        let first = 2 + self.states + before;
        (first, first + self.stages[k].col_vectors.len())
    }
}

/// The row form of a factored kernel (valid). Errors if a stage loads a `[rows]`/`[cols]` state
/// per element (a valid kernel never does).
pub fn row_form(kernel: &Kernel) -> Result<RowForm, super::Error> {
    let unsupported = |what: &str| super::Error::Unsupported {
        rule: kernel.rule.clone(),
        what: what.to_string(),
    };
    let mut states: Vec<StateDecl> = kernel
        .states
        .iter()
        .map(|s| StateDecl {
            shape: StateShape::Full,
            ..s.clone()
        })
        .collect();
    let mut host = Arena::new();
    let dummy = host.append(Expr::Const(0.0));
    let mut init = kernel.init.clone();
    let zero = init.append(Expr::Const(0.0));
    let mut reductions: Vec<ReductionDecl> = Vec::new();
    let mut stages = Vec::with_capacity(kernel.stages.len());
    let mut row_stages = Vec::with_capacity(kernel.stages.len());
    for (k, st) in kernel.stages.iter().enumerate() {
        if st.matrix.is_some() {
            return Err(unsupported(
                "a matrix stage in a kernel with [rows]/[cols] values",
            ));
        }
        let shapes = kernel.stage_vector_shapes(k)?;
        let nu = st.uniforms.len();
        let mut rs = RowStage {
            uniforms: nu,
            row_vectors: Vec::new(),
            col_vectors: Vec::new(),
            col_outputs: Vec::new(),
            outputs: Vec::new(),
        };
        for (i, s) in shapes.iter().enumerate() {
            match s {
                VecShape::Rows => rs.row_vectors.push(i),
                VecShape::Cols => rs.col_vectors.push(i),
                VecShape::One => return Err(unsupported("a uniform stage vector")),
            }
        }
        let extra = |name: String, states: &mut Vec<StateDecl>| {
            states.push(StateDecl {
                name,
                init: Init::Value(zero),
                shape: StateShape::Full,
            });
            Slot::State(StateId::new(states.len() - 1))
        };
        let col_slots: Vec<Slot> = rs
            .col_vectors
            .iter()
            .map(|v| extra(format!("stage {k} [cols] v{v}"), &mut states))
            .collect();
        let mut body = Arena::new();
        let mut map: Vec<Handle<Expr>> = Vec::with_capacity(st.body.len());
        for (_, e) in st.body.iter() {
            let e = match *e {
                Expr::Vector(v) => {
                    let i = v.index();
                    match rs.row_vectors.iter().position(|&r| r == i) {
                        Some(p) => Expr::Uniform(UniformId::new(nu + p)),
                        None => match rs.col_vectors.iter().position(|&c| c == i) {
                            Some(p) => Expr::Load(col_slots[p]),
                            None => return Err(unsupported("a stage vector out of range")),
                        },
                    }
                }
                Expr::Load(Slot::State(s))
                    if kernel.states[s.index()].shape != StateShape::Full =>
                {
                    return Err(unsupported("a per-element load of a [rows]/[cols] state"))
                }
                ref other => other.map_operands(|o| map[o.index()]),
            };
            map.push(body.append(e));
        }
        let mut stores: Vec<Store> = st
            .stores
            .iter()
            .map(|s| Store {
                slot: s.slot,
                value: map[s.value.index()],
            })
            .collect();
        let mut reduce = Vec::new();
        for (pos, out) in st.reduce.iter().enumerate() {
            let decl = &kernel.reductions[out.reduction.index()];
            let value = map[out.value.index()];
            if decl.scope == Scope::Col {
                let slot = extra(format!("stage {k} col acc {}", decl.name), &mut states);
                let acc = body.append(Expr::Load(slot));
                let op = match decl.op {
                    ReduceOp::Sum => BinaryOp::Add,
                    ReduceOp::Max => BinaryOp::Max,
                };
                let folded = body.append(Expr::Binary(op, acc, value));
                stores.push(Store {
                    slot,
                    value: folded,
                });
                rs.col_outputs.push((pos, decl.op));
            } else {
                reductions.push(ReductionDecl {
                    name: decl.name.clone(),
                    op: decl.op,
                    scope: Scope::Tensor,
                    stage: k,
                });
                reduce.push(ReduceOutput {
                    reduction: ReductionId::new(reductions.len() - 1),
                    value,
                });
                rs.outputs.push(pos);
            }
        }
        stages.push(Stage {
            matrix: None,
            uniforms: vec![dummy; nu + rs.row_vectors.len()],
            body,
            stores,
            reduce,
        });
        row_stages.push(rs);
    }
    // The extra buffers are f32.
    let mut storage = kernel.storage.clone();
    if !storage.states.is_empty() {
        storage.states.resize(states.len(), optc_kernel::Dtype::F32);
    }
    let form = Kernel {
        rule: kernel.rule.clone(),
        flags: kernel.flags.clone(),
        hypers: kernel.hypers.clone(),
        states,
        scalars: Vec::new(),
        init,
        rank: RankClass::Any,
        host,
        scalar_updates: Vec::new(),
        reductions,
        stages,
        vectors: Default::default(),
        variant: kernel.variant.clone(),
        storage,
    };
    form.validate()?;
    Ok(RowForm {
        kernel: form,
        stages: row_stages,
        states: kernel.states.len(),
    })
}
