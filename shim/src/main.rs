//! `containerd-shim-traced-v2`: the wrapper shim's entry point.

fn main() {
    shimtrace_shim::clock::init();
}
