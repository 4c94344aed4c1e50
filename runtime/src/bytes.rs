//! Byte input: viewing raw bytes and safetensors tensors as f32 slices (or, with [`buf_mut`] and
//! [`buf_ref`], slices of any parameter dtype) without copying.
//!
//! Takes little-endian bytes (safetensors, mmapped files, framework storages); gives `&[f32]` /
//! `&mut [f32]` views, or an error when the dtype is not f32, the pointer is not 4-byte aligned,
//! or the length is not a whole number of f32s. Callers that cannot guarantee alignment copy with
//! [`f32_vec`] instead.

use crate::error::RuntimeError;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn cast_error(name: &str, bytes: usize, e: bytemuck::PodCastError) -> RuntimeError {
    let reason = match e {
        bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned => {
            "the buffer is not 4-byte aligned (copy it with `f32_vec`)".to_string()
        }
        bytemuck::PodCastError::OutputSliceWouldHaveSlop | bytemuck::PodCastError::SizeMismatch => {
            format!("{bytes} bytes is not a whole number of 4-byte f32 elements")
        }
        other => format!("{other:?}"),
    };
    RuntimeError::Bytes {
        name: name.to_string(),
        reason,
    }
}

/// Views little-endian bytes as f32 without copying. `name` is used in the error.
pub fn f32_slice<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a [f32], RuntimeError> {
    bytemuck::try_cast_slice(bytes).map_err(|e| cast_error(name, bytes.len(), e))
}

/// Views little-endian bytes as mutable f32 without copying. `name` is used in the error.
pub fn f32_slice_mut<'a>(name: &str, bytes: &'a mut [u8]) -> Result<&'a mut [f32], RuntimeError> {
    let len = bytes.len();
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| cast_error(name, len, e))
}

/// Copies little-endian bytes into f32s, whatever their alignment.
pub fn f32_vec(name: &str, bytes: &[u8]) -> Result<Vec<f32>, RuntimeError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(cast_error(
            name,
            bytes.len(),
            bytemuck::PodCastError::SizeMismatch,
        ));
    }
    Ok(bytemuck::pod_collect_to_vec(bytes))
}

/// Checks that a safetensors tensor is f32 and returns its data as bytes.
pub fn f32_bytes<'a>(name: &str, view: &TensorView<'a>) -> Result<&'a [u8], RuntimeError> {
    if view.dtype() != Dtype::F32 {
        return Err(RuntimeError::Dtype {
            name: name.to_string(),
            found: format!("{:?}", view.dtype()),
        });
    }
    Ok(view.data())
}

/// Views a safetensors tensor as f32 without copying: checks dtype and alignment.
pub fn f32_view<'a>(name: &str, view: &TensorView<'a>) -> Result<&'a [f32], RuntimeError> {
    f32_slice(name, f32_bytes(name, view)?)
}

/// The value size of a parameter dtype, or an error naming the ones there are.
fn param_dtype(name: &str, dtype: optc_kernel::Dtype) -> Result<usize, RuntimeError> {
    match dtype {
        optc_kernel::Dtype::F32 => Ok(4),
        optc_kernel::Dtype::Bf16 | optc_kernel::Dtype::F16 => Ok(2),
        optc_kernel::Dtype::Int8 => Err(RuntimeError::Bytes {
            name: name.to_string(),
            reason: "a parameter or gradient is f32, bf16 or f16, not int8".into(),
        }),
    }
}

fn typed_error(
    name: &str,
    size: usize,
    dtype: optc_kernel::Dtype,
    bytes: usize,
    e: bytemuck::PodCastError,
) -> RuntimeError {
    let reason = match e {
        bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned => {
            format!("the buffer is not {size}-byte aligned, as {dtype} values must be")
        }
        bytemuck::PodCastError::OutputSliceWouldHaveSlop | bytemuck::PodCastError::SizeMismatch => {
            format!("{bytes} bytes is not a whole number of {size}-byte {dtype} values")
        }
        other => format!("{other:?}"),
    };
    RuntimeError::Bytes {
        name: name.to_string(),
        reason,
    }
}

/// Views little-endian bytes as mutable values of `dtype` (f32, bf16 or f16) without copying.
pub fn buf_mut<'a>(
    name: &str,
    dtype: optc_kernel::Dtype,
    bytes: &'a mut [u8],
) -> Result<crate::buf::BufMut<'a>, RuntimeError> {
    let size = param_dtype(name, dtype)?;
    let len = bytes.len();
    let e = |e| typed_error(name, size, dtype, len, e);
    Ok(match dtype {
        optc_kernel::Dtype::Bf16 => {
            crate::buf::BufMut::Bf16(bytemuck::try_cast_slice_mut(bytes).map_err(e)?)
        }
        optc_kernel::Dtype::F16 => {
            crate::buf::BufMut::F16(bytemuck::try_cast_slice_mut(bytes).map_err(e)?)
        }
        _ => crate::buf::BufMut::F32(bytemuck::try_cast_slice_mut(bytes).map_err(e)?),
    })
}

/// Views little-endian bytes as values of `dtype` (f32, bf16 or f16) without copying.
pub fn buf_ref<'a>(
    name: &str,
    dtype: optc_kernel::Dtype,
    bytes: &'a [u8],
) -> Result<crate::buf::BufRef<'a>, RuntimeError> {
    let size = param_dtype(name, dtype)?;
    let e = |e| typed_error(name, size, dtype, bytes.len(), e);
    Ok(match dtype {
        optc_kernel::Dtype::Bf16 => {
            crate::buf::BufRef::Bf16(bytemuck::try_cast_slice(bytes).map_err(e)?)
        }
        optc_kernel::Dtype::F16 => {
            crate::buf::BufRef::F16(bytemuck::try_cast_slice(bytes).map_err(e)?)
        }
        _ => crate::buf::BufRef::F32(bytemuck::try_cast_slice(bytes).map_err(e)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unaligned_and_ragged_bytes() {
        let words = [1.0f32, 2.0, 3.0];
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        assert_eq!(f32_slice("x", bytes).ok(), Some(&words[..]));
        let e = f32_slice("x", &bytes[1..9]).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("bytes of `x` cannot be read as f32: the buffer is not 4-byte aligned (copy it with `f32_vec`)")
        );
        let e = f32_slice("x", &bytes[..7]).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("bytes of `x` cannot be read as f32: 7 bytes is not a whole number of 4-byte f32 elements")
        );
        assert_eq!(f32_vec("x", &bytes[4..12]).ok(), Some(vec![2.0, 3.0]));
    }

    #[test]
    fn rejects_other_dtypes() {
        let data = [0u8; 8];
        let view = TensorView::new(Dtype::F64, vec![1], &data).ok();
        let e = view.map(|v| f32_view("w", &v).err().map(|e| e.to_string()));
        assert_eq!(
            e.flatten().as_deref(),
            Some("tensor `w` has dtype F64; optc steps f32 tensors only")
        );
    }
}
