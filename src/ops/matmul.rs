//! Matrix multiply in the three layouts backward needs (A·B, Aᵀ·B, A·Bᵀ):
//! CPU reference and GPU launcher. The backward of `C = A·B` is
//! `dA += dC·Bᵀ` (ABt) and `dB += Aᵀ·dC` (AtB), so one kernel family serves
//! forward and backward.

use ndarray::{Array2, ArrayView2, NdFloat};

use crate::error::{Error, Result};
use crate::gpu::{Access, Dispatch, GpuContext, GpuTensor, Grid, KernelSpec, Shader};

/// Uniform parameters, mirrored by `Params` in `shaders/matmul.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// 1: `C += A·B`; 0: `C = A·B`.
    pub accumulate: u32,
    /// Element offsets of each matrix inside its buffer.
    pub a_offset: u32,
    pub b_offset: u32,
    pub c_offset: u32,
    pub _pad: u32,
}

impl MatmulParams {
    /// `C[m,n] = op(A)·op(B)` with the inner size `k`, no offsets.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            ..Self::default()
        }
    }

    /// Adds into C instead of overwriting it.
    pub fn accumulate(mut self) -> Self {
        self.accumulate = 1;
        self
    }

    /// Element offsets of A, B and C inside their buffers.
    pub fn offsets(mut self, a: usize, b: usize, c: usize) -> Self {
        self.a_offset = a as u32;
        self.b_offset = b as u32;
        self.c_offset = c as u32;
        self
    }
}

/// Which operands are transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `C = A[M,K] · B[K,N]`
    AB,
    /// `C = A[K,M]ᵀ · B[K,N]`
    AtB,
    /// `C = A[M,K] · B[N,K]ᵀ`
    ABt,
}

// ---------------------------------------------------------------- CPU reference

/// `op(A)·op(B)` for the layout; the operands have their stored shapes.
pub fn matmul_cpu<A: NdFloat>(layout: Layout, a: &ArrayView2<A>, b: &ArrayView2<A>) -> Array2<A> {
    match layout {
        Layout::AB => a.dot(b),
        Layout::AtB => a.t().dot(b),
        Layout::ABt => a.dot(&b.t()),
    }
}

/// Backward of `C = A·B`: `dA += dC·Bᵀ`, `dB += Aᵀ·dC`.
pub fn matmul_backward_cpu<A: NdFloat>(
    da: &mut Array2<A>,
    db: &mut Array2<A>,
    dc: &ArrayView2<A>,
    a: &ArrayView2<A>,
    b: &ArrayView2<A>,
) {
    *da += &dc.dot(&b.t());
    *db += &a.t().dot(dc);
}

// ---------------------------------------------------------------- GPU

static SHADER: Shader = crate::shader!("matmul");
const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
static AB: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_ab",
    bindings: BINDINGS,
};
static ATB: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_atb",
    bindings: BINDINGS,
};
static ABT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_abt",
    bindings: BINDINGS,
};
const TILE: u32 = 16;

fn check_fits(op: &str, operand: &str, t: &GpuTensor, offset: u32, len: usize) -> Result<()> {
    if t.numel() < offset as usize + len {
        return Err(Error::shape(
            op,
            format!(
                "{operand} {:?} holds {} elements, needs {} from offset {offset}",
                t.shape,
                t.numel(),
                len
            ),
        ));
    }
    Ok(())
}

/// `C (+)= op(A)·op(B)` with sizes and offsets from `p`.
pub fn matmul(
    ctx: &GpuContext,
    layout: Layout,
    c: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    p: MatmulParams,
) -> Result<Dispatch> {
    let spec = match layout {
        Layout::AB => &AB,
        Layout::AtB => &ATB,
        Layout::ABt => &ABT,
    };
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    check_fits(spec.entry, "A", a, p.a_offset, m * k)?;
    check_fits(spec.entry, "B", b, p.b_offset, k * n)?;
    check_fits(spec.entry, "C", c, p.c_offset, m * n)?;
    let grid = Grid::Workgroups([p.n.div_ceil(TILE), p.m.div_ceil(TILE), 1]);
    ctx.prepare(spec, &[], &p, &[c, a, b], grid)
}
