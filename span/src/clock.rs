//! Span timestamps: one wall-clock anchor per process plus monotonic deltas.
//!
//! Reading the wall clock once and adding CLOCK_MONOTONIC deltas keeps every duration inside a
//! process immune to NTP steps while still giving nanosecond unix timestamps.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    unix_nanos: u64,
    instant: Instant,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| Anchor {
        unix_nanos: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        instant: Instant::now(),
    })
}

/// Fixes the anchor now; call first thing in `main` so process start is the earliest timestamp.
pub fn init() {
    anchor();
}

/// This process's pid, read once (`getpid` is a syscall, and spans record it on every call).
pub fn pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Nanoseconds since the unix epoch, monotonic within this process.
pub fn now_unix_nanos() -> u64 {
    let a = anchor();
    a.unix_nanos + a.instant.elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_never_go_backwards_and_are_near_wall_clock() {
        let a = now_unix_nanos();
        let b = now_unix_nanos();
        assert!(b >= a);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(wall.abs_diff(b) < 5_000_000_000);
    }
}
