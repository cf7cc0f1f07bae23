//! Real PostgreSQL servers for the history tests.
//!
//! - [`PgDatabase`]: a throwaway database, created with a unique name on the machine's server
//!   at 127.0.0.1:5432 (trust auth, user `postgres`) when one answers there, otherwise on a
//!   [`PrivatePostgres`] started for it; dropped with the value.
//! - [`PrivatePostgres`]: a server of our own (`initdb` + `pg_ctl` from
//!   `/usr/lib/postgresql/*/bin`) in a temporary directory on a reserved free port, that a test
//!   can stop (fast or `immediate`, a crash) and start again. As root it runs as the
//!   `postgres` system user (`runuser`), since PostgreSQL refuses to run as root.
//!
//! `scripts/test.sh` installs Debian's `postgresql` package when `initdb` is missing.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::Connection;

use super::port::PortReservation;

/// The machine's server, used when it answers.
const MACHINE: &str = "127.0.0.1:5432";

/// A throwaway database; dropped (with `FORCE`) when this value is.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
    _server: Option<PrivatePostgres>,
}

impl PgDatabase {
    /// A new, empty database on the machine's server, or on a private one.
    pub async fn create() -> PgDatabase {
        let name = unique_name();
        let (admin_url, url, server) = if TcpStream::connect_timeout(
            &MACHINE.parse().unwrap(),
            Duration::from_secs(1),
        )
        .is_ok()
        {
            (
                format!("postgres://postgres@{MACHINE}/postgres"),
                format!("postgres://postgres@{MACHINE}/{name}"),
                None,
            )
        } else {
            let server = PrivatePostgres::start();
            (server.admin_url(), server.url(&name), Some(server))
        };
        create_database(&admin_url, &name).await;
        PgDatabase {
            admin_url,
            name,
            url,
            _server: server,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // A runtime of its own on a thread of its own: Drop may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a test runtime");
            rt.block_on(drop_database(&admin, &name));
        })
        .join();
    }
}

fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "botfleet_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Creates `name` on the server of `admin_url`.
pub async fn create_database(admin_url: &str, name: &str) {
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
}

/// Drops `name` on the server of `admin_url`, ending its sessions.
pub async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}

/// A private PostgreSQL server; stopped (immediately) and removed on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    reservation: PortReservation,
}

impl PrivatePostgres {
    /// Initializes a cluster in a temporary directory and starts it on a free port.
    pub fn start() -> PrivatePostgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("botfleet-pg-")
            .tempdir()
            .unwrap();
        let reservation = PortReservation::bind(0).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let me = PrivatePostgres {
            bin,
            dir,
            reservation,
        };
        let data = me.data();
        me.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        me.start_again();
        me
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.reservation.port()
    }

    /// The URL of its `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port())
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port())
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port(),
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server: `immediate` is a crash (no checkpoint, connections cut).
    pub fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log_tail()
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `/usr/lib/postgresql/VERSION/bin` of the newest version installed.
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries in /usr/lib/postgresql/*/bin (scripts/test.sh installs Debian's postgresql)")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` system user.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres")).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .expect("a postgres system user (created by Debian's postgresql package)")
}
