//! The decoder's error type.

use std::fmt;

/// A request stream that is not valid RESP, or that exceeds the decoder's [`Limits`].
///
/// The `Display` text is redis's own wording wherever redis has one, so that clients and
/// tests written against redis see the same `-ERR Protocol error: ...` line. Several variants
/// share a text because redis reports them the same way; the variants stay distinct so the
/// server can log or count *why* a connection was dropped.
///
/// Every protocol error is fatal to the connection: the server replies once with
/// `-ERR <Display text>` (see [`Reply::protocol_error`]) and closes the connection, as redis
/// does. The decoder therefore never tries to find the next request boundary after an error;
/// it keeps returning the same error until [`Decoder::reset`] is called.
///
/// [`Limits`]: crate::Limits
/// [`Reply::protocol_error`]: crate::Reply::protocol_error
/// [`Decoder::reset`]: crate::Decoder::reset
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An element of a multibulk request did not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", PrintableByte(*got))]
    ExpectedBulk {
        /// The byte found where `$` was expected.
        got: u8,
    },
    /// The `*<count>` line is not a well-formed integer followed by CRLF.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// The `*<count>` line announces more arguments than [`Limits::max_args`], or an inline
    /// request has more arguments than that. Redis reports this as an invalid length too.
    ///
    /// [`Limits::max_args`]: crate::Limits::max_args
    #[error("Protocol error: invalid multibulk length")]
    TooManyArguments {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The `$<len>` line is not a well-formed non-negative integer followed by CRLF.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// The `$<len>` line announces more than [`Limits::max_bulk_len`] bytes. Redis reports
    /// this as an invalid length too.
    ///
    /// [`Limits::max_bulk_len`]: crate::Limits::max_bulk_len
    #[error("Protocol error: invalid bulk length")]
    BulkTooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// No CR was found where a `*<count>` line must already have ended.
    #[error("Protocol error: too big mbulk count string")]
    MultibulkCountTooLong,
    /// No CR was found where a `$<len>` line must already have ended.
    #[error("Protocol error: too big bulk count string")]
    BulkCountTooLong,
    /// A bulk string's payload was not followed by CRLF. Redis skips these two bytes without
    /// looking at them; checking them catches a client that miscounted its lengths before its
    /// payload bytes are misread as commands.
    #[error("Protocol error: expected CRLF after bulk string")]
    MissingBulkTerminator,
    /// An inline request line is longer than [`Limits::max_inline_len`].
    ///
    /// [`Limits::max_inline_len`]: crate::Limits::max_inline_len
    #[error("Protocol error: too big inline request")]
    InlineTooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// An inline request has an unterminated quote, or a closing quote directly followed by
    /// something other than whitespace.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Shows a byte the way redis's `%c` would for printable ASCII, and as `\xHH` otherwise: the
/// message must stay valid UTF-8 and must not smuggle CR/LF into the error line.
struct PrintableByte(u8);

impl fmt::Display for PrintableByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() || self.0 == b' ' {
            write!(f, "{}", char::from(self.0))
        } else {
            write!(f, "\\x{:02x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_redis_wording() {
        let cases = [
            (
                ProtocolError::ExpectedBulk { got: b'x' },
                "Protocol error: expected '$', got 'x'",
            ),
            (
                ProtocolError::ExpectedBulk { got: b'\r' },
                "Protocol error: expected '$', got '\\x0d'",
            ),
            (
                ProtocolError::ExpectedBulk { got: 0xff },
                "Protocol error: expected '$', got '\\xff'",
            ),
            (
                ProtocolError::InvalidMultibulkLength,
                "Protocol error: invalid multibulk length",
            ),
            (
                ProtocolError::TooManyArguments { max: 3 },
                "Protocol error: invalid multibulk length",
            ),
            (
                ProtocolError::InvalidBulkLength,
                "Protocol error: invalid bulk length",
            ),
            (
                ProtocolError::BulkTooLong { max: 3 },
                "Protocol error: invalid bulk length",
            ),
            (
                ProtocolError::MultibulkCountTooLong,
                "Protocol error: too big mbulk count string",
            ),
            (
                ProtocolError::BulkCountTooLong,
                "Protocol error: too big bulk count string",
            ),
            (
                ProtocolError::MissingBulkTerminator,
                "Protocol error: expected CRLF after bulk string",
            ),
            (
                ProtocolError::InlineTooLong { max: 3 },
                "Protocol error: too big inline request",
            ),
            (
                ProtocolError::UnbalancedQuotes,
                "Protocol error: unbalanced quotes in request",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
