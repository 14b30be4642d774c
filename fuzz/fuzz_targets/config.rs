//! The wrapper's config file (`shim/src/resolve.rs`, `Config::parse`) on arbitrary text: a
//! config it accepts names its source, and resolving any runtime through it (its own keys and a
//! few wrapper names) answers with a path or an error, never a panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shimtrace_shim::resolve::{resolve_inner, Config};
use shimtrace_span::naming::WrapperName;

const SOURCE: &str = shimtrace_span::env::DEFAULT_CONFIG;
const WRAPPERS: [&str; 3] = [
    "containerd-shim-traced-runc-v2",
    "containerd-shim-traced-runsc-v1",
    "containerd-shim-traced-kata-v2",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, Path::new(SOURCE)) else {
        return;
    };
    assert_eq!(config.source.as_deref(), Some(Path::new(SOURCE)));
    let mut names: Vec<WrapperName> = WRAPPERS
        .iter()
        .filter_map(|n| WrapperName::from_binary_name(n))
        .collect();
    // A runtime key that names a wrapper (`io.containerd.traced-<inner>.<version>`).
    names.extend(config.runtimes.keys().filter_map(|runtime| {
        let rest = runtime.strip_prefix("io.containerd.traced-")?;
        let (inner, version) = rest.rsplit_once('.')?;
        WrapperName::from_binary_name(&format!("containerd-shim-traced-{inner}-{version}"))
    }));
    for name in &names {
        // Nothing on PATH, no containerd binary: only the config can answer.
        let _ = resolve_inner(
            name,
            &config,
            None,
            None,
            Path::new("/nonexistent/containerd-shim-traced-v2"),
        );
    }
});
