//! Which trace a container's spans belong to.
//!
//! The wrapper's `start` picks a trace id and a root span id for the container and writes them to a
//! sidecar file in the bundle; the proxy and the wrapper's `delete` (separate processes, possibly
//! after a containerd restart) read it, so all of a container's spans share one trace. Containers
//! that never pass through `start` (containerd 2.x pod containers joining a sandbox's shim) get a
//! trace from the proxy on their first call.
//!
//! The proxy learns container ids, namespaces and bundles from requests, so it writes a sidecar
//! only into the bundle containerd made for that container, `<task root>/<namespace>/<id>`, with
//! namespace and id each a single path component, and never through a link (see
//! [`crate::safe_fs`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::generations::Generations;
use crate::identity::IdentityRegistry;
use shimtrace_span::{SpanId, TraceContext, TraceId};

use crate::safe_fs::SafeFsError;

/// File in the bundle holding the container's trace context.
pub const SIDECAR: &str = "shimtrace-trace.json";
/// A sidecar is a line of JSON; nothing longer is read.
const SIDECAR_MAX_BYTES: u64 = 4096;

/// Reads a bundle's trace context, if the wrapper wrote one.
pub fn read_sidecar(bundle: &Path) -> Option<TraceContext> {
    crate::bundle::read_json(bundle, SIDECAR, SIDECAR_MAX_BYTES)
}

/// Writes a bundle's trace context atomically, best effort. The bundle must be a private
/// directory.
pub fn write_sidecar(bundle: &Path, ctx: &TraceContext) -> Result<(), SafeFsError> {
    crate::bundle::write_json(bundle, SIDECAR, ctx)
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
    /// Who ran each container, learned beside its trace (see [`crate::identity`]); it also
    /// knows the task root, `<state>/io.containerd.runtime.v2.task`, whose `<ns>/<id>` are the
    /// bundles.
    identities: Arc<IdentityRegistry>,
    /// The traces remembered (see [`crate::generations`]).
    known: Mutex<Generations<TraceContext>>,
}

impl TraceRegistry {
    pub fn new(task_root: Option<PathBuf>) -> TraceRegistry {
        TraceRegistry::with_identities(IdentityRegistry::new(task_root))
    }

    /// The same, with `identities` learning who ran each container; the bundles are those under
    /// its task root.
    pub fn with_identities(identities: IdentityRegistry) -> TraceRegistry {
        TraceRegistry {
            identities: Arc::new(identities),
            known: Mutex::new(Generations::default()),
        }
    }

    /// The containers' identities (runtime, pod), kept beside their traces.
    pub fn identities(&self) -> &Arc<IdentityRegistry> {
        &self.identities
    }

    /// The trace of container `id` in namespace `ns`. `bundle` is known for `Create`, which also
    /// refreshes the cache: a container id can be reused by a new container with a new bundle.
    /// Only the bundle containerd made for the id is read or written: a `bundle` naming any other
    /// directory is ignored.
    pub fn lookup(&self, ns: &str, id: &str, bundle: Option<&Path>) -> TraceContext {
        if bundle.is_none() {
            let known = self.known.lock().ok().and_then(|mut k| k.get(ns, id));
            if let Some(ctx) = known {
                return ctx;
            }
        }
        let bundle_dir = self.identities.bundle_of(ns, id);
        if let Some(claimed) = bundle.filter(|b| Some(*b) != bundle_dir.as_deref()) {
            tracing::debug!(
                "Create for {ns}/{id} names bundle {}, not the one under the task root; ignored",
                claimed.display()
            );
        }
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

    /// A container's shim was told to shut down: its trace goes at the next generation turn
    /// instead of staying while in use. Not at once: the runc shim publishes `/tasks/delete` while
    /// containerd already shuts it down, and once the bundle is gone that late event would start
    /// a trace of its own.
    pub fn retire(&self, ns: &str, id: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.retire(ns, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generations::REMEMBERED;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn request_fields_never_place_the_sidecar_outside_its_bundle() {
        // <tmp>/state/tasks is the task root; <tmp>/victim is any existing directory.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state").join("tasks");
        std::fs::create_dir_all(root.join("default").join("c1")).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let registry = TraceRegistry::new(Some(root.clone()));

        // An absolute container id replaces the whole path when joined.
        registry.lookup("default", victim.to_str().unwrap(), None);
        // A namespace that climbs out of the task root.
        registry.lookup("../..", "victim", None);
        registry.lookup("default", "../../../victim", None);
        // Create naming a bundle that is not the one containerd made for this id.
        registry.lookup("default", "c1", Some(&victim));
        assert_eq!(entries(&victim), Vec::<String>::new());

        // The real bundle still gets its sidecar, whatever Create claimed.
        assert!(read_sidecar(&root.join("default").join("c1")).is_some());
    }

    #[test]
    fn a_retired_container_keeps_its_trace_for_a_late_event() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tasks");
        let bundle = root.join("default").join("c1");
        std::fs::create_dir_all(&bundle).unwrap();
        let registry = TraceRegistry::new(Some(root.clone()));
        let trace = registry.lookup("default", "c1", Some(&bundle));
        registry.retire("default", "c1");
        // Shutdown returned and containerd deleted the bundle; then `/tasks/delete` arrives.
        std::fs::remove_dir_all(&bundle).unwrap();
        assert_eq!(registry.lookup("default", "c1", None), trace);
    }

    #[test]
    fn a_retired_container_goes_at_the_next_turn_and_one_in_use_stays() {
        let registry = TraceRegistry::new(None);
        let retired = registry.lookup("ns", "retired", None);
        let in_use = registry.lookup("ns", "in-use", None);
        registry.retire("ns", "retired");
        // Enough new containers for one generation turn.
        for i in 0..REMEMBERED / 2 {
            registry.lookup("ns", &format!("new-{i}"), None);
        }
        // Forgotten, and with no sidecar to read, it gets a trace of its own.
        assert_ne!(registry.lookup("ns", "retired", None), retired);
        assert_eq!(registry.lookup("ns", "in-use", None), in_use);
    }

    #[test]
    fn links_in_the_bundle_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tasks");
        std::fs::create_dir_all(root.join("default")).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        // A bundle path that is a link to another directory.
        std::os::unix::fs::symlink(&victim, root.join("default").join("c2")).unwrap();
        let registry = TraceRegistry::new(Some(root.clone()));
        registry.lookup("default", "c2", None);
        assert_eq!(entries(&victim), Vec::<String>::new());

        // A link planted at the temporary file's name: the file it points to stays untouched.
        let bundle = root.join("default").join("c3");
        std::fs::create_dir(&bundle).unwrap();
        let target = tmp.path().join("precious");
        std::fs::write(&target, "precious").unwrap();
        let tmp_name = format!(".{SIDECAR}.{}", std::process::id());
        std::os::unix::fs::symlink(&target, bundle.join(tmp_name)).unwrap();
        let ctx = new_root(SpanId::random());
        let _ = write_sidecar(&bundle, &ctx);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        // A sidecar that is a link is not read through.
        let linked = root.join("default").join("c4");
        std::fs::create_dir(&linked).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        write_sidecar(&elsewhere, &ctx).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(SIDECAR), linked.join(SIDECAR)).unwrap();
        assert_eq!(read_sidecar(&linked), None);
    }

    impl TraceRegistry {
        /// Containers remembered now.
        fn len(&self) -> usize {
            self.known.lock().map(|k| k.len()).unwrap_or(0)
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
