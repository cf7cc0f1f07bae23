//! A real headless Chromium, driven over the DevTools protocol through a pair of pipes
//! (`--remote-debugging-pipe`: the browser reads commands on fd 3 and writes replies and events
//! on fd 4, each message JSON followed by a NUL byte). No WebSocket and no client library: the
//! dashboard test needs to open a page, evaluate expressions in it and take a screenshot.
//!
//! ```ignore
//! let browser = Browser::launch((1280, 900))?;
//! let page = browser.open("http://127.0.0.1:8080/")?;
//! assert_eq!(page.eval_string("document.title"), "botfleet");
//! std::fs::write("page.png", page.screenshot()?)?;
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::poll_until;

/// Debian's Chromium, which `scripts/test.sh` installs where it is missing.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest wait for the answer to one command.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium process and its DevTools pipes; killed on drop.
pub struct Browser {
    child: Child,
    commands: Mutex<File>,
    /// Replies by command id; events (messages without an id) are dropped.
    replies: Mutex<(Receiver<Value>, HashMap<u64, Value>)>,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

/// A tab of the browser, attached with its own DevTools session.
pub struct Page<'b> {
    browser: &'b Browser,
    session: String,
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and a window of `size` (width, height).
    pub fn launch(size: (u32, u32)) -> io::Result<Browser> {
        if !Path::new(CHROMIUM).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{CHROMIUM} is missing: install Debian's chromium package (scripts/test.sh does)"),
            ));
        }
        let profile = tempfile::tempdir()?;
        let (to_browser_read, to_browser_write) = pipe()?;
        let (from_browser_read, from_browser_write) = pipe()?;
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            // This machine's network is closed: no background connections, updates or sync.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--remote-debugging-pipe",
            &format!("--window-size={},{}", size.0, size.1),
            &format!("--user-data-dir={}", profile.path().display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let (read_fd, write_fd) = (raw(&to_browser_read), raw(&from_browser_write));
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) on
        // descriptors this process owns; they put the pipe ends at fds 3 and 4, where the
        // browser expects them (first moved above 4, so neither overwrites the other).
        unsafe {
            cmd.pre_exec(move || {
                let high_read = check(libc::fcntl(read_fd, libc::F_DUPFD, 10))?;
                let high_write = check(libc::fcntl(write_fd, libc::F_DUPFD, 10))?;
                check(libc::dup2(high_read, 3))?;
                check(libc::dup2(high_write, 4))?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // The child holds its own copies; ours close here, so the browser's exit ends the reads.
        drop((to_browser_read, from_browser_write));
        let (tx, rx) = mpsc::channel();
        let mut reader = BufReader::new(File::from(from_browser_read));
        std::thread::spawn(move || loop {
            let mut message = Vec::new();
            match reader.read_until(0, &mut message) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    message.pop_if(|b| *b == 0);
                    if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Browser {
            child,
            commands: Mutex::new(File::from(to_browser_write)),
            replies: Mutex::new((rx, HashMap::new())),
            next_id: AtomicU64::new(1),
            _profile: profile,
        })
    }

    /// Opens `url` in a new tab and waits until the document has loaded.
    pub fn open(&self, url: &str) -> io::Result<Page<'_>> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().unwrap_or_default();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        let page = Page {
            browser: self,
            session: attached["sessionId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        page.call("Page.navigate", json!({ "url": url }))?;
        poll_until(CALL_TIMEOUT, || {
            page.eval_string("document.readyState") == "complete"
        })
        .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, format!("{url} did not load: {e}")))?;
        Ok(page)
    }

    /// Sends one command (to the browser, or to a page's session) and waits for its reply:
    /// its `result`, or its `error` as an I/O error.
    fn call(&self, session: Option<&str>, method: &str, params: Value) -> io::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        {
            let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
            let mut bytes = serde_json::to_vec(&message)?;
            bytes.push(0);
            commands.write_all(&bytes)?;
            commands.flush()?;
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let (rx, early) = &mut *replies;
        let reply = loop {
            if let Some(reply) = early.remove(&id) {
                break reply;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(value) => {
                    if let Some(other) = value["id"].as_u64() {
                        early.insert(other, value);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{method}: no reply"),
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("{method}: the browser exited"),
                    ))
                }
            }
        };
        if let Some(error) = reply.get("error") {
            return Err(io::Error::other(format!("{method}: {error}")));
        }
        Ok(reply["result"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page<'_> {
    fn call(&self, method: &str, params: Value) -> io::Result<Value> {
        self.browser.call(Some(&self.session), method, params)
    }

    /// The value of `expression` in the page, as text (a string as is, anything else as
    /// JSON); empty when it throws or cannot be evaluated, so that a poll simply goes on.
    pub fn eval_string(&self, expression: &str) -> String {
        let params = json!({ "expression": expression, "returnByValue": true });
        match self.call("Runtime.evaluate", params) {
            Ok(result) if result.get("exceptionDetails").is_none() => {
                match &result["result"]["value"] {
                    Value::String(text) => text.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                }
            }
            _ => String::new(),
        }
    }

    /// A PNG screenshot of the page as it is shown.
    pub fn screenshot(&self) -> io::Result<Vec<u8>> {
        let result = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().unwrap_or_default())
            .map_err(io::Error::other)
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which we then own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

fn check(rc: i32) -> io::Result<i32> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
