//! `depot`: parses flags and runs [`depot_server::cli`].
//!
//! Exit codes: 0 success (including a clean Ctrl-C), 1 an error (printed to stderr),
//! 2 a usage error (from clap).

use clap::Parser;

fn main() {
    let cli = depot_server::cli::Cli::parse();
    if let Err(err) = depot_server::cli::run(cli) {
        eprintln!("depot: error: {err:#}");
        std::process::exit(1);
    }
}
