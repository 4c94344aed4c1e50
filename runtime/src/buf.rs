//! Typed buffer views: a parameter, gradient or state slice in its storage dtype (f32, bf16 or
//! f16; see `optc_kernel::storage`), as the CPU kernels take them.

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
}

impl BufMut<'_> {
    /// The dtype of the values.
    pub fn dtype(&self) -> Dtype {
        match self {
            BufMut::F32(_) => Dtype::F32,
            BufMut::Bf16(_) => Dtype::Bf16,
            BufMut::F16(_) => Dtype::F16,
        }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            BufMut::F32(x) => x.len(),
            BufMut::Bf16(x) => x.len(),
            BufMut::F16(x) => x.len(),
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
        }
    }

    /// The f32 slice, if the values are f32.
    pub fn as_f32(&mut self) -> Option<&mut [f32]> {
        match self {
            BufMut::F32(x) => Some(x),
            _ => None,
        }
    }

    /// Every value widened to f32 (exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        BufRef::from(self).to_f32()
    }

    /// The f32 slice, shared, if the values are f32.
    pub fn as_f32_ref(&self) -> Option<&[f32]> {
        match self {
            BufMut::F32(x) => Some(x),
            _ => None,
        }
    }

    /// Overwrites every value with `xs` rounded to this dtype (to nearest, ties to even: exact
    /// for values of the dtype). `xs` has [`BufMut::len`] values.
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
        }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            BufRef::F32(x) => x.len(),
            BufRef::Bf16(x) => x.len(),
            BufRef::F16(x) => x.len(),
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
        }
    }
}

impl<'a, 'b> From<&'b BufMut<'a>> for BufRef<'b> {
    fn from(b: &'b BufMut<'a>) -> BufRef<'b> {
        match b {
            BufMut::F32(x) => BufRef::F32(x),
            BufMut::Bf16(x) => BufRef::Bf16(x),
            BufMut::F16(x) => BufRef::F16(x),
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

/// An owned buffer of one storage dtype (a state in host memory).
#[derive(Clone, Debug, PartialEq)]
pub enum BufVec {
    /// f32 values.
    F32(Vec<f32>),
    /// bf16 values.
    Bf16(Vec<bf16>),
    /// f16 values.
    F16(Vec<f16>),
}

impl BufVec {
    /// `xs` rounded to `d` (to nearest, ties to even: exact for values of the dtype; int8 is not a
    /// host dtype and keeps f32).
    pub fn from_f32(d: Dtype, xs: &[f32]) -> BufVec {
        match d {
            Dtype::Bf16 => BufVec::Bf16(xs.iter().map(|&x| bf16::from_f32(x)).collect()),
            Dtype::F16 => BufVec::F16(xs.iter().map(|&x| f16::from_f32(x)).collect()),
            Dtype::F32 | Dtype::Int8 => BufVec::F32(xs.to_vec()),
        }
    }

    /// `len` copies of `x` rounded to `d`.
    pub fn splat(d: Dtype, x: f32, len: usize) -> BufVec {
        match d {
            Dtype::Bf16 => BufVec::Bf16(vec![bf16::from_f32(x); len]),
            Dtype::F16 => BufVec::F16(vec![f16::from_f32(x); len]),
            Dtype::F32 | Dtype::Int8 => BufVec::F32(vec![x; len]),
        }
    }

    /// The dtype of the values.
    pub fn dtype(&self) -> Dtype {
        BufRef::from(self).dtype()
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        BufRef::from(self).len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every value widened to f32 (exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        BufRef::from(self).to_f32()
    }

    /// The values as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            BufVec::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            BufVec::Bf16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
            BufVec::F16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        }
    }

    /// Values of dtype `d` from little-endian bytes, whatever their alignment; `None` when the
    /// length is not a whole number of values.
    pub fn from_le_bytes(d: Dtype, bytes: &[u8]) -> Option<BufVec> {
        match d {
            Dtype::Bf16 | Dtype::F16 => {
                if !bytes.len().is_multiple_of(2) {
                    return None;
                }
                let bits = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]));
                Some(if d == Dtype::Bf16 {
                    BufVec::Bf16(bits.map(bf16::from_bits).collect())
                } else {
                    BufVec::F16(bits.map(f16::from_bits).collect())
                })
            }
            Dtype::F32 | Dtype::Int8 => {
                if !bytes.len().is_multiple_of(4) {
                    return None;
                }
                Some(BufVec::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ))
            }
        }
    }

    /// A mutable view.
    pub fn view(&mut self) -> BufMut<'_> {
        match self {
            BufVec::F32(x) => BufMut::F32(x),
            BufVec::Bf16(x) => BufMut::Bf16(x),
            BufVec::F16(x) => BufMut::F16(x),
        }
    }
}

impl<'a> From<&'a BufVec> for BufRef<'a> {
    fn from(b: &'a BufVec) -> BufRef<'a> {
        match b {
            BufVec::F32(x) => BufRef::F32(x),
            BufVec::Bf16(x) => BufRef::Bf16(x),
            BufVec::F16(x) => BufRef::F16(x),
        }
    }
}

impl BufMut<'_> {
    /// A shorter-lived view of the same values.
    pub fn reborrow(&mut self) -> BufMut<'_> {
        match self {
            BufMut::F32(x) => BufMut::F32(x),
            BufMut::Bf16(x) => BufMut::Bf16(x),
            BufMut::F16(x) => BufMut::F16(x),
        }
    }
}
