//! `shimtrace serve`: the daemon. Ingests the spool as it grows, exports over OTLP and serves
//! metrics until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use shimtrace_collector::export::ExportConfig;
use shimtrace_collector::serve;
use tokio::signal::unix::{signal, SignalKind};

use super::{env_var, OtlpArgs, StoreArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Seconds between housekeeping wake-ups (compacting files of exited writers).
    #[arg(long, default_value_t = serve::DEFAULT_HOUSEKEEPING.as_secs())]
    housekeeping_secs: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    otlp: OtlpArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context(
        "cannot start the async runtime (check the process's limits on threads and open files)",
    )?;
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
    let mut term = {
        // Signal streams register with the runtime they are created in.
        let _runtime = runtime.enter();
        signal(SignalKind::terminate()).context(
            "cannot install a SIGTERM handler (stop shimtrace serve with SIGINT instead)",
        )?
    };
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    runtime.block_on(serve::run(config, shutdown))?;
    Ok(())
}
