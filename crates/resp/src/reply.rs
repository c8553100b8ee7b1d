//! Replies and their encoding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ProtocolError;
use crate::number::{format_double, put_decimal, put_i64};

/// The protocol version a connection speaks, chosen by the client with `HELLO`.
///
/// Every connection starts on RESP2, as in redis; RESP3 adds types (maps, sets, doubles,
/// booleans, a distinct null) that RESP2 clients would not understand, so each reply is
/// encoded for the connection's version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

impl Protocol {
    /// The version for a `HELLO <protover>` argument, or `None` if unsupported (redis
    /// answers that with `-NOPROTO unsupported protocol version`).
    pub fn from_version(version: i64) -> Option<Self> {
        match version {
            2 => Some(Self::Resp2),
            3 => Some(Self::Resp3),
            _ => None,
        }
    }

    /// The version number, as reported by `HELLO`'s `proto` field.
    pub fn version(self) -> u8 {
        match self {
            Self::Resp2 => 2,
            Self::Resp3 => 3,
        }
    }
}

/// A reply to a client, in protocol-independent form.
///
/// Build it with RESP3's vocabulary and let [`encode`](Self::encode) downgrade it for RESP2
/// clients exactly as redis does, so command implementations never branch on the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A status reply such as `OK`: `+OK`. CR and LF are encoded as spaces (a simple string is
    /// one line by definition), so a stray newline cannot split the frame.
    Simple(Bytes),
    /// An error, including its code: `Error("ERR unknown command")` encodes as
    /// `-ERR unknown command`. CR and LF are encoded as spaces, as for [`Reply::Simple`].
    Error(Bytes),
    /// `:<n>`.
    Integer(i64),
    /// A binary-safe string: `$<len>`.
    Bulk(Bytes),
    /// The absence of a value, e.g. `GET` of a missing key. RESP3 `_`; RESP2 null bulk
    /// string `$-1`.
    Null,
    /// The absence of an array, e.g. an `EXEC` that was aborted. RESP3 `_`; RESP2 null
    /// array `*-1`.
    NullArray,
    /// `*<n>` followed by the elements.
    Array(Vec<Reply>),
    /// Key-value pairs. RESP3 `%<n>`; RESP2 an array of `2n` alternating keys and values.
    Map(Vec<(Reply, Reply)>),
    /// An unordered collection. RESP3 `~<n>`; RESP2 an array.
    Set(Vec<Reply>),
    /// Out-of-band data such as pub/sub messages. RESP3 `><n>`; RESP2 an array.
    Push(Vec<Reply>),
    /// RESP3 `,<double>`; RESP2 a bulk string of the same text. Formatted as redis does:
    /// `3.14`, `1`, `inf`, `-inf`, `nan`, `1e+300`.
    Double(f64),
    /// RESP3 `#t`/`#f`; RESP2 the integer 1 or 0.
    Boolean(bool),
    /// An integer beyond 64 bits, as decimal text. RESP3 `(<digits>`; RESP2 a bulk string.
    /// CR and LF are encoded as spaces.
    BigNumber(Bytes),
    /// Text meant for people, with a three-byte format such as `txt` or `mkd`. RESP3
    /// `=<len>` with `<format>:` before the text; RESP2 a bulk string of the text alone.
    Verbatim {
        /// The format, e.g. `*b"txt"`.
        format: [u8; 3],
        /// The text.
        text: Bytes,
    },
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Self {
        Self::Simple(Bytes::from_static(b"OK"))
    }

    /// `+PONG`.
    pub fn pong() -> Self {
        Self::Simple(Bytes::from_static(b"PONG"))
    }

    /// A status reply.
    pub fn simple(text: impl Into<Bytes>) -> Self {
        Self::Simple(text.into())
    }

    /// An error; `text` starts with the error code, e.g. `Reply::error("ERR syntax error")`
    /// or `Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value")`.
    pub fn error(text: impl Into<Bytes>) -> Self {
        Self::Error(text.into())
    }

    /// The `-ERR Protocol error: ...` reply redis sends before closing a connection whose
    /// request stream could not be decoded.
    pub fn protocol_error(error: &ProtocolError) -> Self {
        Self::Error(Bytes::from(format!("ERR {error}")))
    }

    /// A bulk string.
    pub fn bulk(data: impl Into<Bytes>) -> Self {
        Self::Bulk(data.into())
    }

    /// A bulk string, or [`Reply::Null`] for `None` (the shape of `GET`).
    pub fn bulk_or_null(data: Option<impl Into<Bytes>>) -> Self {
        data.map_or(Self::Null, Self::bulk)
    }

    /// An array of replies.
    pub fn array(items: impl IntoIterator<Item = Reply>) -> Self {
        Self::Array(items.into_iter().collect())
    }

    /// Verbatim plain text (`txt`).
    pub fn verbatim_text(text: impl Into<Bytes>) -> Self {
        Self::Verbatim {
            format: *b"txt",
            text: text.into(),
        }
    }

    /// Appends this reply to `out`, encoded for `protocol`.
    ///
    /// Allocates nothing besides growing `out`: numbers are formatted on the stack, and
    /// nested replies are written in place.
    pub fn encode(&self, out: &mut BytesMut, protocol: Protocol) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Self::Simple(text) => put_line(out, b'+', text),
            Self::Error(text) => put_line(out, b'-', text),
            Self::Integer(value) => {
                out.put_u8(b':');
                put_i64(out, *value);
                out.put_slice(b"\r\n");
            }
            Self::Bulk(data) => put_bulk(out, data),
            Self::Null if resp3 => out.put_slice(b"_\r\n"),
            Self::Null => out.put_slice(b"$-1\r\n"),
            Self::NullArray if resp3 => out.put_slice(b"_\r\n"),
            Self::NullArray => out.put_slice(b"*-1\r\n"),
            Self::Array(items) => put_aggregate(out, b'*', items, protocol),
            Self::Set(items) => {
                put_aggregate(out, if resp3 { b'~' } else { b'*' }, items, protocol)
            }
            Self::Push(items) => {
                put_aggregate(out, if resp3 { b'>' } else { b'*' }, items, protocol)
            }
            Self::Map(pairs) => {
                if resp3 {
                    put_header(out, b'%', pairs.len());
                } else {
                    put_header(out, b'*', pairs.len().saturating_mul(2));
                }
                for (key, value) in pairs {
                    key.encode(out, protocol);
                    value.encode(out, protocol);
                }
            }
            Self::Double(value) => {
                let text = format_double(*value);
                if resp3 {
                    out.put_u8(b',');
                    out.put_slice(text.as_bytes());
                    out.put_slice(b"\r\n");
                } else {
                    put_bulk(out, text.as_bytes());
                }
            }
            Self::Boolean(value) if resp3 => {
                out.put_slice(if *value { b"#t\r\n" } else { b"#f\r\n" });
            }
            Self::Boolean(value) => out.put_slice(if *value { b":1\r\n" } else { b":0\r\n" }),
            Self::BigNumber(digits) if resp3 => put_line(out, b'(', digits),
            Self::BigNumber(digits) => put_bulk(out, digits),
            Self::Verbatim { format, text } if resp3 => {
                out.reserve(text.len() + 32);
                put_header(out, b'=', text.len().saturating_add(4));
                out.put_slice(format);
                out.put_u8(b':');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Self::Verbatim { text, .. } => put_bulk(out, text),
        }
    }

    /// This reply encoded for `protocol` in a buffer of its own; a convenience for tests and
    /// one-off replies.
    pub fn to_bytes(&self, protocol: Protocol) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out, protocol);
        out
    }
}

impl From<&ProtocolError> for Reply {
    fn from(error: &ProtocolError) -> Self {
        Self::protocol_error(error)
    }
}

/// `<prefix><len>\r\n`.
fn put_header(out: &mut BytesMut, prefix: u8, len: usize) {
    out.put_u8(prefix);
    put_decimal(out, len as u64);
    out.put_slice(b"\r\n");
}

/// `$<len>\r\n<data>\r\n`.
fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    // Header (at most 24 bytes), payload and terminator in one reservation.
    out.reserve(data.len() + 26);
    put_header(out, b'$', data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn put_aggregate(out: &mut BytesMut, prefix: u8, items: &[Reply], protocol: Protocol) {
    put_header(out, prefix, items.len());
    for item in items {
        item.encode(out, protocol);
    }
}

/// `<prefix><text>\r\n` for line-based types, with CR and LF replaced by spaces. Redis does
/// the same for error messages; a line type cannot carry them, and emitting them would let
/// the rest of the text be parsed as further replies.
fn put_line(out: &mut BytesMut, prefix: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    let mut rest = text;
    while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        out.put_slice(&rest[..i]);
        out.put_u8(b' ');
        rest = &rest[i + 1..];
    }
    out.put_slice(rest);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::{Resp2, Resp3};

    fn check(reply: Reply, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            &reply.to_bytes(Resp2)[..],
            resp2,
            "RESP2 {reply:?}: {:?}",
            String::from_utf8_lossy(&reply.to_bytes(Resp2))
        );
        assert_eq!(
            &reply.to_bytes(Resp3)[..],
            resp3,
            "RESP3 {reply:?}: {:?}",
            String::from_utf8_lossy(&reply.to_bytes(Resp3))
        );
    }

    fn same(reply: Reply, both: &[u8]) {
        check(reply, both, both);
    }

    #[test]
    fn simple_strings_and_errors() {
        same(Reply::ok(), b"+OK\r\n");
        same(Reply::pong(), b"+PONG\r\n");
        same(Reply::simple("QUEUED"), b"+QUEUED\r\n");
        same(Reply::simple(""), b"+\r\n");
        same(Reply::error("ERR syntax error"), b"-ERR syntax error\r\n");
        same(
            Reply::error(String::from("WRONGTYPE Operation")),
            b"-WRONGTYPE Operation\r\n",
        );
    }

    #[test]
    fn line_types_sanitise_cr_and_lf() {
        same(Reply::simple("a\r\nb\nc\r"), b"+a  b c \r\n");
        same(Reply::error("ERR bad\r\n+OK\r\n"), b"-ERR bad  +OK  \r\n");
        check(
            Reply::BigNumber(Bytes::from_static(b"12\r\n3")),
            b"$5\r\n12\r\n3\r\n",
            b"(12  3\r\n",
        );
    }

    #[test]
    fn protocol_error_reply() {
        same(
            Reply::protocol_error(&ProtocolError::ExpectedBulk { got: b'x' }),
            b"-ERR Protocol error: expected '$', got 'x'\r\n",
        );
        same(
            Reply::from(&ProtocolError::ExpectedBulk { got: b'\n' }),
            b"-ERR Protocol error: expected '$', got '\\x0a'\r\n",
        );
    }

    #[test]
    fn integers() {
        same(Reply::Integer(0), b":0\r\n");
        same(Reply::Integer(-42), b":-42\r\n");
        same(Reply::Integer(i64::MAX), b":9223372036854775807\r\n");
        same(Reply::Integer(i64::MIN), b":-9223372036854775808\r\n");
    }

    #[test]
    fn bulk_strings() {
        same(Reply::bulk("hello"), b"$5\r\nhello\r\n");
        same(Reply::bulk(""), b"$0\r\n\r\n");
        same(Reply::bulk(&b"a\r\nb\0"[..]), b"$5\r\na\r\nb\0\r\n");
        same(Reply::bulk_or_null(Some("v")), b"$1\r\nv\r\n");
        check(Reply::bulk_or_null(None::<Bytes>), b"$-1\r\n", b"_\r\n");
    }

    #[test]
    fn nulls() {
        check(Reply::Null, b"$-1\r\n", b"_\r\n");
        check(Reply::NullArray, b"*-1\r\n", b"_\r\n");
    }

    #[test]
    fn arrays() {
        same(Reply::array([]), b"*0\r\n");
        same(
            Reply::array([
                Reply::Integer(1),
                Reply::bulk("a"),
                Reply::array([Reply::ok()]),
            ]),
            b"*3\r\n:1\r\n$1\r\na\r\n*1\r\n+OK\r\n",
        );
        check(
            Reply::array([Reply::Null, Reply::Boolean(true)]),
            b"*2\r\n$-1\r\n:1\r\n",
            b"*2\r\n_\r\n#t\r\n",
        );
    }

    #[test]
    fn maps_flatten_on_resp2() {
        let map = Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("triarch")),
            (Reply::bulk("proto"), Reply::Integer(3)),
        ]);
        check(
            map,
            b"*4\r\n$6\r\nserver\r\n$7\r\ntriarch\r\n$5\r\nproto\r\n:3\r\n",
            b"%2\r\n$6\r\nserver\r\n$7\r\ntriarch\r\n$5\r\nproto\r\n:3\r\n",
        );
        check(Reply::Map(vec![]), b"*0\r\n", b"%0\r\n");
    }

    #[test]
    fn sets_and_pushes_become_arrays_on_resp2() {
        check(
            Reply::Set(vec![Reply::bulk("a")]),
            b"*1\r\n$1\r\na\r\n",
            b"~1\r\n$1\r\na\r\n",
        );
        check(
            Reply::Push(vec![Reply::bulk("message"), Reply::Integer(1)]),
            b"*2\r\n$7\r\nmessage\r\n:1\r\n",
            b">2\r\n$7\r\nmessage\r\n:1\r\n",
        );
    }

    #[test]
    fn doubles_become_bulk_strings_on_resp2() {
        check(Reply::Double(2.75), b"$4\r\n2.75\r\n", b",2.75\r\n");
        check(Reply::Double(2.0), b"$1\r\n2\r\n", b",2\r\n");
        check(Reply::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
        check(
            Reply::Double(f64::NEG_INFINITY),
            b"$4\r\n-inf\r\n",
            b",-inf\r\n",
        );
        check(Reply::Double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n");
        check(Reply::Double(1e300), b"$6\r\n1e+300\r\n", b",1e+300\r\n");
    }

    #[test]
    fn booleans_become_integers_on_resp2() {
        check(Reply::Boolean(true), b":1\r\n", b"#t\r\n");
        check(Reply::Boolean(false), b":0\r\n", b"#f\r\n");
    }

    #[test]
    fn big_numbers() {
        check(
            Reply::BigNumber(Bytes::from_static(
                b"3492890328409238509324850943850943825024385",
            )),
            b"$43\r\n3492890328409238509324850943850943825024385\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
        );
    }

    #[test]
    fn verbatim_strings() {
        check(
            Reply::verbatim_text("Some string"),
            b"$11\r\nSome string\r\n",
            b"=15\r\ntxt:Some string\r\n",
        );
        check(
            Reply::Verbatim {
                format: *b"mkd",
                text: Bytes::from_static(b"# x\r\n"),
            },
            b"$5\r\n# x\r\n\r\n",
            b"=9\r\nmkd:# x\r\n\r\n",
        );
    }

    #[test]
    fn encode_appends() {
        let mut out = BytesMut::from(&b"+PONG\r\n"[..]);
        Reply::ok().encode(&mut out, Resp2);
        assert_eq!(&out[..], b"+PONG\r\n+OK\r\n");
    }

    #[test]
    fn protocol_versions() {
        assert_eq!(Protocol::default(), Resp2);
        assert_eq!(Protocol::from_version(2), Some(Resp2));
        assert_eq!(Protocol::from_version(3), Some(Resp3));
        assert_eq!(Protocol::from_version(1), None);
        assert_eq!(Resp2.version(), 2);
        assert_eq!(Resp3.version(), 3);
    }
}
