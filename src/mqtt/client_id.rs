//! `ClientId`: a client identifier as the broker keeps it for as long as the client's
//! session lives.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use super::ByteStr;

/// A client identifier kept by a session, the client id index and a connection: one
/// shared copy of the text behind a 16-byte handle. A [`ByteStr`] is 32 bytes and its
/// first clone allocates the shared header beside the text; the id is kept in three
/// places per connection and never changes, so the smaller handle and the single
/// allocation are what an idle device saves. `Arc`: a session moves between shards.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

// Hash, equality and order are those of the text (`Arc<str>` forwards them), so
// `Borrow<str>` look-ups in maps agree.
const _: () = assert!(std::mem::size_of::<ClientId>() == 16);

impl ClientId {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text as a [`ByteStr`] (a copy), for a packet or a record that carries one.
    pub fn to_byte_str(&self) -> ByteStr {
        ByteStr::from(self.as_str().to_owned())
    }
}

impl Default for ClientId {
    /// The empty id (what a message the broker made itself names as its publisher).
    fn default() -> Self {
        ClientId::from("")
    }
}

impl Deref for ClientId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        ClientId(Arc::from(s))
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        ClientId(Arc::from(s))
    }
}

impl From<&ByteStr> for ClientId {
    fn from(s: &ByteStr) -> Self {
        ClientId::from(s.as_str())
    }
}

impl PartialEq<str> for ClientId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ClientId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn look_ups_by_text_find_the_id() {
        let id = ClientId::from(&ByteStr::from("dev-1"));
        let mut hashed = HashMap::new();
        hashed.insert(id.clone(), 1);
        assert_eq!(hashed.get("dev-1"), Some(&1));
        let mut ordered = BTreeMap::new();
        ordered.insert(ClientId::from("dev-2"), 2);
        ordered.insert(id, 1);
        assert_eq!(ordered.get("dev-2"), Some(&2));
        let keys: Vec<&str> = ordered.keys().map(ClientId::as_str).collect();
        assert_eq!(keys, ["dev-1", "dev-2"]);
        assert_eq!(format!("{0} {0:?}", ClientId::from("a")), "a \"a\"");
        assert_eq!(ClientId::from("a").to_byte_str(), "a");
    }
}
