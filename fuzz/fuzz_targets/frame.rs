//! The ttrpc frame forwarder (`shim/src/frame.rs`) on arbitrary byte streams read in arbitrary
//! pieces: it must forward exactly the complete frames (or, past ttrpc's limit, everything from an
//! oversized header on), replace exactly the frames its rewrite hook replaces, and tap every
//! complete frame once, in order, with a header that encodes back to the bytes it was read from.
//!
//! Input: one byte `k`, then `k % 8` read sizes (a byte each; 0 reads as much as fits), one byte
//! choosing which requests get a `traceparent` added, then the stream.

#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use shimtrace_shim::frame::pump_rewriting;
use shimtrace_shim::tap::with_metadata;
use ttrpc::proto::{MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX};

/// A reader handing out its data in the given piece sizes, in turn.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let size = match self.sizes.get(self.turn % self.sizes.len().max(1)) {
            Some(0) | None => usize::MAX,
            Some(&n) => usize::from(n),
        };
        self.turn += 1;
        let n = size.min(self.data.len()).min(out.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The rewrite under test: requests whose stream id matches `selector` get a `traceparent`, as the
/// proxy adds one.
fn rewrite(selector: u8, header: &MessageHeader, payload: &[u8]) -> Option<Vec<u8>> {
    let chosen = header.type_ == 1 && (header.stream_id as u8 & selector) != 0;
    chosen
        .then(|| with_metadata(header, payload, "traceparent", TRACEPARENT))
        .flatten()
}

fuzz_target!(|input: &[u8]| {
    let Some((&k, rest)) = input.split_first() else {
        return;
    };
    let k = usize::from(k % 8);
    if rest.len() < k + 1 {
        return;
    }
    let (sizes, rest) = rest.split_at(k);
    let (&selector, stream) = rest.split_first().unwrap();

    // What the forwarder must do, frame by frame.
    let mut expected_out = Vec::new();
    let mut expected_frames: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while stream.len() - at >= MESSAGE_HEADER_LENGTH {
        let length = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        if length > MESSAGE_LENGTH_MAX {
            // Passed through untapped; inputs are far shorter than the frame, so it never ends.
            expected_out.extend_from_slice(&stream[at..]);
            break;
        }
        if stream.len() - at - MESSAGE_HEADER_LENGTH < length {
            break; // an unfinished frame at EOF is not forwarded
        }
        let end = at + MESSAGE_HEADER_LENGTH + length;
        let header = MessageHeader::from(&stream[at..at + MESSAGE_HEADER_LENGTH]);
        match rewrite(selector, &header, &stream[at + MESSAGE_HEADER_LENGTH..end]) {
            Some(replacement) => expected_out.extend_from_slice(&replacement),
            None => expected_out.extend_from_slice(&stream[at..end]),
        }
        expected_frames.push((at, end));
        at = end;
    }

    let mut out = Vec::new();
    let mut tapped: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut clock = 0u64;
    pump_rewriting(
        Pieces {
            data: stream,
            sizes,
            turn: 0,
        },
        &mut out,
        || {
            clock += 1;
            clock
        },
        |frame, _| rewrite(selector, &frame.header, frame.payload),
        |frame, _| tapped.push((Vec::<u8>::from(frame.header), frame.payload.to_vec())),
    )
    .expect("reading from memory cannot fail");

    assert!(
        out == expected_out,
        "forwarded bytes differ from the frames"
    );
    assert_eq!(tapped.len(), expected_frames.len(), "frames tapped");
    for ((header, payload), (start, end)) in tapped.iter().zip(&expected_frames) {
        // The tap sees the frame as read (not as rewritten), and its header encodes back to it.
        assert_eq!(header[..], stream[*start..start + MESSAGE_HEADER_LENGTH]);
        assert_eq!(payload[..], stream[start + MESSAGE_HEADER_LENGTH..*end]);
    }
});
