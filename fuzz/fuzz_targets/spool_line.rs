//! The spool reader (`span/src/spool.rs`, `visit_file_from`, and `SpoolEntry`'s hand-written
//! deserialiser in `span/src/record.rs`) on an arbitrary spool file: it reads complete lines only,
//! counts lines and offsets exactly, reports a line it cannot parse instead of failing, reads the
//! same when resumed where an earlier read of a shorter file stopped, and every entry it reads
//! writes back to a line that reads as the same entry. Also the spool file name parser.
//!
//! Input: one byte choosing where the file was cut for the first of two reads, then the file.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shimtrace_span::spool::{visit_file_from, SpoolFileName};
use shimtrace_span::SpoolEntry;

/// One scratch file per fuzzing process, on tmpfs where there is one.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a scratch dir");
        let file = dir.path().join("fuzz-1-2-0.jsonl");
        (dir, file)
    })
    .1
}

type Read = (Vec<(SpoolEntry, Vec<u8>)>, Vec<u64>, u64, u64);

fn read(data: &[u8], offset: u64, first_line: u64) -> Read {
    let path = scratch();
    std::fs::write(path, data).expect("writing the scratch file");
    let mut entries = Vec::new();
    let chunk = visit_file_from(path, offset, first_line, |entry, line| {
        entries.push((entry, line.to_vec()))
    })
    .expect("a readable file reads");
    let issues = chunk.issues.iter().map(|i| i.line).collect();
    (entries, issues, chunk.end_offset, chunk.next_line)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, file)) = input.split_first() else {
        return;
    };
    if let Ok(name) = std::str::from_utf8(file) {
        if let Some(parsed) = SpoolFileName::parse(name) {
            let again = format!(
                "{}-{}-{}-{}.jsonl",
                parsed.writer, parsed.pid, parsed.start_nanos, parsed.seq
            );
            assert_eq!(SpoolFileName::parse(&again), Some(parsed));
        }
    }

    let (entries, issues, end, next_line) = read(file, 0, 1);
    let complete = file.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = file.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(end, complete as u64, "offset past the last complete line");
    assert_eq!(next_line, 1 + lines, "next line number");
    assert!(entries.len() as u64 + issues.len() as u64 <= lines);
    assert!(issues.iter().all(|&l| (1..=lines).contains(&l)));
    for (entry, line) in &entries {
        assert!(!line.contains(&b'\n'));
        let written = serde_json::to_string(entry).expect("an entry read serialises");
        let back: SpoolEntry = serde_json::from_str(&written)
            .unwrap_or_else(|e| panic!("{written} does not read back: {e}"));
        assert_eq!(&back, entry, "{written}");
    }

    // The collector reads a growing file in steps: what it had, then the rest from there.
    let cut = usize::from(cut).min(file.len());
    let (mut first, first_issues, first_end, first_next) = read(&file[..cut], 0, 1);
    let (rest, rest_issues, rest_end, rest_next) = read(file, first_end, first_next);
    first.extend(rest);
    assert_eq!(rest_end, end);
    assert_eq!(rest_next, next_line);
    assert_eq!(
        first.iter().map(|(_, line)| line).collect::<Vec<_>>(),
        entries.iter().map(|(_, line)| line).collect::<Vec<_>>()
    );
    assert_eq!(
        first_issues
            .into_iter()
            .chain(rest_issues)
            .collect::<Vec<_>>(),
        issues
    );
});
