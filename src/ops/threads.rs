//! The CPU references' one use of threads: the two halves of a large batch
//! at once (the machines this runs on have two cores and more), for the
//! recurrent layers (samples are independent) and conv2d (rows of im2col).

/// Batches at least this large run as two halves on two threads; smaller
/// ones are not worth a thread.
pub const CPU_SPLIT_MIN_BATCH: usize = 16;

/// Runs `run` on the two halves of a batch of `batch` samples at once (the
/// second half on a scoped thread), or on the whole batch when it is
/// smaller than [`CPU_SPLIT_MIN_BATCH`]. `split(part, at)` cuts `part` at
/// sample `at`. Samples are independent (each one's arithmetic is the same
/// in a half as in the whole batch; the tests check it bit for bit) and
/// the split depends only on `batch`, so results are bit-identical from run
/// to run.
pub(crate) fn on_batch_halves<P: Send>(
    batch: usize,
    part: P,
    split: impl FnOnce(P, usize) -> (P, P),
    run: impl Fn(P) + Sync,
) {
    if batch < CPU_SPLIT_MIN_BATCH {
        return run(part);
    }
    let (first, second) = split(part, batch / 2);
    std::thread::scope(|s| {
        s.spawn(|| run(second));
        run(first);
    });
}
