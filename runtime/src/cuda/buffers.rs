//! Device buffers by storage dtype: the CUDA executor's states and the staged copies of host
//! parameters and gradients, as bytes in the layout the PTX entries read (`docs/dtypes.md`).
//!
//! Takes host buffers ([`BufVec`] states, [`BufRef`]/[`BufMut`] parameters and gradients) and
//! gives device buffers of the same bytes: f32 as 4 bytes a value, bf16 and f16 as 2, an int8
//! state as its codes then, from [`int8::device_scales_offset`], its scale words (the layout of
//! the `_q8` entries). [`encode`] and [`decode`] are the one translation between the host's
//! buffers and the device bytes (pure, tested without a driver); every state read or write of
//! the executor goes through them, so a checkpoint written from the device holds exactly the
//! host executor's entries.
//!
//! Guarantees: no call here panics on a length (a device buffer's length is checked against its
//! dtype before it is decoded); every driver failure is a [`CudaError`].
#![allow(unsafe_code)]

use super::error::{Context, CudaError};
use crate::buf::{BufMut, BufRef, BufVec};
use crate::error::RuntimeError;
use crate::executor::TensorData;
use crate::int8::Int8State;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use half::{bf16, f16};
use optc_kernel::{int8, Dtype};
use std::sync::Arc;

/// The bytes of a device buffer of `len` values stored as `d` (an int8 state: codes, padding to
/// 16 bytes, one scale word per block; the caller has applied `int8::dtype_for_len`).
pub(crate) fn device_bytes(d: Dtype, len: usize) -> usize {
    match d {
        Dtype::Int8 => int8::device_bytes(len),
        d => len * value_bytes(d) as usize,
    }
}

/// The bytes of one value of `d` (an int8 code: 1).
fn value_bytes(d: Dtype) -> u64 {
    match d {
        Dtype::F32 => 4,
        Dtype::Bf16 | Dtype::F16 => 2,
        Dtype::Int8 => 1,
    }
}

/// `buf` as the bytes of its device buffer (little-endian; an int8 state's codes, zero padding,
/// then its scale words).
pub(crate) fn encode(buf: &BufVec) -> Vec<u8> {
    match buf {
        BufVec::F32(x) => bytemuck::cast_slice(x).to_vec(),
        BufVec::Bf16(x) => bytemuck::cast_slice(x).to_vec(),
        BufVec::F16(x) => bytemuck::cast_slice(x).to_vec(),
        BufVec::Int8(q) => {
            let n = q.codes.len();
            let mut out = Vec::with_capacity(int8::device_bytes(n));
            out.extend_from_slice(&q.codes);
            out.resize(int8::device_scales_offset(n), 0);
            out.extend(q.scales.iter().flat_map(|s| s.to_le_bytes()));
            out
        }
    }
}

/// The buffer of `len` values stored as `d` whose device bytes are `bytes` ([`encode`]'s
/// inverse); an error when the byte count does not fit.
pub(crate) fn decode(d: Dtype, len: usize, bytes: &[u8]) -> Result<BufVec, CudaError> {
    let want = device_bytes(d, len);
    if bytes.len() != want {
        return Err(CudaError::Buffers(format!(
            "a {d} buffer of {len} values has {} device bytes, not {want}",
            bytes.len()
        )));
    }
    let words = |b: &[u8]| -> Vec<u16> {
        b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    Ok(match d {
        Dtype::F32 => BufVec::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::Bf16 => BufVec::Bf16(words(bytes).into_iter().map(bf16::from_bits).collect()),
        Dtype::F16 => BufVec::F16(words(bytes).into_iter().map(f16::from_bits).collect()),
        Dtype::Int8 => {
            let at = int8::device_scales_offset(len);
            BufVec::Int8(Int8State {
                codes: bytes[..len].to_vec(),
                scales: bytes[at..]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            })
        }
    })
}

/// How a state that starts as one value is filled on the device: a word repeated
/// (`cuMemsetD32`/`cuMemsetD16`), or, for an int8 state, its quantized bytes uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Every 32-bit word is this.
    D32(u32),
    /// Every 16-bit word is this.
    D16(u16),
    /// Upload [`encode`] of `BufVec::splat`.
    Upload,
}

/// The fill of a state of stored dtype `d` whose every value is `x`: the bits of
/// `BufVec::splat(d, x, 1)`, the host executor's rounding (one place for state init).
pub(crate) fn fill(d: Dtype, x: f32) -> Fill {
    if d == Dtype::Int8 {
        return Fill::Upload;
    }
    match *encode(&BufVec::splat(d, x, 1)).as_slice() {
        [a, b, c, e] => Fill::D32(u32::from_le_bytes([a, b, c, e])),
        [a, b] => Fill::D16(u16::from_le_bytes([a, b])),
        _ => Fill::Upload,
    }
}

/// The smallest alignment a device pointer to values of `d` must have (the scalar paths' loads).
pub(crate) fn alignment(d: Dtype) -> u64 {
    match d {
        Dtype::Int8 => 16,
        d => value_bytes(d),
    }
}

/// Errors unless each of `pointers` is aligned for its dtype (`dtypes`, in the same order).
pub(crate) fn check_alignment(pointers: &[u64], dtypes: &[Dtype]) -> Result<(), CudaError> {
    for (&p, &d) in pointers.iter().zip(dtypes) {
        if !p.is_multiple_of(alignment(d)) {
            return Err(CudaError::Buffers(format!(
                "device pointer {p:#x} of {d} values is not {}-byte aligned",
                alignment(d)
            )));
        }
    }
    Ok(())
}

/// The bytes of a host parameter or gradient (f32, bf16 or f16), viewed without copying.
pub(crate) fn host_bytes<'a>(b: BufRef<'a>) -> Result<&'a [u8], CudaError> {
    match b {
        BufRef::F32(x) => Ok(bytemuck::cast_slice(x)),
        BufRef::Bf16(x) => Ok(bytemuck::cast_slice(x)),
        BufRef::F16(x) => Ok(bytemuck::cast_slice(x)),
        BufRef::Int8(_) => Err(CudaError::Buffers(
            "an int8 buffer as a parameter or gradient".into(),
        )),
    }
}

/// [`host_bytes`], mutable.
pub(crate) fn host_bytes_mut<'a>(b: &'a mut BufMut<'_>) -> Result<&'a mut [u8], CudaError> {
    match b {
        BufMut::F32(x) => Ok(bytemuck::cast_slice_mut(x)),
        BufMut::Bf16(x) => Ok(bytemuck::cast_slice_mut(x)),
        BufMut::F16(x) => Ok(bytemuck::cast_slice_mut(x)),
        BufMut::Int8(_) => Err(CudaError::Buffers("an int8 buffer as a parameter".into())),
    }
}

/// `bytes` on the device (an empty buffer for none).
pub(crate) fn upload_bytes(
    stream: &Arc<CudaStream>,
    bytes: &[u8],
    what: &str,
) -> Result<CudaSlice<u8>, CudaError> {
    if bytes.is_empty() {
        return stream.null::<u8>().during(format!("creating {what}"));
    }
    stream.clone_htod(bytes).during(format!("uploading {what}"))
}

/// A buffer in device memory in its storage dtype (a state, or a staged parameter or gradient).
pub(crate) struct DeviceBuf {
    bytes: CudaSlice<u8>,
    dtype: Dtype,
    len: usize,
}

impl DeviceBuf {
    /// `buf` copied to the device.
    pub(crate) fn upload(
        stream: &Arc<CudaStream>,
        buf: &BufVec,
        what: &str,
    ) -> Result<DeviceBuf, CudaError> {
        if let BufVec::Int8(q) = buf {
            // A kernel reads a scale word per block: a state without them never reaches one.
            if !q.as_ref().is_well_formed() {
                return Err(CudaError::Buffers(format!(
                    "{what}: {} int8 codes with {} scale words",
                    q.codes.len(),
                    q.scales.len()
                )));
            }
        }
        Ok(DeviceBuf {
            bytes: upload_bytes(stream, &encode(buf), what)?,
            dtype: buf.dtype(),
            len: buf.len(),
        })
    }

    /// A buffer of `len` values stored as `d`, every value `x` rounded as the host executor
    /// rounds it ([`fill`]).
    pub(crate) fn splat(
        stream: &Arc<CudaStream>,
        d: Dtype,
        x: f32,
        len: usize,
        what: &str,
    ) -> Result<DeviceBuf, CudaError> {
        let d = int8::dtype_for_len(d, len);
        let word = fill(d, x);
        if len == 0 || word == Fill::Upload {
            return DeviceBuf::upload(stream, &BufVec::splat(d, x, len), what);
        }
        let mut buf = DeviceBuf::alloc(stream, d, len, what)?;
        let (dst, sync) = buf.bytes.device_ptr_mut(stream);
        let result = match word {
            // SAFETY: `dst` holds `len` 32-bit words (`device_bytes` of an f32 buffer) and the
            // memset is queued on the stream that owns the allocation while `sync` is alive.
            Fill::D32(w) => unsafe {
                cudarc::driver::sys::cuMemsetD32Async(dst, w, len, stream.cu_stream())
            },
            // SAFETY: as above, `len` 16-bit words.
            Fill::D16(w) => unsafe {
                cudarc::driver::sys::cuMemsetD16Async(dst, w, len, stream.cu_stream())
            },
            Fill::Upload => unreachable!("uploaded above"),
        };
        result.result().during(format!("filling {what}"))?;
        drop(sync);
        Ok(buf)
    }

    /// Uninitialized memory for `len` values stored as `d`; the caller writes every byte.
    fn alloc(
        stream: &Arc<CudaStream>,
        d: Dtype,
        len: usize,
        what: &str,
    ) -> Result<DeviceBuf, CudaError> {
        let bytes = device_bytes(d, len);
        let buf = if bytes == 0 {
            stream.null::<u8>().during(format!("creating {what}"))?
        } else {
            // SAFETY: every caller writes all `bytes` before any read (a memset or a copy).
            unsafe { stream.alloc::<u8>(bytes) }.during(format!("allocating {what}"))?
        };
        Ok(DeviceBuf {
            bytes: buf,
            dtype: d,
            len,
        })
    }

    /// A copy of the `len` values of dtype `d` at device address `src` (the caller's parameter:
    /// `Update::cuda` or the caller of `Update::cuda_raw` guarantees the memory).
    pub(crate) fn copy_of(
        stream: &Arc<CudaStream>,
        d: Dtype,
        src: u64,
        len: usize,
        what: &str,
    ) -> Result<DeviceBuf, CudaError> {
        let mut buf = DeviceBuf::alloc(stream, d, len, what)?;
        let bytes = device_bytes(d, len);
        if bytes > 0 {
            let (dst, sync) = buf.bytes.device_ptr_mut(stream);
            // SAFETY: `dst` holds `bytes` bytes (just allocated); `src` holds `len` values of
            // `d` on this context (the optimizer checked the length and the dtype); both are
            // ordered on the stream.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, stream.cu_stream())
            }
            .during(format!("copying {what}"))?;
            drop(sync);
        }
        Ok(buf)
    }

    /// The buffer copied to the host (waits for queued work).
    pub(crate) fn download(&self, stream: &Arc<CudaStream>) -> Result<BufVec, CudaError> {
        let bytes = if self.bytes.is_empty() {
            Vec::new()
        } else {
            stream
                .clone_dtoh(&self.bytes)
                .during("reading a buffer back")?
        };
        decode(self.dtype, self.len, &bytes)
    }

    /// Overwrites the buffer with `buf`, of the same dtype and length.
    pub(crate) fn overwrite(
        &mut self,
        stream: &Arc<CudaStream>,
        buf: &BufVec,
    ) -> Result<(), CudaError> {
        if buf.dtype() != self.dtype || buf.len() != self.len {
            return Err(CudaError::Buffers(format!(
                "{} {} values for a device buffer of {} {} values",
                buf.len(),
                buf.dtype(),
                self.len,
                self.dtype
            )));
        }
        let bytes = encode(buf);
        if !bytes.is_empty() {
            stream
                .memcpy_htod(&bytes, &mut self.bytes)
                .during("writing a buffer")?;
        }
        Ok(())
    }

    /// Values.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The dtype the values are stored in.
    pub(crate) fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The bytes of device memory the buffer takes.
    pub(crate) fn bytes(&self) -> usize {
        device_bytes(self.dtype, self.len)
    }

    /// The device address, with the guard that records a write on `stream`.
    pub(crate) fn ptr_mut<'a>(&'a mut self, stream: &'a CudaStream) -> (u64, SyncOnDrop<'a>) {
        self.bytes.device_ptr_mut(stream)
    }
}

/// A host parameter and gradient staged on the device for one launch.
pub(crate) struct Staged {
    param: CudaSlice<u8>,
    grad: CudaSlice<u8>,
}

impl Staged {
    /// Copies of `data`'s host parameter and gradient in their dtypes, or `None` for device data.
    pub(crate) fn of(
        stream: &Arc<CudaStream>,
        data: &TensorData<'_>,
    ) -> Result<Option<Staged>, RuntimeError> {
        match data {
            TensorData::Host { param, grad } => Ok(Some(Staged {
                param: upload_bytes(stream, host_bytes(BufRef::from(param))?, "a parameter")?,
                grad: upload_bytes(stream, host_bytes(*grad)?, "a gradient")?,
            })),
            TensorData::Device(_) => Ok(None),
        }
    }

    /// The device addresses of the parameter and gradient, with their guards.
    pub(crate) fn pointers<'a>(
        &'a mut self,
        stream: &'a CudaStream,
    ) -> ((u64, SyncOnDrop<'a>), (u64, SyncOnDrop<'a>)) {
        (
            self.param.device_ptr_mut(stream),
            self.grad.device_ptr(stream),
        )
    }

    /// Copies the staged parameter back into `data`'s host parameter (waits for the launches).
    pub(crate) fn read_back(
        &self,
        stream: &Arc<CudaStream>,
        data: &mut TensorData<'_>,
    ) -> Result<(), RuntimeError> {
        if let TensorData::Host { param, .. } = data {
            let dst = host_bytes_mut(param)?;
            if !dst.is_empty() {
                stream
                    .memcpy_dtoh(&self.param, dst)
                    .during("reading a parameter back")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect()
    }

    /// Each dtype's device bytes: 4, 2 and 2 per value, and an int8 state's codes padded to 16
    /// bytes followed by one scale word per 256-block.
    #[test]
    fn device_sizes_follow_the_dtype() {
        assert_eq!(device_bytes(Dtype::F32, 5), 20);
        assert_eq!(device_bytes(Dtype::Bf16, 5), 10);
        assert_eq!(device_bytes(Dtype::F16, 7), 14);
        // 4096 codes (already a multiple of 16), 16 scales.
        assert_eq!(device_bytes(Dtype::Int8, 4096), 4096 + 16 * 4);
        // 4097 codes -> 4112 bytes, then 17 scales.
        assert_eq!(int8::device_scales_offset(4097), 4112);
        assert_eq!(device_bytes(Dtype::Int8, 4097), 4112 + 17 * 4);
        assert_eq!(device_bytes(Dtype::Int8, 5000), 5008 + 20 * 4);
    }

    /// `encode` then `decode` gives the buffer back bit for bit, in every dtype, and the int8
    /// layout puts the codes first and the scale words at `device_scales_offset`.
    #[test]
    fn encode_and_decode_round_trip() {
        for n in [0usize, 1, 5, 4096, 4099, 8229] {
            let xs = values(n);
            for d in [Dtype::F32, Dtype::Bf16, Dtype::F16, Dtype::Int8] {
                let b = BufVec::from_f32(d, &xs);
                let bytes = encode(&b);
                let stored = b.dtype();
                assert_eq!(bytes.len(), device_bytes(stored, n), "{d} {n}");
                let back = decode(stored, n, &bytes).expect("decode");
                assert_eq!(back, b, "{d} {n}");
                if let BufVec::Int8(q) = &b {
                    assert_eq!(&bytes[..n], q.codes.as_slice());
                    let at = int8::device_scales_offset(n);
                    assert!(bytes[n..at].iter().all(|&x| x == 0));
                    assert_eq!(q.scales.len(), int8::scale_count(n));
                    assert_eq!(bytes[at..at + 4], q.scales[0].to_le_bytes());
                }
            }
        }
        // Under MIN_QUANT_ELEMENTS an int8 state is an f32 buffer.
        assert_eq!(
            BufVec::from_f32(Dtype::Int8, &values(4095)).dtype(),
            Dtype::F32
        );
    }

    #[test]
    fn decode_refuses_a_wrong_byte_count() {
        let err = decode(Dtype::Int8, 4096, &[0; 4096]).expect_err("no scales");
        assert!(err.to_string().contains("not 4160"), "{err}");
        assert!(decode(Dtype::Bf16, 3, &[0; 5]).is_err());
    }

    /// Fills are the host executor's rounding of the value (`BufVec::splat`).
    #[test]
    fn fills_round_as_the_host_does() {
        assert_eq!(fill(Dtype::F32, 0.1), Fill::D32(0.1f32.to_bits()));
        assert_eq!(
            fill(Dtype::Bf16, 0.1),
            Fill::D16(bf16::from_f32(0.1).to_bits())
        );
        assert_eq!(
            fill(Dtype::F16, 1e-8),
            Fill::D16(f16::from_f32(1e-8).to_bits())
        );
        assert_eq!(fill(Dtype::Bf16, -0.0), Fill::D16(0x8000));
        assert_eq!(fill(Dtype::Int8, 0.0), Fill::Upload);
    }

    #[test]
    fn pointers_must_be_aligned_for_their_dtype() {
        let dtypes = [Dtype::Bf16, Dtype::Bf16, Dtype::F32, Dtype::Int8];
        assert!(check_alignment(&[2, 6, 8, 256], &dtypes).is_ok());
        let err = check_alignment(&[2, 6, 10, 256], &dtypes).expect_err("f32 at 10");
        assert!(err.to_string().contains("4-byte aligned"), "{err}");
        assert!(check_alignment(&[1, 6, 8, 256], &dtypes).is_err());
        assert!(check_alignment(&[2, 6, 8, 264], &dtypes).is_err());
    }

    #[test]
    fn host_buffers_are_viewed_as_their_bytes() {
        let mut x = [bf16::from_f32(1.0), bf16::from_f32(-2.0)];
        assert_eq!(
            host_bytes(BufRef::Bf16(&x)).expect("bytes"),
            &[0x80, 0x3f, 0x00, 0xc0]
        );
        let mut b = BufMut::Bf16(&mut x);
        host_bytes_mut(&mut b).expect("bytes")[1] = 0x40;
        assert_eq!(x[0], bf16::from_f32(4.0));
        let f = [1.5f32];
        assert_eq!(
            host_bytes(BufRef::F32(&f)).expect("bytes"),
            1.5f32.to_le_bytes()
        );
    }
}
