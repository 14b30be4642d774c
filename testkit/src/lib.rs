//! Dev-only support for shimtrace's tests and benchmarks: private containerd instances driven with
//! `ctr`, the traced-runtime harness, CRI nodes registered by `shimtrace install`, the containerd
//! 2.3 bootstrap peer, tmpfs mounts, `shimtrace lab` runs that are cleaned up after, an OTLP
//! receiver built from the official protobuf definitions, and command-line parsing as the binaries
//! do it. Never a dependency of a shipped crate.

pub mod cli;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod env;
pub mod error;
pub mod lab;
pub mod otlp;
pub mod tmpfs;
pub mod traced;

pub use error::{Engine, HarnessError};
