//! containerd 2.3's `BootstrapParams` on a shim's stdin (`shim/src/bootstrap.rs`), on arbitrary
//! bytes: parameters are taken only for their own container with an events address, and the
//! rewritten parameters the inner shim receives differ from containerd's in that address alone
//! (unknown fields included). The `BootstrapResult` a shim answers with is the `start_reply`
//! target's.
//!
//! Input: one byte `n`, then a container id of `n % 32` bytes, then stdin.

#![no_main]

use containerd_shim_protos::bootstrap_api::BootstrapParams;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use shimtrace_shim::bootstrap::{events_params, with_events_address};

const EVENTS: &str = "/run/shimtrace/ev-0123456789abcdef.sock";

fuzz_target!(|input: &[u8]| {
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let n = usize::from(n % 32).min(rest.len());
    let (id, stdin) = rest.split_at(n);
    let id = String::from_utf8_lossy(id);

    let decoded = BootstrapParams::parse_from_bytes(stdin).ok();
    let mut ids = vec![None, Some(id.as_ref())];
    if let Some(p) = &decoded {
        ids.push(Some(p.instance_id.as_str()));
    }
    for id in ids {
        let Some(params) = events_params(stdin, id) else {
            continue;
        };
        assert_eq!(Some(params.instance_id.as_str()), id);
        assert!(!params.containerd_ttrpc_address.is_empty());
        let out = with_events_address(&params, EVENTS).expect("decoded parameters encode again");
        let back = events_params(&out, id).expect("rewritten parameters are taken again");
        let mut expected = params.clone();
        expected.containerd_ttrpc_address = EVENTS.to_string();
        assert_eq!(back, expected, "only the events address may change");
    }
});
