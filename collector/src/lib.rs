//! shimtrace's collector: reads the spans shims spool and turns them into answers.
pub mod containerd;
pub mod install;
pub mod lab;
