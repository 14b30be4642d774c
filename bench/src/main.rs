//! `shimtrace-bench`: runs the overhead benchmarks, prints the figures as a table and writes them
//! (with every detail) as JSON.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use shimtrace_bench::{figures, BenchConfig};

/// Measures what shimtrace costs: ttrpc latency through the proxy, cold starts, the proxy's memory,
/// parallel starts and the collector's speed, against a private containerd (run as root).
#[derive(Parser)]
#[command(name = "shimtrace-bench", version)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Small numbers (500 calls, 3 pairs, 10 containers, 8 parallel, 1,000 traces): checks that
    /// every figure is produced, in seconds; the figures themselves are noise.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON results.
    #[arg(long, value_name = "FILE", default_value = "shimtrace-bench.json")]
    out: PathBuf,
    /// The wrapper binary to install (build it with `cargo build --release -p shimtrace-shim`)
    /// [default: containerd-shim-traced-v2 beside this binary].
    #[arg(
        long,
        value_name = "FILE",
        env = "SHIMTRACE_WRAPPER_BIN",
        global = true
    )]
    wrapper: Option<PathBuf>,
    /// containerd version to run (an installed one: 1.6.20 is the system's).
    #[arg(long, value_name = "VERSION")]
    containerd: Option<String>,
    /// Timed calls per method and path.
    #[arg(long)]
    calls: Option<usize>,
    /// Cold-start pairs (wrapped + direct) for ctr and for the API each.
    #[arg(long)]
    pairs: Option<usize>,
    /// Containers run through one proxy for the memory figure.
    #[arg(long)]
    group_containers: Option<usize>,
    /// Containers started at once.
    #[arg(long)]
    parallel: Option<usize>,
    /// Synthetic container traces for the collector's ingest and report.
    #[arg(long)]
    traces: Option<usize>,
    /// Experiment: run the wrapper with an unwritable spool (it records nothing), to see what
    /// writing spans costs.
    #[arg(long)]
    no_spool: bool,
    /// Keep containerd's state dir and the proxies' run dir on disk (by default each is a tmpfs,
    /// as `/run` is on real nodes; the spool stays on disk either way).
    #[arg(long)]
    state_on_disk: bool,
    /// Exit with status 1 when a target is missed (by default only errors fail).
    #[arg(long)]
    check: bool,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Soak: many wrapped containers one after another, then at once, and an account of what
    /// they left behind (processes, sockets, run-dir and spool files, containerd's descriptors);
    /// exits 1 unless nothing failed and every count is back to its starting value.
    Soak(shimtrace_bench::soak::SoakArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("shimtrace-bench starts its own containerd and containers: run it as root");
    }
    let wrapper = match cli.wrapper {
        Some(path) => path,
        None => std::env::current_exe()
            .context("finding this binary")?
            .with_file_name("containerd-shim-traced-v2"),
    };
    if !wrapper.is_file() {
        bail!(
            "the wrapper {} does not exist: build it (`cargo build --release -p shimtrace-shim`) \
             or pass --wrapper / SHIMTRACE_WRAPPER_BIN",
            wrapper.display()
        );
    }
    let wrapper = wrapper
        .canonicalize()
        .with_context(|| format!("resolving {}", wrapper.display()))?;
    // The harness installs whatever this names; set before any thread starts.
    std::env::set_var("SHIMTRACE_WRAPPER_BIN", &wrapper);

    if let Some(Mode::Soak(args)) = &cli.mode {
        return soak(args);
    }

    let mut config = if cli.quick {
        BenchConfig::quick()
    } else {
        BenchConfig::full()
    };
    if let Some(v) = cli.containerd {
        config.containerd_version = v;
    }
    config.calls = cli.calls.unwrap_or(config.calls).max(1);
    config.cold_pairs = cli.pairs.unwrap_or(config.cold_pairs).max(1);
    config.group_containers = cli.group_containers.unwrap_or(config.group_containers);
    config.parallel = cli.parallel.unwrap_or(config.parallel).max(1);
    config.traces = cli.traces.unwrap_or(config.traces).max(1);
    config.no_spool = cli.no_spool;
    config.state_on_tmpfs = !cli.state_on_disk;

    let report = shimtrace_bench::run(&config, &|step| eprintln!("shimtrace-bench: {step}"))?;
    print!("{}", figures::table(&report.figures));
    print!("{}", shimtrace_bench::describe_cold_phases(&report));
    println!("{}", shimtrace_bench::describe_phases(&report));
    let json = serde_json::to_string_pretty(&report).context("encoding the results")?;
    std::fs::write(&cli.out, json + "\n")
        .with_context(|| format!("writing {}", cli.out.display()))?;
    println!("results: {}", cli.out.display());
    let missed: Vec<&str> = report
        .figures
        .iter()
        .filter(|f| f.met == Some(false))
        .map(|f| f.label.as_str())
        .collect();
    if !missed.is_empty() {
        println!("targets missed: {}", missed.join("; "));
        if cli.check {
            std::process::exit(1);
        }
    }
    Ok(())
}

fn soak(args: &shimtrace_bench::soak::SoakArgs) -> anyhow::Result<()> {
    let report = shimtrace_bench::soak::run(&args.config(), &|step| {
        eprintln!("shimtrace-bench soak: {step}")
    })?;
    print!("{}", shimtrace_bench::soak::table(&report));
    let json = serde_json::to_string_pretty(&report).context("encoding the results")?;
    std::fs::write(&args.out, json + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("results: {}", args.out.display());
    let missed = report.missed();
    if !missed.is_empty() {
        println!("targets missed: {}", missed.join("; "));
        std::process::exit(1);
    }
    Ok(())
}
