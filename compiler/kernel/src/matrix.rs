//! Matrix programs: the library-call part of a stage (`docs/stages.md`, "Matrix stages").
//!
//! A [`MatrixProgram`] runs once per tensor at the start of its stage, before the stage's
//! per-element pass, which sees what it wrote. It reads buffers of the tensor viewed as its
//! **wide matrix** and writes buffers back through the same view:
//!
//! - a tensor of `rows × cols` (dim 0 × the product of the others) with `rows <= cols` is the
//!   matrix `m × n = rows × cols`, in memory order;
//! - one with `rows > cols` is seen transposed, `m × n = cols × rows`, as Muon's reference
//!   (`zeropower_via_newtonschulz`) transposes it, so that `X Xᵀ` is the smaller Gram matrix.
//!
//! Its values are matrices whose shapes are products of the symbols `m` and `n`. The nodes are
//! evaluated in order in f32; [`run`] with [`reference_matmul`] is their meaning (a plain triple
//! loop); the CPU runtime computes the products with the `gemm` crate and CUDA with cuBLAS,
//! within the budgets of `docs/stages.md`.

use crate::expr::{HyperId, Slot, UniformId};

/// The host leaf `rows`: dim 0 of the tensor (matrix kernels; see [`crate::Kernel::eval_host_for`]).
pub const ROWS: HyperId = HyperId(u32::MAX - 1);
/// The host leaf `cols`: the product of the tensor's other dims.
pub const COLS: HyperId = HyperId(u32::MAX - 2);
use serde::{Deserialize, Serialize};

/// A scalar coefficient of a matrix node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coef {
    /// A literal.
    Const(#[serde(with = "crate::num")] f64),
    /// A uniform of the stage (host-computed, rounded to f32).
    Uniform(UniformId),
}

/// A node of a matrix program; operands are earlier nodes, by index.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatExpr {
    /// A buffer of the tensor, as its wide `m × n` matrix.
    Buffer(Slot),
    /// The transpose.
    Transpose(u32),
    /// The matrix product.
    MatMul(u32, u32),
    /// A matrix times a scalar.
    Scale(Coef, u32),
    /// The sum of two matrices of one shape.
    Add(u32, u32),
    /// The difference of two matrices of one shape.
    Sub(u32, u32),
    /// The negation.
    Neg(u32),
    /// Every element rounded to bfloat16 (round to nearest even), kept in f32.
    RoundBf16(u32),
}

impl MatExpr {
    /// The operands.
    pub fn operands(&self) -> Vec<usize> {
        match *self {
            MatExpr::Buffer(_) => vec![],
            MatExpr::Transpose(a)
            | MatExpr::Scale(_, a)
            | MatExpr::Neg(a)
            | MatExpr::RoundBf16(a) => vec![a as usize],
            MatExpr::MatMul(a, b) | MatExpr::Add(a, b) | MatExpr::Sub(a, b) => {
                vec![a as usize, b as usize]
            }
        }
    }
}

/// A dimension symbol of a matrix shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// The short side of the tensor (`min(rows, cols)`).
    M,
    /// The long side.
    N,
}

impl Dim {
    /// Its name in IR text and diagnostics.
    pub fn name(self) -> &'static str {
        match self {
            Dim::M => "m",
            Dim::N => "n",
        }
    }
}

/// A node written to a buffer when the program ends.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatOutput {
    /// The buffer (a state of the kernel, never `p` or `g`).
    pub slot: Slot,
    /// The node; its shape is `m × n`.
    pub node: u32,
}

/// The matrix part of a stage. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MatrixProgram {
    /// The nodes, in evaluation order.
    pub nodes: Vec<MatExpr>,
    /// What is written back.
    pub outputs: Vec<MatOutput>,
}

/// The wide view of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WideView {
    /// Dim 0 of the tensor.
    pub rows: usize,
    /// The product of its other dims.
    pub cols: usize,
}

impl WideView {
    /// The view of a tensor of `shape` (at least 2 dims), or `None`.
    pub fn of_shape(shape: &[usize]) -> Option<WideView> {
        match shape {
            [rows, rest @ ..] if !rest.is_empty() => Some(WideView {
                rows: *rows,
                cols: rest.iter().product(),
            }),
            _ => None,
        }
    }
    /// Whether the tensor is seen transposed (`rows > cols`).
    pub fn transposed(self) -> bool {
        self.rows > self.cols
    }
    /// `m`, the short side.
    pub fn m(self) -> usize {
        self.rows.min(self.cols)
    }
    /// `n`, the long side.
    pub fn n(self) -> usize {
        self.rows.max(self.cols)
    }
    /// The size of a dimension symbol.
    pub fn size(self, d: Dim) -> usize {
        match d {
            Dim::M => self.m(),
            Dim::N => self.n(),
        }
    }
}

/// A dense row-major f32 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f32>,
}

impl Mat {
    /// The transpose (an exact copy).
    pub fn transpose(&self) -> Mat {
        let mut data = vec![0.0; self.data.len()];
        for i in 0..self.rows {
            for j in 0..self.cols {
                data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        Mat {
            rows: self.cols,
            cols: self.rows,
            data,
        }
    }
}

/// The reference product: `c[i][j] = Σ_k a[i][k] · b[k][j]` in f32, `k` ascending from `+0`,
/// each product and each sum rounded (no fused multiply-add). This order defines the result.
pub fn reference_matmul(a: &Mat, b: &Mat) -> Mat {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut data = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for l in 0..k {
                acc += a.data[i * k + l] * b.data[l * n + j];
            }
            data[i * n + j] = acc;
        }
    }
    Mat {
        rows: m,
        cols: n,
        data,
    }
}

/// Rounds an f32 to the nearest bfloat16 (ties to even), as torch's `.to(torch.bfloat16)`;
/// NaN stays NaN.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7fff + lsb) & 0xffff_0000;
    f32::from_bits(rounded)
}

impl MatrixProgram {
    /// The shape of every node, or why the program does not hold together (operands out of
    /// order, inner dimensions that differ, an output that is not `m × n`).
    pub fn shapes(&self, uniforms: usize) -> Result<Vec<(Dim, Dim)>, String> {
        let mut shapes: Vec<(Dim, Dim)> = Vec::with_capacity(self.nodes.len());
        for (i, e) in self.nodes.iter().enumerate() {
            if e.operands().iter().any(|&o| o >= i) {
                return Err(format!("matrix node {i} uses a later node"));
            }
            let s = |o: u32| shapes[o as usize];
            let shape = match *e {
                MatExpr::Buffer(_) => (Dim::M, Dim::N),
                MatExpr::Transpose(a) => (s(a).1, s(a).0),
                MatExpr::MatMul(a, b) => {
                    if s(a).1 != s(b).0 {
                        return Err(format!(
                            "matrix node {i}: a product of {}×{} by {}×{}",
                            s(a).0.name(),
                            s(a).1.name(),
                            s(b).0.name(),
                            s(b).1.name()
                        ));
                    }
                    (s(a).0, s(b).1)
                }
                MatExpr::Add(a, b) | MatExpr::Sub(a, b) => {
                    if s(a) != s(b) {
                        return Err(format!("matrix node {i}: operands of different shapes"));
                    }
                    s(a)
                }
                MatExpr::Scale(c, a) => {
                    if let Coef::Uniform(u) = c {
                        if u.index() >= uniforms {
                            return Err(format!("matrix node {i}: uniform out of range"));
                        }
                    }
                    s(a)
                }
                MatExpr::Neg(a) | MatExpr::RoundBf16(a) => s(a),
            };
            shapes.push(shape);
        }
        for o in &self.outputs {
            match shapes.get(o.node as usize) {
                Some((Dim::M, Dim::N)) => {}
                Some(_) => return Err("a matrix output is not m×n".into()),
                None => return Err("a matrix output is out of range".into()),
            }
            if matches!(o.slot, Slot::Param | Slot::Grad) {
                return Err("a matrix output writes p or g".into());
            }
        }
        Ok(shapes)
    }

    /// The buffers the program reads.
    pub fn reads(&self) -> Vec<Slot> {
        let mut v = Vec::new();
        for e in &self.nodes {
            if let MatExpr::Buffer(s) = e {
                if !v.contains(s) {
                    v.push(*s);
                }
            }
        }
        v
    }

    /// Floating-point operations of the products for a tensor of `view` (2 per multiply-add).
    pub fn product_flops(&self, view: WideView) -> f64 {
        let Ok(shapes) = self.shapes(usize::MAX) else {
            return 0.0;
        };
        self.nodes
            .iter()
            .filter_map(|e| match *e {
                MatExpr::MatMul(a, b) => {
                    let (i, k) = shapes[a as usize];
                    let j = shapes[b as usize].1;
                    Some(2.0 * (view.size(i) * view.size(k) * view.size(j)) as f64)
                }
                _ => None,
            })
            .sum()
    }
}

/// Reads buffer `data` (a tensor of `view`) as its wide matrix.
pub fn load_wide(data: &[f32], view: WideView) -> Mat {
    let plain = Mat {
        rows: view.rows,
        cols: view.cols,
        data: data.to_vec(),
    };
    if view.transposed() {
        plain.transpose()
    } else {
        plain
    }
}

/// Writes the wide matrix `w` back into buffer `data` of a tensor of `view`.
pub fn store_wide(w: &Mat, data: &mut [f32], view: WideView) {
    if view.transposed() {
        data.copy_from_slice(&w.transpose().data);
    } else {
        data.copy_from_slice(&w.data);
    }
}

/// Evaluates `program` for one tensor of `view`: `uniforms` are the stage's (f32), `read` gives
/// a buffer's data, `matmul` computes each product (the meaning is [`reference_matmul`]).
/// Returns the output matrices, in [`MatrixProgram::outputs`] order, as wide matrices (store
/// them with [`store_wide`]). Elementwise nodes run in f32 in element order.
pub fn run(
    program: &MatrixProgram,
    uniforms: &[f32],
    view: WideView,
    read: &dyn Fn(Slot) -> Option<Vec<f32>>,
    matmul: &mut dyn FnMut(&Mat, &Mat) -> Mat,
) -> Result<Vec<Mat>, String> {
    program.shapes(uniforms.len())?;
    let mut values: Vec<Mat> = Vec::with_capacity(program.nodes.len());
    let map = |m: &Mat, f: &dyn Fn(f32) -> f32| Mat {
        rows: m.rows,
        cols: m.cols,
        data: m.data.iter().map(|&x| f(x)).collect(),
    };
    let zip = |a: &Mat, b: &Mat, f: &dyn Fn(f32, f32) -> f32| Mat {
        rows: a.rows,
        cols: a.cols,
        data: a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(),
    };
    for e in &program.nodes {
        let v = |i: u32| &values[i as usize];
        let out = match *e {
            MatExpr::Buffer(slot) => {
                let data = read(slot).ok_or("a matrix program reads a missing buffer")?;
                if data.len() != view.rows * view.cols {
                    return Err(format!(
                        "a buffer of {} elements viewed as {}×{}",
                        data.len(),
                        view.rows,
                        view.cols
                    ));
                }
                load_wide(&data, view)
            }
            MatExpr::Transpose(a) => v(a).transpose(),
            MatExpr::MatMul(a, b) => matmul(v(a), v(b)),
            MatExpr::Scale(c, a) => {
                let c = match c {
                    Coef::Const(x) => x as f32,
                    Coef::Uniform(u) => uniforms[u.index()],
                };
                map(v(a), &|x| c * x)
            }
            MatExpr::Add(a, b) => zip(v(a), v(b), &|x, y| x + y),
            MatExpr::Sub(a, b) => zip(v(a), v(b), &|x, y| x - y),
            MatExpr::Neg(a) => map(v(a), &|x| -x),
            MatExpr::RoundBf16(a) => map(v(a), &round_bf16),
        };
        values.push(out);
    }
    Ok(program
        .outputs
        .iter()
        .map(|o| values[o.node as usize].clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert!(round_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn a_tall_tensor_is_seen_transposed() {
        let view = WideView { rows: 3, cols: 2 };
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = load_wide(&data, view);
        assert_eq!((w.rows, w.cols), (2, 3));
        assert_eq!(w.data, vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let mut back = [0.0; 6];
        store_wide(&w, &mut back, view);
        assert_eq!(back, data);
    }

    #[test]
    fn the_reference_product_is_the_triple_loop() {
        let a = Mat {
            rows: 2,
            cols: 2,
            data: vec![1.0, 2.0, 3.0, 4.0],
        };
        let c = reference_matmul(&a, &a.transpose());
        assert_eq!(c.data, vec![5.0, 11.0, 11.0, 25.0]);
    }

    #[test]
    fn shapes_are_checked() {
        let p = MatrixProgram {
            nodes: vec![MatExpr::Buffer(Slot::Param), MatExpr::MatMul(0, 0)],
            outputs: vec![],
        };
        assert!(p.shapes(0).unwrap_err().contains("m×n by m×n"));
    }
}
