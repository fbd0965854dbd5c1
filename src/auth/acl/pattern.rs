//! Topic patterns of ACL rules, and how a pattern relates to a topic and to a filter.
//!
//! A pattern is a topic filter (`+`, `#`) whose levels may also be `%u` (the client's
//! username) or `%c` (its client id), each the whole level as in mosquitto. Before use
//! the placeholders are replaced per client ([`Pattern::resolve`]); a substituted value
//! is always one literal level, never a wildcard, so it cannot widen the pattern.
//!
//! Matching follows MQTT (5.0 §4.7): `+` is one level, `#` the parent level and any
//! number of children, empty levels are levels, and a level-0 wildcard does not match a
//! topic that starts with `$` (so `readwrite #` grants nothing under `$SYS/`).

use std::fmt;

/// One level of a pattern as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Level {
    /// A literal level.
    Lit(Box<str>),
    /// `+`
    Plus,
    /// `#` (only last)
    Hash,
    /// `%u`
    User,
    /// `%c`
    Client,
}

/// A validated ACL pattern (placeholders unresolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    levels: Box<[Level]>,
}

/// A pattern resolved for one client: literals, `+` and `#` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    levels: Box<[Level]>,
}

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// The pattern is empty.
    Empty,
    /// `+`, `#`, `%u` or `%c` shares its level with other characters.
    NotWholeLevel(String),
    /// `#` is not the last level.
    HashNotLast,
    /// The pattern contains U+0000.
    NullChar,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the topic pattern is empty"),
            Self::NotWholeLevel(level) => write!(
                f,
                "level {level:?}: +, #, %u and %c must each be a whole level"
            ),
            Self::HashNotLast => f.write_str("# must be the last level"),
            Self::NullChar => f.write_str("the topic pattern contains U+0000"),
        }
    }
}

/// A substituted value that cannot be one literal level: absent, empty, or holding
/// `+`, `#` or `/` (which would widen or reshape the pattern).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unusable {
    /// The client has no such value (no username).
    Absent,
    /// The value is empty or contains `+`, `#` or `/`.
    Unsafe,
}

impl Pattern {
    /// Parses and validates `text`.
    pub(super) fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.contains('\0') {
            return Err(PatternError::NullChar);
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Plus,
                "#" if i + 1 == parts.len() => Level::Hash,
                "#" => return Err(PatternError::HashNotLast),
                "%u" => Level::User,
                "%c" => Level::Client,
                other
                    if other.contains(['+', '#'])
                        || other.contains("%u")
                        || other.contains("%c") =>
                {
                    return Err(PatternError::NotWholeLevel(other.to_string()))
                }
                other => Level::Lit(other.into()),
            };
            levels.push(level);
        }
        Ok(Pattern {
            levels: levels.into(),
        })
    }

    /// The pattern as it is for every client, if it names no placeholder.
    pub(super) fn fixed(&self) -> Option<Resolved> {
        let placeholder = self
            .levels
            .iter()
            .any(|l| matches!(l, Level::User | Level::Client));
        (!placeholder).then(|| Resolved {
            levels: self.levels.clone(),
        })
    }

    /// The pattern for a client with `username` and `client_id`, or why a placeholder
    /// cannot be filled.
    pub(super) fn resolve(
        &self,
        username: Option<&str>,
        client_id: &str,
    ) -> Result<Resolved, Unusable> {
        let fill = |value: Option<&str>| -> Result<Level, Unusable> {
            match value {
                None => Err(Unusable::Absent),
                Some(v) if v.is_empty() || v.contains(['+', '#', '/']) => Err(Unusable::Unsafe),
                Some(v) => Ok(Level::Lit(v.into())),
            }
        };
        let mut levels = Vec::with_capacity(self.levels.len());
        for level in self.levels.iter() {
            levels.push(match level {
                Level::User => fill(username)?,
                Level::Client => fill(Some(client_id))?,
                other => other.clone(),
            });
        }
        Ok(Resolved {
            levels: levels.into(),
        })
    }
}

/// Whether a wildcard at level 0 may stand for `level` (a `$` level it may not).
fn wildcard_may_be(depth: usize, level: &str) -> bool {
    depth > 0 || !level.starts_with('$')
}

impl Resolved {
    /// A resolved pattern from filter text (validated by the caller); for filters of
    /// SUBSCRIBE, which contain no placeholders.
    pub(super) fn filter(text: &str) -> Self {
        let levels: Vec<Level> = text
            .split('/')
            .map(|part| match part {
                "+" => Level::Plus,
                "#" => Level::Hash,
                other => Level::Lit(other.into()),
            })
            .collect();
        Resolved {
            levels: levels.into(),
        }
    }

    /// Whether the pattern matches the topic name `topic`.
    pub(super) fn matches(&self, topic: &str) -> bool {
        let mut levels = self.levels.iter();
        for (depth, part) in topic.split('/').enumerate() {
            match levels.next() {
                Some(Level::Hash) => return wildcard_may_be(depth, part),
                Some(Level::Plus) if wildcard_may_be(depth, part) => {}
                Some(Level::Lit(lit)) if **lit == *part => {}
                _ => return false,
            }
        }
        // `a/#` matches `a` as well.
        match levels.next() {
            None => true,
            Some(Level::Hash) => levels.next().is_none(),
            Some(_) => false,
        }
    }

    /// Whether every topic `filter` matches is matched by this pattern.
    pub(super) fn covers(&self, filter: &Resolved) -> bool {
        let (p, f) = (&self.levels, &filter.levels);
        for depth in 0.. {
            match (p.get(depth), f.get(depth)) {
                (Some(Level::Hash), fl) => {
                    // A `$` literal of the filter at level 0 escapes a level-0 `#`.
                    return !matches!(fl, Some(Level::Lit(l)) if !wildcard_may_be(depth, l));
                }
                (None, None) => return true,
                (Some(_), None) | (None, Some(_)) => return false,
                // A level-0 `#` matches one level or more, as `+/#` does.
                (Some(Level::Plus), Some(Level::Hash)) if depth == 0 => {
                    return p.get(1) == Some(&Level::Hash)
                }
                (Some(_), Some(Level::Hash)) => return false,
                (Some(Level::Plus), Some(Level::Plus)) => {}
                (Some(Level::Plus), Some(Level::Lit(l))) if wildcard_may_be(depth, l) => {}
                (Some(Level::Lit(a)), Some(Level::Lit(b))) if a == b => {}
                _ => return false,
            }
        }
        unreachable!("the loop returns at the end of the shorter list")
    }

    /// Whether some topic is matched by both this pattern and `filter`.
    pub(super) fn overlaps(&self, filter: &Resolved) -> bool {
        let (p, f) = (&self.levels, &filter.levels);
        for depth in 0.. {
            match (p.get(depth), f.get(depth)) {
                (Some(Level::Hash), other) | (other, Some(Level::Hash)) => {
                    // The other side's levels make a topic, unless its level 0 is a `$`
                    // literal that the `#` may not stand for.
                    return !matches!(other, Some(Level::Lit(l)) if !wildcard_may_be(depth, l));
                }
                (None, None) => return true,
                (Some(_), None) | (None, Some(_)) => return false,
                (Some(Level::Plus), Some(Level::Plus)) => {}
                (Some(Level::Plus), Some(Level::Lit(l)))
                | (Some(Level::Lit(l)), Some(Level::Plus))
                    if wildcard_may_be(depth, l) => {}
                (Some(Level::Lit(a)), Some(Level::Lit(b))) if a == b => {}
                _ => return false,
            }
        }
        unreachable!("the loop returns at the end of the shorter list")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> Resolved {
        Pattern::parse(text)
            .expect("valid")
            .resolve(Some("alice"), "dev-1")
            .expect("resolvable")
    }

    #[test]
    fn parse_rejects_partial_levels() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("a/#/b"), Err(PatternError::HashNotLast));
        for bad in ["a+", "a/b#", "x%u", "%cy/z", "a/%u%c"] {
            assert!(
                matches!(Pattern::parse(bad), Err(PatternError::NotWholeLevel(_))),
                "{bad}"
            );
        }
        assert!(Pattern::parse("a/\0").is_err());
        assert!(Pattern::parse("#").is_ok());
        assert!(Pattern::parse("a//%u/+/%c/#").is_ok());
    }

    #[test]
    fn matches_like_mqtt() {
        assert!(r("a/+/c").matches("a/b/c"));
        assert!(!r("a/+/c").matches("a/b/d"));
        assert!(!r("a/+").matches("a/b/c"));
        assert!(r("a/#").matches("a"));
        assert!(r("a/#").matches("a/b/c"));
        assert!(!r("a/#").matches("ab"));
        assert!(r("+/+").matches("/x"), "empty levels are levels");
        assert!(r("#").matches("anything/at/all"));
        // `$` topics are not matched by a wildcard at level 0.
        assert!(!r("#").matches("$SYS/uptime"));
        assert!(!r("+/uptime").matches("$SYS/uptime"));
        assert!(r("$SYS/#").matches("$SYS/uptime"));
        assert!(r("a/%u/%c").matches("a/alice/dev-1"));
        assert!(!r("a/%u").matches("a/bob"));
    }

    #[test]
    fn covers_is_every_topic_of_the_filter() {
        let f = Resolved::filter;
        assert!(r("#").covers(&f("a/+/c")));
        assert!(r("a/#").covers(&f("a")));
        assert!(r("a/#").covers(&f("a/#")));
        assert!(r("a/+").covers(&f("a/b")));
        assert!(r("a/+").covers(&f("a/+")));
        assert!(!r("a/+").covers(&f("a/#")));
        assert!(!r("a/b").covers(&f("a/+")));
        assert!(!r("a/+/c").covers(&f("a/+")));
        assert!(!r("a/+").covers(&f("a/b/c")));
        // Level-0 wildcards never cover `$` filters.
        assert!(!r("#").covers(&f("$SYS/#")));
        assert!(!r("+/x").covers(&f("$SYS/x")));
        assert!(
            r("#").covers(&f("#")),
            "`#` filters match no `$` topic either"
        );
        assert!(r("$SYS/#").covers(&f("$SYS/+/x")));
    }

    #[test]
    fn overlaps_is_some_common_topic() {
        let f = Resolved::filter;
        assert!(r("secret/#").overlaps(&f("#")));
        assert!(r("a/b").overlaps(&f("a/+")));
        assert!(r("a/+").overlaps(&f("+/b")));
        assert!(r("a/#").overlaps(&f("a")));
        assert!(r("a").overlaps(&f("a/#")));
        assert!(!r("a/b").overlaps(&f("a/c")));
        assert!(!r("a/b").overlaps(&f("a/b/c")));
        assert!(!r("a/+").overlaps(&f("a")));
        assert!(!r("$SYS/#").overlaps(&f("#")));
        assert!(!r("#").overlaps(&f("$SYS/x")));
        assert!(!r("+/x").overlaps(&f("$SYS/+")));
        assert!(r("$SYS/#").overlaps(&f("$SYS/+")));
    }

    #[test]
    fn substituted_values_never_widen() {
        let p = Pattern::parse("users/%u/#").expect("valid");
        assert_eq!(p.resolve(None, "c"), Err(Unusable::Absent));
        for bad in ["", "+", "#", "a/b", "x#"] {
            assert_eq!(p.resolve(Some(bad), "c"), Err(Unusable::Unsafe), "{bad:?}");
        }
        let c = Pattern::parse("dev/%c").expect("valid");
        assert_eq!(c.resolve(None, "a/b"), Err(Unusable::Unsafe));
        let ok = c.resolve(None, "plus+").err();
        assert_eq!(ok, Some(Unusable::Unsafe));
        assert!(c.resolve(None, "d-1").expect("ok").matches("dev/d-1"));
    }

    /// `covers` and `overlaps` agree with `matches` over a small universe of topics.
    #[test]
    fn relations_agree_with_matching() {
        let words = ["a", "b", "$s", ""];
        let mut topics = Vec::new();
        for x in words {
            topics.push(x.to_string());
            for y in words {
                topics.push(format!("{x}/{y}"));
                for z in ["a", "b"] {
                    topics.push(format!("{x}/{y}/{z}"));
                }
            }
        }
        let shapes = [
            "#", "+", "a", "$s", "a/#", "+/#", "+/+", "a/+", "+/a", "$s/#", "$s/+", "a/b", "a/b/#",
            "+/+/a", "a/+/#", "/#", "+/$s",
        ];
        for p in shapes {
            for fl in shapes {
                let (pat, filter) = (r(p), Resolved::filter(fl));
                let of_filter: Vec<&String> = topics.iter().filter(|t| filter.matches(t)).collect();
                let covered = of_filter.iter().all(|t| pat.matches(t));
                let shared = of_filter.iter().any(|t| pat.matches(t));
                assert_eq!(pat.covers(&filter), covered, "covers({p}, {fl})");
                assert_eq!(pat.overlaps(&filter), shared, "overlaps({p}, {fl})");
            }
        }
    }
}
