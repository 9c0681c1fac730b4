//! Reading the manifest directory: which files count, how a file becomes documents, and
//! how a document becomes a [`ManifestObject`] (the only input the apply step accepts).
//!
//! First step of a `tether run` sync: **scan → parse** → resolve → apply → prune.
//!
//! - Every `*.yaml` / `*.yml` under the directory counts, recursively, in path order. Hidden
//!   files and directories (a leading `.`, e.g. `.git`, `.tether`) are skipped, as is the
//!   state directory when it sits inside the manifest directory.
//! - A file is a multi-document YAML stream; empty documents are skipped.
//! - A YAML syntax error makes the whole file unusable (a stream cannot be resumed after a
//!   syntax error), so nothing of that file is applied and nothing it applied before is pruned.
//! - A document that parses but is not an object with `apiVersion`, `kind` and
//!   `metadata.name` is rejected on its own; the file's other documents still apply.

use std::fmt;
use std::path::{Path, PathBuf};

use kube::api::GroupVersionKind;
use serde_json::Value;

/// A failure to read the manifest directory itself (not a bad manifest).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The directory (or a directory below it) could not be listed.
    #[error("failed to list manifest directory {path}: {source}")]
    ListDir {
        /// The directory that could not be listed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One manifest file, read and parsed.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the manifest directory, with `/` separators (`envs/web.yaml`).
    pub path: String,
    /// The file's text, kept to notice changes between syncs.
    pub content: String,
    /// The file's documents, or why the file as a whole could not be used.
    pub parsed: Result<Vec<Result<ManifestObject, DocumentError>>, FileError>,
}

impl SourceFile {
    /// Reads and parses `root/path`.
    pub fn read(root: &Path, path: &str) -> Self {
        match std::fs::read_to_string(root.join(path)) {
            Ok(content) => Self::parse(path.to_string(), content),
            Err(err) => Self {
                path: path.to_string(),
                content: String::new(),
                parsed: Err(FileError::Read(err.to_string())),
            },
        }
    }

    /// Parses `content` as the multi-document stream of the file `path`.
    pub fn parse(path: String, content: String) -> Self {
        let parsed = parse_stream(&content);
        Self {
            path,
            content,
            parsed,
        }
    }
}

/// Why a whole file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The file could not be read (permissions, not UTF-8, removed while reading).
    #[error("failed to read the file: {0}")]
    Read(String),
    /// The file is not valid YAML.
    #[error("failed to parse YAML{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Syntax {
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
}

/// Why one document of a file cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based index among the file's non-empty documents.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// The field at fault (`metadata.name`), or empty when the document as a whole is wrong.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// A document that has what every Kubernetes object needs: `apiVersion`, `kind` and a name.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestObject {
    /// 1-based index among the file's non-empty documents.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// Group, version and kind from `apiVersion` and `kind`.
    pub gvk: GroupVersionKind,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, if the manifest sets one.
    pub namespace: Option<String>,
    /// The whole document.
    pub body: Value,
}

/// Lists every manifest file under `root` (relative paths, sorted), skipping hidden entries
/// and `skip` (the state directory) if it lies below `root`.
pub fn scan(root: &Path, skip: Option<&Path>) -> Result<Vec<String>, ScanError> {
    let skip = skip.and_then(|s| std::fs::canonicalize(s).ok());
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ScanError::ListDir {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ScanError::ListDir {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Symlinked directories are not followed (no loops); symlinked files are read.
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let is_state_dir = skip.as_ref().is_some_and(|s| {
                    std::fs::canonicalize(&path).is_ok_and(|canonical| &canonical == s)
                });
                if !is_state_dir {
                    stack.push(path);
                }
            } else if is_manifest_file(&path)
                && let Ok(relative) = path.strip_prefix(root)
            {
                found.push(relative_string(relative));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether a path names a manifest file (`.yaml` or `.yml`).
fn is_manifest_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"))
}

fn relative_string(relative: &Path) -> String {
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn parse_stream(content: &str) -> Result<Vec<Result<ManifestObject, DocumentError>>, FileError> {
    let options = serde_saphyr::options! { with_snippet: false };
    let documents: Vec<serde_saphyr::Spanned<Value>> =
        serde_saphyr::from_multiple_with_options(content, options).map_err(|err| {
            FileError::Syntax {
                line: err
                    .location()
                    .map(|l| l.line() as usize)
                    .filter(|line| *line > 0),
                message: err.without_snippet().to_string(),
            }
        })?;
    Ok(documents
        .into_iter()
        .filter(|doc| !doc.value.is_null())
        .enumerate()
        .map(|(i, doc)| {
            let line = doc.referenced.line() as usize;
            ManifestObject::from_document(i + 1, line, doc.value)
        })
        .collect())
}

impl ManifestObject {
    /// Checks that `body` looks like a Kubernetes object.
    pub fn from_document(index: usize, line: usize, body: Value) -> Result<Self, DocumentError> {
        let error = |field: &str, reason: &str| DocumentError {
            index,
            line,
            field: field.to_string(),
            reason: reason.to_string(),
        };
        // YAML reads `name: yes`, `name: 1.10` or `name: null` as a bool, a number or null.
        let not_a_string = |field: &str, value: &Value| {
            let reason = match value {
                Value::String(_) => "must not be empty".to_string(),
                other => format!("must be a string, got {other} (quote it in YAML)"),
            };
            error(field, &reason)
        };
        let Value::Object(map) = &body else {
            return Err(error("", "a manifest must be a YAML mapping (an object)"));
        };
        let api_version = match map.get("apiVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            Some(other) => return Err(not_a_string("apiVersion", other)),
            None => return Err(error("apiVersion", "Required value")),
        };
        let kind = match map.get("kind") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => return Err(not_a_string("kind", other)),
            None => return Err(error("kind", "Required value")),
        };
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) if !group.is_empty() && !version.is_empty() => {
                (group.to_string(), version.to_string())
            }
            Some(_) => {
                return Err(error("apiVersion", "must be `version` or `group/version`"));
            }
            None => (String::new(), api_version.to_string()),
        };
        let metadata = match map.get("metadata") {
            Some(Value::Object(m)) => m,
            Some(_) => return Err(error("metadata", "must be a mapping")),
            None => return Err(error("metadata.name", "Required value")),
        };
        let name = match metadata.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => return Err(not_a_string("metadata.name", other)),
            None if metadata.contains_key("generateName") => {
                return Err(error(
                    "metadata.name",
                    "Required value: apply needs a fixed name (generateName cannot be applied)",
                ));
            }
            None => return Err(error("metadata.name", "Required value")),
        };
        let namespace = match metadata.get("namespace") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => None,
            Some(other) => return Err(not_a_string("metadata.namespace", other)),
        };
        Ok(Self {
            index,
            line,
            gvk: GroupVersionKind::gvk(&group, &version, &kind),
            name,
            namespace,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> Vec<Result<ManifestObject, DocumentError>> {
        SourceFile::parse("f.yaml".into(), yaml.into())
            .parsed
            .expect("valid yaml")
    }

    #[test]
    fn a_multi_document_stream_yields_each_object_with_its_index_and_line() {
        let docs = objects(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: staging\n---\n\
             apiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: web\n  namespace: staging\n",
        );
        assert_eq!(docs.len(), 2);
        let ns = docs[0].as_ref().unwrap();
        assert_eq!((ns.index, ns.line), (1, 1));
        assert_eq!(ns.gvk, GroupVersionKind::gvk("", "v1", "Namespace"));
        let env = docs[1].as_ref().unwrap();
        assert_eq!((env.index, env.line, env.name.as_str()), (2, 6, "web"));
        assert_eq!(env.gvk.group, "tether.dev");
        assert_eq!(env.namespace.as_deref(), Some("staging"));
    }

    #[test]
    fn empty_documents_are_skipped() {
        let docs = objects(
            "---\n---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n",
        );
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].as_ref().unwrap().index, 1);
    }

    #[test]
    fn a_document_without_a_name_is_rejected_naming_the_field_while_others_parse() {
        let docs = objects(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        );
        let err = docs[0].as_ref().unwrap_err();
        assert_eq!((err.index, err.field.as_str()), (1, "metadata.name"));
        assert!(err.reason.contains("Required"));
        assert_eq!(docs[1].as_ref().unwrap().name, "b");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_rejected() {
        let docs = objects("- a\n- b\n");
        assert!(docs[0].as_ref().unwrap_err().reason.contains("mapping"));
    }

    #[test]
    fn a_name_that_yaml_reads_as_a_bool_says_to_quote_it() {
        let docs = objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: true}\n");
        let err = docs[0].as_ref().unwrap_err();
        assert_eq!(err.field, "metadata.name");
        assert_eq!(err.reason, "must be a string, got true (quote it in YAML)");
    }

    #[test]
    fn a_missing_kind_is_named() {
        let docs = objects("apiVersion: v1\nmetadata: {name: a}\n");
        assert_eq!(docs[0].as_ref().unwrap_err().field, "kind");
    }

    #[test]
    fn a_yaml_syntax_error_names_the_line() {
        let file = SourceFile::parse(
            "bad.yaml".into(),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n".into(),
        );
        match file.parsed {
            Err(FileError::Syntax { line, message }) => {
                assert!(line.is_some_and(|l| l >= 4), "line {line:?}");
                assert!(!message.is_empty());
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn scan_finds_yaml_files_recursively_and_skips_hidden_and_state_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("envs/prod")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(root.join("state")).unwrap();
        for file in [
            "a.yaml",
            "envs/b.yml",
            "envs/prod/c.YAML",
            "notes.txt",
            ".hidden.yaml",
            ".git/x.yaml",
            "state/y.yaml",
        ] {
            std::fs::write(root.join(file), "").unwrap();
        }
        let found = scan(root, Some(&root.join("state"))).unwrap();
        assert_eq!(found, vec!["a.yaml", "envs/b.yml", "envs/prod/c.YAML"]);
    }
}
