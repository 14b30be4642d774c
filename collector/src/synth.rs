//! Synthetic spools: realistic container traces for tests and benchmarks (`shimtrace bench`).
//!
//! Each container gets the spans a wrapped `ctr run --rm` produces (wrapper start, inner start,
//! proxy, Connect/Create/Start/Wait/Delete/Shutdown, wrapper delete) with a `/tasks/exit` event,
//! drawn from per-runtime latency profiles with a fixed seed, so runs are reproducible.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use shimtrace_span::spool::ROTATE_BYTES;
use shimtrace_span::{
    attr, names, AttributeValue, Attributes, SpanEvent, SpanId, SpanKind, SpanRecord, SpanStatus,
    SpoolEntry, TraceId,
};

use crate::report::WallTime;
use crate::trace::EXIT_EVENT;

/// A runtime's inner shim and its typical phase latencies (milliseconds: median, spread).
#[derive(Debug, Clone)]
pub struct RuntimeProfile {
    pub inner: &'static str,
    /// `container.runtime.name`, as the shim records it.
    pub runtime: &'static str,
    /// The runc shim's `BinaryName`, when the runtime is chosen that way.
    pub binary: Option<&'static str>,
    pub wrapper_start_ms: (f64, f64),
    pub create_ms: (f64, f64),
    pub start_ms: (f64, f64),
    pub run_ms: (f64, f64),
    pub delete_ms: (f64, f64),
}

/// runc, gVisor and crun as measured shapes go (see ANCHORS.md §2): crun fastest, runsc slowest.
pub fn default_profiles() -> Vec<RuntimeProfile> {
    vec![
        runc_shim_profile(
            "runc",
            None,
            (45.0, 10.0),
            (4.0, 1.0),
            (2.0, 1.0),
            (12.0, 3.0),
        ),
        runc_shim_profile(
            "runsc",
            Some("/usr/local/bin/runsc-nonet"),
            (140.0, 30.0),
            (35.0, 8.0),
            (6.0, 2.0),
            (40.0, 10.0),
        ),
        runc_shim_profile(
            "crun",
            Some("/usr/bin/crun"),
            (25.0, 6.0),
            (3.0, 1.0),
            (2.0, 1.0),
            (9.0, 2.0),
        ),
    ]
}

/// A runtime behind the runc shim, whose wrapper starts in 9 ± 2 ms.
fn runc_shim_profile(
    runtime: &'static str,
    binary: Option<&'static str>,
    create_ms: (f64, f64),
    start_ms: (f64, f64),
    run_ms: (f64, f64),
    delete_ms: (f64, f64),
) -> RuntimeProfile {
    RuntimeProfile {
        inner: "/usr/bin/containerd-shim-runc-v2",
        runtime,
        binary,
        wrapper_start_ms: (9.0, 2.0),
        create_ms,
        start_ms,
        run_ms,
        delete_ms,
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub containers: usize,
    /// Containers whose spans share one writer's files (a proxy serves many under grouping).
    pub containers_per_writer: usize,
    pub seed: u64,
    pub profiles: Vec<RuntimeProfile>,
    /// Unix nanoseconds of the first container's start.
    pub start_unix_nano: u64,
    /// Writer pids start here; the default is above any Linux pid_max, so the writers count as
    /// exited and their files as finished.
    pub first_pid: u32,
    /// Kubernetes pods written after the containers: a sandbox and `containers_per_pod`
    /// containers each, with the `k8s.*` attributes CRI's annotations give.
    pub pods: usize,
    pub containers_per_pod: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            containers: 100,
            containers_per_writer: 100,
            seed: 42,
            profiles: default_profiles(),
            start_unix_nano: 1_767_225_600_000_000_000, // 2026-01-01T00:00:00Z
            first_pid: 5_000_000,
            pods: 0,
            containers_per_pod: 2,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SynthSummary {
    pub containers: usize,
    pub spans: u64,
    pub files: usize,
    pub bytes: u64,
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A right-skewed latency around `median` (log-normal-ish), in nanoseconds.
    fn latency(&mut self, (median, spread): (f64, f64)) -> u64 {
        let normal: f64 = (0..4).map(|_| self.unit()).sum::<f64>() - 2.0;
        let ms = median * (normal * spread / median.max(0.001)).exp();
        (ms.max(0.01) * 1e6) as u64
    }

    fn span_id(&mut self) -> SpanId {
        SpanId((self.next() | 1).to_be_bytes())
    }

    fn trace_id(&mut self) -> TraceId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_be_bytes());
        bytes[8..].copy_from_slice(&(self.next() | 1).to_be_bytes());
        TraceId(bytes)
    }
}

/// One synthetic trace as it is made: every span carries the container's `base` attributes, and
/// the root's id is drawn first, so that children can name it before the root is written.
struct SynthTrace {
    trace_id: TraceId,
    root_id: SpanId,
    base: Attributes,
    spans: Vec<SpanRecord>,
}

impl SynthTrace {
    /// A child of the root from `t0` to `t1`, with `extra` attributes; returns its index.
    fn child(
        &mut self,
        rng: &mut Rng,
        name: &str,
        (t0, t1): (u64, u64),
        extra: &[(&str, AttributeValue)],
    ) -> usize {
        let id = rng.span_id();
        self.push(id, Some(self.root_id), name, (t0, t1), extra)
    }

    /// A task call `method` as the proxy records it, a child of the root.
    fn call(
        &mut self,
        rng: &mut Rng,
        method: &str,
        times: (u64, u64),
        extra: &[(&str, AttributeValue)],
    ) -> usize {
        self.child(
            rng,
            &format!("containerd.task.v2.Task/{method}"),
            times,
            extra,
        )
    }

    /// A span with the given ids and times, carrying `base` and `extra`; returns its index.
    fn push(
        &mut self,
        span_id: SpanId,
        parent_span_id: Option<SpanId>,
        name: &str,
        (t0, t1): (u64, u64),
        extra: &[(&str, AttributeValue)],
    ) -> usize {
        let mut attributes = self.base.clone();
        for (k, v) in extra {
            attributes.insert((*k).into(), v.clone());
        }
        self.spans.push(SpanRecord {
            trace_id: self.trace_id,
            span_id,
            parent_span_id,
            name: name.into(),
            kind: if name.contains('/') {
                SpanKind::Server
            } else {
                SpanKind::Internal
            },
            start_time_unix_nano: t0,
            end_time_unix_nano: t1,
            attributes,
            events: vec![],
            status: SpanStatus::Ok,
        });
        self.spans.len() - 1
    }
}

/// The attributes the proxy puts on a task call `method` that answered OK.
fn rpc(method: &str) -> [(&'static str, AttributeValue); 4] {
    [
        (attr::RPC_SYSTEM, "ttrpc".into()),
        (attr::RPC_SERVICE, "containerd.task.v2.Task".into()),
        (attr::RPC_METHOD, method.to_string().into()),
        (attr::RPC_TTRPC_STATUS_CODE, 0i64.into()),
    ]
}

/// The attributes every span of synthetic container `container` carries.
fn container_attributes(container: &str, profile: &RuntimeProfile) -> Attributes {
    let mut base = Attributes::new();
    base.insert(attr::CONTAINERD_NAMESPACE.into(), "default".into());
    base.insert(attr::CONTAINERD_CONTAINER_ID.into(), container.into());
    base.insert(attr::INNER.into(), profile.inner.into());
    base.insert(attr::CONTAINER_RUNTIME_NAME.into(), profile.runtime.into());
    match profile.binary {
        Some(binary) => {
            base.insert(attr::RUNTIME_SOURCE.into(), "binary_name".into());
            base.insert(attr::RUNTIME_BINARY.into(), binary.into());
        }
        None => {
            base.insert(attr::RUNTIME_SOURCE.into(), "shim".into());
        }
    }
    base
}

/// The spans of one synthetic container run, plus its client-observed wall time.
pub fn container_spans(
    index: usize,
    profile: &RuntimeProfile,
    start: u64,
    seed: u64,
) -> (Vec<SpanRecord>, WallTime) {
    let mut rng = Rng(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.next();
    let container = format!("synth-{index:06}");
    let trace_id = rng.trace_id();
    let mut trace = SynthTrace {
        trace_id,
        root_id: rng.span_id(),
        base: container_attributes(&container, profile),
        spans: Vec::with_capacity(10),
    };
    let rng = &mut rng;
    let pid = 10_000 + index as i64;
    let wrapper = rng.latency(profile.wrapper_start_ms);
    let t_wrapper_end = start + wrapper;
    let inner_start = start + wrapper / 10;
    let ensure = inner_start + wrapper * 6 / 10;
    trace.child(rng, names::INNER_START, (inner_start, ensure), &[]);
    let ensured = t_wrapper_end - wrapper / 20;
    trace.child(rng, names::PROXY_ENSURE, (ensure, ensured), &[]);
    let gap = |rng: &mut Rng| 200_000 + rng.next() % 800_000;
    let t = t_wrapper_end + gap(rng);
    let connect = t + 150_000;
    trace.call(rng, "Connect", (t, connect), &rpc("Connect"));
    let create0 = connect + gap(rng);
    let create1 = create0 + rng.latency(profile.create_ms);
    let pid_attr = (attr::PROCESS_PID, AttributeValue::from(pid));
    trace.call(
        rng,
        "Create",
        (create0, create1),
        std::slice::from_ref(&pid_attr),
    );
    let start0 = create1 + gap(rng);
    let wait0 = start0 + 100_000;
    let start1 = start0 + rng.latency(profile.start_ms);
    trace.call(rng, "Start", (start0, start1), &rpc("Start"));
    let exit = start1 + rng.latency(profile.run_ms);
    let wait1 = exit + 150_000;
    let exit_code = (attr::PROCESS_EXIT_CODE, AttributeValue::Int(0));
    let wait = trace.call(
        rng,
        "Wait",
        (wait0, wait1),
        std::slice::from_ref(&exit_code),
    );
    let delete0 = wait1 + gap(rng);
    let delete1 = delete0 + rng.latency(profile.delete_ms);
    let deleted = [exit_code.clone(), pid_attr.clone()];
    trace.call(rng, "Delete", (delete0, delete1), &deleted);
    let shut0 = delete1 + gap(rng);
    let shut1 = shut0 + 300_000 + rng.next() % 500_000;
    trace.call(rng, "Shutdown", (shut0, shut1), &rpc("Shutdown"));
    // containerd runs the wrapper's `delete` once the shim's connection closes.
    let cleanup0 = shut1 + gap(rng);
    let cleanup1 = cleanup0 + 2_000_000 + rng.next() % 2_000_000;
    trace.child(rng, names::WRAPPER_DELETE, (cleanup0, cleanup1), &[]);
    let root = [(attr::PROTOCOL, "json/v2".into()), pid_attr];
    trace.push(
        trace.root_id,
        None,
        names::WRAPPER_START,
        (start, t_wrapper_end),
        &root,
    );
    // The event as the events tap records it.
    trace.spans[wait].events.push(SpanEvent {
        name: EXIT_EVENT.into(),
        time_unix_nano: exit + 50_000,
        attributes: [(exit_code.0.to_string(), exit_code.1)]
            .into_iter()
            .collect(),
    });
    // The client saw a little more than the spans cover (containerd and ctr overhead).
    let wall = WallTime {
        container_id: container,
        wall_time_ns: cleanup1 - start + 3_000_000 + rng.next() % 2_000_000,
    };
    (trace.spans, wall)
}

/// The spans of one synthetic pod started at `start`: its sandbox, then `containers` containers
/// the kubelet creates once the sandbox runs, one after another as it does, each trace carrying
/// the `k8s.*` attributes. Container ids are `synth-<first_index + n>`; `start` the pod's.
pub fn pod_spans(
    pod: usize,
    first_index: usize,
    profile: &RuntimeProfile,
    containers: usize,
    start: u64,
    seed: u64,
) -> (Vec<SpanRecord>, Vec<WallTime>) {
    let mut rng = Rng(seed ^ (pod as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    rng.next();
    // The sandbox runs until its containers are done.
    let sandbox_profile = RuntimeProfile {
        run_ms: (400.0, 20.0),
        ..profile.clone()
    };
    let (mut spans, sandbox_wall) = container_spans(first_index, &sandbox_profile, start, seed);
    let sandbox_id = format!("synth-{first_index:06}");
    let uid = format!("{:016x}-{:04x}", rng.next(), pod);
    let pod_name = format!("synth-pod-{pod:04}");
    let sandbox_ready = spans
        .iter()
        .filter(|s| s.name.ends_with("/Start"))
        .map(|s| s.end_time_unix_nano)
        .max()
        .unwrap_or(start);
    let mut walls = vec![sandbox_wall];
    let label = |spans: &mut [SpanRecord], role: &str, container: Option<&str>| {
        for span in spans {
            let a = &mut span.attributes;
            a.insert(attr::K8S_POD_NAME.into(), pod_name.as_str().into());
            a.insert(attr::K8S_NAMESPACE_NAME.into(), "synth".into());
            a.insert(attr::K8S_POD_UID.into(), uid.as_str().into());
            a.insert(attr::K8S_SANDBOX_ID.into(), sandbox_id.as_str().into());
            a.insert(attr::K8S_ROLE.into(), role.into());
            if let Some(name) = container {
                a.insert(attr::K8S_CONTAINER_NAME.into(), name.into());
            }
            a.insert(attr::CONTAINERD_NAMESPACE.into(), "k8s.io".into());
        }
    };
    label(&mut spans, "sandbox", None);
    // The kubelet pulls (or finds) the image, then creates and starts each container in turn.
    let mut next = sandbox_ready + 2_000_000 + rng.next() % 6_000_000;
    for n in 0..containers {
        let (mut container, wall) = container_spans(first_index + 1 + n, profile, next, seed);
        label(&mut container, "container", Some(&format!("app-{n}")));
        next = container
            .iter()
            .filter(|s| s.name.ends_with("/Start"))
            .map(|s| s.end_time_unix_nano)
            .max()
            .unwrap_or(next)
            + 500_000
            + rng.next() % 1_500_000;
        spans.extend(container);
        walls.push(wall);
    }
    (spans, walls)
}

/// One writer's output: files `<writer>-<pid>-<start>-<seq>.jsonl`, rotated like the shim's.
struct SpoolWriter {
    dir: PathBuf,
    stem: String,
    seq: u32,
    file: BufWriter<File>,
    bytes: u64,
    files: Vec<PathBuf>,
    total_bytes: u64,
}

impl SpoolWriter {
    fn new(dir: &Path, writer: &str, pid: u32, start: u64) -> std::io::Result<Self> {
        let stem = format!("{writer}-{pid}-{start}");
        let path = dir.join(format!("{stem}-0.jsonl"));
        Ok(SpoolWriter {
            dir: dir.to_path_buf(),
            stem,
            seq: 0,
            file: BufWriter::new(File::create(&path)?),
            bytes: 0,
            files: vec![path],
            total_bytes: 0,
        })
    }

    fn write(&mut self, entry: &SpoolEntry) -> std::io::Result<()> {
        if self.bytes >= ROTATE_BYTES {
            self.file.flush()?;
            self.seq += 1;
            let path = self.dir.join(format!("{}-{}.jsonl", self.stem, self.seq));
            self.file = BufWriter::new(File::create(&path)?);
            self.files.push(path);
            self.bytes = 0;
        }
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.bytes += line.len() as u64;
        self.total_bytes += line.len() as u64;
        Ok(())
    }
}

/// One writer process's pair of spool streams: its wrapper's spans and its proxy's, which come from
/// different processes in a real spool.
struct WriterPair {
    wrapper: SpoolWriter,
    proxy: SpoolWriter,
}

impl WriterPair {
    /// Writers `pid` (the wrapper) and `pid + 1` (its proxy), their files named from `start`.
    fn new(dir: &Path, pid: u32, start: u64) -> std::io::Result<Self> {
        Ok(WriterPair {
            wrapper: SpoolWriter::new(dir, "wrapper", pid, start)?,
            proxy: SpoolWriter::new(dir, "proxy", pid + 1, start)?,
        })
    }

    /// Writes each span to the stream of the process that would have recorded it: calls (named
    /// `service/Method`) to the proxy's, the rest to the wrapper's.
    fn write_all(
        &mut self,
        spans: Vec<SpanRecord>,
        summary: &mut SynthSummary,
    ) -> std::io::Result<()> {
        for span in spans {
            let out = if span.name.contains('/') {
                &mut self.proxy
            } else {
                &mut self.wrapper
            };
            out.write(&SpoolEntry::Span(span))?;
            summary.spans += 1;
        }
        Ok(())
    }

    /// Flushes both streams and counts their files and bytes into `summary`.
    fn finish(mut self, summary: &mut SynthSummary) -> std::io::Result<()> {
        for w in [&mut self.wrapper, &mut self.proxy] {
            w.file.flush()?;
            summary.files += w.files.len();
            summary.bytes += w.total_bytes;
        }
        Ok(())
    }
}

/// Writes a synthetic spool into `dir` (created if needed); `on_container` is called after each
/// container (for a progress bar). Returns what was written and each container's wall time.
pub fn generate_spool(
    dir: &Path,
    config: &SynthConfig,
    mut on_container: impl FnMut(usize),
) -> std::io::Result<(SynthSummary, Vec<WallTime>)> {
    std::fs::create_dir_all(dir)?;
    let per_writer = config.containers_per_writer.max(1);
    let mut summary = SynthSummary::default();
    let mut walls = Vec::with_capacity(config.containers);
    let profiles = if config.profiles.is_empty() {
        default_profiles()
    } else {
        config.profiles.clone()
    };
    let mut index = 0;
    let mut writer_no = 0u32;
    while index < config.containers {
        let first_start = config.start_unix_nano + index as u64 * 400_000_000;
        let mut writers = WriterPair::new(dir, config.first_pid + 2 * writer_no, first_start)?;
        for _ in 0..per_writer.min(config.containers - index) {
            let profile = &profiles[index % profiles.len()];
            let start = config.start_unix_nano + index as u64 * 400_000_000;
            let (spans, wall) = container_spans(index, profile, start, config.seed);
            writers.write_all(spans, &mut summary)?;
            walls.push(wall);
            index += 1;
            on_container(index);
        }
        writers.finish(&mut summary)?;
        writer_no += 1;
    }
    if config.pods > 0 {
        let first_start = config.start_unix_nano + index as u64 * 400_000_000;
        let mut writers = WriterPair::new(dir, config.first_pid + 2 * writer_no, first_start)?;
        let per_pod = 1 + config.containers_per_pod;
        for pod in 0..config.pods {
            let profile = &profiles[pod % profiles.len()];
            let first_index = config.containers + pod * per_pod;
            let start = config.start_unix_nano + first_index as u64 * 400_000_000;
            let (spans, pod_walls) = pod_spans(
                pod,
                first_index,
                profile,
                config.containers_per_pod,
                start,
                config.seed,
            );
            writers.write_all(spans, &mut summary)?;
            walls.extend(pod_walls);
        }
        writers.finish(&mut summary)?;
    }
    summary.containers = config.containers + config.pods * (1 + config.containers_per_pod);
    Ok((summary, walls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_spool;
    use crate::trace::{Phase, Trace};

    #[test]
    fn synthetic_spool_reads_back_as_complete_traces() {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            containers: 30,
            containers_per_writer: 7,
            ..SynthConfig::default()
        };
        let (summary, walls) = generate_spool(dir.path(), &config, |_| {}).unwrap();
        assert_eq!(summary.spans, 300);
        assert_eq!(walls.len(), 30);
        let loaded = load_spool(dir.path()).unwrap();
        assert!(loaded.issues.is_empty());
        assert_eq!(loaded.spans.len(), 300);
        let traces = Trace::group(loaded.spans);
        assert_eq!(traces.len(), 30);
        for (trace, wall) in traces.iter().zip(&walls) {
            assert_eq!(trace.container_id(), Some(wall.container_id.as_str()));
            let phases = trace.phases();
            assert_eq!(phases.len(), Phase::ALL.len(), "{:?}", trace.container_id());
            let sum: u64 = phases.iter().map(|p| p.duration_nanos()).sum();
            assert!(sum < wall.wall_time_ns);
            assert_eq!(trace.depths().iter().filter(|d| **d == 0).count(), 1);
        }
        // Same seed, same spool.
        let again = tempfile::tempdir().unwrap();
        generate_spool(again.path(), &config, |_| {}).unwrap();
        let a = load_spool(dir.path()).unwrap().spans;
        let b = load_spool(again.path()).unwrap().spans;
        assert_eq!(a, b);
    }
}
