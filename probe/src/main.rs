//! `shimtrace-probe`: prints one JSON object describing what this process sees of its machine.
//!
//! It runs as a container's workload (statically linked, so any rootfs will do) and on the host for
//! comparison. The first thing it does is read CLOCK_REALTIME, so the lab can tell how long after the
//! client's request the workload's first instruction ran. Nothing goes to stderr; an unreadable
//! source is reported as `null` or with its error, never a crash.

use std::fs;

use serde_json::{json, Map, Value};

fn realtime_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let first_timestamp = realtime_nanos();
    let mut report = Map::new();
    report.insert("first_timestamp_unix_nanos".into(), first_timestamp.into());
    report.insert("pid".into(), std::process::id().into());
    report.insert("kernel".into(), uname());
    report.insert("cpu_model".into(), cpu_model().into());
    report.insert("dmesg".into(), dmesg());
    report.insert("proc".into(), proc_view());
    report.insert("network_interfaces".into(), interfaces().into());
    report.insert(
        "modules".into(),
        read_lines("/proc/modules").map(|l| l.len()).into(),
    );
    report.insert("namespaces".into(), namespaces());
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let cap_eff = field("CapEff");
    let cap_count = cap_eff
        .as_deref()
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map(u64::count_ones);
    report.insert(
        "capabilities".into(),
        json!({"effective_hex": cap_eff, "effective_count": cap_count, "bounding_hex": field("CapBnd")}),
    );
    report.insert(
        "seccomp".into(),
        json!({"mode": field("Seccomp").and_then(|v| v.parse::<u32>().ok()), "no_new_privs": field("NoNewPrivs").map(|v| v == "1")}),
    );
    report.insert("cgroup".into(), read_lines("/proc/self/cgroup").into());
    report.insert("sys".into(), sys_view());
    report.insert(
        "mounts".into(),
        read_lines("/proc/self/mounts").map(|l| l.len()).into(),
    );
    report.insert("cpus".into(), cpus());
    report.insert("memory_total_kib".into(), mem_total_kib().into());
    report.insert(
        "hostname".into(),
        fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .into(),
    );
    report.insert(
        "probe_duration_nanos".into(),
        (realtime_nanos() - first_timestamp).into(),
    );
    let mut line = Value::Object(report).to_string();
    line.push('\n');
    // A closed stdout leaves nobody to tell; exit quietly rather than panic onto stderr.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
}

fn read_lines(path: &str) -> Option<Vec<String>> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.lines().map(str::to_string).collect())
}

fn c_field(bytes: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn uname() -> Value {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Value::Null;
    }
    json!({
        "sysname": c_field(&uts.sysname),
        "release": c_field(&uts.release),
        "version": c_field(&uts.version),
        "machine": c_field(&uts.machine),
    })
}

fn cpu_model() -> Option<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
const SYSLOG_ACTION_SIZE_BUFFER: libc::c_int = 10;

fn dmesg() -> Value {
    // SAFETY: klogctl with a null buffer only returns the ring buffer size.
    let size = unsafe { libc::klogctl(SYSLOG_ACTION_SIZE_BUFFER, std::ptr::null_mut(), 0) };
    let size = if size > 0 { size as usize } else { 1 << 20 };
    let mut buf = vec![0u8; size];
    // SAFETY: buf is `size` bytes long and klogctl writes at most that many.
    let n = unsafe {
        libc::klogctl(
            SYSLOG_ACTION_READ_ALL,
            buf.as_mut_ptr() as *mut libc::c_char,
            size as libc::c_int,
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return json!({"readable": false, "error": err.to_string(), "lines": 0, "first_lines": []});
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // Lines look like `<6>[    0.000000] message`; the last timestamp bounds the boot time of a VM guest.
    let last_timestamp = lines.iter().rev().find_map(|l| {
        let start = l.find('[')?;
        let end = l[start..].find(']')? + start;
        l[start + 1..end].trim().parse::<f64>().ok()
    });
    json!({
        "readable": true,
        "lines": lines.len(),
        "first_lines": lines.iter().take(8).collect::<Vec<_>>(),
        "last_timestamp_seconds": last_timestamp,
    })
}

fn proc_view() -> Value {
    let Ok(entries) = fs::read_dir("/proc") else {
        return json!({"entries": null, "processes": null});
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let processes = names
        .iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .count();
    json!({
        "entries": names.len(),
        "processes": processes,
        "pid1_comm": fs::read_to_string("/proc/1/comm").ok().map(|s| s.trim().to_string()),
    })
}

fn interfaces() -> Option<Vec<String>> {
    if let Some(lines) = read_lines("/proc/net/dev") {
        let names: Vec<String> = lines
            .iter()
            .skip(2)
            .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
            .collect();
        return Some(names);
    }
    let entries = fs::read_dir("/sys/class/net").ok()?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Some(names)
}

fn namespaces() -> Value {
    let mut map = Map::new();
    if let Ok(entries) = fs::read_dir("/proc/self/ns") {
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let target = fs::read_link(entry.path())
                .ok()
                .map(|t| t.to_string_lossy().into_owned());
            map.insert(
                entry.file_name().to_string_lossy().into_owned(),
                target.into(),
            );
        }
    }
    Value::Object(map)
}

fn sys_view() -> Value {
    let count = |path: &str| fs::read_dir(path).ok().map(|d| d.count());
    json!({
        "entries": count("/sys"),
        "class_net": count("/sys/class/net"),
        "block_devices": count("/sys/block"),
        "cgroup_fs": fs::metadata("/sys/fs/cgroup").is_ok(),
        "firmware": fs::metadata("/sys/firmware").is_ok(),
    })
}

fn cpus() -> Value {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let allowed =
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0
        {
            Some(unsafe { libc::CPU_COUNT(&set) } as u32)
        } else {
            None
        };
    let online = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count());
    json!({"allowed": allowed, "cpuinfo_processors": online})
}

fn mem_total_kib() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    meminfo.lines().find_map(|l| {
        l.strip_prefix("MemTotal:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}
