//! Child processes that run one of the test binary's own `#[ignore]`d tests (a "role"): a
//! second bot, a worker to kill with -9, a leader to replace. The parent passes the role its
//! set-up in one environment variable.
//!
//! The suites share one binary, so a role is named by its suite too: callers pass their
//! `module_path!()` and the role's function name, and [`test_name`] makes the name libtest
//! knows (`locks::child_holder`).

use std::process::{Child, Command, Stdio};

use super::process::spawn_tied_to_process;

/// The libtest name of the test function `name` of the module `module` (a `module_path!()` of
/// this binary: `it::locks` gives `locks::NAME`).
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_, suite)) => format!("{suite}::{name}"),
        None => name.to_owned(),
    }
}

/// The command that runs the test `role` of the suite `module` (its `module_path!()`), with
/// `spec` in the variable `env`: stdin closed, stdout piped (roles report on it), stderr
/// dropped. libtest runs it quietly, so no `test NAME ... ` header shares a line with what
/// the role prints.
pub fn role_command(module: &str, role: &str, env: &str, spec: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("path of the test binary"));
    cmd.args([
        "--exact",
        &test_name(module, role),
        "--ignored",
        "--nocapture",
        "--quiet",
        "--test-threads=1",
    ])
    .env(env, spec)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    cmd
}

/// Starts the role (killed by the kernel if this test process dies first).
pub fn spawn_role(module: &str, role: &str, env: &str, spec: &str) -> Child {
    spawn_tied_to_process(role_command(module, role, env, spec))
        .unwrap_or_else(|e| panic!("start the child role {role}: {e}"))
}
