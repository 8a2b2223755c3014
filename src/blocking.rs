//! Blocking work (file reads and moves below a shared root) off the async runtime's threads.

/// Work handed to the blocking pool did not finish: it panicked or the runtime is shutting
/// down.
#[derive(Debug, thiserror::Error)]
#[error("background task: {0}")]
pub struct BlockingError(#[from] tokio::task::JoinError);

/// Run `f` on tokio's blocking pool. A typed error of `f` stays in `T`
/// (`run(f).await??` converts both).
pub async fn run<T, F>(f: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await?)
}
