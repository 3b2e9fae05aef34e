//! The on-disk form of the log: the segment magic, frames
//! `[len u32][crc32 u32][seq u64][kind u8][payload]` (little-endian; the CRC covers seq,
//! kind and payload), and the zero header that ends every write.
//!
//! Invariant: a frame is either whole and checked (CRC), or the log ends before it.

use super::*;

pub(super) const MAGIC: &[u8; 8] = b"HKSWAL01";
pub(super) const FRAME_HEADER: usize = 4 + 4 + 8 + 1;
/// Written after the last frame of every write: the end of the log.
pub(super) const TERMINATOR: [u8; FRAME_HEADER] = [0; FRAME_HEADER];
pub(super) enum Frame<'a> {
    Record {
        seq: u64,
        kind: u8,
        payload: &'a [u8],
        len: usize,
    },
    /// Zero fill or nothing left: the clean end of the log.
    End,
    Bad(String),
}

pub(super) fn parse_frame(buf: &[u8]) -> Frame<'_> {
    if buf.len() < FRAME_HEADER {
        if buf.iter().all(|b| *b == 0) {
            return Frame::End;
        }
        return Frame::Bad("incomplete frame header".into());
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 && crc == 0 {
        // The terminator: what follows is stale (a recycled segment) or zeros.
        return Frame::End;
    }
    if len > MAX_FRAME {
        return Frame::Bad(format!("frame length {len} is impossible"));
    }
    let total = FRAME_HEADER + len;
    if buf.len() < total {
        return Frame::Bad(format!(
            "frame needs {total} bytes, only {} present",
            buf.len()
        ));
    }
    let body = &buf[8..total];
    if crc32fast::hash(body) != crc {
        return Frame::Bad("checksum mismatch".into());
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[8..16]);
    Frame::Record {
        seq: u64::from_le_bytes(seq),
        kind: buf[16],
        payload: &buf[FRAME_HEADER..total],
        len: total,
    }
}

pub(super) fn encode_frame(out: &mut Vec<u8>, seq: u64, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}
