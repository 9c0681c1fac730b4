//! Splits a migration file into statements exactly the way the Supabase CLI does
//! (`pkg/parser` in supabase/cli: a small state machine over the text), so the
//! `statements` column Tether writes into `supabase_migrations.schema_migrations` is the
//! one `supabase db push` would have written for the same file.
//!
//! The CLI's rules, reproduced here including their quirks:
//! - a `;` outside quotes, comments, dollar quotes and parentheses ends a statement;
//! - `'…'` and `"…"` quotes (a doubled delimiter stays inside), `--` line comments,
//!   nested `/* … */` block comments, `$$`/`$tag$` dollar quotes, a `\` that escapes the
//!   next character, `( … )` and `BEGIN ATOMIC … END` bodies;
//! - each statement keeps its comments; trailing `;` and surrounding whitespace are
//!   trimmed, and statements that end up empty are dropped.
//!
//! Byte-level look-behinds (`data` is the text of the current statement so far) mirror
//! the Go code, which works on byte slices.

/// One statement of a migration file, as the Supabase CLI would store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The statement text: comments kept, trailing `;` and surrounding whitespace trimmed.
    pub text: String,
    /// Byte offset of `text` in the file.
    pub offset: usize,
}

/// Splits `sql` into statements the way `supabase db push` does.
pub fn split_statements(sql: &str) -> Vec<Statement> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut state = State::Ready;
    for (index, ch) in sql.char_indices() {
        let end = index + ch.len_utf8();
        match state.next(ch, &bytes[start..end]) {
            Some(next) => state = next,
            None => {
                push_token(sql, start, end, &mut out);
                start = end;
                state = State::Ready;
            }
        }
    }
    if start < sql.len() {
        push_token(sql, start, sql.len(), &mut out);
    }
    out
}

/// Applies the CLI's `SplitAndTrim` transforms (trim trailing `;`, then whitespace).
fn push_token(sql: &str, start: usize, end: usize, out: &mut Vec<Statement>) {
    let token = &sql[start..end];
    let without_semicolons = token.trim_end_matches(';');
    let trimmed = without_semicolons.trim();
    if trimmed.is_empty() {
        return;
    }
    let leading = without_semicolons.len() - without_semicolons.trim_start().len();
    out.push(Statement {
        text: trimmed.to_string(),
        offset: start + leading,
    });
}

#[derive(Clone, Debug)]
enum State {
    Ready,
    /// Saw one `-`.
    Comment,
    /// Saw `/`; inside a block comment once `depth > 0`.
    Block {
        depth: usize,
    },
    Quote {
        delimiter: char,
        escape: bool,
    },
    /// Inside a dollar quote (or a `--` comment, whose delimiter is a newline).
    Dollar {
        delimiter: Vec<u8>,
    },
    /// Saw `$` at `offset` of the current statement; reading a tag name.
    Tag {
        offset: usize,
    },
    Escape,
    /// Inside `( … )` or `BEGIN ATOMIC … END`.
    Atomic {
        prev: Box<State>,
        delimiter: &'static [u8],
    },
}

impl State {
    /// The state after `r`; `None` ends the statement. `data` ends with `r`.
    fn next(self, r: char, data: &[u8]) -> Option<State> {
        match self {
            State::Ready => ready_next(r, data),
            State::Comment => {
                if r == '-' {
                    Some(State::Dollar {
                        delimiter: b"\n".to_vec(),
                    })
                } else {
                    ready_next(r, data)
                }
            }
            State::Block { mut depth } => {
                let window = &data[data.len().saturating_sub(2)..];
                if window == b"/*" {
                    depth += 1;
                    return Some(State::Block { depth });
                }
                if depth == 0 {
                    return ready_next(r, data);
                }
                if window == b"*/" {
                    depth -= 1;
                    if depth == 0 {
                        return Some(State::Ready);
                    }
                }
                Some(State::Block { depth })
            }
            State::Quote { delimiter, escape } => {
                if escape {
                    if r == delimiter {
                        return Some(State::Quote {
                            delimiter,
                            escape: false,
                        });
                    }
                    return ready_next(r, data);
                }
                Some(State::Quote {
                    delimiter,
                    escape: r == delimiter,
                })
            }
            State::Dollar { delimiter } => {
                if data.ends_with(&delimiter) {
                    Some(State::Ready)
                } else {
                    Some(State::Dollar { delimiter })
                }
            }
            State::Tag { offset } => {
                if r == '$' {
                    return Some(State::Dollar {
                        delimiter: data[offset..].to_vec(),
                    });
                }
                if r.is_alphabetic() || r.is_numeric() || r == '_' {
                    return Some(State::Tag { offset });
                }
                ready_next(r, data)
            }
            State::Escape => Some(State::Ready),
            State::Atomic { prev, delimiter } => {
                // A `;` inside the body does not end the statement: keep the previous state.
                let prev = match prev.clone().next(r, data) {
                    Some(next) => Box::new(next),
                    None => prev,
                };
                if matches!(*prev, State::Ready) && ends_with_ignore_case(data, delimiter) {
                    return Some(State::Ready);
                }
                Some(State::Atomic { prev, delimiter })
            }
        }
    }
}

fn ready_next(r: char, data: &[u8]) -> Option<State> {
    match r {
        '$' => Some(State::Tag {
            offset: data.len() - 1,
        }),
        '\'' | '"' => Some(State::Quote {
            delimiter: r,
            escape: false,
        }),
        '-' => Some(State::Comment),
        '/' => Some(State::Block { depth: 0 }),
        '\\' => Some(State::Escape),
        ';' => None,
        '(' => Some(State::Atomic {
            prev: Box::new(State::Ready),
            delimiter: b")",
        }),
        'c' | 'C' if is_begin_atomic(data) => Some(State::Atomic {
            prev: Box::new(State::Ready),
            delimiter: b"END",
        }),
        _ => Some(State::Ready),
    }
}

fn ends_with_ignore_case(data: &[u8], suffix: &[u8]) -> bool {
    data.len() >= suffix.len() && data[data.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// True when `data` ends with `BEGIN <whitespace> ATOMIC` as whole words.
fn is_begin_atomic(data: &[u8]) -> bool {
    if !ends_with_ignore_case(data, b"ATOMIC") {
        return false;
    }
    let offset = data.len() - b"ATOMIC".len();
    if last_char(&data[..offset]).is_some_and(is_identifier_char) {
        return false;
    }
    // `offset` sits right before ASCII text, so it is a character boundary.
    let prefix = String::from_utf8_lossy(&data[..offset]);
    let prefix = prefix.trim_end().as_bytes();
    if !ends_with_ignore_case(prefix, b"BEGIN") {
        return false;
    }
    let before = &prefix[..prefix.len() - b"BEGIN".len()];
    !last_char(before).is_some_and(is_identifier_char)
}

fn is_identifier_char(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric() || c == '_' || c == '$'
}

/// The last UTF-8 character of `bytes`, if it ends with a valid one.
fn last_char(bytes: &[u8]) -> Option<char> {
    (1..=4.min(bytes.len()))
        .find_map(|width| std::str::from_utf8(&bytes[bytes.len() - width..]).ok())
        .and_then(|tail| tail.chars().next_back())
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<String> {
        split_statements(sql).into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn semicolons_end_statements_and_are_trimmed_with_whitespace() {
        assert_eq!(
            texts("create table a (id int);\n\n  select 1 ;;\n"),
            vec!["create table a (id int)", "select 1"]
        );
    }

    #[test]
    fn comments_stay_attached_to_the_statement_that_follows() {
        assert_eq!(
            texts("-- users; the table\ncreate table u (id int);\n/* a; b */ select 1;"),
            vec![
                "-- users; the table\ncreate table u (id int)",
                "/* a; b */ select 1"
            ]
        );
    }

    #[test]
    fn a_trailing_comment_becomes_its_own_statement_like_the_cli() {
        assert_eq!(
            texts("select 1;\n-- end of file\n"),
            vec!["select 1", "-- end of file"]
        );
    }

    #[test]
    fn dollar_quoted_function_bodies_keep_their_semicolons() {
        let sql = "create function f() returns trigger language plpgsql as $$\nbegin\n  new.updated_at = now();\n  return new;\nend;\n$$;\nselect 2;";
        let got = texts(sql);
        assert_eq!(got.len(), 2);
        assert!(got[0].ends_with("end;\n$$"));
        assert_eq!(got[1], "select 2");
    }

    #[test]
    fn tagged_dollar_quotes_only_close_on_the_same_tag() {
        let sql = "do $body$ begin perform $$x;y$$; end $body$; select 3;";
        assert_eq!(
            texts(sql),
            vec!["do $body$ begin perform $$x;y$$; end $body$", "select 3"]
        );
    }

    #[test]
    fn quotes_with_doubled_delimiters_hide_semicolons() {
        assert_eq!(
            texts("insert into t values ('it''s; fine');select \"a;b\";"),
            vec!["insert into t values ('it''s; fine')", "select \"a;b\""]
        );
    }

    #[test]
    fn nested_block_comments_hide_semicolons() {
        assert_eq!(
            texts("/* a /* b; */ c; */ select 1; select 2"),
            vec!["/* a /* b; */ c; */ select 1", "select 2"]
        );
    }

    #[test]
    fn begin_atomic_bodies_run_until_end() {
        let sql = "create function f() returns int language sql begin atomic select 1; select 2; end; select 3;";
        assert_eq!(
            texts(sql),
            vec![
                "create function f() returns int language sql begin atomic select 1; select 2; end",
                "select 3"
            ]
        );
    }

    #[test]
    fn parentheses_hide_semicolons_like_the_cli() {
        assert_eq!(
            texts("create rule r as on insert to t do also (select 1; select 2); select 3"),
            vec![
                "create rule r as on insert to t do also (select 1; select 2)",
                "select 3"
            ]
        );
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        assert_eq!(
            texts("prepare p as select $1; select 2;"),
            vec!["prepare p as select $1", "select 2"]
        );
    }

    #[test]
    fn offsets_point_at_the_trimmed_statement_and_lines_count_from_one() {
        let sql = "select 1;\n\n  select 2;";
        let statements = split_statements(sql);
        assert_eq!(
            &sql[statements[1].offset..statements[1].offset + 8],
            "select 2"
        );
        assert_eq!(line_of(sql, statements[1].offset), 3);
        assert_eq!(line_of(sql, statements[0].offset), 1);
    }
}
