//! Where the query commands read spans from: a spool directory directly, or the store.

use std::path::{Path, PathBuf};

use shimtrace_span::spool::{self, ReadError, SpoolIssue};
use shimtrace_span::SpanRecord;

use crate::store::{Store, StoreError};

/// Spans read for a query, with what was lost or skipped on the way.
#[derive(Debug, Default)]
pub struct Loaded {
    pub spans: Vec<SpanRecord>,
    /// Spans the shims could not spool (from `dropped` lines).
    pub dropped: u64,
    /// Malformed spool lines that were skipped.
    pub issues: Vec<SpoolIssue>,
}

/// Where to read spans from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Spool(PathBuf),
    Store(PathBuf),
}

impl Source {
    /// An explicit `--spool` wins, then an explicit `--db`, then `SHIMTRACE_SPOOL_DIR`
    /// (`env_spool`), then the default store if it exists, else the default spool.
    pub fn choose(
        spool: Option<PathBuf>,
        db: Option<PathBuf>,
        env_spool: Option<PathBuf>,
    ) -> Source {
        if let Some(dir) = spool {
            return Source::Spool(dir);
        }
        if let Some(db) = db {
            return Source::Store(db);
        }
        if let Some(dir) = env_spool {
            return Source::Spool(dir);
        }
        let default_db = PathBuf::from(crate::store::DEFAULT_DB);
        if default_db.exists() {
            Source::Store(default_db)
        } else {
            Source::Spool(PathBuf::from(spool::DEFAULT_SPOOL_DIR))
        }
    }

    /// Reads every span (`container`: only the traces of that container or trace id).
    pub fn load(&self, container: Option<&str>) -> Result<Loaded, SourceError> {
        match self {
            Source::Spool(dir) => {
                let mut loaded = load_spool(dir)?;
                if let Some(id) = container {
                    let traces: std::collections::BTreeSet<_> = loaded
                        .spans
                        .iter()
                        .filter(|s| s.container_id() == Some(id) || s.trace_id.to_hex() == id)
                        .map(|s| s.trace_id)
                        .collect();
                    loaded.spans.retain(|s| traces.contains(&s.trace_id));
                }
                Ok(loaded)
            }
            Source::Store(path) => {
                // Queries never write: a store the user may only read still answers.
                let store = Store::open_read_only(path)?;
                let spans = match container {
                    Some(id) => store.spans_of_container(id)?,
                    None => store.all_spans()?,
                };
                Ok(Loaded {
                    spans,
                    dropped: store.dropped_total()?,
                    issues: Vec::new(),
                })
            }
        }
    }
}

/// Errors reading spans, for a query or for ingest: a store that fails, or a spool that cannot be
/// listed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] UnreadableSpool),
}

/// A spool directory that cannot be listed, named once, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read spool directory {}: {source} ({})", path.display(), what_to_do(source))]
pub struct UnreadableSpool {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl From<ReadError> for UnreadableSpool {
    fn from(e: ReadError) -> UnreadableSpool {
        UnreadableSpool {
            path: e.path,
            source: e.source,
        }
    }
}

/// What to do about a spool that cannot be read.
fn what_to_do(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "the shims' spool is root's: run this as root (sudo), or pass --spool DIR".into()
        }
        _ => format!(
            "pass --spool DIR or set {} to the shims' spool",
            shimtrace_span::env::SPOOL_DIR
        ),
    }
}

/// Reads every complete span line in `dir`; malformed lines become [`Loaded::issues`].
pub fn load_spool(dir: &Path) -> Result<Loaded, SourceError> {
    let contents = spool::read_spool(dir).map_err(UnreadableSpool::from)?;
    Ok(Loaded {
        spans: contents.spans,
        dropped: contents.dropped,
        issues: contents.issues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline;
    use crate::trace::{tests::container_trace, Trace};
    use shimtrace_span::{DroppedSpans, SpoolEntry, TraceId};

    #[test]
    fn a_spool_that_cannot_be_read_says_what_to_do_and_names_it_once() {
        let error = |kind: std::io::ErrorKind| {
            SourceError::from(UnreadableSpool::from(ReadError {
                path: "/var/lib/shimtrace/spool".into(),
                source: kind.into(),
            }))
            .to_string()
        };
        let denied = error(std::io::ErrorKind::PermissionDenied);
        assert!(denied.contains("run this as root (sudo)"), "{denied}");
        assert_eq!(
            denied.matches("/var/lib/shimtrace/spool").count(),
            1,
            "{denied}"
        );
        let missing = error(std::io::ErrorKind::NotFound);
        assert!(
            missing.contains("pass --spool DIR or set SHIMTRACE_SPOOL_DIR"),
            "{missing}"
        );
    }

    /// A spool as the shim leaves it: two writers, a malformed line, a dropped count, a partial
    /// last line still being written.
    pub(crate) fn hand_made_spool(dir: &Path) {
        let spans = container_trace(TraceId([7; 16]), "web");
        let line = |e: &SpoolEntry| serde_json::to_string(e).unwrap();
        let (wrapper, proxy) = spans.split_at(2);
        let mut a = String::new();
        for s in wrapper {
            a += &line(&SpoolEntry::Span(s.clone()));
            a.push('\n');
        }
        std::fs::write(dir.join("wrapper-100-5-0.jsonl"), a).unwrap();
        let mut b = String::new();
        for (i, s) in proxy.iter().enumerate() {
            if i == 2 {
                b += "{this is not json\n";
            }
            b += &line(&SpoolEntry::Span(s.clone()));
            b.push('\n');
        }
        b += &line(&SpoolEntry::Dropped(DroppedSpans {
            count: 4,
            writer: "proxy/101".into(),
            reason: "test".into(),
            time_unix_nano: 1,
        }));
        b += "\n{\"type\":\"span\",\"trace_";
        std::fs::write(dir.join("proxy-101-6-0.jsonl"), b).unwrap();
        std::fs::write(dir.join("README"), "not a spool file").unwrap();
    }

    #[test]
    fn spool_with_bad_lines_loads_the_good_ones_and_reports_the_bad() {
        let dir = tempfile::tempdir().unwrap();
        hand_made_spool(dir.path());
        let loaded = load_spool(dir.path()).unwrap();
        assert_eq!(loaded.spans.len(), 7);
        assert_eq!(loaded.dropped, 4);
        assert_eq!(loaded.issues.len(), 1);
        assert_eq!(loaded.issues[0].line, 3);
        let traces = Trace::group(loaded.spans);
        assert_eq!(traces.len(), 1);
        let text = timeline::render_timelines(&traces);
        assert!(text.contains("container web"), "{text}");
        assert_eq!(text.lines().count(), 10, "{text}");
    }

    #[test]
    fn a_damaged_entry_is_a_warning_and_the_rest_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        hand_made_spool(dir.path());
        // An entry named like a spool file that cannot be read as one.
        std::fs::create_dir(dir.path().join("proxy-102-7-0.jsonl")).unwrap();
        let loaded = load_spool(dir.path()).unwrap();
        assert_eq!(loaded.spans.len(), 7);
        assert_eq!(loaded.issues.len(), 2);
        let said = loaded.issues[1].to_string();
        assert!(said.contains("proxy-102-7-0.jsonl"), "{said}");
        assert!(!said.contains("--spool"), "{said}");
    }

    #[test]
    fn explicit_flags_choose_the_source() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            Source::choose(p("/s"), p("/d"), None),
            Source::Spool("/s".into())
        );
        assert_eq!(
            Source::choose(None, p("/d"), p("/e")),
            Source::Store("/d".into())
        );
        assert_eq!(
            Source::choose(None, None, p("/e")),
            Source::Spool("/e".into())
        );
    }

    #[test]
    fn missing_spool_names_the_flag() {
        let err = load_spool(Path::new("/nonexistent/shimtrace-spool")).unwrap_err();
        assert!(err.to_string().contains("--spool"), "{err}");
    }
}
