//! A blocking RESP2 connection with connect and reply timeouts.
//!
//! `triarch_client::Client` has no timeouts to set (it waits 10 s for any reply), and a Jepsen
//! client must give up on its own schedule and record the operation as `info`; so the workload
//! speaks RESP through this small connection instead. What separates outcomes matters here: a
//! request that could not be sent at all ([`CallError::Connect`]) certainly did not happen,
//! anything after the request left is unknown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A reply as the server sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

#[derive(Debug)]
pub enum CallError {
    /// No connection: the request was never sent.
    Connect(std::io::Error),
    /// No reply within the timeout.
    Timeout,
    /// The connection failed after the request was sent.
    Io(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(e) => write!(f, "connect: {e}"),
            CallError::Timeout => f.write_str("timeout"),
            CallError::Io(e) => write!(f, "i/o: {e}"),
            CallError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

/// Bulk strings and arrays larger than this are refused (the workload's values are integers).
const LENGTH_MAX: i64 = 64 << 20;

pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects within `connect_timeout`; every later reply must arrive within `reply_timeout`.
    pub fn connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Conn, CallError> {
        let stream =
            TcpStream::connect_timeout(&addr, connect_timeout).map_err(CallError::Connect)?;
        let setup = || -> std::io::Result<Conn> {
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(reply_timeout))?;
            stream.set_write_timeout(Some(reply_timeout))?;
            Ok(Conn {
                reader: BufReader::new(stream.try_clone()?),
                writer: stream.try_clone()?,
            })
        };
        setup().map_err(CallError::Connect)
    }

    /// Sends one command and reads its reply (an error reply is `Ok(Reply::Error)`).
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, CallError> {
        self.writer.write_all(&encode(args)).map_err(io_error)?;
        self.read_reply()
    }

    fn read_line(&mut self) -> Result<String, CallError> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line).map_err(io_error)?;
        if n == 0 {
            return Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(CallError::Protocol(format!(
                "unterminated line {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|e| CallError::Protocol(e.to_string()))
    }

    fn read_reply(&mut self) -> Result<Reply, CallError> {
        let line = self.read_line()?;
        let Some(kind) = line.chars().next() else {
            return Err(CallError::Protocol("empty reply line".into()));
        };
        let rest = &line[kind.len_utf8()..];
        let length = |s: &str| {
            s.parse::<i64>()
                .ok()
                .filter(|&n| n <= LENGTH_MAX)
                .ok_or_else(|| CallError::Protocol(format!("bad length {s:?}")))
        };
        match kind {
            '+' => Ok(Reply::Simple(rest.to_string())),
            '-' => Ok(Reply::Error(rest.to_string())),
            ':' => rest
                .parse()
                .map(Reply::Integer)
                .map_err(|_| CallError::Protocol(format!("bad integer {rest:?}"))),
            '$' => {
                let n = length(rest)?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                let mut buf = vec![0; n as usize + 2];
                self.reader.read_exact(&mut buf).map_err(io_error)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(CallError::Protocol("bulk string without CRLF".into()));
                }
                buf.truncate(n as usize);
                Ok(Reply::Bulk(buf))
            }
            '*' => {
                let n = length(rest)?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                (0..n)
                    .map(|_| self.read_reply())
                    .collect::<Result<_, _>>()
                    .map(Reply::Array)
            }
            _ => Err(CallError::Protocol(format!(
                "unexpected reply line {line:?}"
            ))),
        }
    }
}

fn io_error(e: std::io::Error) -> CallError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CallError::Timeout,
        _ => CallError::Io(e),
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

    fn call(reply: &'static [u8], delay: Duration) -> Result<Reply, CallError> {
        let addr = serve(reply, delay);
        let mut c = Conn::connect(addr, Duration::from_secs(1), Duration::from_millis(300))?;
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
            Reply::Bulk(b"12".to_vec())
        );
        assert_eq!(call(b"$-1\r\n", z).unwrap(), Reply::Nil);
        assert_eq!(call(b"+OK\r\n", z).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            call(b"-QUORUM not enough replicas\r\n", z).unwrap(),
            Reply::Error("QUORUM not enough replicas".into())
        );
        assert_eq!(
            call(b"*2\r\n:1\r\n$-1\r\n", z).unwrap(),
            Reply::Array(vec![Reply::Integer(1), Reply::Nil])
        );
        assert!(matches!(call(b"?\r\n", z), Err(CallError::Protocol(_))));
        assert!(matches!(call(b"", z), Err(CallError::Io(_))));
    }

    #[test]
    fn a_slow_reply_is_a_timeout_and_a_closed_port_a_connect_error() {
        assert!(matches!(
            call(b"+OK\r\n", Duration::from_secs(1)),
            Err(CallError::Timeout)
        ));
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(matches!(
            Conn::connect(closed, Duration::from_secs(1), Duration::from_secs(1)),
            Err(CallError::Connect(_))
        ));
    }
}
