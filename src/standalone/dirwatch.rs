//! Watching the manifest directory: file-system events (via `notify`) become one "something
//! changed" signal per burst, so an editor's save (write, rename, chmod) or a `git checkout`
//! of many files triggers one sync pass, not dozens.
//!
//! Events under the state directory are ignored (the store file changes on every write; when
//! the state directory sits inside the manifest directory, it would otherwise retrigger
//! itself forever). Which files really changed is decided by the sync pass (it compares file
//! contents), so the filter here only needs to be cheap, not exact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A failure to start watching.
#[derive(Debug, thiserror::Error)]
#[error("failed to watch manifest directory {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Debounced change notifications for one directory tree.
pub struct DirWatch {
    // Kept alive for as long as events are wanted; dropping it stops the OS watch.
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    quiet: Duration,
}

impl DirWatch {
    /// Watches `root` recursively, ignoring changes under `ignore`; a burst of changes ends
    /// after `quiet` without one.
    pub fn start(root: &Path, ignore: &Path, quiet: Duration) -> Result<Self, WatchError> {
        let ignore = std::fs::canonicalize(ignore).unwrap_or_else(|_| ignore.to_path_buf());
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(event) => {
                    let relevant = event.kind.is_create()
                        || event.kind.is_modify()
                        || event.kind.is_remove()
                        || event.kind.is_other();
                    if relevant && event.paths.iter().any(|p| !p.starts_with(&ignore)) {
                        let _ = tx.send(());
                    }
                }
                // An overflowed or failed watch may have lost events: resync to be safe.
                Err(_) => {
                    let _ = tx.send(());
                }
            })
            .map_err(|source| WatchError {
                path: root.to_path_buf(),
                source,
            })?;
        let canonical = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        watcher
            .watch(&canonical, RecursiveMode::Recursive)
            .map_err(|source| WatchError {
                path: root.to_path_buf(),
                source,
            })?;
        Ok(Self {
            _watcher: watcher,
            events,
            quiet,
        })
    }

    /// Waits for the next burst of changes to end. Returns `false` if the watch stopped.
    pub async fn changed(&mut self) -> bool {
        if self.events.recv().await.is_none() {
            return false;
        }
        loop {
            match tokio::time::timeout(self.quiet, self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_is_one_change_and_the_ignored_dir_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".tether");
        std::fs::create_dir(&state).unwrap();
        let mut watch = DirWatch::start(dir.path(), &state, Duration::from_millis(200)).unwrap();

        std::fs::write(state.join("store.redb"), "x").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(500), watch.changed()).await;
        assert!(quiet.is_err(), "a write in the state dir must not count");

        for i in 0..5 {
            std::fs::write(dir.path().join(format!("{i}.yaml")), "a: 1").unwrap();
        }
        let first = tokio::time::timeout(Duration::from_secs(5), watch.changed()).await;
        assert_eq!(first.ok(), Some(true));
        let second = tokio::time::timeout(Duration::from_millis(500), watch.changed()).await;
        assert!(second.is_err(), "the burst must have been one change");
    }
}
