//! Link settings of the `apiary` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |name| std::env::var(name).unwrap_or_default();
    // Pack the binary's ~300,000 relative relocations (DT_RELR): the dynamic loader then reads
    // about 85 KiB of relocation entries at start instead of 7 MiB, and those pages are no
    // longer resident for the life of the process (idle RSS 58 -> 44 MiB,
    // bench/results/select1-and-idle.md).
    // The binary then needs glibc 2.36 or later: the linker records a GLIBC_ABI_DT_RELR
    // dependency, so an older loader refuses it by name instead of running it wrongly (the
    // container image builds and runs on Debian bookworm, glibc 2.36). Linkers older than GNU
    // ld 2.38 ignore the option with a warning.
    if var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
