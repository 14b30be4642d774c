//! Which trace a container's spans belong to.
//!
//! The wrapper's `start` picks a trace id and a root span id for the container and writes them to a
//! sidecar file in the bundle; the proxy and the wrapper's `delete` (separate processes, possibly
//! after a containerd restart) read it, so all of a container's spans share one trace. Containers
//! that never pass through `start` (containerd 2.x pod containers joining a sandbox's shim) get a
//! trace from the proxy on their first call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// Most containers a proxy remembers the trace of. A container forgotten early (an id never
/// created, or one past this bound) costs a sidecar read at its next call, not its trace.
pub const REMEMBERED: usize = 1024;

/// The proxy's view: container → trace context, backed by the bundles' sidecar files.
pub struct TraceRegistry {
    /// `<state>/io.containerd.runtime.v2.task`, whose `<ns>/<id>` are the bundles.
    task_root: Option<PathBuf>,
    known: Mutex<Known>,
}

/// namespace → container id → trace; nested so a lookup borrows its keys instead of allocating
/// them (it runs before every proxied request is forwarded).
type ByNamespace = HashMap<String, HashMap<String, TraceContext>>;

/// The remembered traces, in two generations: new entries go to `current`; when it holds half of
/// [`REMEMBERED`], it becomes `previous` and the older generation is dropped. A container looked up
/// from `previous` moves back to `current`, so those in use stay while ids seen once age out, at
/// no cost per lookup beyond a second map probe.
#[derive(Default)]
struct Known {
    current: ByNamespace,
    current_len: usize,
    previous: ByNamespace,
}

impl Known {
    fn get(&mut self, ns: &str, id: &str) -> Option<TraceContext> {
        if let Some(ctx) = self.current.get(ns).and_then(|ids| ids.get(id)) {
            return Some(*ctx);
        }
        let ctx = remove(&mut self.previous, ns, id)?;
        self.insert(ns, id, ctx);
        Some(ctx)
    }

    fn insert(&mut self, ns: &str, id: &str, ctx: TraceContext) {
        if self.current_len >= REMEMBERED / 2 {
            self.previous = std::mem::take(&mut self.current);
            self.current_len = 0;
        }
        let ids = match self.current.get_mut(ns) {
            Some(ids) => ids,
            None => self.current.entry(ns.to_string()).or_default(),
        };
        if ids.insert(id.to_string(), ctx).is_none() {
            self.current_len += 1;
        }
    }

    fn forget(&mut self, ns: &str, id: &str) {
        if remove(&mut self.current, ns, id).is_some() {
            self.current_len -= 1;
        }
        remove(&mut self.previous, ns, id);
    }
}

fn remove(map: &mut ByNamespace, ns: &str, id: &str) -> Option<TraceContext> {
    let ids = map.get_mut(ns)?;
    let ctx = ids.remove(id);
    if ids.is_empty() {
        map.remove(ns);
    }
    ctx
}

impl TraceRegistry {
    pub fn new(task_root: Option<PathBuf>) -> TraceRegistry {
        TraceRegistry {
            task_root,
            known: Mutex::new(Known::default()),
        }
    }

    /// The trace of container `id` in namespace `ns`. `bundle` is known for `Create`, which also
    /// refreshes the cache: a container id can be reused by a new container with a new bundle.
    pub fn lookup(&self, ns: &str, id: &str, bundle: Option<&Path>) -> TraceContext {
        if bundle.is_none() {
            let known = self.known.lock().ok().and_then(|mut k| k.get(ns, id));
            if let Some(ctx) = known {
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
            known.insert(ns, id, ctx);
        }
        ctx
    }

    /// Forgets a deleted container at once, instead of when it ages out.
    pub fn forget(&self, ns: &str, id: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.forget(ns, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TraceRegistry {
        /// Containers remembered now.
        fn len(&self) -> usize {
            self.known
                .lock()
                .map(|k| {
                    [&k.current, &k.previous]
                        .iter()
                        .flat_map(|m| m.values())
                        .map(HashMap::len)
                        .sum()
                })
                .unwrap_or(0)
        }
    }

    #[test]
    fn registry_stays_bounded_whatever_the_ids() {
        let registry = TraceRegistry::new(None);
        let kept = registry.lookup("ns", "kept", None);
        for i in 0..100_000 {
            registry.lookup("ns", &format!("ghost-{i}"), None);
            if i % 100 == 0 {
                // A container in use stays known (no sidecar to fall back on here).
                assert_eq!(registry.lookup("ns", "kept", None), kept);
            }
        }
        assert!(
            registry.len() <= REMEMBERED,
            "{} containers remembered",
            registry.len()
        );
    }

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
