//! A minimal inner test shim on the `containerd-shim` 0.12 crate, which speaks containerd 2.3's stdin
//! `BootstrapParams` → `BootstrapResult` protocol (and the legacy JSON v3 reply for 2.0–2.2).
//!
//! It runs no container. Its `containerd.task.v3.Task` service answers `Connect` (with its own pid),
//! `State` (echoing the id), `Create` (publishing a `/tasks/create` event through containerd's ttrpc
//! address, so an events tap can be tested) and `Shutdown` (which ends the server); every other
//! method returns the crate's default NOT_FOUND "… is not supported".
//!
//! With `SHIMTRACE_BOOTSTRAP_SHIM_LOG=<file>` in its environment (containerd passes its own
//! environment to shims), every answered call appends one JSON line `{"method", "id",
//! "metadata"}` to that file, so a test can see the ttrpc metadata (e.g. `traceparent`) that
//! arrived at the inner shim.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::TaskCreate;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics::TASK_CREATE_EVENT_TOPIC;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;

/// Runtime name this shim answers to (`containerd-shim-bootstrap-v2`).
pub const RUNTIME_ID: &str = "io.containerd.bootstrap.v2";

/// What `Connect` reports as `version`, so a test can tell this shim from another.
pub const CONNECT_VERSION: &str = "shimtrace-bootstrap-shim";

/// Environment variable naming the file that receives one JSON line per answered call.
pub const REQUEST_LOG_ENV: &str = "SHIMTRACE_BOOTSTRAP_SHIM_LOG";

/// Appends `{"method", "id", "metadata"}` to the request log, if one is configured. Best effort:
/// a test shim must keep answering even when its log cannot be written.
fn log_request(method: &str, id: &str, ctx: &TtrpcContext) {
    let Some(path) = std::env::var_os(REQUEST_LOG_ENV) else {
        return;
    };
    let metadata: HashMap<&String, &Vec<String>> = ctx.metadata.iter().collect();
    let line = serde_json::json!({ "method": method, "id": id, "metadata": metadata });
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write, so that the lines of calls served at once do not interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// The shim: `start` spawns the server daemon, which serves [`BootstrapTask`].
pub struct BootstrapShim {
    exit: Arc<ExitSignal>,
    namespace: String,
}

#[async_trait]
impl Shim for BootstrapShim {
    type T = BootstrapTask;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // A test bundle has no `log` FIFO for the crate's logger to open.
        config.no_setup_logger = true;
        BootstrapShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = opts.id.clone();
        spawn(opts, &grouping, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        Ok(api::DeleteResponse::new())
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> BootstrapTask {
        BootstrapTask {
            exit: self.exit.clone(),
            publisher: Arc::new(publisher),
            namespace: self.namespace.clone(),
        }
    }
}

/// The task service of the server daemon.
pub struct BootstrapTask {
    exit: Arc<ExitSignal>,
    publisher: Arc<RemotePublisher>,
    namespace: String,
}

#[async_trait]
impl Task for BootstrapTask {
    async fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        log_request("Connect", &req.id, ctx);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: 0,
            version: CONNECT_VERSION.to_owned(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        log_request("State", &req.id, ctx);
        Ok(api::StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log_request("Create", &req.id, ctx);
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            ..Default::default()
        };
        // Publishing goes through the crate's queue; a failure there is logged, not fatal.
        let _ = self
            .publisher
            .publish(
                Context::default(),
                TASK_CREATE_EVENT_TOPIC,
                &self.namespace,
                Box::new(event),
            )
            .await;
        Ok(api::CreateTaskResponse::default())
    }

    async fn shutdown(
        &self,
        ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        log_request("Shutdown", &req.id, ctx);
        self.exit.signal();
        Ok(api::Empty::default())
    }
}
