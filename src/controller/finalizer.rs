//! Finalizers, added only where a run or plan leaves something outside the API to undo (a
//! debug container, a worker marked `recovering`), unlike kube-runtime's `finalizer` helper,
//! which puts one on every object it sees.

use std::fmt::Debug;

use kube::{
    api::{Api, Patch, PatchParams},
    Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Whether `obj` carries `finalizer`.
pub fn holds<K: Resource>(obj: &K, finalizer: &str) -> bool {
    obj.finalizers().iter().any(|f| f == finalizer)
}

/// Put `finalizer` on `obj`, read as it is now (the status writes of earlier steps changed its
/// resourceVersion since the reconcile began).
pub async fn add<K>(api: &Api<K>, obj: &K, finalizer: &str) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let fresh = api.get(&obj.name_any()).await?;
    if holds(&fresh, finalizer) {
        return Ok(());
    }
    let mut finalizers = fresh.finalizers().to_vec();
    finalizers.push(finalizer.into());
    replace(api, &fresh, finalizers).await
}

/// Take `finalizer` off `obj` (read as it is now), letting a deleted object go.
pub async fn remove<K>(api: &Api<K>, obj: &K, finalizer: &str) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let fresh = api.get(&obj.name_any()).await?;
    let finalizers = fresh
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    replace(api, &fresh, finalizers).await
}

/// Replace the finalizer list; the resourceVersion makes it a compare-and-swap with other
/// writers of the list (a conflict is retried with backoff).
async fn replace<K>(api: &Api<K>, obj: &K, finalizers: Vec<String>) -> kube::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}
