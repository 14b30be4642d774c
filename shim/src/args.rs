//! The flags containerd passes to a shim binary, read the way Go's `flag` package reads them.
//!
//! The wrapper forwards its argv to the inner shim untouched; it parses only to learn the
//! namespace, container id and action for its own spans and decisions.

/// What a shim invocation asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimArgs {
    pub namespace: Option<String>,
    pub id: Option<String>,
    /// containerd's gRPC address (`-address`).
    pub address: Option<String>,
    pub publish_binary: Option<String>,
    pub bundle: Option<String>,
    pub socket: Option<String>,
    pub debug: bool,
    /// The first positional argument: `start`, `delete`, or none (the daemon itself).
    pub action: Option<String>,
    /// `-v` / `-version` / `--version`.
    pub version: bool,
    /// `-info` (containerd 2.x asks shims for their RuntimeInfo).
    pub info: bool,
    pub help: bool,
}

/// Boolean flags take no separate value (`-debug`, not `-debug true`).
const BOOL_FLAGS: &[&str] = &["debug", "v", "version", "info", "help", "h"];

impl ShimArgs {
    /// Parses everything after argv[0]. Unknown flags are tolerated (newer containerd versions add
    /// flags this wrapper need not understand; the inner shim receives them unchanged).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> ShimArgs {
        let mut parsed = ShimArgs::default();
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].as_ref();
            i += 1;
            if arg == "--" {
                if i < args.len() {
                    parsed.action = Some(args[i].as_ref().to_string());
                }
                break;
            }
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                parsed.action.get_or_insert_with(|| arg.to_string());
                continue;
            };
            let (name, inline_value) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if BOOL_FLAGS.contains(&name) {
                let on = inline_value.as_deref().is_none_or(|v| v != "false");
                match name {
                    "debug" => parsed.debug = on,
                    "v" | "version" => parsed.version = on,
                    "info" => parsed.info = on,
                    _ => parsed.help = on,
                }
                continue;
            }
            let value = match inline_value {
                Some(v) => Some(v),
                None if i < args.len() => {
                    i += 1;
                    Some(args[i - 1].as_ref().to_string())
                }
                None => None,
            };
            match name {
                "namespace" => parsed.namespace = value,
                "id" => parsed.id = value,
                "address" => parsed.address = value,
                "publish-binary" => parsed.publish_binary = value,
                "bundle" => parsed.bundle = value,
                "socket" => parsed.socket = value,
                _ => {}
            }
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_start_invocation() {
        let args = ShimArgs::parse(&[
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ]);
        assert_eq!(args.namespace.as_deref(), Some("default"));
        assert_eq!(args.id.as_deref(), Some("c1"));
        assert_eq!(
            args.address.as_deref(),
            Some("/run/containerd/containerd.sock")
        );
        assert!(args.debug);
        assert_eq!(args.action.as_deref(), Some("start"));
    }

    #[test]
    fn parses_delete_with_bundle_and_unknown_flags() {
        let args = ShimArgs::parse(&[
            "-namespace=k8s.io",
            "-debug-socket",
            "/x",
            "-id",
            "c2",
            "-bundle",
            "/b",
            "delete",
        ]);
        assert_eq!(args.namespace.as_deref(), Some("k8s.io"));
        assert_eq!(args.bundle.as_deref(), Some("/b"));
        assert_eq!(args.action.as_deref(), Some("delete"));
    }

    #[test]
    fn version_and_empty() {
        assert!(ShimArgs::parse(&["--version"]).version);
        assert!(ShimArgs::parse(&["-v"]).version);
        assert_eq!(ShimArgs::parse::<&str>(&[]), ShimArgs::default());
    }
}
