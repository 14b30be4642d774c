//! One export pass (`shimtrace export`): the spans of a time range, to a Jaeger UI JSON file, an
//! OTLP endpoint, or both. Naming a Jaeger file makes OTLP opt-in (an endpoint must be named too);
//! otherwise OTLP goes to the configured or default endpoint.

use std::path::{Path, PathBuf};

use shimtrace_span::SpanRecord;

use crate::export::{export_once, ExportConfig, ExportError, ExportOverrides};
use crate::jaeger;

/// Service name when neither a flag nor `OTEL_SERVICE_NAME` names one.
const DEFAULT_SERVICE: &str = "shimtrace";

/// What one export pass is asked to do.
#[derive(Debug, Clone, Default)]
pub struct OneshotRequest {
    /// Flags overriding the `OTEL_*` variables.
    pub overrides: ExportOverrides,
    /// Write Jaeger UI "Upload JSON" here.
    pub jaeger_json: Option<PathBuf>,
    /// Attempts after the first failed OTLP request.
    pub retries: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(
        "OTLP export is disabled (OTEL_SDK_DISABLED=true); unset it or pass --jaeger-json FILE"
    )]
    Disabled,
    #[error("cannot write Jaeger JSON to {path}: {source} (pass --jaeger-json a writable path)")]
    Jaeger {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime for OTLP export: {0} (check the process's limits on threads and open files)")]
    Runtime(#[source] std::io::Error),
}

/// A planned export pass: the selected spans and where they go.
#[derive(Debug)]
pub struct Oneshot {
    spans: Vec<SpanRecord>,
    /// The Jaeger file and the service name its processes carry.
    jaeger: Option<(PathBuf, String)>,
    otlp: Option<ExportConfig>,
    retries: u32,
}

impl Oneshot {
    /// Keeps the spans that started in `[from, to)` and resolves where they go (`env` looks a
    /// variable up). Fails when nothing would be written: OTLP disabled and no Jaeger file.
    pub fn plan(
        mut spans: Vec<SpanRecord>,
        (from, to): (u64, u64),
        request: &OneshotRequest,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Oneshot, OneshotError> {
        spans.retain(|s| s.start_time_unix_nano >= from && s.start_time_unix_nano < to);
        let require_endpoint = request.jaeger_json.is_some();
        let otlp = ExportConfig::resolve(&request.overrides, &env, require_endpoint)?;
        if otlp.is_none() && request.jaeger_json.is_none() {
            return Err(OneshotError::Disabled);
        }
        let jaeger = request.jaeger_json.clone().map(|path| {
            let service = otlp
                .as_ref()
                .map(|c| c.service_name.clone())
                .or_else(|| request.overrides.service_name.clone())
                .or_else(|| env("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| DEFAULT_SERVICE.into());
            (path, service)
        });
        Ok(Oneshot {
            spans,
            jaeger,
            otlp,
            retries: request.retries,
        })
    }

    /// The spans this pass exports.
    pub fn spans(&self) -> &[SpanRecord] {
        &self.spans
    }

    /// Writes the Jaeger file, if one was asked for; returns its path.
    pub fn write_jaeger(&self) -> Result<Option<&Path>, OneshotError> {
        let Some((path, service)) = &self.jaeger else {
            return Ok(None);
        };
        let doc = jaeger::to_jaeger_json(self.spans.clone(), service);
        let write_err = |source| OneshotError::Jaeger {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| write_err(e.into()))?;
        std::fs::write(path, bytes).map_err(write_err)?;
        Ok(Some(path))
    }

    /// Sends the spans over OTLP (blocking, retrying failures with backoff), if an endpoint is
    /// configured; returns the endpoint and how many spans it accepted.
    pub fn send_otlp(&self) -> Result<Option<(String, usize)>, OneshotError> {
        let Some(config) = &self.otlp else {
            return Ok(None);
        };
        let endpoint = config.endpoint.clone();
        let runtime = tokio::runtime::Runtime::new().map_err(OneshotError::Runtime)?;
        let sent = runtime.block_on(export_once(config.clone(), &self.spans, self.retries))?;
        Ok(Some((endpoint, sent)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::container_trace;
    use shimtrace_span::TraceId;

    use shimtrace_testkit::env::from_pairs as env;

    #[test]
    fn a_pass_with_nowhere_to_go_says_what_to_do() {
        let spans = container_trace(TraceId([1; 16]), "c");
        let err = Oneshot::plan(
            spans,
            (0, u64::MAX),
            &OneshotRequest::default(),
            env(&[("OTEL_SDK_DISABLED", "true")]),
        )
        .unwrap_err();
        assert!(matches!(err, OneshotError::Disabled));
        assert!(err.to_string().contains("--jaeger-json"), "{err}");
    }

    #[test]
    fn a_jaeger_file_alone_needs_no_endpoint_and_keeps_the_time_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jaeger.json");
        let spans = container_trace(TraceId([2; 16]), "c");
        let from = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap() + 1;
        let request = OneshotRequest {
            jaeger_json: Some(path.clone()),
            ..OneshotRequest::default()
        };
        let plan = Oneshot::plan(
            spans.clone(),
            (from, u64::MAX),
            &request,
            env(&[("OTEL_SERVICE_NAME", "svc")]),
        )
        .unwrap();
        assert_eq!(plan.spans().len(), spans.len() - 1);
        assert_eq!(plan.send_otlp().unwrap(), None);
        assert_eq!(plan.write_jaeger().unwrap(), Some(path.as_path()));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            doc["data"][0]["processes"]["p1"]["serviceName"], "svc",
            "{doc}"
        );
    }

    #[test]
    fn an_unwritable_jaeger_file_names_the_flag() {
        let request = OneshotRequest {
            jaeger_json: Some(PathBuf::from("/nonexistent/dir/jaeger.json")),
            ..OneshotRequest::default()
        };
        let plan = Oneshot::plan(Vec::new(), (0, u64::MAX), &request, env(&[])).unwrap();
        let err = plan.write_jaeger().unwrap_err().to_string();
        assert!(err.contains("--jaeger-json"), "{err}");
    }
}
