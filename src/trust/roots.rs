//! Allowed roots: the directories the administrator lets Workers' shared roots be in, for every
//! namespace (`--allowed-root /shared`, one team) or for one namespace only
//! (`--allowed-root team-a=/shared/team-a`, several teams on one host).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{Refusal, RefusalReason};

/// The directories that may hold shared roots, resolved through symlinks once at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedRoots {
    /// Open to Workers of every namespace.
    global: Vec<PathBuf>,
    /// Open to the Workers of one namespace only.
    namespaced: BTreeMap<String, Vec<PathBuf>>,
}

/// Why an allowed root cannot be used; the operator does not start.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("allowed root {} must be an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error("allowed root {}: {source}", .root.display())]
    Unresolvable {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("allowed root {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// One `--allowed-root` value: `DIR` (every namespace) or `NAMESPACE=DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootGrant {
    pub namespace: Option<String>,
    pub dir: PathBuf,
}

/// clap's value parser for `--allowed-root`: its error is text that clap prints.
impl std::str::FromStr for RootGrant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // An absolute path starts with '/', a namespace never contains '=' or '/'.
        let (namespace, dir) = match s.split_once('=') {
            Some((ns, dir)) if !s.starts_with('/') => (Some(ns), dir),
            _ => (None, s),
        };
        if let Some(ns) = namespace {
            let valid = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(format!(
                    "{s:?}: {ns:?} is not a namespace name (NAMESPACE=DIR)"
                ));
            }
        }
        Ok(Self {
            namespace: namespace.map(String::from),
            dir: PathBuf::from(dir),
        })
    }
}

impl AllowedRoots {
    /// Every namespace may use each of `dirs` (the single-team form).
    pub fn new(dirs: &[PathBuf]) -> Result<Self, RootError> {
        let grants: Vec<RootGrant> = dirs
            .iter()
            .map(|d| RootGrant {
                namespace: None,
                dir: d.clone(),
            })
            .collect();
        Self::from_grants(&grants)
    }

    /// Resolve each granted directory. A root must be an absolute path to an existing
    /// directory: a typo here would otherwise refuse Workers in silence.
    pub fn from_grants(grants: &[RootGrant]) -> Result<Self, RootError> {
        let mut roots = Self::default();
        for grant in grants {
            let resolved = resolve(&grant.dir)?;
            let list = match &grant.namespace {
                None => &mut roots.global,
                Some(ns) => roots.namespaced.entry(ns.clone()).or_default(),
            };
            if !list.contains(&resolved) {
                list.push(resolved);
            }
        }
        Ok(roots)
    }

    /// Every root, for the start-up log.
    pub fn describe_all(&self) -> String {
        let mut parts: Vec<String> = self
            .global
            .iter()
            .map(|r| r.display().to_string())
            .collect();
        for (ns, dirs) in &self.namespaced {
            parts.extend(dirs.iter().map(|d| format!("{ns}={}", d.display())));
        }
        parts.join(", ")
    }

    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.namespaced.is_empty()
    }

    /// The roots a Worker of `namespace` may use.
    pub fn for_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a PathBuf> {
        self.global
            .iter()
            .chain(self.namespaced.get(namespace).into_iter().flatten())
    }

    /// "/shared, /srv/workers" for a refusal: only what this namespace may use, so that one
    /// team does not learn another team's directories.
    fn describe(&self, namespace: &str) -> String {
        let roots: Vec<String> = self
            .for_namespace(namespace)
            .map(|r| r.display().to_string())
            .collect();
        if roots.is_empty() {
            return format!("none are configured for namespace {namespace} (--allowed-root)");
        }
        roots.join(", ")
    }

    /// Resolve `shared_root` through symlinks and find the root allowed to `namespace` that
    /// holds it: `(allowed root, resolved shared root)`. Blocking (it resolves symlinks on
    /// disk).
    pub fn admit(
        &self,
        namespace: &str,
        shared_root: &Path,
    ) -> Result<(PathBuf, PathBuf), Refusal> {
        let not_allowed = || {
            Refusal {
            reason: RefusalReason::SharedRootNotAllowed,
            message: format!(
                "sharedRoot {} is not inside an allowed root of the operator for namespace {namespace} (allowed: {}); nothing was read",
                shared_root.display(),
                self.describe(namespace)
            ),
        }
        };
        if !shared_root.is_absolute() {
            return Err(not_allowed());
        }
        let holder = |p: &Path| {
            self.for_namespace(namespace)
                .find(|r| p.starts_with(r))
                .cloned()
        };
        match std::fs::canonicalize(shared_root) {
            Ok(resolved) => match holder(&resolved) {
                Some(root) => Ok((root, resolved)),
                None => Err(not_allowed()),
            },
            // Only say "missing" for a path that would be allowed: outside the allowed roots the
            // answer is the same whether the path exists or not, so it cannot be used to probe.
            Err(e) if holder(shared_root).is_some() => Err(Refusal {
                reason: RefusalReason::SharedRootMissing,
                message: format!(
                    "sharedRoot {} cannot be resolved: {e}",
                    shared_root.display()
                ),
            }),
            Err(_) => Err(not_allowed()),
        }
    }
}

fn resolve(root: &Path) -> Result<PathBuf, RootError> {
    if !root.is_absolute() {
        return Err(RootError::NotAbsolute(root.into()));
    }
    let resolved = std::fs::canonicalize(root).map_err(|source| RootError::Unresolvable {
        root: root.into(),
        source,
    })?;
    if !resolved.is_dir() {
        return Err(RootError::NotADirectory(root.into()));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_resolve_through_symlinks_and_refuse_what_leaves_them() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(allowed.join("team/shared")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
        std::os::unix::fs::symlink(allowed.join("team/shared"), allowed.join("alias")).unwrap();
        let roots = AllowedRoots::new(std::slice::from_ref(&allowed)).unwrap();
        let real = std::fs::canonicalize(&allowed).unwrap();

        let (root, resolved) = roots.admit("ns", &allowed.join("team/shared")).unwrap();
        assert_eq!(root, real);
        assert_eq!(resolved, real.join("team/shared"));
        // A symlink inside the allowed root that stays inside is resolved to its target.
        assert_eq!(
            roots.admit("ns", &allowed.join("alias")).unwrap().1,
            real.join("team/shared")
        );
        for refused in [
            outside.clone(),
            allowed.join("escape"),
            PathBuf::from("/"),
            PathBuf::from("/etc"),
            allowed.join("team/../../outside"),
        ] {
            let err = roots.admit("ns", &refused).unwrap_err();
            assert_eq!(
                err.reason,
                RefusalReason::SharedRootNotAllowed,
                "{refused:?}"
            );
            assert!(
                !err.message.contains(outside.to_str().unwrap()) || refused.starts_with(&outside),
                "the resolved target is not disclosed: {}",
                err.message
            );
        }
        // A sibling whose name merely starts like the allowed root is outside it.
        std::fs::create_dir_all(dir.path().join("allowed-not")).unwrap();
        assert!(roots.admit("ns", &dir.path().join("allowed-not")).is_err());
        // Missing inside: said so; missing outside: the same answer as any outside path.
        assert_eq!(
            roots.admit("ns", &allowed.join("nope")).unwrap_err().reason,
            RefusalReason::SharedRootMissing
        );
        assert_eq!(
            roots
                .admit("ns", Path::new("/nope/nothing"))
                .unwrap_err()
                .reason,
            RefusalReason::SharedRootNotAllowed
        );
    }

    #[test]
    fn a_namespace_uses_its_own_roots_and_the_global_ones_only() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["team-a", "team-b", "common"] {
            std::fs::create_dir_all(dir.path().join(d).join("w")).unwrap();
        }
        let grant = |s: String| s.parse::<RootGrant>().unwrap();
        let base = dir.path().display();
        let roots = AllowedRoots::from_grants(&[
            grant(format!("team-a={base}/team-a")),
            grant(format!("team-b={base}/team-b")),
            grant(format!("{base}/common")),
        ])
        .unwrap();
        let a = dir.path().join("team-a/w");
        let b = dir.path().join("team-b/w");
        assert!(roots.admit("team-a", &a).is_ok());
        assert!(roots.admit("team-b", &b).is_ok());
        assert!(roots.admit("team-a", &dir.path().join("common/w")).is_ok());
        let err = roots.admit("team-a", &b).unwrap_err();
        assert_eq!(err.reason, RefusalReason::SharedRootNotAllowed);
        let allowed_list = err.message.split("allowed:").nth(1).unwrap();
        assert!(
            !allowed_list.contains("team-b") && allowed_list.contains("team-a"),
            "only this namespace's roots are named: {}",
            err.message
        );
        assert!(roots.admit("team-c", &a).is_err());
        // A namespace without a root of its own, and no global one: said so.
        let only_a = AllowedRoots::from_grants(&[grant(format!("team-a={base}/team-a"))]).unwrap();
        let err = only_a.admit("team-c", &a).unwrap_err();
        assert!(
            err.message
                .contains("none are configured for namespace team-c"),
            "{err}"
        );
    }

    #[test]
    fn grants_parse_and_roots_must_exist() {
        assert_eq!(
            "/shared".parse::<RootGrant>().unwrap(),
            RootGrant {
                namespace: None,
                dir: "/shared".into()
            }
        );
        assert_eq!(
            "team-a=/shared/a=b".parse::<RootGrant>().unwrap(),
            RootGrant {
                namespace: Some("team-a".into()),
                dir: "/shared/a=b".into()
            }
        );
        assert_eq!(
            "/x=y".parse::<RootGrant>().unwrap().namespace,
            None,
            "an absolute path may contain '='"
        );
        assert!("Team_A=/x".parse::<RootGrant>().is_err());
        let relative = AllowedRoots::new(&[PathBuf::from("relative")]).unwrap_err();
        assert!(matches!(relative, RootError::NotAbsolute(_)));
        assert_eq!(
            relative.to_string(),
            "allowed root relative must be an absolute path"
        );
        let missing = AllowedRoots::new(&[PathBuf::from("/does/not/exist/wro")]).unwrap_err();
        assert!(matches!(missing, RootError::Unresolvable { .. }));
        assert!(
            missing
                .to_string()
                .starts_with("allowed root /does/not/exist/wro: No such file"),
            "{missing}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(
            AllowedRoots::new(&[file.path().to_path_buf()])
                .unwrap_err()
                .to_string(),
            format!("allowed root {} is not a directory", file.path().display())
        );
        let err = AllowedRoots::default()
            .admit("ns", Path::new("/tmp"))
            .unwrap_err();
        assert_eq!(err.reason, RefusalReason::SharedRootNotAllowed);
        assert!(err.message.contains("none are configured"), "{err}");
    }
}
