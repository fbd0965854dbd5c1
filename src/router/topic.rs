//! Topic names, topic filters and the matching rule (MQTT 5.0 section 4.7).

use std::fmt;

/// Limits on topic names and filters, from configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicLimits {
    /// Longest accepted topic name or filter, in UTF-8 bytes (MQTT caps it at 65535).
    pub topic_bytes_max: usize,
    /// Most `/`-separated levels in a topic name or filter.
    pub topic_levels_max: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self {
            topic_bytes_max: 65_535,
            topic_levels_max: 128,
        }
    }
}

/// Why a topic name (PUBLISH) is invalid. Maps to reason code 0x90.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicError {
    /// A topic name must be at least one character long.
    Empty,
    /// Longer than `topic_bytes_max`.
    TooLong {
        /// Length of the name, in bytes.
        bytes: usize,
        /// The configured limit, in bytes.
        bytes_max: usize,
    },
    /// More levels than `topic_levels_max`.
    TooManyLevels {
        /// The configured limit.
        levels_max: usize,
    },
    /// Contains `+` or `#`, which only filters may hold.
    Wildcard,
    /// Contains U+0000.
    NullChar,
}

impl TopicError {
    /// The MQTT 5 reason code: 0x90 Topic Name invalid.
    pub fn reason_code(&self) -> u8 {
        0x90
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "topic name is empty"),
            Self::TooLong { bytes, bytes_max } => {
                write!(f, "topic name is {bytes} bytes, limit {bytes_max}")
            }
            Self::TooManyLevels { levels_max } => {
                write!(f, "topic name has more than {levels_max} levels")
            }
            Self::Wildcard => write!(f, "topic name contains a wildcard ('+' or '#')"),
            Self::NullChar => write!(f, "topic name contains U+0000"),
        }
    }
}

impl std::error::Error for TopicError {}

/// Why a topic filter (SUBSCRIBE/UNSUBSCRIBE) is invalid. Maps to reason code 0x8F.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterError {
    /// A filter must be at least one character long.
    Empty,
    /// Longer than `topic_bytes_max`.
    TooLong {
        /// Length of the filter, in bytes.
        bytes: usize,
        /// The configured limit, in bytes.
        bytes_max: usize,
    },
    /// More levels than `topic_levels_max`.
    TooManyLevels {
        /// The configured limit.
        levels_max: usize,
    },
    /// Contains U+0000.
    NullChar,
    /// `+` shares its level with other characters (`a+/b`).
    PlusNotWholeLevel,
    /// `#` shares its level with other characters (`a#`).
    HashNotWholeLevel,
    /// `#` is followed by more levels (`a/#/b`).
    HashNotLast,
    /// `$share//f`: the share name is empty.
    ShareGroupEmpty,
    /// The share name contains `+` or `#`.
    ShareGroupInvalid,
    /// `$share/g` or `$share/g/`: no filter after the share name.
    ShareFilterEmpty,
}

impl FilterError {
    /// The MQTT 5 reason code: 0x8F Topic Filter invalid.
    pub fn reason_code(&self) -> u8 {
        0x8F
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "topic filter is empty"),
            Self::TooLong { bytes, bytes_max } => {
                write!(f, "topic filter is {bytes} bytes, limit {bytes_max}")
            }
            Self::TooManyLevels { levels_max } => {
                write!(f, "topic filter has more than {levels_max} levels")
            }
            Self::NullChar => write!(f, "topic filter contains U+0000"),
            Self::PlusNotWholeLevel => write!(f, "'+' must occupy a whole level"),
            Self::HashNotWholeLevel => write!(f, "'#' must occupy a whole level"),
            Self::HashNotLast => write!(f, "'#' must be the last level"),
            Self::ShareGroupEmpty => write!(f, "shared subscription has an empty share name"),
            Self::ShareGroupInvalid => write!(f, "share name contains '+' or '#'"),
            Self::ShareFilterEmpty => write!(f, "shared subscription has no topic filter"),
        }
    }
}

impl std::error::Error for FilterError {}

/// A validated filter, split into its share group (for `$share/<group>/<filter>`) and the plain filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// The share name of a shared subscription, `None` for an ordinary one.
    pub share_group: Option<&'a str>,
    /// The plain topic filter to match topics against.
    pub filter: &'a str,
}

const SHARE_PREFIX: &str = "$share/";

/// Checks a topic name from PUBLISH: non-empty, no wildcards, no U+0000, within limits.
pub fn validate_topic_name(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > limits.topic_bytes_max {
        return Err(TopicError::TooLong {
            bytes: topic.len(),
            bytes_max: limits.topic_bytes_max,
        });
    }
    let mut levels = 1usize;
    for byte in topic.bytes() {
        match byte {
            b'+' | b'#' => return Err(TopicError::Wildcard),
            0 => return Err(TopicError::NullChar),
            b'/' => levels += 1,
            _ => {}
        }
    }
    if levels > limits.topic_levels_max {
        return Err(TopicError::TooManyLevels {
            levels_max: limits.topic_levels_max,
        });
    }
    Ok(())
}

/// Checks a topic filter from SUBSCRIBE/UNSUBSCRIBE and splits off a `$share/<group>/` prefix.
///
/// The byte limit applies to the whole string, the level limit to the plain filter.
/// A filter that is exactly `$share` (no slash) is an ordinary filter.
pub fn parse_filter<'a>(
    filter: &'a str,
    limits: &TopicLimits,
) -> Result<ParsedFilter<'a>, FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > limits.topic_bytes_max {
        return Err(FilterError::TooLong {
            bytes: filter.len(),
            bytes_max: limits.topic_bytes_max,
        });
    }
    if filter.as_bytes().contains(&0) {
        return Err(FilterError::NullChar);
    }
    let Some(shared) = filter.strip_prefix(SHARE_PREFIX) else {
        validate_plain_filter(filter, limits)?;
        return Ok(ParsedFilter {
            share_group: None,
            filter,
        });
    };
    let (group, plain) = match shared.find('/') {
        Some(i) => (&shared[..i], &shared[i + 1..]),
        None => (shared, ""),
    };
    if group.is_empty() {
        return Err(FilterError::ShareGroupEmpty);
    }
    if group.contains(['+', '#']) {
        return Err(FilterError::ShareGroupInvalid);
    }
    if plain.is_empty() {
        return Err(FilterError::ShareFilterEmpty);
    }
    validate_plain_filter(plain, limits)?;
    Ok(ParsedFilter {
        share_group: Some(group),
        filter: plain,
    })
}

/// Wildcard placement and level count of a non-empty filter without a share prefix.
fn validate_plain_filter(filter: &str, limits: &TopicLimits) -> Result<(), FilterError> {
    let mut levels = filter.split('/').peekable();
    let mut count = 0usize;
    while let Some(level) = levels.next() {
        count += 1;
        if level.contains('+') && level != "+" {
            return Err(FilterError::PlusNotWholeLevel);
        }
        if level.contains('#') {
            if level != "#" {
                return Err(FilterError::HashNotWholeLevel);
            }
            if levels.peek().is_some() {
                return Err(FilterError::HashNotLast);
            }
        }
    }
    if count > limits.topic_levels_max {
        return Err(FilterError::TooManyLevels {
            levels_max: limits.topic_levels_max,
        });
    }
    Ok(())
}

/// Whether the plain (already validated) `filter` matches the topic name `topic`.
///
/// `+` matches exactly one level, `#` the parent level and any number of child
/// levels, empty levels are real levels, and a topic starting with `$` is not
/// matched by a filter starting with a wildcard (MQTT 5.0 section 4.7.2).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TopicLimits = TopicLimits {
        topic_bytes_max: 64,
        topic_levels_max: 4,
    };

    fn plain(filter: &str) -> Result<ParsedFilter<'_>, FilterError> {
        parse_filter(filter, &LIMITS)
    }

    #[test]
    fn topic_names_valid() {
        for topic in [
            "a",
            "/",
            "a/b",
            "/finance",
            "a//b",
            "$SYS/x",
            "sport/tennis",
            " ",
        ] {
            assert_eq!(validate_topic_name(topic, &LIMITS), Ok(()), "{topic:?}");
        }
    }

    #[test]
    fn topic_names_invalid() {
        let cases = [
            ("", TopicError::Empty),
            ("a/+", TopicError::Wildcard),
            ("a#", TopicError::Wildcard),
            ("#", TopicError::Wildcard),
            ("a\0b", TopicError::NullChar),
            ("a/b/c/d/e", TopicError::TooManyLevels { levels_max: 4 }),
            ("////", TopicError::TooManyLevels { levels_max: 4 }),
        ];
        for (topic, err) in cases {
            assert_eq!(
                validate_topic_name(topic, &LIMITS),
                Err(err.clone()),
                "{topic:?}"
            );
            assert_eq!(err.reason_code(), 0x90);
        }
        let long = "x".repeat(65);
        assert_eq!(
            validate_topic_name(&long, &LIMITS),
            Err(TopicError::TooLong {
                bytes: 65,
                bytes_max: 64
            })
        );
        assert_eq!(validate_topic_name("a/b/c/d", &LIMITS), Ok(()));
        assert_eq!(validate_topic_name(&"x".repeat(64), &LIMITS), Ok(()));
    }

    #[test]
    fn filters_valid() {
        for filter in [
            "#",
            "+",
            "+/+",
            "/+",
            "sport/#",
            "sport/tennis/#",
            "+/tennis/#",
            "sport/+/player1",
            "a//b",
            "/",
            "$SYS/#",
            "$share",
        ] {
            let parsed = plain(filter).unwrap_or_else(|e| panic!("{filter:?}: {e}"));
            assert_eq!(
                parsed,
                ParsedFilter {
                    share_group: None,
                    filter
                }
            );
        }
    }

    #[test]
    fn filters_invalid() {
        let cases = [
            ("", FilterError::Empty),
            ("sport+", FilterError::PlusNotWholeLevel),
            ("sport/+tennis", FilterError::PlusNotWholeLevel),
            ("++", FilterError::PlusNotWholeLevel),
            ("sport/tennis#", FilterError::HashNotWholeLevel),
            ("##", FilterError::HashNotWholeLevel),
            ("sport/tennis/#/ranking", FilterError::HashNotLast),
            ("#/", FilterError::HashNotLast),
            ("a\0", FilterError::NullChar),
            ("a/b/c/d/#", FilterError::TooManyLevels { levels_max: 4 }),
        ];
        for (filter, err) in cases {
            assert_eq!(plain(filter), Err(err.clone()), "{filter:?}");
            assert_eq!(err.reason_code(), 0x8F);
        }
        assert!(matches!(
            plain(&"x".repeat(65)),
            Err(FilterError::TooLong { .. })
        ));
    }

    #[test]
    fn shared_filters() {
        assert_eq!(
            plain("$share/g1/sport/#"),
            Ok(ParsedFilter {
                share_group: Some("g1"),
                filter: "sport/#"
            })
        );
        assert_eq!(
            plain("$share/g/+"),
            Ok(ParsedFilter {
                share_group: Some("g"),
                filter: "+"
            })
        );
        assert_eq!(
            plain("$share/g//"),
            Ok(ParsedFilter {
                share_group: Some("g"),
                filter: "/"
            })
        );
        assert_eq!(plain("$share//a"), Err(FilterError::ShareGroupEmpty));
        assert_eq!(plain("$share/"), Err(FilterError::ShareGroupEmpty));
        assert_eq!(plain("$share/g"), Err(FilterError::ShareFilterEmpty));
        assert_eq!(plain("$share/g/"), Err(FilterError::ShareFilterEmpty));
        assert_eq!(plain("$share/g+/a"), Err(FilterError::ShareGroupInvalid));
        assert_eq!(plain("$share/#/a"), Err(FilterError::ShareGroupInvalid));
        assert_eq!(plain("$share/g/a#"), Err(FilterError::HashNotWholeLevel));
        assert_eq!(plain("$share/g/a/#/b"), Err(FilterError::HashNotLast));
        // The level limit counts the plain filter's levels, not the prefix.
        assert!(plain("$share/g/a/b/c/d").is_ok());
        assert!(plain("$share/g/a/b/c/d/e").is_err());
    }

    #[test]
    fn spec_multi_level_wildcard() {
        // MQTT 5.0 section 4.7.1.2.
        let f = "sport/tennis/player1/#";
        assert!(filter_matches(f, "sport/tennis/player1"));
        assert!(filter_matches(f, "sport/tennis/player1/ranking"));
        assert!(filter_matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!filter_matches(f, "sport/tennis/player2"));
        assert!(!filter_matches(f, "sport/tennis"));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("#", "sport/tennis"));
        assert!(filter_matches("#", "/"));
    }

    #[test]
    fn spec_single_level_wildcard() {
        // MQTT 5.0 section 4.7.1.3.
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!filter_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("+/tennis/#", "sport/tennis/player1"));
        assert!(filter_matches("sport/+/player1", "sport/tennis/player1"));
    }

    #[test]
    fn spec_dollar_topics() {
        // MQTT 5.0 section 4.7.2.
        assert!(!filter_matches("#", "$SYS/monitor/Clients"));
        assert!(!filter_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!filter_matches("+", "$SYS"));
        assert!(filter_matches("$SYS", "$SYS"));
        // Only a leading '$' is special.
        assert!(filter_matches("a/+", "a/$x"));
        assert!(filter_matches("a/#", "a/$x/b"));
    }

    #[test]
    fn exact_and_empty_levels() {
        assert!(filter_matches("a/b", "a/b"));
        assert!(!filter_matches("a/b", "a/b/"));
        assert!(!filter_matches("a/b", "a"));
        assert!(filter_matches("a//b", "a//b"));
        assert!(!filter_matches("a//b", "a/b"));
        assert!(filter_matches("a/+/b", "a//b"));
        assert!(filter_matches("/", "/"));
        assert!(filter_matches("+/+", "/"));
        assert!(!filter_matches("+", "/"));
        assert!(filter_matches("a/#", "a/"));
        assert!(!filter_matches("A", "a"));
    }
}
