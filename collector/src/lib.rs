//! shimtrace's collector: reads the spans shims spool and turns them into answers.

pub mod bench;
pub mod containerd;
pub mod export;
pub mod ingest;
pub mod install;
pub mod jaeger;
pub mod lab;
pub mod metrics;
pub mod report;
pub mod serve;
pub mod source;
pub mod store;
pub mod synth;
pub mod timeline;
pub mod trace;
