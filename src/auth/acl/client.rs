//! One connection's view of the rules: resolved for its username and client id, the
//! classification of its subscriptions, and a small cache of topic verdicts.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::pattern::{Resolved, Unusable};
use super::{Access, RuleGroup};

/// Topics whose verdicts a connection remembers.
pub const CACHE_SLOTS: usize = 32;
/// Longer topics are decided without the cache, so a connection's cache holds at most
/// `CACHE_SLOTS * CACHE_TOPIC_BYTES_MAX` bytes of topics.
pub const CACHE_TOPIC_BYTES_MAX: usize = 256;

/// What a filter reaches, decided at SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Every topic it matches may be received: no check per delivery.
    Whole,
    /// Some topics it matches may be received: each delivery is checked.
    Partial,
    /// None may (or a `deny` rule covers it): the subscription is refused.
    Denied,
}

const UNKNOWN: u8 = 0;
const NO: u8 = 1;
const YES: u8 = 2;

#[derive(Debug, Default)]
struct Slot {
    hash: u64,
    topic: String,
    read: u8,
    write: u8,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Read,
    Write,
}

/// The rules that apply to one client: shared groups, plus its own copies of the rules
/// it fills `%u` / `%c` into.
#[derive(Debug)]
struct Rules {
    groups: Vec<Arc<RuleGroup>>,
    substituted: Vec<(Resolved, Access)>,
    /// A `deny` rule could not be resolved safely: everything is denied.
    deny_all: bool,
    /// Some `deny` rule applies to this client.
    has_deny: bool,
    default_allow: bool,
}

impl Rules {
    /// Every applicable rule, resolved.
    fn each(&self) -> impl Iterator<Item = (&Resolved, Access)> {
        let shared = self.groups.iter().flat_map(|g| {
            g.rules
                .iter()
                .filter_map(|r| Some((r.fixed.as_ref()?, r.access)))
        });
        shared.chain(self.substituted.iter().map(|(p, a)| (p, *a)))
    }

    fn decide(&self, topic: &str, action: Action) -> bool {
        if self.deny_all {
            return false;
        }
        let mut granted = false;
        for (pattern, access) in self.each() {
            if access == Access::Deny {
                if pattern.matches(topic) {
                    return false;
                }
            } else if !granted && action.granted_by(access) && pattern.matches(topic) {
                granted = true;
            }
        }
        granted || self.default_allow
    }

    /// Whether no rule can refuse anything: checks are then skipped.
    fn open(&self) -> bool {
        !self.deny_all && !self.has_deny && self.default_allow
    }
}

impl Action {
    fn granted_by(self, access: Access) -> bool {
        match self {
            Action::Read => matches!(access, Access::Read | Access::ReadWrite | Access::Subscribe),
            Action::Write => matches!(access, Access::Write | Access::ReadWrite),
        }
    }
}

/// A connection's authorization state. Built at CONNECT from the [`super::Acl`].
#[derive(Debug)]
pub struct ClientAcl {
    rules: Rules,
    /// Subscriptions (full filter, `$share/...` included) that are not wholly readable.
    partial: HashSet<Box<str>>,
    /// Until the session's existing subscriptions are classified, every delivery is
    /// checked.
    settling: bool,
    cache: Option<Box<[Slot; CACHE_SLOTS]>>,
    hasher: std::collections::hash_map::RandomState,
}

impl ClientAcl {
    pub(super) fn new(
        groups: Vec<Arc<RuleGroup>>,
        username: Option<&str>,
        client_id: &str,
        default_allow: bool,
    ) -> Self {
        let mut substituted = Vec::new();
        let mut deny_all = false;
        let placeholders = groups
            .iter()
            .flat_map(|g| g.rules.iter())
            .filter(|r| r.fixed.is_none());
        for rule in placeholders {
            match rule.pattern.resolve(username, client_id) {
                Ok(pattern) => substituted.push((pattern, rule.access)),
                // A deny that cannot be applied safely denies everything; a grant that
                // cannot is dropped. Either way the value never widens access.
                Err(Unusable::Unsafe) if rule.access == Access::Deny => deny_all = true,
                Err(_) => {}
            }
        }
        let has_deny = groups.iter().any(|g| g.fixed_deny)
            || substituted
                .iter()
                .any(|(_, access)| *access == Access::Deny);
        ClientAcl {
            rules: Rules {
                groups,
                substituted,
                deny_all,
                has_deny,
                default_allow,
            },
            partial: HashSet::new(),
            settling: true,
            cache: None,
            hasher: Default::default(),
        }
    }

    /// Whether the client may publish to `topic` (also asked of its will).
    pub fn may_publish(&mut self, topic: &str) -> bool {
        self.rules.open() || self.cached(topic, Action::Write)
    }

    /// Whether deliveries to this connection must be checked one by one (some
    /// subscription is only partly readable).
    pub fn checks_deliveries(&self) -> bool {
        !self.rules.open() && (self.settling || !self.partial.is_empty())
    }

    /// Whether the client may receive a message on `topic`.
    pub fn may_receive(&mut self, topic: &str) -> bool {
        self.rules.open() || self.cached(topic, Action::Read)
    }

    /// Classifies a filter of SUBSCRIBE (full, `$share/<group>/` included) and
    /// remembers it if deliveries through it need checks.
    pub fn subscribe(&mut self, filter: &str) -> Coverage {
        let coverage = self.classify(plain_filter(filter));
        if coverage == Coverage::Whole {
            self.partial.remove(filter);
        } else if coverage == Coverage::Partial {
            self.partial.insert(filter.into());
        }
        coverage
    }

    /// A subscription ended.
    pub fn unsubscribe(&mut self, filter: &str) {
        self.partial.remove(filter);
    }

    /// Classifies the subscriptions a resumed session already holds (made under other
    /// rules or by another client): any not wholly readable is checked per delivery,
    /// a denied one included (its deliveries are then all refused).
    pub fn settle<'a>(&mut self, filters: impl Iterator<Item = &'a str>) {
        if !self.rules.open() {
            for filter in filters {
                if self.classify(plain_filter(filter)) != Coverage::Whole {
                    self.partial.insert(filter.into());
                }
            }
        }
        self.settling = false;
    }

    /// What the plain (validated) `filter` reaches.
    pub fn classify(&self, filter: &str) -> Coverage {
        let rules = &self.rules;
        if rules.open() {
            return Coverage::Whole;
        }
        if rules.deny_all {
            return Coverage::Denied;
        }
        let filter = Resolved::filter(filter);
        let (mut whole, mut some, mut partly_denied) =
            (rules.default_allow, rules.default_allow, false);
        for (pattern, access) in rules.each() {
            match access {
                Access::Deny if pattern.covers(&filter) => return Coverage::Denied,
                Access::Deny => partly_denied |= pattern.overlaps(&filter),
                Access::Write => {}
                // `subscribe` reaches only filters within it; `read` any it overlaps.
                _ if pattern.covers(&filter) => (whole, some) = (true, true),
                Access::Read | Access::ReadWrite => some |= pattern.overlaps(&filter),
                Access::Subscribe => {}
            }
        }
        if whole && !partly_denied {
            Coverage::Whole
        } else if some {
            Coverage::Partial
        } else {
            Coverage::Denied
        }
    }

    fn cached(&mut self, topic: &str, action: Action) -> bool {
        if topic.len() > CACHE_TOPIC_BYTES_MAX {
            return self.rules.decide(topic, action);
        }
        let hash = self.hasher.hash_one(topic);
        let slots = self.cache.get_or_insert_with(Default::default);
        let slot = &mut slots[hash as usize % CACHE_SLOTS];
        if slot.hash != hash || slot.topic != topic {
            slot.hash = hash;
            // Reuses the slot's buffer: no allocation once it is as long as the topic.
            slot.topic.clear();
            slot.topic.push_str(topic);
            slot.read = UNKNOWN;
            slot.write = UNKNOWN;
        }
        let known = match action {
            Action::Read => &mut slot.read,
            Action::Write => &mut slot.write,
        };
        if *known == UNKNOWN {
            *known = if self.rules.decide(topic, action) {
                YES
            } else {
                NO
            };
        }
        *known == YES
    }
}

/// The plain filter of a full one: `$share/<group>/<filter>` gives `<filter>`.
fn plain_filter(full: &str) -> &str {
    full.strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(full, |(_, plain)| plain)
}
