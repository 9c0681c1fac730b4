//! Where each field of a YAML stream is: per document, the line and column of every field path
//! in the API server's form (`spec.render.services[0].instances`), so `tether validate` points
//! at the offending field itself. Built from the YAML parser's events (the same parser
//! `serde-saphyr` reads the documents with).

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// The positions of one document's fields.
#[derive(Clone, Debug, Default)]
pub struct Fields {
    /// Where the document starts.
    pub start: Option<At>,
    by_path: HashMap<String, At>,
}

impl Fields {
    /// The position of `path`, or of its nearest parent that is in the document (a missing
    /// required field is reported where its parent is); the document start for `<nil>` or an
    /// empty path.
    pub fn find(&self, path: &str) -> Option<At> {
        let mut path = path;
        loop {
            if let Some(at) = self.by_path.get(path) {
                return Some(*at);
            }
            match parent(path) {
                Some(up) => path = up,
                None => return self.start,
            }
        }
    }
}

/// `spec.a[0]` → `spec.a`; `spec.a` → `spec`; `spec` → none.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

enum Frame {
    Map {
        path: String,
        /// The key just read, with where it is, while its value is expected.
        key: Option<(String, At)>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

/// The field positions of every document of `text` (empty when it does not parse: the
/// parse error has its own position).
pub fn positions(text: &str) -> Vec<Fields> {
    let mut documents = Vec::new();
    let mut current = Fields::default();
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else {
            return Vec::new();
        };
        let at = At {
            line: span.start.line(),
            column: span.start.col() + 1,
        };
        let node = matches!(
            event,
            Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(_)
        );
        if node {
            // The path of this node, and where to report it (a mapping value: at its key).
            let placed = match stack.last_mut() {
                None => Some((String::new(), at)),
                Some(Frame::Map {
                    key: slot @ None, ..
                }) => {
                    if let Event::Scalar(name, ..) = &event {
                        *slot = Some((name.to_string(), at));
                    }
                    None
                }
                Some(Frame::Map { path, key }) => {
                    let (name, key_at) = key.take().unwrap_or_else(|| ("?".to_string(), at));
                    let joined = if path.is_empty() {
                        name
                    } else {
                        format!("{path}.{name}")
                    };
                    Some((joined, key_at))
                }
                Some(Frame::Seq { path, index }) => {
                    let joined = format!("{path}[{index}]");
                    *index += 1;
                    Some((joined, at))
                }
            };
            // A key that is itself a collection is not a field name: skip its contents.
            let (path, node_at) = match placed {
                Some(placed) => placed,
                None if matches!(event, Event::Scalar(..)) => continue,
                None => ("?".to_string(), at),
            };
            if !path.is_empty() {
                current.by_path.entry(path.clone()).or_insert(node_at);
            }
            match event {
                Event::MappingStart(..) => stack.push(Frame::Map { path, key: None }),
                Event::SequenceStart(..) => stack.push(Frame::Seq { path, index: 0 }),
                _ => {}
            }
            continue;
        }
        match event {
            Event::DocumentStart(..) => {
                current = Fields {
                    start: Some(at),
                    ..Fields::default()
                };
                stack.clear();
            }
            Event::DocumentEnd => documents.push(std::mem::take(&mut current)),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "# comment\napiVersion: v1\nkind: ConfigMap\n---\nkind: Environment\nspec:\n  render:\n    services:\n      - name: api\n        instances: \"two\"\n      - { name: b, type: web }\n  interval: 5\n";

    #[test]
    fn every_field_is_found_at_its_key_in_its_document() {
        let docs = positions(STREAM);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].find("kind"), Some(At { line: 3, column: 1 }));
        let env = &docs[1];
        assert_eq!(
            env.find("spec.interval"),
            Some(At {
                line: 12,
                column: 3
            })
        );
        assert_eq!(
            env.find("spec.render.services[0].instances"),
            Some(At {
                line: 10,
                column: 9
            })
        );
        assert_eq!(
            env.find("spec.render.services[1].type"),
            Some(At {
                line: 11,
                column: 20
            })
        );
        // A field that is not there: its nearest parent that is.
        assert_eq!(
            env.find("spec.render.services[0].schedule"),
            Some(At { line: 9, column: 9 })
        );
        assert_eq!(env.find("<nil>"), env.start);
        assert_eq!(env.start.map(|s| s.line), Some(4));
    }

    #[test]
    fn yaml_that_does_not_parse_has_no_positions() {
        assert!(positions("a: [b\n").is_empty());
    }
}
