//! The environment variables shimtrace reads, in one place: containerd passes its environment to
//! every shim, so these reach the wrapper and its proxy from containerd's (or the unit's) settings.

/// Spool directory (default [`crate::spool::DEFAULT_SPOOL_DIR`]).
pub const SPOOL_DIR: &str = "SHIMTRACE_SPOOL_DIR";
/// Bound on the spool directory in bytes (default [`crate::spool::DEFAULT_MAX_BYTES`]).
pub const SPOOL_MAX_BYTES: &str = "SHIMTRACE_SPOOL_MAX_BYTES";
/// The wrapper's config file (default [`DEFAULT_CONFIG`]).
pub const CONFIG: &str = "SHIMTRACE_CONFIG";
/// The wrapper's config file unless [`CONFIG`] names another.
pub const DEFAULT_CONFIG: &str = "/etc/shimtrace/config.toml";
/// The wrapper's and proxy's log level (`error`, `warn`, `info`, `debug`, `trace`).
pub const LOG_LEVEL: &str = "SHIMTRACE_LOG";
/// Where proxies keep their sockets' locks and logs.
pub const RUN_DIR: &str = "SHIMTRACE_RUN_DIR";
/// `0` stops the proxy from adding a `traceparent` to requests that carry none.
pub const PROPAGATE: &str = "SHIMTRACE_PROPAGATE";
/// The collector's store (default `/var/lib/shimtrace/shimtrace.db`).
pub const DB: &str = "SHIMTRACE_DB";
