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

/// Which kernel family computes a matmul. Both handle every layout, size and
/// offset; they differ in speed per adapter (see `shaders/matmul.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Register-blocked, reading storage directly: for software adapters
    /// (lavapipe), where workgroup memory and barriers cost more than they save.
    Direct,
    /// Tiles staged in workgroup memory plus register blocking: for GPUs.
    Tiled,
}

/// Rows and columns of C one `matmul_direct*` invocation computes (`DR`, `DC`).
pub const DIRECT_BLOCK: (u32, u32) = (16, 16);
/// Invocations per `matmul_direct*` workgroup (`DL`), along one [`DirectLanes`] axis.
pub const DIRECT_LANES: u32 = 8;
/// Rows, columns and K step of the `matmul_tiled` workgroup tile (`TM`, `TN`, `TK`).
pub const TILED_TILE: (u32, u32, u32) = (64, 64, 16);
/// `matmul_tiled` invocations per workgroup side (`TT`); each computes 4×4 outputs.
pub const TILED_THREADS: u32 = 16;

/// The axis the [`DIRECT_LANES`] invocations of a `matmul_direct*`
/// workgroup lie along (the `LANES` override constant of
/// `shaders/matmul.wgsl`). lavapipe runs a workgroup as one SIMD loop, so a
/// lane whose block lies past C's edge costs as much as a useful one: the
/// axis is chosen per call ([`direct_lanes`]) to waste few lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirectLanes {
    /// Blocks side by side along N (a 16×128 tile of C), each over all of K.
    N,
    /// Blocks stacked along M (a 128×16 tile of C), each over all of K.
    M,
    /// One 16×16 block per workgroup; lane l sums the l-th eighth of K and
    /// the partial blocks are added in lane order in workgroup memory
    /// (deterministic). For small M·N with a long K.
    K,
}

impl DirectLanes {
    /// Rows and columns of C one workgroup computes.
    pub fn workgroup_tile(self) -> (u32, u32) {
        let (r, c) = DIRECT_BLOCK;
        match self {
            DirectLanes::N => (r, c * DIRECT_LANES),
            DirectLanes::M => (r * DIRECT_LANES, c),
            DirectLanes::K => (r, c),
        }
    }

    /// The `LANES` override constant.
    fn code(self) -> f64 {
        match self {
            DirectLanes::N => 0.0,
            DirectLanes::M => 1.0,
            DirectLanes::K => 2.0,
        }
    }

    /// Estimated cost of `C[m,n]` with inner size `k` on lavapipe, in
    /// SIMD iterations of the K loop: workgroups (at least a few, so that
    /// every CPU core has one) times K steps per lane, plus the stores
    /// (a block's stores cost about 16 K steps; under `K` the lanes also
    /// sum their partials, about as much again).
    fn cost(self, m: u32, n: u32, k: u32) -> u64 {
        let (tm, tn) = self.workgroup_tile();
        let groups = (m.div_ceil(tm) as u64 * n.div_ceil(tn) as u64).max(4);
        let (steps, tail) = match self {
            DirectLanes::N | DirectLanes::M => (k, 16),
            DirectLanes::K => (k.div_ceil(DIRECT_LANES), 32),
        };
        groups * (steps as u64 + tail)
    }
}

/// The lane axis [`matmul`] uses for `C[m,n]` with inner size `k` on the
/// direct variant: the cheapest by [`DirectLanes`]' cost estimate, N on ties.
pub fn direct_lanes(m: usize, n: usize, k: usize) -> DirectLanes {
    let (m, n, k) = (m as u32, n as u32, k as u32);
    [DirectLanes::N, DirectLanes::M, DirectLanes::K]
        .into_iter()
        .min_by_key(|l| l.cost(m, n, k))
        .unwrap_or(DirectLanes::N)
}

impl MatmulVariant {
    /// Rows and columns of C one workgroup computes (for `Direct`, with
    /// lanes along N; see [`DirectLanes::workgroup_tile`]).
    pub fn workgroup_tile(self) -> (u32, u32) {
        match self {
            MatmulVariant::Direct => (DIRECT_BLOCK.0, DIRECT_BLOCK.1 * DIRECT_LANES),
            MatmulVariant::Tiled => (TILED_TILE.0, TILED_TILE.1),
        }
    }

    /// Rows and columns of C one invocation computes.
    pub fn invocation_tile(self) -> (u32, u32) {
        match self {
            MatmulVariant::Direct => DIRECT_BLOCK,
            MatmulVariant::Tiled => (TILED_TILE.0 / TILED_THREADS, TILED_TILE.1 / TILED_THREADS),
        }
    }
}

impl std::fmt::Display for MatmulVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tm, tn) = self.workgroup_tile();
        let (im, in_) = self.invocation_tile();
        match self {
            MatmulVariant::Direct => write!(
                f,
                "direct ({im}x{in_} outputs per invocation, {DIRECT_LANES} invocations \
                 per workgroup along N, M or K (a {tm}x{tn}, {}x{} or {im}x{in_} tile), \
                 storage read directly, vec4 loads and stores when aligned, values every \
                 lane reads shared by subgroupBroadcast where the adapter shares lanes)",
                tn,
                tm
            ),
            MatmulVariant::Tiled => write!(
                f,
                "tiled ({tm}x{tn}x{} workgroup tile in workgroup memory, {TILED_THREADS}x{TILED_THREADS} \
                 invocations of {im}x{in_} outputs)",
                TILED_TILE.2
            ),
        }
    }
}

/// The variant [`matmul`] uses on this adapter.
pub fn matmul_variant(ctx: &GpuContext) -> MatmulVariant {
    if ctx.is_software() {
        MatmulVariant::Direct
    } else {
        MatmulVariant::Tiled
    }
}

static SHADER: Shader = crate::shader!("matmul");
const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];
static DIRECT: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_direct",
    bindings: BINDINGS,
};
static DIRECT_B4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_direct_b4",
    bindings: BINDINGS,
};
static DIRECT_C4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_direct_c4",
    bindings: BINDINGS,
};
static DIRECT_AB4: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_direct_ab4",
    bindings: BINDINGS,
};
static TILED: KernelSpec = KernelSpec {
    shader: &SHADER,
    entry: "matmul_tiled",
    bindings: BINDINGS,
};

impl Layout {
    /// The `LAYOUT` override constant of `shaders/matmul.wgsl`.
    fn code(self) -> f64 {
        match self {
            Layout::AB => 0.0,
            Layout::AtB => 1.0,
            Layout::ABt => 2.0,
        }
    }
}

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

/// The direct kernel for this call: vec4 views where sizes and offsets allow.
fn direct_spec(layout: Layout, p: &MatmulParams) -> &'static KernelSpec {
    let nonempty = p.m > 0 && p.n > 0 && p.k > 0;
    // B[K,N] and C read as vec4 along N.
    let b4 = nonempty
        && layout != Layout::ABt
        && p.n.is_multiple_of(4)
        && p.b_offset.is_multiple_of(4)
        && p.c_offset.is_multiple_of(4);
    // A[K,M] read as vec4 along M as well.
    let a4 = b4 && layout == Layout::AtB && p.m.is_multiple_of(4) && p.a_offset.is_multiple_of(4);
    // Only C as vec4 along N (ABt, or B's offset unaligned).
    let c4 = nonempty && p.n.is_multiple_of(4) && p.c_offset.is_multiple_of(4);
    match (a4, b4, c4) {
        (true, _, _) => &DIRECT_AB4,
        (false, true, _) => &DIRECT_B4,
        (false, false, true) => &DIRECT_C4,
        _ => &DIRECT,
    }
}

/// `C (+)= op(A)·op(B)` with sizes and offsets from `p`, using the variant
/// chosen for this adapter ([`matmul_variant`]).
///
/// The kernel and the grid are chosen from `p`: a dispatch whose params are
/// later rewritten with `Dispatch::set_params` must keep `accumulate` and
/// the remainders modulo 4 of m, n and every offset (the direct variant
/// reads vec4 when they are multiples of 4), and may not raise m or n (the
/// grid covers the prepared C; workgroups wholly past a lowered edge return
/// at once). k may change. Otherwise prepare a new dispatch.
pub fn matmul(
    ctx: &GpuContext,
    layout: Layout,
    c: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    p: MatmulParams,
) -> Result<Dispatch> {
    matmul_with(ctx, matmul_variant(ctx), layout, c, a, b, p)
}

/// [`matmul`] with an explicit variant (tests cover both on any adapter).
pub fn matmul_with(
    ctx: &GpuContext,
    variant: MatmulVariant,
    layout: Layout,
    c: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    p: MatmulParams,
) -> Result<Dispatch> {
    match variant {
        MatmulVariant::Direct => {
            let lanes = direct_lanes(p.m as usize, p.n as usize, p.k as usize);
            matmul_direct(ctx, lanes, layout, c, a, b, p)
        }
        MatmulVariant::Tiled => {
            check_operands(TILED.entry, c, a, b, &p)?;
            let (tm, tn) = MatmulVariant::Tiled.workgroup_tile();
            let grid = Grid::Workgroups([p.n.div_ceil(tn), p.m.div_ceil(tm), 1]);
            ctx.prepare(&TILED, &[("LAYOUT", layout.code())], &p, &[c, a, b], grid)
        }
    }
}

/// The direct variant with an explicit lane axis (tests cover all three).
pub fn matmul_direct(
    ctx: &GpuContext,
    lanes: DirectLanes,
    layout: Layout,
    c: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    p: MatmulParams,
) -> Result<Dispatch> {
    let spec = direct_spec(layout, &p);
    check_operands(spec.entry, c, a, b, &p)?;
    let (tm, tn) = lanes.workgroup_tile();
    let grid = Grid::Workgroups([p.n.div_ceil(tn), p.m.div_ceil(tm), 1]);
    ctx.prepare(
        spec,
        &[("LAYOUT", layout.code()), ("LANES", lanes.code())],
        &p,
        &[c, a, b],
        grid,
    )
}

fn check_operands(
    op: &str,
    c: &GpuTensor,
    a: &GpuTensor,
    b: &GpuTensor,
    p: &MatmulParams,
) -> Result<()> {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    check_fits(op, "A", a, p.a_offset, m * k)?;
    check_fits(op, "B", b, p.b_offset, k * n)?;
    check_fits(op, "C", c, p.c_offset, m * n)
}
