//! Builds the XDP program (`gateway-ebpf`) for `bpfel-unknown-none` with the nightly toolchain
//! and bpf-linker, and leaves it in OUT_DIR for `include_bytes_aligned!` in `src/xdp/loader.rs`.
//! `cargo xtask setup` installs what this needs.

use anyhow::{anyhow, Context as _};
use cargo_metadata::MetadataCommand;

fn main() -> anyhow::Result<()> {
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name == "gateway-ebpf")
        .ok_or_else(|| anyhow!("gateway-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("gateway-ebpf manifest has no parent directory"))?;
    // aya-build passes every line the inner cargo writes to stderr on as a `cargo:warning`, so
    // its progress lines ("Compiling ...", "Finished ...") showed as a screen of warnings.
    // Quiet, that cargo writes only errors there; the compiler's own warnings and errors come
    // through its JSON messages, which aya-build still shows.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
