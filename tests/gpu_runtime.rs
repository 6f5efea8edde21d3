//! The runtime itself: adapter errors, limit checks, 2-D folding of large
//! 1-D grids, the buffer pool, timestamps, and validation errors as typed
//! errors rather than panics.

mod common;

use common::*;
use crossmodal::gpu::{Access, BackendChoice, BufferPool, GpuOptions, Grid, KernelSpec, Shader};
use crossmodal::ops::activation::{activation_forward, Activation, ActivationParams};
use crossmodal::{DType, Error, GpuContext};

static ACTIVATION: Shader = crossmodal::shader!("activation");
static RELU: KernelSpec = KernelSpec {
    shader: &ACTIVATION,
    entry: "relu_forward",
    bindings: &[Access::Read, Access::ReadWrite],
};

#[test]
fn backend_names_parse_and_unknown_is_an_error() {
    assert_eq!(
        "Vulkan".parse::<BackendChoice>().unwrap(),
        BackendChoice::Vulkan
    );
    assert_eq!("cpu".parse::<BackendChoice>().unwrap(), BackendChoice::Cpu);
    assert!(matches!(
        "cuda".parse::<BackendChoice>(),
        Err(Error::UnknownBackend(_))
    ));
}

#[cfg(target_os = "linux")]
#[test]
fn missing_backend_is_a_typed_error_that_says_what_to_install() {
    // Linux has no Metal adapter: the request must fail cleanly, not panic.
    let err = GpuContext::new(&GpuOptions {
        backend: BackendChoice::Metal,
        ..GpuOptions::default()
    })
    .unwrap_err();
    assert!(matches!(err, Error::NoAdapter { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains("--backend cpu"),
        "{msg}"
    );
}

#[test]
fn dispatch_over_the_workgroup_limit_is_a_typed_error() {
    let Some(ctx) = gpu() else { return };
    let max = ctx.limits.max_compute_workgroups_per_dimension;
    let x = ctx.zeros(&[4], DType::F32).unwrap();
    let y = ctx.zeros(&[4], DType::F32).unwrap();
    let params = ActivationParams { n: 4, _pad: [0; 3] };
    let err = ctx
        .prepare(
            &RELU,
            &[],
            &params,
            &[&x, &y],
            Grid::Workgroups([1, max + 1, 1]),
        )
        .unwrap_err();
    match err {
        Error::LimitExceeded {
            op,
            limit,
            requested,
            max: m,
        } => {
            assert_eq!(op, "relu_forward");
            assert_eq!(limit, "max_compute_workgroups_per_dimension");
            assert_eq!((requested, m), (max as u64 + 1, max as u64));
        }
        other => panic!("expected LimitExceeded, got {other}"),
    }
    // A 1-D grid too large even when folded into 2-D.
    let err = ctx
        .workgroups_for(
            "huge",
            Grid::Linear {
                items: u32::MAX,
                workgroup_size: 1,
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
}

#[test]
fn binding_count_mismatch_is_a_typed_error() {
    let Some(ctx) = gpu() else { return };
    let x = ctx.zeros(&[4], DType::F32).unwrap();
    let params = ActivationParams { n: 4, _pad: [0; 3] };
    let err = ctx
        .prepare(&RELU, &[], &params, &[&x], Grid::linear(4, 256))
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err}");
}

#[test]
fn broken_shader_is_a_validation_error_naming_the_entry() {
    let Some(ctx) = gpu() else { return };
    static BROKEN: Shader = Shader {
        name: "broken_test_shader",
        source: "struct Params { n: u32 }\n@group(0) @binding(0) var<uniform> params: Params;\n\
                 @compute @workgroup_size(1) fn main() { let x: f32 = params.n; }",
    };
    static SPEC: KernelSpec = KernelSpec {
        shader: &BROKEN,
        entry: "main",
        bindings: &[],
    };
    let err = ctx.kernel(&SPEC, &[]).unwrap_err();
    match err {
        Error::Validation { op, .. } => assert_eq!(op, "broken_test_shader::main"),
        other => panic!("expected Validation, got {other}"),
    }
}

#[test]
fn large_linear_dispatch_is_folded_into_two_dimensions_and_covers_every_element() {
    let Some(ctx) = gpu() else { return };
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    // One more workgroup than fits in x, plus a ragged tail.
    let n = (max + 1) * 256 + 77;
    let grid = ctx
        .workgroups_for("relu_forward", Grid::linear(n, 256))
        .unwrap();
    assert!(grid[1] > 1, "expected a 2-D grid, got {grid:?}");
    let x: Vec<f32> = (0..n)
        .map(|i| if i % 3 == 0 { -(i as f32) } else { i as f32 })
        .collect();
    let gx = ctx.upload_f32(&x, &[n]).unwrap();
    let gy = ctx.upload_f32(&vec![-1.0; n], &[n]).unwrap();
    ctx.run(&[&activation_forward(ctx, Activation::Relu, &gx, &gy).unwrap()])
        .unwrap();
    let y = ctx.read_f32(&gy).unwrap();
    for (i, (&yi, &xi)) in y.iter().zip(&x).enumerate() {
        assert_eq!(yi, xi.max(0.0), "element {i} of {n}");
    }
}

#[test]
fn buffer_pool_reuses_released_buffers() {
    let Some(ctx) = gpu() else { return };
    let mut pool = BufferPool::default();
    for _step in 0..5 {
        let a = pool.acquire(ctx, &[37, 53], DType::F32).unwrap();
        let b = pool.acquire(ctx, &[53, 37], DType::F32).unwrap();
        let c = pool.acquire(ctx, &[7], DType::U32).unwrap();
        assert_eq!(a.shape, vec![37, 53]);
        pool.release(a);
        pool.release(b);
        pool.release(c);
    }
    // Two buffers of one size and one of another, created on the first step only.
    assert_eq!(pool.allocations(), 3);
}

#[test]
fn upload_and_readback_round_trip_and_check_lengths() {
    let Some(ctx) = gpu() else { return };
    let data = random(&[3, 5], 7);
    let t = ctx.upload_f32(data.as_slice().unwrap(), &[3, 5]).unwrap();
    assert_eq!(ctx.read_f32(&t).unwrap(), data.as_slice().unwrap());
    let u = ctx.upload_u32(&[1, 2, 3], &[3]).unwrap();
    assert_eq!(ctx.read_u32(&u).unwrap(), vec![1, 2, 3]);
    assert!(matches!(
        ctx.upload_f32(&[1.0; 5], &[2, 3]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(ctx.read_u32(&t), Err(Error::Shape { .. })));
    let empty = ctx.zeros(&[0, 4], DType::F32).unwrap();
    assert!(ctx.read_f32(&empty).unwrap().is_empty());
}

#[test]
fn timestamps_time_each_dispatch_when_supported() {
    let Some(ctx) = gpu() else { return };
    let n = 1 << 20;
    let x = ctx.zeros(&[n], DType::F32).unwrap();
    let y = ctx.zeros(&[n], DType::F32).unwrap();
    let d = activation_forward(ctx, Activation::Tanh, &x, &y).unwrap();
    match ctx.run_timed(&[&d, &d]) {
        Ok(t) => {
            assert_eq!(t.len(), 2);
            assert!(
                t.iter()
                    // 2^20 elements: the vec4 kernel.
                    .all(|k| k.name == "tanh_forward_vec4" && k.nanoseconds > 0.0),
                "{t:?}"
            );
        }
        Err(e) => {
            assert!(
                !ctx.has_timestamps(),
                "adapter claims timestamps but timing failed: {e}"
            );
            assert!(matches!(e, Error::Unsupported { .. }));
        }
    }
}

#[test]
fn pipelines_are_cached() {
    let Some(ctx) = gpu() else { return };
    let a = ctx.kernel(&RELU, &[]).unwrap();
    let b = ctx.kernel(&RELU, &[]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

#[test]
fn binding_over_the_storage_binding_limit_is_a_typed_error() {
    let Some(ctx) = gpu() else { return };
    let max = ctx.limits.max_storage_buffer_binding_size;
    if max > 256 << 20 {
        eprintln!("skipping: storage binding limit {max} is too large to allocate past in a test");
        return;
    }
    let n = (max / 4 + 1) as usize;
    let big = ctx.zeros(&[n], DType::F32).unwrap();
    let small = ctx.zeros(&[4], DType::F32).unwrap();
    let params = ActivationParams { n: 4, _pad: [0; 3] };
    let err = ctx
        .prepare(&RELU, &[], &params, &[&big, &small], Grid::linear(4, 256))
        .unwrap_err();
    match err {
        Error::LimitExceeded { op, limit, .. } => {
            assert_eq!(
                (op.as_str(), limit),
                ("relu_forward", "max_storage_buffer_binding_size")
            )
        }
        other => panic!("expected LimitExceeded, got {other}"),
    }
}
