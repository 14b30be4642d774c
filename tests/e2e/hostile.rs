//! Hostile local input, as another local user or a damaged machine presents it: shared or linked
//! spool and run directories, a broken config, a damaged spool under the collector, a store the
//! querying user cannot write, escape sequences in span attributes, absurd flags.

use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shimtrace_testkit::traced::{
    wait_for, wrapper_binary, wrapper_config_for, write_executable, Traced, TRACED_RUNC,
};

/// The uid/gid of `nobody`, the unprivileged local user of these tests.
const NOBODY: u32 = 65534;

fn spool_line(trace: &str, span: &str, name: &str, start: u64, end: u64) -> String {
    crate::cli_traces::spool_line(trace, span, None, name, start, end)
}

/// A spool directory holding one writer's file with two spans of container `box`.
fn small_spool(dir: &Path) {
    let t = "0af7651916cd43dd8448eb211c80319c";
    let base = 1_700_000_000_000_000_000u64;
    let lines = [
        spool_line(t, "00000000000000a1", "shim.start", base, base + 20_000_000),
        spool_line(
            t,
            "00000000000000a2",
            "containerd.task.v3.Task/Create",
            base + 30_000_000,
            base + 80_000_000,
        ),
    ];
    std::fs::write(dir.join("proxy-42-1-0.jsonl"), lines.join("\n") + "\n").unwrap();
}

/// Runs `shimtrace args`, killing it (by pid) if it has not finished within `limit`.
fn shimtrace_within(limit: Duration, args: &[&str], uid: Option<u32>) -> Output {
    let mut command = shimtrace_testkit::cli::shimtrace();
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let child = command.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = shimtrace_testkit::traced::sigkill(pid);
            panic!("shimtrace {args:?} still running after {limit:?}");
        }
    }
}

fn shimtrace(args: &[&str]) -> Output {
    shimtrace_within(Duration::from_secs(60), args, None)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A spool directory with FIFOs, links and directories named like spool files among a good one:
/// the collector reads the good file and warns about each of the others, without hanging,
/// following a link or reading without bound.
#[test]
fn collector_damaged_spool_is_read_around() {
    let dir = tempfile::tempdir().unwrap();
    small_spool(dir.path());
    nix::unistd::mkfifo(
        &dir.path().join("proxy-43-2-0.jsonl"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("proxy-44-3-0.jsonl")).unwrap();
    symlink("/dev/zero", dir.path().join("proxy-45-4-0.jsonl")).unwrap();
    let spool = dir.path().to_str().unwrap();

    let out = shimtrace_within(
        Duration::from_secs(30),
        &["traces", "--spool", spool, "--json"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let spans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(spans.as_array().unwrap().len(), 2);
    let warned = stderr(&out);
    for (name, why) in [
        ("proxy-43-2-0.jsonl", "FIFO"),
        ("proxy-44-3-0.jsonl", "directory"),
        ("proxy-45-4-0.jsonl", "symbolic link"),
    ] {
        let line = warned
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no warning about {name}: {warned}"));
        assert!(line.contains(why), "{line}");
        assert!(!line.contains("malformed spool line"), "{line}");
    }

    let out = shimtrace_within(
        Duration::from_secs(30),
        &["report", "--spool", spool, "--format", "json"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("--spool DIR"), "{}", stderr(&out));

    let db = tempfile::tempdir().unwrap();
    let db = db.path().join("shimtrace.db");
    let out = shimtrace_within(
        Duration::from_secs(30),
        &[
            "ingest",
            "--spool",
            spool,
            "--db",
            db.to_str().unwrap(),
            "--no-compact",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stored 2 new"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let warned = stderr(&out);
    assert!(!warned.contains("malformed spool line"), "{warned}");
    assert!(!warned.contains(":0:"), "{warned}");
    // A link is never followed, not even to ingest what it points at.
    assert!(warned.contains("proxy-45-4-0.jsonl"), "{warned}");
}

#[test]
fn collector_trace_with_a_huge_width_is_clamped() {
    let dir = tempfile::tempdir().unwrap();
    small_spool(dir.path());
    let spool = dir.path().to_str().unwrap();
    for width in ["65536", "1000000000"] {
        let out = shimtrace(&["trace", "box", "--spool", spool, "--width", width]);
        assert!(out.status.success(), "--width {width}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let longest = text.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(longest < 2_000, "--width {width}: a {longest}-column line");
    }
}

#[test]
fn collector_escape_sequences_in_spans_are_not_printed_raw() {
    let dir = tempfile::tempdir().unwrap();
    let t = "0af7651916cd43dd8448eb211c80319c";
    let mut line: serde_json::Value =
        serde_json::from_str(&spool_line(t, "00000000000000a1", "x", 1, 2)).unwrap();
    // Clear the screen, retitle the terminal, and a carriage return that hides what came before.
    line["name"] = "shim.start\u{1b}[2J\u{1b}]0;owned\u{7}".into();
    line["attributes"]["containerd.container.id"] = "box\r\u{1b}[31mfake".into();
    line["attributes"]["shimtrace.outcome"] = "\u{9b}31m".into();
    std::fs::write(dir.path().join("proxy-42-1-0.jsonl"), format!("{line}\n")).unwrap();
    let spool = dir.path().to_str().unwrap();
    for (args, shown) in [
        (vec!["traces", "--spool", spool], "shim.start"),
        (
            vec!["traces", "--spool", spool, "--summary"],
            "box\\r\\u{1b}[31mfake",
        ),
        (
            vec!["trace", "box\r\u{1b}[31mfake", "--spool", spool],
            "shim.start",
        ),
    ] {
        let out = shimtrace(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?} printed control characters: {text:?}"
        );
        assert!(text.contains(shown), "{text}");
    }
}

/// A store the querying user can read but not write (a root-owned store, queried by an operator
/// without root) answers queries and reports.
#[test]
fn collector_read_only_store_is_queried() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    small_spool(&spool);
    let db = dir.path().join("shimtrace.db");
    let (s, d) = (spool.to_str().unwrap(), db.to_str().unwrap());
    let out = shimtrace(&["ingest", "--spool", s, "--db", d, "--no-compact"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (path, mode) in [(dir.path(), 0o755), (db.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // The unprivileged half runs the queries as nobody, which needs root (as the suite runs).
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs queries as nobody: run it as root (scripts/test does)"
    );
    let before = std::fs::read(&db).unwrap();
    for args in [
        vec!["traces", "--db", d, "--json"],
        vec!["trace", "box", "--db", d],
        vec!["report", "--db", d, "--format", "json"],
    ] {
        let out = shimtrace_within(Duration::from_secs(30), &args, Some(NOBODY));
        assert!(out.status.success(), "{args:?} as nobody: {}", stderr(&out));
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "a query changed the store"
    );
}

/// A directory with an executable `name` printing `says`.
fn fake_shim(dir: &Path, name: &str, says: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    write_executable(&path, &format!("#!/bin/sh\necho {says} \"$@\"\n"));
    path
}

/// A config that does not parse (or has a key shimtrace does not know) stops the wrapper with an
/// error naming the file and line: it never runs an inner shim other than the configured one.
#[test]
fn fs_config_error_fails_instead_of_running_another_shim() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    symlink(wrapper_binary(), bin.join("containerd-shim-traced-runc-v2")).unwrap();
    fake_shim(&bin, "containerd-shim-runc-v2", "unconfigured-shim");
    let configured = fake_shim(dir.path(), "configured-shim", "configured-shim");
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let config = dir.path().join("config.toml");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let cases = [
        (
            format!(
                "{}colour = \"blue\"\n",
                wrapper_config_for(&TRACED_RUNC, &configured)
            ),
            "line 3",
        ),
        (
            format!("{}[[oops\n", wrapper_config_for(&TRACED_RUNC, &configured)),
            "line 3",
        ),
    ];
    for (text, line) in cases {
        std::fs::write(&config, &text).unwrap();
        for args in [
            vec!["-v"],
            vec![
                "-namespace",
                "default",
                "-id",
                "c1",
                "-address",
                "/nonexistent/containerd.sock",
                "start",
            ],
            vec!["-namespace", "default", "-id", "c1", "delete"],
        ] {
            let out = Command::new(bin.join("containerd-shim-traced-runc-v2"))
                .args(&args)
                .current_dir(&bundle)
                .env("PATH", &path)
                .env("SHIMTRACE_CONFIG", &config)
                .env("SHIMTRACE_SPOOL_DIR", dir.path().join("spool"))
                .env("SHIMTRACE_RUN_DIR", dir.path().join("run"))
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{args:?} with {text:?}: {all}");
            assert!(!all.contains("unconfigured-shim"), "{args:?}: {all}");
            assert!(
                all.contains(config.to_str().unwrap()) && all.contains(line),
                "{args:?}: {all}"
            );
        }
    }
}

/// Spool and run directories any local user can write, with a link planted where the wrapper
/// keeps its usage hint: the wrapper refuses both directories (no spans, a WARN in containerd's
/// log naming them), containers still run, and the link's target is untouched.
#[test]
fn fs_shared_spool_and_run_dirs_fail_open() {
    let traced = Traced::start("1.6.20").expect("traced containerd");
    for dir in [&traced.spool, &traced.run_dir] {
        std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let victim = traced.containerd.dir().join("victim");
    std::fs::write(&victim, "root's secret, 0600\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&victim, traced.spool.join(".usage")).unwrap();
    // As another user would plant it.
    std::os::unix::fs::lchown(traced.spool.join(".usage"), Some(NOBODY), Some(NOBODY)).unwrap();

    let started = Instant::now();
    traced.run_echo("shared", "still runs");
    assert!(started.elapsed() < Duration::from_secs(60));

    let warned = wait_for(Duration::from_secs(10), || {
        let log = traced.containerd.log();
        (log.contains(traced.spool.to_str().unwrap()) && log.contains("writable by")).then_some(())
    });
    assert!(
        warned.is_some(),
        "no warning about the spool dir in containerd's log:\n{}",
        traced.containerd.log()
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root's secret, 0600\n"
    );
    let spool_files: Vec<_> = std::fs::read_dir(&traced.spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".usage")
        .collect();
    assert!(spool_files.is_empty(), "{spool_files:?}");
    let run_files: Vec<_> = std::fs::read_dir(&traced.run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(run_files.is_empty(), "{run_files:?}");
}
