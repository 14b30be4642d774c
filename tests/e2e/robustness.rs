//! The proxy under what kills or fills things, on containerd 1.6.20 with the real runc shim: a
//! proxy killed mid-life, hundreds of containers one after another, descriptors exhausted, and
//! request floods (unique ids, undecodable frames, held connections). Each test asserts what is
//! left afterwards: processes, sockets, run-dir files, memory, threads.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protobuf::Message;
use sha2::{Digest, Sha256};

use shimtrace_bench::calls::TaskClient;
use shimtrace_bench::rss::Memory;
use shimtrace_shim::proxy::{proxy_socket_for, MAX_CALL_CONNECTIONS};
use shimtrace_testkit::traced::{alive, pids_with_cmdline, sigkill, wait_for, Traced};

const VERSION: &str = "1.6.20";
/// Long enough for containerd's cleanup of a dead shim (its own timeouts are 3 to 5 s).
const SETTLE: Duration = Duration::from_secs(20);
/// Where containerd puts every runc shim socket, whatever its state dir.
const SOCKET_DIR: &str = "/run/containerd/s";
const TASK_SERVICE: &str = "containerd.task.v2.Task";

/// The runc shim's socket for container `id` of this containerd: `sha256(<address>/<ns>/<id>)`.
fn inner_socket(traced: &Traced, id: &str) -> PathBuf {
    let c = &traced.containerd;
    let key = format!("{}/{}/{id}", c.address().display(), c.namespace());
    Path::new(SOCKET_DIR).join(hex::encode(Sha256::digest(key)))
}

/// The proxy's socket in front of `inner`.
fn proxy_socket(inner: &Path) -> PathBuf {
    proxy_socket_for(inner, &format!("unix://{}", inner.display()))
}

/// The proxy's log while it runs.
fn proxy_log(traced: &Traced, proxy_socket: &Path) -> PathBuf {
    let name = proxy_socket.file_name().unwrap().to_string_lossy();
    traced.run_dir.join(format!("proxy-{name}.log"))
}

fn run_dir_entries(traced: &Traced) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&traced.run_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The single proxy serving `socket`.
fn proxy_pid(socket: &Path) -> u32 {
    let pids = pids_with_cmdline(&["proxy", "--socket", socket.to_str().unwrap()]);
    assert_eq!(
        pids.len(),
        1,
        "one proxy for {}: {pids:?}",
        socket.display()
    );
    pids[0]
}

/// The inner runc shim of container `id`.
fn inner_pid(traced: &Traced, id: &str) -> u32 {
    let address = traced.containerd.address();
    let pids = pids_with_cmdline(&[
        "containerd-shim-runc-v2",
        "-id",
        id,
        "-address",
        address.to_str().unwrap(),
    ]);
    assert_eq!(pids.len(), 1, "one inner shim for {id}: {pids:?}");
    pids[0]
}

/// SIGKILLs the proxy `proxy` in front of `inner_sock`, then waits until the inner shim `inner` has
/// ended and its socket, the proxy's and every run-dir entry not in `before` are gone.
fn kill_proxy_and_await_cleanup(
    traced: &Traced,
    proxy: u32,
    inner: u32,
    inner_sock: &Path,
    before: &[String],
) {
    let proxy_sock = proxy_socket(inner_sock);
    sigkill(proxy).unwrap();
    let clean = wait_for(SETTLE, || {
        (!alive(inner)
            && !inner_sock.exists()
            && !proxy_sock.exists()
            && run_dir_entries(traced) == before)
            .then_some(())
    });
    assert!(
        clean.is_some(),
        "after the proxy was killed: inner shim alive {}, inner socket {}, proxy socket {}, run dir {:?} (was {before:?})",
        alive(inner),
        inner_sock.exists(),
        proxy_sock.exists(),
        run_dir_entries(traced)
    );
}

fn oom_score_adj(pid: u32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A traced containerd running a sleeping container `id`, its proxy's socket and pid.
fn sleeper_proxy(id: &str) -> (Traced, PathBuf, u32) {
    let traced = Traced::start(VERSION).expect("traced containerd");
    traced.run_sleeper(id, &[]);
    let proxy_sock = proxy_socket(&inner_socket(&traced, id));
    let proxy = proxy_pid(&proxy_sock);
    (traced, proxy_sock, proxy)
}

/// CPU time (user + system, every thread) process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("the proxy (pid {pid}) is gone: {e}"));
    // After the command name in parentheses (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let after_name = &stat[stat.rfind(')').expect("/proc/<pid>/stat names the command") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The unit of [`cpu_ticks`] (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf runs");
    let ticks: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("getconf CLK_TCK: {out:?}"));
    assert!(ticks > 0.0, "getconf CLK_TCK: {ticks}");
    ticks
}

/// How many of process `pid`'s threads are named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|comm| comm.trim_end() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

fn memory(pid: u32) -> Memory {
    Memory::of(pid).unwrap_or_else(|| panic!("the proxy (pid {pid}) is gone"))
}

/// Waits for the proxy's resident memory to be at most `limit_kib` (it hands freed memory back
/// once its spool writer has caught up with a burst, which takes a while on a busy machine);
/// `Err` with the last reading if it never is within a minute.
fn memory_within(pid: u32, limit_kib: u64) -> Result<Memory, Memory> {
    let mut last = memory(pid);
    let within = wait_for(Duration::from_secs(60), || {
        last = memory(pid);
        (last.vm_rss_kib <= limit_kib).then_some(last)
    });
    within.ok_or(last)
}

#[test]
fn proxy_killed_leaves_no_inner_shim_or_socket_behind_v1_6() {
    proxy_killed_leaves_nothing_behind("1.6.20")
}

#[test]
fn proxy_killed_leaves_no_inner_shim_or_socket_behind_v1_7() {
    proxy_killed_leaves_nothing_behind("1.7.24")
}

#[test]
fn proxy_killed_leaves_no_inner_shim_or_socket_behind_v2_1() {
    proxy_killed_leaves_nothing_behind("2.1.9")
}

fn proxy_killed_leaves_nothing_behind(version: &str) {
    let traced = Traced::start(version).expect("traced containerd");
    let before = run_dir_entries(&traced);
    traced.run_sleeper("pk1", &[]);
    let inner_sock = inner_socket(&traced, "pk1");
    let proxy_sock = proxy_socket(&inner_sock);
    assert!(inner_sock.exists() && proxy_sock.exists());
    let proxy = proxy_pid(&proxy_sock);
    let inner = inner_pid(&traced, "pk1");
    // Never an easier target for the OOM killer than the shim it fronts.
    assert!(
        oom_score_adj(proxy) <= oom_score_adj(inner),
        "proxy oom_score_adj {} > inner shim's {}",
        oom_score_adj(proxy),
        oom_score_adj(inner)
    );

    kill_proxy_and_await_cleanup(&traced, proxy, inner, &inner_sock, &before);
    // The operator learns why from containerd's own log.
    let told = wait_for(SETTLE, || {
        let log = traced.containerd.log();
        (log.contains(proxy_sock.to_str().unwrap()) && log.contains("shut down")).then_some(())
    });
    assert!(
        told.is_some(),
        "containerd's log does not say why: {}",
        traced.containerd.log()
    );
}

#[test]
fn proxy_killed_in_front_of_grouped_containers_leaves_nothing_behind() {
    let traced = Traced::start(VERSION).expect("traced containerd");
    let before = run_dir_entries(&traced);
    for id in ["ga", "gb"] {
        traced.run_sleeper(id, &["--annotation", "io.containerd.runc.v2.group=g1"]);
    }
    // One inner shim for the group, named after it, started for the first container.
    let inner_sock = inner_socket(&traced, "g1");
    let proxy_sock = proxy_socket(&inner_sock);
    let proxy = proxy_pid(&proxy_sock);
    let inner = inner_pid(&traced, "ga");
    // Both containers' `delete` run; the inner shim ends with the last of them.
    kill_proxy_and_await_cleanup(&traced, proxy, inner, &inner_sock, &before);
}

#[test]
fn proxy_sequential_runs_leave_no_sockets_or_run_files() {
    const RUNS: usize = 20;
    let traced = Traced::start(VERSION).expect("traced containerd");
    let before = run_dir_entries(&traced);
    let ids: Vec<String> = (0..RUNS).map(|i| format!("seq{i}")).collect();
    for id in &ids {
        let out = traced
            .containerd
            .run_rm(id, &traced.runtime_flags(), &["/bin/true"])
            .expect("ctr run");
        assert!(out.success(), "ctr run --rm {id}: {}", out.stderr);
    }
    let left = || {
        let sockets: Vec<PathBuf> = ids
            .iter()
            .map(|id| inner_socket(&traced, id))
            .flat_map(|inner| {
                let proxy = proxy_socket(&inner);
                [inner, proxy]
            })
            .filter(|p| p.exists())
            .collect();
        (sockets, run_dir_entries(&traced))
    };
    let clean = wait_for(SETTLE, || {
        let (sockets, entries) = left();
        (sockets.is_empty() && entries == before).then_some(())
    });
    let (sockets, entries) = left();
    // And no false alarm: every proxy ended after its inner shim.
    let log = traced.containerd.log();
    assert!(
        !log.contains("shimtrace proxy"),
        "containerd's log tells of a dead proxy: {log}"
    );
    assert!(
        clean.is_some(),
        "after {RUNS} runs: {} sockets left {sockets:?}; run dir {} entries (was {}): {entries:?}",
        sockets.len(),
        entries.len(),
        before.len()
    );
}

#[test]
fn proxy_accept_failures_back_off() {
    let (traced, proxy_sock, proxy) = sleeper_proxy("fd1");
    let log = proxy_log(&traced, &proxy_sock);
    // How many lines of the proxy's log mention `needle`.
    let lines_with = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    let count_failures = || lines_with("accept");
    // The lowest free descriptor number: a limit at it leaves the proxy none to allocate.
    let open: Vec<u32> = std::fs::read_dir(format!("/proc/{proxy}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
    // (util-linux `prlimit`: the soft limit of a running process, by pid.)
    let limit = |soft: &str| {
        let out = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(proxy.to_string())
            .arg(format!("--nofile={soft}:"))
            .output()
            .expect("prlimit runs");
        assert!(out.status.success(), "prlimit: {out:?}");
    };
    let soft_before = std::fs::read_to_string(format!("/proc/{proxy}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .expect("the proxy's open-files limit");
    let count_failed = || lines_with("accept failed");
    let failures_before = count_failures();
    let failed_before = count_failed();
    // No descriptor left: every accept fails with EMFILE while connections wait in the backlog.
    limit(&lowest_free.to_string());
    let clients: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&proxy_sock).unwrap())
        .collect();
    // A measurement window, not a synchronisation: how often does the proxy log in 2 s, and how
    // much CPU does it burn meanwhile?
    let cpu_before = cpu_ticks(proxy);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_ticks(proxy) - cpu_before;
    let window = window.elapsed();
    let logged = count_failures() - failures_before;
    let failed = count_failed() - failed_before;
    limit(&soft_before);
    drop(clients);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged <= 3,
        "{logged} accept failures logged in 2 s: {log_text}"
    );
    // The limit took effect: accept failed, and said so (the first warning is never held back).
    assert!(
        failed >= 1,
        "no accept failure logged in {} (the limit did not take effect?): {log_text}",
        log.display()
    );
    // Backing off, not spinning: a loop retrying at once would burn the whole window.
    let window_ticks = window.as_secs_f64() * clock_ticks_per_second();
    assert!(
        (cpu as f64) < window_ticks / 10.0,
        "the proxy used {cpu} clock ticks of CPU in {window:?} ({window_ticks:.0} ticks) while accept failed"
    );
    // Descriptors back: the proxy serves new connections again, promptly.
    let served = wait_for(Duration::from_secs(5), || {
        TaskClient::connect(&proxy_sock, "fd1")
            .ok()?
            .identity()
            .ok()
    });
    assert!(served.is_some(), "the proxy serves again");
}

/// A ttrpc request frame with stream id `sid`.
fn frame(sid: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&sid.to_be_bytes());
    out.push(ttrpc::proto::MESSAGE_TYPE_REQUEST);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// Sends `count` requests (payload `i` from `payload`) on one connection to `socket` while reading
/// as many response frames; returns the connection, still open.
fn flood(socket: &Path, count: u32, payload: impl Fn(u32) -> Vec<u8>) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    let mut reader = stream.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let responses = std::thread::spawn(move || {
        let mut header = [0u8; 10];
        let mut body = Vec::new();
        for _ in 0..count {
            reader.read_exact(&mut header).expect("a response frame");
            let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
            body.resize(len, 0);
            reader.read_exact(&mut body).expect("a response body");
        }
    });
    let mut writer = std::io::BufWriter::new(stream.try_clone().unwrap());
    for i in 0..count {
        writer.write_all(&frame(2 * i + 1, &payload(i))).unwrap();
    }
    writer.flush().unwrap();
    responses.join().expect("every request answered");
    stream
}

fn state_request(id: &str) -> Vec<u8> {
    let mut state = containerd_shim_protos::api::StateRequest::new();
    state.id = id.into();
    let mut request = ttrpc::Request::new();
    request.service = TASK_SERVICE.into();
    request.method = "State".into();
    request.payload = state.write_to_bytes().unwrap();
    request.timeout_nano = 10_000_000_000;
    request.write_to_bytes().unwrap()
}

/// Most a flood may leave in the proxy's resident memory once it is over: its bounded structures
/// filled, the allocator warm. Without the bounds, each flood below left 10 to 25 MiB.
const GROWTH_LIMIT_KIB: u64 = 8 * 1024;

#[test]
fn proxy_memory_stays_bounded_under_unique_ids() {
    const CALLS: u32 = 50_000;
    let (_traced, proxy_sock, proxy) = sleeper_proxy("ids");
    let idle = memory(proxy);
    for round in ["a", "b"] {
        drop(flood(&proxy_sock, CALLS, |i| {
            state_request(&format!("{round}{i}"))
        }));
    }
    let after = memory_within(proxy, idle.vm_rss_kib + GROWTH_LIMIT_KIB);
    assert!(
        after.is_ok(),
        "{} State calls with unique ids left the proxy at {after:?} (idle: {idle:?})",
        2 * CALLS
    );
}

#[test]
fn proxy_memory_stays_bounded_under_undecodable_requests() {
    const FRAMES: u32 = 100_000;
    let (_traced, proxy_sock, proxy) = sleeper_proxy("junk");
    let idle = memory(proxy);
    // Not protobuf: the tap cannot read these, the inner shim answers each with an error.
    let held = flood(&proxy_sock, FRAMES, |i| {
        let mut junk = vec![0xff; 24];
        junk[..4].copy_from_slice(&i.to_be_bytes());
        junk
    });
    // While the connection stays open.
    let after = memory_within(proxy, idle.vm_rss_kib + GROWTH_LIMIT_KIB);
    drop(held);
    assert!(
        after.is_ok(),
        "{FRAMES} undecodable requests on one open connection left the proxy at {after:?} (idle: {idle:?})"
    );
}

#[test]
fn proxy_threads_stay_bounded_under_held_connections() {
    const CONNECTIONS: usize = 1_000;
    let (_traced, proxy_sock, proxy) = sleeper_proxy("conns");
    let before = memory(proxy);
    // Non-blocking, so that connections beyond the listener's backlog fail instead of waiting.
    let held: Vec<UnixStream> = (0..CONNECTIONS)
        .filter_map(|_| {
            use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .ok()?;
            let addr = UnixAddr::new(&proxy_sock).ok()?;
            nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).ok()?;
            Some(UnixStream::from(fd))
        })
        .collect();
    let connected = held.len();
    // Wait until the proxy has taken on what it will: the load arrived (it serves as many
    // connections as it may, each on a thread named `conn`), and then its thread count stops
    // changing over several samples.
    let cap = connected.min(MAX_CALL_CONNECTIONS);
    let loaded = wait_for(Duration::from_secs(30), || {
        (threads_named(proxy, "conn") >= cap).then_some(())
    });
    let mut samples = vec![memory(proxy).threads];
    let settled = wait_for(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        samples.push(memory(proxy).threads);
        let last = &samples[samples.len().saturating_sub(4)..];
        (last.len() == 4 && last.iter().all(|t| *t == last[0])).then_some(())
    });
    let during = memory(proxy);
    let serving = threads_named(proxy, "conn");
    drop(held);
    assert!(
        loaded.is_some(),
        "{connected} connected, but the proxy never served {cap} at once (it serves {serving})"
    );
    assert!(
        settled.is_some(),
        "the proxy's threads never settled: {samples:?}"
    );
    assert!(
        during.threads <= 2 * MAX_CALL_CONNECTIONS as u64 + 16,
        "{} held connections ({} connected): {} threads, RSS {} KiB (before: {} threads, {} KiB)",
        CONNECTIONS,
        connected,
        during.threads,
        during.vm_rss_kib,
        before.threads,
        before.vm_rss_kib
    );
    // And it still serves.
    let served = wait_for(Duration::from_secs(10), || {
        TaskClient::connect(&proxy_sock, "conns")
            .ok()?
            .identity()
            .ok()
    });
    assert!(
        served.is_some(),
        "the proxy serves after the connections are gone"
    );
}
