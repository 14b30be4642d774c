//! containerd 2.3's `BootstrapParams`, the protobuf a shim's `start` reads on stdin: which of them
//! the wrapper takes as naming the container's events endpoint, and the same bytes with that
//! endpoint swapped for the wrapper's own socket.

use containerd_shim_protos::bootstrap_api::BootstrapParams;
use protobuf::Message;

/// The `BootstrapParams` on `stdin` when they are meant for container `id` and name containerd's
/// ttrpc (events) address; `None` otherwise (containerd before 2.3 sends nothing on stdin, and
/// bytes that merely decode as protobuf are not taken for parameters).
pub fn events_params(stdin: &[u8], id: Option<&str>) -> Option<BootstrapParams> {
    BootstrapParams::parse_from_bytes(stdin)
        .ok()
        .filter(|p| Some(p.instance_id.as_str()) == id && !p.containerd_ttrpc_address.is_empty())
}

/// `params` encoded again with the events address replaced by `address`; every other field,
/// unknown ones included, is kept. `None` if they cannot be encoded.
pub fn with_events_address(params: &BootstrapParams, address: &str) -> Option<Vec<u8>> {
    let mut params = params.clone();
    params.containerd_ttrpc_address = address.to_string();
    params.write_to_bytes().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(id: &str, ttrpc: &str) -> Vec<u8> {
        let mut p = BootstrapParams::new();
        p.instance_id = id.into();
        p.namespace = "k8s.io".into();
        p.containerd_ttrpc_address = ttrpc.into();
        p.write_to_bytes().unwrap()
    }

    #[test]
    fn only_parameters_for_this_container_with_an_events_address_are_taken() {
        let stdin = params("c1", "/run/containerd/containerd.sock.ttrpc");
        assert!(events_params(&stdin, Some("c1")).is_some());
        assert!(events_params(&stdin, Some("c2")).is_none());
        assert!(events_params(&stdin, None).is_none());
        assert!(events_params(&params("c1", ""), Some("c1")).is_none());
        assert!(events_params(b"", Some("")).is_none());
        assert!(events_params(b"\xff\xff", Some("c1")).is_none());
    }

    #[test]
    fn rewriting_swaps_the_address_and_keeps_unknown_fields() {
        let mut stdin = params("c1", "/old");
        // Field 99, varint 7: a field a newer containerd might add.
        stdin.extend_from_slice(&[0x98, 0x06, 0x07]);
        let p = events_params(&stdin, Some("c1")).unwrap();
        let out = with_events_address(&p, "/new").unwrap();
        let back = events_params(&out, Some("c1")).unwrap();
        assert_eq!(back.containerd_ttrpc_address, "/new");
        assert_eq!(back.namespace, "k8s.io");
        assert_eq!(
            back.special_fields.unknown_fields(),
            p.special_fields.unknown_fields()
        );
    }
}
