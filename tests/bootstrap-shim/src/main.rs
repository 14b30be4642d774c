//! `containerd-shim-bootstrap-v2`: the minimal inner test shim; all logic is in the library.

use shimtrace_bootstrap_shim::{BootstrapShim, RUNTIME_ID};

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<BootstrapShim>(RUNTIME_ID, None).await;
}
