//! EMQX message ids: the 128-bit GUID (µs timestamp 64 | node+pid 48 | sequence 16) in its two
//! text forms (EMQX's `emqx_guid` and `emqx_base62` modules).
//!
//! - **hex**: 32 upper-case hex digits, as ExHook and EMQX 5 rule events carry it.
//! - **base62**: EMQX 3.0–5.7's `emqx_base62`, what the 4.x DynamoDB backend stored. Despite the
//!   name it is not positional: the id is written as a decimal string and those ASCII bytes are
//!   encoded six bits per character (`A–Z`, `a–z`, `0–8`, and `9A`/`9B`/`9C` for 61–63). A trailing
//!   two-byte group becomes three characters (6+6+4 bits), a trailing byte two (6+2).

use thiserror::Error;

/// Why a message id could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GuidError {
    #[error("message id {0:?} is not a 32-digit hex GUID")]
    NotHex(String),
    #[error("message id {0:?} is not an EMQX base62 GUID")]
    NotBase62(String),
}

/// Parses the hex form (either case).
pub fn from_hex(id: &str) -> Result<u128, GuidError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GuidError::NotHex(id.to_string()));
    }
    u128::from_str_radix(id, 16).map_err(|_| GuidError::NotHex(id.to_string()))
}

/// The hex form EMQX prints: 32 upper-case digits.
pub fn to_hex(guid: u128) -> String {
    format!("{guid:032X}")
}

/// A GUID from its parts: the microsecond timestamp (top 64 bits), the node and process id (the
/// next 48; higher bits are dropped) and the sequence number (the low 16).
pub fn compose(micros: u64, node_pid: u64, seq: u16) -> u128 {
    (u128::from(micros) << 64) | (u128::from(node_pid & 0xffff_ffff_ffff) << 16) | u128::from(seq)
}

/// A GUID for a message that came without one: the microsecond timestamp in the time bits and a
/// 64-bit FNV-1a hash of `parts` in the node, pid and sequence bits, so that every build and run
/// derives the same id from the same parts.
pub fn derive(micros: u64, parts: &[&[u8]]) -> u128 {
    let hash = fnv1a(parts);
    compose(micros, hash >> 16, hash as u16)
}

/// 64-bit FNV-1a over `parts`, each followed by a 0xff separator.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The microsecond timestamp in the top 64 bits.
pub fn timestamp_micros(guid: u128) -> u64 {
    (guid >> 64) as u64
}

fn encode_char(v: u8, out: &mut String) {
    match v {
        0..=25 => out.push((b'A' + v) as char),
        26..=51 => out.push((b'a' + v - 26) as char),
        52..=60 => out.push((b'0' + v - 52) as char),
        _ => {
            out.push('9');
            out.push((b'A' + v - 61) as char);
        }
    }
}

/// EMQX's base62 text form of a GUID.
pub fn to_base62(guid: u128) -> String {
    let decimal = guid.to_string();
    let bytes = decimal.as_bytes();
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            encode_char(((n >> shift) & 0x3f) as u8, &mut out);
        }
    }
    match chunks.remainder() {
        [a, b] => {
            let n = (u32::from(*a) << 8) | u32::from(*b);
            encode_char(((n >> 10) & 0x3f) as u8, &mut out);
            encode_char(((n >> 4) & 0x3f) as u8, &mut out);
            encode_char((n & 0x0f) as u8, &mut out);
        }
        [a] => {
            encode_char(a >> 2, &mut out);
            encode_char(a & 0x03, &mut out);
        }
        _ => {}
    }
    out
}

/// Reads EMQX's base62 text form back into a GUID.
pub fn from_base62(text: &str) -> Result<u128, GuidError> {
    let err = || GuidError::NotBase62(text.to_string());
    let mut values = Vec::with_capacity(text.len());
    let mut chars = text.bytes();
    while let Some(c) = chars.next() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'8' => c - b'0' + 52,
            b'9' => match chars.next() {
                Some(n @ b'A'..=b'C') => n - b'A' + 61,
                _ => return Err(err()),
            },
            _ => return Err(err()),
        };
        values.push(v);
    }
    let mut bytes = Vec::with_capacity(values.len() * 3 / 4 + 2);
    let mut groups = values.chunks_exact(4);
    for g in &mut groups {
        let n = (u32::from(g[0]) << 18)
            | (u32::from(g[1]) << 12)
            | (u32::from(g[2]) << 6)
            | u32::from(g[3]);
        bytes.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    match groups.remainder() {
        [a, b, c] if *c < 16 => {
            let n = (u32::from(*a) << 10) | (u32::from(*b) << 4) | u32::from(*c);
            bytes.extend_from_slice(&[(n >> 8) as u8, n as u8]);
        }
        [a, b] if *b < 4 => bytes.push((a << 2) | b),
        [] => {}
        _ => return Err(err()),
    }
    let decimal = std::str::from_utf8(&bytes).map_err(|_| err())?;
    if decimal.is_empty() || !decimal.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    decimal.parse::<u128>().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id from the seed's mqtt_msg sample, decoded by hand: publish time 1562308553981613 µs, sequence 1.
    const SEED_ID: &str = "Mjg4MTk1MDYwNTk0NjYwNzYzMTg4MDk3OTQ2MDU2Nzg1OTD";

    #[test]
    fn composes_the_seed_sample_from_its_parts() {
        let guid = from_base62(SEED_ID).unwrap();
        let node_pid = ((guid >> 16) & 0xffff_ffff_ffff) as u64;
        assert_eq!(compose(1562308553981613, node_pid, 1), guid);
        assert_eq!(
            compose(7, u64::MAX, 0) >> 64,
            7,
            "node bits stay out of the timestamp"
        );
    }

    #[test]
    fn derived_ids_keep_the_time_and_the_whole_hash() {
        let parts: [&[u8]; 3] = [b"p", b"t/1", b"x"];
        let guid = derive(1_700_000_000_123_000, &parts);
        assert_eq!(timestamp_micros(guid), 1_700_000_000_123_000);
        assert_eq!(guid as u64, fnv1a(&parts));
        assert_eq!(derive(1_700_000_000_123_000, &parts), guid, "stable");
    }

    #[test]
    fn decodes_the_seed_sample() {
        let guid = from_base62(SEED_ID).unwrap();
        assert_eq!(guid, 28819506059466076318809794605678593);
        assert_eq!(timestamp_micros(guid), 1562308553981613);
        assert_eq!(guid & 0xffff, 1, "sequence number");
        assert_eq!(to_base62(guid), SEED_ID);
        assert_eq!(SEED_ID.len(), 47);
    }

    #[test]
    fn hex_round_trip_matches_the_emqx5_doc_sample() {
        let hex = "0005F65F239F03FEF44300000BB40002";
        let guid = from_hex(hex).unwrap();
        assert_eq!(to_hex(guid), hex);
        assert_eq!(timestamp_micros(guid) / 1000, 1678263363503);
        assert_eq!(from_base62(&to_base62(guid)).unwrap(), guid);
        assert_eq!(to_base62(guid).len(), 47);
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(matches!(from_hex("xyz"), Err(GuidError::NotHex(_))));
        assert!(matches!(
            from_hex("0005F65F239F03FEF44300000BB4000G"),
            Err(GuidError::NotHex(_))
        ));
        assert!(from_base62("!!").is_err());
        assert!(from_base62("9Z").is_err());
        assert!(from_base62("A").is_err());
        assert!(from_base62("").is_err());
    }

    #[test]
    fn short_remainders_round_trip() {
        for n in [0u128, 7, 12, 123, 1234, 12345, u128::MAX] {
            assert_eq!(from_base62(&to_base62(n)).unwrap(), n, "{n}");
        }
    }
}
