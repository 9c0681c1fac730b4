//! Lint: squawk's Postgres migration rules, mapped onto Tether findings.
//!
//! Each pending migration is parsed with squawk's pure-Rust parser and checked with a chosen
//! set of squawk rules (plus `ban-truncate`, which squawk lacks: it only flags `TRUNCATE …
//! CASCADE`). A [`Finding`] carries the rule, the migration version, the statement, its
//! line, squawk's message and a fix hint. Destructive rules (data loss or breaking
//! renames) block the run unless the spec sets `allowDestructive` or acknowledges that
//! rule for that migration; every other finding is a warning (including squawk's
//! `transaction-nesting`: Tether runs a file with its own `BEGIN`/`COMMIT` as written, see
//! [`super::shape`]).
//!
//! Lint knows the database ([`lint_against`]): a destructive statement on an object that
//! holds no data before the run — it did not exist, or a pending file created it earlier in
//! the same run (`create table t …` in one file, `drop table t` in a later one, as a history
//! replayed onto a fresh database has) — stays a finding, says why nothing is lost, and does
//! not block. What existed before the run still blocks. Without a database
//! (`tether migrate lint DIR`) nothing is known about what is applied, so such findings
//! block and say that `plan` can tell.
//!
//! Rules left out on purpose: squawk's style preferences (`prefer-bigint-over-int`,
//! `prefer-text-field`, `prefer-robust-stmts`, …), which are taste rather than safety, and
//! `require-lock-timeout`/`require-statement-timeout` unless asked for, because Tether's
//! runner sets both with `SET LOCAL` around every migration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

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

/// Tether's rule for a statement that cannot run in a transaction block (`CREATE INDEX
/// CONCURRENTLY`, `VACUUM`, …) inside a `BEGIN … COMMIT` the file opens itself: Postgres
/// refuses it whatever runs the file, so it blocks (acknowledging it cannot help).
pub const NO_TRANSACTION_IN_BLOCK: &str = "no-transaction-statement-in-transaction-block";

/// squawk's rule for `BEGIN`/`COMMIT`/`ROLLBACK` in a file (a warning: such files run as
/// written, see [`super::shape`]).
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
    /// A destructive finding on something that holds no data before this run; `context`
    /// says why. Such a finding does not block.
    pub no_data: bool,
    /// What Tether knows about the objects involved (why nothing is lost, or how to find
    /// out), when it knows something.
    pub context: Option<String>,
    /// This finding stops the run.
    pub blocking: bool,
}

impl Finding {
    /// Whether `allowDestructive` or an acknowledgement can let this finding through; a file
    /// Postgres itself would refuse (a statement that cannot run in a transaction block,
    /// inside the BEGIN the file opens) can only be fixed.
    pub fn waivable(&self) -> bool {
        self.rule != NO_TRANSACTION_IN_BLOCK
    }
}

impl fmt::Display for Finding {
    /// `file:line rule: message (hint)`, one line, as a pull-request log shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.blocking {
            " [blocking]"
        } else if self.no_data {
            " [no data lost]"
        } else if self.acknowledged {
            " [acknowledged]"
        } else {
            ""
        };
        write!(
            f,
            "{}:{} {}{}: {}",
            self.file, self.line, self.rule, tag, self.message
        )?;
        if let Some(context) = &self.context {
            write!(f, " {context}")?;
        }
        write!(f, " ({})", self.hint)
    }
}

/// Lints one migration under `policy`, knowing nothing about the database. Findings are in
/// file order.
pub fn lint_migration(migration: &Migration, policy: &LintPolicy) -> Vec<Finding> {
    let mut simulation = Simulation::new(None);
    lint_one(migration, policy, &mut simulation)
}

fn lint_one(
    migration: &Migration,
    policy: &LintPolicy,
    simulation: &mut Simulation<'_>,
) -> Vec<Finding> {
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
    let statements: Vec<ast::Stmt> = parse.tree().stmts().collect();
    for stmt in &statements {
        if let ast::Stmt::Truncate(_) = stmt {
            raw.push((
                usize::from(stmt.syntax().text_range().start()),
                BAN_TRUNCATE.to_string(),
                "TRUNCATE deletes every row of the table.".to_string(),
                None,
            ));
        }
    }
    if let Some((index, what)) = migration.shape.no_transaction_inside_block()
        && let Some(statement) = migration.statements.get(index)
    {
        raw.push((
            statement.offset,
            NO_TRANSACTION_IN_BLOCK.to_string(),
            format!(
                "{what} cannot run inside a transaction block, and this file opens one with BEGIN before it: Postgres refuses it (SQLSTATE 25001)."
            ),
            None,
        ));
    }
    raw.sort_by_key(|(offset, ..)| *offset);
    // What each destructive finding touches, judged against what exists at that statement.
    let mut verdicts: Vec<(Range<usize>, Option<Verdict>)> = Vec::new();
    for stmt in &statements {
        for (range, targets) in destructive_targets(stmt) {
            let verdict = simulation.judge(&targets);
            verdicts.push((range, verdict));
        }
        simulation.apply(stmt, &migration.file);
    }
    raw.into_iter()
        .map(|(offset, rule, message, help)| {
            let destructive = DESTRUCTIVE_RULES.contains(&rule.as_str());
            let acknowledged = policy.is_acknowledged(migration.version.as_str(), &rule);
            let verdict = if destructive && rule != "ban-drop-database" {
                verdicts
                    .iter()
                    .find(|(range, _)| range.contains(&offset))
                    .and_then(|(_, v)| v.clone())
            } else {
                None
            };
            let (no_data, context) = match verdict {
                Some(Verdict::NoData(why)) => (true, Some(format!("Not blocking: {why}."))),
                Some(Verdict::CreatedInDirectory(why)) => (
                    false,
                    Some(format!(
                        "{why}: if that file is not applied yet where this runs, nothing is lost (`tether migrate plan` checks against the database)."
                    )),
                ),
                None => (false, None),
            };
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
                blocking: rule == NO_TRANSACTION_IN_BLOCK
                    || (destructive && !acknowledged && !policy.allow_destructive && !no_data),
                destructive,
                acknowledged,
                no_data,
                context,
                message,
                rule,
            }
        })
        .collect()
}

/// Lints every migration of `migrations`, knowing nothing about the database (objects a
/// file creates are noted on later findings, but nothing is unblocked).
pub fn lint_all<'a>(
    migrations: impl IntoIterator<Item = &'a Migration>,
    policy: &LintPolicy,
) -> Vec<Finding> {
    let mut simulation = Simulation::new(None);
    migrations
        .into_iter()
        .flat_map(|m| lint_one(m, policy, &mut simulation))
        .collect()
}

/// Lints the pending migrations of a run, in order, knowing which objects existed before
/// it (`before`, from [`objects_to_check`] and [`super::db::existing`]): a destructive
/// finding on an object that did not exist, or that a pending file created earlier in the
/// run, does not block.
pub fn lint_against<'a>(
    pending: impl IntoIterator<Item = &'a Migration>,
    policy: &LintPolicy,
    before: &BTreeMap<Object, bool>,
) -> Vec<Finding> {
    let mut simulation = Simulation::new(Some(before));
    pending
        .into_iter()
        .flat_map(|m| lint_one(m, policy, &mut simulation))
        .collect()
}

/// A database object lint reasons about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Object {
    /// A table, view, materialized view or foreign table (one namespace in Postgres).
    Relation {
        /// Schema (`public` when the statement does not name one).
        schema: String,
        /// Name.
        name: String,
    },
    /// A column of a relation.
    Column {
        /// Schema of the table.
        schema: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A type.
    Type {
        /// Schema.
        schema: String,
        /// Name.
        name: String,
    },
    /// A schema.
    Schema {
        /// Name.
        name: String,
    },
}

impl Object {
    /// The relation a column belongs to.
    fn table(&self) -> Option<Object> {
        match self {
            Object::Column { schema, table, .. } => Some(Object::Relation {
                schema: schema.clone(),
                name: table.clone(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Relation { schema, name } => write!(f, "{schema}.{name}"),
            Object::Column {
                schema,
                table,
                column,
            } => write!(f, "column {schema}.{table}.{column}"),
            Object::Type { schema, name } => write!(f, "type {schema}.{name}"),
            Object::Schema { name } => write!(f, "schema {name}"),
        }
    }
}

/// Every object the pending migrations create, drop or change destructively: what
/// [`lint_against`] needs to know about the database.
pub fn objects_to_check<'a>(pending: impl IntoIterator<Item = &'a Migration>) -> Vec<Object> {
    let mut out = BTreeSet::new();
    for migration in pending {
        let parse = SourceFile::parse(&migration.sql);
        for stmt in parse.tree().stmts() {
            for (_, targets) in destructive_targets(&stmt) {
                out.extend(targets);
            }
            out.extend(created(&stmt).into_iter().map(|(object, _)| object));
        }
    }
    out.into_iter().collect()
}

/// Why a destructive finding loses nothing (or might not).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing is lost: the sentence says why.
    NoData(String),
    /// Without a database: a file earlier in the directory creates it.
    CreatedInDirectory(String),
}

/// What exists as the pending statements run, one after the other.
struct Simulation<'a> {
    /// What existed before the run (`None`: unknown, no database).
    before: Option<&'a BTreeMap<Object, bool>>,
    /// Objects created by this run so far, with the file that created them.
    created: BTreeMap<Object, String>,
    /// Objects that existed before the run and are gone now (dropped, renamed away).
    gone: BTreeSet<Object>,
    /// Names that hold data from before the run under a new name (renamed to).
    renamed_to: BTreeSet<Object>,
}

impl<'a> Simulation<'a> {
    fn new(before: Option<&'a BTreeMap<Object, bool>>) -> Self {
        Simulation {
            before,
            created: BTreeMap::new(),
            gone: BTreeSet::new(),
            renamed_to: BTreeSet::new(),
        }
    }

    /// Whether `object` existed before the run (`None`: unknown).
    fn existed(&self, object: &Object) -> Option<bool> {
        let before = self.before?;
        if let Some(table) = object.table()
            && before.get(&table) == Some(&false)
        {
            return Some(false);
        }
        Some(before.get(object).copied().unwrap_or(true))
    }

    /// Whether `object` holds data from before the run right now.
    fn holds_old_data(&self, object: &Object) -> bool {
        if self.renamed_to.contains(object) {
            return true;
        }
        if self.created.contains_key(object)
            || object
                .table()
                .is_some_and(|t| self.created.contains_key(&t))
        {
            return false;
        }
        if self.gone.contains(object) || object.table().is_some_and(|t| self.gone.contains(&t)) {
            return false;
        }
        self.existed(object) != Some(false)
    }

    /// The verdict for a destructive statement on all of `targets` (`None`: it may lose data).
    fn judge(&self, targets: &[Object]) -> Option<Verdict> {
        if targets.is_empty() {
            return None;
        }
        let mut reasons = Vec::new();
        for target in targets {
            let origin = self
                .created
                .get(target)
                .map(|f| (target.clone(), f))
                .or_else(|| {
                    let table = target.table()?;
                    self.created.get(&table).map(|f| (table, f))
                });
            if self.before.is_none() {
                // No database: a file of the directory creating it is worth saying, not more.
                let (object, file) = origin?;
                if self.renamed_to.contains(target) {
                    return None;
                }
                reasons.push(format!(
                    "{object} is created by {file} earlier in this directory"
                ));
                continue;
            }
            if self.holds_old_data(target) {
                return None;
            }
            reasons.push(match origin {
                Some((object, file)) => format!(
                    "{object} is created by {file} earlier in this run and holds no data before it"
                ),
                None => format!("{target} does not exist before this run"),
            });
        }
        let reasons = reasons.join("; ");
        Some(if self.before.is_none() {
            Verdict::CreatedInDirectory(reasons)
        } else {
            Verdict::NoData(reasons)
        })
    }

    /// Whether `object` exists now, as far as the simulation knows (unknown counts as yes).
    fn exists_now(&self, object: &Object) -> bool {
        self.created.contains_key(object)
            || self.renamed_to.contains(object)
            || (self.existed(object) != Some(false) && !self.gone.contains(object))
    }

    fn drop(&mut self, object: &Object) {
        if self.created.remove(object).is_none() && self.existed(object) != Some(false) {
            self.gone.insert(object.clone());
        }
        self.renamed_to.remove(object);
        if matches!(object, Object::Relation { .. }) {
            self.created
                .retain(|o, _| o.table().as_ref() != Some(object));
        }
    }

    fn rename(&mut self, from: &Object, to: Object) {
        let origin = self.created.remove(from);
        let old_data = self.renamed_to.remove(from) || origin.is_none();
        if origin.is_none() && self.existed(from) != Some(false) {
            self.gone.insert(from.clone());
        }
        match origin {
            Some(file) => {
                self.created.insert(to, file);
            }
            None if old_data && self.existed(from) != Some(false) => {
                self.renamed_to.insert(to);
            }
            None => {}
        }
    }

    /// Records what `stmt` creates, drops and renames.
    fn apply(&mut self, stmt: &ast::Stmt, file: &str) {
        for (object, if_not_exists) in created(stmt) {
            if !(if_not_exists && self.exists_now(&object)) {
                self.gone.remove(&object);
                self.created.insert(object, file.to_string());
            }
        }
        match stmt {
            ast::Stmt::DropTable(_)
            | ast::Stmt::DropForeignTable(_)
            | ast::Stmt::DropView(_)
            | ast::Stmt::DropMaterializedView(_)
            | ast::Stmt::DropType(_)
            | ast::Stmt::DropSchema(_) => {
                for (_, targets) in destructive_targets(stmt) {
                    for target in &targets {
                        self.drop(target);
                    }
                }
            }
            ast::Stmt::AlterTable(alter) => {
                let Some(table) = alter
                    .table_relation_name()
                    .and_then(|n| n.table_name_ref())
                    .map(|n| relation(&n.syntax().text().to_string()))
                else {
                    return;
                };
                for action in alter.actions() {
                    match action {
                        ast::AlterTableAction::DropColumn(drop) => {
                            if let Some(column) = drop.column_name_ref() {
                                self.drop(&column_of(&table, &column.syntax().text().to_string()));
                            }
                        }
                        ast::AlterTableAction::RenameColumn(rename) => {
                            if let (Some(from), Some(to)) =
                                (rename.column_name_ref(), rename.column_name())
                            {
                                let from = column_of(&table, &from.syntax().text().to_string());
                                let to = column_of(&table, &to.syntax().text().to_string());
                                self.rename(&from, to);
                            }
                        }
                        ast::AlterTableAction::TableRenameTo(rename) => {
                            if let (Object::Relation { schema, .. }, Some(name)) =
                                (&table, rename.table_name())
                            {
                                let (_, name) = qualified(&name.syntax().text().to_string());
                                let to = Object::Relation {
                                    schema: schema.clone(),
                                    name,
                                };
                                self.rename(&table, to);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// The objects a statement creates, each with whether it says `IF NOT EXISTS` (or `OR
/// REPLACE`): such a statement creates nothing when the object is already there.
fn created(stmt: &ast::Stmt) -> Vec<(Object, bool)> {
    let text = |node: &squawk_syntax::SyntaxNode| node.text().to_string();
    match stmt {
        ast::Stmt::CreateTable(t) => t
            .table_name()
            .map(|n| (relation(&text(n.syntax())), t.if_not_exists().is_some()))
            .into_iter()
            .collect(),
        ast::Stmt::CreateForeignTable(t) => t
            .table_name()
            .map(|n| (relation(&text(n.syntax())), t.if_not_exists().is_some()))
            .into_iter()
            .collect(),
        ast::Stmt::CreateView(v) => v
            .view()
            .map(|n| (relation(&text(n.syntax())), v.or_replace().is_some()))
            .into_iter()
            .collect(),
        ast::Stmt::CreateMaterializedView(v) => v
            .view()
            .map(|n| (relation(&text(n.syntax())), v.if_not_exists().is_some()))
            .into_iter()
            .collect(),
        ast::Stmt::CreateType(t) => t
            .type_name()
            .map(|n| {
                let (schema, name) = qualified(&text(n.syntax()));
                (
                    Object::Type {
                        schema: schema.unwrap_or_else(|| "public".into()),
                        name,
                    },
                    false,
                )
            })
            .into_iter()
            .collect(),
        ast::Stmt::CreateSchema(s) => s
            .create_schema_target()
            .and_then(|t| schema_name(&text(t.syntax())))
            .map(|name| (Object::Schema { name }, s.if_not_exists().is_some()))
            .into_iter()
            .collect(),
        ast::Stmt::AlterTable(alter) => {
            let Some(table) = alter
                .table_relation_name()
                .and_then(|n| n.table_name_ref())
                .map(|n| relation(&text(n.syntax())))
            else {
                return Vec::new();
            };
            alter
                .actions()
                .filter_map(|action| match action {
                    ast::AlterTableAction::AddColumn(add) => add.column_name().map(|c| {
                        (
                            column_of(&table, &text(c.syntax())),
                            add.if_not_exists().is_some(),
                        )
                    }),
                    _ => None,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// For each destructive part of a statement, its text range and the objects it destroys
/// or changes (empty when Tether cannot tell, which keeps the finding blocking).
fn destructive_targets(stmt: &ast::Stmt) -> Vec<(Range<usize>, Vec<Object>)> {
    let range = |node: &squawk_syntax::SyntaxNode| {
        let r = node.text_range();
        usize::from(r.start())..usize::from(r.end())
    };
    let text = |node: &squawk_syntax::SyntaxNode| node.text().to_string();
    let whole = range(stmt.syntax());
    match stmt {
        ast::Stmt::DropTable(d) => vec![(
            whole,
            d.table_name_refs()
                .map(|n| relation(&text(n.syntax())))
                .collect(),
        )],
        ast::Stmt::DropForeignTable(d) => vec![(
            whole,
            d.table_name_refs()
                .map(|n| relation(&text(n.syntax())))
                .collect(),
        )],
        ast::Stmt::DropView(d) => vec![(
            whole,
            d.view_refs().map(|n| relation(&text(n.syntax()))).collect(),
        )],
        ast::Stmt::DropMaterializedView(d) => vec![(
            whole,
            d.view_refs().map(|n| relation(&text(n.syntax()))).collect(),
        )],
        ast::Stmt::DropType(d) => vec![(
            whole,
            d.type_name_refs()
                .map(|n| {
                    let (schema, name) = qualified(&text(n.syntax()));
                    Object::Type {
                        schema: schema.unwrap_or_else(|| "public".into()),
                        name,
                    }
                })
                .collect(),
        )],
        ast::Stmt::DropSchema(d) => vec![(
            whole,
            d.schema_refs()
                .filter_map(|n| schema_name(&text(n.syntax())))
                .map(|name| Object::Schema { name })
                .collect(),
        )],
        ast::Stmt::Truncate(t) => vec![(
            whole,
            t.table_list()
                .map(|list| {
                    list.table_relation_names()
                        .filter_map(|n| n.table_name_ref())
                        .map(|n| relation(&text(n.syntax())))
                        .collect()
                })
                .unwrap_or_default(),
        )],
        ast::Stmt::AlterTable(alter) => {
            let Some(table) = alter
                .table_relation_name()
                .and_then(|n| n.table_name_ref())
                .map(|n| relation(&text(n.syntax())))
            else {
                return Vec::new();
            };
            alter
                .actions()
                .filter_map(|action| {
                    let column = |name: Option<ast::ColumnNameRef>| {
                        name.map(|c| vec![column_of(&table, &text(c.syntax()))])
                    };
                    let targets = match &action {
                        ast::AlterTableAction::DropColumn(d) => column(d.column_name_ref()),
                        ast::AlterTableAction::AlterColumn(a) => match a.option() {
                            Some(ast::AlterColumnOption::SetType(_)) => column(a.column_name_ref()),
                            _ => None,
                        },
                        ast::AlterTableAction::RenameColumn(r) => column(r.column_name_ref()),
                        ast::AlterTableAction::TableRenameTo(_) => Some(vec![table.clone()]),
                        _ => None,
                    }?;
                    Some((range(action.syntax()), targets))
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// `schema.name` or `name` (then `public`), quotes removed, unquoted parts lower-cased.
fn qualified(text: &str) -> (Option<String>, String) {
    let mut parts = identifier_parts(text);
    let name = parts.pop().unwrap_or_default();
    (parts.pop(), name)
}

fn relation(text: &str) -> Object {
    let (schema, name) = qualified(text);
    Object::Relation {
        schema: schema.unwrap_or_else(|| "public".into()),
        name,
    }
}

fn column_of(table: &Object, column: &str) -> Object {
    let column = identifier_parts(column).pop().unwrap_or_default();
    match table {
        Object::Relation { schema, name } => Object::Column {
            schema: schema.clone(),
            table: name.clone(),
            column,
        },
        other => other.clone(),
    }
}

/// The schema named in a `CREATE SCHEMA` target or a schema reference (`AUTHORIZATION …`
/// without a name is the role's name; Tether does not guess it).
fn schema_name(text: &str) -> Option<String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("authorization") {
        return None;
    }
    let end = lower.find(" authorization").unwrap_or(text.len());
    identifier_parts(&text[..end]).pop()
}

/// Splits `a."B".c` into `["a", "B", "c"]`: quoted parts kept, unquoted lower-cased; an
/// `ONLY` prefix and a `*` suffix (inheritance) are not part of the name.
fn identifier_parts(text: &str) -> Vec<String> {
    let text = text.trim().trim_end_matches('*').trim();
    let text = match text.get(..5) {
        Some(prefix) if prefix.eq_ignore_ascii_case("only ") => text[5..].trim_start(),
        _ => text,
    };
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            c if quoted => current.push(c),
            c if c.is_whitespace() => {}
            c => current.extend(c.to_lowercase()),
        }
    }
    parts.push(current);
    parts
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
        TRANSACTION_NESTING | "ban-uncommitted-transaction" => {
            "Tether runs a file wrapped in BEGIN; … COMMIT; in one transaction without sending the wrapper; any other transaction control makes the file run as written, statement by statement, so a failure part-way keeps what it committed"
        }
        NO_TRANSACTION_IN_BLOCK => {
            "move the statement after the file's COMMIT (or into a file of its own): Tether runs it outside a transaction"
        }
        "ban-concurrent-index-creation-in-transaction" => {
            "Tether runs a file with CONCURRENTLY as written, outside a transaction; keep it out of a BEGIN … COMMIT block of the file's own, where Postgres refuses it"
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
    fn concurrently_inside_the_files_own_transaction_blocks_and_outside_it_does_not() {
        let sql =
            "begin;\ncreate table t (c int);\ncreate index concurrently i on t (c);\ncommit;\n";
        let findings = lint(sql, &LintPolicy::default());
        let found = findings
            .iter()
            .find(|f| f.rule == NO_TRANSACTION_IN_BLOCK)
            .expect("flagged");
        assert!(found.blocking);
        assert_eq!(found.line, 3);
        assert!(
            found
                .message
                .starts_with("CREATE INDEX CONCURRENTLY cannot run inside a transaction block"),
            "{}",
            found.message
        );
        let allowed = LintPolicy {
            allow_destructive: true,
            ..LintPolicy::default()
        };
        assert!(lint(sql, &allowed).iter().any(|f| f.blocking));

        let outside = "create table t (c int);\ncreate index concurrently i on t (c);\n";
        assert!(
            lint(outside, &LintPolicy::default())
                .iter()
                .all(|f| f.rule != NO_TRANSACTION_IN_BLOCK && !f.blocking)
        );
    }

    #[test]
    fn a_rollback_to_a_savepoint_is_a_warning_not_a_block() {
        let sql =
            "begin;\nsavepoint s;\ncreate table t (c int);\nrollback to savepoint s;\ncommit;\n";
        let findings = lint(sql, &LintPolicy::default());
        assert!(findings.iter().all(|f| !f.blocking), "{findings:?}");
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
    fn transaction_control_in_a_file_is_a_warning() {
        let findings = lint(
            "begin;\ncreate table t (id int);\ncommit;\n",
            &LintPolicy::default(),
        );
        assert_eq!(
            rules(&findings),
            vec!["transaction-nesting", "transaction-nesting"]
        );
        assert!(findings.iter().all(|f| !f.blocking), "{findings:?}");
        assert!(findings[0].hint.contains("as written"));
    }

    fn migrations(files: &[(&str, &str)]) -> Vec<Migration> {
        files
            .iter()
            .map(|(f, sql)| Migration::new(f, sql.to_string()).unwrap())
            .collect()
    }

    fn table(name: &str) -> Object {
        Object::Relation {
            schema: "public".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_drop_of_what_an_earlier_pending_file_created_destroys_nothing() {
        let pending = migrations(&[
            (
                "1_a.sql",
                "create table \"Todos\" (id int);\ncreate table keep (id int);",
            ),
            (
                "2_b.sql",
                "alter table keep add column note text;\nalter table keep drop column note;\ndrop table public.\"Todos\";\ndrop table keep;",
            ),
            (
                "3_c.sql",
                "drop table legacy;\ndrop table if exists never_there;\ntruncate old;",
            ),
        ]);
        let objects = objects_to_check(&pending);
        assert!(objects.contains(&table("Todos")) && objects.contains(&table("legacy")));
        let before = BTreeMap::from([
            (table("Todos"), false),
            (table("keep"), false),
            (table("legacy"), true),
            (table("never_there"), false),
            (table("old"), true),
        ]);
        let findings = lint_against(&pending, &LintPolicy::default(), &before);
        let got: Vec<(&str, &str, bool)> = findings
            .iter()
            .map(|f| (f.file.as_str(), f.rule.as_str(), f.blocking))
            .collect();
        assert_eq!(
            got,
            vec![
                ("2_b.sql", "ban-drop-column", false),
                ("2_b.sql", "ban-drop-table", false),
                ("2_b.sql", "ban-drop-table", false),
                ("3_c.sql", "ban-drop-table", true),
                ("3_c.sql", "ban-drop-table", false),
                ("3_c.sql", BAN_TRUNCATE, true),
            ]
        );
        assert_eq!(
            findings[1].context.as_deref(),
            Some(
                "Not blocking: public.Todos is created by 1_a.sql earlier in this run and holds no data before it."
            )
        );
        assert!(
            findings[1].to_string().contains("[no data lost]"),
            "{}",
            findings[1]
        );
        assert_eq!(
            findings[4].context.as_deref(),
            Some("Not blocking: public.never_there does not exist before this run.")
        );
        assert!(findings[3].context.is_none());
    }

    #[test]
    fn a_column_added_in_the_run_to_an_existing_table_holds_no_data_but_the_table_does() {
        let pending = migrations(&[
            ("1_a.sql", "alter table users add column nickname text;"),
            (
                "2_b.sql",
                "alter table users alter column nickname type varchar(20);\nalter table users drop column email;\nalter table users rename to people;\ndrop table people;",
            ),
        ]);
        let before = BTreeMap::from([(table("users"), true)]);
        let findings = lint_against(&pending, &LintPolicy::default(), &before);
        let got: Vec<(&str, bool)> = findings
            .iter()
            .map(|f| (f.rule.as_str(), f.blocking))
            .collect();
        assert_eq!(
            got,
            vec![
                ("changing-column-type", false),
                ("ban-drop-column", true),
                ("renaming-table", true),
                ("ban-drop-table", true),
            ]
        );
    }

    #[test]
    fn without_a_database_an_earlier_create_is_noted_but_still_blocks() {
        let files = migrations(&[
            ("1_a.sql", "create table t (id int);"),
            ("2_b.sql", "drop table t;"),
        ]);
        let findings = lint_all(&files, &LintPolicy::default());
        assert!(findings[0].blocking);
        let context = findings[0].context.as_deref().unwrap();
        assert!(
            context.contains("public.t is created by 1_a.sql earlier in this directory")
                && context.contains("tether migrate plan"),
            "{context}"
        );
    }

    #[test]
    fn statements_inside_function_bodies_are_not_findings() {
        let sql =
            "create function f() returns void language plpgsql as $$ begin drop table x; end $$;";
        assert!(lint(sql, &LintPolicy::default()).is_empty());
    }
}
