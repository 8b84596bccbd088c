//! `depot`: parses flags and runs [`depot_server::cli`].
//!
//! Exit codes: 0 success (including a clean Ctrl-C), 1 an error (printed to stderr),
//! 2 a usage error (from clap).

use clap::Parser;

/// mimalloc instead of glibc's allocator: request bodies arrive in buffers of hundreds of KiB,
/// allocated and freed on different threads, which glibc answers with `mmap`/`munmap` and a
/// page fault per page; measured with `scripts/bench.sh`, large PUTs spend several percent of
/// the server's CPU in those faults. Built without transparent huge pages (`no_thp`), which
/// would inflate RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = depot_server::cli::Cli::parse();
    if let Err(err) = depot_server::cli::run(cli) {
        eprintln!("depot: error: {err:#}");
        std::process::exit(1);
    }
}
