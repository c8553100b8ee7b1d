//! RESP2/RESP3 codec: an incremental, bounded request decoder and a reply encoder. No I/O.
//!
//! Triarch speaks the redis protocol so that `redis-cli`, `redis-py` and `redis-benchmark`
//! work unmodified. This crate is the protocol and nothing else: it never touches a socket, a
//! clock or a task, so the server can drive it from any runtime and the simulator and tests
//! can drive it byte by byte.
//!
//! # Decoding requests
//!
//! The caller owns a read buffer. After each read it calls [`Decoder::decode`] until that
//! returns `Ok(None)`:
//!
//! ```
//! use bytes::BytesMut;
//! use triarch_resp::{Decoder, Limits};
//!
//! let mut decoder = Decoder::new(Limits::default());
//! let mut buf = BytesMut::new();
//! buf.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPI"); // as read from a socket
//! let command = decoder.decode(&mut buf)?.expect("a complete request");
//! assert_eq!(command.name_upper().as_deref(), Some("GET"));
//! assert_eq!(&command.args[1][..], b"k");
//! assert_eq!(decoder.decode(&mut buf)?, None); // "PI" is incomplete: read more
//! buf.extend_from_slice(b"NG\r\n");
//! assert!(decoder.decode(&mut buf)?.expect("PING").is("ping"));
//! # Ok::<(), triarch_resp::ProtocolError>(())
//! ```
//!
//! The contract:
//!
//! * A complete request is removed from the front of the buffer and returned as a
//!   [`Command`]; the bytes after it stay in the buffer, so pipelined requests come out one
//!   call at a time. An incomplete request stays in the buffer untouched. Between calls the
//!   caller only appends to the buffer.
//! * Requests are RESP arrays of bulk strings (what every client library sends) or inline
//!   lines (`SET k "a b"`, what people type into `telnet`), split exactly like redis's
//!   `sdssplitargs`. Empty requests (`*0`, blank lines) are skipped, as redis does.
//! * Arguments are zero-copy slices of the buffer where the wire bytes are the argument.
//! * Every untrusted length is checked against [`Limits`] before the decoder waits for the
//!   bytes it announces, and the decoder never allocates in proportion to a claimed length.
//! * No input makes it panic. Malformed input yields a [`ProtocolError`] whose text is
//!   redis's; the server answers `-ERR <text>` (see [`Reply::protocol_error`]) and closes the
//!   connection, as redis does. The decoder does not try to resynchronise after an error:
//!   after one, nothing later in the stream can be trusted to start at a request boundary.
//!
//! # Encoding replies
//!
//! Commands answer with a [`Reply`] written in RESP3's vocabulary; [`Reply::encode`] appends
//! it to an output buffer for the connection's [`Protocol`], downgrading RESP3-only types for
//! RESP2 clients exactly as redis does (maps to flat arrays, booleans to integers, doubles to
//! bulk strings, null to `$-1`). Encoding cannot fail, never allocates beyond growing the
//! output buffer, and cannot produce a broken frame: line types have CR and LF replaced by
//! spaces.
//!
//! ```
//! use bytes::BytesMut;
//! use triarch_resp::{Protocol, Reply};
//!
//! let mut out = BytesMut::new();
//! Reply::ok().encode(&mut out, Protocol::Resp2);
//! Reply::Boolean(true).encode(&mut out, Protocol::Resp2);
//! Reply::Boolean(true).encode(&mut out, Protocol::Resp3);
//! assert_eq!(&out[..], b"+OK\r\n:1\r\n#t\r\n");
//! ```

mod decoder;
mod error;
mod inline;
mod number;
mod reply;

pub use decoder::{Command, Decoder, Limits};
pub use error::ProtocolError;
pub use reply::{Protocol, Reply};

use bytes::BytesMut;

/// The body of the `resp_decoder` fuzz target, kept here so that plain `cargo test` compiles
/// and exercises it without nightly or cargo-fuzz.
///
/// Decodes `data[1..]` three ways: in one piece, in two pieces split at a point chosen by
/// `data[0]`, and byte by byte. Each run loops until an error or until no progress is made,
/// and asserts that the decoder only ever consumes a prefix of what it was given. All three
/// must agree on the commands and the final error, and every decoded command, re-encoded as a
/// RESP array, must decode to itself. Small limits let short inputs reach every limit check.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_args: 8,
        max_bulk_len: 64,
        max_inline_len: 64,
    };
    let whole = fuzz_run(limits, data, &[data]);
    let at = usize::from(split) % (data.len() + 1);
    let halves = fuzz_run(limits, data, &[&data[..at], &data[at..]]);
    assert_eq!(whole, halves, "split at {at}");
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    let bytewise = fuzz_run(limits, data, &bytes);
    assert_eq!(whole, bytewise, "byte by byte");

    for command in &whole.0 {
        let mut encoded = BytesMut::new();
        command.encode(&mut encoded);
        let mut decoder = Decoder::new(limits);
        let decoded = decoder.decode(&mut encoded);
        assert_eq!(decoded, Ok(Some(command.clone())));
        assert!(encoded.is_empty());
    }
}

/// Feeds `chunks` (which concatenate to `data`) to one decoder, collecting its output.
fn fuzz_run(
    limits: Limits,
    data: &[u8],
    chunks: &[&[u8]],
) -> (Vec<Command>, Option<ProtocolError>) {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut given = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        given += chunk.len();
        loop {
            let before = buf.len();
            let result = decoder.decode(&mut buf);
            // Whatever happened, the buffer still holds exactly a suffix of the input given.
            assert!(buf.len() <= before);
            assert_eq!(&buf[..], &data[given - buf.len()..given]);
            match result {
                Ok(Some(command)) => {
                    assert!(buf.len() < before, "a command from no bytes");
                    assert!(!command.args.is_empty());
                    commands.push(command);
                }
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(decoder.decode(&mut buf), Err(error.clone()));
                    return (commands, Some(error));
                }
            }
        }
    }
    (commands, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_body_runs_on_sample_inputs() {
        let inputs: &[&[u8]] = &[
            b"",
            b"\x05",
            b"\x07*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n",
            b"\x03SET \"a\\x41\" 'b c'\r\n\r\n*0\r\nx",
            b"\x00*1\r\n$99\r\n",
            b"\xff*9\r\n",
            b"\x10\"unbalanced\r\n",
            b"\x02*1\r\n$1\r\nab",
            b"\x04aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            b"\x09*1\r\n$0\r\n\r\n*1\r\n$1\r\n\0\r\n\0",
        ];
        for input in inputs {
            fuzz_decode(input);
        }
    }
}
