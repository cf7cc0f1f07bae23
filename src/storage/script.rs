//! Scripts: one operation that touches several keys atomically, written twice — in Lua for
//! Redis and in Rust for the fallback — and tested to answer alike.

use std::sync::Arc;

use super::keyspace::{Keyspace, LocalError};
use super::native::Native;
use super::op::{Reply, ScriptRef};

/// The Rust side of a script: runs against the fallback keyspace with the same keys and
/// arguments as the Lua side, under the keyspace lock (so it is atomic too).
pub type LocalScript =
    fn(&mut Keyspace, now_ms: u64, keys: &[String], args: &[String]) -> Result<Reply, LocalError>;

/// A script known to the storage handle.
#[derive(Clone)]
pub struct Script {
    pub(crate) reference: ScriptRef,
    pub(crate) local: LocalScript,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.reference.name)
            .field("sha", &self.reference.sha)
            .finish()
    }
}

impl Script {
    /// A script named `name` (for logs), with its Lua source and its fallback implementation.
    /// Keys that the script touches together must share a hash tag on Redis Cluster.
    pub fn new(name: &str, lua: &str, local: LocalScript) -> Self {
        Self {
            reference: ScriptRef {
                name: Arc::from(name),
                lua: Arc::from(lua),
                sha: Arc::from(sha1_hex(lua)),
                native: None,
            },
            local,
        }
    }

    /// The same script, run as the native command `native` on a server that has it (the
    /// script elsewhere, on the fallback and in the replay). The script's keys and arguments
    /// must follow the layout [`Native`] documents for that form, and the Lua must do
    /// exactly what the form does: the `native_commands` suite holds the two alike.
    pub fn with_native(mut self, native: Native) -> Self {
        self.reference.native = Some(native);
        self
    }

    /// The native form of the script, if it has one.
    pub fn native(&self) -> Option<Native> {
        self.reference.native
    }

    /// The script's name.
    pub fn name(&self) -> &str {
        &self.reference.name
    }

    /// SHA-1 of the Lua source.
    pub fn sha(&self) -> &str {
        &self.reference.sha
    }

    /// The Lua source.
    pub fn lua(&self) -> &str {
        &self.reference.lua
    }
}

/// SHA-1 as lowercase hex (the digest `SCRIPT LOAD` answers).
pub(crate) fn sha1_hex(text: &str) -> String {
    fred::util::sha1_hash(text)
}
