//! The zero-copy request reader (`shim/src/wire.rs`) against ttrpc's own full decode, on
//! arbitrary request payloads: whatever ttrpc decodes, the reader must read the same service,
//! method, payload and metadata values from; a `traceparent` the proxy appends must be read back;
//! and nothing the proxy then does with the fields it read (task request decoding, the container
//! id, the `traceparent` parse, response decoding) may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use shimtrace_shim::tap::{
    decode_task_request, decode_task_response, with_metadata, NAMESPACE_METADATA,
    TRACEPARENT_METADATA,
};
use shimtrace_shim::wire::{string_field, RequestView};
use shimtrace_span::{Attributes, TraceContext};
use ttrpc::proto::{MessageHeader, MESSAGE_HEADER_LENGTH};

const KEYS: [&str; 2] = [NAMESPACE_METADATA, TRACEPARENT_METADATA];
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const METHODS: [&str; 8] = [
    "Create", "Start", "Delete", "Wait", "State", "Connect", "Kill", "Nope",
];

/// ttrpc's full decode of a request, held to the whole input as Go's decoder is: rust-protobuf's
/// `parse_from_bytes` lets a nested message (a metadata entry) claim more bytes than are left at
/// the end, which the reader rightly refuses.
fn decode_exact(data: &[u8]) -> Option<ttrpc::Request> {
    let mut input = protobuf::CodedInputStream::from_bytes(data);
    let outer = input.push_limit(data.len() as u64).ok()?;
    let mut request = ttrpc::Request::new();
    request.merge_from(&mut input).ok()?;
    input.pop_limit(outer);
    Some(request)
}

fuzz_target!(|data: &[u8]| {
    let view = RequestView::parse(data, KEYS);

    if let Some(full) = decode_exact(data) {
        let view = view.expect("the reader refused a request ttrpc decodes");
        assert_eq!(view.service, full.service);
        assert_eq!(view.method, full.method);
        assert_eq!(view.payload, &full.payload[..]);
        for (i, key) in KEYS.iter().enumerate() {
            let last = full
                .metadata
                .iter()
                .rev()
                .find(|kv| kv.key == *key)
                .map(|kv| kv.value.as_str());
            assert_eq!(view.metadata[i], last, "metadata {key}");
        }
    }

    let Some(view) = view else {
        return;
    };
    let _ = decode_task_request(view.method, view.payload);
    let _ = string_field(view.payload, 1);
    let _ = string_field(view.payload, 2);
    if let Some(tp) = view.metadata[1] {
        let _ = TraceContext::from_traceparent(tp);
    }
    let mut attributes = Attributes::new();
    for method in METHODS {
        decode_task_response(method, view.payload, &mut attributes);
    }

    // What the proxy forwards when it adds its traceparent: the same request, one more entry.
    let header = MessageHeader::new_request(3, data.len() as u32);
    if let Some(frame) = with_metadata(&header, data, TRACEPARENT_METADATA, TRACEPARENT) {
        let length = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(length, frame.len() - MESSAGE_HEADER_LENGTH, "header length");
        assert_eq!(
            frame[4..MESSAGE_HEADER_LENGTH],
            Vec::<u8>::from(header)[4..]
        );
        let again = RequestView::parse(&frame[MESSAGE_HEADER_LENGTH..], KEYS)
            .expect("a request with a traceparent appended no longer reads");
        assert_eq!(again.service, view.service);
        assert_eq!(again.method, view.method);
        assert_eq!(again.payload, view.payload);
        assert_eq!(again.metadata, [view.metadata[0], Some(TRACEPARENT)]);
        assert!(TraceContext::from_traceparent(TRACEPARENT).is_some());
    }
});
