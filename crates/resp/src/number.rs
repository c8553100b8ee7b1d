//! Integer parsing and number formatting without heap allocation.

use std::fmt::{self, Write as _};

use bytes::{BufMut, BytesMut};

/// Parses a decimal `i64` exactly as redis's `string2ll` does: an optional `-`, then either a
/// lone `0` or a digit `1`-`9` followed by digits. No `+`, no leading zeros, no `-0`, no
/// whitespace, no overflow. Being as strict as redis keeps one request from meaning different
/// things to the two servers.
pub(crate) fn parse_strict_i64(text: &[u8]) -> Option<i64> {
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    let magnitude = i128::from(magnitude);
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// Appends `value` in decimal.
pub(crate) fn put_decimal(out: &mut BytesMut, value: u64) {
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends `value` in decimal.
pub(crate) fn put_i64(out: &mut BytesMut, value: i64) {
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A formatted double, on the stack.
pub(crate) struct DoubleText {
    bytes: [u8; Self::CAPACITY],
    len: usize,
}

impl DoubleText {
    /// The longest output is 25 bytes (`-` and 24 digits); leave headroom.
    const CAPACITY: usize = 32;

    fn new() -> Self {
        Self {
            bytes: [0; Self::CAPACITY],
            len: 0,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, byte: u8) {
        // Unreachable overflow would truncate rather than panic.
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.push(byte);
        }
    }
}

impl fmt::Write for DoubleText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.len + s.len() > Self::CAPACITY {
            return Err(fmt::Error);
        }
        self.extend(s.as_bytes());
        Ok(())
    }
}

/// Formats a double the way redis's `d2string` does, so replies read the same as redis's.
///
/// * `nan`, `inf`, `-inf`, `0` and `-0` are spelled out.
/// * Integral values within ±2^62 print as integers (`3`, not `3.0`).
/// * Everything else uses the shortest digits that round-trip, laid out as redis's `fpconv`
///   does: plain (`3.14`, `0.001`, `12345678901234567000`) when the exponent is modest, and
///   otherwise scientific with a signed exponent (`1.5e-7`, `1e+300`). Redis finds its digits
///   with Grisu2, which in rare cases yields a longer (still round-tripping) digit string.
pub(crate) fn format_double(value: f64) -> DoubleText {
    let mut text = DoubleText::new();
    if value.is_nan() {
        text.extend(b"nan");
    } else if value.is_infinite() {
        text.extend(if value > 0.0 { b"inf" } else { b"-inf" });
    } else if value == 0.0 {
        text.extend(if value.is_sign_negative() {
            b"-0"
        } else {
            b"0"
        });
    } else if value.fract() == 0.0 && value.abs() <= (i64::MAX / 2) as f64 {
        // In range, so the cast is exact.
        text.extend(itoa::Buffer::new().format(value as i64).as_bytes());
    } else {
        if value < 0.0 {
            text.push(b'-');
        }
        // `{:e}` yields the shortest round-trip digits, e.g. `1.2345e-7`.
        let mut scientific = DoubleText::new();
        if write!(scientific, "{:e}", value.abs()).is_err() {
            text.extend(b"nan");
            return text;
        }
        let scientific = scientific.as_bytes();
        let e = scientific
            .iter()
            .position(|&b| b == b'e')
            .unwrap_or(scientific.len());
        let mut digits = [0u8; 20];
        let mut ndigits = 0;
        for &b in scientific[..e].iter().filter(|b| b.is_ascii_digit()) {
            if let Some(slot) = digits.get_mut(ndigits) {
                *slot = b;
                ndigits += 1;
            }
        }
        let exponent = std::str::from_utf8(scientific.get(e + 1..).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .unwrap_or(0);
        let digits = &digits[..ndigits];
        // `value == digits * 10^k`, as in fpconv's `emit_digits`.
        let k = exponent - (ndigits as i32 - 1);
        emit_digits(&mut text, digits, k);
    }
    text
}

/// Lays out `digits * 10^k` as redis's `fpconv_dtoa` does.
fn emit_digits(text: &mut DoubleText, digits: &[u8], k: i32) {
    let ndigits = digits.len() as i32;
    let exp = (k + ndigits - 1).abs();
    if k >= 0 && exp < ndigits + 7 {
        text.extend(digits);
        for _ in 0..k {
            text.push(b'0');
        }
    } else if k < 0 && (k > -7 || exp < 4) {
        let offset = ndigits + k;
        if offset <= 0 {
            text.extend(b"0.");
            for _ in 0..-offset {
                text.push(b'0');
            }
            text.extend(digits);
        } else {
            let (int, frac) = digits.split_at(offset as usize);
            text.extend(int);
            text.push(b'.');
            text.extend(frac);
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        text.extend(first);
        if !rest.is_empty() {
            text.push(b'.');
            text.extend(rest);
        }
        text.push(b'e');
        text.push(if k + ndigits - 1 < 0 { b'-' } else { b'+' });
        text.extend(itoa::Buffer::new().format(exp).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_integers() {
        for (text, value) in [
            (&b"0"[..], 0),
            (b"1", 1),
            (b"-1", -1),
            (b"1234567890", 1_234_567_890),
            (b"9223372036854775807", i64::MAX),
            (b"-9223372036854775808", i64::MIN),
        ] {
            assert_eq!(parse_strict_i64(text), Some(value), "{text:?}");
        }
        for text in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"0x10",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_strict_i64(text), None, "{text:?}");
        }
    }

    fn double(value: f64) -> String {
        String::from_utf8(format_double(value).as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn doubles_match_redis() {
        for (value, text) in [
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-3.0, "-3"),
            (2.75, "2.75"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e-5, "0.00001"),
            (1.5e-7, "1.5e-7"),
            (0.00012345, "1.2345e-4"),
            (0.0012345, "0.0012345"),
            (123456.789, "123456.789"),
            (1e18, "1000000000000000000"),
            (4611686018427387904.0, "4611686018427387904"),
            (1e19, "1e+19"),
            (12345678901234567e3, "12345678901234567000"),
            (1e300, "1e+300"),
            (-1.2345e-300, "-1.2345e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
        ] {
            assert_eq!(double(value), text, "{value:e}");
        }
    }

    #[test]
    fn doubles_round_trip() {
        for value in [
            2.75,
            1e-5,
            1.5e-7,
            1e300,
            -1.2345e-300,
            f64::MAX,
            5e-324,
            0.3,
        ] {
            assert_eq!(double(value).parse::<f64>().unwrap(), value);
        }
    }
}
