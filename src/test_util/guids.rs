//! Message ids for tests, benches and loadgen, always built with [`guid::compose`] (timestamp,
//! node+pid, sequence) instead of shifting bits by hand.

use crate::guid;

/// The broker clock of the test ids: 2023-11-14 22:13:20 UTC (1,700,000,000 s), in µs.
pub const EPOCH_MICROS: u64 = 1_700_000_000_000_000;

/// The GUID at `micros` with sequence `seq` (node+pid 0).
pub fn at(micros: u64, seq: u16) -> u128 {
    guid::compose(micros, 0, seq)
}

/// The hex GUID at `micros` with sequence `seq` (node+pid 0).
pub fn hex_at(micros: u64, seq: u16) -> String {
    guid::to_hex(at(micros, seq))
}

/// The `n`-th test GUID: at [`EPOCH_MICROS`], with `n` in the low 64 bits (node+pid and
/// sequence), so ids for any `n` are distinct and the same in every run.
pub fn nth(n: u64) -> u128 {
    guid::compose(EPOCH_MICROS, n >> 16, n as u16)
}

/// The stable test id `n` in hex: [`nth`]`(n)`.
pub fn msgid(n: u16) -> String {
    guid::to_hex(nth(n.into()))
}

/// The test id `n` in EMQX's base62 form, as the seed stores it.
pub fn msgid_b62(n: u16) -> String {
    guid::to_base62(nth(n.into()))
}

/// A hex id converted to base62 (panics on an invalid id: test data is written by hand).
pub fn b62(hex: &str) -> String {
    guid::to_base62(guid::from_hex(hex).expect("a 32-digit hex GUID"))
}
