//! The dedup index: for each dedup key, how many times it arrived and when it last
//! did, so each delivery gets its `attempt`, `is_duplicate` and `retry_gap_ms`; and
//! its persisted form, so that a restart derives exactly what the live server did.
//!
//! The index's whole state is its arrival queue: every arrival is pushed at the back,
//! expiry (past the window) and the `max_keys` bound pop from the front, and a key is
//! known exactly while its latest arrival is in the queue. So the state after any
//! prefix of the WAL is a checkpoint of the queue plus, per later flush, the arrivals
//! pushed and how many were popped (a [`Delta`]): `(checkpoint ++ pushed…)[popped…]`.
//! The index journals its pushes and pops; each flush takes the journal at its WAL cut
//! and commits it with its manifest, so the persisted state always matches
//! `wal_through` exactly, and replaying the WAL after it continues the same sequence.
//!
//! Invariants:
//! - O(1) amortised per arrival: one hash-map probe, one queue push, one journal
//!   push; evictions pop from the front of the arrival-ordered queue.
//! - Bounded memory: at most `max_keys` arrivals are remembered (≈ 70 bytes each), and
//!   nothing older than `window`. A key whose last arrival is forgotten starts over at
//!   attempt 1. (Live counting chains: a key that keeps arriving within the window of
//!   its previous arrival keeps counting.)
//! - Keys are stored as 128-bit SipHash-1-3 hashes of the source and the key, never as
//!   text: the index holds no payload data. The hash is specified, so persisted keys
//!   mean the same to every build.
//! - [`DedupIndex::restore`] of the persisted queue followed by the same arrivals
//!   yields the same answers as the live index (a property test checks it through
//!   restarts).

use std::collections::VecDeque;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

/// What the index says about one arrival.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// Arrivals of this key within the window, this one included (1 = first).
    pub arrivals: u32,
    /// Milliseconds since the previous arrival of the key, if there was one.
    pub gap_ms: Option<f64>,
}

impl Seen {
    /// The derived columns of a delivery this arrival is: the provider's own attempt
    /// number (`provider_attempt`) wins over the count of arrivals.
    pub fn derived(self, provider_attempt: Option<i32>) -> crate::buffer::Derived {
        let attempt = provider_attempt.unwrap_or(i32::try_from(self.arrivals).unwrap_or(i32::MAX));
        crate::buffer::Derived {
            attempt,
            is_duplicate: attempt > 1,
            retry_gap_ms: self.gap_ms,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    arrivals: u32,
    last_us: i64,
}

/// One entry of the arrival queue: when, which key, and the key's arrival count then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub at_us: i64,
    pub key: u128,
    pub arrivals: u32,
}

/// How the queue changed since the last [`DedupIndex::take_delta`]: arrivals pushed
/// at the back, in order, and how many entries were popped from the front.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub pushed: Vec<Arrival>,
    pub popped: u64,
}

impl Delta {
    /// True when applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.pushed.is_empty() && self.popped == 0
    }

    /// Appends a later delta to this one.
    pub fn append(&mut self, later: Delta) {
        if self.pushed.is_empty() {
            self.pushed = later.pushed;
        } else {
            self.pushed.extend(later.pushed);
        }
        self.popped += later.popped;
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct DedupIndex {
    window_us: i64,
    max_keys: usize,
    slots: HashMap<u128, Slot, BuildHasherDefault<Prehashed>>,
    /// Arrivals, oldest first.
    order: VecDeque<Arrival>,
    /// Changes to `order` not yet taken by a flush.
    journal: Delta,
}

impl DedupIndex {
    /// An index remembering arrivals for `window_us` microseconds, at most `max_keys`.
    pub fn new(window_us: i64, max_keys: usize) -> Self {
        Self {
            window_us,
            max_keys: max_keys.max(1),
            slots: HashMap::default(),
            order: VecDeque::new(),
            journal: Delta::default(),
        }
    }

    /// The index whose queue is `queue` (a persisted state, oldest first), under
    /// possibly new limits: entries past `max_keys` are popped (and journaled), as
    /// the live index would have.
    pub fn restore(window_us: i64, max_keys: usize, queue: Vec<Arrival>) -> Self {
        let mut index = Self::new(window_us, max_keys);
        for a in &queue {
            index.slots.insert(
                a.key,
                Slot {
                    arrivals: a.arrivals,
                    last_us: a.at_us,
                },
            );
        }
        index.order = VecDeque::from(queue);
        index.trim();
        index
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
        self.push(Arrival {
            at_us,
            key: h,
            arrivals: seen.arrivals,
        });
        self.trim();
        seen
    }

    /// Seeds the index with history read back from the lake: `arrivals` earlier
    /// arrivals of `key`, the last at `last_us`. Call in ascending `last_us` order.
    #[cfg(test)]
    pub fn seed(&mut self, scope: &str, key: &str, arrivals: u32, last_us: i64) {
        let h = key_hash(scope, key);
        self.slots.insert(h, Slot { arrivals, last_us });
        self.push(Arrival {
            at_us: last_us,
            key: h,
            arrivals,
        });
        self.trim();
    }

    /// The changes since the last call (what a flush commits with its rows). The
    /// journal starts again with room for as many arrivals, so it does not grow by
    /// doubling (copying megabytes) on the WAL thread.
    pub fn take_delta(&mut self) -> Delta {
        let room = self.journal.pushed.len();
        std::mem::replace(
            &mut self.journal,
            Delta {
                pushed: Vec::with_capacity(room),
                popped: 0,
            },
        )
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    fn push(&mut self, a: Arrival) {
        self.order.push_back(a);
        self.journal.pushed.push(a);
    }

    fn expire(&mut self, now_us: i64) {
        while let Some(a) = self.order.front() {
            if now_us - a.at_us <= self.window_us {
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
        if let Some(a) = self.order.pop_front() {
            self.journal.popped += 1;
            // Only the queue entry of the key's latest arrival frees the slot.
            if self
                .slots
                .get(&a.key)
                .is_some_and(|s| s.arrivals == a.arrivals)
            {
                self.slots.remove(&a.key);
            }
        }
    }
}

/// Applies `deltas` (in order) to the queue `base`: the persisted state they describe
/// (the model the store's streaming reader is tested against).
#[cfg(test)]
pub(crate) fn replay_deltas(
    base: Vec<Arrival>,
    deltas: impl IntoIterator<Item = Delta>,
) -> Vec<Arrival> {
    let mut queue = VecDeque::from(base);
    for delta in deltas {
        queue.extend(delta.pushed);
        let popped = usize::try_from(delta.popped).unwrap_or(usize::MAX);
        queue.drain(..popped.min(queue.len()));
    }
    queue.into()
}

/// The key of `key` at source `scope`: SipHash-1-3, 128 bits, fixed keys.
fn key_hash(scope: &str, key: &str) -> u128 {
    let mut h = SipHasher13::new_with_keys(0x6b73_6f6f_6b68_6f6f, 0x7075_6465_6470_7564);
    h.write(scope.as_bytes());
    h.write(&[0xff]);
    h.write(key.as_bytes());
    h.finish128().as_u128()
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
    const STABLE_HASH: &str = "064f81fd44d72fba1aea61642d52a498";

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

    /// A small deterministic generator (xorshift), so failures replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn a_restored_queue_answers_exactly_as_the_live_index() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let window = (1 + rng.below(20) as i64) * S;
            let max_keys = 1 + rng.below(12) as usize;
            let mut live = DedupIndex::new(window, max_keys);
            // The persisted form: a checkpoint, then deltas taken at random cuts.
            let mut checkpoint = Vec::new();
            let mut deltas: Vec<Delta> = Vec::new();
            let mut restarted = DedupIndex::new(window, max_keys);
            let mut t = 0;
            for step in 0..300 {
                t += rng.below(3 * S as u64) as i64;
                let key = format!("k{}", rng.below(8));
                let source = if rng.below(5) == 0 { "b" } else { "a" };
                let a = live.observe(source, &key, t);
                let b = restarted.observe(source, &key, t);
                assert_eq!(a, b, "seed {seed} step {step}");
                if rng.below(10) == 0 {
                    deltas.push(live.take_delta());
                    if rng.below(3) == 0 {
                        checkpoint = replay_deltas(checkpoint, deltas.drain(..));
                    }
                    // Restart from what is persisted.
                    let queue = replay_deltas(checkpoint.clone(), deltas.iter().cloned());
                    restarted = DedupIndex::restore(window, max_keys, queue);
                    let _ = restarted.take_delta();
                }
            }
        }
    }

    #[test]
    fn the_key_hash_is_stable_across_builds() {
        // A persisted key must mean the same to the next build: this value is fixed.
        assert_ne!(key_hash("stripe", "evt_1"), key_hash("stripe", "evt_2"));
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
        assert_eq!(format!("{:032x}", key_hash("stripe", "evt_1")), STABLE_HASH);
    }
}
