//! Property tests of the request decoder: pipelined requests split at arbitrary points decode
//! to what was sent, and arbitrary bytes never panic it or make it consume what it was not
//! given.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use triarch_resp::{Command, Decoder, Limits, ProtocolError};

/// Arguments with a bias towards bytes that matter to the framing.
fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => any::<u8>(),
            1 => prop::sample::select(&b"\r\n*$\"' \\\0"[..]),
        ],
        0..40,
    )
}

fn command() -> impl Strategy<Value = Command> {
    prop::collection::vec(arg(), 1..8).prop_map(|args| args.into_iter().collect())
}

/// Cut points into a stream of `len` bytes, sorted and deduplicated.
fn cuts(len: usize, raw: &[prop::sample::Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|index| index.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Feeds `stream` to a decoder in pieces cut at `cuts`, decoding after every piece until no
/// progress, and checks after every call that the buffer holds exactly the unconsumed suffix
/// of what was fed so far.
fn feed(
    limits: Limits,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<Command>, Option<ProtocolError>, usize) {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut fed = 0;
    for &end in cuts.iter().chain([&stream.len()]) {
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            let before = buf.len();
            let result = decoder.decode(&mut buf);
            assert!(buf.len() <= before, "the buffer grew");
            assert_eq!(&buf[..], &stream[fed - buf.len()..fed], "not a suffix");
            match result {
                Ok(Some(command)) => {
                    assert!(buf.len() < before, "a command from no bytes");
                    commands.push(command);
                }
                Ok(None) => break,
                Err(error) => return (commands, Some(error), buf.len()),
            }
        }
    }
    (commands, None, buf.len())
}

/// What a [`feed`] run decoded: the commands, then the error or the bytes left over.
fn outcome(
    (commands, error, left): (Vec<Command>, Option<ProtocolError>, usize),
) -> (Vec<Command>, Result<usize, ProtocolError>) {
    (commands, error.map_or(Ok(left), Err))
}

/// Quotes `arg` for an inline request the way `redis-cli` displays strings.
fn quote_inline(arg: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &byte in arg {
        match byte {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', byte]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x20..=0x7e => out.push(byte),
            _ => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
        }
    }
    out.push(b'"');
}

/// Raw bytes built mostly from protocol fragments, so that random input reaches deep into
/// the decoder instead of failing on the first byte.
fn resp_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop_oneof![
        2 => prop::sample::select(vec![
            &b"*"[..], b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"3", b"-1", b"10",
            b"\"", b"'", b"\\", b"\\x4", b" ", b"PING", b"a", b"\0", b"*2\r\n", b"$1\r\n",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(fragment, 0..64).prop_map(|fragments| fragments.concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        // Next to this file: the default looks for a `lib.rs`, which integration tests lack.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn pipelined_arrays_survive_any_split(
        commands in prop::collection::vec(command(), 1..8),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for command in &commands {
            command.encode(&mut stream);
        }
        let cuts = cuts(stream.len(), &raw_cuts);
        let (decoded, error, left) = feed(Limits::default(), &stream, &cuts);
        prop_assert_eq!(error, None);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(decoded, commands);
    }

    #[test]
    fn pipelined_arrays_survive_byte_by_byte_feeding(
        commands in prop::collection::vec(command(), 1..4),
    ) {
        let mut stream = BytesMut::new();
        for command in &commands {
            command.encode(&mut stream);
        }
        let every_byte: Vec<usize> = (0..stream.len()).collect();
        let (decoded, error, left) = feed(Limits::default(), &stream, &every_byte);
        prop_assert_eq!(error, None);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(decoded, commands);
    }

    #[test]
    fn quoted_inline_requests_round_trip(
        commands in prop::collection::vec(prop::collection::vec(arg(), 1..6), 1..6),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        crlf in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for args in &commands {
            for (i, arg) in args.iter().enumerate() {
                if i > 0 {
                    stream.push(b' ');
                }
                quote_inline(arg, &mut stream);
            }
            stream.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        let cuts = cuts(stream.len(), &raw_cuts);
        let (decoded, error, left) = feed(Limits::default(), &stream, &cuts);
        prop_assert_eq!(error, None);
        prop_assert_eq!(left, 0);
        let expected: Vec<Command> = commands
            .into_iter()
            .map(|args| args.into_iter().map(Bytes::from).collect())
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overconsume(
        stream in prop::collection::vec(any::<u8>(), 0..512),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let cuts = cuts(stream.len(), &raw_cuts);
        let whole = feed(Limits::default(), &stream, &[]);
        let pieces = feed(Limits::default(), &stream, &cuts);
        // The outcome depends on the bytes, not on how they were split into reads (except
        // how much was buffered when an error stopped the feeding).
        prop_assert_eq!(outcome(whole), outcome(pieces));
    }

    #[test]
    fn protocol_like_bytes_never_panic_or_overconsume(
        stream in resp_like_bytes(),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        max_args in 1usize..6,
        max_bulk_len in 0usize..16,
        max_inline_len in 0usize..32,
    ) {
        let limits = Limits { max_args, max_bulk_len, max_inline_len };
        let cuts = cuts(stream.len(), &raw_cuts);
        let whole = feed(limits, &stream, &[]);
        let pieces = feed(limits, &stream, &cuts);
        prop_assert_eq!(outcome(whole), outcome(pieces));
    }

    #[test]
    fn fuzz_body_holds_on_protocol_like_bytes(stream in resp_like_bytes()) {
        triarch_resp::fuzz_decode(&stream);
    }
}
