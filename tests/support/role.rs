//! Child processes that run one of the test binary's own `#[ignore]`d tests (a "role"): a
//! second bot, a worker to kill with -9, a leader to replace. The parent passes the role its
//! set-up in one environment variable.

use std::process::{Child, Command, Stdio};

use super::process::spawn_tied_to_process;

/// The command that runs the test `role` of this binary, with `spec` in the variable `env`:
/// stdin closed, stdout piped (roles report on it), stderr dropped.
pub fn role_command(role: &str, env: &str, spec: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("path of the test binary"));
    cmd.args([
        "--exact",
        role,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(env, spec)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    cmd
}

/// Starts the role (killed by the kernel if this test process dies first).
pub fn spawn_role(role: &str, env: &str, spec: &str) -> Child {
    spawn_tied_to_process(role_command(role, env, spec))
        .unwrap_or_else(|e| panic!("start the child role {role}: {e}"))
}
