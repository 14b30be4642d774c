//! `shimtrace serve`: ingests the spool as it grows (inotify), and feeds the exporter and metrics.
//!
//! Ingest runs on its own thread, woken by inotify events for the spool directory; it never waits
//! on export, which reads the store on its own connection. Without events it only wakes for
//! housekeeping (compacting files whose writer died, which inotify cannot see).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::counters::Counters;
use crate::export::{ExportConfig, ExportError, OtlpExporter};
use crate::ingest::{IngestReport, Ingester};
use crate::metrics::{serve_metrics, MetricsBindError, MetricsRenderer};
use crate::source::SourceError;
use crate::store::{Store, StoreError};

/// How often ingest wakes without events to compact files whose writer has exited.
pub const DEFAULT_HOUSEKEEPING: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] SourceError),
    #[error("cannot create spool directory {path}: {source} (pass --spool DIR)")]
    CreateSpool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch spool directory {path} with inotify: {source} (raise fs.inotify.max_user_watches/instances if exhausted)")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsBindError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("ingest thread failed: {0} (restart shimtrace serve; what was stored is kept and ingest resumes from the stored offsets)")]
    Thread(String),
}

/// What `serve` ingests and where it keeps it.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub spool_dir: PathBuf,
    pub db: PathBuf,
    /// Remove finished, fully ingested spool files.
    pub compact: bool,
    pub housekeeping: Duration,
}

enum Wake {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// Handle on a running ingest thread.
pub struct IngestHandle {
    wake: mpsc::Sender<Wake>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
    /// Completes when the ingest thread ends (on its own only after a store error).
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
    // Dropping the watcher ends its events; keep it as long as the thread runs.
    _watcher: notify::RecommendedWatcher,
}

impl IngestHandle {
    /// Waits until the ingest thread ends by itself (returns at once if already taken).
    pub async fn ended(&mut self) {
        if let Some(ended) = self.ended.take() {
            let _ = ended.await;
        }
    }

    /// Stops ingest after the batch in progress and waits for it.
    pub fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.wake.send(Wake::Stop);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServeError::Thread("ingest thread panicked".into())),
            None => Ok(()),
        }
    }
}

fn log_report(report: &IngestReport, counters: &Counters) {
    counters
        .spool_issues
        .fetch_add(report.issues.len() as u64, Ordering::Relaxed);
    for issue in &report.issues {
        tracing::warn!("{issue}");
    }
    if report.spans_stored > 0 || report.compacted > 0 {
        tracing::debug!(
            stored = report.spans_stored,
            compacted = report.compacted,
            "ingested"
        );
    }
}

/// Starts ingesting: watches the spool, catches up with what is already there, then follows it.
/// `on_ingest` runs after each batch that stored spans (e.g. to wake the exporter).
pub fn start_ingest(
    config: &IngestConfig,
    counters: Arc<Counters>,
    on_ingest: impl Fn() + Send + 'static,
) -> Result<IngestHandle, ServeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.spool_dir)
        .map_err(|source| ServeError::CreateSpool {
            path: config.spool_dir.clone(),
            source,
        })?;
    let store = Store::open(&config.db)?;
    let (wake, rx) = mpsc::channel();
    let events = wake.clone();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = events.send(Wake::Fs(event));
    })
    .map_err(|source| ServeError::Watch {
        path: config.spool_dir.clone(),
        source,
    })?;
    // Watch before the first scan, so nothing written in between is missed.
    watcher
        .watch(&config.spool_dir, RecursiveMode::NonRecursive)
        .map_err(|source| ServeError::Watch {
            path: config.spool_dir.clone(),
            source,
        })?;
    let mut ingester = Ingester::new(store, &config.spool_dir, config.compact);
    let housekeeping = config.housekeeping;
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || -> Result<(), ServeError> {
            // Dropped when this closure returns, however it returns.
            let _ended = ended_tx;
            let report = ingester.ingest_all()?;
            log_report(&report, &counters);
            on_ingest();
            let mut last_housekeeping = Instant::now();
            loop {
                let first = match rx.recv_timeout(housekeeping) {
                    Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    Ok(Wake::Fs(event)) => Some(event),
                    Err(RecvTimeoutError::Timeout) => None,
                };
                let mut paths = BTreeSet::new();
                let mut rescan = false;
                let mut stop = false;
                for wake in first.map(Wake::Fs).into_iter().chain(rx.try_iter()) {
                    match wake {
                        Wake::Stop => stop = true,
                        Wake::Fs(Ok(event)) => {
                            rescan |= event.need_rescan();
                            paths.extend(event.paths);
                        }
                        Wake::Fs(Err(e)) => {
                            tracing::warn!(error = %e, "inotify error; rescanning the spool");
                            rescan = true;
                        }
                    }
                }
                let due = last_housekeeping.elapsed() >= housekeeping;
                let report = if rescan || due {
                    last_housekeeping = Instant::now();
                    if let Err(e) = ingester.store().checkpoint() {
                        tracing::warn!(error = %e, "cannot checkpoint the store's WAL");
                    }
                    ingester.ingest_all()?
                } else {
                    ingester.ingest_paths(&paths)?
                };
                log_report(&report, &counters);
                if report.spans_stored > 0 {
                    on_ingest();
                }
                if stop {
                    return Ok(());
                }
            }
        })
        .map_err(|e| ServeError::Thread(e.to_string()))?;
    Ok(IngestHandle {
        wake,
        thread: Some(thread),
        ended: Some(ended),
        _watcher: watcher,
    })
}

/// Everything `shimtrace serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub ingest: IngestConfig,
    /// OTLP export of new spans, if configured.
    pub export: Option<ExportConfig>,
    /// Where to serve Prometheus `/metrics`, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// Runs ingest, export and metrics until `shutdown` completes; ingest finishes its batch first.
/// A configuration that cannot work (an OTLP endpoint that is not a URL, a store that does not
/// open, a metrics address in use) fails at start; export failures after that are retried.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let exporter = match config.export {
        Some(export) => Some((OtlpExporter::new(export)?, Store::open(&config.ingest.db)?)),
        None => {
            tracing::info!("OTLP export off (set OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint)");
            None
        }
    };
    let counters = Arc::new(Counters::default());
    let wake = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingest_wake = wake.clone();
    let mut handle = start_ingest(&config.ingest, counters.clone(), move || {
        ingest_wake.notify_one()
    })?;
    tracing::info!(spool = %config.ingest.spool_dir.display(), db = %config.ingest.db.display(), "ingesting");

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = config.metrics_addr {
        let renderer = Arc::new(MetricsRenderer::new(
            config.ingest.db.clone(),
            counters.clone(),
        ));
        let mut stop = stop_rx.clone();
        let server = serve_metrics(addr, renderer, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?;
        tracing::info!(%addr, "serving /metrics");
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    if let Some((exporter, store)) = exporter {
        tasks.spawn(crate::export::run_continuous(
            store,
            exporter,
            wake,
            counters.clone(),
            stop_rx.clone(),
        ));
    }
    tokio::select! {
        _ = shutdown => tracing::info!("stopping"),
        _ = handle.ended() => tracing::error!("ingest stopped; shutting down"),
    }
    let _ = stop_tx.send(true);
    let result = tokio::task::spawn_blocking(move || handle.stop())
        .await
        .map_err(|e| ServeError::Thread(e.to_string()))?;
    while tasks.join_next().await.is_some() {}
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{Protocol, DEFAULT_TIMEOUT};

    #[test]
    fn an_endpoint_that_cannot_be_used_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig {
            ingest: IngestConfig {
                spool_dir: dir.path().join("spool"),
                db: dir.path().join("db"),
                compact: true,
                housekeeping: DEFAULT_HOUSEKEEPING,
            },
            export: Some(ExportConfig {
                protocol: Protocol::HttpProtobuf,
                endpoint: "http://collector host:4318/v1/traces".into(),
                service_name: "shimtrace".into(),
                timeout: DEFAULT_TIMEOUT,
                timeout_variable: crate::export::TIMEOUT_VARIABLE,
            }),
            metrics_addr: None,
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let ended = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), run(config, std::future::pending())).await
        });
        let err = ended
            .expect("serve ends at once instead of running without export")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot build the OTLP exporter for http://collector host"),
            "{err}"
        );
    }
}
