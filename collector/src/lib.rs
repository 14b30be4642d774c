//! shimtrace's collector: reads the spans shims spool and turns them into answers.

pub mod source;
pub mod timeline;
pub mod trace;
