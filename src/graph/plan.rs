//! The memory plan of a built schedule: which device buffer holds which
//! tensor.
//!
//! A schedule is a sequence of stages (each node's forward, each node's
//! backward, the optimizer update); every tensor is used by an interval of
//! them, `[first, last]`, the stages that bind it. Two tensors whose
//! intervals do not intersect never meet in one dispatch, so they may share
//! a buffer. Pinned tensors (inputs, parameters, their gradients, the loss,
//! values marked for inspection) keep a buffer of their own, because the
//! host reads or writes them between steps.
//!
//! Assignment is greedy in order of first use: a tensor takes the free
//! buffer (its last occupant's interval ended before this one starts) that
//! fits it most tightly, else the largest free buffer, grown to fit, else a
//! new buffer. The plan is a pure function of the requests, so it is the
//! same on every run and testable without a device.

/// One tensor to place: its size, whether it is pinned, and the interval of
/// stages that use it (`None`: no stage uses it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRequest {
    pub bytes: u64,
    pub pinned: bool,
    pub lifetime: Option<(usize, usize)>,
}

/// A buffer of the plan and the tensors it holds, in order of first use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub bytes: u64,
    pub pinned: bool,
    pub tensors: Vec<usize>,
}

/// Where each tensor lives, and what reuse saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Intermediate (not pinned) tensors.
    pub tensors: usize,
    /// Buffers holding them.
    pub buffers: usize,
    /// Bytes of those buffers.
    pub planned_bytes: u64,
    /// The sum of all intermediate tensors: what one buffer each would take.
    pub naive_bytes: u64,
    /// Pinned tensors (one buffer each) and their bytes.
    pub pinned_tensors: usize,
    pub pinned_bytes: u64,
    /// The buffer of every request.
    pub slot_of: Vec<usize>,
    pub slots: Vec<Slot>,
}

impl MemoryPlan {
    /// Whether `a` and `b` (request indices) share a buffer.
    pub fn shared(&self, a: usize, b: usize) -> bool {
        self.slot_of[a] == self.slot_of[b]
    }
}

/// Places every request (see the module doc). Unused intermediate tensors
/// get a buffer of their own, as if pinned, so that every request has one.
pub fn plan_memory(requests: &[PlanRequest]) -> MemoryPlan {
    let mut slots: Vec<Slot> = Vec::new();
    let mut slot_of = vec![usize::MAX; requests.len()];
    // The stage after which each shared slot is free again.
    let mut free_after: Vec<usize> = Vec::new();

    let mut order: Vec<usize> = (0..requests.len()).collect();
    // First use, then larger first (a stable, deterministic order).
    order.sort_by_key(|&i| {
        let r = &requests[i];
        (
            r.lifetime.map_or(usize::MAX, |l| l.0),
            std::cmp::Reverse(r.bytes),
            i,
        )
    });
    for i in order {
        let r = &requests[i];
        let own = |slots: &mut Vec<Slot>, free_after: &mut Vec<usize>| {
            slots.push(Slot {
                bytes: r.bytes,
                pinned: true,
                tensors: vec![i],
            });
            free_after.push(usize::MAX);
            slots.len() - 1
        };
        let slot = match (r.pinned, r.lifetime) {
            (false, Some((first, last))) => {
                let free: Vec<usize> = (0..slots.len())
                    .filter(|&s| !slots[s].pinned && free_after[s] < first)
                    .collect();
                let fitting = free
                    .iter()
                    .copied()
                    .filter(|&s| slots[s].bytes >= r.bytes)
                    .min_by_key(|&s| (slots[s].bytes, s));
                let largest = free.iter().copied().max_by_key(|&s| (slots[s].bytes, s));
                let s = match fitting.or(largest) {
                    Some(s) => s,
                    None => {
                        slots.push(Slot {
                            bytes: 0,
                            pinned: false,
                            tensors: Vec::new(),
                        });
                        free_after.push(0);
                        slots.len() - 1
                    }
                };
                slots[s].bytes = slots[s].bytes.max(r.bytes);
                slots[s].tensors.push(i);
                free_after[s] = last;
                s
            }
            _ => own(&mut slots, &mut free_after),
        };
        slot_of[i] = slot;
    }

    let shared = |pinned: bool| {
        requests
            .iter()
            .filter(move |r| (r.pinned || r.lifetime.is_none()) == pinned)
    };
    MemoryPlan {
        tensors: shared(false).count(),
        buffers: slots.iter().filter(|s| !s.pinned).count(),
        planned_bytes: slots.iter().filter(|s| !s.pinned).map(|s| s.bytes).sum(),
        naive_bytes: shared(false).map(|r| r.bytes).sum(),
        pinned_tensors: shared(true).count(),
        pinned_bytes: shared(true).map(|r| r.bytes).sum(),
        slot_of,
        slots,
    }
}
