//! A short soak, as `scripts/soak` runs the long one: wrapped containers one after another and
//! then at once through a private containerd 1.6.20; nothing may fail, every container must be
//! traced, and every count a container could leak (processes, shim sockets, run-dir and spool
//! files, containerd's descriptors, tasks, containers, bundles) must be back to its starting value.

use shimtrace_bench::soak::{self, SoakConfig};

#[test]
fn a_short_soak_fails_nothing_and_leaves_nothing_behind() {
    let config = SoakConfig {
        sequential: 40,
        parallel: 16,
        sample_interval_ms: 200,
        ..SoakConfig::default()
    };
    let report = soak::run(&config, &|step| eprintln!("soak: {step}")).expect("the soak ran");
    let table = soak::table(&report);
    eprintln!("{table}");
    assert_eq!(
        report.phases.iter().map(|p| p.containers).sum::<usize>(),
        56,
        "every container was run"
    );
    assert!(report.notes.is_empty(), "{table}");
    // Every count is taken, so that "nothing missed" covers them all.
    let keys: Vec<&str> = report.counts.iter().map(|c| c.key).collect();
    assert_eq!(
        keys,
        [
            "failures",
            "untraced",
            "dropped",
            "processes",
            "shim_sockets",
            "run_dir",
            "spool_files",
            "spool_files_held",
            "containerd_fds",
            "tasks",
            "containers",
            "bundles",
            "all_sockets"
        ],
        "{table}"
    );
    assert!(
        report.missed().is_empty(),
        "targets missed: {:?}\n{table}",
        report.missed()
    );
    // The proxies were seen while they ran, so their memory over time is in the report.
    assert!(
        report
            .samples
            .iter()
            .any(|s| s.proxies > 0 && s.proxy_rss_max_kib > 0),
        "no proxy was ever sampled\n{table}"
    );
}
