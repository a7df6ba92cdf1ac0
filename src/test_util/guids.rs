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

/// The stable test id `n`: the hex GUID at [`EPOCH_MICROS`] with sequence `n`.
pub fn msgid(n: u16) -> String {
    hex_at(EPOCH_MICROS, n)
}

/// The test id `n` in EMQX's base62 form, as the seed stores it.
pub fn msgid_b62(n: u16) -> String {
    guid::to_base62(at(EPOCH_MICROS, n))
}

/// A hex id converted to base62 (panics on an invalid id: test data is written by hand).
pub fn b62(hex: &str) -> String {
    guid::to_base62(guid::from_hex(hex).expect("a 32-digit hex GUID"))
}
