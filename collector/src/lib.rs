//! shimtrace's collector: ingests the spans shims spool into an embedded store, groups them into
//! per-container traces, and turns them into answers: timelines, the cold-start report,
//! OpenTelemetry export (OTLP, Jaeger JSON) and Prometheus metrics. [`stats`] holds the
//! nearest-rank percentiles every report and benchmark shares.

pub mod counters;
pub mod export;
pub mod ingest;
pub mod jaeger;
pub mod metrics;
pub mod oneshot;
pub mod pod;
pub mod report;
pub mod serve;
pub mod source;
pub mod stats;
pub mod store;
pub mod synth;
pub mod throughput;
pub mod timeline;
pub mod trace;
