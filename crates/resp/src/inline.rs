//! Splitting an inline request line into arguments, byte for byte as redis's `sdssplitargs`.
//!
//! Inline requests are what a person types into `telnet` or `nc`; real clients send RESP
//! arrays. Matching redis exactly (rather than inventing a cleaner grammar) means a line that
//! works against redis works here, including its quirks:
//!
//! * Arguments are separated by runs of C `isspace` bytes (space, `\t`, `\n`, `\v`, `\f`,
//!   `\r`), but inside an argument only space, `\t`, `\n` and `\r` end it.
//! * `"..."` supports the escapes `\"` `\\` `\n` `\r` `\t` `\b` `\a` and `\xHH`; any other
//!   escaped byte stands for itself (`\q` is `q`). `'...'` supports only `\'`.
//! * Quotes may start mid-argument (`a"b c"` is `ab c`), but a closing quote must be followed
//!   by whitespace or the end of the line.
//! * A NUL byte ends the line, because redis parses it as a C string.

use std::ops::Range;

use crate::ProtocolError;

/// One argument of an inline request, before the line is frozen into `Bytes`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InlineArg {
    /// An unquoted argument: a span of the line, sliced without copying.
    Span(Range<usize>),
    /// An argument that contained quotes, and so differs from the bytes of the line.
    Owned(Vec<u8>),
}

/// C's `isspace` in the "C" locale.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Splits `line` (without its line terminator) into arguments.
pub(crate) fn split_args(line: &[u8]) -> Result<Vec<InlineArg>, ProtocolError> {
    // Reading past the end yields NUL, exactly like the C string redis walks.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while is_c_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Ok(args);
        }
        let start = p;
        // Becomes `Some` at the first quote: from then on the argument is built byte by byte.
        let mut owned: Option<Vec<u8>> = None;
        let mut quote = Quote::None;
        // Where an unquoted argument ends (its separator is consumed, a NUL is not).
        let mut end = p;
        loop {
            let c = at(p);
            match quote {
                Quote::Double => {
                    let buf = owned.get_or_insert_with(Vec::new);
                    let hex_escape =
                        match (c, at(p + 1), hex_value(at(p + 2)), hex_value(at(p + 3))) {
                            (b'\\', b'x', Some(hi), Some(lo)) => Some(hi * 16 + lo),
                            _ => None,
                        };
                    if let Some(byte) = hex_escape {
                        buf.push(byte);
                        p += 4;
                    } else if c == b'\\' && at(p + 1) != 0 {
                        buf.push(match at(p + 1) {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        p += 2;
                    } else if c == b'"' {
                        if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        p += 1;
                        break;
                    } else if c == 0 {
                        return Err(ProtocolError::UnbalancedQuotes);
                    } else {
                        buf.push(c);
                        p += 1;
                    }
                }
                Quote::Single => {
                    let buf = owned.get_or_insert_with(Vec::new);
                    if c == b'\\' && at(p + 1) == b'\'' {
                        buf.push(b'\'');
                        p += 2;
                    } else if c == b'\'' {
                        if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        p += 1;
                        break;
                    } else if c == 0 {
                        return Err(ProtocolError::UnbalancedQuotes);
                    } else {
                        buf.push(c);
                        p += 1;
                    }
                }
                Quote::None => match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        end = p;
                        if c != 0 {
                            p += 1;
                        }
                        break;
                    }
                    b'"' | b'\'' => {
                        owned.get_or_insert_with(|| line[start..p].to_vec());
                        quote = if c == b'"' {
                            Quote::Double
                        } else {
                            Quote::Single
                        };
                        p += 1;
                    }
                    _ => {
                        if let Some(buf) = owned.as_mut() {
                            buf.push(c);
                        }
                        p += 1;
                    }
                },
            }
        }
        args.push(match owned {
            Some(bytes) => InlineArg::Owned(bytes),
            None => InlineArg::Span(start..end),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        Ok(split_args(line)?
            .into_iter()
            .map(|arg| match arg {
                InlineArg::Span(range) => line[range].to_vec(),
                InlineArg::Owned(bytes) => bytes,
            })
            .collect())
    }

    fn ok(line: &[u8]) -> Vec<Vec<u8>> {
        split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn v(args: &[&[u8]]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.to_vec()).collect()
    }

    #[test]
    fn plain_arguments() {
        assert_eq!(ok(b"PING"), v(&[b"PING"]));
        assert_eq!(ok(b"SET k v"), v(&[b"SET", b"k", b"v"]));
        assert_eq!(ok(b"  SET \t k \x0b\x0c v  "), v(&[b"SET", b"k", b"v"]));
        assert_eq!(ok(b""), Vec::<Vec<u8>>::new());
        assert_eq!(ok(b"   \t "), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn unquoted_arguments_are_zero_copy_spans() {
        assert_eq!(
            split_args(b"SET  k v").unwrap(),
            [
                InlineArg::Span(0..3),
                InlineArg::Span(5..6),
                InlineArg::Span(7..8)
            ]
        );
    }

    #[test]
    fn vertical_tab_and_form_feed_separate_only_between_arguments() {
        // `isspace` skips them between arguments, but they do not end an argument.
        assert_eq!(ok(b"a\x0bb \x0bc"), v(&[b"a\x0bb", b"c"]));
    }

    #[test]
    fn lone_cr_separates() {
        assert_eq!(ok(b"a\rb"), v(&[b"a", b"b"]));
    }

    #[test]
    fn double_quotes_and_escapes() {
        assert_eq!(ok(br#"SET "a key" v"#), v(&[b"SET", b"a key", b"v"]));
        assert_eq!(ok(br#""""#), v(&[b""]));
        assert_eq!(
            ok(br#""q\"b\\n\n\r\t\b\a""#),
            v(&[b"q\"b\\n\n\r\t\x08\x07"])
        );
        assert_eq!(ok(br#""\x41\x6a\xfF\x00""#), v(&[b"Aj\xff\x00"]));
        // Not a valid hex escape: `\x` is an escaped `x`.
        assert_eq!(ok(br#""\xZZ\x4""#), v(&[b"xZZx4"]));
        // Unknown escapes stand for the escaped byte.
        assert_eq!(ok(br#""\q\'""#), v(&[b"q'"]));
    }

    #[test]
    fn single_quotes() {
        assert_eq!(ok(br"'a b' c"), v(&[b"a b", b"c"]));
        assert_eq!(ok(br"'it\'s' '\n'"), v(&[b"it's", b"\\n"]));
        assert_eq!(ok(br#"'say "hi"'"#), v(&[b"say \"hi\""]));
    }

    #[test]
    fn quotes_may_start_mid_argument() {
        assert_eq!(ok(br#"a"b c" d"#), v(&[b"ab c", b"d"]));
        assert_eq!(ok(br"x'y' z"), v(&[b"xy", b"z"]));
    }

    #[test]
    fn unbalanced_quotes() {
        for line in [
            &br#""abc"#[..],
            br#"SET "a"#,
            br#""a"b"#,
            br#""a"""#,
            br"'abc",
            br"'a'b",
            br#""a\"#,
            b"\"a\0b\"",
        ] {
            assert_eq!(
                split(line),
                Err(ProtocolError::UnbalancedQuotes),
                "{line:?}"
            );
        }
    }

    #[test]
    fn closing_quote_may_be_followed_by_any_space() {
        assert_eq!(ok(b"\"a\"\tb"), v(&[b"a", b"b"]));
        assert_eq!(ok(b"\"a\"\x0bb"), v(&[b"a", b"b"]));
    }

    #[test]
    fn nul_ends_the_line() {
        assert_eq!(ok(b"GET k\0ignored \"unbalanced"), v(&[b"GET", b"k"]));
        assert_eq!(ok(b"GET \0k"), v(&[b"GET"]));
        assert_eq!(ok(b"\0GET"), Vec::<Vec<u8>>::new());
        assert_eq!(ok(b"\"a\"\0b"), v(&[b"a"]));
    }
}
