use std::fs;

use super::*;
use crate::crash::core_file::tests::synthetic_core;

#[test]
fn new_cores_are_found_oldest_first_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let run = root.join("cores/marie/debug-1");
    confined::make_dir(&root, &run, RUN_DIR_MODE).unwrap();
    fs::write(
        run.join("core.7"),
        synthetic_core(6, "w", "w --x", &["/bin/w"]),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::write(run.join("core.9"), b"not an ELF file").unwrap();
    fs::write(run.join(".core.7.executable"), b"the operator's").unwrap();
    fs::create_dir(run.join("a-directory")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", run.join("core.link")).unwrap();

    let found = find_new(&root, &run, &[], MAX_CORES).unwrap();

    let names: Vec<_> = found
        .iter()
        .map(|c| c.path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["core.7", "core.9"],
        "regular, visible files only, oldest first"
    );
    let first = found[0].info.as_ref().unwrap();
    assert_eq!(
        (first.signal, first.executable.as_deref()),
        (Some(6), Some("/bin/w"))
    );
    assert!(found[1]
        .info
        .as_ref()
        .unwrap_err()
        .contains("not a 64-bit ELF file"));
    assert!(found[0].size > 0 && found[0].modified.is_some());

    let known = [run.join("core.7").display().to_string()];
    let again = find_new(&root, &run, &known, MAX_CORES).unwrap();
    assert_eq!(again.len(), 1, "a recorded core is not found again");
    assert!(find_new(&root, &run, &[], 1).unwrap().len() == 1, "capped");
}

#[test]
fn the_run_directory_is_writable_by_any_user_and_listable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let run = root.join("cores/run-1");
    confined::make_dir(&root, &run, RUN_DIR_MODE).unwrap();
    confined::make_dir(&root, &run, RUN_DIR_MODE).unwrap();
    assert_eq!(
        fs::metadata(&run).unwrap().permissions().mode() & 0o7777,
        0o1733
    );
}

#[test]
fn a_run_directory_behind_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), root.join("cores")).unwrap();
    assert!(confined::make_dir(&root, &root.join("cores/run-1"), RUN_DIR_MODE).is_err());
    assert!(find_new(&root, &root.join("cores"), &[], 5).is_err());
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn files_are_placed_once_and_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let path = root.join(".core.7.executable");
    confined::place_file(&root, &path, b"first", 0o400).unwrap();
    confined::place_file(&root, &path, b"second", 0o400).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"first");
    let names: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
}

#[test]
fn backtraces_are_capped_on_a_character_boundary() {
    assert_eq!(cap_backtrace("#0 main ()", false), "#0 main ()");
    let long = "é".repeat(MAX_BACKTRACE_BYTES);
    let kept = cap_backtrace(&long, false);
    assert!(kept.len() <= MAX_BACKTRACE_BYTES + 40);
    assert!(kept.ends_with("[backtrace cut at 16 KiB]"));
    assert!(cap_backtrace("short", true).ends_with("[backtrace cut at 16 KiB]"));
}

#[test]
fn gdb_runs_without_scripts_of_the_executable() {
    let cmd = Analyzer::command("/analyze/bin/w");
    assert_eq!(cmd[0], "gdb");
    assert!(cmd.windows(2).any(|w| w == ["-iex", "set auto-load off"]));
    assert!(cmd.contains(&"-nx".to_string()));
    assert_eq!(&cmd[cmd.len() - 2..], ["/analyze/bin/w", CORE_MOUNT]);
}

#[test]
fn the_executable_keeps_a_plain_name_only() {
    let mount = Analyzer::executable_mount;
    assert_eq!(
        mount("/usr/local/bin/sample-worker"),
        "/analyze/bin/sample-worker"
    );
    assert_eq!(mount("/usr/bin/python3.11"), "/analyze/bin/python3.11");
    for odd in [
        "/bin/a:b",
        "/bin/a,ro",
        "/bin/",
        "/bin/..",
        "/x/has space",
        "",
    ] {
        assert_eq!(mount(odd), "/analyze/bin/executable", "{odd:?}");
    }
}
