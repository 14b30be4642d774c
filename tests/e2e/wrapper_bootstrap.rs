//! containerd 2.3's stdin bootstrap through the wrapper: a peer playing containerd 2.3 sends a real
//! `BootstrapParams` to `containerd-shim-traced-bootstrap-v2`, which wraps the `containerd-shim`
//! 0.12 test shim; the reply is a protobuf `BootstrapResult` naming the proxy, calls and events go
//! through it, and both are traced.

use std::time::Duration;

use shimtrace_span::spool::read_spool;
use shimtrace_span::{attr, names};
use shimtrace_testkit::containerd::bootstrap::{
    bootstrap_shim_binary, decode_task_create, BootstrapStart, Containerd23Peer,
};
use shimtrace_testkit::traced::{pids_with_cmdline, wait_for, wrapper_binary, wrapper_config_for};

#[test]
fn bootstrap_params_through_the_wrapper_get_a_protobuf_reply_naming_the_proxy() {
    let peer = Containerd23Peer::new().expect("peer");
    let bin = peer.dir().join("wrapper-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("containerd-shim-traced-bootstrap-v2");
    std::os::unix::fs::symlink(wrapper_binary(), &link).unwrap();
    let inner = bootstrap_shim_binary().expect("bootstrap shim built");
    let spool = peer.dir().join("spool");
    let config = peer.dir().join("shimtrace.toml");
    std::fs::write(
        &config,
        wrapper_config_for("io.containerd.traced-bootstrap.v2", &inner),
    )
    .unwrap();

    let request_log = peer.dir().join("requests.jsonl");
    let mut start = BootstrapStart::new("bsns", "bs-wrapped");
    start.env.push((
        shimtrace_bootstrap_shim::REQUEST_LOG_ENV.into(),
        request_log.clone().into(),
    ));
    start.env.push(("SHIMTRACE_CONFIG".into(), config.into()));
    start
        .env
        .push(("SHIMTRACE_SPOOL_DIR".into(), spool.clone().into()));
    start
        .env
        .push(("SHIMTRACE_RUN_DIR".into(), peer.dir().join("run").into()));
    let mut started = peer
        .start_shim(&link, &start)
        .expect("start through the wrapper");

    // Same format and version as the inner shim's reply, with the proxy's address.
    assert_eq!(started.result.version, 3);
    assert_eq!(started.result.protocol, "ttrpc");
    let socket = started
        .address()
        .strip_prefix("unix://")
        .expect("unix address")
        .to_string();
    let socket_path = std::path::Path::new(&socket);
    assert_eq!(
        socket_path.parent(),
        Some(peer.socket_dir().as_path()),
        "the proxy listens beside the inner shim, in BootstrapParams.socket_dir"
    );
    assert_eq!(
        pids_with_cmdline(&["proxy", "--socket", &socket]).len(),
        1,
        "a live proxy serves the reply's address"
    );

    let connected = started.connect().expect("Task/Connect through the proxy");
    assert_eq!(connected.version, "shimtrace-bootstrap-shim");
    started.create().expect("Task/Create through the proxy");
    // The shim publishes to BootstrapParams' containerd_ttrpc_address, which the wrapper pointed at
    // the proxy; the event still reaches "containerd".
    let envelope = peer
        .wait_for_event("/tasks/create", Duration::from_secs(10))
        .expect("/tasks/create reached the peer through the events tap");
    assert_eq!(
        decode_task_create(&envelope).unwrap().container_id,
        "bs-wrapped"
    );

    let spans = wait_for(Duration::from_secs(10), || {
        let spans = read_spool(&spool).ok()?.spans;
        let has = |pred: &dyn Fn(&shimtrace_span::SpanRecord) -> bool| spans.iter().any(pred);
        (has(&|s| s.name == "containerd.task.v3.Task/Connect")
            && has(&|s| s.name == "containerd.task.v3.Task/Create")
            && has(&|s| s.events.iter().any(|e| e.name == "/tasks/create"))
            && has(&|s| s.name == names::WRAPPER_START))
        .then_some(spans)
    })
    .expect("calls, the event and the wrapper's start are spooled");
    let start_span = spans
        .iter()
        .find(|s| s.name == names::WRAPPER_START)
        .unwrap();
    assert_eq!(start_span.attr_str(attr::PROTOCOL), Some("protobuf/v3"));
    let create = spans
        .iter()
        .find(|s| s.name == "containerd.task.v3.Task/Create")
        .unwrap();
    assert_eq!(create.container_id(), Some("bs-wrapped"));
    assert_eq!(create.attr_str(attr::CONTAINERD_NAMESPACE), Some("bsns"));
    assert_eq!(create.trace_id, start_span.trace_id);

    // No traceparent came from "containerd": the inner shim got the proxy's, naming the Create span.
    let log = std::fs::read_to_string(&request_log).expect("the inner shim logged its calls");
    let sent = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|entry| entry["method"] == "Create")
        .expect("Create logged");
    assert_eq!(
        sent["metadata"]["traceparent"][0].as_str(),
        Some(format!("00-{}-{}-01", create.trace_id, create.span_id).as_str()),
        "{sent}"
    );

    started.shutdown().expect("Task/Shutdown");
}
