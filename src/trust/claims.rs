//! Path claims: two admitted Workers never share files.
//!
//! A Worker claims its task directory, state file, heartbeat file, tmp directory and core dump
//! directory (when it declares one), and the lock prefix `<worker>_` in its locks directory. Two claims conflict when a path of one is
//! the same as, or inside, a path of the other (a tmp directory pointed at another worker's
//! task directory would otherwise be emptied), or when both use the same locks directory with
//! the same worker name.
//!
//! Who keeps a contested path: the Worker that was admitted with it first. An admitted Worker
//! records its claim in status (`status.claim`, written by the operator only), and keeps it
//! while its container is briefly gone; a Worker refused for any reason holds nothing. A Worker
//! the operator has not looked at yet holds a tentative claim, after every recorded one, and
//! among such newcomers the older (by creation time, then namespace and name) goes first, so
//! that every replica and every restart decides alike. An older Worker that creates a
//! consenting container later cannot take a younger, admitted Worker's paths.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    runtime::reflector::{store::WriterDropped, Store},
    ResourceExt,
};

use super::{roots::AllowedRoots, Refusal, RefusalReason};
use crate::crd::worker::{PathClaim, ResolvedPaths, Worker};

/// Why the other Workers' claims could not be gathered; the refusal says it in text.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    /// The Workers' cache was not filled within [`STORE_WAIT`].
    #[error("the Workers' cache is not filled yet")]
    NotReady,
    /// The cache will never be filled: its writer is gone.
    #[error(transparent)]
    StoreGone(#[from] WriterDropped),
    /// Resolving newcomers' claims on the blocking pool did not finish.
    #[error(transparent)]
    Resolve(#[from] tokio::task::JoinError),
}

/// What a claim calls the core dump directory.
const CORE_DUMPS: &str = "core dump directory";
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
    /// When the Worker was admitted with these paths (its recorded claim); `None` for a
    /// tentative claim.
    pub since: Option<Timestamp>,
    /// Task directory, state file, heartbeat file, tmp directory, then the core dump directory
    /// when declared: nobody else's.
    files: Vec<(&'static str, PathBuf)>,
    /// The locks directory, shared, and the worker name whose prefix is claimed in it.
    locks_dir: PathBuf,
    worker_name: String,
}

impl Claim {
    /// The claim of `worker` with `paths`: established since its recorded claim when that
    /// names the same paths, tentative otherwise.
    pub fn of(worker: &Worker, paths: &ResolvedPaths) -> Self {
        let mut claim = Self {
            uid: worker_uid(worker),
            namespace: worker.namespace().unwrap_or_default(),
            name: worker.name_any(),
            created: worker.creation_timestamp().map(|t| t.0),
            since: None,
            files: [
                ("task directory", paths.tasks_dir.clone()),
                ("state file", paths.state_file.clone()),
                ("heartbeat file", paths.heartbeat_file.clone()),
                ("tmp directory", paths.tmp_dir.clone()),
            ]
            .into_iter()
            .chain(paths.core_dump_dir.clone().map(|d| (CORE_DUMPS, d)))
            .collect(),
            locks_dir: paths.locks_dir.clone(),
            worker_name: paths.worker_name.clone(),
        };
        let recorded = worker.status.as_ref().and_then(|s| s.claim.as_ref());
        if let Some(r) = recorded.filter(|r| claim.record(r.since.clone()) == **r) {
            claim.since = r.since.as_ref().map(|t| t.0);
        }
        claim
    }

    /// A claim recorded in another Worker's status.
    fn recorded(worker: &Worker, r: &PathClaim) -> Self {
        Self {
            uid: worker_uid(worker),
            namespace: worker.namespace().unwrap_or_default(),
            name: worker.name_any(),
            created: worker.creation_timestamp().map(|t| t.0),
            // A recorded claim without a time still goes before every tentative one.
            since: Some(r.since.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0)),
            files: [
                ("task directory", PathBuf::from(&r.task_directory)),
                ("state file", PathBuf::from(&r.state_file)),
                ("heartbeat file", PathBuf::from(&r.heartbeat_file)),
                ("tmp directory", PathBuf::from(&r.tmp_directory)),
            ]
            .into_iter()
            .chain(
                r.core_dump_directory
                    .as_ref()
                    .map(|d| (CORE_DUMPS, d.into())),
            )
            .collect(),
            locks_dir: PathBuf::from(&r.locks_directory),
            worker_name: r.worker_name.clone(),
        }
    }

    /// The claim as status records it, held since `since`.
    pub fn record(&self, since: Option<Time>) -> PathClaim {
        let path = |i: usize| self.files[i].1.display().to_string();
        PathClaim {
            since,
            task_directory: path(0),
            state_file: path(1),
            heartbeat_file: path(2),
            tmp_directory: path(3),
            locks_directory: self.locks_dir.display().to_string(),
            worker_name: self.worker_name.clone(),
            core_dump_directory: self.files.get(4).map(|(_, d)| d.display().to_string()),
        }
    }

    /// Whether this claim goes before `other`: recorded claims by when they were made, then
    /// tentative ones by the Worker's age; a Worker without a creation time comes last.
    fn precedes(&self, other: &Claim) -> bool {
        let key = |c: &Claim| {
            (
                c.since.is_none(),
                c.since.map_or(i128::MAX, |t| t.as_nanosecond()),
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

    /// Every other Worker's claim: the one recorded in its status, or, for a Worker the
    /// operator has not looked at yet, the tentative one its admission would make (resolved
    /// again when older than [`CLAIM_TTL`]). A Worker refused for any reason claims nothing.
    async fn claims(&self, me: &Claim, roots: &AllowedRoots) -> Result<Vec<Claim>, ClaimsError> {
        tokio::time::timeout(STORE_WAIT, self.workers.wait_until_ready())
            .await
            .map_err(|_| ClaimsError::NotReady)??;
        let workers = self.workers.state();
        let mut claims = Vec::new();
        let mut newcomers = Vec::new();
        for w in workers.iter().filter(|w| worker_uid(w) != me.uid) {
            let status = w.status.as_ref();
            match status.and_then(|s| s.claim.as_ref()) {
                Some(r) => claims.push(Claim::recorded(w, r)),
                None if status.is_none_or(|s| s.conditions.is_empty()) => newcomers.push(w.clone()),
                None => {}
            }
        }
        claims.extend(self.tentative(newcomers, roots).await?);
        Ok(claims)
    }

    /// Tentative claims of Workers not looked at yet, from the cache or resolved anew.
    async fn tentative(
        &self,
        workers: Vec<std::sync::Arc<Worker>>,
        roots: &AllowedRoots,
    ) -> Result<Vec<Claim>, ClaimsError> {
        let stale: Vec<_> = {
            let cache = self.cache.lock().unwrap();
            workers
                .iter()
                .filter(|w| {
                    cache.get(&worker_uid(w)).is_none_or(|c| {
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
                    .map(|w| (worker_uid(w), w.metadata.generation, resolve(w, &roots)))
                    .collect::<Vec<_>>()
            })
            .await?;
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
        let wanted: std::collections::HashSet<String> =
            workers.iter().map(|w| worker_uid(w)).collect();
        // Only newcomers are kept: a Worker looked at since, or deleted, is forgotten.
        cache.retain(|uid, _| wanted.contains(uid));
        Ok(cache.values().filter_map(|c| c.claim.clone()).collect())
    }
}

fn worker_uid(worker: &Worker) -> String {
    worker.uid().unwrap_or_else(|| {
        format!(
            "{}/{}",
            worker.namespace().unwrap_or_default(),
            worker.name_any()
        )
    })
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
            (
                with(serde_json::json!({"diagnostics": {"coreDumpDir": "tasks/marie/active"}})),
                "core dump directory /shared/tasks/marie/active",
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

    /// The Worker admitted first keeps its paths: an older Worker that was refused (no
    /// container) and later gets a consenting container cannot take them; a refused Worker
    /// holds nothing.
    #[tokio::test]
    async fn an_admitted_worker_keeps_its_paths_against_an_older_newcomer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let spec = serde_json::json!({"container": "c", "sharedRoot": root, "workerName": "marie"});
        let paths = |w: &Worker| w.resolved_paths_at(&root, &root).unwrap();
        let mut victim = worker("team-a", "marie", 200, spec.clone());
        let mut older = worker("team-a", "older", 100, spec);
        // The victim was admitted at 300 and recorded its claim; the older one was refused.
        let accepted = |status: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        };
        let recorded = Claim::of(&victim, &paths(&victim))
            .record(Some(Time(Timestamp::from_second(300).unwrap())));
        victim.status = Some(crate::crd::worker::WorkerStatus {
            claim: Some(recorded),
            conditions: vec![accepted("True")],
            ..Default::default()
        });
        older.status = Some(crate::crd::worker::WorkerStatus {
            conditions: vec![accepted("False")],
            ..Default::default()
        });
        let (reader, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        for w in [&victim, &older] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(w.clone()));
        }
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        let registry = Registry::new(reader);
        let roots = AllowedRoots::new(std::slice::from_ref(&root)).unwrap();

        let mine = Claim::of(&victim, &paths(&victim));
        assert!(mine.since.is_some(), "its recorded claim is its own");
        assert!(
            registry.check(&mine, &roots).await.is_ok(),
            "a refused Worker holds nothing"
        );
        let err = registry
            .check(&Claim::of(&older, &paths(&older)), &roots)
            .await
            .unwrap_err();
        assert!(err.message.contains("by Worker marie"), "{err}");
    }
}
