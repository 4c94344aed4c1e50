//! The code generator's state: the function builder, the hoisted constants, and small helpers
//! for the vector types used by the body (`f32x4` numbers, `i32x4` lane masks, and `f64x2` /
//! `i64x2` for the polynomials of [`super::math`]).

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F32X4, F64, F64X2, I32X4, I64X2, I8X16};
use cranelift_codegen::ir::{
    ConstantData, Endianness, Inst, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

/// The builder plus what every lowering helper needs.
pub(super) struct Gen<'a> {
    /// The Cranelift function builder.
    pub b: FunctionBuilder<'a>,
    /// Where loop-invariant constants go: before this instruction (the jump out of the entry
    /// block), or at the current position while the entry block is still being built.
    pub hoist: Option<Inst>,
    /// Splat constants made so far, by type and bit pattern.
    consts: HashMap<(Type, u64), Value>,
}

/// Flags for bitcasts between vector types (Cranelift wants the lane order spelled out).
fn little() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl<'a> Gen<'a> {
    pub fn new(b: FunctionBuilder<'a>) -> Self {
        Gen {
            b,
            hoist: None,
            consts: HashMap::new(),
        }
    }

    /// A splat constant of vector type `ty` whose lanes have the bit pattern `bits`, created once
    /// and placed before the loops.
    fn splat_const(&mut self, ty: Type, bits: u64) -> Value {
        if let Some(&v) = self.consts.get(&(ty, bits)) {
            return v;
        }
        let v = match self.hoist {
            Some(inst) => {
                let mut pos = FuncCursor::new(&mut *self.b.func).at_inst(inst);
                let s = scalar_const(pos.ins(), ty, bits);
                pos.ins().splat(ty, s)
            }
            None => {
                let s = scalar_const(self.b.ins(), ty, bits);
                self.b.ins().splat(ty, s)
            }
        };
        self.consts.insert((ty, bits), v);
        v
    }

    /// `x` in every lane of an f32x4.
    pub fn f32s(&mut self, x: f32) -> Value {
        self.splat_const(F32X4, u64::from(x.to_bits()))
    }
    /// `x` in every lane of an f64x2.
    pub fn f64s(&mut self, x: f64) -> Value {
        self.splat_const(F64X2, x.to_bits())
    }
    /// `x` in every lane of an i32x4.
    pub fn i32s(&mut self, x: i32) -> Value {
        self.splat_const(I32X4, u64::from(x as u32))
    }
    /// `x` in every lane of an i64x2.
    pub fn i64s(&mut self, x: i64) -> Value {
        self.splat_const(I64X2, x as u64)
    }

    /// Reinterprets the bits of vector `x` as vector type `ty`.
    pub fn cast(&mut self, ty: Type, x: Value) -> Value {
        if self.b.func.dfg.value_type(x) == ty {
            return x;
        }
        self.b.ins().bitcast(ty, little(), x)
    }

    /// Lane mask of `a cc b` (f32x4 -> i32x4, f64x2 -> i64x2).
    pub fn cmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    /// `mask ? a : b` lane by lane; the mask is an integer vector of the same lane width.
    pub fn sel(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        let m = self.cast(ty, mask);
        self.b.ins().bitselect(m, a, b)
    }

    /// A lane mask (i32x4) as numbers: 1.0 where set, 0.0 elsewhere.
    pub fn mask_to_num(&mut self, mask: Value) -> Value {
        let one = self.f32s(1.0);
        let m = self.cast(F32X4, mask);
        self.b.ins().band(m, one)
    }

    /// Numbers as a lane mask: set where `x != 0` (NaN counts as true).
    pub fn num_to_mask(&mut self, x: Value) -> Value {
        let zero = self.f32s(0.0);
        self.cmp(FloatCC::NotEqual, x, zero)
    }

    /// A shuffle of the bytes of two 128-bit vectors (result type of `a`).
    fn shuffle(&mut self, a: Value, b: Value, bytes: [u8; 16]) -> Value {
        let ty = self.b.func.dfg.value_type(a);
        let a = self.cast(I8X16, a);
        let b = self.cast(I8X16, b);
        let mask = self
            .b
            .func
            .dfg
            .immediates
            .push(ConstantData::from(bytes.to_vec()));
        let r = self.b.ins().shuffle(a, b, mask);
        self.cast(ty, r)
    }

    /// The f32x4 whose lane `k` is lane `from[k]` of `x`.
    pub fn lanes(&mut self, x: Value, from: [u8; 4]) -> Value {
        let mut bytes = [0u8; 16];
        for (k, &l) in from.iter().enumerate() {
            for b in 0..4 {
                bytes[4 * k + b] = 4 * l + b as u8;
            }
        }
        self.shuffle(x, x, bytes)
    }

    /// Lanes 0-1 and lanes 2-3 of an f32x4, each widened to an f64x2.
    pub fn widen(&mut self, x: Value) -> (Value, Value) {
        let lo = self.b.ins().fvpromote_low(x);
        let upper = self.shuffle(
            x,
            x,
            [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15],
        );
        let hi = self.b.ins().fvpromote_low(upper);
        (lo, hi)
    }

    /// The inverse of [`Gen::widen`]: rounds both halves to f32 (to nearest) and joins them.
    pub fn narrow(&mut self, lo: Value, hi: Value) -> Value {
        let lo = self.b.ins().fvdemote(lo);
        let hi = self.b.ins().fvdemote(hi);
        self.shuffle(
            lo,
            hi,
            [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23],
        )
    }
}

/// A scalar constant of the lane type of `ty` with bit pattern `bits`.
fn scalar_const<'f>(ins: impl InstBuilder<'f>, ty: Type, bits: u64) -> Value {
    let lane = ty.lane_type();
    if lane == F32 {
        ins.f32const(f32::from_bits(bits as u32))
    } else if lane == F64 {
        ins.f64const(f64::from_bits(bits))
    } else {
        ins.iconst(lane, bits as i64)
    }
}
