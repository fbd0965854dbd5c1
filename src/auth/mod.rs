//! Who may connect: anonymous clients, API keys and configured users.
//!
//! Owns: the CONNECT credential check; authorization, that is which topics a client may
//! use and which client ids ([`acl`]); and the password-hashing thread (`queue`), the one
//! thread it runs, so that slow hashes queue on a bounded queue of their own. Otherwise
//! pure: no I/O, no executor.
//!
//! May use: no other shardmq module.
//!
//! Decisions:
//! - An API key is presented as the CONNECT password, with any username or none
//!   (MQTT 3.1.1 clients cannot send a password without a username). Keys are
//!   compared in constant time, and every key is compared, so the time taken does
//!   not reveal which key or how much of it matched.
//! - Users carry an Argon2 PHC hash (`$argon2id$...`), checked when the
//!   configuration is loaded so a bad hash fails at startup, naming the user.
//! - An unknown username with a password is verified against a real user's hash
//!   and then refused, so the response time does not tell which usernames exist.
//! - A username without a password counts as no credentials: the client is
//!   anonymous (allowed only if `allow_anonymous`), never that user.
//! - Secrets never reach logs: `Debug` is written by hand and redacts them.

#![warn(missing_docs)]

pub mod acl;
mod password;
mod queue;

use std::fmt;

pub use password::{hash_password, HashPasswordError};
pub use queue::{HashQueue, Pending, QueueFull};

/// A user allowed to connect with a username and password.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The CONNECT username.
    pub username: String,
    /// Argon2 hash of the password as a PHC string (`shardmq hash-password` makes one).
    pub password_hash: String,
}

/// The authentication settings.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a client without credentials may connect.
    pub allow_anonymous: bool,
    /// Keys accepted as the CONNECT password.
    pub api_keys: Vec<String>,
    /// Username/password users.
    pub users: Vec<UserEntry>,
}

/// Who a connection authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials, admitted by `allow_anonymous`.
    Anonymous,
    /// The API key at this position in `api_keys` (never the key itself).
    ApiKey {
        /// Index into [`AuthConfig::api_keys`].
        index: usize,
    },
    /// A configured user.
    User {
        /// The user's name.
        username: String,
    },
}

impl Principal {
    /// Who the connection is, for authorization.
    pub fn identity(&self) -> acl::Identity<'_> {
        match self {
            Principal::Anonymous => acl::Identity::Anonymous,
            Principal::ApiKey { .. } => acl::Identity::ApiKey,
            Principal::User { username } => acl::Identity::User(username),
        }
    }
}

/// The outcome of a CONNECT credential check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// The client may connect as `principal`.
    Allowed {
        /// Who the client is.
        principal: Principal,
    },
    /// Credentials were given and are wrong (v5 reason 0x86, v3.1.1 return code 4).
    BadCredentials,
    /// Credentials are required and none were given (v5 reason 0x87, v3.1.1 return code 5).
    NotAuthorized,
}

/// Why an [`AuthConfig`] was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfigError {
    /// A user's `password_hash` is not a PHC string.
    InvalidPasswordHash {
        /// The user whose hash is wrong.
        username: String,
        /// What the parser objected to (never the hash itself).
        reason: String,
    },
    /// A user's hash uses an algorithm other than argon2id/argon2i/argon2d, or bad parameters.
    UnsupportedPasswordHash {
        /// The user whose hash is wrong.
        username: String,
    },
    /// A user entry has an empty username.
    EmptyUsername,
    /// Two user entries share a username.
    DuplicateUser {
        /// The repeated username.
        username: String,
    },
    /// An API key is empty, which would make an empty password a key.
    EmptyApiKey {
        /// Position of the key in `api_keys`.
        index: usize,
    },
}

impl fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPasswordHash { username, reason } => {
                write!(f, "user {username:?}: password_hash is not a PHC string: {reason}")
            }
            Self::UnsupportedPasswordHash { username } => write!(
                f,
                "user {username:?}: password_hash must be an argon2id/argon2i/argon2d PHC string with valid parameters"
            ),
            Self::EmptyUsername => write!(f, "a user entry has an empty username"),
            Self::DuplicateUser { username } => write!(f, "user {username:?} is listed twice"),
            Self::EmptyApiKey { index } => write!(f, "api_keys[{index}] is empty"),
        }
    }
}

impl std::error::Error for AuthConfigError {}

/// Checks CONNECT credentials against a validated [`AuthConfig`].
pub struct Authenticator {
    allow_anonymous: bool,
    api_keys: Vec<Box<[u8]>>,
    /// (username, PHC hash), validated at construction; sorted by username.
    users: Vec<(String, String)>,
    /// Topic rules and client-id ownership (allow everything unless set).
    acl: acl::Acl,
}

impl Authenticator {
    /// Validates `config`: every hash must be an Argon2 PHC string, usernames
    /// unique and non-empty, API keys non-empty.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let mut api_keys = Vec::with_capacity(config.api_keys.len());
        for (index, key) in config.api_keys.iter().enumerate() {
            if key.is_empty() {
                return Err(AuthConfigError::EmptyApiKey { index });
            }
            api_keys.push(Box::from(key.as_bytes()));
        }
        let mut users = Vec::with_capacity(config.users.len());
        for user in &config.users {
            if user.username.is_empty() {
                return Err(AuthConfigError::EmptyUsername);
            }
            password::check_phc(&user.username, &user.password_hash)?;
            users.push((user.username.clone(), user.password_hash.clone()));
        }
        users.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = users.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(AuthConfigError::DuplicateUser {
                username: pair[0].0.clone(),
            });
        }
        Ok(Self {
            allow_anonymous: config.allow_anonymous,
            api_keys,
            users,
            acl: acl::Acl::allow_all(),
        })
    }

    /// The same, with these authorization rules.
    pub fn with_acl(mut self, acl: acl::Acl) -> Self {
        self.acl = acl;
        self
    }

    /// How many users are configured.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The authorization rules.
    pub fn acl(&self) -> &acl::Acl {
        &self.acl
    }

    /// Decides a CONNECT from its username and password fields.
    ///
    /// A password equal to an API key is accepted with any username or none.
    /// Otherwise the username must name a user whose hash the password matches.
    /// No password: allowed as [`Principal::Anonymous`] only if `allow_anonymous`,
    /// else [`AuthDecision::NotAuthorized`]. Any other password: [`AuthDecision::BadCredentials`].
    /// May run the (deliberately slow) password hash: see [`needs_slow_hash`](Self::needs_slow_hash).
    pub fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> AuthDecision {
        let Some(password) = password else {
            return if self.allow_anonymous {
                AuthDecision::Allowed {
                    principal: Principal::Anonymous,
                }
            } else {
                AuthDecision::NotAuthorized
            };
        };
        if let Some(index) = self.find_api_key(password) {
            return AuthDecision::Allowed {
                principal: Principal::ApiKey { index },
            };
        }
        let Some(username) = username else {
            return AuthDecision::BadCredentials;
        };
        match self.user_hash(username) {
            Some(hash) if password::verify(password, hash) => AuthDecision::Allowed {
                principal: Principal::User {
                    username: username.to_owned(),
                },
            },
            Some(_) => AuthDecision::BadCredentials,
            None => {
                // Spend the same time as for a real user so usernames cannot be probed.
                if let Some((_, decoy)) = self.users.first() {
                    password::verify(password, decoy);
                }
                AuthDecision::BadCredentials
            }
        }
    }

    /// True when [`check`](Self::check) with a password may run the Argon2 hash,
    /// so the caller can move it off the event loop. It is never false when the
    /// hash runs; it may be true when an API key then matches first.
    pub fn needs_slow_hash(&self, username: Option<&str>) -> bool {
        username.is_some() && !self.users.is_empty()
    }

    /// After a reload (`self` new, `previous` what `principal` was admitted by): whether
    /// the connection may stay. As mosquitto does on reload, a connection whose
    /// credentials no longer hold is refused: an anonymous one once `allow_anonymous` is
    /// off, a user's once the user is gone or its password hash changed, an API key's
    /// once that key is gone. The password itself is not kept, so the hash is compared.
    /// A user named by a client certificate stays: the TLS session was verified once.
    pub fn still_admits(&self, principal: &Principal, previous: &Authenticator) -> bool {
        match principal {
            Principal::Anonymous => self.allow_anonymous,
            // Not a user before: named by a verified client certificate
            // (`use_identity_as_username`), which a reload does not check again.
            Principal::User { username } => match previous.user_hash(username) {
                None => true,
                before => self.user_hash(username) == before,
            },
            Principal::ApiKey { index } => previous
                .api_keys
                .get(*index)
                .is_some_and(|key| self.find_api_key(key).is_some()),
        }
    }

    /// Compares `password` with every key in constant time; the first match wins.
    fn find_api_key(&self, password: &[u8]) -> Option<usize> {
        let mut found = None;
        for (index, key) in self.api_keys.iter().enumerate() {
            // No early exit: every key is compared whatever matched before.
            if password::constant_time_eq(key, password) && found.is_none() {
                found = Some(index);
            }
        }
        found
    }

    fn user_hash(&self, username: &str) -> Option<&str> {
        let i = self
            .users
            .binary_search_by(|(name, _)| name.as_str().cmp(username))
            .ok()?;
        Some(&self.users[i].1)
    }
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("allow_anonymous", &self.allow_anonymous)
            .field(
                "api_keys",
                &format_args!("<{} redacted>", self.api_keys.len()),
            )
            .field("users", &self.users)
            .finish()
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|u| u.0.as_str()).collect();
        f.debug_struct("Authenticator")
            .field("allow_anonymous", &self.allow_anonymous)
            .field(
                "api_keys",
                &format_args!("<{} redacted>", self.api_keys.len()),
            )
            .field("users", &names)
            .field("acl_rules", &self.acl.rule_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Algorithm, Argon2, Params, Version};

    /// Cheap parameters so tests stay fast in debug builds; verify reads them from the hash.
    fn quick_hash(password: &str) -> String {
        let params = Params::new(64, 1, 1, None).expect("valid params");
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        password::hash_with(&argon2, password).expect("hash")
    }

    fn config(allow_anonymous: bool) -> AuthConfig {
        AuthConfig {
            allow_anonymous,
            api_keys: vec!["key-one-secret".into(), "key-two-secret".into()],
            users: vec![
                UserEntry {
                    username: "alice".into(),
                    password_hash: quick_hash("alice-pw"),
                },
                UserEntry {
                    username: "bob".into(),
                    password_hash: quick_hash("bob-pw"),
                },
            ],
        }
    }

    fn allowed(principal: Principal) -> AuthDecision {
        AuthDecision::Allowed { principal }
    }

    #[test]
    fn anonymous_allowed_or_denied() {
        let open = Authenticator::new(&config(true)).expect("valid");
        let closed = Authenticator::new(&config(false)).expect("valid");
        assert_eq!(open.check(None, None), allowed(Principal::Anonymous));
        assert_eq!(closed.check(None, None), AuthDecision::NotAuthorized);
        // A username alone is not a credential.
        assert_eq!(
            open.check(Some("alice"), None),
            allowed(Principal::Anonymous)
        );
        assert_eq!(
            closed.check(Some("alice"), None),
            AuthDecision::NotAuthorized
        );
    }

    #[test]
    fn api_key_as_password() {
        let auth = Authenticator::new(&config(false)).expect("valid");
        assert_eq!(
            auth.check(None, Some(b"key-two-secret")),
            allowed(Principal::ApiKey { index: 1 })
        );
        assert_eq!(
            auth.check(Some("anyone"), Some(b"key-one-secret")),
            allowed(Principal::ApiKey { index: 0 })
        );
        assert_eq!(
            auth.check(None, Some(b"key-one-secre")),
            AuthDecision::BadCredentials
        );
        assert_eq!(
            auth.check(None, Some(b"key-one-secretX")),
            AuthDecision::BadCredentials
        );
        assert_eq!(auth.check(None, Some(b"")), AuthDecision::BadCredentials);
    }

    #[test]
    fn users_right_and_wrong_password() {
        let auth = Authenticator::new(&config(true)).expect("valid");
        assert_eq!(
            auth.check(Some("alice"), Some(b"alice-pw")),
            allowed(Principal::User {
                username: "alice".into()
            })
        );
        assert_eq!(
            auth.check(Some("bob"), Some(b"bob-pw")),
            allowed(Principal::User {
                username: "bob".into()
            })
        );
        assert_eq!(
            auth.check(Some("alice"), Some(b"bob-pw")),
            AuthDecision::BadCredentials
        );
        assert_eq!(
            auth.check(Some("alice"), Some(b"")),
            AuthDecision::BadCredentials
        );
        // Unknown users are refused even with another user's password, and even if anonymous is allowed.
        assert_eq!(
            auth.check(Some("carol"), Some(b"alice-pw")),
            AuthDecision::BadCredentials
        );
        assert!(auth.needs_slow_hash(Some("carol")));
        assert!(!auth.needs_slow_hash(None));
        let keys_only = Authenticator::new(&AuthConfig {
            users: vec![],
            ..config(false)
        })
        .expect("valid");
        assert!(!keys_only.needs_slow_hash(Some("alice")));
        assert_eq!(
            keys_only.check(Some("alice"), Some(b"x")),
            AuthDecision::BadCredentials
        );
    }

    #[test]
    fn hash_password_round_trip() {
        let phc = hash_password("s3cret").expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        let auth = Authenticator::new(&AuthConfig {
            allow_anonymous: false,
            api_keys: vec![],
            users: vec![UserEntry {
                username: "u".into(),
                password_hash: phc.clone(),
            }],
        })
        .expect("valid");
        assert!(matches!(
            auth.check(Some("u"), Some(b"s3cret")),
            AuthDecision::Allowed { .. }
        ));
        assert_eq!(
            auth.check(Some("u"), Some(b"s3creT")),
            AuthDecision::BadCredentials
        );
        assert_ne!(
            hash_password("s3cret").expect("hash"),
            phc,
            "salts are random"
        );
    }

    #[test]
    fn bad_config_rejected_naming_the_user() {
        let mut cfg = config(false);
        cfg.users[1].password_hash = "plaintext".into();
        match Authenticator::new(&cfg) {
            Err(e @ AuthConfigError::InvalidPasswordHash { .. }) => {
                assert!(e.to_string().contains("\"bob\""), "{e}");
                assert!(!e.to_string().contains("plaintext"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        cfg.users[1].password_hash = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into();
        assert_eq!(
            Authenticator::new(&cfg).err(),
            Some(AuthConfigError::UnsupportedPasswordHash {
                username: "bob".into()
            })
        );
        let mut cfg = config(false);
        cfg.users[1].username = "alice".into();
        assert_eq!(
            Authenticator::new(&cfg).err(),
            Some(AuthConfigError::DuplicateUser {
                username: "alice".into()
            })
        );
        let mut cfg = config(false);
        cfg.api_keys.push(String::new());
        assert_eq!(
            Authenticator::new(&cfg).err(),
            Some(AuthConfigError::EmptyApiKey { index: 2 })
        );
        let mut cfg = config(false);
        cfg.users[0].username.clear();
        assert_eq!(
            Authenticator::new(&cfg).err(),
            Some(AuthConfigError::EmptyUsername)
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let cfg = config(true);
        let auth = Authenticator::new(&cfg).expect("valid");
        for text in [
            format!("{cfg:?}"),
            format!("{auth:?}"),
            format!("{:?}", cfg.users[0]),
        ] {
            assert!(text.contains("alice"), "{text}");
            assert!(!text.contains("secret"), "{text}");
            assert!(!text.contains("argon2"), "{text}");
        }
    }

    #[test]
    fn reload_keeps_only_connections_whose_credentials_still_hold() {
        let before = config(true);
        let old = Authenticator::new(&before).expect("valid");
        let mut after = before.clone();
        after.allow_anonymous = false;
        after.users.remove(1);
        after.api_keys.remove(0);
        let new = Authenticator::new(&after).expect("valid");
        let user = |name: &str| Principal::User {
            username: name.into(),
        };
        assert!(new.still_admits(&user("alice"), &old), "unchanged user");
        assert!(!new.still_admits(&user("bob"), &old), "removed user");
        assert!(!new.still_admits(&Principal::Anonymous, &old));
        assert!(!new.still_admits(&Principal::ApiKey { index: 0 }, &old));
        assert!(
            new.still_admits(&Principal::ApiKey { index: 1 }, &old),
            "a kept key, moved to another index"
        );
        assert!(
            new.still_admits(&user("cert-cn"), &old),
            "named by a client certificate"
        );
        after.users[0].password_hash = quick_hash("new-pw");
        let changed = Authenticator::new(&after).expect("valid");
        assert!(!changed.still_admits(&user("alice"), &old), "hash changed");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        use password::constant_time_eq as eq;
        assert!(eq(b"abc", b"abc"));
        assert!(!eq(b"abc", b"abd"));
        assert!(!eq(b"abc", b"ab"));
        assert!(!eq(b"abc", b"abcabc"));
        assert!(!eq(b"abc", b""));
        assert!(!eq(b"aaaa", b"aa"), "wrap-around must not fake a match");
        assert!(eq(b"", b""));
    }
}
