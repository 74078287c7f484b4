use std::process::ExitCode;

/// mimalloc: the proxy allocates and frees small buffers for every request, which glibc's
/// allocator does at a measurably higher CPU cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gateway::cli::main()
}
