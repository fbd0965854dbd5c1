//! Reads mosquitto's `acl_file` format into rules.
//!
//! Supported, as mosquitto documents it:
//! - `# comment` lines and blank lines;
//! - `topic [read|write|readwrite|deny] <topic>`: the access is optional (default
//!   `readwrite`); before the first `user` line these rules are for anonymous clients,
//!   after it for that user;
//! - `user <username>`: the following `topic` lines are this user's;
//! - `pattern [read|write|readwrite|deny] <topic>`: a rule for every client, with `%u`
//!   and `%c` each standing for a whole level.
//!
//! Differences: `%u` / `%c` are substituted in `topic` lines too (mosquitto reads them
//! literally there; a level that is literally `%u` is not a useful topic), and any other
//! line is an error naming its line number rather than being skipped. mosquitto denies
//! everything no line grants: set `acl_default = "deny"` to match it.

use std::fmt;

use super::{RuleSpec, Who};

/// A line that is not in the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ImportError {}

const ACCESS_WORDS: [&str; 4] = ["read", "write", "readwrite", "deny"];

/// The rules of a mosquitto ACL file, in file order, their topics validated.
pub fn import_mosquitto(text: &str) -> Result<Vec<RuleSpec>, ImportError> {
    let mut rules = Vec::new();
    let mut section = Who::Anonymous;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let error = |reason: &str| ImportError {
            line: i + 1,
            reason: reason.to_string(),
        };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(k, r)| (k, r.trim()));
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(error("`user` needs a username"));
                }
                section = Who::User(rest.to_string());
            }
            "topic" | "pattern" => {
                if rest.is_empty() {
                    return Err(error(&format!("`{keyword}` needs a topic")));
                }
                let (access, topic) = match rest.split_once(char::is_whitespace) {
                    Some((word, topic)) if ACCESS_WORDS.contains(&word) => (word, topic.trim()),
                    _ => ("readwrite", rest),
                };
                if let Err(e) = super::pattern::Pattern::parse(topic) {
                    return Err(error(&e.to_string()));
                }
                let who = if keyword == "pattern" {
                    Who::Everyone
                } else {
                    section.clone()
                };
                rules.push(RuleSpec {
                    who,
                    topic: topic.to_string(),
                    access: access.to_string(),
                });
            }
            other => {
                return Err(error(&format!(
                    "unknown keyword `{other}` (expected topic, user or pattern)"
                )))
            }
        }
    }
    Ok(rules)
}
