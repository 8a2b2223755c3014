//! Where the kernel writes a core, from the host's `kernel.core_pattern` (one setting for the
//! whole host, not namespaced), and so how a debug copy is made to dump into the Worker's
//! core dump directory. Pure.

/// The directory the debug copy starts in when the pattern is relative.
pub const WORKING_DIR_MOUNT: &str = "/var/lib/workerrecovery/cores";

/// How cores of the debug copy reach the core dump directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A relative pattern (`core`, the kernel's default): the core goes to the process'
    /// working directory, so the directory is mounted at [`WORKING_DIR_MOUNT`] and the copy
    /// starts there.
    WorkingDir,
    /// An absolute pattern: the core goes to this directory of the container's filesystem,
    /// where the directory is mounted.
    Directory(String),
    /// The pattern gives cores to a host program (`|/usr/lib/systemd/systemd-coredump ...`):
    /// they never reach a directory the operator can name. Why, in words.
    Elsewhere(String),
}

impl Placement {
    /// The placement for `pattern`, as read from `/proc/sys/kernel/core_pattern`.
    pub fn for_pattern(pattern: &str) -> Self {
        let pattern = pattern.trim_end_matches('\n');
        if let Some(handler) = pattern.strip_prefix('|') {
            let program = handler.split_whitespace().next().unwrap_or_default();
            return Self::Elsewhere(format!(
                "the host's kernel.core_pattern pipes cores to {program}; set it to a file name (e.g. `core`) to collect them here"
            ));
        }
        if pattern.is_empty() {
            return Self::Elsewhere("the host's kernel.core_pattern is empty".into());
        }
        match pattern.rsplit_once('/') {
            None => Self::WorkingDir,
            Some(("", _)) => Self::Elsewhere(format!(
                "the host's kernel.core_pattern {pattern:?} writes cores to the container's /"
            )),
            Some((dir, _)) if !dir.starts_with('/') => Self::Elsewhere(format!(
                "the host's kernel.core_pattern {pattern:?} names a directory relative to the worker's working directory"
            )),
            // `%` specifiers in the directory part (`/cores/%h/core`) give a directory per
            // host or process, which no single mount can cover.
            Some((dir, _)) if dir.contains('%') => Self::Elsewhere(format!(
                "the directory of the host's kernel.core_pattern {pattern:?} has % specifiers"
            )),
            Some((dir, _)) => Self::Directory(dir.to_string()),
        }
    }

    /// Where the core dump directory is mounted in the debug copy, and whether the copy starts
    /// in it; `None` when cores cannot be collected.
    pub fn mount_point(&self) -> Option<(&str, bool)> {
        match self {
            Self::WorkingDir => Some((WORKING_DIR_MOUNT, true)),
            Self::Directory(dir) => Some((dir, false)),
            Self::Elsewhere(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_pattern_dumps_in_the_working_directory() {
        for pattern in ["core", "core\n", "core.%e.%p"] {
            assert_eq!(Placement::for_pattern(pattern), Placement::WorkingDir);
        }
        assert_eq!(
            Placement::WorkingDir.mount_point(),
            Some((WORKING_DIR_MOUNT, true))
        );
    }

    #[test]
    fn an_absolute_pattern_dumps_in_its_directory() {
        let p = Placement::for_pattern("/var/crash/core.%e.%p.%t\n");
        assert_eq!(p, Placement::Directory("/var/crash".into()));
        assert_eq!(p.mount_point(), Some(("/var/crash", false)));
    }

    #[test]
    fn patterns_that_cannot_be_collected_say_why() {
        for (pattern, says) in [
            (
                "|/usr/lib/systemd/systemd-coredump %P %u %g",
                "pipes cores to /usr/lib/systemd/systemd-coredump",
            ),
            (
                "|/usr/share/apport/apport -p%p",
                "pipes cores to /usr/share/apport/apport",
            ),
            ("cores/core", "relative to the worker's working directory"),
            ("/cores/%h/core", "% specifiers"),
            ("/core.%p", "container's /"),
            ("", "empty"),
        ] {
            let p = Placement::for_pattern(pattern);
            assert!(
                matches!(&p, Placement::Elsewhere(why) if why.contains(says)),
                "{pattern}: {p:?}"
            );
            assert_eq!(p.mount_point(), None);
        }
    }
}
