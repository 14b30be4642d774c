//! `containerd-shim-traced-v2`: the wrapper shim's entry point (see `shimtrace_shim::wrapper`).

fn main() {
    std::process::exit(shimtrace_shim::wrapper::main_entry(
        std::env::args_os().collect(),
    ));
}
