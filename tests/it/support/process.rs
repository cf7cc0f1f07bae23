//! Child processes that cannot outlive the test process, and `/proc` checks of liveness.
//!
//! `Drop` cleans up after a test that passes or panics, but not after one that is killed
//! (nextest's `terminate-after`, a SIGKILL, an abort). For those, every child is started with
//! `PR_SET_PDEATHSIG = SIGKILL`: the kernel kills it when its parent dies. The "parent" the
//! kernel watches is the *thread* that forked, so all children are forked by one spawner
//! thread that lives as long as the process; a test thread that starts a server and ends
//! (or a runtime worker that restarts one) does not take the server down with it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the thread that forks every child; it lives until the process exits.
fn spawner() -> &'static mpsc::Sender<Job> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("test-child-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            // A test helper: without a thread nothing can be started at all.
            .expect("start the child-spawner thread");
        tx
    })
}

/// Spawns `cmd` so that the kernel SIGKILLs the child when this test process dies, however it
/// dies.
pub fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe
    // syscalls; it neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would kill us.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::sync_channel(1);
    spawner()
        .send(Box::new(move || {
            // The receiver waits below; if it is gone there is nobody to tell.
            let _ = tx.send(cmd.spawn());
        }))
        .map_err(|_| io::Error::other("the child-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the child-spawner thread dropped the request"))?
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `T` stopped, `Z` zombie, ...), or `None`
/// when there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` is a live process: it exists and is not a zombie waiting to be reaped.
pub fn process_is_alive(pid: u32) -> bool {
    matches!(process_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Whether our child `pid` has exited, without reaping it (so `Child::wait` still works).
pub fn child_has_exited(pid: u32) -> bool {
    // SAFETY: waitid writes only into `info`, a zeroed local of the right type.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        if libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) != 0 {
            // ECHILD: not (or no longer) our child, so certainly not running for us.
            return true;
        }
        info.si_pid() != 0
    }
}

/// Runs the built `botfleet` binary with `args` in `dir`, in a cleared environment holding
/// only `vars` (so a developer's own variables cannot interfere), and waits for it.
pub fn run_botfleet(
    dir: &std::path::Path,
    args: &[&str],
    vars: &[(&str, &str)],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run the built botfleet binary")
}
