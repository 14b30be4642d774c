//! Zero-copy reading of the few protobuf fields the proxy needs before it forwards a request.
//!
//! Decoding a whole ttrpc `Request` allocates every string and copies the payload; on the
//! forwarding path only the service, method, two metadata values and the container id are needed,
//! so they are borrowed from the frame instead. Everything else is decoded later, off that path.

use protobuf::rt::WireType;
use protobuf::CodedInputStream;

/// ttrpc `Request` field numbers (ttrpc's `request.proto`).
const REQUEST_SERVICE: u32 = 1;
const REQUEST_METHOD: u32 = 2;
const REQUEST_PAYLOAD: u32 = 3;
const REQUEST_METADATA: u32 = 5;
/// `KeyValue` field numbers.
const KEY: u32 = 1;
const VALUE: u32 = 2;

/// The parts of a ttrpc `Request` read on the forwarding path, borrowed from the frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub service: &'a str,
    pub method: &'a str,
    pub payload: &'a [u8],
    /// The value of each metadata key asked for (the last one given), in the order of the `keys`
    /// passed to [`RequestView::parse`].
    pub metadata: [Option<&'a str>; 2],
}

impl<'a> RequestView<'a> {
    /// Reads `bytes` as a ttrpc `Request`, keeping the value of each of `keys` found in its
    /// metadata. `None` when it is not valid protobuf or a string is not UTF-8 (what a full decode
    /// would reject too).
    pub fn parse(bytes: &'a [u8], keys: [&str; 2]) -> Option<RequestView<'a>> {
        let mut view = RequestView::default();
        let mut valid = true;
        for_each_length_delimited(bytes, |field, value| match field {
            REQUEST_SERVICE => view.service = utf8(value, &mut valid),
            REQUEST_METHOD => view.method = utf8(value, &mut valid),
            REQUEST_PAYLOAD => view.payload = value,
            REQUEST_METADATA => {
                let key = string_field(value, KEY);
                for (slot, wanted) in view.metadata.iter_mut().zip(keys) {
                    if key == Some(wanted) {
                        *slot = string_field(value, VALUE).or(Some(""));
                    }
                }
            }
            _ => {}
        })?;
        valid.then_some(view)
    }
}

fn utf8<'a>(bytes: &'a [u8], valid: &mut bool) -> &'a str {
    std::str::from_utf8(bytes).unwrap_or_else(|_| {
        *valid = false;
        ""
    })
}

/// The string in field `number` of the message `bytes` (the last one, as protobuf merges); `None`
/// when absent, not UTF-8, or the message is malformed.
pub fn string_field(bytes: &[u8], number: u32) -> Option<&str> {
    std::str::from_utf8(bytes_field(bytes, number)?).ok()
}

/// The contents of length-delimited field `number` of the message `bytes` (a string, bytes or an
/// embedded message; the last one); `None` when absent or the message is malformed.
pub fn bytes_field(bytes: &[u8], number: u32) -> Option<&[u8]> {
    let mut found = None;
    for_each_length_delimited(bytes, |field, value| {
        if field == number {
            found = Some(value);
        }
    })?;
    found
}

/// Calls `f` with (field number, contents) of each length-delimited top-level field of `bytes`,
/// skipping the others; `None` when `bytes` is not well-formed protobuf.
fn for_each_length_delimited<'a>(bytes: &'a [u8], mut f: impl FnMut(u32, &'a [u8])) -> Option<()> {
    let mut input = CodedInputStream::from_bytes(bytes);
    while let Some(tag) = input.read_raw_tag_or_eof().ok()? {
        let field = tag >> 3;
        if field == 0 {
            return None;
        }
        match WireType::new(tag & 7)? {
            WireType::LengthDelimited => {
                let length = input.read_raw_varint32().ok()?;
                let at = usize::try_from(input.pos()).ok()?;
                input.skip_raw_bytes(length).ok()?;
                f(field, bytes.get(at..at + length as usize)?);
            }
            WireType::StartGroup => skip_group(&mut input)?,
            other => input.skip_field(other).ok()?,
        }
    }
    Some(())
}

/// Skips an unknown group up to its end tag, as a full decode does. `skip_field` would also accept
/// a group still open at the end of the message, which a full decode rejects: such a request would
/// be read here and its appended metadata swallowed by the group.
fn skip_group(input: &mut CodedInputStream) -> Option<()> {
    loop {
        let tag = input.read_raw_tag_or_eof().ok()??;
        if tag >> 3 == 0 {
            return None;
        }
        match WireType::new(tag & 7)? {
            WireType::EndGroup => return Some(()),
            other => input.skip_field(other).ok()?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    fn request(meta: &[(&str, &str)]) -> Vec<u8> {
        crate::tap::test_request(
            "containerd.task.v2.Task",
            "State",
            vec![0x0a, 0x02, b'i', b'd'],
            meta,
        )
    }

    #[test]
    fn reads_what_a_full_decode_reads() {
        let bytes = request(&[
            ("a", "1"),
            ("traceparent", "tp"),
            ("ns", "k8s.io"),
            ("ns", "x"),
        ]);
        let view = RequestView::parse(&bytes, ["ns", "traceparent"]).unwrap();
        assert_eq!(view.service, "containerd.task.v2.Task");
        assert_eq!(view.method, "State");
        assert_eq!(view.payload, [0x0a, 0x02, b'i', b'd']);
        assert_eq!(view.metadata, [Some("x"), Some("tp")]);
        assert_eq!(string_field(view.payload, 1), Some("id"));
        assert_eq!(string_field(view.payload, 2), None);
    }

    #[test]
    fn absent_metadata_and_empty_values() {
        let bytes = request(&[("ns", "")]);
        let view = RequestView::parse(&bytes, ["ns", "traceparent"]).unwrap();
        assert_eq!(view.metadata, [Some(""), None]);
    }

    #[test]
    fn malformed_input_is_refused_not_misread() {
        let bytes = request(&[]);
        for cut in 1..bytes.len() {
            // Every strict prefix ends inside a field, except those ending on a field boundary.
            let full = ttrpc::Request::parse_from_bytes(&bytes[..cut]).is_ok();
            let ours = RequestView::parse(&bytes[..cut], ["a", "b"]).is_some();
            assert_eq!(full, ours, "prefix of {cut} bytes");
        }
        assert!(RequestView::parse(&[0x0a, 0x02, 0xff, 0xfe], ["a", "b"]).is_none());
        assert!(RequestView::parse(&[0x00], ["a", "b"]).is_none());
        assert!(RequestView::parse(&[0x0a, 0x05, b'a'], ["a", "b"]).is_none());
    }

    #[test]
    fn a_group_left_open_is_refused_as_a_full_decode_refuses_it() {
        // A case of fuzz/fuzz_targets/wire.rs: an unknown group (field 13) that never ends must
        // not swallow the rest of the request, a traceparent the proxy appended included.
        let open_group = b"\x0a\x17co/ntainerd.task.v2.Tis\x6b\x12\x07C)nnect\x1a\x05\x0a\x03fz1";
        assert!(ttrpc::Request::parse_from_bytes(open_group).is_err());
        assert!(RequestView::parse(open_group, ["a", "b"]).is_none());
        // A closed one (end tag 0x6c) is skipped, as a full decode skips it.
        let closed = b"\x0a\x01s\x6b\x10\x01\x6c\x12\x01m";
        let full = ttrpc::Request::parse_from_bytes(closed).unwrap();
        let view = RequestView::parse(closed, ["a", "b"]).unwrap();
        assert_eq!((view.service, view.method), (&*full.service, &*full.method));
        assert_eq!((view.service, view.method), ("s", "m"));
    }

    #[test]
    fn last_value_of_a_repeated_string_field_wins() {
        let bytes = [0x0a, 0x01, b'a', 0x10, 0x07, 0x0a, 0x01, b'b'];
        assert_eq!(string_field(&bytes, 1), Some("b"));
    }
}
