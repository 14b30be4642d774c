//! One module per subcommand, each an argument struct and a `run` that calls into the libraries;
//! here, the arguments several subcommands share and how they print.

pub mod bench;
pub mod export;
pub mod ingest;
pub mod install;
#[cfg(feature = "lab")]
pub mod lab;
pub mod report;
pub mod serve;
pub mod synth;
pub mod trace;
pub mod traces;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use shimtrace_collector::export::ExportOverrides;
use shimtrace_collector::source::{Loaded, Source};
use shimtrace_collector::store::{DB_ENV, DEFAULT_DB};
use shimtrace_span::env::SPOOL_DIR as SPOOL_DIR_ENV;
use shimtrace_span::spool::DEFAULT_SPOOL_DIR;

/// Where query commands read spans from.
#[derive(Args)]
pub struct SourceArgs {
    #[arg(long, value_name = "DIR", help = format!(
        "Read this spool directory directly [default: the store --db or ${DB_ENV} names, else \
         ${SPOOL_DIR_ENV} if set, else the store if {DEFAULT_DB} exists, else {DEFAULT_SPOOL_DIR}]"
    ))]
    spool: Option<PathBuf>,
    /// Read this store (see --spool for the default).
    #[arg(long, env = DB_ENV, value_name = "PATH")]
    db: Option<PathBuf>,
}

impl SourceArgs {
    /// The spans (of `container`, if given), with each spool issue printed as a warning.
    pub fn load(&self, container: Option<&str>) -> Result<Loaded> {
        let env_spool = std::env::var_os(SPOOL_DIR_ENV).map(PathBuf::from);
        let source = Source::choose(self.spool.clone(), self.db.clone(), env_spool);
        let loaded = source.load(container)?;
        for issue in &loaded.issues {
            eprintln!("warning: {issue}");
        }
        // (A container that is not there is the command's own error.)
        if loaded.spans.is_empty() && container.is_none() {
            eprintln!("note: {}", nothing_in(&source));
        }
        Ok(loaded)
    }
}

/// What to say when `source` holds no spans: where it looked, and where spans are.
fn nothing_in(source: &Source) -> String {
    let looked = match source {
        Source::Spool(dir) => format!("the spool {}", dir.display()),
        Source::Store(db) => format!("the store {}", db.display()),
    };
    format!(
        "no spans in {looked}. The shims spool where containerd's ${SPOOL_DIR_ENV} points \
         (default {DEFAULT_SPOOL_DIR}); `shimtrace serve` and `shimtrace ingest` move them into a \
         store. Pass --spool DIR or --db PATH to read another."
    )
}

/// The spool a daemon or ingest pass reads and the store it writes.
#[derive(Args)]
pub struct StoreArgs {
    /// Spool directory the shims write.
    #[arg(long, env = SPOOL_DIR_ENV, default_value = DEFAULT_SPOOL_DIR, value_name = "DIR")]
    pub spool: PathBuf,
    /// SQLite store.
    #[arg(long, env = DB_ENV, default_value = DEFAULT_DB, value_name = "PATH")]
    pub db: PathBuf,
    /// Keep spool files after ingesting them (default: remove finished, fully ingested files).
    #[arg(long)]
    pub no_compact: bool,
}

/// OTLP settings; each overrides its OTEL_* variable.
#[derive(Args)]
pub struct OtlpArgs {
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
    pub fn overrides(&self) -> ExportOverrides {
        ExportOverrides {
            endpoint: self.otlp_endpoint.clone(),
            protocol: self.otlp_protocol.clone(),
            service_name: self.service_name.clone(),
        }
    }
}

/// Looks an environment variable up (what the export settings resolve against).
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Prints a command's output to stdout, with exactly one trailing newline. A reader that stops
/// early (`shimtrace traces | head`) is not an error.
pub fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", text.trim_end()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing to stdout"),
    }
}

/// A progress bar on stderr for `len` steps of `what`.
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({eta})")
            .expect("a valid progress template"),
    );
    bar.set_message(what.to_string());
    bar
}
