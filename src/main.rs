//! The `adt-router` command line: starts the runtime and hands over to [`cli::run`].

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc advises transparent huge pages for its arenas, so every fresh 2 MiB region
/// is zeroed whole, in one stall, on its first touch: 8-9% of a routing drain's CPU was
/// the kernel clearing pages, and the drain ran ~6% faster without them (README,
/// Benchmarks). Turned off for this process, as Redis and MongoDB advise, unless
/// mimalloc's own switch `MIMALLOC_ALLOW_THP` says otherwise.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets one flag on this process.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

fn main() -> ExitCode {
    disable_huge_pages();
    let cli = cli::Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("ADT_ROUTER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
