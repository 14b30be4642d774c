//! Which trace a container's spans belong to.
//!
//! The wrapper's `start` picks a trace id and a root span id for the container and writes them to a
//! sidecar file in the bundle; the proxy and the wrapper's `delete` (separate processes, possibly
//! after a containerd restart) read it, so all of a container's spans share one trace. Containers
//! that never pass through `start` (containerd 2.x pod containers joining a sandbox's shim) get a
//! trace from the proxy on their first call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::identity::IdentityRegistry;
use shimtrace_span::{SpanId, TraceContext, TraceId};

/// File in the bundle holding the container's trace context.
pub const SIDECAR: &str = "shimtrace-trace.json";

/// Reads a bundle's trace context, if the wrapper wrote one.
pub fn read_sidecar(bundle: &Path) -> Option<TraceContext> {
    let text = std::fs::read(bundle.join(SIDECAR)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes a bundle's trace context atomically (temp file + rename), best effort.
pub fn write_sidecar(bundle: &Path, ctx: &TraceContext) -> std::io::Result<()> {
    let tmp = bundle.join(format!(".{SIDECAR}.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(ctx).unwrap_or_default())?;
    std::fs::rename(&tmp, bundle.join(SIDECAR))
}

/// A fresh trace for a container whose root span will have id `root`.
pub fn new_root(root: SpanId) -> TraceContext {
    TraceContext {
        trace_id: TraceId::random(),
        parent_span_id: Some(root),
    }
}

/// The proxy's view: container → trace context, backed by the bundles' sidecar files.
pub struct TraceRegistry {
    /// Who ran each container, learned beside its trace (see [`crate::identity`]).
    identities: Arc<IdentityRegistry>,
    /// `<state>/io.containerd.runtime.v2.task`, whose `<ns>/<id>` are the bundles.
    task_root: Option<PathBuf>,
    /// namespace → container id → trace; nested so a lookup borrows its keys instead of
    /// allocating them (it runs before every proxied request is forwarded).
    known: Mutex<HashMap<String, HashMap<String, TraceContext>>>,
}

impl TraceRegistry {
    pub fn new(task_root: Option<PathBuf>) -> TraceRegistry {
        TraceRegistry {
            identities: Arc::new(IdentityRegistry::new(task_root.clone())),
            task_root,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The containers' identities (runtime, pod), kept beside their traces.
    pub fn identities(&self) -> &Arc<IdentityRegistry> {
        &self.identities
    }

    /// The trace of container `id` in namespace `ns`. `bundle` is known for `Create`, which also
    /// refreshes the cache: a container id can be reused by a new container with a new bundle.
    pub fn lookup(&self, ns: &str, id: &str, bundle: Option<&Path>) -> TraceContext {
        if bundle.is_none() {
            let known = self.known.lock().ok();
            if let Some(ctx) = known.as_ref().and_then(|m| m.get(ns)?.get(id).copied()) {
                return ctx;
            }
        }
        let bundle_dir = bundle
            .map(Path::to_path_buf)
            .or_else(|| self.task_root.as_ref().map(|root| root.join(ns).join(id)));
        let ctx = match bundle_dir.as_deref().and_then(read_sidecar) {
            Some(ctx) => ctx,
            None => {
                let ctx = TraceContext {
                    trace_id: TraceId::random(),
                    parent_span_id: None,
                };
                if let Some(dir) = bundle_dir.as_deref().filter(|d| d.is_dir()) {
                    let _ = write_sidecar(dir, &ctx);
                }
                ctx
            }
        };
        if let Ok(mut known) = self.known.lock() {
            known
                .entry(ns.to_string())
                .or_default()
                .insert(id.to_string(), ctx);
        }
        ctx
    }

    /// Forgets a deleted container so the map does not grow with every container served.
    pub fn forget(&self, ns: &str, id: &str) {
        if let Ok(mut known) = self.known.lock() {
            if let Some(ids) = known.get_mut(ns) {
                ids.remove(id);
                if ids.is_empty() {
                    known.remove(ns);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_round_trips_and_registry_prefers_it() {
        let root = tempfile::tempdir().unwrap();
        let bundle = root.path().join("default").join("c1");
        std::fs::create_dir_all(&bundle).unwrap();
        let ctx = new_root(SpanId::random());
        write_sidecar(&bundle, &ctx).unwrap();
        assert_eq!(read_sidecar(&bundle), Some(ctx));

        let registry = TraceRegistry::new(Some(root.path().to_path_buf()));
        assert_eq!(registry.lookup("default", "c1", None), ctx);
        // Unknown container: a new trace, remembered and written beside its bundle.
        let other = root.path().join("default").join("c2");
        std::fs::create_dir_all(&other).unwrap();
        let c2 = registry.lookup("default", "c2", None);
        assert_eq!(registry.lookup("default", "c2", None), c2);
        assert_eq!(read_sidecar(&other), Some(c2));
        assert_ne!(c2.trace_id, ctx.trace_id);
    }
}
