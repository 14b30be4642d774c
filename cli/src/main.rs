//! `shimtrace`: the collector CLI. Parses arguments and wires the library's pieces together.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use shimtrace_collector::export::{self, ExportConfig, ExportOverrides};
use shimtrace_collector::ingest::Ingester;
use shimtrace_collector::jaeger;
use shimtrace_collector::source::Source;
use shimtrace_collector::store::{Store, DB_ENV, DEFAULT_DB};
use shimtrace_collector::{report, serve, synth, throughput, timeline, trace::Trace};
use shimtrace_span::env::SPOOL_DIR as SPOOL_DIR_ENV;
use shimtrace_span::spool::DEFAULT_SPOOL_DIR;

#[derive(Parser)]
#[command(
    name = "shimtrace",
    version,
    about = "shimtrace collector: container cold-start traces from shim spools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the traced containers: per container, a timeline of its spans.
    Traces(TracesArgs),
    /// Shows one container's trace as a waterfall.
    Trace(TraceArgs),
    /// Ingests the spool into the store continuously (inotify), exports and serves metrics.
    Serve(ServeArgs),
    /// Ingests what the spool holds now into the store, once, and exits.
    Ingest(IngestArgs),
    /// Exports spans once: over OTLP (gRPC or HTTP/protobuf), or as Jaeger UI JSON.
    Export(ExportArgs),
    /// Cold-start report per runtime: phase latencies, wall-time comparison, dropped spans.
    Report(ReportArgs),
    /// Writes a synthetic spool (for tests and benchmarks).
    #[command(hide = true)]
    Synth(SynthArgs),
    /// Measures ingest throughput and report time on a synthetic spool.
    #[command(hide = true)]
    Bench(BenchArgs),
    /// Compare runtimes (runc, gVisor, crun, Kata): cold start, isolation, served latency.
    #[cfg(feature = "lab")]
    Lab(shimtrace_lab::LabArgs),
    /// Register the wrapper shim for the runtimes present (symlinks, containerd config, RuntimeClasses).
    Install(shimtrace_containerd::install::InstallArgs),
}

#[derive(Args)]
struct ReportArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value = "md")]
    format: report::Format,
    /// Client-observed wall times: a JSON array or JSON lines of {"container_id", "wall_time_ns"}.
    #[arg(long, value_name = "FILE")]
    wall_times: Option<PathBuf>,
    /// Write the report here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct SynthArgs {
    /// Spool directory to write.
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,
    #[arg(long, default_value_t = 100)]
    containers: usize,
    #[arg(long, default_value_t = 100)]
    containers_per_writer: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write the containers' client wall times (JSON lines) here.
    #[arg(long, value_name = "FILE")]
    wall_times: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Working directory (spool and store are created inside).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    containers: usize,
    #[arg(long, default_value_t = 100)]
    containers_per_writer: usize,
}

/// Where query commands read spans from.
#[derive(Args)]
struct SourceArgs {
    /// Read this spool directory directly [default when no store exists: $SHIMTRACE_SPOOL_DIR or /var/lib/shimtrace/spool].
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Read this store [default when it exists: /var/lib/shimtrace/shimtrace.db].
    #[arg(long, env = DB_ENV, value_name = "PATH")]
    db: Option<PathBuf>,
}

impl SourceArgs {
    fn load(&self, container: Option<&str>) -> Result<shimtrace_collector::source::Loaded> {
        let env_spool = std::env::var_os(SPOOL_DIR_ENV).map(PathBuf::from);
        let source = Source::choose(self.spool.clone(), self.db.clone(), env_spool);
        let loaded = source.load(container)?;
        for issue in &loaded.issues {
            eprintln!("warning: {issue}");
        }
        Ok(loaded)
    }
}

/// The spool a daemon or ingest pass reads and the store it writes.
#[derive(Args)]
struct StoreArgs {
    /// Spool directory the shims write.
    #[arg(long, env = SPOOL_DIR_ENV, default_value = DEFAULT_SPOOL_DIR, value_name = "DIR")]
    spool: PathBuf,
    /// SQLite store.
    #[arg(long, env = DB_ENV, default_value = DEFAULT_DB, value_name = "PATH")]
    db: PathBuf,
    /// Keep spool files after ingesting them (default: remove finished, fully ingested files).
    #[arg(long)]
    no_compact: bool,
}

#[derive(Args)]
struct TracesArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Print a JSON array of spans instead of text (with --summary: an array of trace summaries).
    #[arg(long)]
    json: bool,
    /// One line per trace (runtime, status, phase durations) instead of full timelines.
    #[arg(long)]
    summary: bool,
}

#[derive(Args)]
struct TraceArgs {
    /// The container id (or trace id) to show; with --pod, the pod.
    container: String,
    /// Show a Kubernetes pod (by name, namespace/name, uid or sandbox id) as one tree: its
    /// sandbox, then each container, on one time axis.
    #[arg(long)]
    pod: bool,
    #[command(flatten)]
    source: SourceArgs,
    /// Print the trace's spans as a JSON array instead of the waterfall.
    #[arg(long)]
    json: bool,
    /// Width of the waterfall's bars in columns.
    #[arg(long, default_value_t = 60)]
    width: usize,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Seconds between housekeeping wake-ups (compacting files of exited writers).
    #[arg(long, default_value_t = serve::DEFAULT_HOUSEKEEPING.as_secs())]
    housekeeping_secs: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    otlp: OtlpArgs,
}

/// OTLP settings; each overrides its OTEL_* variable.
#[derive(Args)]
struct OtlpArgs {
    /// OTLP endpoint (as OTEL_EXPORTER_OTLP_ENDPOINT; `/v1/traces` is added for HTTP).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (as OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
    /// Service name of exported spans (as OTEL_SERVICE_NAME; default shimtrace).
    #[arg(long, value_name = "NAME")]
    service_name: Option<String>,
}

impl OtlpArgs {
    fn overrides(&self) -> ExportOverrides {
        ExportOverrides {
            endpoint: self.otlp_endpoint.clone(),
            protocol: self.otlp_protocol.clone(),
            service_name: self.service_name.clone(),
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    otlp: OtlpArgs,
    /// Only spans that started at or after this time (RFC 3339, or unix nanoseconds).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Only spans that started before this time (RFC 3339, or unix nanoseconds).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Only spans that started within this long before now (e.g. `1h`, `30m`).
    #[arg(long, value_name = "DURATION", conflicts_with = "from")]
    since: Option<String>,
    /// Write Jaeger UI "Upload JSON" here instead of sending OTLP (unless an endpoint is given too).
    #[arg(long, value_name = "FILE")]
    jaeger_json: Option<PathBuf>,
    /// Attempts after the first failed OTLP request, with exponential backoff.
    #[arg(long, default_value_t = 5)]
    retries: u32,
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    store: StoreArgs,
}

fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", text.trim_end()).context("writing to stdout")
}

fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({eta})")
            .expect("a valid progress template"),
    );
    bar.set_message(what.to_string());
    bar
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "lab")]
        Command::Lab(args) => {
            shimtrace_lab::run(args)?;
        }
        Command::Install(args) => {
            let outcome = shimtrace_containerd::install::install(&args)?;
            print(&outcome.report)?;
        }
        Command::Traces(args) => {
            let traces = Trace::group(args.source.load(None)?.spans);
            let text = match (args.json, args.summary) {
                (true, false) => timeline::spans_json(&traces)?,
                (true, true) => serde_json::to_string_pretty(
                    &traces.iter().map(Trace::summary).collect::<Vec<_>>(),
                )?,
                (false, false) => timeline::render_timelines(&traces),
                (false, true) => timeline::render_summary_table(&traces),
            };
            print(&text)?;
        }
        Command::Trace(args) if args.pod => {
            let traces = Trace::group(args.source.load(None)?.spans);
            let pod = &args.container;
            print(&shimtrace_collector::pod::show(
                &traces, pod, args.json, args.width,
            )?)?;
        }
        Command::Trace(args) => {
            let traces = Trace::group(args.source.load(Some(&args.container))?.spans);
            let Some(trace) = traces.iter().find(|t| {
                t.container_id() == Some(args.container.as_str())
                    || t.trace_id.to_hex() == args.container
            }) else {
                bail!(
                    "no trace for container {:?}; `shimtrace traces --summary` lists the traced containers",
                    args.container
                );
            };
            let text = if args.json {
                timeline::spans_json(std::slice::from_ref(trace))?
            } else {
                timeline::render_waterfall(trace, args.width)
            };
            print(&text)?;
        }
        Command::Ingest(args) => {
            let store = Store::open(&args.store.db)?;
            let mut ingester = Ingester::new(store, &args.store.spool, !args.store.no_compact);
            let report = ingester.ingest_all()?;
            for issue in &report.issues {
                eprintln!("warning: {issue}");
            }
            print(&format!(
                "read {} spans, stored {} new, {} dropped by shims, {} files compacted; store holds {} spans",
                report.spans_read,
                report.spans_stored,
                report.dropped,
                report.compacted,
                ingester.store().span_count()?
            ))?;
        }
        Command::Export(args) => {
            let (from, to) = export::time_range(
                args.from.as_deref(),
                args.to.as_deref(),
                args.since.as_deref(),
                shimtrace_span::clock::now_unix_nanos(),
            )?;
            let mut spans = args.source.load(None)?.spans;
            spans.retain(|s| s.start_time_unix_nano >= from && s.start_time_unix_nano < to);
            let require_endpoint = args.jaeger_json.is_some();
            let otlp = ExportConfig::resolve(&args.otlp.overrides(), env_var, require_endpoint)?;
            if let Some(path) = &args.jaeger_json {
                let service = otlp
                    .as_ref()
                    .map(|c| c.service_name.clone())
                    .or_else(|| args.otlp.service_name.clone())
                    .or_else(|| env_var("OTEL_SERVICE_NAME"))
                    .unwrap_or_else(|| "shimtrace".into());
                let doc = jaeger::to_jaeger_json(spans.clone(), &service);
                std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
                    .with_context(|| format!("writing Jaeger JSON to {}", path.display()))?;
                eprintln!("wrote {} spans to {}", spans.len(), path.display());
            }
            match otlp {
                Some(config) => {
                    let endpoint = config.endpoint.clone();
                    let runtime =
                        tokio::runtime::Runtime::new().context("starting the async runtime")?;
                    let sent =
                        runtime.block_on(export::export_once(config, &spans, args.retries))?;
                    eprintln!("exported {sent} spans to {endpoint}");
                }
                None if args.jaeger_json.is_none() => {
                    bail!("OTLP export is disabled (OTEL_SDK_DISABLED=true); unset it or pass --jaeger-json FILE")
                }
                None => {}
            }
        }
        Command::Report(args) => {
            let loaded = args.source.load(None)?;
            let walls = match &args.wall_times {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading wall times from {}", path.display()))?;
                    report::parse_wall_times(&text)
                        .with_context(|| format!("in {}", path.display()))?
                }
                None => Vec::new(),
            };
            let built = report::build_report(loaded.spans, loaded.dropped, &walls, Vec::new());
            let text = report::render(&built, args.format);
            match &args.output {
                Some(path) => std::fs::write(path, text)
                    .with_context(|| format!("writing the report to {}", path.display()))?,
                None => print(&text)?,
            }
        }
        Command::Synth(args) => {
            let config = synth::SynthConfig {
                containers: args.containers,
                containers_per_writer: args.containers_per_writer,
                seed: args.seed,
                ..Default::default()
            };
            let bar = progress(args.containers, "writing spool");
            let (summary, walls) =
                synth::generate_spool(&args.spool, &config, |n| bar.set_position(n as u64))
                    .with_context(|| {
                        format!("writing a synthetic spool to {}", args.spool.display())
                    })?;
            bar.finish_and_clear();
            if let Some(path) = &args.wall_times {
                let lines: Vec<String> = walls
                    .iter()
                    .map(serde_json::to_string)
                    .collect::<Result<_, _>>()?;
                std::fs::write(path, lines.join("\n") + "\n")
                    .with_context(|| format!("writing wall times to {}", path.display()))?;
            }
            print(&serde_json::to_string(&summary)?)?;
        }
        Command::Bench(args) => {
            let config = synth::SynthConfig {
                containers: args.containers,
                containers_per_writer: args.containers_per_writer,
                ..Default::default()
            };
            let bar = progress(args.containers, "writing spool");
            let result = throughput::run(&args.dir, &config, |n| bar.set_position(n as u64))?;
            bar.finish_and_clear();
            print(&serde_json::to_string_pretty(&result)?)?;
        }
        Command::Serve(args) => {
            init_logging();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let config = serve::ServeConfig {
                ingest: serve::IngestConfig {
                    spool_dir: args.store.spool,
                    db: args.store.db,
                    compact: !args.store.no_compact,
                    housekeeping: Duration::from_secs(args.housekeeping_secs.max(1)),
                },
                export: ExportConfig::resolve(&args.otlp.overrides(), env_var, true)?,
                metrics_addr: args.metrics_addr,
            };
            runtime.block_on(serve::run(config, shutdown_signal()))?;
        }
    }
    Ok(())
}
