//! Reading segments back on open (and offline, read-only): records in order, a torn
//! tail cut (or skipped when read-only), stale frames of recycled segments ignored.
//!
//! Invariants: a frame that passes its checksum is never treated as torn; only an
//! incomplete or failing frame at the end of the newest segment is cut.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;

use super::*;

/// Reads every record under `dir` in order without changing anything (for offline
/// tools reading a live or crashed lake). A torn tail is skipped, not cut.
pub(crate) fn read_only_replay(
    dir: &Path,
    mut f: impl FnMut(u64, Entry),
) -> Result<ReplaySummary, WalError> {
    if !dir.exists() {
        return Ok(ReplaySummary::default());
    }
    read_dir_records(dir, false, &mut f).map(|(s, _)| s)
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".wal") else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub(super) fn read_dir_records(
    dir: &Path,
    repair: bool,
    f: &mut dyn FnMut(u64, Entry),
) -> Result<(ReplaySummary, Vec<Segment>), WalError> {
    let listed = list_segments(dir)?;
    let mut summary = ReplaySummary {
        segments: listed.len(),
        ..Default::default()
    };
    let mut segments = Vec::new();
    let count = listed.len();
    for (i, (first_seq, path)) in listed.into_iter().enumerate() {
        let newest = i + 1 == count;
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut file| file.read_to_end(&mut data))
            .map_err(|e| WalError::io(&path, e))?;
        if data.len() < MAGIC.len() || data.iter().all(|b| *b == 0) {
            // A segment created right before a crash, magic not yet durable; or a
            // zero-filled spare renamed into place whose header write failed.
            if repair {
                rewrite_magic(&path)?;
            }
            segments.push(Segment {
                first_seq,
                last_seq: first_seq.saturating_sub(1),
                path,
            });
            continue;
        }
        if &data[..MAGIC.len()] != MAGIC {
            return Err(WalError::BadMagic { path });
        }
        let mut pos = MAGIC.len();
        let mut last_seq = first_seq.saturating_sub(1);
        let mut problem = None;
        let mut clean_end = false;
        while pos < data.len() {
            match parse_frame(&data[pos..]) {
                Frame::Record {
                    seq,
                    kind,
                    payload,
                    len,
                } => {
                    let expected = last_seq + 1;
                    if seq < expected {
                        // A stale frame of a recycled segment's previous life.
                        clean_end = true;
                        break;
                    }
                    if seq > expected && last_seq >= first_seq {
                        problem = Some(format!("sequence gap: expected {expected}, found {seq}"));
                        break;
                    }
                    // A frame that passes its checksum was written whole: failing to
                    // decode it is never a torn write, and cutting it would destroy
                    // acknowledged records. Stop and say why.
                    let entry = Entry::decode(kind, payload).map_err(|e| {
                        let advice = match e {
                            DecodeError::UnknownKind(_) => {
                                "start the hookscope version that wrote it (a newer one)"
                            }
                            _ => {
                                "start the hookscope version that wrote it, and report this as a bug with the segment file"
                            }
                        };
                        WalError::Undecodable {
                            path: path.clone(),
                            seq,
                            offset: pos,
                            reason: e.to_string(),
                            advice,
                        }
                    })?;
                    f(seq, entry);
                    summary.records += 1;
                    summary.last_seq = seq;
                    last_seq = seq;
                    pos += len;
                }
                Frame::End => {
                    clean_end = true;
                    break;
                }
                Frame::Bad(why) => {
                    problem = Some(why);
                    break;
                }
            }
        }
        let tail = if clean_end {
            0
        } else {
            (data.len() - pos) as u64
        };
        if tail > 0 {
            if newest {
                // A torn write: the crash happened while this frame was being written.
                tracing::warn!(
                    segment = %path.display(),
                    offset = pos,
                    bytes = tail,
                    reason = problem.as_deref().unwrap_or("zero fill"),
                    "cutting torn tail of the newest WAL segment"
                );
                summary.torn_bytes_cut += tail;
                if repair {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| WalError::io(&path, e))?;
                    file.set_len(pos as u64)
                        .and_then(|_| file.sync_all())
                        .map_err(|e| WalError::io(&path, e))?;
                }
            } else {
                let msg = format!(
                    "{}: {} bytes unreadable at offset {} ({}); records after it in this segment are skipped",
                    path.display(),
                    tail,
                    pos,
                    problem.as_deref().unwrap_or("unknown")
                );
                tracing::error!("{msg}");
                summary.corrupt.push(msg);
            }
        }
        segments.push(Segment {
            first_seq,
            last_seq,
            path,
        });
    }
    Ok((summary, segments))
}

pub(super) fn rewrite_magic(path: &Path) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    file.write_all_at(MAGIC, 0)
        .and_then(|_| file.sync_all())
        .map_err(|e| WalError::io(path, e))
}
