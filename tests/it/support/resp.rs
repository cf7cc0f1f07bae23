//! A minimal RESP2 client: encode one command, parse one reply. Tests use it to look at a
//! server directly, so an assertion never depends on the botfleet code under test.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Redis refuses bulk strings above 512 MiB; a larger length means a corrupt stream.
const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`, the whole message after the `-`.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<RespValue>),
}

impl RespValue {
    /// A bulk string, for comparisons: `assert_eq!(reply, RespValue::bulk("v"))`.
    pub fn bulk(value: impl AsRef<[u8]>) -> Self {
        Self::Bulk(value.as_ref().to_vec())
    }

    /// The text of a simple or (UTF-8) bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Simple(s) => Some(s),
            Self::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }

    /// `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Simple(s) if s == "OK")
    }

    /// `$-1` or `*-1`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Self::Nil)
    }

    /// An error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Error(_))
    }
}

/// `args` as a RESP array of bulk strings, the form every Redis command takes.
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads exactly one reply from `reader`.
pub fn read_value(reader: &mut impl BufRead) -> io::Result<RespValue> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Ok(RespValue::Simple(rest.to_owned())),
        "-" => Ok(RespValue::Error(rest.to_owned())),
        ":" => Ok(RespValue::Integer(parse_int(rest)?)),
        "$" => match parse_len(rest)? {
            None => Ok(RespValue::Nil),
            Some(len) if len > MAX_BULK_LEN => Err(invalid(format!("bulk of {len} bytes"))),
            Some(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(invalid("bulk string not followed by CRLF".into()));
                }
                data.truncate(len);
                Ok(RespValue::Bulk(data))
            }
        },
        "*" => match parse_len(rest)? {
            None => Ok(RespValue::Nil),
            Some(len) => (0..len)
                .map(|_| read_value(reader))
                .collect::<io::Result<_>>()
                .map(RespValue::Array),
        },
        _ => Err(invalid(format!("unknown RESP2 type in line {line:?}"))),
    }
}

/// Sends one command to `addr` over a fresh connection and reads its reply. `timeout` bounds
/// the connect, the write and the read separately.
pub fn send_command(addr: SocketAddr, args: &[&str], timeout: Duration) -> io::Result<RespValue> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(&encode_command(args))?;
    read_value(&mut BufReader::new(stream))
}

/// Sends several commands to `addr` on one fresh connection (so `AUTH` or `ASKING` applies to
/// the ones after it) and returns the reply to the last. `timeout` bounds each step.
pub fn send_commands(
    addr: SocketAddr,
    commands: &[&[&str]],
    timeout: Duration,
) -> io::Result<RespValue> {
    Ok(send_pipeline(addr, commands, timeout)?
        .pop()
        .unwrap_or(RespValue::Nil))
}

/// Sends several commands to `addr` on one fresh connection, all before reading, and returns
/// every reply in order. `timeout` bounds each step.
pub fn send_pipeline<A: AsRef<[S]>, S: AsRef<str>>(
    addr: SocketAddr,
    commands: &[A],
    timeout: Duration,
) -> io::Result<Vec<RespValue>> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut out = Vec::new();
    for args in commands {
        let args: Vec<&str> = args.as_ref().iter().map(AsRef::as_ref).collect();
        out.extend(encode_command(&args));
    }
    stream.write_all(&out)?;
    let mut reader = BufReader::new(stream);
    commands.iter().map(|_| read_value(&mut reader)).collect()
}

/// One line without its CRLF; an empty stream is `UnexpectedEof`.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    match line.strip_suffix("\r\n") {
        Some(body) if !body.is_empty() => Ok(body.to_owned()),
        _ => Err(invalid(format!("malformed RESP line {line:?}"))),
    }
}

fn parse_int(text: &str) -> io::Result<i64> {
    text.parse()
        .map_err(|_| invalid(format!("bad integer {text:?}")))
}

/// A bulk or array length: `None` for -1 (nil), an error for any other negative number.
fn parse_len(text: &str) -> io::Result<Option<usize>> {
    match parse_int(text)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| invalid(format!("bad length {n}"))),
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
