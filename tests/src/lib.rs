//! Harness for the end-to-end tests: private containerd instances, rootfs, wrapper installation.

pub mod containerd;
pub mod tmpfs;
pub mod traced;
