//! Test support: a real OTLP trace receiver built from the official protobuf definitions
//! (`opentelemetry-proto`'s generated tonic `TraceServiceServer` for gRPC, and `POST /v1/traces`
//! decoding the same `ExportTraceServiceRequest` for HTTP/protobuf). End-to-end tests start one,
//! point `OTEL_EXPORTER_OTLP_ENDPOINT` at it and read back what arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// One span as the receiver got it, with its resource's string attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// String attributes of the span.
    pub attributes: BTreeMap<String, String>,
    /// String attributes of the span's resource (`service.name`, `host.name`, ...).
    pub resource: BTreeMap<String, String>,
}

fn strings(kvs: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>) -> BTreeMap<String, String> {
    kvs.into_iter()
        .filter_map(|kv| match kv.value?.value? {
            AnyValue::StringValue(s) => Some((kv.key, s)),
            AnyValue::IntValue(i) => Some((kv.key, i.to_string())),
            AnyValue::BoolValue(b) => Some((kv.key, b.to_string())),
            AnyValue::DoubleValue(d) => Some((kv.key, d.to_string())),
            _ => None,
        })
        .collect()
}

/// Everything a receiver got, shared between its server task and the test; and which requests it
/// refuses, as an endpoint that is failing would.
#[derive(Clone, Default)]
pub struct Received {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// A resource attribute `(key, value)`: requests holding a resource with it are refused.
    refused: Arc<Mutex<Option<(String, String)>>>,
}

impl Received {
    /// Refuses, until [`Received::accept_all`], every request that holds a resource whose
    /// attribute `key` is `value` (answered as unavailable: the exporter may retry). Nothing of
    /// a refused request is kept.
    pub fn refuse_resource(&self, key: &str, value: &str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((key.to_owned(), value.to_owned()));
    }

    /// Takes every request again, after [`Received::refuse_resource`].
    pub fn accept_all(&self) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether `request` is to be refused (see [`Received::refuse_resource`]).
    fn refuses(&self, request: &ExportTraceServiceRequest) -> bool {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let Some((key, value)) = refused.as_ref() else {
            return false;
        };
        request.resource_spans.iter().any(|rs| {
            rs.resource.iter().flat_map(|r| &r.attributes).any(|kv| {
                kv.key == *key
                    && matches!(
                        kv.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(AnyValue::StringValue(s)) if s == value
                    )
            })
        })
    }

    fn absorb(&self, request: ExportTraceServiceRequest) {
        let mut got = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for rs in request.resource_spans {
            let resource = strings(rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(ReceivedSpan {
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: (!s.parent_span_id.is_empty())
                            .then(|| hex::encode(&s.parent_span_id)),
                        name: s.name,
                        start_time_unix_nano: s.start_time_unix_nano,
                        end_time_unix_nano: s.end_time_unix_nano,
                        attributes: strings(s.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }

    /// Every span received, in arrival order (a retried batch may arrive twice).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many different span ids arrived.
    pub fn distinct(&self) -> usize {
        distinct_ids(&self.spans())
    }

    /// Waits (polling, bounded by `timeout`) until `n` distinct spans arrived; false on timeout.
    pub fn wait_for_distinct(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |spans| distinct_ids(spans) >= n)
    }

    /// Waits (polling, bounded by `timeout`) until some received span satisfies `wanted`; false
    /// on timeout.
    pub fn wait_for_span(&self, timeout: Duration, wanted: impl Fn(&ReceivedSpan) -> bool) -> bool {
        self.wait_until(timeout, |spans| spans.iter().any(&wanted))
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.spans()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How many different span ids are among `spans`.
fn distinct_ids(spans: &[ReceivedSpan]) -> usize {
    spans
        .iter()
        .map(|g| &g.span_id)
        .collect::<BTreeSet<_>>()
        .len()
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        if self.refuses(&request) {
            return Err(tonic::Status::unavailable("refused by the test"));
        }
        self.absorb(request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; its server task runs on the current Tokio runtime until that ends.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    pub received: Received,
}

impl OtlpReceiver {
    /// The endpoint to give the exporter (`http://addr`; HTTP exporters add `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves OTLP/gRPC on `listener`.
    pub fn grpc(listener: tokio::net::TcpListener) -> std::io::Result<OtlpReceiver> {
        let addr = listener.local_addr()?;
        let received = Received::default();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(OtlpReceiver { addr, received })
    }

    /// Serves OTLP/HTTP protobuf (`POST /v1/traces` with `content-type: application/x-protobuf`)
    /// on `listener`.
    pub fn http(listener: tokio::net::TcpListener) -> std::io::Result<OtlpReceiver> {
        use axum::http::{header, StatusCode};
        let addr = listener.local_addr()?;
        let received = Received::default();
        let sink = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let sink = sink.clone();
                    async move {
                        // OTLP/HTTP: a protobuf body must say so; anything else is 415.
                        let protobuf = headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.eq_ignore_ascii_case("application/x-protobuf"));
                        if !protobuf {
                            return (
                                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                                [(header::CONTENT_TYPE, "text/plain")],
                                b"expected content-type application/x-protobuf".to_vec(),
                            );
                        }
                        match ExportTraceServiceRequest::decode(body) {
                            Ok(request) if sink.refuses(&request) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                [(header::CONTENT_TYPE, "text/plain")],
                                b"refused by the test".to_vec(),
                            ),
                            Ok(request) => {
                                sink.absorb(request);
                                (
                                    StatusCode::OK,
                                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                                    ExportTraceServiceResponse::default().encode_to_vec(),
                                )
                            }
                            Err(e) => (
                                StatusCode::BAD_REQUEST,
                                [(header::CONTENT_TYPE, "text/plain")],
                                e.to_string().into_bytes(),
                            ),
                        }
                    }
                },
            ),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OtlpReceiver { addr, received })
    }
}

/// The environment that makes containerd 2.x export traces to `endpoint` quickly and
/// propagate `traceparent` to shims: OTLP over HTTP/protobuf, every trace sampled, batches
/// flushed every 200 ms (the Go SDK default of 5 s outlives most tests).
pub fn otlp_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_SERVICE_NAME", "containerd"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// An OTLP/HTTP receiver on 127.0.0.1 (random port); it serves on the returned runtime's workers
/// until that runtime is dropped.
pub fn otlp_http_receiver() -> (tokio::runtime::Runtime, OtlpReceiver) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime for the OTLP receiver");
    let receiver = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the OTLP receiver");
        OtlpReceiver::http(listener).expect("the OTLP receiver")
    });
    (runtime, receiver)
}
