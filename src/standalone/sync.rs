//! One sync pass of `tether run`: **scan → parse → resolve → apply → prune**, and the memory
//! of the previous pass that lets a later pass re-apply only what changed.
//!
//! Guarantees:
//! - Every object of every good document is applied, whatever else fails; each failure is one
//!   `error` line naming file, document, line, field and reason.
//! - A file with any error prunes nothing that it applied before; a removed file prunes
//!   everything it applied (the inventory, see [`super::inventory`]).
//! - The first pass applies every file; later passes apply the files whose text changed and
//!   the files that had errors last time (a Secret's namespace may exist now).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kube::api::GroupVersionKind;

use super::apply::{Applier, ApplyError, Located, Resolved, object_id, rank};
use super::inventory::{Entry, Inventory, InventoryError, InventoryStore};
use super::manifests::{FileError, ManifestObject, ScanError, SourceFile, scan};
use super::progress::{Progress, Reporter};

/// A failure that stops a whole pass (bad manifests never do).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The manifest directory could not be read.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The inventory could not be read or written.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

/// What the previous pass saw of one file.
struct Seen {
    content: String,
    had_errors: bool,
}

/// Keeps the manifest directory applied; call [`Syncer::sync`] after every change.
pub struct Syncer {
    root: PathBuf,
    state_dir: PathBuf,
    tether_groups: Vec<String>,
    applier: Applier,
    inventory: InventoryStore,
    reporter: Reporter,
    seen: BTreeMap<String, Seen>,
}

/// What one pass did, for its summary line and the next pass.
#[derive(Default)]
struct Pass {
    /// Errors per manifest file.
    errors: BTreeMap<String, usize>,
    applied: usize,
    pruned: usize,
    prune_errors: usize,
}

impl Pass {
    fn error_in(&mut self, file: &str) {
        *self.errors.entry(file.to_string()).or_default() += 1;
    }
}

/// A document ready to apply.
struct Planned<'a> {
    file: &'a str,
    object: &'a ManifestObject,
    resolved: Resolved,
}

impl Syncer {
    /// A syncer for the manifests under `root` (skipping `state_dir`), applying through
    /// `client`; `tether_groups` are applied after every other kind.
    pub fn new(
        client: kube::Client,
        root: &Path,
        state_dir: &Path,
        tether_groups: Vec<String>,
        reporter: Reporter,
    ) -> Self {
        Self {
            root: root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            tether_groups,
            applier: Applier::new(client.clone()),
            inventory: InventoryStore::new(client),
            reporter,
            seen: BTreeMap::new(),
        }
    }

    /// Runs one pass and prints what it did.
    pub async fn sync(&mut self) -> Result<(), SyncError> {
        let paths = scan(&self.root, Some(&self.state_dir))?;
        let files: Vec<SourceFile> = paths
            .iter()
            .map(|p| SourceFile::read(&self.root, p))
            .collect();
        let mut pass = Pass::default();
        let (desired, mut plan) = self.resolve(&files, &mut pass).await;
        plan.sort_by_key(|p| rank(&p.object.gvk, &self.tether_groups));

        // Intent record first, so that whatever gets created below is known even if the
        // process dies before the final inventory is written.
        let old = self.inventory.load().await?;
        let mut about_to_apply = Inventory::default();
        for p in &plan {
            about_to_apply.insert(entry(p.object, &p.resolved, p.file));
        }
        if !about_to_apply.is_empty() {
            self.inventory.save(&old.union(&about_to_apply)).await?;
        }

        self.apply(&plan, &mut pass).await;
        let kept = self.prune(&old, &desired, &mut pass).await;
        let new = kept.union(&desired);
        if new != old {
            self.inventory.save(&new).await?;
        }

        self.reporter.print(Progress::Synced {
            files: files.len(),
            applied: pass.applied,
            pruned: pass.pruned,
            errors: pass.errors.values().sum::<usize>() + pass.prune_errors,
        });
        self.seen = files
            .iter()
            .map(|f| {
                let seen = Seen {
                    content: f.content.clone(),
                    had_errors: pass.errors.contains_key(&f.path),
                };
                (f.path.clone(), seen)
            })
            .collect();
        Ok(())
    }

    /// Parses and resolves every document: the desired set needs all of them, the apply
    /// plan only those of files that changed (or had errors) since the last pass.
    async fn resolve<'a>(
        &mut self,
        files: &'a [SourceFile],
        pass: &mut Pass,
    ) -> (Inventory, Vec<Planned<'a>>) {
        let mut desired = Inventory::default();
        let mut plan = Vec::new();
        for file in files {
            let changed = self
                .seen
                .get(&file.path)
                .is_none_or(|s| s.content != file.content || s.had_errors);
            let docs = match &file.parsed {
                Ok(docs) => docs,
                Err(err) => {
                    if changed {
                        self.report_file_error(&file.path, err);
                    }
                    pass.error_in(&file.path);
                    continue;
                }
            };
            for doc in docs {
                let object = match doc {
                    Ok(object) => object,
                    Err(err) => {
                        if changed {
                            self.reporter.print(Progress::Error {
                                place: located(&file.path, err.index, err.line),
                                object: None,
                                reason: err.to_string(),
                            });
                        }
                        pass.error_in(&file.path);
                        continue;
                    }
                };
                match self.applier.resolve(&object.gvk).await {
                    Ok(resolved) => {
                        desired.insert(entry(object, &resolved, &file.path));
                        if changed {
                            plan.push(Planned {
                                file: &file.path,
                                object,
                                resolved,
                            });
                        }
                    }
                    Err(err) => {
                        if changed {
                            self.report_apply_error(&file.path, object, None, &err);
                        }
                        pass.error_in(&file.path);
                    }
                }
            }
        }
        (desired, plan)
    }

    /// Applies the plan in order, one line per object.
    async fn apply(&self, plan: &[Planned<'_>], pass: &mut Pass) {
        for p in plan {
            let id = object_id(p.object, &p.resolved);
            match self.applier.apply(p.object, &p.resolved, p.file).await {
                Ok(_) => {
                    pass.applied += 1;
                    self.reporter.print(Progress::Applied {
                        id,
                        source: p.file.to_string(),
                    });
                }
                Err(err) => {
                    self.report_apply_error(p.file, p.object, Some(id.to_string()), &err);
                    pass.error_in(p.file);
                }
            }
        }
    }

    /// Deletes what the previous inventory `old` has and `desired` no longer does, except
    /// what came from a file with errors. Returns the entries of `old` to keep (those of
    /// files with errors, and those whose delete failed, to retry on the next pass).
    async fn prune(&mut self, old: &Inventory, desired: &Inventory, pass: &mut Pass) -> Inventory {
        let held: BTreeSet<String> = pass.errors.keys().cloned().collect();
        let mut kept = old.from_sources(&held);
        // Reverse apply order: Tether objects go before the Secrets they name, and
        // Namespaces last.
        let mut stale = old.stale(desired, &held);
        stale.sort_by_key(|e| {
            let gvk = GroupVersionKind::gvk(&e.id.group, "", &e.id.kind);
            std::cmp::Reverse(rank(&gvk, &self.tether_groups))
        });
        for stale_entry in stale {
            match self
                .applier
                .delete(&stale_entry.id, &stale_entry.api_version)
                .await
            {
                Ok(true) => {
                    pass.pruned += 1;
                    self.reporter.print(Progress::Pruned {
                        id: stale_entry.id.clone(),
                        source: stale_entry.source.clone(),
                    });
                }
                // Already gone, or taken over by someone else.
                Ok(false) => {}
                Err(err) => {
                    pass.prune_errors += 1;
                    self.reporter.print(Progress::Error {
                        place: stale_entry.source.clone(),
                        object: Some(format!("failed to prune {}", stale_entry.id)),
                        reason: err.to_string(),
                    });
                    kept.insert(stale_entry);
                }
            }
        }
        kept
    }

    fn report_file_error(&self, path: &str, err: &FileError) {
        let place = match err {
            FileError::Syntax {
                line: Some(line), ..
            } => format!("{path} (line {line})"),
            _ => path.to_string(),
        };
        let reason = match err {
            FileError::Syntax { message, .. } => {
                format!("invalid YAML, nothing in this file was applied: {message}")
            }
            FileError::Read(_) => err.to_string(),
        };
        self.reporter.print(Progress::Error {
            place,
            object: None,
            reason,
        });
    }

    fn report_apply_error(
        &self,
        path: &str,
        object: &ManifestObject,
        id: Option<String>,
        err: &ApplyError,
    ) {
        let object_name = id.unwrap_or_else(|| {
            format!(
                "{} {}",
                object.gvk.kind.to_ascii_lowercase(),
                match &object.namespace {
                    Some(ns) => format!("{ns}/{}", object.name),
                    None => object.name.clone(),
                }
            )
        });
        self.reporter.print(Progress::Error {
            place: located(path, object.index, object.line),
            object: Some(object_name),
            reason: err.to_string(),
        });
    }
}

/// The inventory entry of `object` from manifest file `source`.
fn entry(object: &ManifestObject, resolved: &Resolved, source: &str) -> Entry {
    Entry {
        id: object_id(object, resolved),
        api_version: object.gvk.api_version(),
        source: source.to_string(),
    }
}

fn located(file: &str, index: usize, line: usize) -> String {
    Located { file, index, line }.to_string()
}
