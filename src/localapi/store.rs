//! Persistence of objects behind the small [`Store`] trait: [`MemoryStore`] keeps nothing
//! (the in-memory indexes in `storage` are the truth), [`FileStore`] writes every change to a
//! redb file and commits it durably before the write is acknowledged.
//!
//! Layout of the file: table `objects` maps `"<storage>\u{0}<namespace>/<name>"` to the object's
//! JSON; table `meta` holds the resourceVersion counter under `"resourceVersion"`.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RV_KEY: &str = "resourceVersion";

/// A failure of the persistent store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or created.
    #[error("failed to open the store file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// Reading the stored objects failed.
    #[error("failed to load objects from the store: {0}")]
    Load(#[source] Box<redb::Error>),
    /// A stored object is not valid JSON.
    #[error("failed to decode the stored object {key}: {source}")]
    Decode {
        /// The storage key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Committing a write failed (nothing of it was applied).
    #[error("failed to commit a write to the store: {0}")]
    Commit(#[source] Box<redb::Error>),
}

/// One change to persist.
#[derive(Debug)]
pub enum StoreOp<'a> {
    /// Create or replace an object.
    Put {
        /// `"<storage>\u{0}<namespace>/<name>"`.
        key: &'a str,
        /// Its JSON.
        json: &'a [u8],
    },
    /// Remove an object.
    Delete {
        /// `"<storage>\u{0}<namespace>/<name>"`.
        key: &'a str,
    },
}

/// What a store holds at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The resourceVersion counter.
    pub resource_version: u64,
    /// (key, object) pairs.
    pub objects: Vec<(String, serde_json::Value)>,
}

/// Where objects are persisted.
pub trait Store: Send + Sync {
    /// Everything stored, read once at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Persists `ops` and the new counter atomically; returns only once durable.
    fn commit(&self, ops: &[StoreOp<'_>], resource_version: u64) -> Result<(), StoreError>;
    /// Whether commits touch the disk (then they run off the async threads).
    fn is_durable(&self) -> bool;
}

/// Keeps nothing: objects live only in the server's memory.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }

    fn commit(&self, _ops: &[StoreOp<'_>], _resource_version: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_durable(&self) -> bool {
        false
    }
}

/// A redb file (mode 0600); each commit is durable (redb's default durability) before it
/// returns.
pub struct FileStore {
    db: redb::Database,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens (or creates) the store file, creating its parent directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: redb::Error| StoreError::Open {
            path: path.to_owned(),
            source: Box::new(e),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_err(redb::Error::Io(e)))?;
        }
        // The objects include Secrets: the file is readable by its owner only, from the
        // moment it exists (an older, looser file is tightened).
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(path)
            .and_then(|_| super::access::restrict_to_owner(path, 0o600))
            .map_err(|e| open_err(redb::Error::Io(e)))?;
        let db = redb::Database::create(path).map_err(|e| open_err(e.into()))?;
        // Make sure both tables exist, so that loading an empty file works.
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        txn.open_table(OBJECTS).map_err(|e| open_err(e.into()))?;
        txn.open_table(META).map_err(|e| open_err(e.into()))?;
        txn.commit().map_err(|e| open_err(e.into()))?;
        Ok(FileStore { db })
    }
}

fn load_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Load(Box::new(e.into()))
}

fn commit_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Commit(Box::new(e.into()))
}

impl Store for FileStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(load_err)?;
        let meta = txn.open_table(META).map_err(load_err)?;
        let resource_version = meta
            .get(RV_KEY)
            .map_err(load_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = txn.open_table(OBJECTS).map_err(load_err)?;
        let mut objects = Vec::new();
        for row in table.iter().map_err(load_err)? {
            let (key, value) = row.map_err(load_err)?;
            let key = key.value().to_owned();
            let obj =
                serde_json::from_slice(value.value()).map_err(|source| StoreError::Decode {
                    key: key.clone(),
                    source,
                })?;
            objects.push((key, obj));
        }
        Ok(Loaded {
            resource_version,
            objects,
        })
    }

    fn commit(&self, ops: &[StoreOp<'_>], resource_version: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(commit_err)?;
        {
            let mut table = txn.open_table(OBJECTS).map_err(commit_err)?;
            for op in ops {
                match op {
                    StoreOp::Put { key, json } => {
                        table.insert(*key, *json).map_err(commit_err)?;
                    }
                    StoreOp::Delete { key } => {
                        table.remove(*key).map_err(commit_err)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(commit_err)?;
            meta.insert(RV_KEY, resource_version).map_err(commit_err)?;
        }
        txn.commit().map_err(commit_err)
    }

    fn is_durable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_file_store_returns_committed_objects_and_the_counter_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.redb");
        {
            let store = FileStore::open(&path).unwrap();
            let a = json!({"metadata": {"name": "a"}}).to_string();
            let b = json!({"metadata": {"name": "b"}}).to_string();
            store
                .commit(
                    &[
                        StoreOp::Put {
                            key: "cm\u{0}default/a",
                            json: a.as_bytes(),
                        },
                        StoreOp::Put {
                            key: "cm\u{0}default/b",
                            json: b.as_bytes(),
                        },
                    ],
                    7,
                )
                .unwrap();
            store
                .commit(
                    &[StoreOp::Delete {
                        key: "cm\u{0}default/a",
                    }],
                    8,
                )
                .unwrap();
        }
        let loaded = FileStore::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.resource_version, 8);
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(loaded.objects[0].0, "cm\u{0}default/b");
        assert_eq!(loaded.objects[0].1["metadata"]["name"], "b");
    }
}
