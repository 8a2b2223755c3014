//! A controller [`Context`] for unit tests: an API server in memory, a fake engine, no kernel
//! log, shared roots allowed under one directory. (Beside the steps' tests, which use it with
//! the Worker controller's supervision tests, until it can join `controller::mock_api`.)

use std::{path::Path, sync::Arc};

use crate::{
    controller::Context, diagnose::host::FakeHost, docker::fake::FakeRuntime, metrics::Metrics,
    trust::AllowedRoots,
};

/// A context over `client` (from `mock_api`) and `fake`, which allows the shared roots under
/// `allowed`.
pub fn context(client: kube::Client, fake: Arc<FakeRuntime>, allowed: &Path) -> Context {
    Context::new(
        client,
        fake,
        Arc::new(FakeHost(Ok(String::new()))),
        Arc::new(Metrics::default()),
        AllowedRoots::new(&[allowed.to_path_buf()]).unwrap(),
        crate::http::testing::client(),
    )
}
