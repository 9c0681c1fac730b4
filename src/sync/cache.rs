//! The observation cache shared by every reconcile: what the platforms' list endpoints
//! returned, per account and scope, so that one paged list serves every Environment of that
//! account instead of one read per object per reconcile (an informer for vendor APIs).
//!
//! Entries are fetched single-flight, are served while younger than the cache's max age, and
//! are written through after Tether's own writes (so a create is visible to the next
//! reconcile without a re-list). While one reconcile re-lists an entry that aged out, the
//! others are served the value it replaces (up to two max ages old) instead of waiting: a
//! re-list of thousands of objects takes a second, and every reconcile of the account would
//! otherwise hold its worker for it. Out-of-band changes are therefore seen at most two max
//! ages late, which is what a resync interval means anyway.
//!
//! A sub-list of one object (a Render service's env vars, a Vercel project's domains, a Fly
//! app's secrets) is read through [`ObserveCache::get_or_fetch_unless_changed`]: it is
//! reused while the change signal its parent's list entry carries (an `updatedAt`, a machine
//! count) is the one it was read under, up to a `keep` the caller chooses (the safety net for
//! out-of-band edits that move no signal: see [`crate::sync::SUBLIST_RECHECK_INTERVALS`]).
//! The first deadline of an entry is spread at random over `keep`, so the re-reads of objects
//! created together do not all fall into one interval.
//!
//! A list whose platform can filter by update time (Render's `updatedAfter`) is read through
//! [`ObserveCache::get_or_refresh`]: once aged out it is brought up to date by asking only for
//! what changed since the last read began (merged into the cached value), and read in full
//! only every [`FULL_LIST_AGES`] max ages, which is also how late an out-of-band deletion (or
//! an edit that moves no update time) is seen at most.
//!
//! Memory does not grow with history: entries unused for [`EVICT_AFTER_AGES`] max ages, and
//! past their reuse deadline (the sub-lists of objects deleted long ago, accounts no longer
//! used), are dropped by a sweep that runs at most once per max age.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::Either;

use crate::platform::PlatformResult;

/// What one entry caches: `(platform, scope, token fingerprint, what)`, e.g.
/// `("render", "tea-123", "ab12…", "services")`. Build it with [`CacheKey::new`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// A key from its parts; `account` is the token's fingerprint (never the token).
    pub fn new(platform: &str, account: &str, scope: &str, what: &str) -> Self {
        CacheKey(format!("{platform}\u{0}{account}\u{0}{scope}\u{0}{what}"))
    }
}

type Value = Arc<dyn Any + Send + Sync>;

struct Entry {
    value: Option<Stored>,
    /// Held while a fetch is in flight (single flight).
    fetching: Arc<tokio::sync::Mutex<()>>,
}

/// A cached value: when it was fetched, the change signal it was fetched under (sub-lists),
/// and until when it may be reused without a fetch.
struct Stored {
    at: Instant,
    value: Value,
    signal: Option<String>,
    until: Instant,
    /// Fetched to be kept longer than a max age.
    long: bool,
    /// When the last full read of the value began (refreshed entries).
    full: Instant,
    /// Wall time when the last read of the value (full or changes only) began.
    since: SystemTime,
}

/// A list refreshed with only its changes ([`ObserveCache::get_or_refresh`]) is read in full
/// again once its last full read is this many max ages old.
pub const FULL_LIST_AGES: u32 = 4;

/// How far before the last read's start a changes-only read asks from: the platform's clock
/// and its commit of an update may lag ours by this much without an update being missed.
pub const REFRESH_OVERLAP: Duration = Duration::from_secs(10);

/// A cached value to bring up to date, and the wall time to ask for its changes from.
struct Refresh<T> {
    value: Arc<T>,
    since: SystemTime,
}

/// Entries older than this many max ages are dropped (nobody read them again in that time).
pub const EVICT_AFTER_AGES: u32 = 4;

/// The shared cache. Cheap to clone.
#[derive(Clone)]
pub struct ObserveCache {
    max_age: Duration,
    entries: Arc<Mutex<HashMap<CacheKey, Entry>>>,
    /// When the last sweep ran.
    swept: Arc<Mutex<Instant>>,
}

impl std::fmt::Debug for ObserveCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveCache")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl ObserveCache {
    /// A cache whose entries are re-fetched once older than `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            entries: Arc::default(),
            swept: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// How many entries the cache holds (values, or fetches in flight).
    pub fn entries(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Drops entries no fetch is using whose value is older than [`EVICT_AFTER_AGES`] max
    /// ages (or gone), at most once per max age.
    fn sweep(&self) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept.elapsed() < self.max_age {
                return;
            }
            *swept = Instant::now();
        }
        let horizon = self.max_age * EVICT_AFTER_AGES;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, entry| {
            // A fetch in flight holds a second reference to its gate. A long keep is kept
            // one more keep past its deadline, so the read that renews it knows the object
            // had settled (and its next deadline is not spread again).
            Arc::strong_count(&entry.fetching) > 1
                || entry.value.as_ref().is_some_and(|v| {
                    let kept = if v.long {
                        v.until + v.until.saturating_duration_since(v.at)
                    } else {
                        v.until
                    };
                    now <= (v.at + horizon).max(kept)
                })
        });
    }

    /// How old an entry may be before it is fetched again.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The cached value of `key` if it is younger than the max age, or (with a `signal`) if
    /// it was fetched under that signal, is at most `keep` old and its reuse deadline has not
    /// passed.
    fn fresh<T: Send + Sync + 'static>(
        &self,
        key: &CacheKey,
        signal: Option<&str>,
        keep: Duration,
    ) -> Option<Arc<T>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let stored = entries.get(key)?.value.as_ref()?;
        let young = stored.at.elapsed() <= self.max_age;
        let unchanged = signal.is_some()
            && stored.signal.as_deref() == signal
            && stored.at.elapsed() <= keep
            && Instant::now() < stored.until;
        if !(young || unchanged) {
            return None;
        }
        stored.value.clone().downcast::<T>().ok()
    }

    /// The cached value of `key` if it is younger than `age`.
    fn younger_than<T: Send + Sync + 'static>(
        &self,
        key: &CacheKey,
        age: Duration,
    ) -> Option<Arc<T>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let stored = entries.get(key)?.value.as_ref()?;
        if stored.at.elapsed() > age {
            return None;
        }
        stored.value.clone().downcast::<T>().ok()
    }

    /// The cached value of `key` if it is younger than the max age; otherwise runs `fetch`
    /// (once, however many callers wait) and caches its result. Errors are not cached.
    pub async fn get_or_fetch<T, F, Fut>(&self, key: &CacheKey, fetch: F) -> PlatformResult<Arc<T>>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = PlatformResult<T>>,
    {
        self.fetch_unless(key, None, self.max_age, false, |_: Option<Refresh<T>>| {
            fetch()
        })
        .await
    }

    /// Like [`ObserveCache::get_or_fetch`], but a value that aged out is brought up to date by
    /// `refresh` — given the cached value and the wall time to ask for changes from (the last
    /// read's start less [`REFRESH_OVERLAP`]), it returns the value with those changes merged —
    /// instead of a full `fetch`, except every [`FULL_LIST_AGES`] max ages.
    pub async fn get_or_refresh<T, F, Fut, R, RFut>(
        &self,
        key: &CacheKey,
        fetch: F,
        refresh: R,
    ) -> PlatformResult<Arc<T>>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = PlatformResult<T>>,
        R: FnOnce(Arc<T>, SystemTime) -> RFut,
        RFut: Future<Output = PlatformResult<T>>,
    {
        self.fetch_unless(
            key,
            None,
            self.max_age,
            true,
            |previous: Option<Refresh<T>>| match previous {
                Some(Refresh { value, since }) => Either::Left(refresh(value, since)),
                None => Either::Right(fetch()),
            },
        )
        .await
    }

    /// Like [`ObserveCache::get_or_fetch`], and besides reuses a value fetched under the same
    /// `signal` (the parent object's change signal) for up to `keep` after its fetch. The
    /// first fetch of a key is reused for a random share of `keep` (at least the max age), so
    /// that sub-lists read together are not all read again together. A zero max age reuses
    /// nothing.
    pub async fn get_or_fetch_unless_changed<T, F, Fut>(
        &self,
        key: &CacheKey,
        signal: &str,
        keep: Duration,
        fetch: F,
    ) -> PlatformResult<Arc<T>>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = PlatformResult<T>>,
    {
        self.fetch_unless(key, Some(signal), keep, false, |_: Option<Refresh<T>>| {
            fetch()
        })
        .await
    }

    /// The cached value of `key` to refresh with its changes only, if it has one of type `T`
    /// whose last full read is younger than [`FULL_LIST_AGES`] max ages.
    fn refreshable<T: Send + Sync + 'static>(&self, key: &CacheKey) -> Option<Refresh<T>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let stored = entries.get(key)?.value.as_ref()?;
        if stored.full.elapsed() >= self.max_age * FULL_LIST_AGES {
            return None;
        }
        Some(Refresh {
            value: stored.value.clone().downcast::<T>().ok()?,
            since: stored
                .since
                .checked_sub(REFRESH_OVERLAP)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    /// With `refreshes` (the callers of [`ObserveCache::get_or_refresh`]), `fetch` is given what
    /// to refresh when a changes-only read may serve; otherwise always `None` (a full read).
    async fn fetch_unless<T, F, Fut>(
        &self,
        key: &CacheKey,
        signal: Option<&str>,
        keep: Duration,
        refreshes: bool,
        fetch: F,
    ) -> PlatformResult<Arc<T>>
    where
        T: Send + Sync + 'static,
        F: FnOnce(Option<Refresh<T>>) -> Fut,
        Fut: Future<Output = PlatformResult<T>>,
    {
        if let Some(hit) = self.fresh(key, signal, keep) {
            return Ok(hit);
        }
        // Whether this entry already had a long keep: only the first one is spread.
        let settled = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .and_then(|e| e.value.as_ref())
            .is_some_and(|v| v.long);
        self.sweep();
        let gate = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .entry(key.clone())
                .or_insert_with(|| Entry {
                    value: None,
                    fetching: Arc::default(),
                })
                .fetching
                .clone()
        };
        let _flight = match gate.try_lock() {
            Ok(flight) => flight,
            Err(_) => {
                // A re-list is under way: the value it replaces serves meanwhile (up to two
                // max ages old), so no reconcile holds its worker for another's re-list.
                if signal.is_none()
                    && let Some(stale) = self.younger_than::<T>(key, self.max_age * 2)
                {
                    return Ok(stale);
                }
                gate.lock().await
            }
        };
        // Another caller may have fetched while this one waited.
        if let Some(hit) = self.fresh(key, signal, keep) {
            return Ok(hit);
        }
        let previous = refreshes.then(|| self.refreshable::<T>(key)).flatten();
        let full = previous.is_none();
        let (started, since) = (Instant::now(), SystemTime::now());
        let value = Arc::new(fetch(previous).await?);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get_mut(key) {
            let full = if full {
                started
            } else {
                entry.value.as_ref().map_or(started, |v| v.full)
            };
            let long = keep > self.max_age;
            // The first long keep of an entry (a new object, or one that just settled).
            let first = !settled;
            let keep = if self.max_age.is_zero() {
                Duration::ZERO
            } else if first && long {
                keep.mul_f64(rand::random::<f64>()).max(self.max_age)
            } else {
                keep
            };
            entry.value = Some(Stored {
                at: now,
                value: value.clone() as Value,
                signal: signal.map(str::to_owned),
                until: now + keep,
                long,
                full,
                since,
            });
        }
        Ok(value)
    }

    /// Writes through: applies `change` to a copy of the cached value of `key` (if any, and of
    /// type `T`) and stores it, keeping its age. Use after Tether's own writes.
    pub fn update<T, F>(&self, key: &CacheKey, change: F)
    where
        T: Clone + Send + Sync + 'static,
        F: FnOnce(&mut T),
    {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Entry {
            value: Some(stored),
            ..
        }) = entries.get_mut(key)
        else {
            return;
        };
        if let Some(current) = stored.value.downcast_ref::<T>() {
            let mut next = current.clone();
            change(&mut next);
            stored.value = Arc::new(next);
        }
    }

    /// Drops the cached value of `key` (the next read fetches).
    pub fn invalidate(&self, key: &CacheKey) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get_mut(key) {
            entry.value = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_readers_share_one_fetch_and_later_readers_hit_the_cache() {
        let cache = ObserveCache::new(Duration::from_secs(60));
        let key = CacheKey::new("render", "acct", "tea-1", "services");
        let fetches = Arc::new(AtomicU32::new(0));
        let read = || {
            let fetches = fetches.clone();
            let cache = cache.clone();
            let key = key.clone();
            async move {
                cache
                    .get_or_fetch(&key, || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(vec!["web".to_string()])
                    })
                    .await
                    .unwrap()
            }
        };
        let results = futures::future::join_all((0..10).map(|_| read())).await;
        assert!(results.iter().all(|r| r.as_slice() == ["web"]));
        read().await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    /// Starts a re-list of `key` that takes `took` and yields `value`; returns once it is
    /// under way, with its handle.
    async fn relist(
        cache: &ObserveCache,
        key: &CacheKey,
        took: Duration,
        value: u32,
    ) -> tokio::task::JoinHandle<Arc<u32>> {
        let (started, ready) = tokio::sync::oneshot::channel();
        let (cache, key) = (cache.clone(), key.clone());
        let relist = tokio::spawn(async move {
            cache
                .get_or_fetch::<u32, _, _>(&key, || async move {
                    let _ = started.send(());
                    tokio::time::sleep(took).await;
                    Ok(value)
                })
                .await
                .unwrap()
        });
        ready.await.unwrap();
        relist
    }

    #[tokio::test]
    async fn while_one_reader_re_lists_the_others_get_the_value_it_replaces() {
        let cache = ObserveCache::new(Duration::from_millis(50));
        let key = CacheKey::new("render", "acct", "tea-1", "services");
        let v1: Arc<u32> = cache.get_or_fetch(&key, || async { Ok(1) }).await.unwrap();
        assert_eq!(*v1, 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Aged out: the first reader re-lists (slowly); one arriving meanwhile does not wait.
        let relisting = relist(&cache, &key, Duration::from_millis(300), 2).await;
        let served = Instant::now();
        let meanwhile: Arc<u32> = cache.get_or_fetch(&key, || async { Ok(3) }).await.unwrap();
        assert_eq!(*meanwhile, 1);
        assert!(served.elapsed() < Duration::from_millis(100));
        assert_eq!(*relisting.await.unwrap(), 2);
        // Past two max ages, a reader waits for the re-list rather than take older news.
        tokio::time::sleep(Duration::from_millis(110)).await;
        let relisting = relist(&cache, &key, Duration::from_millis(100), 4).await;
        let waited: Arc<u32> = cache.get_or_fetch(&key, || async { Ok(5) }).await.unwrap();
        assert_eq!(*waited, 4);
        assert_eq!(*relisting.await.unwrap(), 4);
    }

    #[tokio::test]
    async fn stale_entries_are_fetched_again_and_errors_are_not_cached() {
        let cache = ObserveCache::new(Duration::from_millis(10));
        let key = CacheKey::new("vercel", "acct", "team", "projects");
        let v1: Arc<u32> = cache.get_or_fetch(&key, || async { Ok(1) }).await.unwrap();
        assert_eq!(*v1, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = cache
            .get_or_fetch::<u32, _, _>(&key, || async {
                Err(crate::platform::PlatformError::Transient {
                    platform: crate::platform::Platform::Vercel,
                    operation: "list_projects",
                    reason: "HTTP 503".into(),
                })
            })
            .await;
        assert!(err.is_err());
        let v2: Arc<u32> = cache.get_or_fetch(&key, || async { Ok(2) }).await.unwrap();
        assert_eq!(*v2, 2);
    }

    #[tokio::test]
    async fn entries_nobody_reads_any_more_are_dropped() {
        let cache = ObserveCache::new(Duration::from_millis(100));
        for i in 0..1000 {
            let key = CacheKey::new("render", "acct", &format!("srv-{i}"), "env-vars");
            cache.get_or_fetch(&key, || async { Ok(i) }).await.unwrap();
        }
        assert!(
            cache.entries() >= 990,
            "the sweep runs at most once per max age"
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        let kept = CacheKey::new("render", "acct", "tea-1", "services");
        cache
            .get_or_fetch(&kept, || async { Ok(1u32) })
            .await
            .unwrap();
        assert_eq!(cache.entries(), 1, "only the entry read now is left");
    }

    #[tokio::test]
    async fn a_sub_list_is_reused_while_its_signal_holds_and_read_again_when_it_moves_or_keep_ends()
    {
        let cache = ObserveCache::new(Duration::from_millis(10));
        let key = CacheKey::new("render", "acct", "srv-1", "envVars");
        let fetches = Arc::new(AtomicU32::new(0));
        let read = |signal: &'static str, keep: Duration| {
            let fetches = fetches.clone();
            let cache = cache.clone();
            let key = key.clone();
            async move {
                cache
                    .get_or_fetch_unless_changed(&key, signal, keep, || async move {
                        Ok(fetches.fetch_add(1, Ordering::SeqCst))
                    })
                    .await
                    .unwrap()
            }
        };
        let keep = Duration::from_millis(300);
        read("t1", keep).await;
        // The first deadline is spread over `keep` (at least one max age): read it again
        // once that is over, then it holds for the whole of `keep`.
        tokio::time::sleep(keep + Duration::from_millis(20)).await;
        read("t1", keep).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            *read("t1", keep).await,
            1,
            "older than a max age, signal unchanged"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert_eq!(*read("t2", keep).await, 2, "the parent changed");
        tokio::time::sleep(keep + Duration::from_millis(20)).await;
        assert_eq!(
            *read("t2", keep).await,
            3,
            "the safety net: at most `keep` old"
        );
        // Without a long keep it is an ordinary entry of one max age.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*read("t2", Duration::ZERO).await, 4);
        // A zero max age reuses nothing, whatever the signal.
        let uncached = ObserveCache::new(Duration::ZERO);
        for expected in 0..2u32 {
            let got = uncached
                .get_or_fetch_unless_changed(&key, "t", keep, || async move { Ok(expected) })
                .await
                .unwrap();
            assert_eq!(*got, expected);
        }
    }

    #[tokio::test]
    async fn writes_through_are_seen_without_a_fetch() {
        let cache = ObserveCache::new(Duration::from_secs(60));
        let key = CacheKey::new("fly", "acct", "org", "apps");
        cache
            .get_or_fetch(&key, || async { Ok(vec![1u32]) })
            .await
            .unwrap();
        cache.update::<Vec<u32>, _>(&key, |apps| apps.push(2));
        let seen: Arc<Vec<u32>> = cache
            .get_or_fetch(&key, || async { panic!("must not fetch") })
            .await
            .unwrap();
        assert_eq!(seen.as_slice(), [1, 2]);
        cache.invalidate(&key);
        let refetched: Arc<Vec<u32>> = cache
            .get_or_fetch(&key, || async { Ok(vec![9]) })
            .await
            .unwrap();
        assert_eq!(refetched.as_slice(), [9]);
    }

    #[tokio::test]
    async fn an_aged_out_list_is_refreshed_with_its_changes_and_read_in_full_every_few_ages() {
        let max_age = Duration::from_millis(40);
        let cache = ObserveCache::new(max_age);
        let key = CacheKey::new("render", "acct", "tea-1", "services");
        // What a read sees: `(full reads, changes-only reads, the since of the last one)`.
        let reads = Arc::new(Mutex::new((0u32, 0u32, None::<SystemTime>)));
        let read = |value: u32| {
            let (cache, key, reads) = (cache.clone(), key.clone(), reads.clone());
            async move {
                let full_reads = reads.clone();
                cache
                    .get_or_refresh(
                        &key,
                        || async move {
                            full_reads.lock().unwrap().0 += 1;
                            Ok(vec![value])
                        },
                        |previous: Arc<Vec<u32>>, since| async move {
                            let mut seen = reads.lock().unwrap();
                            seen.1 += 1;
                            seen.2 = Some(since);
                            let mut all = Vec::clone(&previous);
                            all.push(value);
                            Ok(all)
                        },
                    )
                    .await
                    .unwrap()
            }
        };
        let first_read = SystemTime::now();
        assert_eq!(read(1).await.as_slice(), [1]);
        let first_done = SystemTime::now();
        // Young: served from the cache.
        assert_eq!(read(2).await.as_slice(), [1]);
        assert_eq!(reads.lock().unwrap().0, 1);
        // Aged out: only the changes are read, from before the first read began (less the
        // overlap), and merged into what was cached.
        tokio::time::sleep(max_age + Duration::from_millis(5)).await;
        assert_eq!(read(3).await.as_slice(), [1, 3]);
        let (full, changes, since) = *reads.lock().unwrap();
        assert_eq!((full, changes), (1, 1));
        let since = since.unwrap();
        assert!(since >= first_read - REFRESH_OVERLAP);
        assert!(since <= first_done - REFRESH_OVERLAP);
        // Once the last full read is FULL_LIST_AGES max ages old, the list is read in full.
        let full_due = Instant::now() + max_age * FULL_LIST_AGES;
        let mut last = Vec::new();
        while Instant::now() < full_due + max_age * 2 && reads.lock().unwrap().0 == 1 {
            tokio::time::sleep(max_age + Duration::from_millis(5)).await;
            last = read(4).await.to_vec();
        }
        assert_eq!(reads.lock().unwrap().0, 2, "read in full again");
        assert_eq!(last, [4]);
    }
}
