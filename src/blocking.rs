//! Blocking work (file access below a Worker's root, mostly) run on tokio's blocking pool, with
//! typed errors end to end.
//!
//! [`run`] answers the closure's value or a [`BlockingError`]; [`try_run`] is for a fallible
//! closure whose error type can also say that the task itself failed (`E: From<BlockingError>`),
//! so that a caller handles one typed error instead of a nested `Result`.

use tokio::task::JoinError;

/// The blocking task did not finish: it panicked, or the runtime was shutting down.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct BlockingError(#[from] JoinError);

/// Run `f` on tokio's blocking pool.
pub async fn run<T, F>(f: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Run the fallible `f` on tokio's blocking pool; a failure of the task itself becomes an `E`.
pub async fn try_run<T, E, F>(f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<BlockingError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    run(f).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("refused")]
        Refused,
        #[error(transparent)]
        Blocking(#[from] BlockingError),
    }

    #[tokio::test]
    async fn values_errors_and_panics_come_back_typed() {
        assert_eq!(run(|| 7).await.unwrap(), 7);
        let refused = try_run(|| Err::<(), _>(TestError::Refused)).await;
        assert!(matches!(refused, Err(TestError::Refused)));
        let panicked = try_run(|| -> Result<(), TestError> { panic!("boom") }).await;
        let err = panicked.unwrap_err();
        assert!(matches!(err, TestError::Blocking(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("blocking task failed: "),
            "{err}"
        );
    }
}
