//! `shimtrace ingest`: one pass of the spool into the store.

use anyhow::Result;
use clap::Args;
use shimtrace_collector::ingest::Ingester;
use shimtrace_collector::store::Store;

use super::{print, StoreArgs};

#[derive(Args)]
pub struct IngestArgs {
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(args: IngestArgs) -> Result<()> {
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
    ))
}
