//! The spool's record format: one accepted event's writes, framed and checksummed.
//!
//! ```text
//! record  = len:u32le  crc:u32le  payload[len]          crc = CRC-32 (IEEE) of payload
//! payload = version:u8 (1)  n:varint  op{n}
//! op      = table:u8  hash:str  range:opt(str)  write
//! write   = 0 fresh:u8 item | 1 | 2 map(set) opt(str value) | 3 attr:str set(add) set(del)
//!           | 4 attr:str set(add) set(del)   (4: a certain set delta, 3: maybe applied)
//!           | 5 timed
//! timed   = at:u64le order map(set) set(remove) opt(timed)   (the fallback nests one level at most)
//! order   = 0 | 1 node:str | 2 node:str           (newest, connect on node, disconnect from node)
//! value   = 0 str | 1 i64le | 2 bytes | 3 set
//! str     = len:varint utf-8 bytes;  map = n:varint (str value){n};  set = n:varint str{n}
//! ```
//!
//! Hand-written rather than derived: the item types carry no serde derives, the format is tiny,
//! and keeping it explicit here (with a version byte) is what lets a spool written by one release
//! be replayed by the next. No sequence numbers are stored: a record's ops are numbered when the
//! spool is opened or appended to (see [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::storage::item::{Key, Op, Order, Table, Timed, Value, Write};

const VERSION: u8 = 1;
/// Bytes before the payload: length and checksum.
pub const HEADER: usize = 8;
/// No record is larger: one event's writes are bounded by the ingest limits far below this, so a
/// larger length field can only be damage.
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Why a record could not be read back.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record ends early")]
    Truncated,
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record length {0} is out of range")]
    Length(usize),
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown {what} tag {tag}")]
    Tag { what: &'static str, tag: u8 },
    #[error("string is not valid UTF-8")]
    Utf8,
}

/// Encodes `ops` as one framed record.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + ops.iter().map(Op::size).sum::<usize>() + 32);
    out.extend_from_slice(&[0; HEADER]);
    out.push(VERSION);
    varint(&mut out, ops.len() as u64);
    for op in ops {
        encode_op(&mut out, op);
    }
    let len = (out.len() - HEADER) as u32;
    let crc = crc32fast::hash(&out[HEADER..]);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The payload length a header announces, checked against [`MAX_PAYLOAD`].
pub fn payload_len(header: &[u8; HEADER]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Err(CodecError::Length(len));
    }
    Ok(len)
}

/// Checks a payload against its header's checksum.
pub fn verify(header: &[u8; HEADER], payload: &[u8]) -> Result<(), CodecError> {
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if crc32fast::hash(payload) != crc {
        return Err(CodecError::Checksum);
    }
    Ok(())
}

/// The number of ops in a verified payload, without decoding them.
pub fn op_count(payload: &[u8]) -> Result<u64, CodecError> {
    let mut r = Reader { buf: payload };
    r.version()?;
    r.varint()
}

/// Decodes a verified payload.
pub fn decode(payload: &[u8]) -> Result<Vec<Op>, CodecError> {
    let mut r = Reader { buf: payload };
    r.version()?;
    let n = r.varint()?;
    // Each op takes at least 4 bytes, which bounds the allocation by the payload's size.
    let mut ops = Vec::with_capacity((n as usize).min(payload.len() / 4));
    for _ in 0..n {
        ops.push(r.op()?);
    }
    Ok(ops)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn set(out: &mut Vec<u8>, members: &BTreeSet<String>) {
    varint(out, members.len() as u64);
    for m in members {
        string(out, m);
    }
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::S(s) => {
            out.push(0);
            string(out, s);
        }
        Value::N(n) => {
            out.push(1);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Value::B(b) => {
            out.push(2);
            varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Ss(members) => {
            out.push(3);
            set(out, members);
        }
    }
}

fn map(out: &mut Vec<u8>, m: &BTreeMap<String, Value>) {
    varint(out, m.len() as u64);
    for (name, v) in m {
        string(out, name);
        value(out, v);
    }
}

fn encode_op(out: &mut Vec<u8>, op: &Op) {
    let table = Table::ALL
        .iter()
        .position(|t| *t == op.key.table)
        .unwrap_or(0);
    out.push(table as u8);
    string(out, &op.key.hash);
    match &op.key.range {
        Some(r) => {
            out.push(1);
            string(out, r);
        }
        None => out.push(0),
    }
    match &op.write {
        Write::Put { item, fresh } => {
            out.push(0);
            out.push(u8::from(*fresh));
            map(out, item);
        }
        Write::Delete => out.push(1),
        Write::Update { set, guard } => {
            out.push(2);
            map(out, set);
            match guard {
                Some((attr, v)) => {
                    out.push(1);
                    string(out, attr);
                    value(out, v);
                }
                None => out.push(0),
            }
        }
        Write::SetDelta {
            attr,
            add,
            del,
            fresh,
        } => {
            // 3: a delta that may already be applied; 4: a certain one (added later, so a
            // record written by an older version decodes as "maybe applied", the safe reading).
            out.push(if *fresh { 4 } else { 3 });
            string(out, attr);
            set(out, add);
            set(out, del);
        }
        Write::Timed(t) => {
            out.push(5);
            timed(out, t);
        }
    }
}

fn timed(out: &mut Vec<u8>, t: &Timed) {
    out.extend_from_slice(&t.at.to_le_bytes());
    match &t.order {
        Order::Newest => out.push(0),
        Order::Connect { node } => {
            out.push(1);
            string(out, node);
        }
        Order::Disconnect { node } => {
            out.push(2);
            string(out, node);
        }
    }
    map(out, &t.set);
    set(out, &t.remove);
    match &t.or_else {
        Some(fallback) => {
            out.push(1);
            timed(out, fallback);
        }
        None => out.push(0),
    }
}

/// A cursor over a payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.bytes(1)?[0])
    }

    fn version(&mut self) -> Result<(), CodecError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(CodecError::Version(v)),
        }
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Length(usize::MAX))
    }

    fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.varint()? as usize;
        if n > self.buf.len() {
            return Err(CodecError::Truncated);
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.len()?;
        let raw = self.bytes(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| CodecError::Utf8)
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(CodecError::Tag { what, tag }),
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, CodecError> {
        let n = self.len()?;
        (0..n).map(|_| self.string()).collect()
    }

    fn value(&mut self) -> Result<Value, CodecError> {
        Ok(match self.u8()? {
            0 => Value::S(self.string()?),
            1 => {
                let raw = self.bytes(8)?;
                let mut n = [0u8; 8];
                n.copy_from_slice(raw);
                Value::N(i64::from_le_bytes(n))
            }
            2 => {
                let n = self.len()?;
                Value::B(self.bytes(n)?.to_vec())
            }
            3 => Value::Ss(self.set()?),
            tag => return Err(CodecError::Tag { what: "value", tag }),
        })
    }

    fn map(&mut self) -> Result<BTreeMap<String, Value>, CodecError> {
        let n = self.len()?;
        (0..n)
            .map(|_| Ok((self.string()?, self.value()?)))
            .collect()
    }

    /// A timed write; its fallback only where `nests` (one level).
    fn timed(&mut self, nests: bool) -> Result<Timed, CodecError> {
        let at = u64::from_le_bytes(
            self.bytes(8)?
                .try_into()
                .map_err(|_| CodecError::Truncated)?,
        );
        let order = match self.u8()? {
            0 => Order::Newest,
            1 => Order::Connect {
                node: self.string()?,
            },
            2 => Order::Disconnect {
                node: self.string()?,
            },
            tag => return Err(CodecError::Tag { what: "order", tag }),
        };
        let set = self.map()?;
        let remove = self.set()?;
        let or_else = match self.u8()? {
            0 => None,
            1 if nests => Some(Box::new(self.timed(false)?)),
            tag => {
                return Err(CodecError::Tag {
                    what: "fallback",
                    tag,
                });
            }
        };
        Ok(Timed {
            at,
            order,
            set,
            remove,
            or_else,
        })
    }

    fn op(&mut self) -> Result<Op, CodecError> {
        let tag = self.u8()?;
        let table = *Table::ALL
            .get(tag as usize)
            .ok_or(CodecError::Tag { what: "table", tag })?;
        let hash = self.string()?;
        let range = if self.flag("range")? {
            Some(self.string()?)
        } else {
            None
        };
        let write = match self.u8()? {
            0 => {
                let fresh = self.flag("fresh")?;
                Write::Put {
                    item: self.map()?,
                    fresh,
                }
            }
            1 => Write::Delete,
            2 => {
                let set = self.map()?;
                let guard = if self.flag("guard")? {
                    Some((self.string()?, self.value()?))
                } else {
                    None
                };
                Write::Update { set, guard }
            }
            tag @ (3 | 4) => Write::SetDelta {
                attr: self.string()?,
                add: self.set()?,
                del: self.set()?,
                fresh: tag == 4,
            },
            5 => Write::Timed(self.timed(true)?),
            tag => return Err(CodecError::Tag { what: "write", tag }),
        };
        Ok(Op {
            key: Key { table, hash, range },
            write,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(record: &[u8]) -> ([u8; HEADER], &[u8]) {
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&record[..HEADER]);
        (header, &record[HEADER..])
    }

    fn sample() -> Vec<Op> {
        let mut item = BTreeMap::new();
        item.insert("topic".to_string(), Value::S("a/b".into()));
        item.insert("qos".to_string(), Value::N(-1));
        item.insert("payload".to_string(), Value::B(vec![0, 255, 7]));
        item.insert("ids".to_string(), Value::Ss(["x".to_string()].into()));
        vec![
            Op {
                key: Key::new(Table::Retain, "a/b"),
                write: Write::Put { item, fresh: true },
            },
            Op {
                key: Key::with_range(Table::Acked, "t", "c1"),
                write: Write::Delete,
            },
            Op {
                key: Key::new(Table::Client, "c1"),
                write: Write::Update {
                    set: [("state".to_string(), Value::N(0))].into(),
                    guard: Some(("node".into(), Value::S("n1".into()))),
                },
            },
            Op {
                key: Key::new(Table::TopicMsgMap, "t"),
                write: Write::SetDelta {
                    attr: "MsgId".into(),
                    add: ["m1".to_string(), "m2".to_string()].into(),
                    del: ["m0".to_string()].into(),
                    fresh: true,
                },
            },
            Op {
                key: Key::new(Table::Client, "c2"),
                write: Write::Timed(Timed {
                    at: 1_700_000_000_123,
                    order: Order::Connect { node: "n1".into() },
                    set: [("event_ms".to_string(), Value::N(1_700_000_000_999))].into(),
                    remove: BTreeSet::new(),
                    or_else: Some(Box::new(Timed {
                        at: 1_700_000_000_999,
                        order: Order::Disconnect { node: "n1".into() },
                        set: [("connect_state".to_string(), Value::N(0))].into(),
                        remove: BTreeSet::new(),
                        or_else: None,
                    })),
                }),
            },
            Op {
                key: Key::new(Table::Retain, "r"),
                write: Write::Timed(Timed {
                    at: 5,
                    order: Order::Newest,
                    set: [("event_ms".to_string(), Value::N(5))].into(),
                    remove: ["payload".to_string()].into(),
                    or_else: None,
                }),
            },
        ]
    }

    #[test]
    fn round_trip_and_count() {
        let ops = sample();
        let record = encode(&ops);
        let (header, payload) = split(&record);
        assert_eq!(payload_len(&header), Ok(payload.len()));
        verify(&header, payload).unwrap();
        assert_eq!(op_count(payload), Ok(6));
        assert_eq!(decode(payload).unwrap(), ops);
    }

    #[test]
    fn damage_is_reported_not_panicked_on() {
        let record = encode(&sample());
        let (header, payload) = split(&record);
        let mut flipped = payload.to_vec();
        flipped[10] ^= 1;
        assert_eq!(verify(&header, &flipped), Err(CodecError::Checksum));
        assert_eq!(
            payload_len(&[0, 0, 0, 0xff, 0, 0, 0, 0]),
            Err(CodecError::Length(0xff00_0000))
        );
        for cut in 0..payload.len() {
            // Every prefix decodes to an error, never a panic or a wrong value.
            assert!(
                decode(&payload[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut bad_version = payload.to_vec();
        bad_version[0] = 9;
        assert_eq!(decode(&bad_version), Err(CodecError::Version(9)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = op_count(&bytes);
        }
    }
}
