//! The dedup index: for each dedup key, how many times it arrived and when it last
//! did, so each delivery gets its `attempt`, `is_duplicate` and `retry_gap_ms`.
//!
//! Invariants:
//! - O(1) amortised per arrival: one hash-map probe and one queue push; evictions pop
//!   from the front of an arrival-ordered queue.
//! - Bounded memory: at most `max_keys` arrivals are remembered (≈ 70 bytes each), and
//!   nothing older than `window`. A key whose last arrival is forgotten starts over at
//!   attempt 1.
//! - Keys are stored as 128-bit hashes, never as text: the index holds no payload data.
//! - The index is never persisted. After a restart the engine rebuilds it from the lake
//!   and then replays the WAL through it, in order, so it is correct after restarts.

use std::collections::VecDeque;
use std::collections::hash_map::{DefaultHasher, Entry, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// What the index says about one arrival.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// Arrivals of this key within the window, this one included (1 = first).
    pub arrivals: u32,
    /// Milliseconds since the previous arrival of the key, if there was one.
    pub gap_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    arrivals: u32,
    last_us: i64,
}

/// See the module docs.
#[derive(Debug)]
pub struct DedupIndex {
    window_us: i64,
    max_keys: usize,
    slots: HashMap<u128, Slot, BuildHasherDefault<Prehashed>>,
    /// (arrival time, key, arrival count at that time), oldest first.
    order: VecDeque<(i64, u128, u32)>,
}

impl DedupIndex {
    /// An index remembering arrivals for `window_us` microseconds, at most `max_keys`.
    pub fn new(window_us: i64, max_keys: usize) -> Self {
        Self {
            window_us,
            max_keys: max_keys.max(1),
            slots: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Records an arrival of `key` at source `scope` at `at_us` and says how it
    /// relates to earlier arrivals of the same key at the same source. (A provider
    /// sending one event to two endpoints is not a retry.)
    pub fn observe(&mut self, scope: &str, key: &str, at_us: i64) -> Seen {
        self.expire(at_us);
        let h = key_hash(scope, key);
        let seen = match self.slots.entry(h) {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                let gap_ms = (at_us - slot.last_us).max(0) as f64 / 1000.0;
                slot.arrivals += 1;
                slot.last_us = at_us;
                Seen {
                    arrivals: slot.arrivals,
                    gap_ms: Some(gap_ms),
                }
            }
            Entry::Vacant(e) => {
                e.insert(Slot {
                    arrivals: 1,
                    last_us: at_us,
                });
                Seen {
                    arrivals: 1,
                    gap_ms: None,
                }
            }
        };
        self.order.push_back((at_us, h, seen.arrivals));
        self.trim();
        seen
    }

    /// Seeds the index with history read back from the lake: `arrivals` earlier
    /// arrivals of `key`, the last at `last_us`. Call in ascending `last_us` order.
    pub fn seed(&mut self, scope: &str, key: &str, arrivals: u32, last_us: i64) {
        let h = key_hash(scope, key);
        self.slots.insert(h, Slot { arrivals, last_us });
        self.order.push_back((last_us, h, arrivals));
        self.trim();
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The window, in microseconds.
    pub fn window_us(&self) -> i64 {
        self.window_us
    }

    /// The most arrivals remembered.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    fn expire(&mut self, now_us: i64) {
        while let Some(&(at, _, _)) = self.order.front() {
            if now_us - at <= self.window_us {
                break;
            }
            self.pop_front();
        }
    }

    fn trim(&mut self) {
        while self.order.len() > self.max_keys {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, h, arrivals)) = self.order.pop_front() {
            // Only the queue entry of the key's latest arrival frees the slot.
            if self.slots.get(&h).is_some_and(|s| s.arrivals == arrivals) {
                self.slots.remove(&h);
            }
        }
    }
}

fn key_hash(scope: &str, key: &str) -> u128 {
    let mut a = DefaultHasher::new();
    (scope, key).hash(&mut a);
    let mut b = DefaultHasher::new();
    0x9e37_79b9_u32.hash(&mut b);
    (scope, key).hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Keys are already uniform hashes: use their low bits as the map hash.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn repeated_keys_count_attempts_and_gaps() {
        let mut idx = DedupIndex::new(3600 * S, 100);
        assert_eq!(
            idx.observe("s", "evt_1", 0),
            Seen {
                arrivals: 1,
                gap_ms: None
            }
        );
        assert_eq!(
            idx.observe("s", "evt_2", S),
            Seen {
                arrivals: 1,
                gap_ms: None
            }
        );
        assert_eq!(
            idx.observe("s", "evt_1", 5 * S),
            Seen {
                arrivals: 2,
                gap_ms: Some(5000.0)
            }
        );
        assert_eq!(
            idx.observe("s", "evt_1", 65 * S),
            Seen {
                arrivals: 3,
                gap_ms: Some(60000.0)
            }
        );
    }

    #[test]
    fn keys_older_than_the_window_start_over() {
        let mut idx = DedupIndex::new(10 * S, 100);
        idx.observe("s", "a", 0);
        assert_eq!(idx.observe("s", "a", 5 * S).arrivals, 2);
        assert_eq!(
            idx.observe("s", "a", 16 * S).arrivals,
            1,
            "last arrival 11 s ago, window 10 s"
        );
    }

    #[test]
    fn memory_is_bounded_by_max_keys() {
        let mut idx = DedupIndex::new(i64::MAX / 2, 1000);
        for i in 0..100_000 {
            idx.observe("s", &format!("k{i}"), i);
        }
        assert!(idx.len() <= 1000);
        assert!(idx.order.len() <= 1000);
        // The most recent keys are still known.
        assert_eq!(idx.observe("s", "k99999", 100_000).arrivals, 2);
        // The oldest were forgotten.
        assert_eq!(idx.observe("s", "k0", 100_001).arrivals, 1);
    }

    #[test]
    fn an_older_queue_entry_does_not_evict_a_newer_arrival() {
        let mut idx = DedupIndex::new(i64::MAX / 2, 3);
        idx.observe("s", "a", 1);
        idx.observe("s", "a", 2);
        idx.observe("s", "b", 3);
        idx.observe("s", "c", 4); // pops ("a", 1): "a" arrived again since, keep it
        assert_eq!(idx.observe("s", "a", 5).arrivals, 3);
    }

    #[test]
    fn the_same_key_at_another_source_is_not_a_retry() {
        let mut idx = DedupIndex::new(100 * S, 10);
        assert_eq!(idx.observe("a", "evt", 0).arrivals, 1);
        assert_eq!(idx.observe("b", "evt", 1).arrivals, 1);
        assert_eq!(idx.observe("a", "evt", 2).arrivals, 2);
    }

    #[test]
    fn seeded_history_continues() {
        let mut idx = DedupIndex::new(100 * S, 10);
        idx.seed("s", "evt", 2, 10 * S);
        assert_eq!(
            idx.observe("s", "evt", 12 * S),
            Seen {
                arrivals: 3,
                gap_ms: Some(2000.0)
            }
        );
    }
}
