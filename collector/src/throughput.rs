//! `shimtrace bench`: generates a synthetic spool and measures ingest throughput and report time.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::ingest::Ingester;
use crate::report::{build_report, render, Format};
use crate::source::SourceError;
use crate::store::{Store, StoreError};
use crate::synth::{generate_spool, SynthConfig, SynthSummary};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot write the synthetic spool in {path}: {source} (give --dir a directory you can write, on a filesystem with room for the spool)")]
    Generate {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path} (what an earlier bench left): {source} (remove it yourself, or give --dir another directory)")]
    Clear {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] SourceError),
}

/// Measured numbers.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub generated: SynthSummary,
    pub generate_seconds: f64,
    pub ingest_seconds: f64,
    pub ingest_spans_per_second: f64,
    /// Copying the ingest's WAL into the database file afterwards (not part of ingest).
    pub checkpoint_seconds: f64,
    /// Loading every span from the store and building the report.
    pub report_seconds: f64,
    pub render_md_seconds: f64,
    pub render_html_seconds: f64,
    pub html_bytes: usize,
}

/// Removes `path` (a directory with what it holds), unless it is not there.
fn clear(path: &Path) -> Result<(), BenchError> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BenchError::Clear {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Generates `config` into `work/bench-spool`, ingests it into `work/bench.db` and times a report.
/// (Names of its own: `work` may be a directory that holds a real spool.)
/// What an earlier run left there (the spool, the store and its `-wal` and `-shm` files) is
/// removed first: ingest would otherwise find it stored already, or read two runs' spools.
pub fn run(
    work: &Path,
    config: &SynthConfig,
    on_container: impl FnMut(usize),
) -> Result<BenchResult, BenchError> {
    let spool = work.join("bench-spool");
    let db = work.join("bench.db");
    clear(&spool)?;
    for suffix in ["", "-wal", "-shm"] {
        clear(&work.join(format!("bench.db{suffix}")))?;
    }
    let t = Instant::now();
    let (generated, walls) =
        generate_spool(&spool, config, on_container).map_err(|source| BenchError::Generate {
            path: spool.clone(),
            source,
        })?;
    let generate_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut ingester = Ingester::new(Store::open(&db)?, &spool, false);
    let report = ingester.ingest_all()?;
    let ingest_seconds = t.elapsed().as_secs_f64();
    // Folding the WAL into the database is storage upkeep (serve does it in its housekeeping);
    // timed on its own.
    let t = Instant::now();
    ingester.store().checkpoint()?;
    let checkpoint_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let store = ingester.store();
    let built = build_report(store.all_spans()?, store.dropped_total()?, &walls, vec![]);
    let report_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _md = render(&built, Format::Md);
    let render_md_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let html = render(&built, Format::Html);
    let render_html_seconds = t.elapsed().as_secs_f64();
    Ok(BenchResult {
        ingest_spans_per_second: report.spans_stored as f64 / ingest_seconds.max(1e-9),
        generated,
        generate_seconds,
        ingest_seconds,
        checkpoint_seconds,
        report_seconds,
        render_md_seconds,
        render_html_seconds,
        html_bytes: html.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_starts_from_nothing() {
        let work = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            containers: 3,
            ..SynthConfig::default()
        };
        let first = run(work.path(), &config, |_| {}).unwrap();
        // What a run killed before its store closed leaves, and a stray spool file.
        std::fs::write(work.path().join("bench.db-wal"), b"stale").unwrap();
        std::fs::write(work.path().join("bench.db-shm"), b"stale").unwrap();
        std::fs::write(work.path().join("bench-spool/stray.jsonl"), b"{}\n").unwrap();
        let second = run(work.path(), &config, |_| {}).unwrap();
        assert_eq!(second.generated.spans, first.generated.spans);
        let store = Store::open(&work.path().join("bench.db")).unwrap();
        assert_eq!(store.span_count().unwrap(), first.generated.spans as u64);
        assert!(!work.path().join("bench-spool/stray.jsonl").exists());
    }

    #[test]
    fn what_cannot_be_removed_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the work directory should be: its spool cannot even be looked for.
        let work = dir.path().join("file");
        std::fs::write(&work, b"").unwrap();
        let err = run(&work, &SynthConfig::default(), |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cannot remove")
                && err.contains("file/bench-spool")
                && err.contains("--dir"),
            "{err}"
        );
    }
}
