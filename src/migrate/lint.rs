//! Lint: squawk's Postgres migration rules, mapped onto Tether findings.
//!
//! Each pending migration is parsed with squawk's pure-Rust parser and checked with a chosen
//! set of squawk rules (plus `ban-truncate`, which squawk lacks: it only flags `TRUNCATE …
//! CASCADE`). A [`Finding`] carries the rule, the migration version, the statement, its
//! line, squawk's message and a fix hint. Destructive rules (data loss or breaking
//! renames) block the run unless the spec sets `allowDestructive` or acknowledges that
//! rule for that migration; transaction control in a file (`BEGIN`/`COMMIT`, which would
//! end Tether's own transaction) always blocks; every other finding is a warning.
//!
//! Rules left out on purpose: squawk's style preferences (`prefer-bigint-over-int`,
//! `prefer-text-field`, `prefer-robust-stmts`, …), which are taste rather than safety, and
//! `require-lock-timeout`/`require-statement-timeout` unless asked for, because Tether's
//! runner sets both with `SET LOCAL` around every migration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use squawk_linter::{Linter, Rule};
use squawk_syntax::SourceFile;
use squawk_syntax::ast::{self, AstNode};

use super::source::Migration;
use super::split::line_of;

/// Tether's own rule for a plain `TRUNCATE` (squawk only flags `TRUNCATE … CASCADE`).
pub const BAN_TRUNCATE: &str = "ban-truncate";

/// Rules whose findings are destructive: they lose data or break existing readers and
/// writers, and block unless allowed or acknowledged.
pub const DESTRUCTIVE_RULES: &[&str] = &[
    "ban-drop-table",
    "ban-drop-column",
    "ban-drop-schema",
    "ban-drop-database",
    "ban-drop-type",
    "ban-drop-view",
    "changing-column-type",
    "renaming-column",
    "renaming-table",
    "renaming-object",
    "ban-truncate-cascade",
    BAN_TRUNCATE,
];

/// Rules whose findings always block: a file that ends or nests the transaction Tether
/// runs it in cannot be applied atomically, whatever the spec allows.
/// Tether checks this one itself on the syntax tree (instead of running squawk's rule), so
/// a `squawk-ignore` comment cannot silence it.
pub const TRANSACTION_RULES: &[&str] = &[TRANSACTION_NESTING];

/// `BEGIN`, `COMMIT`, `ROLLBACK` (or `END`, `ABORT`) in a migration file.
pub const TRANSACTION_NESTING: &str = "transaction-nesting";

/// squawk rules Tether does not run (style preferences, not safety).
const STYLE_RULES: &[Rule] = &[
    Rule::PreferBigintOverInt,
    Rule::PreferBigintOverSmallint,
    Rule::PreferIdentity,
    Rule::PreferRobustStmts,
    Rule::PreferTextField,
    Rule::PreferTimestampTz,
    Rule::BanCharField,
    Rule::PreferRepack,
    // Replaced by Tether's own, unsuppressible check (see TRANSACTION_RULES).
    Rule::TransactionNesting,
    Rule::BanUncommittedTransaction,
];

/// What the run allows and which findings the user has acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LintPolicy {
    /// Destructive findings do not block.
    pub allow_destructive: bool,
    /// Per migration version, the rules acknowledged for it (these never block).
    pub acknowledged: BTreeMap<String, BTreeSet<String>>,
    /// Also run squawk's `require-lock-timeout` and `require-statement-timeout`.
    pub require_timeouts: bool,
}

impl LintPolicy {
    fn is_acknowledged(&self, version: &str, rule: &str) -> bool {
        self.acknowledged
            .get(version)
            .is_some_and(|rules| rules.contains(rule))
    }
}

/// One lint finding in one migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule name (squawk's kebab-case name, or [`BAN_TRUNCATE`]).
    pub rule: String,
    /// The migration version.
    pub version: String,
    /// The migration file name.
    pub file: String,
    /// The 1-based line of the finding in the file.
    pub line: usize,
    /// The statement the finding is in (as split for the history table).
    pub statement: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
    /// The rule is destructive (see [`DESTRUCTIVE_RULES`]).
    pub destructive: bool,
    /// The spec acknowledges this rule for this migration.
    pub acknowledged: bool,
    /// This finding stops the run.
    pub blocking: bool,
}

impl fmt::Display for Finding {
    /// `file:line rule: message (hint)`, one line, as a pull-request log shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.blocking {
            " [blocking]"
        } else if self.acknowledged {
            " [acknowledged]"
        } else {
            ""
        };
        write!(
            f,
            "{}:{} {}{}: {} ({})",
            self.file, self.line, self.rule, tag, self.message, self.hint
        )
    }
}

/// Lints one migration under `policy`. Findings are in file order.
pub fn lint_migration(migration: &Migration, policy: &LintPolicy) -> Vec<Finding> {
    let parse = SourceFile::parse(&migration.sql);
    let mut linter = if policy.require_timeouts {
        Linter::with_rules(&[Rule::RequireTimeoutSettings], STYLE_RULES)
    } else {
        Linter::with_rules(
            &[],
            &[STYLE_RULES, &[Rule::RequireTimeoutSettings]].concat(),
        )
    };
    // Tether runs every migration inside a transaction.
    linter.settings.assume_in_transaction = true;
    let mut raw: Vec<(usize, String, String, Option<String>)> = linter
        .lint(&parse, &migration.sql)
        .into_iter()
        .map(|v| {
            (
                usize::from(v.text_range.start()),
                v.code.to_string(),
                v.message,
                v.help,
            )
        })
        .collect();
    for stmt in parse.tree().stmts() {
        let start = usize::from(stmt.syntax().text_range().start());
        match stmt {
            ast::Stmt::Truncate(_) => raw.push((
                start,
                BAN_TRUNCATE.to_string(),
                "TRUNCATE deletes every row of the table.".to_string(),
                None,
            )),
            ast::Stmt::Begin(_) | ast::Stmt::Commit(_) | ast::Stmt::Rollback(_) => raw.push((
                start,
                TRANSACTION_NESTING.to_string(),
                "Tether runs each migration in its own transaction; this statement would start or end it in the middle of the file.".to_string(),
                None,
            )),
            _ => {}
        }
    }
    raw.sort_by_key(|(offset, ..)| *offset);
    raw.into_iter()
        .map(|(offset, rule, message, help)| {
            let destructive = DESTRUCTIVE_RULES.contains(&rule.as_str());
            let acknowledged = policy.is_acknowledged(migration.version.as_str(), &rule);
            Finding {
                hint: hint_for(&rule)
                    .map(str::to_string)
                    .or(help)
                    .unwrap_or_else(|| {
                        format!("review the statement, or acknowledge {rule} for this migration")
                    }),
                statement: statement_at(migration, offset),
                line: line_of(&migration.sql, offset),
                version: migration.version.to_string(),
                file: migration.file.clone(),
                blocking: TRANSACTION_RULES.contains(&rule.as_str())
                    || (destructive && !acknowledged && !policy.allow_destructive),
                destructive,
                acknowledged,
                message,
                rule,
            }
        })
        .collect()
}

/// Lints every migration of `migrations`.
pub fn lint_all<'a>(
    migrations: impl IntoIterator<Item = &'a Migration>,
    policy: &LintPolicy,
) -> Vec<Finding> {
    migrations
        .into_iter()
        .flat_map(|m| lint_migration(m, policy))
        .collect()
}

/// The statement (as split for the history table) that contains byte `offset`.
fn statement_at(migration: &Migration, offset: usize) -> String {
    migration
        .statements
        .iter()
        .rev()
        .find(|s| s.offset <= offset)
        .or(migration.statements.first())
        .map(|s| s.text.clone())
        .unwrap_or_default()
}

/// Tether's fix hints for the rules people meet most; others use squawk's help text.
fn hint_for(rule: &str) -> Option<&'static str> {
    Some(match rule {
        "ban-drop-table" => {
            "make sure nothing reads the table and its data is backed up, then set allowDestructive or acknowledge ban-drop-table for this migration"
        }
        "ban-drop-column" => {
            "stop reading and writing the column in a release first, then drop it with allowDestructive or an acknowledgement"
        }
        "ban-drop-schema" | "ban-drop-database" | "ban-drop-type" | "ban-drop-view" => {
            "dropping it loses what depends on it; set allowDestructive or acknowledge the rule once you are sure"
        }
        "changing-column-type" => {
            "add a new column, backfill it, switch readers and writers, then drop the old one"
        }
        "renaming-column" | "renaming-table" | "renaming-object" => {
            "running clients still use the old name: add the new one alongside (or a view), migrate clients, then drop the old"
        }
        "ban-truncate-cascade" | BAN_TRUNCATE => {
            "delete the rows you mean with DELETE … WHERE, or acknowledge the truncate for this migration"
        }
        "require-concurrent-index-creation" => {
            "CREATE INDEX blocks writes while it builds; on a large table build it with CREATE INDEX CONCURRENTLY outside a migration transaction and keep CREATE INDEX IF NOT EXISTS here"
        }
        "adding-not-nullable-field" | "adding-required-field" => {
            "add the column nullable (or with a default), backfill, then add a NOT NULL check constraint NOT VALID and validate it"
        }
        "constraint-missing-not-valid" => {
            "add the constraint NOT VALID, then VALIDATE CONSTRAINT in a later migration"
        }
        "adding-foreign-key-constraint" => {
            "add the foreign key NOT VALID, then VALIDATE CONSTRAINT in a later migration"
        }
        "disallowed-unique-constraint" => {
            "create a unique index CONCURRENTLY first, then add the constraint USING INDEX"
        }
        TRANSACTION_NESTING => {
            "remove BEGIN/COMMIT/ROLLBACK: Tether already runs each migration in its own transaction (this finding cannot be allowed or acknowledged)"
        }
        "ban-concurrent-index-creation-in-transaction" => {
            "CONCURRENTLY cannot run inside the migration's transaction; drop CONCURRENTLY or build the index outside Tether"
        }
        "require-lock-timeout" | "require-statement-timeout" => {
            "Tether sets lock_timeout and statement_timeout for every migration; set them in the file too if other tools apply it"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(sql: &str, policy: &LintPolicy) -> Vec<Finding> {
        lint_migration(
            &Migration::new("20240101000000_test.sql", sql.to_string()).unwrap(),
            policy,
        )
    }

    fn rules(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.rule.as_str()).collect()
    }

    #[test]
    fn dropping_a_column_is_a_blocking_destructive_finding_with_line_and_statement() {
        let findings = lint(
            "create table t (id int);\n\nalter table t drop column id;\n",
            &LintPolicy::default(),
        );
        let drop = findings
            .iter()
            .find(|f| f.rule == "ban-drop-column")
            .expect("ban-drop-column");
        assert!(drop.destructive && drop.blocking && !drop.acknowledged);
        assert_eq!(drop.line, 3);
        assert_eq!(drop.statement, "alter table t drop column id");
        assert_eq!(drop.version, "20240101000000");
        assert!(
            drop.to_string()
                .starts_with("20240101000000_test.sql:3 ban-drop-column [blocking]: "),
            "{drop}"
        );
    }

    #[test]
    fn destructive_rules_cover_drop_table_type_change_rename_and_truncate() {
        let sql = "drop table a;\nalter table b alter column c type bigint;\nalter table b rename column c to d;\nalter table b rename to e;\ntruncate f;\ntruncate g cascade;\n";
        let findings = lint(sql, &LintPolicy::default());
        for rule in [
            "ban-drop-table",
            "changing-column-type",
            "renaming-column",
            "renaming-table",
            BAN_TRUNCATE,
            "ban-truncate-cascade",
        ] {
            let f = findings
                .iter()
                .find(|f| f.rule == rule)
                .unwrap_or_else(|| panic!("no {rule} in {:?}", rules(&findings)));
            assert!(f.blocking, "{rule} should block");
        }
    }

    #[test]
    fn allow_destructive_keeps_the_finding_but_stops_it_blocking() {
        let policy = LintPolicy {
            allow_destructive: true,
            ..LintPolicy::default()
        };
        let findings = lint("drop table a;", &policy);
        assert_eq!(rules(&findings), vec!["ban-drop-table"]);
        assert!(!findings[0].blocking);
    }

    #[test]
    fn an_acknowledgement_applies_to_its_migration_and_rule_only() {
        let mut policy = LintPolicy::default();
        policy.acknowledged.insert(
            "20240101000000".into(),
            BTreeSet::from(["ban-drop-table".to_string()]),
        );
        let findings = lint("drop table a;\nalter table b drop column c;", &policy);
        let table = findings
            .iter()
            .find(|f| f.rule == "ban-drop-table")
            .unwrap();
        let column = findings
            .iter()
            .find(|f| f.rule == "ban-drop-column")
            .unwrap();
        assert!(table.acknowledged && !table.blocking);
        assert!(!column.acknowledged && column.blocking);
        let other = lint_migration(
            &Migration::new("2_other.sql", "drop table a;".into()).unwrap(),
            &policy,
        );
        assert!(other[0].blocking);
    }

    #[test]
    fn locking_hazards_are_warnings_with_hints() {
        let sql = "create index i on t (c);\nalter table t add column n int not null;\nalter table t add constraint fk foreign key (c) references u (id);\n";
        let findings = lint(sql, &LintPolicy::default());
        let got = rules(&findings);
        for rule in [
            "require-concurrent-index-creation",
            "adding-required-field",
            "adding-foreign-key-constraint",
        ] {
            assert!(got.contains(&rule), "{rule} missing from {got:?}");
        }
        assert!(findings.iter().all(|f| !f.blocking && !f.hint.is_empty()));
    }

    #[test]
    fn style_rules_and_timeouts_are_off_unless_asked() {
        let sql = "create table t (id serial primary key, name varchar(10), at timestamp);";
        assert!(
            lint(sql, &LintPolicy::default()).is_empty(),
            "{:?}",
            rules(&lint(sql, &LintPolicy::default()))
        );
        let policy = LintPolicy {
            require_timeouts: true,
            ..LintPolicy::default()
        };
        let got = lint("alter table t add column c int;", &policy);
        assert!(
            rules(&got).contains(&"require-lock-timeout"),
            "{:?}",
            rules(&got)
        );
    }

    #[test]
    fn transaction_control_in_a_file_always_blocks() {
        let mut policy = LintPolicy {
            allow_destructive: true,
            ..LintPolicy::default()
        };
        policy.acknowledged.insert(
            "20240101000000".into(),
            BTreeSet::from(["transaction-nesting".to_string()]),
        );
        let findings = lint(
            "begin;\ncreate table t (id int);\n-- squawk-ignore transaction-nesting\ncommit;\n",
            &policy,
        );
        assert_eq!(
            rules(&findings),
            vec!["transaction-nesting", "transaction-nesting"]
        );
        assert!(findings.iter().all(|f| f.blocking));
    }

    #[test]
    fn statements_inside_function_bodies_are_not_findings() {
        let sql =
            "create function f() returns void language plpgsql as $$ begin drop table x; end $$;";
        assert!(lint(sql, &LintPolicy::default()).is_empty());
    }
}
