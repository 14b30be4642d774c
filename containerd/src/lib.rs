//! shimtrace's containerd side: the gRPC driver that runs containers from a local rootfs or image
//! (feature `client`), a private containerd beside any other ([`private`]), registration of the
//! traced runtimes in containerd's config and the check that they trace (feature `cri`), and the
//! busybox rootfs and images the lab and the tests run.

#[cfg(feature = "cri")]
pub mod check;
#[cfg(feature = "client")]
mod client;
pub mod command;
#[cfg(feature = "cri")]
pub mod cri;
pub mod daemon;
pub mod docker;
pub mod dockerd;
pub mod files;
pub mod image;
pub mod install;
pub mod private;
pub mod rootfs;

#[cfg(feature = "client")]
pub use client::*;
