//! Native forms of scripts: what a [`Script`](super::Script) may run as on a server that
//! has the command (see the `server` module for which servers have which).
//!
//! A script declares its native form with [`Script::with_native`](super::Script::with_native);
//! its keys and arguments must then follow the layout the form documents. Only the Redis
//! backend uses the native form, and only for a call it sends now: the fallback runs the
//! Rust twin, and an outbox entry is replayed through the script (its replay wrapper makes
//! it idempotent), so the journal and the outbox never hold a native command.
//!
//! Each form answers exactly what the script answers, and changes exactly what it changes:
//!
//! - [`Native::CompareAndSet`]: `SET key value IFEQ expected [PXAT at]`, or `SET key value NX
//!   [PXAT at]` when the key must be absent. `IFEQ` never creates a missing key, as the
//!   script does not; `SET` without an expiry clears the key's old one, as the script's
//!   does.
//! - [`Native::SetMany`]: `MSETEX n k1 v1 ... [PX ttl]`: atomic, overwrites a key of any
//!   type and clears an old expiry when given none, as the script's `SET`s do.
//! - [`Native::ExtendIfEqual`]: `SET key value IFEQ value PX ttl`: the value is unchanged
//!   and the expiry set when the key holds `value`; nothing happens otherwise.
//! - [`Native::DeleteIfEqualAnnounced`]: pipelined in one round trip, per request, `DELIFEQ
//!   key value` (or `DELEX key IFEQ value`) and then `EXISTS mark`. A release that deleted
//!   the key and found no mark is the script's uncontended release: it deletes nothing else
//!   and publishes nothing. A release that found a mark (a waiter asked to be told) then
//!   deletes the mark and publishes the notice, in a second round trip. The two commands are
//!   not one atomic step as the script is, and the outcome is still the script's: a mark
//!   that was there at the delete and gone at the check was removed by the next holder's
//!   release, which announced it, or expired with its waiter's wait; a mark that appeared in
//!   between (a waiter of a next holder) is deleted and announced too, which wakes that
//!   waiter early: it tries, fails and marks the name again. No waiter is left unannounced;
//!   at most one is woken for nothing. (A `MULTI`/`EXEC` would make the check atomic, but
//!   the client then holds back every other command of its connection around it.)
//!
//! What stays Lua: acquiring a lock and handing it over raise the fencing counter from the
//! server's clock (`TIME`) in the same atomic step as the grant, and a failed acquisition
//! sets the waiting mark; no command does that. Every other script touches several keys
//! with logic between the calls (the scheduler's steps, the guarded snapshot write, the
//! replay wrappers).

use super::server::{Commands, DeleteIfEqual};

/// A native form a script can run as (see the module doc for each form's layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Native {
    /// KEYS\[1\] the key; ARGV: `1` (compare with ARGV\[2\]) or `0` (the key must be
    /// absent), the expected value, the new value, an absolute expiry in Unix ms (`0`: none).
    /// Answers 1 when written, else 0. Needs `SET ... IFEQ`.
    CompareAndSet,
    /// KEYS the keys; ARGV\[1\] the TTL in ms (`0`: none), then one value per key. Answers
    /// the number of keys. Needs `MSETEX`.
    SetMany,
    /// KEYS\[1\] the key; ARGV the value it must hold, a TTL in ms. Answers 1 when the key
    /// held the value (its expiry is now the TTL), else 0. Needs `SET ... IFEQ`.
    ExtendIfEqual,
    /// KEYS: per request, the key and its waiting mark; ARGV: a channel, then per request
    /// the value the key must hold and a notice. Per request: deletes the key if it holds
    /// the value, and then, when the mark exists, deletes it and publishes the notice on the
    /// channel. Answers an array of 2 (deleted and announced), 1 (deleted, no mark) or 0
    /// per request. Needs `DELIFEQ` or `DELEX ... IFEQ`.
    DeleteIfEqualAnnounced,
}

/// A command family a native form needs; turned off when the server refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feature {
    SetIfEq,
    DeleteIfEqual,
    MSetEx,
}

impl Native {
    pub(crate) fn feature(self) -> Feature {
        match self {
            Native::CompareAndSet | Native::ExtendIfEqual => Feature::SetIfEq,
            Native::SetMany => Feature::MSetEx,
            Native::DeleteIfEqualAnnounced => Feature::DeleteIfEqual,
        }
    }
}

/// How a single native command's reply becomes the script's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapReply {
    /// `OK` → 1, nil → 0.
    Written,
    /// Any reply → this count.
    Count(i64),
}

/// One request of a release: key, mark, value, notice.
pub(crate) type Release = (String, String, String, String);

/// What to send for one call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// One command.
    Single {
        cmd: &'static str,
        args: Vec<String>,
        map: MapReply,
    },
    /// A transaction of conditional deletes and mark checks, then the announcements.
    Release {
        form: DeleteIfEqual,
        channel: String,
        requests: Vec<Release>,
    },
}

impl DeleteIfEqual {
    /// The command (name, arguments) that deletes `key` if it holds `value`.
    pub(crate) fn command(self, key: &str, value: &str) -> (&'static str, Vec<String>) {
        match self {
            DeleteIfEqual::DelIfEq => ("DELIFEQ", vec![key.into(), value.into()]),
            DeleteIfEqual::DelEx => ("DELEX", vec![key.into(), "IFEQ".into(), value.into()]),
        }
    }
}

/// The native plan of a call of a script whose native form is `native`, or `None` when the
/// server lacks the command (or the arguments do not fit the layout: the script then says
/// what is wrong, as it always did).
pub(crate) fn plan(
    native: Native,
    commands: &Commands,
    keys: &[&str],
    args: &[&str],
) -> Option<Plan> {
    match native {
        Native::CompareAndSet if commands.set_ifeq => {
            let ([key], [expect, expected, value, at]) = (keys, args) else {
                return None;
            };
            let mut out = vec![key.to_string(), value.to_string()];
            match *expect {
                "1" => out.extend(["IFEQ".to_string(), expected.to_string()]),
                "0" => out.push("NX".into()),
                _ => return None,
            }
            if *at != "0" {
                at.parse::<u64>().ok()?;
                out.extend(["PXAT".to_string(), at.to_string()]);
            }
            Some(Plan::Single {
                cmd: "SET",
                args: out,
                map: MapReply::Written,
            })
        }
        Native::SetMany if commands.msetex => {
            let (ttl, values) = args.split_first()?;
            if keys.is_empty() || values.len() != keys.len() {
                return None;
            }
            let ttl: u64 = ttl.parse().ok()?;
            let mut out = Vec::with_capacity(keys.len() * 2 + 3);
            out.push(keys.len().to_string());
            for (key, value) in keys.iter().zip(values) {
                out.push(key.to_string());
                out.push(value.to_string());
            }
            if ttl > 0 {
                out.extend(["PX".to_string(), ttl.to_string()]);
            }
            Some(Plan::Single {
                cmd: "MSETEX",
                args: out,
                map: MapReply::Count(keys.len() as i64),
            })
        }
        Native::ExtendIfEqual if commands.set_ifeq => {
            let ([key], [value, ttl]) = (keys, args) else {
                return None;
            };
            if ttl.parse::<u64>().ok()? == 0 {
                return None;
            }
            Some(Plan::Single {
                cmd: "SET",
                args: vec![
                    key.to_string(),
                    value.to_string(),
                    "IFEQ".into(),
                    value.to_string(),
                    "PX".into(),
                    ttl.to_string(),
                ],
                map: MapReply::Written,
            })
        }
        Native::DeleteIfEqualAnnounced => {
            let form = commands.delete_if_equal?;
            let (channel, rest) = args.split_first()?;
            if keys.is_empty() || !keys.len().is_multiple_of(2) || rest.len() != keys.len() {
                return None;
            }
            let requests = keys
                .chunks_exact(2)
                .zip(rest.chunks_exact(2))
                .map(|(k, a)| {
                    (
                        k[0].to_string(),
                        k[1].to_string(),
                        a[0].to_string(),
                        a[1].to_string(),
                    )
                })
                .collect();
            Some(Plan::Release {
                form,
                channel: channel.to_string(),
                requests,
            })
        }
        _ => None,
    }
}

/// Whether an error reply means the server does not know the command or option (so the
/// call may run as the script instead: nothing was applied).
pub(crate) fn is_unsupported(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("unknown command") || m.contains("syntax error") || m.contains("execabort")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<'a>(items: &[&'a str]) -> Vec<&'a str> {
        items.to_vec()
    }

    fn owned(items: &[&str]) -> Vec<String> {
        items.iter().map(|x| x.to_string()).collect()
    }

    const ALL: Commands = Commands {
        set_ifeq: true,
        delete_if_equal: Some(DeleteIfEqual::DelIfEq),
        msetex: true,
    };

    #[test]
    fn compare_and_set_becomes_set_ifeq_or_nx() {
        let p = plan(
            Native::CompareAndSet,
            &ALL,
            &s(&["k"]),
            &s(&["1", "old", "new", "0"]),
        );
        assert_eq!(
            p,
            Some(Plan::Single {
                cmd: "SET",
                args: owned(&["k", "new", "IFEQ", "old"]),
                map: MapReply::Written
            })
        );
        let p = plan(
            Native::CompareAndSet,
            &ALL,
            &s(&["k"]),
            &s(&["0", "", "new", "123"]),
        );
        assert_eq!(
            p,
            Some(Plan::Single {
                cmd: "SET",
                args: owned(&["k", "new", "NX", "PXAT", "123"]),
                map: MapReply::Written
            })
        );
        // Without the command, or with arguments off the layout: the script.
        let none = Commands::default();
        assert_eq!(
            plan(
                Native::CompareAndSet,
                &none,
                &s(&["k"]),
                &s(&["1", "a", "b", "0"])
            ),
            None
        );
        assert_eq!(
            plan(
                Native::CompareAndSet,
                &ALL,
                &s(&["k"]),
                &s(&["1", "a", "b", "x"])
            ),
            None
        );
    }

    #[test]
    fn set_many_becomes_msetex_and_extend_a_set_ifeq_of_the_same_value() {
        let p = plan(
            Native::SetMany,
            &ALL,
            &s(&["a", "b"]),
            &s(&["500", "1", "2"]),
        );
        assert_eq!(
            p,
            Some(Plan::Single {
                cmd: "MSETEX",
                args: owned(&["2", "a", "1", "b", "2", "PX", "500"]),
                map: MapReply::Count(2)
            })
        );
        assert_eq!(
            plan(Native::SetMany, &ALL, &s(&["a"]), &s(&["0", "1", "2"])),
            None
        );
        let p = plan(Native::ExtendIfEqual, &ALL, &s(&["l"]), &s(&["t", "900"]));
        assert_eq!(
            p,
            Some(Plan::Single {
                cmd: "SET",
                args: owned(&["l", "t", "IFEQ", "t", "PX", "900"]),
                map: MapReply::Written
            })
        );
    }

    #[test]
    fn release_pairs_keys_with_marks_and_values_with_notices() {
        let p = plan(
            Native::DeleteIfEqualAnnounced,
            &ALL,
            &s(&["l1", "m1", "l2", "m2"]),
            &s(&["ch", "t1", "n1", "t2", "n2"]),
        );
        assert_eq!(
            p,
            Some(Plan::Release {
                form: DeleteIfEqual::DelIfEq,
                channel: "ch".into(),
                requests: vec![
                    ("l1".into(), "m1".into(), "t1".into(), "n1".into()),
                    ("l2".into(), "m2".into(), "t2".into(), "n2".into()),
                ]
            })
        );
        assert_eq!(
            DeleteIfEqual::DelEx.command("k", "v"),
            ("DELEX", owned(&["k", "IFEQ", "v"]))
        );
        assert!(is_unsupported(
            "ERR unknown command 'DELIFEQ', with args beginning with: "
        ));
        assert!(is_unsupported("ERR syntax error"));
        assert!(!is_unsupported("WRONGTYPE Operation against a key"));
    }
}
