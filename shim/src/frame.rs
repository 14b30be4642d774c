//! Whole-frame forwarding of one direction of a ttrpc connection.
//!
//! Bytes are read into a buffer, every complete frame in it is written to the other side in one
//! `write`, verbatim (whatever its type or flags), and only then shown to the tap, so inspecting a
//! frame never delays it. A `rewrite` hook may replace a frame before it is written (the proxy adds
//! its `traceparent` to requests that carry none); every other byte passes untouched. A frame
//! longer than ttrpc's 4 MiB limit is passed through as it arrives, untapped: the peer will reject
//! it, but the proxy must not be the one to decide that.
//!
//! [`call`] is the other use of frames: a unary call of shimtrace's own to an inner shim.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use protobuf::Message;
use ttrpc::proto::{
    MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
};

/// Enough for containerd's usual frames (a few hundred bytes; `Create` and `Exec` a few KiB grow
/// it once); a proxy may serve hundreds of connections, two buffers each.
const INITIAL_BUFFER: usize = 4 * 1024;
/// After a large frame, the buffer shrinks back once empty so an idle proxy stays small.
const SHRINK_ABOVE: usize = 256 * 1024;

/// A complete frame as seen by the tap: its header and payload.
pub struct Frame<'a> {
    pub header: MessageHeader,
    pub payload: &'a [u8],
}

/// Forwards frames from `src` to `dst` until `src` ends; calls `tap` with each complete frame after
/// it has been written, together with the time its last byte was read.
pub fn pump<R: Read, W: Write>(
    src: R,
    dst: W,
    now: impl FnMut() -> u64,
    tap: impl FnMut(Frame<'_>, u64),
) -> io::Result<()> {
    pump_rewriting(src, dst, now, |_, _| None, tap)
}

/// [`pump`], where `rewrite` sees each complete frame first and may return the bytes (header
/// included) to send in its place.
pub fn pump_rewriting<R: Read, W: Write>(
    mut src: R,
    mut dst: W,
    mut now: impl FnMut() -> u64,
    mut rewrite: impl FnMut(&Frame<'_>, u64) -> Option<Vec<u8>>,
    mut tap: impl FnMut(Frame<'_>, u64),
) -> io::Result<()> {
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut filled = 0usize;
    // Bytes of an oversized frame still to pass through untapped.
    let mut passthrough = 0usize;
    loop {
        let n = match src.read(&mut buf[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let seen = now();
        filled += n;

        let mut start = 0;
        if passthrough > 0 {
            let k = passthrough.min(filled);
            dst.write_all(&buf[..k])?;
            passthrough -= k;
            start = k;
        }
        let mut end = start;
        while filled - end >= MESSAGE_HEADER_LENGTH {
            let header = MessageHeader::from(&buf[end..end + MESSAGE_HEADER_LENGTH]);
            let frame_len = MESSAGE_HEADER_LENGTH + header.length as usize;
            if header.length as usize > MESSAGE_LENGTH_MAX {
                // Forward the complete frames before it, then stream the oversized one.
                write_frames(&mut dst, &buf[start..end], seen, &mut rewrite)?;
                dst.write_all(&buf[end..filled])?;
                passthrough = frame_len - (filled - end);
                tap_frames(&buf[start..end], seen, &mut tap);
                start = filled;
                end = filled;
                break;
            }
            if filled - end < frame_len {
                break;
            }
            end += frame_len;
        }
        if end > start {
            write_frames(&mut dst, &buf[start..end], seen, &mut rewrite)?;
            tap_frames(&buf[start..end], seen, &mut tap);
        }
        buf.copy_within(end..filled, 0);
        filled -= end;

        // Make room for the rest of a partial frame.
        let needed = if filled >= MESSAGE_HEADER_LENGTH {
            let header = MessageHeader::from(&buf[..MESSAGE_HEADER_LENGTH]);
            MESSAGE_HEADER_LENGTH + (header.length as usize).min(MESSAGE_LENGTH_MAX)
        } else {
            MESSAGE_HEADER_LENGTH
        };
        if needed > buf.len() {
            buf.resize(needed, 0);
        } else if filled == 0 && buf.len() > SHRINK_ABOVE {
            buf.truncate(INITIAL_BUFFER);
            buf.shrink_to_fit();
        } else if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Writes complete frames, unmodified runs in one `write` each, rewritten frames in their place.
fn write_frames<W: Write>(
    dst: &mut W,
    bytes: &[u8],
    seen: u64,
    rewrite: &mut impl FnMut(&Frame<'_>, u64) -> Option<Vec<u8>>,
) -> io::Result<()> {
    let mut unwritten = 0;
    let mut at = 0;
    while bytes.len() - at >= MESSAGE_HEADER_LENGTH {
        let header = MessageHeader::from(&bytes[at..at + MESSAGE_HEADER_LENGTH]);
        let end = at + MESSAGE_HEADER_LENGTH + header.length as usize;
        let frame = Frame {
            header,
            payload: &bytes[at + MESSAGE_HEADER_LENGTH..end],
        };
        if let Some(replacement) = rewrite(&frame, seen) {
            dst.write_all(&bytes[unwritten..at])?;
            dst.write_all(&replacement)?;
            unwritten = end;
        }
        at = end;
    }
    dst.write_all(&bytes[unwritten..])
}

fn tap_frames(mut bytes: &[u8], seen: u64, tap: &mut impl FnMut(Frame<'_>, u64)) {
    while bytes.len() >= MESSAGE_HEADER_LENGTH {
        let header = MessageHeader::from(&bytes[..MESSAGE_HEADER_LENGTH]);
        let end = MESSAGE_HEADER_LENGTH + header.length as usize;
        tap(
            Frame {
                header,
                payload: &bytes[MESSAGE_HEADER_LENGTH..end],
            },
            seen,
        );
        bytes = &bytes[end..];
    }
}

/// One unary ttrpc call of the proxy's own (its look-up of the inner shim's pid, the wrapper's
/// clean-up after a dead proxy): sends `request` as stream `sid` on `stream` and returns the
/// response to it, skipping any other frame; fails after `timeout`.
pub fn call(
    mut stream: &UnixStream,
    sid: u32,
    request: &ttrpc::Request,
    timeout: Duration,
) -> io::Result<ttrpc::Response> {
    let payload = request.write_to_bytes().map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(MESSAGE_HEADER_LENGTH + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&sid.to_be_bytes());
    frame.extend_from_slice(&[MESSAGE_TYPE_REQUEST, 0]);
    frame.extend_from_slice(&payload);
    let deadline = Instant::now() + timeout;
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero())
            .then_some(left)
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
    };
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(&frame)?;
    let mut header = [0u8; MESSAGE_HEADER_LENGTH];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        stream.read_exact(&mut header)?;
        let header = MessageHeader::from(&header[..]);
        if header.length as usize > MESSAGE_LENGTH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a frame over ttrpc's length limit",
            ));
        }
        let mut body = vec![0u8; header.length as usize];
        stream.set_read_timeout(Some(left()?))?;
        stream.read_exact(&mut body)?;
        if header.stream_id == sid && header.type_ == MESSAGE_TYPE_RESPONSE {
            return ttrpc::Response::parse_from_bytes(&body)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sid: u32, ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&sid.to_be_bytes());
        out.push(ty);
        out.push(flags);
        out.extend_from_slice(payload);
        out
    }

    /// A reader that returns its data in fixed-size pieces, like a slow socket.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// (stream id, type, flags, payload length) of a tapped frame.
    type Seen = (u32, u8, u8, usize);

    fn run(input: &[u8], piece: usize) -> (Vec<u8>, Vec<Seen>) {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        pump(
            Trickle(input, piece),
            &mut out,
            || 7,
            |f, _| {
                seen.push((
                    f.header.stream_id,
                    f.header.type_,
                    f.header.flags,
                    f.payload.len(),
                ))
            },
        )
        .unwrap();
        (out, seen)
    }

    #[test]
    fn forwards_unknown_types_and_flags_verbatim_whatever_the_read_sizes() {
        let mut input = frame(1, 1, 0, b"request");
        input.extend(frame(3, 3, 0x5, b""));
        input.extend(frame(3, 0x7f, 0xff, &[9u8; 40_000]));
        input.extend(frame(5, 2, 0, b"resp"));
        for piece in [1, 3, 10, 11, 4096, 1 << 20] {
            let (out, seen) = run(&input, piece);
            assert_eq!(out, input, "piece {piece}");
            assert_eq!(
                seen,
                [
                    (1, 1, 0, 7),
                    (3, 3, 5, 0),
                    (3, 0x7f, 0xff, 40_000),
                    (5, 2, 0, 4)
                ],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn rewritten_frames_replace_only_themselves() {
        let mut input = frame(1, 1, 0, b"one");
        input.extend(frame(3, 1, 0, b"two"));
        input.extend(frame(5, 2, 0, b"three"));
        let mut out = Vec::new();
        pump_rewriting(
            Trickle(&input, 4096),
            &mut out,
            || 0,
            |f, _| (f.header.stream_id == 3).then(|| frame(3, 1, 0, b"TWO!")),
            |_, _| {},
        )
        .unwrap();
        let mut expected = frame(1, 1, 0, b"one");
        expected.extend(frame(3, 1, 0, b"TWO!"));
        expected.extend(frame(5, 2, 0, b"three"));
        assert_eq!(out, expected);
    }

    #[test]
    fn oversized_frame_passes_through_untapped() {
        let big = MESSAGE_LENGTH_MAX + 5;
        let mut input = frame(1, 1, 0, b"a");
        input.extend(frame(3, 1, 0, &vec![1u8; big]));
        input.extend(frame(5, 1, 0, b"b"));
        let (out, seen) = run(&input, 64 * 1024);
        assert_eq!(out.len(), input.len());
        assert!(out == input);
        assert_eq!(seen, [(1, 1, 0, 1), (5, 1, 0, 1)]);
    }

    #[test]
    fn a_call_gets_the_response_to_its_own_stream() {
        let (client, server) = UnixStream::pair().unwrap();
        let answering = std::thread::spawn(move || {
            let mut header = [0u8; MESSAGE_HEADER_LENGTH];
            (&server).read_exact(&mut header).unwrap();
            let header = MessageHeader::from(&header[..]);
            let mut body = vec![0; header.length as usize];
            (&server).read_exact(&mut body).unwrap();
            let request = ttrpc::Request::parse_from_bytes(&body).unwrap();
            let mut response = ttrpc::Response::new();
            response.payload = request.method.into_bytes();
            let answer = response.write_to_bytes().unwrap();
            // Another stream's response first, then this one's.
            let mut out = frame(header.stream_id + 2, MESSAGE_TYPE_RESPONSE, 0, b"other");
            out.extend(frame(header.stream_id, MESSAGE_TYPE_RESPONSE, 0, &answer));
            (&server).write_all(&out).unwrap();
            server
        });
        let mut request = ttrpc::Request::new();
        request.method = "Connect".into();
        let response = call(&client, 7, &request, Duration::from_secs(5)).unwrap();
        assert_eq!(response.payload, b"Connect");
        let _server = answering.join().unwrap();
        // Nobody answers: a timeout, not a hang.
        let started = Instant::now();
        let err = call(&client, 9, &request, Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn partial_frame_at_eof_is_forwarded_up_to_what_was_complete() {
        let mut input = frame(1, 1, 0, b"whole");
        input.extend(&frame(3, 1, 0, b"cut")[..12]);
        let (out, seen) = run(&input, 100);
        assert_eq!(out, frame(1, 1, 0, b"whole"));
        assert_eq!(seen.len(), 1);
    }
}
