//! The reply of a shim's `start`: parsed the way containerd parses it (protobuf `BootstrapResult`,
//! then JSON, then a plain address) and re-emitted in the same format with only the address swapped.

use std::path::PathBuf;

use containerd_shim_protos::bootstrap_api::BootstrapResult;
use protobuf::Message;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("the inner shim's start printed nothing")]
    Empty,
    #[error("the inner shim's start reply is not an address, JSON or BootstrapResult: {0:?}")]
    Unrecognised(String),
    #[error("the inner shim serves {0:?}, which the proxy cannot forward (only ttrpc over unix sockets)")]
    NotProxyable(String),
}

/// How the inner shim wrote its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFormat {
    /// A bare address (containerd 1.6 style; task API v2).
    Plain,
    /// `{"version":N,"address":…,"protocol":…}` (containerd 1.7+).
    Json,
    /// A protobuf `BootstrapResult` (containerd 2.3+ with `BootstrapParams` on stdin).
    Protobuf,
}

impl ReplyFormat {
    pub fn label(self) -> &'static str {
        match self {
            ReplyFormat::Plain => "plain",
            ReplyFormat::Json => "json",
            ReplyFormat::Protobuf => "protobuf",
        }
    }
}

/// A parsed start reply.
#[derive(Debug, Clone)]
pub struct StartReply {
    pub format: ReplyFormat,
    /// Shim protocol version: 2 → `containerd.task.v2.Task`, 3 → `containerd.task.v3.Task`.
    pub version: i64,
    pub protocol: String,
    pub address: String,
    raw: Vec<u8>,
    json: Option<serde_json::Value>,
}

fn plausible_address(address: &str) -> bool {
    !address.is_empty()
        && !address.contains(char::is_whitespace)
        && (address.starts_with('/') || address.contains("://"))
}

impl StartReply {
    pub fn parse(raw: &[u8]) -> Result<StartReply, ReplyError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(ReplyError::Empty);
        }
        if let Some(result) = decode_exact::<BootstrapResult>(raw) {
            if plausible_address(&result.address) {
                return Ok(StartReply {
                    format: ReplyFormat::Protobuf,
                    version: result.version.into(),
                    protocol: result.protocol,
                    address: result.address,
                    raw: raw.to_vec(),
                    json: None,
                });
            }
        }
        let text = String::from_utf8_lossy(raw);
        let trimmed = text.trim();
        if trimmed.starts_with('{') {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed) {
                if let Some(address) = value.get("address").and_then(|a| a.as_str()) {
                    return Ok(StartReply {
                        format: ReplyFormat::Json,
                        version: value.get("version").and_then(|v| v.as_i64()).unwrap_or(2),
                        protocol: value
                            .get("protocol")
                            .and_then(|p| p.as_str())
                            .unwrap_or("ttrpc")
                            .to_string(),
                        address: address.to_string(),
                        raw: raw.to_vec(),
                        json: Some(value),
                    });
                }
            }
        }
        if plausible_address(trimmed) {
            return Ok(StartReply {
                format: ReplyFormat::Plain,
                version: 2,
                protocol: "ttrpc".into(),
                address: trimmed.to_string(),
                raw: raw.to_vec(),
                json: None,
            });
        }
        Err(ReplyError::Unrecognised(
            trimmed.chars().take(200).collect(),
        ))
    }

    /// `plain/v2`, `json/v3`, `protobuf/v3`: the `shimtrace.protocol` attribute.
    pub fn protocol_label(&self) -> String {
        format!("{}/v{}", self.format.label(), self.version)
    }

    /// The unix socket path behind the address, if the proxy can serve it.
    pub fn socket_path(&self) -> Result<PathBuf, ReplyError> {
        if !self.protocol.is_empty() && self.protocol != "ttrpc" {
            return Err(ReplyError::NotProxyable(format!(
                "{} ({})",
                self.address, self.protocol
            )));
        }
        socket_path_of(&self.address).ok_or_else(|| ReplyError::NotProxyable(self.address.clone()))
    }

    /// The original reply bytes, to relay unchanged when the proxy cannot be used.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The same reply, same format, version and surrounding whitespace, with `address` swapped.
    pub fn with_address(&self, address: &str) -> Vec<u8> {
        match self.format {
            ReplyFormat::Protobuf => {
                // The reply as the inner shim wrote it, with a second `address` (field 2) after
                // it: a decoder keeps the last value of a singular field. Encoding the decoded
                // reply again is not safe: rust-protobuf 3 writes a packed repeated enum holding a
                // negative value (an unknown capability) with a wrong length, corrupting it.
                let mut out = self.raw.clone();
                let mut stream = protobuf::CodedOutputStream::vec(&mut out);
                match stream
                    .write_string(2, address)
                    .and_then(|()| stream.flush())
                {
                    Ok(()) => {
                        drop(stream);
                        out
                    }
                    Err(_) => self.raw.clone(),
                }
            }
            ReplyFormat::Json => {
                let mut value = self.json.clone().unwrap_or_default();
                value["address"] = serde_json::Value::String(address.to_string());
                let body = serde_json::to_string(&value).unwrap_or_default();
                self.keep_whitespace(&body)
            }
            ReplyFormat::Plain => self.keep_whitespace(address),
        }
    }

    fn keep_whitespace(&self, body: &str) -> Vec<u8> {
        let text = String::from_utf8_lossy(&self.raw);
        let start = text.len() - text.trim_start().len();
        let end = text.trim_end().len();
        let mut out = Vec::with_capacity(text.len() + body.len());
        out.extend_from_slice(text[..start].as_bytes());
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(text[end..].as_bytes());
        out
    }
}

/// Decodes `raw` as one whole message, as containerd's Go decoder does: a field running past the
/// end of the input is an error. rust-protobuf's `parse_from_bytes` lets a nested message claim
/// more bytes than are left at the end of the input, so bytes written after such a reply would
/// land inside that message.
fn decode_exact<M: Message>(raw: &[u8]) -> Option<M> {
    let mut input = protobuf::CodedInputStream::from_bytes(raw);
    let outer = input.push_limit(raw.len() as u64).ok()?;
    let mut message = M::new();
    message.merge_from(&mut input).ok()?;
    input.pop_limit(outer);
    Some(message)
}

/// `unix:///run/x.sock` or `/run/x.sock` → `/run/x.sock`; other schemes are not unix sockets.
pub fn socket_path_of(address: &str) -> Option<PathBuf> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    path.starts_with('/').then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_address_keeps_its_whitespace() {
        let reply = StartReply::parse(b"unix:///run/containerd/s/abc\n").unwrap();
        assert_eq!(reply.format, ReplyFormat::Plain);
        assert_eq!(reply.version, 2);
        assert_eq!(reply.protocol_label(), "plain/v2");
        assert_eq!(
            reply.socket_path().unwrap(),
            PathBuf::from("/run/containerd/s/abc")
        );
        assert_eq!(reply.with_address("unix:///p"), b"unix:///p\n");
        // Kata prints no newline.
        let kata = StartReply::parse(b"unix:///run/containerd/s/ABC").unwrap();
        assert_eq!(kata.with_address("unix:///p"), b"unix:///p");
    }

    #[test]
    fn json_keeps_version_protocol_and_key_order() {
        let raw = br#"{"version":3,"address":"unix:///run/containerd/s/abc","protocol":"ttrpc"}"#;
        let reply = StartReply::parse(raw).unwrap();
        assert_eq!(reply.format, ReplyFormat::Json);
        assert_eq!(reply.version, 3);
        assert_eq!(
            String::from_utf8(reply.with_address("unix:///p")).unwrap(),
            r#"{"version":3,"address":"unix:///p","protocol":"ttrpc"}"#
        );
    }

    #[test]
    fn protobuf_bootstrap_result_round_trips() {
        let mut result = BootstrapResult::new();
        result.version = 3;
        result.address = "unix:///run/containerd/s/abc".into();
        result.protocol = "ttrpc".into();
        result.metadata.insert("k".into(), "v".into());
        let raw = result.write_to_bytes().unwrap();
        let reply = StartReply::parse(&raw).unwrap();
        assert_eq!(reply.format, ReplyFormat::Protobuf);
        assert_eq!(reply.protocol_label(), "protobuf/v3");
        let out = BootstrapResult::parse_from_bytes(&reply.with_address("unix:///p")).unwrap();
        assert_eq!(out.address, "unix:///p");
        assert_eq!(out.version, 3);
        assert_eq!(out.metadata.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn protobuf_reply_with_a_negative_capability_keeps_its_framing() {
        // A case of fuzz/fuzz_targets/bootstrap_params.rs: re-encoding a decoded BootstrapResult
        // whose capabilities hold -4 must give bytes that still decode.
        // Version 3, the address, capabilities [-4] (packed, a ten-byte varint), as a shim could
        // write them.
        let mut raw = vec![0x08, 0x03, 0x12, 28];
        raw.extend_from_slice(b"unix:///run/containerd/s/abc");
        raw.extend_from_slice(&[
            0x22, 10, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        let reply = StartReply::parse(&raw).unwrap();
        assert_eq!(reply.format, ReplyFormat::Protobuf);
        let out = BootstrapResult::parse_from_bytes(&reply.with_address("unix:///p")).unwrap();
        assert_eq!(out.address, "unix:///p");
        assert_eq!(out.version, 3);
        assert_eq!(out.capabilities, [protobuf::EnumOrUnknown::from_i32(-4)]);
    }

    #[test]
    fn a_protobuf_reply_cut_short_is_not_taken_for_one() {
        // A case of fuzz/fuzz_targets/start_reply.rs: a metadata entry (field 5) whose length
        // runs past the end must not be decoded, or the proxy's address written after it would
        // land inside that entry. containerd refuses such a reply; so does the parser, and the
        // wrapper relays it unchanged.
        let mut raw = vec![0x08, 0x03, 0x12, 28];
        raw.extend_from_slice(b"unix:///run/containerd/s/abc");
        raw.extend_from_slice(&[0x2a, 0xff, 0xff, 0xff, 0xff, 0x06, 0x0a, 0x01, b'k']);
        assert!(BootstrapResult::parse_from_bytes(&raw).is_ok());
        let format = StartReply::parse(&raw).map(|r| r.format);
        assert_ne!(format, Ok(ReplyFormat::Protobuf));
        // The same entry with its true length is a reply.
        let whole_at = raw.len() - 9;
        raw.truncate(whole_at);
        raw.extend_from_slice(&[0x2a, 0x03, 0x0a, 0x01, b'k']);
        assert_eq!(
            StartReply::parse(&raw).unwrap().format,
            ReplyFormat::Protobuf
        );
    }

    #[test]
    fn grpc_and_garbage_are_not_proxied() {
        let grpc =
            StartReply::parse(br#"{"version":2,"address":"unix:///a","protocol":"grpc"}"#).unwrap();
        assert!(grpc.socket_path().is_err());
        assert!(StartReply::parse(b"  \n").is_err());
        assert!(StartReply::parse(b"time=... level=error msg=\"boom\"").is_err());
        let vsock = StartReply::parse(b"vsock://3:1024").unwrap();
        assert!(vsock.socket_path().is_err());
    }
}
