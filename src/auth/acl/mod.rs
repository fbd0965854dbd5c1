//! Authorization: which topics a client may publish to, subscribe to and receive, and
//! which client ids it may use.
//!
//! # Rules
//! A rule is *who* (one username, one client id, anonymous clients, or every client), a
//! topic *pattern* (a topic filter whose whole levels may be `%u` = the username or
//! `%c` = the client id, as in mosquitto) and an *access*:
//!
//! | access | PUBLISH | SUBSCRIBE | receive |
//! |---|---|---|---|
//! | `read` | – | filters that reach a readable topic | matching topics |
//! | `write` | matching topics | – | – |
//! | `readwrite` | matching topics | as `read` | matching topics |
//! | `subscribe` | – | filters that lie within the pattern | matching topics |
//! | `deny` | never | never (a filter wholly inside it is refused) | never |
//!
//! Rules come from `[[acl]]` tables in the config and from a mosquitto `acl_file`
//! ([`import_mosquitto`]); the order of rules does not matter.
//!
//! # Matching order (the same for every action)
//! 1. The rules that apply to the client are gathered: those for its username (a client
//!    admitted by username and password), those for its client id, those for anonymous
//!    clients (if it presented no credentials), and those for every client. A client
//!    admitted by an API key has no username here.
//! 2. `%u` / `%c` are replaced by the client's values. A value is one literal level: one
//!    that is absent (no username) drops the rule; one that is empty or holds `+`, `#`
//!    or `/` drops a granting rule and turns a `deny` rule into "deny everything"
//!    (mosquitto refuses such clients too): a substituted value can never widen access.
//! 3. If any `deny` rule matches, the action is denied.
//! 4. Else, if any granting rule matches, it is allowed.
//! 5. Else `acl_default` decides (`allow` unless configured, so configs without rules
//!    behave as before; mosquitto's `acl_file` behaves as `deny`).
//!
//! Wildcards follow MQTT: a rule `#` or `+/...` does not reach `$`-topics.
//!
//! # Cost
//! Checks are decided per subscription, not per message. At SUBSCRIBE a filter is
//! classified ([`Coverage`]): wholly readable (granted, never checked again), wholly
//! denied (refused: v5 0x87, 3.1.1 0x80) or partly readable (granted; each topic
//! delivered to the client is then checked). A connection whose every subscription is
//! wholly readable pays one branch per delivery; one with a partly readable filter pays
//! a lookup in a small per-connection cache ([`CACHE_SLOTS`] topics of at most
//! [`CACHE_TOPIC_BYTES_MAX`] bytes, allocated on first use) and a rule scan on a miss.
//! PUBLISH checks use the same cache and are skipped outright when no rule applying to
//! the client can refuse a write. With no rules at all and `acl_default = "allow"` no
//! [`ClientAcl`] exists: the hot path has one `None` test.
//!
//! Deliveries are checked where they leave the session for the wire, so every path
//! (live, retained, shared, queued offline, read back from the log) is covered for the
//! client actually connected. A shared-subscription message refused to the member it
//! was given to is not offered to another member. In-flight QoS 1/2 messages resent
//! after a takeover were checked for the connection they were first sent to.
//!
//! The decision is per connection. A [`ClientAcl`] shares the rule groups that apply to
//! it (every client, anonymous, its username, its client id) with every other connection
//! and copies only the rules it fills `%u` / `%c` into, so 1,000 rules without
//! placeholders cost a connection a few pointers, not a copy each. A live reload
//! (SIGHUP) builds a new [`Acl`], and each connection's `ClientAcl` again from it, its
//! session's subscriptions classified again (see `server::reload`).

mod client;
mod mosquitto;
mod pattern;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use client::{ClientAcl, Coverage, CACHE_SLOTS, CACHE_TOPIC_BYTES_MAX};
pub use mosquitto::{import_mosquitto, ImportError};
pub use pattern::PatternError;

use pattern::{Pattern, Resolved};

/// What a rule grants, or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive matching topics; subscribe to filters reaching them.
    Read,
    /// Publish to matching topics.
    Write,
    /// Both.
    ReadWrite,
    /// Subscribe to filters within the pattern and receive what they match.
    Subscribe,
    /// Neither; wins over every grant.
    Deny,
}

impl Access {
    /// Parses the config spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "read" => Self::Read,
            "write" => Self::Write,
            "readwrite" => Self::ReadWrite,
            "subscribe" => Self::Subscribe,
            "deny" => Self::Deny,
            _ => return None,
        })
    }
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Every client.
    Everyone,
    /// Clients that presented no credentials.
    Anonymous,
    /// The user of this name.
    User(String),
    /// The client of this id.
    ClientId(String),
}

/// One rule as configured, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// Who it applies to.
    pub who: Who,
    /// The topic pattern.
    pub topic: String,
    /// The access (`read`, `write`, `readwrite`, `subscribe`, `deny`).
    pub access: String,
}

/// Which client ids a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIdOwner {
    /// Any (no ownership): a client may take over any session by its id.
    #[default]
    Any,
    /// A user's client id is its username; a client id equal to a configured username
    /// belongs to that user alone.
    Username,
    /// A user's client ids are its username, or its username followed by the separator
    /// and anything; an id belongs to the configured user with the longest such prefix.
    UsernamePrefix,
}

/// The whole authorization setup.
#[derive(Debug, Clone, Default)]
pub struct AclConfig {
    /// The rules, in any order.
    pub rules: Vec<RuleSpec>,
    /// What an action no rule decides gets: `true` = allowed.
    pub default_allow: bool,
    /// Client-id ownership.
    pub client_id_owner: ClientIdOwner,
    /// The separator for [`ClientIdOwner::UsernamePrefix`].
    pub client_id_separator: String,
    /// Every configured username (for ownership).
    pub usernames: Vec<String>,
}

/// A rule that fails validation: which one, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    /// Index of the rule in [`AclConfig::rules`].
    pub index: usize,
    /// `topic`, `access`, or the who field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}: {}: {}", self.index, self.field, self.reason)
    }
}

impl std::error::Error for AclError {}

/// A validated rule.
#[derive(Debug)]
struct Rule {
    pattern: Pattern,
    /// The pattern itself when it names no placeholder: one copy for every connection.
    fixed: Option<Resolved>,
    access: Access,
}

/// The rules for one kind of client (every client, anonymous ones, one user, one client
/// id), shared by every connection they apply to: a connection copies only the rules it
/// fills `%u` / `%c` into.
#[derive(Debug, Default)]
struct RuleGroup {
    rules: Vec<Rule>,
    /// Some rule without placeholders is a `deny` (one with placeholders may drop out
    /// for a client, so the connection decides about those).
    fixed_deny: bool,
}

impl RuleGroup {
    fn new(rules: Vec<Rule>) -> Arc<Self> {
        let fixed_deny = rules
            .iter()
            .any(|r| r.access == Access::Deny && r.fixed.is_some());
        Arc::new(RuleGroup { rules, fixed_deny })
    }
}

/// Validated rules, indexed by who they apply to. Shared read-only by every shard.
#[derive(Debug, Default)]
pub struct Acl {
    default_allow: bool,
    everyone: Arc<RuleGroup>,
    anonymous: Arc<RuleGroup>,
    users: HashMap<String, Arc<RuleGroup>>,
    clients: HashMap<String, Arc<RuleGroup>>,
    client_id_owner: ClientIdOwner,
    separator: String,
    /// Sorted, for ownership look-ups.
    usernames: Vec<String>,
}

/// How a connection authenticated, as far as authorization cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// No credentials.
    Anonymous,
    /// An API key (no username for the rules).
    ApiKey,
    /// A configured user.
    User(&'a str),
}

impl Acl {
    /// Validates `config`; an error names the rule and field.
    pub fn new(config: &AclConfig) -> Result<Self, AclError> {
        let mut acl = Acl {
            default_allow: config.default_allow,
            client_id_owner: config.client_id_owner,
            separator: config.client_id_separator.clone(),
            usernames: config.usernames.clone(),
            ..Acl::default()
        };
        acl.usernames.sort();
        if acl.client_id_owner == ClientIdOwner::UsernamePrefix && acl.separator.is_empty() {
            return Err(AclError {
                index: 0,
                field: "client_id_separator",
                reason: "must not be empty with client_id_owner = \"username_prefix\"".into(),
            });
        }
        let mut everyone = Vec::new();
        let mut anonymous = Vec::new();
        let mut users: HashMap<String, Vec<Rule>> = HashMap::new();
        let mut clients: HashMap<String, Vec<Rule>> = HashMap::new();
        for (index, spec) in config.rules.iter().enumerate() {
            let error = |field, reason: String| AclError {
                index,
                field,
                reason,
            };
            let access = Access::parse(&spec.access).ok_or_else(|| {
                error(
                    "access",
                    format!(
                        "{:?} is not one of read, write, readwrite, subscribe, deny",
                        spec.access
                    ),
                )
            })?;
            let pattern = Pattern::parse(&spec.topic).map_err(|e| error("topic", e.to_string()))?;
            let fixed = pattern.fixed();
            let rule = Rule {
                pattern,
                fixed,
                access,
            };
            match &spec.who {
                Who::Everyone => everyone.push(rule),
                Who::Anonymous => anonymous.push(rule),
                Who::User(name) if name.is_empty() => {
                    return Err(error("username", "must not be empty".into()))
                }
                Who::ClientId(id) if id.is_empty() => {
                    return Err(error("client_id", "must not be empty".into()))
                }
                Who::User(name) => users.entry(name.clone()).or_default().push(rule),
                Who::ClientId(id) => clients.entry(id.clone()).or_default().push(rule),
            }
        }
        acl.everyone = RuleGroup::new(everyone);
        acl.anonymous = RuleGroup::new(anonymous);
        acl.users = users
            .into_iter()
            .map(|(k, v)| (k, RuleGroup::new(v)))
            .collect();
        acl.clients = clients
            .into_iter()
            .map(|(k, v)| (k, RuleGroup::new(v)))
            .collect();
        Ok(acl)
    }

    /// An ACL without rules that allows everything (what configs without ACL get).
    pub fn allow_all() -> Self {
        Acl {
            default_allow: true,
            ..Acl::default()
        }
    }

    /// Whether no rule exists and everything is allowed: connections then get no
    /// [`ClientAcl`] and pay nothing.
    pub fn is_open(&self) -> bool {
        self.default_allow
            && self.everyone.rules.is_empty()
            && self.anonymous.rules.is_empty()
            && self.users.is_empty()
            && self.clients.is_empty()
    }

    /// The number of rules.
    pub fn rule_count(&self) -> usize {
        let count = |g: &Arc<RuleGroup>| g.rules.len();
        count(&self.everyone)
            + count(&self.anonymous)
            + self.users.values().map(count).sum::<usize>()
            + self.clients.values().map(count).sum::<usize>()
    }

    /// The per-connection checker for a client, or `None` when everything is allowed.
    pub fn for_client(&self, identity: Identity<'_>, client_id: &str) -> Option<ClientAcl> {
        if self.is_open() {
            return None;
        }
        let username = match identity {
            Identity::User(name) => Some(name),
            _ => None,
        };
        let mut groups = vec![Arc::clone(&self.everyone)];
        if identity == Identity::Anonymous {
            groups.push(Arc::clone(&self.anonymous));
        }
        if let Some(own) = username.and_then(|u| self.users.get(u)) {
            groups.push(Arc::clone(own));
        }
        if let Some(own) = self.clients.get(client_id) {
            groups.push(Arc::clone(own));
        }
        groups.retain(|g| !g.rules.is_empty());
        Some(ClientAcl::new(
            groups,
            username,
            client_id,
            self.default_allow,
        ))
    }

    /// Whether a client may use `client_id` under the configured ownership: an id that
    /// belongs to a configured user is for that user alone. Broker-assigned ids are not
    /// asked about.
    pub fn may_use_client_id(&self, identity: Identity<'_>, client_id: &str) -> bool {
        let owner = match self.client_id_owner {
            ClientIdOwner::Any => return true,
            ClientIdOwner::Username => self.user_named(client_id),
            ClientIdOwner::UsernamePrefix => self.longest_owner(client_id),
        };
        match (owner, identity) {
            (None, _) => true,
            (Some(owner), Identity::User(name)) => owner == name,
            (Some(_), _) => false,
        }
    }

    fn user_named(&self, name: &str) -> Option<&str> {
        self.usernames
            .binary_search_by(|u| u.as_str().cmp(name))
            .ok()
            .map(|i| self.usernames[i].as_str())
    }

    /// The configured user whose name is `client_id`, or the longest one followed by the
    /// separator at its start.
    fn longest_owner(&self, client_id: &str) -> Option<&str> {
        if let Some(user) = self.user_named(client_id) {
            return Some(user);
        }
        client_id
            .rmatch_indices(self.separator.as_str())
            .find_map(|(at, _)| self.user_named(&client_id[..at]))
    }
}

#[cfg(test)]
mod tests;
