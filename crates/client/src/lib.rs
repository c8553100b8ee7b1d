//! A small blocking client for Triarch's RESP port.
//!
//! It speaks RESP2, which is all a Triarch node needs to be driven by scripts and tests; for
//! anything else use any Redis client (redis-cli, redis-py, ...), which work unmodified.
//!
//! Errors keep apart what a Jepsen-style client must: a request that could not be sent at all
//! ([`ClientError::Connect`]) certainly did not happen; anything after the request left
//! ([`ClientError::Timeout`], [`ClientError::Io`]) is unknown.
//!
//! ```no_run
//! let mut c = triarch_client::Client::connect("127.0.0.1:6379").unwrap();
//! c.set("k", "v").unwrap();
//! assert_eq!(c.get("k").unwrap().as_deref(), Some(&b"v"[..]));
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A reply as the server sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection: the request was never sent.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// No reply within the timeout.
    #[error("timeout")]
    Timeout,
    /// The connection failed after the request was sent.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The server answered with an error reply (`-CODE message`); only from the typed helpers
    /// and [`Client::call_ok`].
    #[error("server error: {0}")]
    Server(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The error code of a server error (`QUORUM`, `ERR`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server(s) => s.split_whitespace().next(),
            _ => None,
        }
    }
}

/// How long [`Client::connect`] waits to connect and for each reply.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to the first address that answers, with [`TIMEOUT_DEFAULT`] for the connection
    /// and for every reply.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let mut last = None;
        for a in addr.to_socket_addrs().map_err(ClientError::Connect)? {
            match Client::connect_timeout(a, TIMEOUT_DEFAULT, TIMEOUT_DEFAULT) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Connect(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no address to connect to",
            ))
        }))
    }

    /// Connects within `connect_timeout`; every later reply must arrive within `reply_timeout`.
    pub fn connect_timeout(
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream =
            TcpStream::connect_timeout(&addr, connect_timeout).map_err(ClientError::Connect)?;
        let setup = || -> std::io::Result<Client> {
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(reply_timeout))?;
            stream.set_write_timeout(Some(reply_timeout))?;
            Ok(Client {
                reader: BufReader::new(stream.try_clone()?),
                writer: stream.try_clone()?,
            })
        };
        setup().map_err(ClientError::Connect)
    }

    /// Sends one command and reads its reply (an error reply is `Ok(Value::Error)`).
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ClientError> {
        self.writer.write_all(&encode(args)).map_err(io_error)?;
        self.read_reply()
    }

    /// Sends every command in one write (the server steps a pipelined burst as one batch),
    /// then reads their replies, in order.
    pub fn pipeline<A: AsRef<[u8]>>(
        &mut self,
        commands: &[Vec<A>],
    ) -> Result<Vec<Value>, ClientError> {
        let mut out = Vec::new();
        for command in commands {
            out.extend_from_slice(&encode(command));
        }
        self.writer.write_all(&out).map_err(io_error)?;
        commands.iter().map(|_| self.read_reply()).collect()
    }

    /// Like [`Client::call`], but an error reply becomes `Err(ClientError::Server)`.
    pub fn call_ok<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ClientError> {
        match self.call(args)? {
            Value::Error(e) => Err(ClientError::Server(e)),
            v => Ok(v),
        }
    }

    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, ClientError> {
        match self.call_ok(&[b"GET".as_ref(), key.as_ref()])? {
            Value::Bulk(b) => Ok(Some(b)),
            Value::Nil => Ok(None),
            other => Err(ClientError::Protocol(format!("GET answered {other:?}"))),
        }
    }

    pub fn set(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), ClientError> {
        match self.call_ok(&[b"SET".as_ref(), key.as_ref(), value.as_ref()])? {
            Value::Simple(s) if s == "OK" => Ok(()),
            other => Err(ClientError::Protocol(format!("SET answered {other:?}"))),
        }
    }

    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line).map_err(io_error)?;
        if n == 0 {
            return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(ClientError::Protocol(format!(
                "unterminated line {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn read_reply(&mut self) -> Result<Value, ClientError> {
        let line = self.read_line()?;
        let Some(kind) = line.chars().next() else {
            return Err(ClientError::Protocol("empty reply line".into()));
        };
        let rest = &line[kind.len_utf8()..];
        let length = |s: &str| {
            s.parse::<i64>()
                .ok()
                .filter(|&n| n <= LENGTH_MAX)
                .ok_or_else(|| ClientError::Protocol(format!("bad length {s:?}")))
        };
        match kind {
            '+' => Ok(Value::Simple(rest.to_string())),
            '-' => Ok(Value::Error(rest.to_string())),
            ':' => rest
                .parse()
                .map(Value::Integer)
                .map_err(|_| ClientError::Protocol(format!("bad integer {rest:?}"))),
            '$' => {
                let n = length(rest)?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                let mut buf = vec![0; n as usize + 2];
                self.reader.read_exact(&mut buf).map_err(io_error)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(ClientError::Protocol("bulk string without CRLF".into()));
                }
                buf.truncate(n as usize);
                Ok(Value::Bulk(buf))
            }
            '*' => {
                let n = length(rest)?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                (0..n)
                    .map(|_| self.read_reply())
                    .collect::<Result<_, _>>()
                    .map(Value::Array)
            }
            _ => Err(ClientError::Protocol(format!(
                "unexpected reply line {line:?}"
            ))),
        }
    }
}

/// Bulk strings and arrays larger than this are refused (the workload's values are integers).
const LENGTH_MAX: i64 = 64 << 20;

fn io_error(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server that answers whatever `reply` says, after reading one command.
    fn serve(reply: &'static [u8], delay: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0; 256];
            let _ = s.read(&mut buf);
            std::thread::sleep(delay);
            let _ = s.write_all(reply);
            std::thread::sleep(Duration::from_millis(200));
        });
        addr
    }

    fn call(reply: &'static [u8], delay: Duration) -> Result<Value, ClientError> {
        let addr = serve(reply, delay);
        let mut c =
            Client::connect_timeout(addr, Duration::from_secs(1), Duration::from_millis(300))?;
        c.call(&["GET", "k"])
    }

    #[test]
    fn encodes_commands_as_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&["SET", "k", "12"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
        );
    }

    #[test]
    fn decodes_replies() {
        let z = Duration::ZERO;
        assert_eq!(
            call(b"$2\r\n12\r\n", z).unwrap(),
            Value::Bulk(b"12".to_vec())
        );
        assert_eq!(call(b"$-1\r\n", z).unwrap(), Value::Nil);
        assert_eq!(call(b"+OK\r\n", z).unwrap(), Value::Simple("OK".into()));
        assert_eq!(
            call(b"-QUORUM not enough replicas\r\n", z).unwrap(),
            Value::Error("QUORUM not enough replicas".into())
        );
        assert_eq!(
            call(b"*2\r\n:1\r\n$-1\r\n", z).unwrap(),
            Value::Array(vec![Value::Integer(1), Value::Nil])
        );
        assert!(matches!(call(b"?\r\n", z), Err(ClientError::Protocol(_))));
        assert!(matches!(call(b"", z), Err(ClientError::Io(_))));
    }

    #[test]
    fn a_pipeline_sends_every_command_then_reads_every_reply() {
        let addr = serve(b"+OK\r\n:2\r\n", Duration::ZERO);
        let mut c =
            Client::connect_timeout(addr, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let replies = c
            .pipeline(&[vec!["SET", "k", "v"], vec!["SADD", "s", "a"]])
            .unwrap();
        assert_eq!(replies, [Value::Simple("OK".into()), Value::Integer(2)]);
    }

    #[test]
    fn a_slow_reply_is_a_timeout_and_a_closed_port_a_connect_error() {
        assert!(matches!(
            call(b"+OK\r\n", Duration::from_secs(1)),
            Err(ClientError::Timeout)
        ));
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(matches!(
            Client::connect_timeout(closed, Duration::from_secs(1), Duration::from_secs(1)),
            Err(ClientError::Connect(_))
        ));
    }
}
