//! The memory plan (`graph::plan`), without a device: tensors sharing a
//! buffer never overlap in time, every buffer holds its largest tensor,
//! pinned and unused tensors get buffers of their own, and reuse happens.

use crossmodal::graph::plan::{plan_memory, PlanRequest};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn check(requests: &[PlanRequest]) -> crossmodal::graph::plan::MemoryPlan {
    let plan = plan_memory(requests);
    assert_eq!(plan.slot_of.len(), requests.len());
    for (i, r) in requests.iter().enumerate() {
        let slot = &plan.slots[plan.slot_of[i]];
        assert!(
            slot.tensors.contains(&i),
            "tensor {i} is listed in its slot"
        );
        assert!(slot.bytes >= r.bytes, "slot of tensor {i} is too small");
        if r.pinned || r.lifetime.is_none() {
            assert_eq!(slot.tensors, vec![i], "tensor {i} keeps its own buffer");
        }
        for (j, other) in requests.iter().enumerate().take(i) {
            if plan.shared(i, j) {
                let (a, b) = (r.lifetime.unwrap(), other.lifetime.unwrap());
                assert!(
                    a.1 < b.0 || b.1 < a.0,
                    "tensors {i} {a:?} and {j} {b:?} share a buffer but overlap"
                );
            }
        }
    }
    let intermediate: Vec<&PlanRequest> = requests
        .iter()
        .filter(|r| !r.pinned && r.lifetime.is_some())
        .collect();
    assert_eq!(plan.tensors, intermediate.len());
    assert_eq!(
        plan.naive_bytes,
        intermediate.iter().map(|r| r.bytes).sum::<u64>()
    );
    assert!(plan.planned_bytes <= plan.naive_bytes);
    plan
}

fn req(bytes: u64, first: usize, last: usize) -> PlanRequest {
    PlanRequest {
        bytes,
        pinned: false,
        lifetime: Some((first, last)),
    }
}

#[test]
fn disjoint_lifetimes_share_and_overlapping_ones_do_not() {
    let requests = [
        req(100, 0, 1),
        req(100, 1, 2), // overlaps the first at stage 1
        req(80, 2, 3),  // fits the first's buffer after stage 1
        req(300, 4, 4), // grows a free buffer
        PlanRequest {
            bytes: 50,
            pinned: true,
            lifetime: Some((0, 4)),
        },
        PlanRequest {
            bytes: 60,
            pinned: false,
            lifetime: None,
        },
    ];
    let plan = check(&requests);
    assert!(!plan.shared(0, 1));
    assert!(plan.shared(0, 2));
    assert_eq!(plan.buffers, 2);
    assert_eq!(plan.planned_bytes, 300 + 100);
    assert_eq!(plan.naive_bytes, 580);
    assert_eq!((plan.pinned_tensors, plan.pinned_bytes), (2, 110));
}

#[test]
fn random_schedules_keep_the_invariants() {
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..200 {
        let n = rng.random_range(1..40);
        let requests: Vec<PlanRequest> = (0..n)
            .map(|_| {
                let first = rng.random_range(0..30);
                PlanRequest {
                    bytes: rng.random_range(0..1000),
                    pinned: rng.random_bool(0.1),
                    lifetime: rng
                        .random_bool(0.95)
                        .then(|| (first, first + rng.random_range(0..8))),
                }
            })
            .collect();
        let a = check(&requests);
        assert_eq!(a, plan_memory(&requests), "the plan is deterministic");
    }
}
