//! MQTT topic names and filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7): validation and matching.
//!
//! - `+` matches exactly one level, which may be empty; `#` matches the rest, including the parent
//!   level itself (`a/#` matches `a`).
//! - A topic whose first level starts with `$` is not matched by a filter whose first level is a
//!   wildcard (`#` or `+/…` never match `$SYS/…`).
//! - Levels are separated by `/`; empty levels are levels (`a//b` has three).

use thiserror::Error;

/// Why a topic filter is not valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("topic filter is empty")]
    Empty,
    #[error("topic filter {0:?}: '#' must be the last level and stand alone in it")]
    MisplacedHash(String),
    #[error("topic filter {0:?}: '+' must stand alone in its level")]
    MisplacedPlus(String),
    #[error("topic filter {0:?} contains a NUL character")]
    Nul(String),
    #[error("topic filter is {0} bytes; MQTT allows at most 65535")]
    TooLong(usize),
}

/// The longest topic name or filter MQTT allows, in bytes of UTF-8 (a two-byte length prefix).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Why a topic name (what a message is published to) is not valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopicNameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name {0:?} contains a wildcard ('+' or '#'), which only filters may")]
    Wildcard(String),
    #[error("topic name contains a NUL character")]
    Nul,
    #[error("topic name is {0} bytes; MQTT allows at most 65535")]
    TooLong(usize),
}

/// Checks a topic name by the MQTT rules (MQTT 5 §4.7.3, §1.5.4): not empty, no wildcard
/// characters, no NUL, at most 65,535 bytes. (A Rust `str` is valid UTF-8 already.)
pub fn validate_name(topic: &str) -> Result<(), TopicNameError> {
    if topic.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicNameError::TooLong(topic.len()));
    }
    if topic.contains('\0') {
        return Err(TopicNameError::Nul);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicNameError::Wildcard(topic.to_string()));
    }
    Ok(())
}

/// A validated MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Validates `filter` by the MQTT rules.
    pub fn new(filter: &str) -> Result<Self, FilterError> {
        if filter.is_empty() {
            return Err(FilterError::Empty);
        }
        if filter.contains('\0') {
            return Err(FilterError::Nul(filter.to_string()));
        }
        if filter.len() > MAX_TOPIC_BYTES {
            return Err(FilterError::TooLong(filter.len()));
        }
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
                return Err(FilterError::MisplacedHash(filter.to_string()));
            }
            if level.contains('+') && *level != "+" {
                return Err(FilterError::MisplacedPlus(filter.to_string()));
            }
        }
        Ok(TopicFilter(filter.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the filter has a wildcard level.
    pub fn has_wildcard(&self) -> bool {
        self.0.split('/').any(|l| l == "+" || l == "#")
    }

    /// Whether `topic` (a topic name, taken literally) matches this filter.
    pub fn matches(&self, topic: &str) -> bool {
        matches(&self.0, topic)
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether the topic name `topic` matches the (valid) filter `filter`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    let mut first = true;
    loop {
        match (f.next(), t.next()) {
            (Some("#"), level) => {
                return !(first && level.is_some_and(|l| l.starts_with('$')));
            }
            (Some("+"), Some(level)) => {
                if first && level.starts_with('$') {
                    return false;
                }
            }
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("#", "", true),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("+/+", "/", true),
            ("+", "", true),
            ("+", "/a", false),
            ("/+", "/a", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a/b", "a/b/", false),
            ("a/b/", "a/b/", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/#", "sport", true),
            ("+/tennis/#", "sport/tennis/player1", true),
            // $-topics are not matched by a leading wildcard.
            ("#", "$SYS/broker", false),
            ("+/broker", "$SYS/broker", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/broker", true),
            ("$SYS/+", "$SYS/broker", true),
            ("a/#", "a/$b", true),
            ("a/+", "a/$b", true),
            // Case-sensitive.
            ("A", "a", false),
        ];
        for (filter, topic, expect) in cases {
            TopicFilter::new(filter).unwrap();
            assert_eq!(
                matches(filter, topic),
                *expect,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn validation_table() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "/",
            "+/+",
            "a//b",
            "$SYS/#",
            "$share/g/a/+",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(TopicFilter::new(""), Err(FilterError::Empty));
        for bad in ["a/#/b", "a#", "#/a", "a/b#"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(FilterError::MisplacedHash(bad.into()))
            );
        }
        for bad in ["a+", "a/+b", "+a/b"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(FilterError::MisplacedPlus(bad.into()))
            );
        }
        assert!(matches!(TopicFilter::new("a\0b"), Err(FilterError::Nul(_))));
    }

    #[test]
    fn wildcard_detection() {
        assert!(TopicFilter::new("a/+").unwrap().has_wildcard());
        assert!(!TopicFilter::new("a/b").unwrap().has_wildcard());
    }
}
