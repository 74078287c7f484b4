//! A bounded cache of verified credentials, keyed by the SHA-256 of the token.
//!
//! A hit costs one hash of the token, one lock of a shard and one map lookup: no JSON, no
//! signature. Entries never outlive the token's `exp` (the caller gives the deadline), nor the
//! key set they were verified with: each carries the set's generation, and a lookup with
//! another generation misses. A full shard first drops its expired entries, then an arbitrary
//! quarter of the rest.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{Arc, Mutex},
};

use sha2::{Digest as _, Sha256};

use super::Verified;

/// SHA-256 of a token.
pub type Digest = [u8; 32];

pub fn digest(token: &[u8]) -> Digest {
    Sha256::digest(token).into()
}

const SHARDS: usize = 16;

/// The keys are already uniform (SHA-256): their first eight bytes are the hash.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
}

type Shard = HashMap<Digest, Entry, BuildHasherDefault<PrefixHasher>>;

struct Entry {
    /// Unix seconds; the entry is used while `now < until`.
    until: u64,
    /// The generation of the key set that verified it (see [`TokenCache::get`]).
    generation: u64,
    value: Arc<Verified>,
}

pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl TokenCache {
    /// A cache of about `capacity` entries; 0 keeps nothing.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &Digest) -> &Mutex<Shard> {
        // The last byte picks the shard, the first eight the bucket.
        &self.shards[usize::from(key[31]) % SHARDS]
    }

    /// The entry for `key` if it is still valid at `now` and was verified with key set
    /// `generation` (a provider whose keys never change uses 0; one that fetches them counts
    /// the sets that changed, so that a token signed with a key withdrawn since is verified
    /// again rather than served from here).
    pub fn get(&self, key: &Digest, now: u64, generation: u64) -> Option<Arc<Verified>> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        match shard.get(key) {
            Some(e) if now < e.until && e.generation == generation => Some(e.value.clone()),
            _ => None,
        }
    }

    /// Keeps `value` until `until` (unix seconds); nothing when that is not in the future.
    /// `generation`: that of the key set read before verifying.
    pub fn insert(&self, key: Digest, until: u64, value: Arc<Verified>, now: u64, generation: u64) {
        if self.per_shard == 0 || until <= now {
            return;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| now < e.until);
            if shard.len() >= self.per_shard {
                let mut i = 0usize;
                shard.retain(|_, _| {
                    i += 1;
                    !i.is_multiple_of(4)
                });
                // A shard of fewer than four entries keeps them all above: drop one.
                if shard.len() >= self.per_shard {
                    if let Some(k) = shard.keys().next().copied() {
                        shard.remove(&k);
                    }
                }
            }
        }
        shard.insert(
            key,
            Entry {
                until,
                generation,
                value,
            },
        );
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(s: &str) -> Arc<Verified> {
        Arc::new(Verified {
            subject: s.into(),
            ..Verified::default()
        })
    }

    #[test]
    fn hits_until_the_deadline_only() {
        let c = TokenCache::new(100);
        let k = digest(b"token");
        c.insert(k, 110, verified("a"), 100, 0);
        assert_eq!(c.get(&k, 100, 0).unwrap().subject, "a");
        assert_eq!(c.get(&k, 109, 0).unwrap().subject, "a");
        assert!(c.get(&k, 110, 0).is_none());
        assert!(c.get(&digest(b"other"), 100, 0).is_none());
        // A deadline already past is not kept.
        let k2 = digest(b"late");
        c.insert(k2, 100, verified("b"), 100, 0);
        assert!(c.get(&k2, 99, 0).is_none());
    }

    #[test]
    fn another_key_set_misses() {
        let c = TokenCache::new(100);
        let k = digest(b"token");
        c.insert(k, 110, verified("a"), 100, 3);
        assert_eq!(c.get(&k, 100, 3).unwrap().subject, "a");
        assert!(c.get(&k, 100, 4).is_none());
        // Verified again with the new set, it is kept again.
        c.insert(k, 110, verified("a"), 100, 4);
        assert!(c.get(&k, 100, 4).is_some());
    }

    #[test]
    fn stays_bounded() {
        let c = TokenCache::new(64);
        for i in 0..10_000u32 {
            c.insert(digest(&i.to_le_bytes()), 1000, verified("x"), 1, 0);
            assert!(c.len() <= 64 + SHARDS, "{}", c.len());
        }
        let last = digest(&9_999u32.to_le_bytes());
        assert!(c.get(&last, 1, 0).is_some());
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let c = TokenCache::new(0);
        let k = digest(b"t");
        c.insert(k, 1000, verified("x"), 1, 0);
        assert!(c.get(&k, 1, 0).is_none());
    }
}
