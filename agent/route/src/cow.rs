//! Containers that the next route table shares with the previous one: a change copies the
//! shard or chunk it touches, not the 10,000 entries around it.
//!
//! A table serves requests while the next is being built, so the next cannot modify it in place;
//! copying it whole would cost a cache miss or more per route (reference counts live with the
//! routes). Splitting each big map into shards and each big list into chunks, each behind an
//! `Arc`, bounds a one-route change to a few hundred entries copied.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

// Keys come from the config, never from requests: a fast unkeyed hash is safe (see Cargo.toml).
use rustc_hash::{FxBuildHasher, FxHashMap as HashMap};

/// Entries per shard a full build aims at.
const SHARD_TARGET: usize = 128;
/// At most 2^MAX_SHARD_BITS shards.
const MAX_SHARD_BITS: u32 = 8;

/// A hash map in `2^bits` shards, chosen by bits 32.. of the key's hash (the shard maps use the
/// low bits for buckets and the top seven as tags, so the choice does not skew them).
#[derive(Clone)]
pub(crate) struct Shards<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    bits: u32,
    len: usize,
}

/// Empty without allocating: a table has two path maps per host, most of them small or empty.
impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Self {
            shards: Vec::new(),
            bits: 0,
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Shards<K, V> {
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        if self.bits == 0 {
            return 0;
        }
        let hash = FxBuildHasher.hash_one(key);
        #[allow(clippy::cast_possible_truncation)]
        let index = (hash >> 32) as usize;
        index & ((1 << self.bits) - 1)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards.get(self.shard_of(key))?.get(key)
    }

    /// The shard holding `key`, for changing (copied first if another table shares it), or
    /// `None` without copying anything when no shard holds it.
    fn shard_holding<Q>(&mut self, key: &Q) -> Option<&mut HashMap<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let index = self.shard_of(key);
        let shard = self.shards.get_mut(index)?;
        if !shard.contains_key(key) {
            return None;
        }
        Some(Arc::make_mut(shard))
    }

    /// The value under `key` for changing, copying its shard first if another table shares it.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard_holding(key)?.get_mut(key)
    }

    /// The value under `key`, inserted as `V::default()` when absent.
    pub(crate) fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        if self.shards.is_empty() {
            self.shards.push(Arc::default());
        }
        let index = self.shard_of(&key);
        let shard = Arc::make_mut(&mut self.shards[index]);
        if !shard.contains_key(&key) {
            self.len += 1;
        }
        shard.entry(key).or_default()
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.shard_holding(key)?.remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Every value, for changing (a full build: copies every shared shard).
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.shards
            .iter_mut()
            .flat_map(|shard| Arc::make_mut(shard).values_mut())
    }

    /// Splits the entries into as many shards as their number calls for. Called once a full
    /// build has inserted everything.
    pub(crate) fn reshard(&mut self) {
        let wanted = (self.len / SHARD_TARGET).max(1).next_power_of_two();
        let bits = wanted.trailing_zeros().min(MAX_SHARD_BITS);
        if bits == self.bits {
            return;
        }
        let old = std::mem::take(&mut self.shards);
        self.bits = bits;
        self.shards = (0..1usize << bits)
            .map(|_| Arc::new(HashMap::default()))
            .collect();
        for shard in old {
            for (key, value) in Arc::unwrap_or_clone(shard) {
                let index = self.shard_of(&key);
                Arc::make_mut(&mut self.shards[index]).insert(key, value);
            }
        }
    }
}

/// Elements per chunk of a [`Chunks`].
const CHUNK: usize = 128;

/// A list in chunks of [`CHUNK`] elements, each shared until changed.
#[derive(Clone)]
pub(crate) struct Chunks<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> Chunks<T> {
    pub(crate) fn from_vec(items: Vec<T>) -> Self {
        let len = items.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(CHUNK));
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(Arc::new(items.by_ref().take(CHUNK).collect()));
        }
        Self { chunks, len }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, index: usize) -> &T {
        &self.chunks[index / CHUNK][index % CHUNK]
    }

    /// Replaces the element at `index`, copying its chunk first if another list shares it.
    pub(crate) fn set(&mut self, index: usize, value: T) {
        Arc::make_mut(&mut self.chunks[index / CHUNK])[index % CHUNK] = value;
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_copy_leaves_the_original_and_shares_untouched_shards() {
        let mut map: Shards<String, u32> = Shards::default();
        assert!(map.shards.is_empty(), "an empty map allocates nothing");
        assert_eq!(map.get("/r/1"), None);
        assert_eq!(map.get_mut("/r/1"), None);
        assert_eq!(map.remove("/r/1"), None);
        map.reshard();
        assert!(map.is_empty());
        for i in 0..2000u32 {
            *map.get_or_default(format!("/r/{i}")) = i;
        }
        map.reshard();
        assert_eq!(map.len(), 2000);
        assert!(map.shards.len() > 1, "2000 entries should span shards");
        let mut next = map.clone();
        *next.get_mut("/r/7").unwrap() = 70;
        assert_eq!(next.remove("/r/8"), Some(8));
        assert_eq!(next.remove("/r/8"), None);
        *next.get_or_default("/new".to_owned()) = 1;
        assert_eq!(map.get("/r/7"), Some(&7));
        assert_eq!(map.get("/r/8"), Some(&8));
        assert_eq!(map.get("/new"), None);
        assert_eq!(next.get("/r/7"), Some(&70));
        assert_eq!(next.get("/r/8"), None);
        assert_eq!(next.get("/new"), Some(&1));
        assert_eq!((map.len(), next.len()), (2000, 2000));
        let shared = map
            .shards
            .iter()
            .zip(&next.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(
            shared + 3 >= map.shards.len(),
            "only the touched shards are copied: {shared} of {} shared",
            map.shards.len()
        );
        for i in (0..2000u32).filter(|i| *i != 7 && *i != 8) {
            assert_eq!(next.get(format!("/r/{i}").as_str()), Some(&i));
        }
    }

    #[test]
    fn chunks_index_and_copy_on_change() {
        let list = Chunks::from_vec((0..1000u32).collect());
        assert_eq!(list.len(), 1000);
        assert!(list.iter().copied().eq(0..1000));
        let mut next = list.clone();
        next.set(999, 0);
        next.set(0, 999);
        assert_eq!((*list.get(0), *list.get(999)), (0, 999));
        assert_eq!((*next.get(0), *next.get(999)), (999, 0));
        assert_eq!(*next.get(500), 500);
        assert!(Arc::ptr_eq(&list.chunks[3], &next.chunks[3]));
        assert!(Chunks::<u8>::from_vec(Vec::new()).iter().next().is_none());
    }
}
