//! A topic index: the set of topic names that have items in a table (retained messages, offline
//! message sets), as a tree of topic levels, so a wildcard filter is answered by walking the
//! levels it names instead of scanning the table.
//!
//! Matching follows MQTT (and [`crate::topic::matches`]): `+` is one level, `#` the parent level
//! and everything below it, and a filter starting with a wildcard does not match topics
//! starting with `$` (`#` does not return `$SYS/...`).

use std::collections::HashMap;

/// One topic level and what lies below it.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// A topic ends at this level.
    present: bool,
}

impl Node {
    /// Every topic at or below this node (never the root), `path` being this node's topic.
    fn collect(&self, path: &mut String, out: &mut Vec<String>) {
        if self.present {
            out.push(path.clone());
        }
        for (level, child) in &self.children {
            let len = path.len();
            push_level(path, level, false);
            child.collect(path, out);
            path.truncate(len);
        }
    }
}

/// Appends one level to a topic under construction. `first` says the path is still at the root
/// (no separator before the first level, even when that level is empty).
fn push_level(path: &mut String, level: &str, first: bool) {
    if !first {
        path.push('/');
    }
    path.push_str(level);
}

/// The index. Not synchronized: [`crate::lookup::ReadState`] keeps it behind a lock.
#[derive(Debug, Default)]
pub struct TopicIndex {
    root: Node,
    len: usize,
}

impl TopicIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `topic`; false if it was there.
    pub fn insert(&mut self, topic: &str) -> bool {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let added = !node.present;
        node.present = true;
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes `topic`, pruning levels left empty; false if it was not there.
    pub fn remove(&mut self, topic: &str) -> bool {
        fn go<'a>(node: &mut Node, mut levels: impl Iterator<Item = &'a str>) -> bool {
            match levels.next() {
                None => std::mem::replace(&mut node.present, false),
                Some(level) => {
                    let Some(child) = node.children.get_mut(level) else {
                        return false;
                    };
                    let removed = go(child, levels);
                    if removed && !child.present && child.children.is_empty() {
                        node.children.remove(level);
                    }
                    removed
                }
            }
        }
        let removed = go(&mut self.root, topic.split('/'));
        if removed {
            self.len -= 1;
        }
        removed
    }

    pub fn contains(&self, topic: &str) -> bool {
        let mut node = &self.root;
        for level in topic.split('/') {
            match node.children.get(level) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.present
    }

    /// Topics in the index.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The topics matching `filter` (a valid MQTT filter), sorted.
    pub fn matching(&self, filter: &str) -> Vec<String> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        let mut path = String::new();
        walk(&self.root, &levels, 0, &mut path, &mut out);
        out.sort_unstable();
        out
    }
}

/// Matches `levels[i..]` below `node`, whose topic is `path` (the root when `i == 0`).
fn walk(node: &Node, levels: &[&str], i: usize, path: &mut String, out: &mut Vec<String>) {
    let root = i == 0;
    match levels.get(i) {
        None => {
            if node.present {
                out.push(path.clone());
            }
        }
        Some(&"#") => {
            // The parent level itself ("a/#" matches "a"), then everything below.
            if !root && node.present {
                out.push(path.clone());
            }
            for (level, child) in &node.children {
                if root && level.starts_with('$') {
                    continue;
                }
                let len = path.len();
                push_level(path, level, root);
                child.collect(path, out);
                path.truncate(len);
            }
        }
        Some(&"+") => {
            for (level, child) in &node.children {
                if root && level.starts_with('$') {
                    continue;
                }
                let len = path.len();
                push_level(path, level, root);
                walk(child, levels, i + 1, path, out);
                path.truncate(len);
            }
        }
        Some(level) => {
            if let Some(child) = node.children.get(*level) {
                let len = path.len();
                push_level(path, level, root);
                walk(child, levels, i + 1, path, out);
                path.truncate(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use proptest::prelude::*;

    fn index(topics: &[&str]) -> TopicIndex {
        let mut ix = TopicIndex::new();
        for t in topics {
            ix.insert(t);
        }
        ix
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let ix = index(&[
            "a",
            "a/b",
            "a/c",
            "a/b/c",
            "a/",
            "$SYS/broker",
            "$SYS/x/y",
            "b/$x",
            "/lead",
        ]);
        assert_eq!(ix.matching("a/+"), ["a/", "a/b", "a/c"]);
        assert_eq!(ix.matching("a/#"), ["a", "a/", "a/b", "a/b/c", "a/c"]);
        assert_eq!(
            ix.matching("#"),
            ["/lead", "a", "a/", "a/b", "a/b/c", "a/c", "b/$x"]
        );
        assert_eq!(ix.matching("+/+"), ["/lead", "a/", "a/b", "a/c", "b/$x"]);
        assert_eq!(ix.matching("$SYS/#"), ["$SYS/broker", "$SYS/x/y"]);
        assert_eq!(ix.matching("+/broker"), Vec::<String>::new());
        assert_eq!(ix.matching("a/b/c"), ["a/b/c"]);
        assert_eq!(ix.matching("a/b/d"), Vec::<String>::new());
        assert_eq!(ix.len(), 9);
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut ix = index(&["a/b/c", "a/b"]);
        assert!(ix.remove("a/b/c"));
        assert!(!ix.remove("a/b/c"));
        assert!(!ix.remove("a"));
        assert_eq!(ix.matching("#"), ["a/b"]);
        assert!(ix.remove("a/b"));
        assert!(ix.is_empty());
        assert!(ix.root.children.is_empty());
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("a".to_string()),
            Just("b".to_string()),
            Just("$s".to_string()),
        ]
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(
                prop_oneof![level(), Just("+".to_string()), Just("+".to_string())],
                0..4,
            ),
            any::<bool>(),
        )
            .prop_filter_map("a filter has at least one level", |(mut l, hash)| {
                if hash {
                    l.push("#".into());
                }
                (!l.is_empty()).then(|| l.join("/"))
            })
    }

    proptest! {
        /// The index answers exactly what filtering every topic with `topic::matches` answers.
        #[test]
        fn index_agrees_with_the_matcher(
            topics in prop::collection::vec(topic_name(), 0..30),
            removed in prop::collection::vec(topic_name(), 0..10),
            filter in filter(),
        ) {
            let mut ix = TopicIndex::new();
            let mut set = std::collections::BTreeSet::new();
            for t in &topics {
                prop_assert_eq!(ix.insert(t), set.insert(t.clone()));
            }
            for t in &removed {
                prop_assert_eq!(ix.remove(t), set.remove(t));
            }
            prop_assert_eq!(ix.len(), set.len());
            let expected: Vec<String> =
                set.iter().filter(|t| topic::matches(&filter, t)).cloned().collect();
            prop_assert_eq!(ix.matching(&filter), expected);
        }
    }
}
