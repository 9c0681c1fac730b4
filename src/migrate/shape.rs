//! How a migration file has to run, from what its statements do to the transaction they
//! run in.
//!
//! The Supabase CLI sends a file's statements in one pipeline, an implicit transaction, and
//! commits before the next file. Most files are just statements ([`Shape::Plain`]), and
//! Tether may run several of them in one transaction without changing their outcome. Three
//! things need more care:
//!
//! - **Transaction control.** A file wrapped in `BEGIN; … COMMIT;` ([`Shape::Wrapped`]) means
//!   "these statements in one transaction", which is how Tether runs every file anyway: the
//!   wrapper is not sent (it would end Tether's transaction), the statements in between are.
//!   Any other `BEGIN`/`COMMIT`/`ROLLBACK` (a `COMMIT` half-way, two transactions, a final
//!   `ROLLBACK`) makes the file run as written, statement by statement
//!   ([`Shape::AsWritten`]).
//! - **Statements that cannot run in a transaction block** (`CREATE INDEX CONCURRENTLY`,
//!   `VACUUM`, `ALTER SYSTEM`, …): the file runs as written too; the statements between them
//!   still share a transaction.
//! - **`ALTER TYPE … ADD VALUE`**: Postgres refuses to use the new value before the
//!   transaction that added it commits (`unsafe use of new value`, SQLSTATE 55P04). Files
//!   after one that adds an enum value therefore start a new transaction
//!   ([`FileShape::adds_enum_values`], used by the engine to place commits).
//!
//! The statement kinds come from the first words of each statement (comments skipped),
//! which is all Postgres itself looks at to decide these things.

/// What one statement does to the transaction around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatementKind {
    /// Runs inside a transaction like any other statement (including `SAVEPOINT`,
    /// `ROLLBACK TO SAVEPOINT`, and statements that are only comments).
    Plain,
    /// `BEGIN` / `START TRANSACTION`; `bare` when it has no options.
    Begin {
        /// No isolation level or access mode given.
        bare: bool,
    },
    /// `COMMIT` / `END`; `bare` when it has no options (`AND CHAIN`, `PREPARED`).
    Commit {
        /// No options given.
        bare: bool,
    },
    /// `ROLLBACK` / `ABORT` (not `ROLLBACK TO SAVEPOINT`), `PREPARE TRANSACTION`.
    Rollback,
    /// A statement Postgres refuses to run inside a transaction block; the text says which.
    NoTransaction(&'static str),
    /// `ALTER TYPE … ADD VALUE '<label>'`.
    AddEnumValue {
        /// The new label, unquoted.
        label: String,
    },
}

impl StatementKind {
    /// `BEGIN`, `COMMIT` or `ROLLBACK` (and their synonyms).
    pub fn is_transaction_control(&self) -> bool {
        matches!(
            self,
            StatementKind::Begin { .. } | StatementKind::Commit { .. } | StatementKind::Rollback
        )
    }
}

/// How a file runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// No transaction control, nothing that needs to run outside a transaction.
    Plain,
    /// `BEGIN; … COMMIT;` around everything else: the statements in between run in
    /// Tether's transaction, the wrapper is not sent.
    Wrapped,
    /// Runs as written, statement by statement, outside Tether's transaction; `reason`
    /// says why (with the line).
    AsWritten {
        /// Why, e.g. `it manages its own transactions (COMMIT at line 4)`.
        reason: String,
    },
}

/// A file's shape and what the engine needs to know to place transactions around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileShape {
    /// How the file runs.
    pub shape: Shape,
    /// The kind of each statement (same order as the file's statements).
    pub kinds: Vec<StatementKind>,
    /// Enum labels the file adds with `ALTER TYPE … ADD VALUE`.
    pub adds_enum_values: Vec<String>,
}

impl FileShape {
    /// Classifies a file from its statements' texts and the 1-based line each one's code
    /// starts on (after leading comments).
    pub fn of<'a>(statements: impl IntoIterator<Item = (&'a str, usize)>) -> FileShape {
        let mut kinds = Vec::new();
        let mut lines = Vec::new();
        let mut substantive = Vec::new();
        for (i, (text, line)) in statements.into_iter().enumerate() {
            kinds.push(classify(text));
            lines.push(line);
            // Statements that are only comments count as neither first nor last.
            if !is_only_comments(text) {
                substantive.push(i);
            }
        }
        let adds_enum_values = kinds
            .iter()
            .filter_map(|k| match k {
                StatementKind::AddEnumValue { label } => Some(label.clone()),
                _ => None,
            })
            .collect();
        let control: Vec<usize> = (0..kinds.len())
            .filter(|&i| kinds[i].is_transaction_control())
            .collect();
        let outside = (0..kinds.len()).find_map(|i| match kinds[i] {
            StatementKind::NoTransaction(what) => Some((i, what)),
            _ => None,
        });
        let shape = if control.is_empty() && outside.is_none() {
            Shape::Plain
        } else if outside.is_none()
            && control.len() == 2
            && substantive.first() == Some(&control[0])
            && substantive.last() == Some(&control[1])
            && kinds[control[0]] == (StatementKind::Begin { bare: true })
            && kinds[control[1]] == (StatementKind::Commit { bare: true })
        {
            Shape::Wrapped
        } else if let Some((i, what)) = outside.filter(|_| control.is_empty()) {
            Shape::AsWritten {
                reason: format!("{what} cannot run inside a transaction (line {})", lines[i]),
            }
        } else {
            let i = control
                .iter()
                .copied()
                .find(|&i| {
                    Some(&i) != substantive.first()
                        || !matches!(kinds[i], StatementKind::Begin { bare: true })
                })
                .unwrap_or(control[0]);
            let word = match kinds[i] {
                StatementKind::Begin { .. } => "BEGIN",
                StatementKind::Commit { .. } => "COMMIT",
                _ => "ROLLBACK",
            };
            Shape::AsWritten {
                reason: format!(
                    "it manages its own transactions ({word} at line {})",
                    lines[i]
                ),
            }
        };
        FileShape {
            shape,
            kinds,
            adds_enum_values,
        }
    }

    /// The first statement that cannot run in a transaction block yet sits inside one the
    /// file opens itself (`BEGIN; … CREATE INDEX CONCURRENTLY …; COMMIT;`), with what it is:
    /// Postgres refuses it however the file is run.
    pub fn no_transaction_inside_block(&self) -> Option<(usize, &'static str)> {
        let mut open = false;
        for (i, kind) in self.kinds.iter().enumerate() {
            match kind {
                StatementKind::Begin { .. } => open = true,
                StatementKind::Commit { .. } | StatementKind::Rollback => open = false,
                StatementKind::NoTransaction(what) if open => return Some((i, what)),
                _ => {}
            }
        }
        None
    }

    /// Whether statement `index` is sent when the file runs in Tether's transaction
    /// (a wrapped file's `BEGIN` and `COMMIT` are not).
    pub fn sent_in_transaction(&self, index: usize) -> bool {
        !(self.shape == Shape::Wrapped && self.kinds[index].is_transaction_control())
    }
}

/// The kind of one statement.
pub fn classify(text: &str) -> StatementKind {
    let tokens = tokens(text);
    let word = |i: usize| tokens.get(i).and_then(Token::word);
    let words_from = |i: usize| tokens.iter().skip(i).filter_map(Token::word);
    let has_word = |w: &str| words_from(0).any(|x| x == w);
    match (word(0), word(1), word(2)) {
        (Some("begin"), _, _) => StatementKind::Begin {
            bare: rest_is(&tokens[1..], &["work", "transaction"]),
        },
        (Some("start"), Some("transaction"), _) => StatementKind::Begin {
            bare: tokens.len() == 2,
        },
        (Some("commit" | "end"), Some("prepared"), _) => StatementKind::Rollback,
        (Some("commit" | "end"), _, _) => StatementKind::Commit {
            bare: rest_is(&tokens[1..], &["work", "transaction"]),
        },
        (Some("rollback"), Some("to"), _) => StatementKind::Plain,
        (Some("rollback"), Some("work" | "transaction"), Some("to")) => StatementKind::Plain,
        (Some("rollback" | "abort"), _, _) => StatementKind::Rollback,
        (Some("prepare"), Some("transaction"), _) => StatementKind::Rollback,
        (Some("create"), Some("index"), Some("concurrently"))
        | (Some("create"), Some("unique"), Some("index"))
            if has_word("concurrently") =>
        {
            StatementKind::NoTransaction("CREATE INDEX CONCURRENTLY")
        }
        (Some("drop"), Some("index"), Some("concurrently")) => {
            StatementKind::NoTransaction("DROP INDEX CONCURRENTLY")
        }
        (Some("reindex"), _, _) if has_word("concurrently") => {
            StatementKind::NoTransaction("REINDEX CONCURRENTLY")
        }
        (Some("reindex"), Some("database" | "system"), _) => {
            StatementKind::NoTransaction("REINDEX DATABASE")
        }
        (Some("vacuum"), _, _) => StatementKind::NoTransaction("VACUUM"),
        (Some("create" | "drop"), Some("database"), _) => {
            StatementKind::NoTransaction("CREATE/DROP DATABASE")
        }
        (Some("create" | "drop"), Some("tablespace"), _) => {
            StatementKind::NoTransaction("CREATE/DROP TABLESPACE")
        }
        (Some("alter"), Some("system"), _) => StatementKind::NoTransaction("ALTER SYSTEM"),
        (Some("alter"), Some("database"), _) if has_word("tablespace") => {
            StatementKind::NoTransaction("ALTER DATABASE … SET TABLESPACE")
        }
        (Some("create" | "drop"), Some("subscription"), _) => {
            StatementKind::NoTransaction("CREATE/DROP SUBSCRIPTION")
        }
        (Some("alter"), Some("table"), _)
            if has_word("detach")
                && tokens.last().and_then(Token::word) == Some("concurrently") =>
        {
            StatementKind::NoTransaction("DETACH PARTITION CONCURRENTLY")
        }
        (Some("alter"), Some("type"), _) => add_enum_value(&tokens),
        _ => StatementKind::Plain,
    }
}

/// True when every token of `rest` is one of the optional noise words (`WORK`, …).
fn rest_is(rest: &[Token], allowed: &[&str]) -> bool {
    rest.iter()
        .all(|t| t.word().is_some_and(|w| allowed.contains(&w)))
}

/// `ALTER TYPE name ADD VALUE [IF NOT EXISTS] 'label' …`.
fn add_enum_value(tokens: &[Token]) -> StatementKind {
    let Some(add) = tokens
        .windows(2)
        .position(|w| w[0].word() == Some("add") && w[1].word() == Some("value"))
    else {
        return StatementKind::Plain;
    };
    let label = tokens[add + 2..].iter().find_map(|t| match t {
        Token::String(s) => Some(s.clone()),
        _ => None,
    });
    match label {
        Some(label) => StatementKind::AddEnumValue { label },
        None => StatementKind::Plain,
    }
}

/// A lexical token of a statement, as far as classification needs one.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier, lower-cased.
    Word(String),
    /// A double-quoted identifier.
    Quoted(String),
    /// A string literal's value.
    String(String),
    /// Anything else (punctuation, numbers, dollar-quoted bodies, parameters).
    Other,
}

impl Token {
    fn word(&self) -> Option<&str> {
        match self {
            Token::Word(w) => Some(w),
            _ => None,
        }
    }
}

/// The statement's tokens, comments skipped.
/// The text of a quoted string or identifier whose body starts at `start` (after the opening
/// `quote`): a doubled quote stands for itself, and with `escapes` (`E'…'`) a backslash
/// escapes the next character. Returns the text and the index after the closing quote.
fn quoted(chars: &[char], start: usize, quote: char, escapes: bool) -> (String, usize) {
    let (n, mut i) = (chars.len(), start);
    let mut value = String::new();
    while i < n {
        if escapes && chars[i] == '\\' && i + 1 < n {
            value.push(chars[i + 1]);
            i += 2;
        } else if chars[i] == quote {
            if chars.get(i + 1) == Some(&quote) {
                value.push(quote);
                i += 2;
            } else {
                return (value, i + 1);
            }
        } else {
            value.push(chars[i]);
            i += 1;
        }
    }
    (value, i)
}

fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let n = chars.len();
    while i < n {
        let c = chars[i];
        if c.is_whitespace() || c == '\u{feff}' {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            let mut depth = 0usize;
            while i < n {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' || ((c == 'e' || c == 'E') && chars.get(i + 1) == Some(&'\'')) {
            let escapes = c != '\'';
            let (value, next) = quoted(&chars, i + usize::from(escapes) + 1, '\'', escapes);
            i = next;
            out.push(Token::String(value));
        } else if c == '"' {
            let (value, next) = quoted(&chars, i + 1, '"', false);
            i = next;
            out.push(Token::Quoted(value));
        } else if c == '$' {
            // `$tag$ … $tag$` (a body) or `$1` (a parameter).
            let mut j = i + 1;
            while j < n && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if j < n
                && chars[j] == '$'
                && (j == i + 1 || !chars[i + 1..j].iter().all(char::is_ascii_digit))
            {
                let tag: Vec<char> = chars[i..=j].to_vec();
                let mut k = j + 1;
                while k < n && !chars[k..].starts_with(&tag) {
                    k += 1;
                }
                i = (k + tag.len()).min(n);
            } else {
                i = j;
            }
            out.push(Token::Other);
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < n && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '$') {
                j += 1;
            }
            out.push(Token::Word(
                chars[i..j].iter().collect::<String>().to_lowercase(),
            ));
            i = j;
        } else {
            out.push(Token::Other);
            i += 1;
        }
    }
    out
}

/// The byte offset of the statement's first token (after leading comments and whitespace).
pub fn code_start(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
        } else if bytes[i..].starts_with(b"--") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth = depth.saturating_sub(1);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else {
            break;
        }
    }
    i.min(text.len())
}

/// True when the statement has no tokens at all (only comments or whitespace).
pub fn is_only_comments(text: &str) -> bool {
    tokens(text).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> FileShape {
        let statements = crate::migrate::split::split_statements(sql);
        FileShape::of(statements.iter().map(|s| {
            (
                s.text.as_str(),
                crate::migrate::split::line_of(sql, s.offset + code_start(&s.text)),
            )
        }))
    }

    #[test]
    fn transaction_control_is_recognised_in_its_spellings() {
        for (sql, kind) in [
            ("begin", StatementKind::Begin { bare: true }),
            ("-- start\nBEGIN WORK", StatementKind::Begin { bare: true }),
            ("start transaction", StatementKind::Begin { bare: true }),
            (
                "begin isolation level serializable",
                StatementKind::Begin { bare: false },
            ),
            ("commit", StatementKind::Commit { bare: true }),
            ("END TRANSACTION", StatementKind::Commit { bare: true }),
            ("commit and chain", StatementKind::Commit { bare: false }),
            ("rollback", StatementKind::Rollback),
            ("abort", StatementKind::Rollback),
            ("rollback to savepoint a", StatementKind::Plain),
            ("rollback to a", StatementKind::Plain),
            ("savepoint a", StatementKind::Plain),
            ("/* begin */ select 1", StatementKind::Plain),
        ] {
            assert_eq!(classify(sql), kind, "{sql}");
        }
    }

    #[test]
    fn statements_that_cannot_run_in_a_transaction_are_named() {
        for (sql, what) in [
            (
                "create index concurrently i on t (c)",
                "CREATE INDEX CONCURRENTLY",
            ),
            (
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c)",
                "CREATE INDEX CONCURRENTLY",
            ),
            ("drop index concurrently i", "DROP INDEX CONCURRENTLY"),
            ("vacuum analyze t", "VACUUM"),
            ("alter system set work_mem = '1MB'", "ALTER SYSTEM"),
            (
                "alter table p detach partition c concurrently",
                "DETACH PARTITION CONCURRENTLY",
            ),
        ] {
            assert_eq!(classify(sql), StatementKind::NoTransaction(what), "{sql}");
        }
        assert_eq!(
            classify("refresh materialized view concurrently v"),
            StatementKind::Plain
        );
        assert_eq!(classify("create index i on t (c)"), StatementKind::Plain);
    }

    #[test]
    fn enum_additions_carry_their_label() {
        assert_eq!(
            classify("alter type \"public\".\"status\" add value 'c'"),
            StatementKind::AddEnumValue { label: "c".into() }
        );
        assert_eq!(
            classify("ALTER TYPE s ADD VALUE IF NOT EXISTS 'it''s' BEFORE 'b'"),
            StatementKind::AddEnumValue {
                label: "it's".into()
            }
        );
        assert_eq!(
            classify("alter type s rename value 'a' to 'b'"),
            StatementKind::Plain
        );
    }

    #[test]
    fn dollar_quoted_bodies_hide_their_words() {
        assert_eq!(
            classify(
                "create function f() returns void language plpgsql as $$ begin commit; end $$"
            ),
            StatementKind::Plain
        );
        assert_eq!(
            classify("do $body$ begin vacuum; end $body$"),
            StatementKind::Plain
        );
    }

    #[test]
    fn files_are_plain_wrapped_or_run_as_written() {
        assert_eq!(shape("create table a (id int);").shape, Shape::Plain);
        assert_eq!(
            shape("-- header\nbegin;\ncreate table a (id int);\ncommit;\n-- done\n").shape,
            Shape::Wrapped
        );
        assert_eq!(
            shape("BEGIN;\ncreate table a (id int);\nCOMMIT;\ncreate table b (id int);\n").shape,
            Shape::AsWritten {
                reason: "it manages its own transactions (COMMIT at line 3)".into()
            }
        );
        assert_eq!(
            shape("begin;\ncreate table a (id int);\nrollback;\n").shape,
            Shape::AsWritten {
                reason: "it manages its own transactions (ROLLBACK at line 3)".into()
            }
        );
        assert_eq!(
            shape(
                "create table a (id int);\n-- no locks\ncreate index concurrently i on a (id);\n"
            )
            .shape,
            Shape::AsWritten {
                reason: "CREATE INDEX CONCURRENTLY cannot run inside a transaction (line 3)".into()
            }
        );
        let wrapped = shape("begin;\nselect 1;\ncommit;");
        assert!(!wrapped.sent_in_transaction(0) && wrapped.sent_in_transaction(1));
        assert!(!wrapped.sent_in_transaction(2));
    }
}
