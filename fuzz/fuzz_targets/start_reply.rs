//! The parser of an inner shim's `start` reply (`shim/src/reply.rs`): a protobuf
//! `BootstrapResult` (containerd 2.3), JSON (1.7+) or a plain address (1.6), on arbitrary bytes.
//! A reply it accepts must come back, with the proxy's address swapped in, as a reply of the same
//! format and version naming that address; and nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shimtrace_shim::reply::{socket_path_of, ReplyFormat, StartReply};

const PROXY: &str = "unix:///run/containerd/s/0123456789abcdef0123456789abcdef";

fuzz_target!(|raw: &[u8]| {
    let Ok(reply) = StartReply::parse(raw) else {
        return;
    };
    let _ = reply.protocol_label();
    let _ = reply.socket_path();
    let _ = socket_path_of(&reply.address);
    assert_eq!(reply.raw(), raw);

    let swapped = reply.with_address(PROXY);
    let again = StartReply::parse(&swapped).unwrap_or_else(|e| {
        panic!(
            "the reply with the proxy's address does not parse: {e}; {:?} became {:?}",
            String::from_utf8_lossy(raw),
            String::from_utf8_lossy(&swapped)
        )
    });
    assert_eq!(again.address, PROXY);
    assert_eq!(again.format, reply.format);
    assert_eq!(again.version, reply.version);
    if reply.format != ReplyFormat::Plain {
        assert_eq!(again.protocol, reply.protocol);
    }
});
