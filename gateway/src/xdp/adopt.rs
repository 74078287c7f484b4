//! Adopting pinned list maps: the kernel's table and overflow maps are read back, matched key
//! by key against the lists of the state file, and corrected in place, while the program
//! that runs on them keeps enforcing.
//!
//! A key the state file lists and the kernel holds stays where it is (its flags corrected if
//! they differ), so it is enforced throughout; keys the kernel holds but the file does not
//! (removed or expired while no daemon ran) are cleared; keys missing from the kernel are
//! inserted. Buckets' overflow counts are recomputed from the overflow maps, which also
//! repairs a count left wrong by a crash between the two writes of an overflowed insert.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    path::Path,
};

use gateway_common::maps::lists::{self, Key4, Key6, ListBucket};
use ipnet::IpNet;

use super::{map_error, ListKey, Place, Refs, Tables};
use crate::lists::ListKind;

/// What the kernel's list maps held when the daemon started.
pub(super) struct Snapshot {
    /// Buckets of the table that are not empty.
    buckets: StdHashMap<u32, ListBucket>,
    over4: StdHashMap<Key4, u32>,
    over6: StdHashMap<Key6, u32>,
}

/// What adopting changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Keys the kernel held as the state file says.
    pub kept: usize,
    /// Keys the kernel held with other flags (block/allow), corrected.
    pub corrected: usize,
    /// Keys the state file lists that the kernel lacked, inserted.
    pub added: usize,
    /// Keys the kernel held that the state file does not list, removed.
    pub removed: usize,
}

impl Snapshot {
    /// Reads the table (pinned at `table_pin`, in batches) and both overflow maps.
    pub(super) fn read(tables: &Tables, table_pin: &Path) -> Result<Snapshot, String> {
        let mut buckets = StdHashMap::new();
        let size = std::mem::size_of::<ListBucket>();
        super::pin::for_each_array_value(table_pin, size, |index, bytes| {
            // SAFETY: `bytes` holds one ListBucket as the kernel stores it (repr(C), plain
            // integers, any bit pattern valid).
            let bucket: ListBucket = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            if bucket != ListBucket::default() {
                buckets.insert(index, bucket);
            }
        })
        .map_err(|e| format!("reading the pinned list table {}: {e}", table_pin.display()))?;
        let mut over4 = StdHashMap::new();
        for item in tables.list4.iter() {
            let (k, v) = item.map_err(|e| map_error("reading the pinned LIST4", e))?;
            over4.insert(k, v);
        }
        let mut over6 = StdHashMap::new();
        for item in tables.list6.iter() {
            let (k, v) = item.map_err(|e| map_error("reading the pinned LIST6", e))?;
            over6.insert(k, v);
        }
        Ok(Snapshot {
            buckets,
            over4,
            over6,
        })
    }
}

impl Tables {
    /// Takes over what `snapshot` holds and makes the kernel hold exactly the keys of `allow`
    /// and `block`. On error the kernel still holds every key it held that the lists want.
    pub(super) fn adopt(
        &mut self,
        snapshot: Snapshot,
        allow: &[IpNet],
        block: &[IpNet],
    ) -> Result<Reconciled, String> {
        let mut desired: StdHashMap<ListKey, Refs> = StdHashMap::new();
        for (kind, nets) in [(ListKind::Allow, allow), (ListKind::Block, block)] {
            for net in nets {
                for key in ListKey::expand(net) {
                    let refs = desired.entry(key).or_default();
                    let count = refs.count(kind);
                    *count = count.saturating_add(1);
                }
            }
        }
        let Snapshot {
            buckets,
            over4,
            over6,
        } = snapshot;
        self.keys.clear();
        self.per_target = Default::default();
        self.buckets = buckets;
        let mut done = Reconciled::default();
        let mut claimed_slots: HashSet<(u32, usize)> = HashSet::new();
        let mut claimed_over: HashSet<ListKey> = HashSet::new();
        // Keys present with other flags: (key, place, flags wanted).
        let mut corrections: Vec<(ListKey, Place, u32)> = Vec::new();
        let mut missing: Vec<(ListKey, Refs)> = Vec::new();
        for (key, refs) in desired {
            let fingerprint = key.fingerprint(self.seed);
            let index = lists::bucket(fingerprint, self.buckets_mask);
            let bucket = self.buckets.get(&index).copied().unwrap_or_default();
            let slot = (fingerprint != 0)
                .then(|| {
                    (0..bucket.fingerprints.len()).find(|s| {
                        bucket.fingerprints[*s] == fingerprint
                            && !claimed_slots.contains(&(index, *s))
                    })
                })
                .flatten();
            let overflowed = match key {
                ListKey::V4(k) => over4.get(&k).copied(),
                ListKey::V6(k) => over6.get(&k).copied(),
            };
            let (place, flags) = match (slot, overflowed) {
                (Some(s), _) => {
                    claimed_slots.insert((index, s));
                    (Place::Slot(index, s), bucket.flags[s])
                }
                (None, Some(flags)) => {
                    claimed_over.insert(key);
                    (Place::Overflow(index), flags)
                }
                (None, None) => {
                    missing.push((key, refs));
                    continue;
                }
            };
            if flags == refs.flags() {
                done.kept += 1;
            } else {
                corrections.push((key, place, refs.flags()));
            }
            self.per_target[key.target_index()] += 1;
            self.keys.insert(key, (refs, place));
        }

        // Buckets: unclaimed slots cleared, overflow counts as the overflow maps say.
        let mut overflow_counts: StdHashMap<u32, u32> = StdHashMap::new();
        for key in &claimed_over {
            if let Some((_, Place::Overflow(index))) = self.keys.get(key) {
                *overflow_counts.entry(*index).or_default() += 1;
            }
        }
        let mut indexes: Vec<u32> = self
            .buckets
            .keys()
            .chain(overflow_counts.keys())
            .copied()
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        for index in indexes {
            let old = self.buckets.get(&index).copied().unwrap_or_default();
            let mut new = old;
            for s in 0..new.fingerprints.len() {
                if new.fingerprints[s] != 0 && !claimed_slots.contains(&(index, s)) {
                    new.fingerprints[s] = 0;
                    new.flags[s] = 0;
                    done.removed += 1;
                }
            }
            new.overflow = overflow_counts.get(&index).copied().unwrap_or(0);
            if new != old {
                self.write_bucket(index, new)
                    .map_err(|e| map_error("rewriting a pinned list bucket", e))?;
            }
        }
        // Overflowed keys the lists no longer hold.
        let stale: Vec<ListKey> = over4
            .keys()
            .map(|k| ListKey::V4(*k))
            .chain(over6.keys().map(|k| ListKey::V6(*k)))
            .filter(|k| !claimed_over.contains(k))
            .collect();
        for key in stale {
            self.remove_overflow(key)
                .map_err(|e| map_error("removing a stale overflowed key", e))?;
            done.removed += 1;
        }
        // Flags that differ: one write each, the key stays in place.
        for (key, place, flags) in corrections {
            match place {
                Place::Slot(index, slot) => {
                    let mut bucket = self.buckets.get(&index).copied().unwrap_or_default();
                    bucket.flags[slot] = flags;
                    self.write_bucket(index, bucket)
                }
                Place::Overflow(_) => match key {
                    ListKey::V4(k) => self.list4.insert(k, flags, 0),
                    ListKey::V6(k) => self.list6.insert(k, flags, 0),
                },
            }
            .map_err(|e| map_error("correcting a pinned list key", e))?;
            done.corrected += 1;
        }
        // Keys the kernel lacked: inserted as a CLI add does.
        for (key, refs) in missing {
            self.set(key, Refs::default(), refs)
                .map_err(|e| map_error("inserting a listed key into the pinned maps", e))?;
            done.added += 1;
        }
        Ok(done)
    }
}
