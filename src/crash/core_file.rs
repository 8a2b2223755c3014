//! What an ELF core file says about the process that dumped it: the signal that killed it,
//! its command line and its executable, read from the core's notes (`NT_PRSTATUS`,
//! `NT_PRPSINFO`, `NT_FILE`) with the `object` crate.
//!
//! A core may be gigabytes and comes from an untrusted worker: only the ELF header, the
//! program headers and the note segments are read, each capped, and every offset is checked.

use std::io::{Read, Seek, SeekFrom};

use object::{
    elf::{FileHeader64, ET_CORE, NT_FILE, NT_PRPSINFO, NT_PRSTATUS, PT_NOTE},
    read::elf::{FileHeader, NoteIterator, ProgramHeader},
    Endianness,
};

/// Most bytes of program headers read (a core has one per mapping: thousands at most).
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Most bytes of one note segment read (the notes of a process with many threads).
const MAX_NOTE_BYTES: u64 = 8 << 20;

/// The process a core file is of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreInfo {
    /// The signal that made it dump (`pr_cursig`), e.g. 6.
    pub signal: Option<i32>,
    /// Its command line as the kernel kept it (`pr_psargs`, at most 80 bytes).
    pub command: Option<String>,
    /// Its executable: the mapped file named like the process (`pr_fname`), from `NT_FILE`.
    pub executable: Option<String>,
}

/// Why a file was not read as a core.
#[derive(Debug, thiserror::Error)]
pub enum CoreFileError {
    #[error("not a 64-bit ELF file: {0}")]
    NotElf(String),
    #[error("an ELF file of type {0}, not a core (type 4)")]
    NotCore(u16),
    #[error("{what} of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Read what the core `file` says about its process.
pub fn read(file: &mut (impl Read + Seek)) -> Result<CoreInfo, CoreFileError> {
    let mut head = read_at(file, 0, 64, "ELF header")?;
    let header = FileHeader64::<Endianness>::parse(head.as_slice())
        .map_err(|e| CoreFileError::NotElf(e.to_string()))?;
    let endian = header
        .endian()
        .map_err(|e| CoreFileError::NotElf(e.to_string()))?;
    if header.e_type(endian) != ET_CORE {
        return Err(CoreFileError::NotCore(header.e_type(endian)));
    }
    let headers_end = header.e_phoff(endian)
        + u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
    head = read_at(file, 0, headers_end, "program headers")?;
    let header = FileHeader64::<Endianness>::parse(head.as_slice())
        .map_err(|e| CoreFileError::NotElf(e.to_string()))?;
    let segments = header
        .program_headers(endian, head.as_slice())
        .map_err(|e| CoreFileError::NotElf(e.to_string()))?;
    let mut notes = Notes::default();
    for segment in segments.iter().filter(|s| s.p_type(endian) == PT_NOTE) {
        let size = segment.p_filesz(endian);
        if size > MAX_NOTE_BYTES {
            return Err(CoreFileError::TooLarge {
                what: "a note segment",
                size,
                limit: MAX_NOTE_BYTES,
            });
        }
        let data = read_at(file, segment.p_offset(endian), size, "a note segment")?;
        let align = segment.p_align(endian).max(4);
        let Ok(mut it) = NoteIterator::<FileHeader64<Endianness>>::new(endian, align, &data) else {
            continue;
        };
        // A malformed note ends the walk of its segment: what was read so far stands.
        while let Ok(Some(note)) = it.next() {
            if note.name() == b"CORE" {
                notes.add(note.n_type(endian), note.desc(), endian);
            }
        }
    }
    Ok(notes.info())
}

/// `len` bytes from `offset`, at most [`MAX_HEADER_BYTES`] or [`MAX_NOTE_BYTES`]; a file
/// shorter than that gives what it has.
fn read_at(
    file: &mut (impl Read + Seek),
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>, CoreFileError> {
    let limit = MAX_HEADER_BYTES.max(MAX_NOTE_BYTES);
    if len > limit {
        return Err(CoreFileError::TooLarge {
            what,
            size: len,
            limit,
        });
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The notes of interest, as they are met.
#[derive(Default)]
struct Notes {
    signal: Option<i32>,
    fname: Option<String>,
    psargs: Option<String>,
    files: Vec<String>,
}

impl Notes {
    fn add(&mut self, kind: u32, desc: &[u8], endian: Endianness) {
        match kind {
            // The first thread's status is the one that took the signal.
            NT_PRSTATUS if self.signal.is_none() => self.signal = prstatus_signal(desc, endian),
            NT_PRPSINFO => {
                // struct elf_prpsinfo on 64-bit Linux: pr_fname[16] at 40, pr_psargs[80] at 56.
                self.fname = desc.get(40..56).map(c_string);
                self.psargs = desc.get(56..136).map(c_string);
            }
            NT_FILE => self.files = mapped_files(desc, endian),
            _ => {}
        }
    }

    fn info(self) -> CoreInfo {
        let executable = match &self.fname {
            Some(name) if !name.is_empty() => self
                .files
                .iter()
                .find(|f| basename(f).starts_with(name.as_str()))
                .cloned(),
            _ => None,
        }
        .or_else(|| self.files.first().cloned());
        CoreInfo {
            signal: self.signal,
            command: self.psargs.filter(|s| !s.is_empty()),
            executable,
        }
    }
}

/// `pr_cursig` of a `struct elf_prstatus`: a short at 12, after `struct elf_siginfo`
/// (three ints), on every Linux architecture; `si_signo` (at 0) when it is 0.
fn prstatus_signal(desc: &[u8], endian: Endianness) -> Option<i32> {
    let cursig = i32::from(u16_at(desc, 12, endian)? as i16);
    let signo = u32_at(desc, 0, endian).map(|v| v as i32);
    Some(cursig).filter(|s| *s > 0).or(signo.filter(|s| *s > 0))
}

/// The paths of `NT_FILE`: a count and a page size, `count` (start, end, offset) triples,
/// then `count` NUL-terminated names.
fn mapped_files(desc: &[u8], endian: Endianness) -> Vec<String> {
    let Some(count) = u64_at(desc, 0, endian) else {
        return Vec::new();
    };
    let names_at = 16u64.saturating_add(count.saturating_mul(24));
    let Some(names) = usize::try_from(names_at).ok().and_then(|at| desc.get(at..)) else {
        return Vec::new();
    };
    let mut files: Vec<String> = names
        .split(|b| *b == 0)
        .take(count.min(100_000) as usize)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| !n.is_empty())
        .collect();
    files.dedup();
    files
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A NUL-padded C string, lossily.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

fn u16_at(b: &[u8], at: usize, endian: Endianness) -> Option<u16> {
    let bytes: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(match endian {
        Endianness::Little => u16::from_le_bytes(bytes),
        Endianness::Big => u16::from_be_bytes(bytes),
    })
}

fn u32_at(b: &[u8], at: usize, endian: Endianness) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(match endian {
        Endianness::Little => u32::from_le_bytes(bytes),
        Endianness::Big => u32::from_be_bytes(bytes),
    })
}

fn u64_at(b: &[u8], at: usize, endian: Endianness) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(match endian {
        Endianness::Little => u64::from_le_bytes(bytes),
        Endianness::Big => u64::from_be_bytes(bytes),
    })
}

/// The name of a Linux signal: `SIGABRT` for 6; `signal 42` for one without a name.
pub fn signal_name(signal: i32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal - 1)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| format!("signal {signal}"), |n| (*n).to_string())
}

#[cfg(test)]
pub(crate) mod tests;
