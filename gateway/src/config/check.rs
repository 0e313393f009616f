//! `chat-gateway config check`: every problem of a config file at once, each with its
//! key and line — not just the first one serde stops at.
//!
//! A syntax error ends the check (nothing after it can be trusted). Otherwise the file is
//! deserialized; each error (an unknown key, a wrong type) is located by its span,
//! reported, and its key removed from a working copy, which is deserialized again until
//! it loads. The values are then checked together ([`Config::problems`]).

use std::ops::Range;

use toml_edit::{DocumentMut, ImDocument, Item, Table};

use super::Config;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`delivery.retransmit_ms`, `plugins[1].cpu_ms`); empty for a syntax error.
    pub key: String,
    /// 1-based line of the key in the file, when it is there.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(line), false) => write!(f, "line {line}: {}: {}", self.key, self.message),
            (Some(line), true) => write!(f, "line {line}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Most errors reported before giving up on a badly broken file.
const MOST: usize = 100;

/// Checks a config file's text; an empty list means it loads and is consistent.
pub fn check(text: &str) -> Vec<Problem> {
    let original = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(error) => {
            return vec![Problem {
                key: String::new(),
                line: error.span().map(|s| line_of(text, s.start)),
                message: error.message().trim().to_owned(),
            }];
        }
    };
    let mut working: DocumentMut = text.parse().expect("parsed above");
    let mut problems = Vec::new();
    while problems.len() < MOST {
        let current = working.to_string();
        let error = match toml::from_str::<Config>(&current) {
            Ok(config) => {
                problems.extend(config.problems().into_iter().map(|(key, message)| Problem {
                    line: find_line(&original, text, &key),
                    key,
                    message,
                }));
                break;
            }
            Err(error) => error,
        };
        let located = ImDocument::parse(current.as_str())
            .ok()
            .zip(error.span())
            .and_then(|(doc, span)| locate(doc.as_table(), &span, String::new()));
        let message = error.message().trim().to_owned();
        match located {
            Some(key) if remove(working.as_table_mut(), &key) => problems.push(Problem {
                line: find_line(&original, text, &key),
                key,
                message,
            }),
            // Not pinned to a key: report it as it is and stop.
            _ => {
                problems.push(Problem {
                    key: String::new(),
                    line: None,
                    message,
                });
                break;
            }
        }
    }
    problems
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key whose key or value covers `span`: the innermost one.
fn locate(table: &Table, span: &Range<usize>, prefix: String) -> Option<String> {
    for (key, item) in table.iter() {
        let path = join(&prefix, key);
        let key_span = table.key(key).and_then(|k| k.span());
        let covers = |s: Option<Range<usize>>| {
            s.is_some_and(|s| s.start <= span.start && span.start < s.end.max(s.start + 1))
        };
        match item {
            Item::Table(inner) => {
                if let Some(found) = locate(inner, span, path.clone()) {
                    return Some(found);
                }
                if covers(key_span) {
                    return Some(path);
                }
            }
            Item::ArrayOfTables(array) => {
                for (i, inner) in array.iter().enumerate() {
                    if let Some(found) = locate(inner, span, format!("{path}[{i}]")) {
                        return Some(found);
                    }
                }
                if covers(key_span) {
                    return Some(path);
                }
            }
            _ if covers(key_span) || covers(item.span()) => return Some(path),
            _ => {}
        }
    }
    None
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Splits `plugins[1].cpu_ms` into (`plugins`, Some(1)), (`cpu_ms`, None).
fn segments(key: &str) -> Vec<(&str, Option<usize>)> {
    key.split('.')
        .map(|part| match part.split_once('[') {
            Some((name, index)) => (name, index.trim_end_matches(']').parse().ok()),
            None => (part, None),
        })
        .collect()
}

fn table_at<'t>(mut table: &'t Table, key: &str) -> Option<(&'t Table, String)> {
    let segments = segments(key);
    let (last, path) = segments.split_last()?;
    for (name, index) in path {
        table = match (table.get(name)?, index) {
            (Item::Table(inner), None) => inner,
            (Item::ArrayOfTables(array), Some(i)) => array.get(*i)?,
            _ => return None,
        };
    }
    Some((table, last.0.to_owned()))
}

/// The line of `key` in the original file, if the key is written there.
fn find_line(doc: &ImDocument<&str>, text: &str, key: &str) -> Option<usize> {
    let (table, last) = table_at(doc.as_table(), key)?;
    let span = table.key(&last).and_then(|k| k.span())?;
    Some(line_of(text, span.start))
}

fn remove(table: &mut Table, key: &str) -> bool {
    let segments = segments(key);
    let Some(((last, last_index), path)) = segments.split_last() else {
        return false;
    };
    let mut table = table;
    for (name, index) in path {
        table = match (table.get_mut(name), index) {
            (Some(Item::Table(inner)), None) => inner,
            (Some(Item::ArrayOfTables(array)), Some(i)) => match array.get_mut(*i) {
                Some(inner) => inner,
                None => return false,
            },
            _ => return false,
        };
    }
    match last_index {
        // A whole `[[plugins]]` entry: drop only that one.
        Some(i) => match table.get_mut(last) {
            Some(Item::ArrayOfTables(array)) if *i < array.len() => {
                array.remove(*i);
                true
            }
            _ => false,
        },
        None => table.remove(last).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_has_no_problems() {
        assert_eq!(
            check("listen = \"127.0.0.1:5000\"\n[delivery]\nwindow = 10\n"),
            vec![]
        );
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_reported_with_its_line() {
        let text = "\
listen = \"127.0.0.1:5000\"
colour = \"blue\"

[delivery]
retransmit = 5
window = \"many\"

[[plugins]]
path = \"bundled:delete-filter\"
cpu = 3
";
        let problems = check(text);
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            found,
            vec![
                ("colour", Some(2)),
                ("delivery.retransmit", Some(5)),
                ("delivery.window", Some(6)),
                ("plugins[0].cpu", Some(10)),
            ],
            "{problems:#?}"
        );
        assert!(
            problems[0].message.contains("unknown field `colour`"),
            "{}",
            problems[0]
        );
        assert!(
            problems[2].message.contains("invalid type"),
            "{}",
            problems[2]
        );
    }

    #[test]
    fn inconsistent_values_are_all_reported_with_their_keys() {
        let text = "[delivery]\nack_delay_ms = 50\nretransmit_ms = 10\n\n[offline]\ncapacity = 0\n";
        let problems = check(text);
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            found,
            vec![
                ("delivery.retransmit_ms", Some(3)),
                ("offline.capacity", Some(6))
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn a_syntax_error_is_reported_with_its_line() {
        let problems = check("[delivery]\nwindow = = 3\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2), "{}", problems[0]);
    }
}
