//! [`Sidecar`]: the built `botfleet run` as the sidecar a bot in another language talks to,
//! on a free loopback port, with its log kept in a temporary directory; and raw HTTP calls to
//! it ([`request`]) that send headers of the test's choosing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::process::spawn_tied_to_process;
use super::{free_port, poll_until};

/// How long a daemon may take to answer `/health` after its start.
const START: Duration = Duration::from_secs(30);

/// A running `botfleet run`, killed with SIGKILL when dropped.
pub struct Sidecar {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Sidecar {
    /// `botfleet run` on `redis_url` with the default settings, `vars` added to its
    /// environment; returns once `/health` answers.
    pub fn start(redis_url: &str, vars: &[(&str, &str)]) -> Sidecar {
        Self::start_with(redis_url, "", vars)
    }

    /// [`Sidecar::start`] with `settings` (TOML) as its settings file.
    pub fn start_with(redis_url: &str, settings: &str, vars: &[(&str, &str)]) -> Sidecar {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("settings.toml");
        std::fs::write(&config, settings).expect("write the settings file");
        let log = std::fs::File::create(dir.path().join("daemon.log")).expect("the log file");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botfleet"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("REDIS_URL", redis_url)
            .env("BOTFLEET__API__BIND", &addr)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in vars {
            cmd.env(key, value);
        }
        let child = spawn_tied_to_process(cmd).expect("spawn botfleet run");
        let mut sidecar = Sidecar { child, addr, dir };
        let answered = poll_until(START, || {
            sidecar.has_exited() || request(&sidecar.addr, "GET", "/health", "", &[]).is_some()
        });
        assert!(
            answered.is_ok() && !sidecar.has_exited(),
            "the daemon did not come up; its log:\n{}",
            sidecar.log()
        );
        sidecar
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// `host:port` of its HTTP API.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Its base URL, for `--url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A scratch directory that lives as long as the daemon.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `POST path` with the JSON `body`: the status and the answer's JSON.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        request(&self.addr, "POST", path, body, &[])
            .unwrap_or_else(|| panic!("POST {path}: no answer; log:\n{}", self.log()))
    }

    /// `GET path`: the status and the answer's JSON.
    pub fn get(&self, path: &str) -> (u16, Value) {
        request(&self.addr, "GET", path, "", &[])
            .unwrap_or_else(|| panic!("GET {path}: no answer; log:\n{}", self.log()))
    }

    /// The built `botfleet` with `args` (the caller adds `--url`), in the scratch directory,
    /// with `PATH` alone in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botfleet"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        cmd
    }

    /// The path of `name` in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request to `addr` with `headers` added: the status and the body parsed as JSON
/// (`Null` when it is not JSON); `None` when nothing answers within 70 seconds (a long poll
/// waits up to a minute).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, Value)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(70)))
        .ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n{body}").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, json) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(json).unwrap_or(Value::Null)))
}
