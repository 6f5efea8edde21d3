//! Shapes and element types shared by host (ndarray) and device tensors.

use crate::error::{Error, Result};

/// Element type of a tensor. Indices (tokens, labels, argmax) are `U32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U32,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        4
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Checks that `shape` equals `expected`, naming the op and the operand.
pub fn expect_shape(op: &str, operand: &str, shape: &[usize], expected: &[usize]) -> Result<()> {
    if shape == expected {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{operand} has shape {shape:?}, expected {expected:?}"),
        ))
    }
}

/// Checks that `shape` has `numel` elements (a reshaped view is allowed).
pub fn expect_numel(op: &str, operand: &str, shape: &[usize], expected: usize) -> Result<()> {
    if numel(shape) == expected {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!(
                "{operand} has shape {shape:?} ({} elements), expected {expected} elements",
                numel(shape)
            ),
        ))
    }
}
