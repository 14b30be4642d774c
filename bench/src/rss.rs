//! A process's memory as /proc/<pid>/status tells it.

use serde::Serialize;

/// Resident memory of one process at one moment (KiB), and its thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub vm_rss_kib: u64,
    /// Peak resident set so far.
    pub vm_hwm_kib: u64,
    /// Anonymous (heap, stacks) and file-backed (the mapped binary and libraries) parts of VmRSS.
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub threads: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`; `None` if the process is gone.
    pub fn of(pid: u32) -> Option<Memory> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| Memory::parse(&s))
    }

    /// Parses the text of a `/proc/<pid>/status` file; `None` without a VmRSS line (kernel thread,
    /// zombie).
    pub fn parse(status: &str) -> Option<Memory> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Memory {
            vm_rss_kib: field("VmRSS")?,
            vm_hwm_kib: field("VmHWM").unwrap_or(0),
            rss_anon_kib: field("RssAnon").unwrap_or(0),
            rss_file_kib: field("RssFile").unwrap_or(0),
            threads: field("Threads").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_status_fields() {
        let status = "Name:\tcontainerd-shim\nVmHWM:\t    2400 kB\nVmRSS:\t    2100 kB\n\
                      RssAnon:\t     700 kB\nRssFile:\t    1400 kB\nThreads:\t4\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                vm_rss_kib: 2100,
                vm_hwm_kib: 2400,
                rss_anon_kib: 700,
                rss_file_kib: 1400,
                threads: 4
            })
        );
        assert_eq!(Memory::parse("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = Memory::of(std::process::id()).expect("own status");
        assert!(me.vm_rss_kib > 0 && me.threads >= 1);
    }
}
