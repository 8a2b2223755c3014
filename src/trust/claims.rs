//! Path claims: two admitted Workers never share files.
//!
//! A Worker claims its task directory, state file, heartbeat file and tmp directory, and the
//! lock prefix `<worker>_` in its locks directory. Two claims conflict when a path of one is
//! the same as, or inside, a path of the other (a tmp directory pointed at another worker's
//! task directory would otherwise be emptied), or when both use the same locks directory with
//! the same worker name. Of two conflicting Workers the older one (by creation time, then
//! namespace and name, so that every replica and every restart picks the same) keeps its
//! claim; the other is refused with `PathsClaimed`.
//!
//! Claims are computed from the Workers the operator watches, each resolved through symlinks
//! as its own admission does, and cached for a short while.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{runtime::reflector::Store, ResourceExt};

use super::{roots::AllowedRoots, Refusal, RefusalReason};
use crate::crd::worker::{ResolvedPaths, Worker};

/// How long another Worker's resolved claim is reused before it is resolved again.
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How long an admission waits for the Workers' cache to fill after a start.
const STORE_WAIT: Duration = Duration::from_secs(30);

/// What one Worker claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub created: Option<Timestamp>,
    /// Task directory, state file, heartbeat file, tmp directory: nobody else's.
    files: Vec<(&'static str, PathBuf)>,
    /// The locks directory, shared, and the worker name whose prefix is claimed in it.
    locks_dir: PathBuf,
    worker_name: String,
}

impl Claim {
    pub fn of(worker: &Worker, paths: &ResolvedPaths) -> Self {
        Self {
            uid: worker.uid().unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    worker.namespace().unwrap_or_default(),
                    worker.name_any()
                )
            }),
            namespace: worker.namespace().unwrap_or_default(),
            name: worker.name_any(),
            created: worker.creation_timestamp().map(|t| t.0),
            files: vec![
                ("task directory", paths.tasks_dir.clone()),
                ("state file", paths.state_file.clone()),
                ("heartbeat file", paths.heartbeat_file.clone()),
                ("tmp directory", paths.tmp_dir.clone()),
            ],
            locks_dir: paths.locks_dir.clone(),
            worker_name: paths.worker_name.clone(),
        }
    }

    /// Whether this claim goes before `other`: the older Worker keeps its claim.
    fn precedes(&self, other: &Claim) -> bool {
        // A Worker without a creation time (not from the API) comes last.
        let key = |c: &Claim| {
            (
                c.created.map_or(i128::MAX, |t| t.as_nanosecond()),
                c.namespace.clone(),
                c.name.clone(),
            )
        };
        key(self) < key(other)
    }

    /// What of `self` conflicts with `other`, if anything: "task directory /shared/tasks/a".
    pub fn conflict(&self, other: &Claim) -> Option<String> {
        for (what, mine) in &self.files {
            // No path of one may be, or hold, or lie in a path of the other; nor may one hold
            // the other's locks directory (its tmp clean-up would empty it).
            let overlaps = other.files.iter().any(|(_, theirs)| nested(mine, theirs));
            if overlaps || other.locks_dir.starts_with(mine) {
                return Some(format!("{what} {}", mine.display()));
            }
        }
        if other
            .files
            .iter()
            .any(|(_, theirs)| self.locks_dir.starts_with(theirs))
        {
            return Some(format!("locks directory {}", self.locks_dir.display()));
        }
        // The locks directory itself is shared by design; the same prefix in it is not.
        (self.locks_dir == other.locks_dir && self.worker_name == other.worker_name).then(|| {
            format!(
                "lock prefix {}_ in {}",
                self.worker_name,
                self.locks_dir.display()
            )
        })
    }
}

/// One path is the other or inside it.
fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The claims of the Workers the operator watches.
pub struct Registry {
    workers: Store<Worker>,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    generation: Option<i64>,
    at: Instant,
    claim: Option<Claim>,
}

impl Registry {
    pub fn new(workers: Store<Worker>) -> Self {
        Self {
            workers,
            cache: Mutex::default(),
        }
    }

    /// Refuse `me` when an older Worker claims one of its paths. The message names the
    /// holder only when it is in the same namespace.
    pub async fn check(&self, me: &Claim, roots: &AllowedRoots) -> Result<(), Refusal> {
        let others = self.claims(me, roots).await.map_err(|e| Refusal {
            reason: RefusalReason::PathsClaimed,
            message: format!("cannot check which Worker claims these paths: {e}"),
        })?;
        let holder = others
            .iter()
            .filter(|o| o.precedes(me))
            .find_map(|o| me.conflict(o).map(|what| (o, what)));
        let Some((holder, what)) = holder else {
            return Ok(());
        };
        let by = if holder.namespace == me.namespace {
            format!("by Worker {}", holder.name)
        } else {
            "by a Worker in another namespace".to_string()
        };
        Err(Refusal {
            reason: RefusalReason::PathsClaimed,
            message: format!(
                "{what} is already claimed {by}; two Workers may not share task, state, heartbeat or tmp paths or a lock prefix, so nothing of this Worker is read or changed"
            ),
        })
    }

    /// Every other Worker's claim, resolved again when older than [`CLAIM_TTL`].
    async fn claims(&self, me: &Claim, roots: &AllowedRoots) -> Result<Vec<Claim>, String> {
        tokio::time::timeout(STORE_WAIT, self.workers.wait_until_ready())
            .await
            .map_err(|_| "the Workers' cache is not filled yet".to_string())?
            .map_err(|e| e.to_string())?;
        let workers = self.workers.state();
        let stale: Vec<_> = {
            let cache = self.cache.lock().unwrap();
            workers
                .iter()
                .filter(|w| w.uid().as_deref() != Some(me.uid.as_str()))
                .filter(|w| {
                    let uid = w.uid().unwrap_or_default();
                    cache.get(&uid).is_none_or(|c| {
                        c.generation != w.metadata.generation || c.at.elapsed() > CLAIM_TTL
                    })
                })
                .cloned()
                .collect()
        };
        if !stale.is_empty() {
            let roots = roots.clone();
            let resolved = tokio::task::spawn_blocking(move || {
                stale
                    .iter()
                    .map(|w| {
                        (
                            w.uid().unwrap_or_default(),
                            w.metadata.generation,
                            resolve(w, &roots),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| e.to_string())?;
            let mut cache = self.cache.lock().unwrap();
            for (uid, generation, claim) in resolved {
                let at = Instant::now();
                cache.insert(
                    uid,
                    Cached {
                        generation,
                        at,
                        claim,
                    },
                );
            }
        }
        let mut cache = self.cache.lock().unwrap();
        let live: std::collections::HashSet<String> =
            workers.iter().filter_map(|w| w.uid()).collect();
        // Forget deleted Workers.
        cache.retain(|uid, _| live.contains(uid));
        Ok(cache
            .iter()
            .filter(|(uid, _)| **uid != me.uid)
            .filter_map(|(_, c)| c.claim.clone())
            .collect())
    }
}

/// A Worker's claim as its own admission would resolve it; `None` when it is not admitted
/// (invalid paths, a shared root outside its allowed roots): it claims nothing.
fn resolve(worker: &Worker, roots: &AllowedRoots) -> Option<Claim> {
    worker.resolved_paths().ok()?;
    let ns = worker.namespace().unwrap_or_default();
    let (allowed, resolved) = roots.admit(&ns, Path::new(&worker.spec.shared_root)).ok()?;
    let paths = worker.resolved_paths_at(&resolved, &allowed).ok()?;
    Some(Claim::of(worker, &paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(ns: &str, name: &str, created: i64, spec: serde_json::Value) -> Worker {
        let mut w: Worker = serde_json::from_value(serde_json::json!({
            "apiVersion": "workerrecovery.io/v1alpha1", "kind": "Worker",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                         "creationTimestamp": Timestamp::from_second(created).unwrap().to_string()},
            "spec": spec,
        }))
        .unwrap();
        w.metadata.generation = Some(1);
        w
    }

    fn claim(w: &Worker) -> Claim {
        Claim::of(w, &w.resolved_paths().unwrap())
    }

    #[test]
    fn overlapping_paths_and_the_same_lock_prefix_conflict() {
        let base = serde_json::json!({"container": "c", "sharedRoot": "/shared"});
        let with = |extra: serde_json::Value| {
            let mut spec = base.clone();
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            spec
        };
        let marie = worker("a", "marie", 1, base.clone());
        let anga = worker("a", "anga", 2, base.clone());
        assert_eq!(
            claim(&marie).conflict(&claim(&anga)),
            None,
            "distinct workers"
        );
        let cases = [
            (
                with(serde_json::json!({"workerName": "marie"})),
                "task directory /shared/tasks/marie",
            ),
            (
                with(serde_json::json!({"paths": {"tmpDir": "tasks/marie"}})),
                "tmp directory /shared/tasks/marie",
            ),
            (
                with(serde_json::json!({"paths": {"tmpDir": "tasks"}})),
                "tmp directory /shared/tasks",
            ),
            (
                with(serde_json::json!({"paths": {"tmpDir": "locks"}})),
                "tmp directory /shared/locks",
            ),
            (
                with(serde_json::json!({"paths": {"stateFile": "workers/marie/state.json"}})),
                "state file",
            ),
            (
                with(serde_json::json!({"paths": {"heartbeatFile": "tasks/marie/pending/x.json"}})),
                "heartbeat file",
            ),
        ];
        for (spec, what) in cases {
            let attacker = worker("a", "x", 2, spec);
            let found = claim(&attacker).conflict(&claim(&marie));
            assert!(
                found.as_deref().is_some_and(|f| f.starts_with(what)),
                "{what}: {found:?}"
            );
        }
        // The same locks directory is shared by design; the same prefix in it is not.
        let twin = worker(
            "b",
            "twin",
            2,
            with(
                serde_json::json!({"workerName": "marie", "paths": {"tasksDir": "t/twin", "stateFile": "s/twin", "heartbeatFile": "h/twin", "tmpDir": "tmp/twin"}}),
            ),
        );
        assert_eq!(
            claim(&twin).conflict(&claim(&marie)).as_deref(),
            Some("lock prefix marie_ in /shared/locks")
        );
        // A prefix of a name is another name: marie and marie_x do not conflict.
        let cousin = worker("a", "marie_x", 2, base);
        assert_eq!(claim(&cousin).conflict(&claim(&marie)), None);
    }

    #[tokio::test]
    async fn the_older_worker_keeps_its_claim_and_is_named_in_its_namespace_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let spec = serde_json::json!({"container": "c", "sharedRoot": root, "workerName": "marie"});
        let victim = worker("team-a", "marie", 100, spec.clone());
        let same_ns = worker("team-a", "intruder", 200, spec.clone());
        let other_ns = worker("team-b", "intruder", 300, spec);
        let (reader, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        for w in [&victim, &same_ns, &other_ns] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(w.clone()));
        }
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        let registry = Registry::new(reader);
        let roots = AllowedRoots::new(std::slice::from_ref(&root)).unwrap();
        let paths = |w: &Worker| w.resolved_paths_at(&root, &root).unwrap();

        assert!(registry
            .check(&Claim::of(&victim, &paths(&victim)), &roots)
            .await
            .is_ok());
        let refused = registry
            .check(&Claim::of(&same_ns, &paths(&same_ns)), &roots)
            .await
            .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::PathsClaimed);
        assert!(refused.message.contains("by Worker marie"), "{refused}");
        let refused = registry
            .check(&Claim::of(&other_ns, &paths(&other_ns)), &roots)
            .await
            .unwrap_err();
        assert!(
            refused.message.contains("another namespace")
                && !refused.message.contains("Worker marie"),
            "{refused}"
        );
    }
}
