//! A kernel checked once: what every backend and the runtime take.
//!
//! Takes a [`Kernel`]; [`ValidKernel::new`] runs [`Kernel::validate`] once and computes the one
//! analysis of the body that the backends share (how each buffer is used, the bytes moved per
//! element). Gives read access to the kernel (through `Deref`) and to that analysis. A
//! `ValidKernel` cannot be built from a kernel that does not validate, so a backend that takes one
//! needs no check of its own and treats any violation as an internal error.

use crate::kernel::{BufferUse, Kernel, KernelError};
use std::ops::Deref;

/// A validated [`Kernel`] with its buffer analysis. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidKernel {
    kernel: Kernel,
    buffers: Vec<BufferUse>,
    bytes_per_element: usize,
}

impl ValidKernel {
    /// Validates `kernel` and analyses it once.
    pub fn new(kernel: Kernel) -> Result<ValidKernel, KernelError> {
        kernel.validate()?;
        let buffers = kernel.buffers();
        let bytes_per_element = kernel.bytes_per_element();
        Ok(ValidKernel {
            kernel,
            buffers,
            bytes_per_element,
        })
    }

    /// The kernel.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The buffers in launch order with how the kernel uses them ([`Kernel::buffers`], computed
    /// once).
    pub fn buffers(&self) -> &[BufferUse] {
        &self.buffers
    }

    /// Bytes moved per element over the whole kernel ([`Kernel::bytes_per_element`]).
    pub fn bytes_per_element(&self) -> usize {
        self.bytes_per_element
    }

    /// The kernel, giving up the analysis.
    pub fn into_kernel(self) -> Kernel {
        self.kernel
    }
}

impl Deref for ValidKernel {
    type Target = Kernel;
    fn deref(&self) -> &Kernel {
        &self.kernel
    }
}
