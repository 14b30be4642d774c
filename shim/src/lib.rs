//! shimtrace's wrapper shim: forwards every ttrpc call to a real containerd shim and records spans.
//!
//! The span record ([`span`]) and the spool format ([`spool`]) are shared with the collector.

pub mod args;
pub mod clock;
pub mod events;
pub mod frame;
pub mod log;
pub mod proxy;
pub mod reply;
pub mod resolve;
pub mod span;
pub mod spool;
pub mod tap;
pub mod trace_ctx;
pub mod wire;
pub mod wrapper;
