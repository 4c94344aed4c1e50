//! Typed buffer views: a parameter, gradient or state slice in its storage dtype (f32, bf16 or
//! f16; see `optc_kernel::storage`), as the CPU kernels take them.

use crate::int8::{Int8Mut, Int8Ref};
use half::{bf16, f16};
use optc_kernel::Dtype;

/// A mutable slice of one storage dtype.
#[derive(Debug)]
pub enum BufMut<'a> {
    /// f32 values.
    F32(&'a mut [f32]),
    /// bf16 values.
    Bf16(&'a mut [bf16]),
    /// f16 values.
    F16(&'a mut [f16]),
    /// An int8 state: codes and block scales (`optc_kernel::int8`).
    Int8(Int8Mut<'a>),
}

/// A shared slice of one storage dtype.
#[derive(Clone, Copy, Debug)]
pub enum BufRef<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 values.
    Bf16(&'a [bf16]),
    /// f16 values.
    F16(&'a [f16]),
    /// An int8 state: codes and block scales (`optc_kernel::int8`).
    Int8(Int8Ref<'a>),
}

impl BufMut<'_> {
    /// The dtype of the values.
    pub fn dtype(&self) -> Dtype {
        match self {
            BufMut::F32(_) => Dtype::F32,
            BufMut::Bf16(_) => Dtype::Bf16,
            BufMut::F16(_) => Dtype::F16,
            BufMut::Int8(_) => Dtype::Int8,
        }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            BufMut::F32(x) => x.len(),
            BufMut::Bf16(x) => x.len(),
            BufMut::F16(x) => x.len(),
            BufMut::Int8(x) => x.codes.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address of the first value.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            BufMut::F32(x) => x.as_mut_ptr().cast(),
            BufMut::Bf16(x) => x.as_mut_ptr().cast(),
            BufMut::F16(x) => x.as_mut_ptr().cast(),
            BufMut::Int8(x) => x.codes.as_mut_ptr(),
        }
    }

    /// The f32 slice, if the values are f32.
    pub fn as_f32(&mut self) -> Option<&mut [f32]> {
        match self {
            BufMut::F32(x) => Some(x),
            _ => None,
        }
    }

    /// Every value widened to f32 (exactly; an int8 state: the values it loads as).
    pub fn to_f32(&self) -> Vec<f32> {
        BufRef::from(self).to_f32()
    }

    /// Overwrites every value with `xs` rounded to this dtype (to nearest, ties to even: exact
    /// for values of the dtype; an int8 state quantizes each block). `xs` has [`BufMut::len`]
    /// values.
    pub fn set_from_f32(&mut self, xs: &[f32]) {
        match self {
            BufMut::F32(x) => x.copy_from_slice(xs),
            BufMut::Bf16(x) => x
                .iter_mut()
                .zip(xs)
                .for_each(|(d, &s)| *d = bf16::from_f32(s)),
            BufMut::F16(x) => x
                .iter_mut()
                .zip(xs)
                .for_each(|(d, &s)| *d = f16::from_f32(s)),
            BufMut::Int8(x) => x.set_from_f32(xs),
        }
    }
}

impl<'a> BufRef<'a> {
    /// The dtype of the values.
    pub fn dtype(&self) -> Dtype {
        match self {
            BufRef::F32(_) => Dtype::F32,
            BufRef::Bf16(_) => Dtype::Bf16,
            BufRef::F16(_) => Dtype::F16,
            BufRef::Int8(_) => Dtype::Int8,
        }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            BufRef::F32(x) => x.len(),
            BufRef::Bf16(x) => x.len(),
            BufRef::F16(x) => x.len(),
            BufRef::Int8(x) => x.codes.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address of the first value.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            BufRef::F32(x) => x.as_ptr().cast(),
            BufRef::Bf16(x) => x.as_ptr().cast(),
            BufRef::F16(x) => x.as_ptr().cast(),
            BufRef::Int8(x) => x.codes.as_ptr(),
        }
    }

    /// The f32 slice, if the values are f32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match *self {
            BufRef::F32(x) => Some(x),
            _ => None,
        }
    }

    /// Every value widened to f32 (exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        match *self {
            BufRef::F32(x) => x.to_vec(),
            BufRef::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
            BufRef::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
            BufRef::Int8(x) => x.to_f32(),
        }
    }
}

impl<'a, 'b> From<&'b BufMut<'a>> for BufRef<'b> {
    fn from(b: &'b BufMut<'a>) -> BufRef<'b> {
        match b {
            BufMut::F32(x) => BufRef::F32(x),
            BufMut::Bf16(x) => BufRef::Bf16(x),
            BufMut::F16(x) => BufRef::F16(x),
            BufMut::Int8(x) => BufRef::Int8(x.as_ref()),
        }
    }
}

macro_rules! from_slices {
    ($t:ty, $v:ident) => {
        impl<'a> From<&'a mut [$t]> for BufMut<'a> {
            fn from(x: &'a mut [$t]) -> Self {
                BufMut::$v(x)
            }
        }
        impl<'a> From<&'a [$t]> for BufRef<'a> {
            fn from(x: &'a [$t]) -> Self {
                BufRef::$v(x)
            }
        }
        impl<'a> From<&'a mut [$t]> for BufRef<'a> {
            fn from(x: &'a mut [$t]) -> Self {
                BufRef::$v(x)
            }
        }
    };
}
from_slices!(f32, F32);
from_slices!(bf16, Bf16);
from_slices!(f16, F16);
