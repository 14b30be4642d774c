//! shimtrace's wrapper shim: forwards every ttrpc call to a real containerd shim and records spans.
//!
//! The span record and the spool format it writes are shimtrace's shared vocabulary, in
//! `shimtrace-span`.

pub mod args;
pub mod bootstrap;
pub mod bundle;
pub mod events;
pub mod frame;
mod generations;
pub mod identity;
pub mod log;
pub mod proxy;
pub mod reply;
pub mod resolve;
pub mod safe_fs;
pub mod spool;
pub mod tap;
pub mod trace_ctx;
pub mod wire;
pub mod wrapper;
