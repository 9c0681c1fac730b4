//! Where migrations come from, parsed into one validated, ordered [`MigrationSet`].
//!
//! Three sources, one shape: an inline list (the Migration spec), a ConfigMap's data map
//! whose keys are `<version>_<name>.sql` (what a kustomize `configMapGenerator` makes from
//! `supabase/migrations/`), and a local directory (the CLI). File names follow the Supabase
//! CLI's pattern `^([0-9]+)_(.*)\.sql$`; versions are ordered by numeric value, and two
//! files with the same numeric version are an error rather than a coin toss.
//!
//! A directory is read as the Supabase CLI reads `supabase/migrations`: a `*.sql` file whose
//! name does not match (`seed.sql`, `local_20240107152745_x.sql`) is skipped with a warning
//! ([`MigrationSet::skipped`]) instead of stopping lint, plan and apply, and so is a first
//! `<timestamp>_init.sql` older than 20211209000000 (the CLI's legacy init file). An inline
//! list or a ConfigMap is written for Tether, so a bad name there stays an error. A UTF-8
//! byte-order mark at the start of a file is not part of its SQL (psql skips it too); the
//! checksum is still over the file's bytes.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::shape::{FileShape, code_start};
use super::split::{Statement, line_of, split_statements};

/// Why a set of migrations could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file name does not look like `<version>_<name>.sql`.
    #[error(
        "failed to parse migration file name {file:?}: expected <version>_<name>.sql with a numeric version, e.g. 20240101120000_create_users.sql"
    )]
    BadName {
        /// The offending file name.
        file: String,
    },
    /// Two migrations share a numeric version.
    #[error("failed to order migrations: {first:?} and {second:?} have the same version {version}")]
    DuplicateVersion {
        /// The version both files claim.
        version: String,
        /// The first file.
        first: String,
        /// The second file.
        second: String,
    },
    /// A directory could not be read.
    #[error("failed to read migrations from {path}: {source}")]
    Read {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not UTF-8 text.
    #[error("failed to read migration {file:?}: it is not UTF-8 text")]
    NotUtf8 {
        /// The offending file.
        file: String,
    },
}

/// A migration version: the digits before the first `_` of the file name.
///
/// Kept as text (that is what the Supabase history table stores) but ordered by numeric
/// value, so `9_x` comes before `10_y`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Parses a version: one or more ASCII digits.
    pub fn parse(text: &str) -> Option<Version> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Version(text.to_string()))
    }

    /// The version as written in the file name (and in the history table).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn significant_digits(&self) -> &str {
        let trimmed = self.0.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }
    }

    /// Compares by numeric value (any length), ignoring leading zeros.
    pub fn numeric_cmp(&self, other: &Version) -> Ordering {
        let (a, b) = (self.significant_digits(), other.significant_digits());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Tie-break on the text so Ord stays consistent with Eq ("01" != "1").
        self.numeric_cmp(other).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One migration file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The version (file name prefix).
    pub version: Version,
    /// The name (file name between `_` and `.sql`), as the Supabase CLI stores it.
    pub name: String,
    /// The file name it came from (`<version>_<name>.sql`).
    pub file: String,
    /// The file's full text (without a leading byte-order mark).
    pub sql: String,
    /// The statements as the Supabase CLI splits them.
    pub statements: Vec<Statement>,
    /// Lower-case hex sha256 of the file's bytes.
    pub checksum: String,
    /// How the file has to run (see [`super::shape`]).
    pub shape: FileShape,
}

impl Migration {
    /// Parses one migration from its file name and content.
    pub fn new(file: &str, sql: String) -> Result<Migration, SourceError> {
        let (version, name) = parse_file_name(file)?;
        let checksum = sha256_hex(sql.as_bytes());
        let sql = match sql.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => sql,
        };
        let statements = split_statements(&sql);
        let shape = FileShape::of(statements.iter().map(|s| {
            (
                s.text.as_str(),
                line_of(&sql, s.offset + code_start(&s.text)),
            )
        }));
        Ok(Migration {
            version,
            name,
            file: file.to_string(),
            sql,
            statements,
            checksum,
            shape,
        })
    }

    /// The 1-based line statement `index` starts on.
    pub fn line_of_statement(&self, index: usize) -> usize {
        self.statements
            .get(index)
            .map_or(1, |s| line_of(&self.sql, s.offset))
    }

    /// The statement texts, as stored in `schema_migrations.statements`.
    pub fn statement_texts(&self) -> Vec<String> {
        self.statements.iter().map(|s| s.text.clone()).collect()
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits `<version>_<name>.sql` the way the Supabase CLI's `^([0-9]+)_(.*)\.sql$` does.
pub fn parse_file_name(file: &str) -> Result<(Version, String), SourceError> {
    let bad = || SourceError::BadName {
        file: file.to_string(),
    };
    let stem = file.strip_suffix(".sql").ok_or_else(bad)?;
    let (digits, name) = stem.split_once('_').ok_or_else(bad)?;
    let version = Version::parse(digits).ok_or_else(bad)?;
    Ok((version, name.to_string()))
}

/// A `*.sql` file of a directory that is not a migration, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The file name.
    pub file: String,
    /// Why it was skipped, as the Supabase CLI words it.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped {}: {}", self.file, self.reason)
    }
}

/// The Supabase CLI's legacy first file, `<14 digits>_init.sql` before 20211209000000.
fn is_legacy_init(file: &str) -> bool {
    file.strip_suffix("_init.sql")
        .filter(|digits| digits.len() == 14 && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .is_some_and(|timestamp| timestamp < 20211209000000)
}

/// A validated set of migrations in version order, with no duplicate versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationSet {
    migrations: Vec<Migration>,
    skipped: Vec<Skipped>,
}

impl MigrationSet {
    /// Orders `migrations` by version and rejects duplicate versions.
    pub fn new(mut migrations: Vec<Migration>) -> Result<MigrationSet, SourceError> {
        migrations.sort_by(|a, b| a.version.cmp(&b.version).then_with(|| a.file.cmp(&b.file)));
        if let Some(pair) = migrations
            .windows(2)
            .find(|pair| pair[0].version.numeric_cmp(&pair[1].version) == Ordering::Equal)
        {
            return Err(SourceError::DuplicateVersion {
                version: pair[1].version.to_string(),
                first: pair[0].file.clone(),
                second: pair[1].file.clone(),
            });
        }
        Ok(MigrationSet {
            migrations,
            skipped: Vec::new(),
        })
    }

    /// Inline migrations, given as (file name, SQL) pairs.
    pub fn from_inline<I, N, S>(files: I) -> Result<MigrationSet, SourceError>
    where
        I: IntoIterator<Item = (N, S)>,
        N: AsRef<str>,
        S: Into<String>,
    {
        let migrations = files
            .into_iter()
            .map(|(file, sql)| Migration::new(file.as_ref(), sql.into()))
            .collect::<Result<Vec<_>, _>>()?;
        MigrationSet::new(migrations)
    }

    /// A ConfigMap's `data`: every `*.sql` key must be a `<version>_<name>.sql` file name;
    /// other keys (a README) are ignored, as in a directory.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<MigrationSet, SourceError> {
        MigrationSet::from_inline(
            data.iter()
                .filter(|(k, _)| k.ends_with(".sql"))
                .map(|(k, v)| (k.as_str(), v.clone())),
        )
    }

    /// Every `*.sql` file of a directory (not recursive; other files are ignored). A `*.sql`
    /// file whose name is not `<version>_<name>.sql` is skipped and listed in
    /// [`MigrationSet::skipped`], as the Supabase CLI skips it.
    pub fn from_dir(dir: &Path) -> Result<MigrationSet, SourceError> {
        let read = |source| SourceError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            let is_file = entry.file_type().map_err(read)?.is_file();
            entries.push((entry.file_name().to_string_lossy().into_owned(), is_file));
        }
        entries.sort();
        let mut migrations = Vec::new();
        let mut skipped = Vec::new();
        let mut first = true;
        for (file, is_file) in entries {
            if !is_file {
                continue;
            }
            if !file.ends_with(".sql") {
                if file.to_ascii_lowercase().ends_with(".sql") {
                    // `X.SQL`: the CLI ignores it without a word; say so.
                    skipped.push(Skipped {
                        reason: "only files ending in lowercase .sql are migrations (as for the Supabase CLI); rename it to apply it".into(),
                        file,
                    });
                }
                continue;
            }
            let legacy = first && is_legacy_init(&file);
            first = false;
            if legacy {
                skipped.push(Skipped {
                    reason: "a <timestamp>_init.sql older than 20211209000000 is not applied; replace \"init\" with a different file name to apply it".into(),
                    file,
                });
                continue;
            }
            if parse_file_name(&file).is_err() {
                skipped.push(Skipped {
                    reason: "file name must match <version>_<name>.sql (e.g. 20240101120000_create_users.sql); rename it to apply it".into(),
                    file,
                });
                continue;
            }
            let path = dir.join(&file);
            let bytes =
                std::fs::read(&path).map_err(|source| SourceError::Read { path, source })?;
            let sql = String::from_utf8(bytes)
                .map_err(|_| SourceError::NotUtf8 { file: file.clone() })?;
            migrations.push(Migration::new(&file, sql)?);
        }
        let mut set = MigrationSet::new(migrations)?;
        set.skipped = skipped;
        Ok(set)
    }

    /// `*.sql` files of a directory that were skipped, with the reason.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The migrations in version order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The migration with this exact version.
    pub fn get(&self, version: &str) -> Option<&Migration> {
        self.migrations
            .iter()
            .find(|m| m.version.as_str() == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_split_into_version_and_name_like_the_supabase_cli() {
        let (version, name) = parse_file_name("20240101120000_create_users.sql").unwrap();
        assert_eq!(version.as_str(), "20240101120000");
        assert_eq!(name, "create_users");
        let (_, name) = parse_file_name("1_a_b_c.sql").unwrap();
        assert_eq!(name, "a_b_c");
        let (_, name) = parse_file_name("2_.sql").unwrap();
        assert_eq!(name, "");
    }

    #[test]
    fn bad_file_names_are_rejected_with_the_expected_pattern() {
        for file in [
            "create_users.sql",
            "2024_users.txt",
            "v1_users.sql",
            "20240101.sql",
            "_x.sql",
        ] {
            let err = parse_file_name(file).unwrap_err().to_string();
            assert!(
                err.contains(file) && err.contains("<version>_<name>.sql"),
                "{err}"
            );
        }
    }

    #[test]
    fn versions_order_numerically_not_as_text() {
        let set =
            MigrationSet::from_inline([("10_b.sql", ""), ("9_a.sql", ""), ("0100_c.sql", "")])
                .unwrap();
        let order: Vec<_> = set.migrations().iter().map(|m| m.file.as_str()).collect();
        assert_eq!(order, vec!["9_a.sql", "10_b.sql", "0100_c.sql"]);
    }

    #[test]
    fn duplicate_numeric_versions_are_an_error_naming_both_files() {
        let err = MigrationSet::from_inline([("1_a.sql", ""), ("001_b.sql", "")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1_a.sql") && err.contains("001_b.sql"),
            "{err}"
        );
    }

    #[test]
    fn config_map_keys_are_file_names() {
        let data = BTreeMap::from([
            ("20240102000000_b.sql".to_string(), "select 2;".to_string()),
            ("20240101000000_a.sql".to_string(), "select 1;".to_string()),
        ]);
        let set = MigrationSet::from_config_map(&data).unwrap();
        assert_eq!(set.migrations()[0].name, "a");
        assert_eq!(set.migrations()[0].statement_texts(), vec!["select 1"]);
        let readme = BTreeMap::from([("README.md".to_string(), String::new())]);
        assert!(
            MigrationSet::from_config_map(&readme)
                .unwrap()
                .migrations()
                .is_empty()
        );
        let bad = BTreeMap::from([("create_users.sql".to_string(), String::new())]);
        assert!(matches!(
            MigrationSet::from_config_map(&bad),
            Err(SourceError::BadName { .. })
        ));
    }

    #[test]
    fn directories_read_sql_files_and_ignore_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("2_second.sql"), "select 2;").unwrap();
        std::fs::write(dir.path().join("1_first.sql"), "select 1;").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let set = MigrationSet::from_dir(dir.path()).unwrap();
        assert_eq!(set.migrations().len(), 2);
        assert_eq!(set.migrations()[0].file, "1_first.sql");
        std::fs::write(dir.path().join("seed.sql"), "x").unwrap();
        std::fs::write(dir.path().join("local_20240107152745_ollama.sql"), "x").unwrap();
        let set = MigrationSet::from_dir(dir.path()).unwrap();
        assert_eq!(set.migrations().len(), 2);
        let skipped: Vec<String> = set.skipped().iter().map(ToString::to_string).collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].starts_with(
                "skipped local_20240107152745_ollama.sql: file name must match <version>_<name>.sql"
            ),
            "{skipped:?}"
        );
        assert!(skipped[1].starts_with("skipped seed.sql: "), "{skipped:?}");
    }

    #[test]
    fn a_legacy_init_file_first_in_the_directory_is_skipped_like_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("20211201000000_init.sql"), "x").unwrap();
        std::fs::write(dir.path().join("20211210000000_a.sql"), "select 1;").unwrap();
        let set = MigrationSet::from_dir(dir.path()).unwrap();
        assert_eq!(set.migrations().len(), 1);
        assert_eq!(set.skipped()[0].file, "20211201000000_init.sql");
        assert!(!is_legacy_init("20211209000000_init.sql"));
    }

    #[test]
    fn an_upper_case_sql_extension_is_skipped_with_a_warning_not_silently() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("20240101000000_a.SQL"), "select 1;").unwrap();
        std::fs::write(dir.path().join("20240102000000_b.sql"), "select 1;").unwrap();
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        let set = MigrationSet::from_dir(dir.path()).unwrap();
        assert_eq!(set.migrations().len(), 1);
        let skipped: Vec<String> = set.skipped().iter().map(ToString::to_string).collect();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0]
                .starts_with("skipped 20240101000000_a.SQL: only files ending in lowercase .sql"),
            "{skipped:?}"
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_sql_but_is_in_the_checksum() {
        let with = Migration::new("1_a.sql", "\u{feff}select 1;".into()).unwrap();
        let without = Migration::new("1_a.sql", "select 1;".into()).unwrap();
        assert_eq!(with.sql, "select 1;");
        assert_eq!(with.statement_texts(), vec!["select 1"]);
        assert_ne!(with.checksum, without.checksum);
    }

    #[test]
    fn checksums_are_sha256_of_the_file_content() {
        let m = Migration::new("1_a.sql", "abc".to_string()).unwrap();
        assert_eq!(
            m.checksum,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
