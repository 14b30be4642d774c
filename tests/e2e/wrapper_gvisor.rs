//! gVisor through the wrapper: containerd's API sets the runc shim's `BinaryName` to a runsc
//! wrapper (options pass through the wrapper untouched); the container runs on gVisor's kernel and
//! its calls are traced.

use std::time::Duration;

use shimtrace_containerd::{Containerd, RunSpec, RuncOptions};
use shimtrace_span::{attr, names};
use shimtrace_testkit::traced::{
    assert_runtime, has_method, write_executable, Spooled, Traced, TRACED_RUNC,
};

fn gvisor_through_wrapper(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    // runsc names its control socket after the container id alone: unique across parallel tests
    // and across test processes running at once.
    let id = format!("gvisor{}-{}", version.replace('.', ""), std::process::id());
    let id = id.as_str();
    let runc_id = format!("{id}-runc");
    let c = &traced.containerd;
    let runsc = c.dir().join("runsc-nonet");
    write_executable(
        &runsc,
        "#!/bin/sh\nexec /usr/bin/runsc --network=none --ignore-cgroups \"$@\"\n",
    );
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = runtime.block_on(async {
        let client = Containerd::connect(c.address())
            .await
            .expect("containerd API")
            .with_namespace(c.namespace());
        let mut spec = RunSpec::new(id, c.rootfs(), ["/bin/uname", "-r"], c.dir().join("io"));
        spec.runtime = TRACED_RUNC.clone();
        spec.runtime_options = Some(RuncOptions {
            binary_name: Some(runsc.display().to_string()),
            ..Default::default()
        });
        spec.timeout = Duration::from_secs(60);
        let outcome = client.run_to_exit(&spec).await;
        // And one on runc, through the same wrapped shim, for the report to tell apart.
        let mut plain = RunSpec::new(&runc_id, c.rootfs(), ["/bin/true"], c.dir().join("io-runc"));
        plain.runtime = TRACED_RUNC.clone();
        let plain = client.run_to_exit(&plain).await;
        // runsc can leave the task stopped rather than deleted; never leave it behind.
        let _ = client.cleanup().await;
        (outcome, plain)
    });
    let (outcome, plain) = outcome;
    assert_eq!(plain.expect("runc container runs").exit_code, 0);
    let outcome = outcome.expect("gVisor container runs through the wrapper");
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    let release = outcome.output.trim();
    assert!(!release.is_empty());
    assert_ne!(
        release, host_release,
        "the container saw gVisor's kernel, not the host's"
    );

    let spans = traced.await_spans(id, Duration::from_secs(10), |s| {
        has_method(s, "Create") && has_method(s, "Start") && has_method(s, "Delete")
    });
    assert!(spans.iter().any(|s| s.name == names::WRAPPER_START));
    // containerd may also make calls that legitimately fail (e.g. State after exit); the
    // container's own lifecycle must have succeeded through the wrapper.
    for method in ["Create", "Start", "Delete"] {
        let call = spans
            .iter()
            .find(|s| shimtrace_testkit::traced::is_method(s, method))
            .unwrap();
        assert_eq!(
            call.attr_i64(attr::RPC_TTRPC_STATUS_CODE),
            Some(0),
            "{call:?}"
        );
    }
    // Who ran it: gVisor, though the shim in front is runc's, on every span of the container
    // (the wrapper's start read the options on its stdin, the proxy those of Create).
    let runsc = runsc.display().to_string();
    for s in &spans {
        assert_runtime(s, "runsc", "binary_name");
        assert_eq!(
            s.attr_str(attr::RUNTIME_BINARY),
            Some(runsc.as_str()),
            "{s:?}"
        );
    }
    let runc_spans = traced.await_spans(&runc_id, Duration::from_secs(10), |s| {
        has_method(s, "Delete")
    });
    for s in &runc_spans {
        assert_runtime(s, "runc", "shim");
    }
    // The report: two runtimes, where the inner shim's path made one.
    let mut all = spans;
    all.extend(runc_spans);
    let report = shimtrace_collector::report::build_report(all, 0, &[], vec![]);
    let runtimes: Vec<&str> = report.runtimes.iter().map(|r| r.runtime.as_str()).collect();
    assert_eq!(runtimes, ["runc", "runsc"]);
}

#[test]
fn gvisor_runs_through_the_wrapper_v1_6() {
    gvisor_through_wrapper("1.6.20")
}

#[test]
fn gvisor_runs_through_the_wrapper_v2_1() {
    gvisor_through_wrapper("2.1.9")
}
