//! A small blocking client for Triarch's RESP port.
//!
//! It speaks RESP2, which is all a Triarch node needs to be driven by scripts and tests; for
//! anything else use any Redis client (redis-cli, redis-py, ...), which work unmodified.
//!
//! ```no_run
//! let mut c = triarch_client::Client::connect("127.0.0.1:6379").unwrap();
//! c.set("k", "v").unwrap();
//! assert_eq!(c.get("k").unwrap().as_deref(), Some(&b"v"[..]));
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
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
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error reply (`-CODE message`).
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

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command and reads its reply (error replies are returned as `Value::Error`).
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, ClientError> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        self.read_value()
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
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Protocol("connection closed".into()));
        }
        if !line.ends_with("\r\n") {
            return Err(ClientError::Protocol(format!("unterminated line {line:?}")));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_value(&mut self) -> Result<Value, ClientError> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| ClientError::Protocol(format!("bad length {s:?}")))
        };
        match kind {
            "+" => Ok(Value::Simple(rest.to_string())),
            "-" => Ok(Value::Error(rest.to_string())),
            ":" => Ok(Value::Integer(int(rest)?)),
            "$" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                let mut buf = vec![0; n as usize + 2];
                self.reader.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Ok(Value::Bulk(buf))
            }
            "*" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Value::Nil);
                }
                (0..n)
                    .map(|_| self.read_value())
                    .collect::<Result<_, _>>()
                    .map(Value::Array)
            }
            _ => Err(ClientError::Protocol(format!(
                "unexpected reply line {line:?}"
            ))),
        }
    }
}
