//! Crash dumps (runbook "Analyze Crash Dump"). The debug copy of a `Debug` run dumps its cores
//! into the Worker's `diagnostics.coreDumpDir`, in a directory of the run ([`placement`] says
//! how, from the host's `kernel.core_pattern`). The run records each new core with what its
//! notes say ([`core_file`]) and, when the administrator configured an analyzer image, the
//! `thread apply all bt full` backtrace that image's gdb makes of it, with the core and the
//! executable (copied out of the debug copy) mounted read-only.

pub mod core_file;
pub mod placement;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;

use crate::confined::{self, EntryKind, FsError};

/// Most cores recorded per run.
pub const MAX_CORES: usize = 5;
/// Most bytes of a backtrace kept in the run's status (and the post-mortem).
pub const MAX_BACKTRACE_BYTES: usize = 16 * 1024;
/// Largest executable copied out of a debug copy for the analyzer.
pub const MAX_EXECUTABLE_BYTES: u64 = 256 << 20;
/// Mode of a run's core directory: anyone may create a core in it (the worker may run as any
/// user), only its owner (root) may list it; the sticky bit keeps one user's files from
/// another.
pub const RUN_DIR_MODE: u32 = 0o1733;
/// Where the analyzer finds the core.
pub const CORE_MOUNT: &str = "/analyze/core";
/// Where the analyzer finds the executable, under its own name (gdb warns when the core's
/// command name and the executable's file name differ).
pub const EXECUTABLE_DIR: &str = "/analyze/bin";

/// The core analyzer, as the administrator configured it (`--core-analyzer-image`): an image
/// with `gdb` on its PATH, such as the one `scripts/build-analyzer-image.sh` builds from
/// Debian's gdb-minimal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analyzer {
    pub image: String,
    /// The analysis of one core is stopped after this long.
    pub timeout: Duration,
    pub memory_bytes: i64,
}

impl Analyzer {
    /// Where the executable `path` (of the core's process) is mounted: under its file name
    /// when that is a plain one, which a bind mount's `host:target` form cannot misread.
    pub fn executable_mount(path: &str) -> String {
        let name = path.rsplit('/').next().unwrap_or_default();
        let plain = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        format!(
            "{EXECUTABLE_DIR}/{}",
            if plain { name } else { "executable" }
        )
    }

    /// gdb in batch mode, without init files or auto-loaded scripts (the executable is the
    /// worker's, untrusted: `.debug_gdb_scripts` must not run), on the executable mounted at
    /// `executable` and the core.
    pub fn command(executable: &str) -> Vec<String> {
        [
            "gdb",
            "-nx",
            "-batch",
            "-iex",
            "set auto-load off",
            "-ex",
            "set pagination off",
            "-ex",
            "thread apply all bt full",
            executable,
            CORE_MOUNT,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// A core file found in a run's directory.
#[derive(Debug)]
pub struct FoundCore {
    pub path: PathBuf,
    pub size: u64,
    pub modified: Option<Timestamp>,
    /// What its notes say, or why they could not be read.
    pub info: Result<core_file::CoreInfo, String>,
}

/// The core files in `dir` (below `root`) that are not in `known`, oldest first, at most
/// `max`: regular files whose names do not start with `.` (the operator's own files). Blocks.
pub fn find_new(
    root: &Path,
    dir: &Path,
    known: &[String],
    max: usize,
) -> Result<Vec<FoundCore>, FsError> {
    let mut candidates = Vec::new();
    confined::visit_dir(root, dir, |entry| {
        let hidden = entry.name.starts_with('.');
        if entry.kind == EntryKind::File
            && !hidden
            && !known.iter().any(|k| Path::new(k) == entry.path)
        {
            candidates.push((entry.modified, entry.path));
        }
    })?;
    candidates.sort();
    candidates.truncate(max);
    let mut found = Vec::new();
    for (_, path) in candidates {
        // Gone or swapped for something else since the listing: left out, not an error.
        let Ok((mut file, size, modified)) = confined::open_file(root, &path) else {
            continue;
        };
        let info = core_file::read(&mut file).map_err(|e| e.to_string());
        found.push(FoundCore {
            path,
            size,
            modified,
            info,
        });
    }
    Ok(found)
}

/// `output` cut to [`MAX_BACKTRACE_BYTES`] on a character boundary, saying so when cut.
pub fn cap_backtrace(output: &str, truncated: bool) -> String {
    let mut end = output.len().min(MAX_BACKTRACE_BYTES);
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = output[..end].to_string();
    if truncated || end < output.len() {
        kept.push_str("\n[backtrace cut at 16 KiB]");
    }
    kept
}

#[cfg(test)]
mod tests;
