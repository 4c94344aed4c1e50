//! int8 state buffers: one byte of code per value and one f32 scale word per block of
//! `optc_kernel::quant::QUANT_BLOCK` values, in the format of [`optc_kernel::int8`] (the scale's
//! sign bit names the block's map). A state the kernel stores as int8 is given to the CPU kernels
//! as [`crate::buf::BufMut::Int8`] for a tensor of at least `quant::MIN_QUANT_ELEMENTS` elements
//! (a smaller tensor's state is f32: [`optc_kernel::int8::stored_dtype`]).

use optc_kernel::int8;

/// A mutable int8 state: codes and block scales.
#[derive(Debug)]
pub struct Int8Mut<'a> {
    /// One code per value.
    pub codes: &'a mut [u8],
    /// One scale word per block of 256 values (`codes.len().div_ceil(256)` of them).
    pub scales: &'a mut [f32],
}

/// A shared int8 state: codes and block scales.
#[derive(Clone, Copy, Debug)]
pub struct Int8Ref<'a> {
    /// One code per value.
    pub codes: &'a [u8],
    /// One scale word per block of 256 values.
    pub scales: &'a [f32],
}

/// An owned int8 state, as an executor keeps one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Int8State {
    /// One code per value.
    pub codes: Vec<u8>,
    /// One scale word per block of 256 values.
    pub scales: Vec<f32>,
}

impl Int8State {
    /// `xs` quantized block by block (an int8 store of every value).
    pub fn quantize(xs: &[f32]) -> Int8State {
        let mut s = Int8State {
            codes: vec![0; xs.len()],
            scales: vec![0.0; int8::scale_count(xs.len())],
        };
        int8::store(xs, &mut s.codes, &mut s.scales);
        s
    }

    /// The values the state loads as.
    pub fn to_f32(&self) -> Vec<f32> {
        self.as_ref().to_f32()
    }

    /// A shared view.
    pub fn as_ref(&self) -> Int8Ref<'_> {
        Int8Ref {
            codes: &self.codes,
            scales: &self.scales,
        }
    }

    /// A mutable view.
    pub fn as_mut(&mut self) -> Int8Mut<'_> {
        Int8Mut {
            codes: &mut self.codes,
            scales: &mut self.scales,
        }
    }
}

impl Int8Ref<'_> {
    /// Whether there are as many scale words as blocks.
    pub fn is_well_formed(&self) -> bool {
        self.scales.len() == int8::scale_count(self.codes.len())
    }

    /// The values the state loads as.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.codes.len()];
        int8::load(self.codes, self.scales, &mut out);
        out
    }
}

impl Int8Mut<'_> {
    /// A shared view.
    pub fn as_ref(&self) -> Int8Ref<'_> {
        Int8Ref {
            codes: self.codes,
            scales: self.scales,
        }
    }

    /// Stores `xs` (as many values as codes), block by block.
    pub fn set_from_f32(&mut self, xs: &[f32]) {
        int8::store(xs, self.codes, self.scales);
    }
}
