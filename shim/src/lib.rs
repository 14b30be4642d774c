//! shimtrace's wrapper shim: forwards every ttrpc call to a real containerd shim and records spans.
//!
//! The span record ([`span`]) and the spool format ([`spool`]) are shared with the collector.

pub mod clock;
pub mod span;
pub mod spool;
