use std::io::Cursor;

use super::*;

/// A little-endian ELF64 core with one note segment holding `NT_PRSTATUS` (the signal),
/// `NT_PRPSINFO` (the command's name and line) and `NT_FILE` (mapped files), as Linux writes
/// them.
pub(crate) fn synthetic_core(signal: i16, fname: &str, psargs: &str, files: &[&str]) -> Vec<u8> {
    let mut prstatus = vec![0u8; 336];
    prstatus[0..4].copy_from_slice(&i32::from(signal).to_le_bytes());
    prstatus[12..14].copy_from_slice(&signal.to_le_bytes());
    let mut prpsinfo = vec![0u8; 136];
    prpsinfo[40..40 + fname.len()].copy_from_slice(fname.as_bytes());
    prpsinfo[56..56 + psargs.len()].copy_from_slice(psargs.as_bytes());
    let mut nt_file = Vec::new();
    nt_file.extend((files.len() as u64).to_le_bytes());
    nt_file.extend(4096u64.to_le_bytes());
    for i in 0..files.len() as u64 {
        for v in [0x1000 * (i + 1), 0x1000 * (i + 2), 0] {
            nt_file.extend(v.to_le_bytes());
        }
    }
    for f in files {
        nt_file.extend(f.as_bytes());
        nt_file.push(0);
    }
    let mut notes = Vec::new();
    for (kind, desc) in [(1u32, prstatus), (3, prpsinfo), (0x4649_4c45, nt_file)] {
        notes.extend(5u32.to_le_bytes());
        notes.extend((desc.len() as u32).to_le_bytes());
        notes.extend(kind.to_le_bytes());
        notes.extend(b"CORE\0\0\0\0");
        notes.extend(&desc);
        notes.resize(notes.len().next_multiple_of(4), 0);
    }
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.resize(16, 0);
    elf.extend(4u16.to_le_bytes()); // e_type: ET_CORE
    elf.extend(62u16.to_le_bytes()); // e_machine: x86-64
    elf.extend(1u32.to_le_bytes());
    elf.extend(0u64.to_le_bytes()); // e_entry
    elf.extend(64u64.to_le_bytes()); // e_phoff
    elf.extend(0u64.to_le_bytes()); // e_shoff
    elf.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend(v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    elf.extend(4u32.to_le_bytes()); // p_type: PT_NOTE
    elf.extend(0u32.to_le_bytes());
    for v in [120u64, 0, 0, notes.len() as u64, 0, 4] {
        elf.extend(v.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
    }
    assert_eq!(elf.len(), 120);
    elf.extend(notes);
    elf
}

#[test]
fn a_core_tells_its_signal_command_and_executable() {
    let core = synthetic_core(
        6,
        "sample-worker",
        "/usr/local/bin/sample-worker --fast",
        &[
            "/usr/local/bin/sample-worker",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ],
    );

    let info = read(&mut Cursor::new(core)).unwrap();

    assert_eq!(info.signal, Some(6));
    assert_eq!(signal_name(info.signal.unwrap()), "SIGABRT");
    assert_eq!(
        info.command.as_deref(),
        Some("/usr/local/bin/sample-worker --fast")
    );
    assert_eq!(
        info.executable.as_deref(),
        Some("/usr/local/bin/sample-worker")
    );
}

#[test]
fn the_executable_is_the_mapped_file_named_like_the_process() {
    // A library mapped first (lower address) is not taken for the executable.
    let core = synthetic_core(
        11,
        "python3",
        "python3 agent.py",
        &["/lib/ld.so", "/usr/bin/python3.11"],
    );

    let info = read(&mut Cursor::new(core)).unwrap();

    assert_eq!(info.executable.as_deref(), Some("/usr/bin/python3.11"));
    assert_eq!(signal_name(11), "SIGSEGV");
}

#[test]
fn files_that_are_not_cores_are_refused_not_misread() {
    let mut not_core = synthetic_core(6, "w", "w", &["/w"]);
    not_core[16] = 2; // ET_EXEC
    assert!(matches!(
        read(&mut Cursor::new(not_core)),
        Err(CoreFileError::NotCore(2))
    ));
    assert!(matches!(
        read(&mut Cursor::new(b"#!/bin/sh\necho core\n".to_vec())),
        Err(CoreFileError::NotElf(_))
    ));
    // Cut short inside its notes: what could be read stands, nothing panics.
    let core = synthetic_core(6, "w", "w", &["/w"]);
    let cut = read(&mut Cursor::new(core[..200].to_vec())).unwrap();
    assert_eq!(cut.executable, None);
}

#[test]
fn a_hostile_note_size_is_refused() {
    let mut core = synthetic_core(6, "w", "w", &["/w"]);
    core[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes()); // p_filesz
    assert!(matches!(
        read(&mut Cursor::new(core)),
        Err(CoreFileError::TooLarge { .. })
    ));
}

#[test]
fn signals_are_named() {
    assert_eq!(signal_name(9), "SIGKILL");
    assert_eq!(signal_name(31), "SIGSYS");
    assert_eq!(signal_name(42), "signal 42");
    assert_eq!(signal_name(0), "signal 0");
}
