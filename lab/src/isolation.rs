//! Isolation probes side by side: what each runtime's workload sees of the machine, compared with
//! the host, and what each difference means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One compared property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationRow {
    pub key: String,
    pub label: String,
    pub host: String,
    /// Per profile: what its workload saw.
    pub values: BTreeMap<String, String>,
    /// Per profile: `true` when the workload sees less of the host than a host process does, `false`
    /// when it sees the same, absent when the property says nothing about isolation.
    pub hides_host: BTreeMap<String, bool>,
    /// What a difference from the host means.
    pub meaning: String,
}

type Extract = fn(&Value) -> String;
type Judge = fn(&Value, &Value) -> Option<bool>;

struct RowDef {
    key: &'static str,
    label: &'static str,
    extract: Extract,
    judge: Judge,
    meaning: &'static str,
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "n/a".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fewer(host: &Value, other: &Value) -> Option<bool> {
    match (num(host), num(other)) {
        (Some(h), Some(o)) => Some(o < h),
        (Some(_), None) => Some(true),
        _ => None,
    }
}

fn ns_shared(host: &Value, probe: &Value) -> (usize, usize, Vec<String>) {
    let (Some(host), Some(probe)) = (
        host["namespaces"].as_object(),
        probe["namespaces"].as_object(),
    ) else {
        return (0, 0, vec![]);
    };
    let shared: Vec<String> = probe
        .iter()
        .filter(|(k, v)| host.get(*k) == Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    (shared.len(), probe.len(), shared)
}

fn dmesg_text(p: &Value) -> String {
    let d = &p["dmesg"];
    if d["readable"].as_bool() == Some(true) {
        let first = d["first_lines"][0].as_str().unwrap_or("").trim();
        format!(
            "readable, {} lines; first: {}",
            d["lines"],
            truncate(first, 70)
        )
    } else {
        format!(
            "not readable ({})",
            d["error"].as_str().unwrap_or("unknown")
        )
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

fn seccomp_text(p: &Value) -> String {
    match p["seccomp"]["mode"].as_u64() {
        Some(0) => "disabled".into(),
        Some(1) => "strict".into(),
        Some(2) => "filter".into(),
        _ => "n/a".into(),
    }
}

const ROWS: &[RowDef] = &[
    RowDef {
        key: "kernel_release",
        label: "Kernel release (uname -r)",
        extract: |p| s(&p["kernel"]["release"]),
        judge: |h, p| Some(h["kernel"]["release"] != p["kernel"]["release"]),
        meaning: "A different release means the workload's system calls are served by another kernel \
                  (gVisor's user-space Sentry, or a VM's guest kernel), so a host kernel bug is not \
                  directly reachable. The host's release means the workload shares the host kernel.",
    },
    RowDef {
        key: "cpu_model",
        label: "CPU model",
        extract: |p| s(&p["cpu_model"]),
        judge: |_, _| None,
        meaning: "The same model means the hardware is not masked; CPU side channels are shared with \
                  the host under every runtime that does not virtualise the CPU.",
    },
    RowDef {
        key: "dmesg",
        label: "Kernel log (dmesg)",
        extract: dmesg_text,
        judge: |h, p| {
            let readable = p["dmesg"]["readable"].as_bool() == Some(true);
            Some(!readable || h["dmesg"]["first_lines"][0] != p["dmesg"]["first_lines"][0])
        },
        meaning: "Reading the host's kernel log leaks hardware, driver and address details. Unreadable, \
                  or a log of its own (a sandbox kernel's boot lines), keeps the host's log private.",
    },
    RowDef {
        key: "proc_entries",
        label: "/proc entries",
        extract: |p| s(&p["proc"]["entries"]),
        judge: |h, p| fewer(&h["proc"]["entries"], &p["proc"]["entries"]),
        meaning: "Fewer entries mean less of the host's process table and kernel state is exposed \
                  through /proc.",
    },
    RowDef {
        key: "host_processes",
        label: "Processes visible",
        extract: |p| {
            format!(
                "{} (pid 1: {})",
                s(&p["proc"]["processes"]),
                s(&p["proc"]["pid1_comm"])
            )
        },
        judge: |h, p| fewer(&h["proc"]["processes"], &p["proc"]["processes"]),
        meaning: "Seeing only its own processes means a PID namespace (or sandbox) hides the host's; \
                  seeing the host's would allow signalling or inspecting them.",
    },
    RowDef {
        key: "network_interfaces",
        label: "Network interfaces",
        extract: |p| match p["network_interfaces"].as_array() {
            Some(list) => list.iter().map(s).collect::<Vec<_>>().join(", "),
            None => "n/a".into(),
        },
        judge: |h, p| Some(h["network_interfaces"] != p["network_interfaces"]),
        meaning: "Only loopback (or nothing) means no path to the host's networks; host interfaces \
                  would mean the host network namespace is shared.",
    },
    RowDef {
        key: "kernel_modules",
        label: "Kernel modules listed",
        extract: |p| match p["modules"].as_u64() {
            Some(n) => n.to_string(),
            None => "none (no /proc/modules)".into(),
        },
        // A host without /proc/modules (modules built in) gives nothing to compare.
        judge: |h, p| (!h["modules"].is_null()).then(|| h["modules"] != p["modules"]),
        meaning: "The host's module list tells an attacker which drivers (attack surface) are loaded; \
                  a sandbox kernel lists none of the host's.",
    },
    RowDef {
        key: "namespaces",
        label: "Namespaces shared with host",
        extract: |_| String::new(),
        judge: |_, _| None,
        meaning: "Each namespace shared with the host is a kind of resource (PIDs, mounts, network, \
                  IPC, hostname, cgroups, user ids, time) the workload sees exactly as the host does.",
    },
    RowDef {
        key: "capabilities",
        label: "Effective capabilities",
        extract: |p| {
            format!(
                "{} ({})",
                s(&p["capabilities"]["effective_count"]),
                s(&p["capabilities"]["effective_hex"])
            )
        },
        judge: |h, p| {
            fewer(
                &h["capabilities"]["effective_count"],
                &p["capabilities"]["effective_count"],
            )
        },
        meaning: "Fewer capabilities mean fewer privileged kernel operations; under gVisor they are \
                  checked by the Sentry rather than the host kernel.",
    },
    RowDef {
        key: "seccomp",
        label: "Seccomp mode",
        extract: seccomp_text,
        judge: |h, p| Some(h["seccomp"]["mode"] != p["seccomp"]["mode"] && p["seccomp"]["mode"].as_u64() == Some(2)),
        meaning: "A filter narrows the system calls that reach the kernel. The lab's spec, like ctr's \
                  default, sets no profile (Kubernetes' RuntimeDefault would); gVisor filters its own \
                  Sentry regardless.",
    },
    RowDef {
        key: "no_new_privs",
        label: "no_new_privs",
        extract: |p| s(&p["seccomp"]["no_new_privs"]),
        judge: |h, p| {
            let probe = &p["seccomp"]["no_new_privs"];
            (!probe.is_null()).then(|| h["seccomp"]["no_new_privs"] != *probe)
        },
        meaning: "Set means setuid binaries cannot raise privileges inside the container.",
    },
    RowDef {
        key: "cgroup",
        label: "Cgroup view",
        extract: |p| match p["cgroup"].as_array() {
            Some(lines) if lines.is_empty() => "(empty)".into(),
            Some(lines) => truncate(
                &lines.iter().map(s).collect::<Vec<_>>().join(" | "),
                90,
            ),
            None => "n/a".into(),
        },
        judge: |h, p| Some(h["cgroup"] != p["cgroup"]),
        meaning: "A cgroup path of its own (or a cgroup namespace's `/`) means resource limits apply \
                  and the host's hierarchy is not revealed.",
    },
    RowDef {
        key: "sys",
        label: "/sys entries (net devices, block devices)",
        extract: |p| {
            format!(
                "{} ({} net, {} block)",
                s(&p["sys"]["entries"]),
                s(&p["sys"]["class_net"]),
                s(&p["sys"]["block_devices"])
            )
        },
        judge: |h, p| Some(h["sys"] != p["sys"]),
        meaning: "/sys exposes host devices and firmware; a smaller or synthetic view hides them.",
    },
    RowDef {
        key: "mounts",
        label: "Mounts",
        extract: |p| s(&p["mounts"]),
        judge: |h, p| fewer(&h["mounts"], &p["mounts"]),
        meaning: "Fewer mounts mean a private mount namespace; the host's mount table shows its \
                  storage layout.",
    },
    RowDef {
        key: "cpus",
        label: "CPUs (allowed / listed)",
        extract: |p| format!("{} / {}", s(&p["cpus"]["allowed"]), s(&p["cpus"]["cpuinfo_processors"])),
        judge: |_, _| None,
        meaning: "What the workload can size its thread pools by; not an isolation boundary.",
    },
    RowDef {
        key: "memory",
        label: "Memory seen (MemTotal)",
        extract: |p| match p["memory_total_kib"].as_u64() {
            Some(kib) => format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
            None => "n/a".into(),
        },
        judge: |_, _| None,
        meaning: "A different total means the runtime presents its own memory view (sandbox or VM); \
                  the host's total means limits are enforced only by cgroups.",
    },
];

/// Compares each profile's probe with the host's.
pub fn compare(host: &Value, probes: &BTreeMap<String, Value>) -> Vec<IsolationRow> {
    ROWS.iter()
        .map(|def| {
            let mut row = IsolationRow {
                key: def.key.into(),
                label: def.label.into(),
                host: (def.extract)(host),
                values: BTreeMap::new(),
                hides_host: BTreeMap::new(),
                meaning: def.meaning.split_whitespace().collect::<Vec<_>>().join(" "),
            };
            if def.key == "namespaces" {
                row.host = format!(
                    "{} (all)",
                    host["namespaces"].as_object().map(|m| m.len()).unwrap_or(0)
                );
            }
            for (name, probe) in probes {
                let value = if def.key == "namespaces" {
                    let (shared, total, names) = ns_shared(host, probe);
                    let judged = total > 0 && shared < total;
                    row.hides_host.insert(name.clone(), judged);
                    format!("{shared} of {total} ({})", names.join(", "))
                } else {
                    if let Some(hides) = (def.judge)(host, probe) {
                        row.hides_host.insert(name.clone(), hides);
                    }
                    (def.extract)(probe)
                };
                row.values.insert(name.clone(), value);
            }
            row
        })
        .collect()
}

/// Per profile: how many compared properties hide the host (higher is more isolated).
pub fn isolation_scores(rows: &[IsolationRow]) -> BTreeMap<String, usize> {
    let mut scores = BTreeMap::new();
    for row in rows {
        for (name, hides) in &row.hides_host {
            *scores.entry(name.clone()).or_insert(0) += usize::from(*hides);
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(release: &str, processes: u64, net_ns: &str) -> Value {
        json!({
            "kernel": {"release": release},
            "proc": {"entries": processes + 50, "processes": processes, "pid1_comm": "x"},
            "dmesg": {"readable": false, "error": "EPERM"},
            "namespaces": {"net": net_ns, "pid": format!("pid:[{processes}]")},
            "modules": 100,
        })
    }

    #[test]
    fn compares_with_host_and_scores() {
        let host = probe("6.1", 200, "net:[1]");
        let mut probes = BTreeMap::new();
        probes.insert("runc".to_string(), probe("6.1", 1, "net:[2]"));
        probes.insert("runsc".to_string(), {
            let mut p = probe("4.4.0", 1, "net:[3]");
            p["modules"] = Value::Null;
            p
        });
        let rows = compare(&host, &probes);
        let kernel = rows.iter().find(|r| r.key == "kernel_release").unwrap();
        assert_eq!(kernel.host, "6.1");
        assert!(!kernel.hides_host["runc"]);
        assert!(kernel.hides_host["runsc"]);
        let ns = rows.iter().find(|r| r.key == "namespaces").unwrap();
        assert_eq!(ns.values["runc"], "0 of 2 ()");
        let scores = isolation_scores(&rows);
        assert!(scores["runsc"] > scores["runc"]);
    }
}
