//! The file format of the persisted dedup index: a header (checkpoint or changes,
//! arrivals popped, arrivals that follow), the arrivals, and a CRC, zstd-compressed;
//! written and read as streams, so a checkpoint of the whole index is never held in
//! memory twice.
//!
//! Invariant: a file is read only whole: a bad magic, a newer format, a wrong length
//! or a CRC mismatch is an error, never a shorter state.

use thiserror::Error;

use crate::engine::dedup::{Arrival, Delta};

/// A persisted dedup file that cannot be read.
#[derive(Debug, Error, PartialEq)]
pub(crate) enum StateError {
    #[error("not a hookscope dedup state file (bad magic)")]
    BadMagic,
    #[error("dedup state format {0} is newer than this build reads ({FORMAT})")]
    TooNew(u32),
    #[error("dedup state file is damaged ({0})")]
    Damaged(&'static str),
}

const MAGIC: &[u8; 8] = b"HKSDEDUP";
const FORMAT: u32 = 1;
const ENTRY: usize = 8 + 16 + 4;
/// zstd level of state files (the keys are random bytes; level 1 is as good).
const ZSTD_LEVEL: i32 = 1;

/// What a persisted dedup file's header says: a whole queue (a checkpoint: `popped`
/// is 0) or the changes of one or more flushes, and how many arrivals follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateHeader {
    pub checkpoint: bool,
    pub popped: u64,
    pub count: u64,
}

const HEADER: usize = 8 + 4 + 1 + 8 + 8;

/// Writes a state file arrival by arrival: zstd of `[magic][format u32][checkpoint
/// u8][popped u64][count u64][count × (at i64, key u128, arrivals u32)][crc32 u32]`,
/// little-endian, the CRC over everything before it. Streaming, so a checkpoint of
/// the whole index is never held in memory twice.
pub(crate) struct StateWriter {
    zstd: zstd::stream::write::Encoder<'static, Vec<u8>>,
    crc: crc32fast::Hasher,
    left: u64,
}

impl StateWriter {
    pub fn new(header: StateHeader) -> std::io::Result<Self> {
        let mut w = Self {
            zstd: zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?,
            crc: crc32fast::Hasher::new(),
            left: header.count,
        };
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&FORMAT.to_le_bytes());
        head.push(u8::from(header.checkpoint));
        head.extend_from_slice(&header.popped.to_le_bytes());
        head.extend_from_slice(&header.count.to_le_bytes());
        w.write(&head)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.crc.update(bytes);
        self.zstd.write_all(bytes)
    }

    pub fn push(&mut self, a: &Arrival) -> std::io::Result<()> {
        self.left = self
            .left
            .checked_sub(1)
            .ok_or_else(|| std::io::Error::other("more arrivals than the header says"))?;
        let mut e = [0u8; ENTRY];
        e[..8].copy_from_slice(&a.at_us.to_le_bytes());
        e[8..24].copy_from_slice(&a.key.to_le_bytes());
        e[24..].copy_from_slice(&a.arrivals.to_le_bytes());
        self.write(&e)
    }

    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        if self.left != 0 {
            return Err(std::io::Error::other("fewer arrivals than the header says"));
        }
        let crc = self.crc.clone().finalize();
        self.zstd.write_all(&crc.to_le_bytes())?;
        self.zstd.finish()
    }
}

/// Reads a state file written by [`StateWriter`] arrival by arrival.
pub(crate) struct StateReader<'a> {
    input: Box<dyn std::io::Read + 'a>,
    crc: crc32fast::Hasher,
    header: StateHeader,
    left: u64,
}

impl<'a> StateReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, StateError> {
        let input: Box<dyn std::io::Read + 'a> = if bytes.starts_with(MAGIC) {
            Box::new(bytes)
        } else {
            Box::new(zstd::stream::read::Decoder::new(bytes).map_err(|_| StateError::BadMagic)?)
        };
        let mut r = Self {
            input,
            crc: crc32fast::Hasher::new(),
            header: StateHeader {
                checkpoint: false,
                popped: 0,
                count: 0,
            },
            left: 0,
        };
        let mut head = [0u8; HEADER];
        r.read(&mut head).map_err(|_| StateError::BadMagic)?;
        if &head[..8] != MAGIC {
            return Err(StateError::BadMagic);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let format = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if format > FORMAT {
            return Err(StateError::TooNew(format));
        }
        r.header = StateHeader {
            checkpoint: head[12] == 1,
            popped: u64_at(13),
            count: u64_at(21),
        };
        r.left = r.header.count;
        Ok(r)
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.input.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    pub fn header(&self) -> StateHeader {
        self.header
    }

    /// The next arrival; `None` after the last, once the checksum matched.
    pub fn next_arrival(&mut self) -> Result<Option<Arrival>, StateError> {
        if self.left == 0 {
            let mut crc = [0u8; 4];
            self.input
                .read_exact(&mut crc)
                .map_err(|_| StateError::Damaged("too short"))?;
            if self.crc.clone().finalize() != u32::from_le_bytes(crc) {
                return Err(StateError::Damaged("checksum mismatch"));
            }
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra).unwrap_or(0) != 0 {
                return Err(StateError::Damaged("bytes after the checksum"));
            }
            return Ok(None);
        }
        self.left -= 1;
        let mut e = [0u8; ENTRY];
        self.read(&mut e)
            .map_err(|_| StateError::Damaged("length does not match the count"))?;
        let mut at = [0u8; 8];
        at.copy_from_slice(&e[..8]);
        let mut key = [0u8; 16];
        key.copy_from_slice(&e[8..24]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&e[24..28]);
        Ok(Some(Arrival {
            at_us: i64::from_le_bytes(at),
            key: u128::from_le_bytes(key),
            arrivals: u32::from_le_bytes(n),
        }))
    }
}

/// A state file holding `delta` (a checkpoint when `checkpoint`).
pub(crate) fn encode_state(checkpoint: bool, delta: &Delta) -> std::io::Result<Vec<u8>> {
    let mut w = StateWriter::new(StateHeader {
        checkpoint,
        popped: delta.popped,
        count: delta.pushed.len() as u64,
    })?;
    for a in &delta.pushed {
        w.push(a)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dedup::DedupIndex;

    const S: i64 = 1_000_000;

    /// Every arrival of a state file, checked to its end.
    fn read_all(bytes: &[u8]) -> Result<(StateHeader, Vec<Arrival>), StateError> {
        let mut r = StateReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(a) = r.next_arrival()? {
            out.push(a);
        }
        Ok((r.header(), out))
    }

    #[test]
    fn state_files_round_trip_and_damage_is_detected() {
        let mut idx = DedupIndex::new(100 * S, 3);
        for (i, k) in ["a", "b", "a", "c", "d"].iter().enumerate() {
            idx.observe("s", k, i as i64 * S);
        }
        let delta = idx.take_delta();
        assert_eq!(delta.pushed.len(), 5);
        assert_eq!(delta.popped, 2);
        let bytes = encode_state(false, &delta).unwrap();
        let (header, pushed) = read_all(&bytes).unwrap();
        assert_eq!(
            header,
            StateHeader {
                checkpoint: false,
                popped: 2,
                count: 5
            }
        );
        assert_eq!(pushed, delta.pushed);
        // The raw form reads too; a flipped bit and a cut file do not.
        let mut raw = zstd::stream::decode_all(&bytes[..]).unwrap();
        assert_eq!(read_all(&raw).unwrap().1, delta.pushed);
        let n = raw.len();
        raw[n - 10] ^= 1;
        assert_eq!(
            read_all(&raw).unwrap_err(),
            StateError::Damaged("checksum mismatch")
        );
        raw[n - 10] ^= 1;
        assert!(read_all(&raw[..n - 3]).is_err());
        assert!(matches!(
            StateReader::new(b"garbage"),
            Err(StateError::BadMagic)
        ));
    }
}
