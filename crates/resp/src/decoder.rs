//! The incremental request decoder.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;
use crate::inline::{InlineArg, split_args};
use crate::number::{parse_strict_i64, put_decimal};

/// Bounds on what a client may make the decoder buffer or track.
///
/// Every length in a request is claimed by an untrusted peer, so each is checked against a
/// limit *before* the decoder waits for (and the caller buffers) the bytes it announces. The
/// decoder itself never allocates in proportion to a claimed length: memory it holds grows
/// only with bytes that have actually arrived.
///
/// The limits bound each request's shape, not its total size (up to `max_args` arguments of
/// `max_bulk_len` bytes each): the server should also cap how much it buffers per connection,
/// as redis does with `client-query-buffer-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one request (the `*<count>` of an array, or the words of an inline
    /// line). Default 1,048,576: redis's historical limit, far above any real command, yet
    /// small enough that the per-argument bookkeeping of a hostile request stays bounded.
    pub max_args: usize,
    /// Largest bulk string (`$<len>`) accepted, in bytes. Default 512 MiB, redis's default
    /// `proto-max-bulk-len`. This is a framing cap only: the server enforces its own, usually
    /// much smaller, key and value sizes on the decoded command, where it can answer with a
    /// precise error instead of dropping the connection.
    pub max_bulk_len: usize,
    /// Longest inline request line, in bytes, excluding its `\n`. Default 64 KiB, redis's
    /// `PROTO_INLINE_MAX_SIZE`. Inline requests are for people typing into `telnet`; anything
    /// long is a client speaking something other than RESP.
    pub max_inline_len: usize,
}

impl Limits {
    /// Redis's historical maximum number of arguments per request.
    pub const DEFAULT_MAX_ARGS: usize = 1024 * 1024;
    /// Redis's default `proto-max-bulk-len`.
    pub const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
    /// Redis's `PROTO_INLINE_MAX_SIZE`.
    pub const DEFAULT_MAX_INLINE_LEN: usize = 64 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_args: Self::DEFAULT_MAX_ARGS,
            max_bulk_len: Self::DEFAULT_MAX_BULK_LEN,
            max_inline_len: Self::DEFAULT_MAX_INLINE_LEN,
        }
    }
}

/// One client request: the command name followed by its arguments.
///
/// Arguments decoded from a RESP array, and unquoted inline arguments, are slices of the
/// connection's read buffer: decoding copies no payload. The flip side is that a `Bytes`
/// kept alive keeps the buffer allocation it came from alive too, so anything stored for
/// longer than the request (a key or value in a memtable, say) may deserve
/// [`Bytes::copy_from_slice`] when the request was small and the buffer large.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// The arguments, command name first. Never empty when produced by [`Decoder`], which
    /// skips empty requests as redis does.
    pub args: Vec<Bytes>,
}

impl Command {
    /// Wraps a list of arguments, command name first.
    pub fn new(args: Vec<Bytes>) -> Self {
        Self { args }
    }

    /// The command name exactly as sent, or `None` for an empty command.
    pub fn name(&self) -> Option<&[u8]> {
        self.args.first().map(|name| &name[..])
    }

    /// The command name in ASCII upper case, for dispatch with a plain `match`.
    ///
    /// Borrows when the name is already upper case (what redis-cli, redis-py and
    /// redis-benchmark send), so the common case does not allocate. Bytes that are not UTF-8
    /// become U+FFFD; such a name matches no command anyway, and the server should quote
    /// [`Command::name`] rather than this in its "unknown command" error.
    pub fn name_upper(&self) -> Option<Cow<'_, str>> {
        let name = self.name()?;
        Some(match String::from_utf8_lossy(name) {
            Cow::Borrowed(text) if !text.bytes().any(|b| b.is_ascii_lowercase()) => {
                Cow::Borrowed(text)
            }
            text => Cow::Owned(text.to_ascii_uppercase()),
        })
    }

    /// Whether the command name equals `name`, ignoring ASCII case. Never allocates.
    pub fn is(&self, name: &str) -> bool {
        self.name()
            .is_some_and(|own| own.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Appends this command to `out` as a RESP array of bulk strings, the form every real
    /// client sends. Useful for clients, benchmarks and tests.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(b'*');
        put_decimal(out, self.args.len() as u64);
        out.put_slice(b"\r\n");
        for arg in &self.args {
            out.reserve(arg.len() + 24);
            out.put_u8(b'$');
            put_decimal(out, arg.len() as u64);
            out.put_slice(b"\r\n");
            out.put_slice(arg);
            out.put_slice(b"\r\n");
        }
    }
}

impl<T: Into<Bytes>> FromIterator<T> for Command {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::new(iter.into_iter().map(Into::into).collect())
    }
}

/// Longest `*<count>` or `$<len>` line, from the type byte up to and including its CR.
/// A 64-bit length needs at most 20 characters; anything without a CR by this point can
/// never become valid, so the decoder rejects it instead of scanning a growing buffer for
/// a CR that may never come.
const MAX_LENGTH_LINE: usize = 32;

/// Argument spans reserved when a multibulk request starts. The count is untrusted, so the
/// list starts small and grows with arguments that have arrived.
const PREALLOCATED_ARGS: usize = 16;

/// Span capacity kept between requests. The span list is reused so that ordinary requests
/// do not allocate it afresh, but one huge request must not pin its memory for the rest of
/// the connection.
const RETAINED_SPANS: usize = 1024;

/// An incremental, bounded decoder of client requests.
///
/// It is sans-IO: the caller reads from its socket into a [`BytesMut`], calls
/// [`decode`](Self::decode) until it returns `Ok(None)`, and reads again.
///
/// The decoder remembers how far into the buffer it has already parsed an incomplete
/// request, so a large request arriving in many reads is scanned once rather than once per
/// read. That makes one rule part of the contract: **between calls, the caller may only
/// append to the buffer** (never consume from it or pass a different one) until `decode`
/// returns a command. A buffer that got shorter is detected and parsing restarts from its
/// front; other violations produce garbage commands or errors, never a panic.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// Byte ranges, within the buffer, of the completed arguments of the multibulk request
    /// in progress. Kept outside [`State`] so its allocation is reused across requests.
    spans: Vec<Range<usize>>,
}

#[derive(Debug, Clone, Default)]
enum State {
    /// At a request boundary: nothing is known about the front of the buffer.
    #[default]
    Start,
    /// Inside an inline request whose first `scanned` bytes hold no `\n`.
    Inline { scanned: usize },
    /// Inside a multibulk request announcing `count` arguments, of which those in
    /// `Decoder::spans` are complete; `pos` is the offset of the first byte not yet parsed.
    Multibulk { count: usize, pos: usize },
    /// A protocol error was returned; the stream cannot be trusted any further.
    Failed(ProtocolError),
}

impl State {
    /// Bytes of the buffer this state has already accounted for.
    fn parsed_len(&self) -> usize {
        match self {
            State::Start | State::Failed(_) => 0,
            State::Inline { scanned } => *scanned,
            State::Multibulk { pos, .. } => *pos,
        }
    }
}

/// What one step of the state machine achieved.
enum Step {
    /// More bytes are needed.
    Incomplete,
    /// The state advanced (or an empty request was skipped); step again.
    Progress,
    /// A request was consumed from the front of the buffer.
    Done(Command),
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Start,
            spans: Vec::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Changes the limits, e.g. to tighten them until a connection authenticates (redis caps
    /// unauthenticated requests at 10 arguments of 16 KiB). The new limits apply to every
    /// length line parsed from now on, including the rest of a request already in progress.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Forgets any partially parsed request and any protocol error, as if freshly created.
    /// The caller must also discard the buffer contents the decoder had seen.
    pub fn reset(&mut self) {
        self.state = State::Start;
        self.recycle_spans();
    }

    /// Empties `spans` for the next request, releasing it if one request made it large.
    fn recycle_spans(&mut self) {
        if self.spans.capacity() > RETAINED_SPANS {
            self.spans = Vec::new();
        } else {
            self.spans.clear();
        }
    }

    /// Decodes the request at the front of `buf`.
    ///
    /// * `Ok(Some(command))`: exactly the bytes of one request were removed from the front
    ///   of `buf` (plus any empty requests before it, which redis ignores).
    /// * `Ok(None)`: `buf` holds no complete request. Its contents are left in place (bar
    ///   consumed empty requests); append more bytes and call again.
    /// * `Err(error)`: the stream is not valid RESP or breaks a [`Limits`] bound. The
    ///   connection should be answered with [`Reply::protocol_error`] and closed; the decoder
    ///   makes no attempt to resynchronise, and returns the same error until
    ///   [`reset`](Self::reset).
    ///
    /// A request is a RESP array of bulk strings when it starts with `*`, and an inline
    /// command line otherwise. This never panics, whatever `buf` contains.
    ///
    /// [`Reply::protocol_error`]: crate::Reply::protocol_error
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, ProtocolError> {
        if let State::Failed(error) = &self.state {
            return Err(error.clone());
        }
        if self.state.parsed_len() > buf.len() {
            // The caller broke the append-only contract; the best we can do is start over.
            self.reset();
        }
        loop {
            match self.step(buf) {
                Ok(Step::Incomplete) => return Ok(None),
                Ok(Step::Progress) => {}
                Ok(Step::Done(command)) => return Ok(Some(command)),
                Err(error) => {
                    self.recycle_spans();
                    self.state = State::Failed(error.clone());
                    return Err(error);
                }
            }
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        match std::mem::take(&mut self.state) {
            State::Start => self.start(buf),
            State::Inline { scanned } => self.inline(buf, scanned),
            State::Multibulk { count, pos } => self.multibulk(buf, count, pos),
            // `decode` returns before stepping a failed decoder.
            State::Failed(error) => Err(error),
        }
    }

    fn start(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        match buf.first() {
            None => Ok(Step::Incomplete),
            Some(b'*') => {
                let Some((count, pos)) = parse_length_line(buf, 0, LengthLine::Multibulk)? else {
                    return Ok(Step::Incomplete);
                };
                if count <= 0 {
                    // Redis silently ignores `*0` and negative counts such as `*-1`.
                    buf.advance(pos);
                    return Ok(Step::Progress);
                }
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                if count > self.limits.max_args {
                    return Err(ProtocolError::TooManyArguments {
                        max: self.limits.max_args,
                    });
                }
                self.spans.clear();
                self.spans.reserve(count.min(PREALLOCATED_ARGS));
                self.state = State::Multibulk { count, pos };
                Ok(Step::Progress)
            }
            Some(_) => {
                self.state = State::Inline { scanned: 0 };
                Ok(Step::Progress)
            }
        }
    }

    fn inline(&mut self, buf: &mut BytesMut, scanned: usize) -> Result<Step, ProtocolError> {
        let max = self.limits.max_inline_len;
        // A `\n` beyond offset `max` would make the line too long, so never scan past it.
        let window = buf.len().min(max.saturating_add(1));
        // Bytes before `scanned` are known to hold no `\n`: do not scan them again.
        let from = scanned.min(window);
        let Some(newline) = buf[from..window]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| from + i)
        else {
            if buf.len() > max {
                return Err(ProtocolError::InlineTooLong { max });
            }
            self.state = State::Inline { scanned: buf.len() };
            return Ok(Step::Incomplete);
        };
        let line_end = if newline > 0 && buf[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        let parsed = split_args(&buf[..line_end])?;
        if parsed.len() > self.limits.max_args {
            return Err(ProtocolError::TooManyArguments {
                max: self.limits.max_args,
            });
        }
        let line = buf.split_to(newline + 1).freeze();
        if parsed.is_empty() {
            // Redis ignores empty lines, which lets `telnet` users press enter freely.
            return Ok(Step::Progress);
        }
        let args = parsed
            .into_iter()
            .map(|arg| match arg {
                InlineArg::Span(range) => line.slice(range),
                InlineArg::Owned(bytes) => Bytes::from(bytes),
            })
            .collect();
        Ok(Step::Done(Command { args }))
    }

    fn multibulk(
        &mut self,
        buf: &mut BytesMut,
        count: usize,
        mut pos: usize,
    ) -> Result<Step, ProtocolError> {
        while self.spans.len() < count {
            let Some(&first) = buf.get(pos) else {
                break;
            };
            if first != b'$' {
                return Err(ProtocolError::ExpectedBulk { got: first });
            }
            // The length line is re-parsed when its payload is incomplete: it is at most
            // `MAX_LENGTH_LINE` bytes, so that is cheaper than another state to remember.
            let Some((len, start)) = parse_length_line(buf, pos, LengthLine::Bulk)? else {
                break;
            };
            let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
            if len > self.limits.max_bulk_len {
                return Err(ProtocolError::BulkTooLong {
                    max: self.limits.max_bulk_len,
                });
            }
            let end = start
                .checked_add(len)
                .ok_or(ProtocolError::InvalidBulkLength)?;
            let Some(terminator) = buf.get(end..end.saturating_add(2)) else {
                break;
            };
            if terminator != b"\r\n" {
                return Err(ProtocolError::MissingBulkTerminator);
            }
            self.spans.push(start..end);
            pos = end + 2;
        }
        if self.spans.len() < count {
            self.state = State::Multibulk { count, pos };
            return Ok(Step::Incomplete);
        }
        let frame = buf.split_to(pos).freeze();
        let args = self
            .spans
            .iter()
            .map(|range| frame.slice(range.clone()))
            .collect();
        self.recycle_spans();
        Ok(Step::Done(Command { args }))
    }
}

/// Which length line is being parsed, for its error messages.
#[derive(Clone, Copy)]
enum LengthLine {
    Multibulk,
    Bulk,
}

/// Parses the `*<count>\r\n` or `$<len>\r\n` line whose type byte is at `buf[at]`.
///
/// Returns the integer and the offset just past the line, or `None` if the line is not
/// complete yet. Integers follow redis's `string2ll`: optional `-`, no `+`, no leading zeros.
fn parse_length_line(
    buf: &[u8],
    at: usize,
    kind: LengthLine,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let (invalid, too_long) = match kind {
        LengthLine::Multibulk => (
            ProtocolError::InvalidMultibulkLength,
            ProtocolError::MultibulkCountTooLong,
        ),
        LengthLine::Bulk => (
            ProtocolError::InvalidBulkLength,
            ProtocolError::BulkCountTooLong,
        ),
    };
    let digits_start = at + 1;
    let window_end = buf.len().min(at + MAX_LENGTH_LINE);
    let window = buf.get(digits_start..window_end).unwrap_or_default();
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() >= at + MAX_LENGTH_LINE {
            Err(too_long)
        } else {
            Ok(None)
        };
    };
    let cr = digits_start + cr;
    match buf.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => match parse_strict_i64(&buf[digits_start..cr]) {
            Some(value) => Ok(Some((value, cr + 2))),
            None => Err(invalid),
        },
        Some(_) => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&[u8]]) -> Command {
        args.iter().map(|a| Bytes::copy_from_slice(a)).collect()
    }

    /// Decodes everything in `input` at once, returning the commands, the final error (if
    /// any) and the bytes left over.
    fn decode_all(limits: Limits, input: &[u8]) -> (Vec<Command>, Option<ProtocolError>, BytesMut) {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::from(input);
        let mut commands = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(command)) => commands.push(command),
                Ok(None) => return (commands, None, buf),
                Err(error) => return (commands, Some(error), buf),
            }
        }
    }

    fn decode_ok(input: &[u8]) -> Vec<Command> {
        let (commands, error, rest) = decode_all(Limits::default(), input);
        assert_eq!(error, None, "{input:?}");
        assert!(rest.is_empty(), "left over: {rest:?}");
        commands
    }

    fn decode_err(limits: Limits, input: &[u8]) -> ProtocolError {
        let (_, error, _) = decode_all(limits, input);
        error.unwrap_or_else(|| panic!("no error for {input:?}"))
    }

    #[test]
    fn multibulk_request() {
        assert_eq!(
            decode_ok(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n"),
            [cmd(&[b"SET", b"k", b"va\r\nl"])]
        );
    }

    #[test]
    fn empty_and_binary_bulk_strings() {
        assert_eq!(
            decode_ok(b"*2\r\n$0\r\n\r\n$3\r\n\0\xff*\r\n"),
            [cmd(&[b"", b"\0\xff*"])]
        );
    }

    #[test]
    fn inline_requests() {
        assert_eq!(
            decode_ok(b"PING\r\nSET k \"a b\"\nGET k\r\n"),
            [
                cmd(&[b"PING"]),
                cmd(&[b"SET", b"k", b"a b"]),
                cmd(&[b"GET", b"k"])
            ]
        );
    }

    #[test]
    fn inline_keeps_cr_that_does_not_end_the_line() {
        // Only one CR directly before the LF belongs to the terminator.
        assert_eq!(decode_ok(b"\"a\r\"\r\n"), [cmd(&[b"a\r"])]);
        // A CR after a closing quote is whitespace, like any other.
        assert_eq!(decode_ok(b"\"a\"\r\r\n"), [cmd(&[b"a"])]);
    }

    #[test]
    fn empty_requests_are_skipped() {
        assert_eq!(
            decode_ok(b"\r\n\n   \r\n*0\r\n*-1\r\n*-7\r\nPING\r\n\n*0\r\n"),
            [cmd(&[b"PING"])]
        );
    }

    #[test]
    fn partial_input_is_left_in_place() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"*2\r\n$3\r\nGET\r\n$1\r\n");
        buf.extend_from_slice(b"k\r\nPI");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(cmd(&[b"GET", b"k"]))));
        assert_eq!(&buf[..], b"PI");
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"PI");
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(cmd(&[b"PING"]))));
        assert!(buf.is_empty());
    }

    const PIPELINE: &[u8] = b"*1\r\n$4\r\nPING\r\n\
        *3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$8\r\nv\r\na\nl\0e\r\n\
        GET key\r\n\
        \r\n\
        *0\r\n\
        SET \"quoted key\" 'it\\'s' \"\\x41\\n\"\n\
        *2\r\n$4\r\nECHO\r\n$0\r\n\r\n";

    fn pipeline_commands() -> Vec<Command> {
        vec![
            cmd(&[b"PING"]),
            cmd(&[b"SET", b"key", b"v\r\na\nl\0e"]),
            cmd(&[b"GET", b"key"]),
            cmd(&[b"SET", b"quoted key", b"it's", b"A\n"]),
            cmd(&[b"ECHO", b""]),
        ]
    }

    #[test]
    fn pipeline_decodes_in_one_go() {
        assert_eq!(decode_ok(PIPELINE), pipeline_commands());
    }

    #[test]
    fn pipeline_decodes_byte_by_byte() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut commands = Vec::new();
        for &byte in PIPELINE {
            buf.put_u8(byte);
            while let Some(command) = decoder.decode(&mut buf).unwrap() {
                commands.push(command);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(commands, pipeline_commands());
    }

    #[test]
    fn pipeline_decodes_at_every_split_point() {
        for split in 0..=PIPELINE.len() {
            let mut decoder = Decoder::default();
            let mut buf = BytesMut::new();
            let mut commands = Vec::new();
            for chunk in [&PIPELINE[..split], &PIPELINE[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(command) = decoder.decode(&mut buf).unwrap() {
                    commands.push(command);
                }
            }
            assert!(buf.is_empty(), "split at {split}");
            assert_eq!(commands, pipeline_commands(), "split at {split}");
        }
    }

    #[test]
    fn arguments_are_slices_of_the_read_buffer() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nGET other\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let mut decoder = Decoder::default();
        let command = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(command.args[0].as_ptr() as usize, base + 8);
        assert_eq!(command.args[1].as_ptr() as usize, base + 17);
        let command = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(command.args[1].as_ptr() as usize, base + 26);
    }

    #[test]
    fn huge_counts_do_not_preallocate() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*1048576\r\n$1\r\nx\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let State::Multibulk { count, .. } = &decoder.state else {
            panic!("{:?}", decoder.state);
        };
        assert_eq!(*count, 1 << 20);
        assert_eq!(decoder.spans.len(), 1);
        assert!(decoder.spans.capacity() <= PREALLOCATED_ARGS);
    }

    #[test]
    fn span_list_is_reused_but_not_kept_large() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        cmd(&[b"GET", b"k"]).encode(&mut buf);
        decoder.decode(&mut buf).unwrap().unwrap();
        assert!(decoder.spans.is_empty() && decoder.spans.capacity() > 0);

        let big: Command = (0..RETAINED_SPANS + 1).map(|_| Bytes::new()).collect();
        big.encode(&mut buf);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(big)));
        assert_eq!(decoder.spans.capacity(), 0);
    }

    #[test]
    fn huge_bulk_waits_without_allocating() {
        let mut decoder = Decoder::default();
        let input = b"*1\r\n$536870912\r\nabc";
        let mut buf = BytesMut::from(&input[..]);
        let capacity = buf.capacity();
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(buf.capacity(), capacity);
        assert_eq!(&buf[..], input);
    }

    #[test]
    fn max_args_limit() {
        let limits = Limits {
            max_args: 2,
            ..Limits::default()
        };
        let (commands, error, _) = decode_all(limits, b"*2\r\n$1\r\na\r\n$1\r\nb\r\na b\r\n");
        assert_eq!(commands, [cmd(&[b"a", b"b"]), cmd(&[b"a", b"b"])]);
        assert_eq!(error, None);
        assert_eq!(
            decode_err(limits, b"*3\r\n"),
            ProtocolError::TooManyArguments { max: 2 }
        );
        assert_eq!(
            decode_err(limits, b"a b c\r\n"),
            ProtocolError::TooManyArguments { max: 2 }
        );
        assert_eq!(
            decode_err(Limits::default(), b"*1048577\r\n"),
            ProtocolError::TooManyArguments { max: 1 << 20 }
        );
        assert_eq!(
            decode_err(Limits::default(), b"*9223372036854775807\r\n"),
            ProtocolError::TooManyArguments { max: 1 << 20 }
        );
    }

    #[test]
    fn max_bulk_len_limit() {
        let limits = Limits {
            max_bulk_len: 3,
            ..Limits::default()
        };
        let (commands, error, _) = decode_all(limits, b"*1\r\n$3\r\nabc\r\n");
        assert_eq!((commands, error), (vec![cmd(&[b"abc"])], None));
        // Rejected as soon as the length line is complete, before any payload arrives.
        assert_eq!(
            decode_err(limits, b"*1\r\n$4\r\n"),
            ProtocolError::BulkTooLong { max: 3 }
        );
        assert_eq!(
            decode_err(Limits::default(), b"*1\r\n$536870913\r\n"),
            ProtocolError::BulkTooLong {
                max: 512 * 1024 * 1024
            }
        );
        let limits = Limits {
            max_bulk_len: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(
            decode_all(limits, b"*1\r\n$9223372036854775807\r\nab").1,
            None
        );
    }

    #[test]
    fn max_inline_len_limit() {
        let limits = Limits {
            max_inline_len: 6,
            ..Limits::default()
        };
        // The limit counts the line without its `\n`, but including a CR before it.
        let (commands, error, _) = decode_all(limits, b"GET ab\nGET a\r\n");
        assert_eq!(commands, [cmd(&[b"GET", b"ab"]), cmd(&[b"GET", b"a"])]);
        assert_eq!(error, None);
        assert_eq!(
            decode_err(limits, b"GET abc\n"),
            ProtocolError::InlineTooLong { max: 6 }
        );
        // Detected without waiting for a newline that may never come.
        assert_eq!(
            decode_err(limits, b"GET abc"),
            ProtocolError::InlineTooLong { max: 6 }
        );
        let (_, error, rest) = decode_all(limits, b"GET ab");
        assert_eq!((error, &rest[..]), (None, &b"GET ab"[..]));
        let long = vec![b'a'; Limits::DEFAULT_MAX_INLINE_LEN + 1];
        assert_eq!(
            decode_err(Limits::default(), &long),
            ProtocolError::InlineTooLong { max: 64 * 1024 }
        );
    }

    #[test]
    fn set_limits_applies_to_the_next_length_line() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$5\r\nhello\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        decoder.set_limits(Limits {
            max_bulk_len: 4,
            ..Limits::default()
        });
        assert_eq!(decoder.limits().max_bulk_len, 4);
        buf.extend_from_slice(b"$5\r\nworld\r\n");
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError::BulkTooLong { max: 4 })
        );
    }

    #[test]
    fn expected_dollar() {
        assert_eq!(
            decode_err(Limits::default(), b"*1\r\nx"),
            ProtocolError::ExpectedBulk { got: b'x' }
        );
        assert_eq!(
            decode_err(Limits::default(), b"*2\r\n$1\r\na\r\n:1\r\n"),
            ProtocolError::ExpectedBulk { got: b':' }
        );
    }

    #[test]
    fn invalid_multibulk_length() {
        for input in [
            &b"*\r\n"[..],
            b"*abc\r\n",
            b"*01\r\n",
            b"*+1\r\n",
            b"*-0\r\n",
            b"*-\r\n",
            b"* 1\r\n",
            b"*1 \r\n",
            b"*1\rx",
            b"*1\r\r\n",
            b"*99999999999999999999\r\n",
        ] {
            assert_eq!(
                decode_err(Limits::default(), input),
                ProtocolError::InvalidMultibulkLength,
                "{input:?}"
            );
        }
    }

    #[test]
    fn invalid_bulk_length() {
        for input in [
            &b"*1\r\n$\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$x\r\n",
            b"*1\r\n$01\r\n",
            b"*1\r\n$1\ra",
            b"*1\r\n$9223372036854775808\r\n",
        ] {
            assert_eq!(
                decode_err(Limits::default(), input),
                ProtocolError::InvalidBulkLength,
                "{input:?}"
            );
        }
    }

    #[test]
    fn length_lines_without_cr() {
        let digits = [b'1'; MAX_LENGTH_LINE];
        let mut input = b"*".to_vec();
        input.extend_from_slice(&digits);
        assert_eq!(
            decode_err(Limits::default(), &input),
            ProtocolError::MultibulkCountTooLong
        );
        // One byte short of the limit: still waiting.
        let (_, error, _) = decode_all(Limits::default(), &input[..MAX_LENGTH_LINE - 1]);
        assert_eq!(error, None);
        let mut input = b"*1\r\n$".to_vec();
        input.extend_from_slice(&digits);
        assert_eq!(
            decode_err(Limits::default(), &input),
            ProtocolError::BulkCountTooLong
        );
    }

    #[test]
    fn missing_bulk_terminator() {
        for input in [
            &b"*1\r\n$1\r\nab\r\n"[..],
            b"*1\r\n$1\r\na\n\r",
            b"*1\r\n$0\r\nxx",
        ] {
            assert_eq!(
                decode_err(Limits::default(), input),
                ProtocolError::MissingBulkTerminator,
                "{input:?}"
            );
        }
    }

    #[test]
    fn unbalanced_quotes() {
        assert_eq!(
            decode_err(Limits::default(), b"SET \"k v\r\n"),
            ProtocolError::UnbalancedQuotes
        );
    }

    #[test]
    fn errors_are_sticky_until_reset() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*x\r\nPING\r\n"[..]);
        for _ in 0..2 {
            assert_eq!(
                decoder.decode(&mut buf),
                Err(ProtocolError::InvalidMultibulkLength)
            );
        }
        decoder.reset();
        let mut buf = BytesMut::from(&b"PING\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(cmd(&[b"PING"]))));
    }

    #[test]
    fn shrunken_buffer_restarts_instead_of_panicking() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let mut buf = BytesMut::from(&b"PING\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(cmd(&[b"PING"]))));
    }

    #[test]
    fn command_helpers() {
        let command = cmd(&[b"get", b"k"]);
        assert_eq!(command.name(), Some(&b"get"[..]));
        assert_eq!(command.name_upper().as_deref(), Some("GET"));
        assert!(command.is("GET") && command.is("get") && !command.is("GETX"));
        let upper = cmd(&[b"GET"]);
        assert!(matches!(upper.name_upper(), Some(Cow::Borrowed("GET"))));
        assert_eq!(
            cmd(&[b"g\xffx"]).name_upper().as_deref(),
            Some("G\u{fffd}X")
        );
        assert_eq!(Command::default().name(), None);
        assert_eq!(Command::default().name_upper(), None);
        assert!(!Command::default().is(""));

        let mut out = BytesMut::new();
        cmd(&[b"SET", b"k", b""]).encode(&mut out);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
