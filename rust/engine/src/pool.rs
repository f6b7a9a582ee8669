//! The engine's parallel loops (attention, the int8/f32 head) run on the kernels' own thread
//! team (`kernels::team`, sized by `set_num_threads`). A second set of threads would leave its
//! idle workers spinning on the very cores the kernels use between layers.

/// Runs `f(index, chunk)` over `out` cut into chunks of `chunk` items, in parallel when the team
/// has more than one thread and there is more than one chunk.
pub(crate) fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    match kernels::team() {
        Ok(team) if team.threads() > 1 && out.len() > chunk => team.for_each_chunk(out, chunk, f),
        _ => out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)),
    }
}
