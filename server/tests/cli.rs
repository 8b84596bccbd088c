//! The `depot` binary's usage errors (exit code 2) and help. Also makes `cargo test
//! --workspace` build the `depot` binary the end-to-end tests in `tests/` run.

use std::process::Command;

fn depot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_depot"))
}

#[test]
fn help_lists_the_commands() {
    let out = depot().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serve") && text.contains("url"), "{text}");
}

#[test]
fn a_bad_flag_value_is_a_usage_error() {
    let out = depot().args(["serve", "--tls", "sometimes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: auto, on, off"));
    let out = depot().args(["serve", "--advertise", "no-port-here", "/nonexistent/x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not HOST:PORT"));
}
