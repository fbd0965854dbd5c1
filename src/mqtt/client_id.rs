//! `ClientId`: a client identifier as the broker keeps it for as long as the client's
//! session lives.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

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

    /// A name the broker gives itself (the publisher of a message it makes), kept in
    /// `cell` once per process: each message clones it instead of allocating a copy.
    pub fn well_known(cell: &'static OnceLock<ClientId>, text: &'static str) -> ClientId {
        cell.get_or_init(|| ClientId::from(text)).clone()
    }

    /// The text as a [`ByteStr`] (a copy), for a packet or a record that carries one.
    pub fn to_byte_str(&self) -> ByteStr {
        ByteStr::from(self.as_str().to_owned())
    }
}

impl Default for ClientId {
    /// The empty id (what a message the broker made itself names as its publisher).
    fn default() -> Self {
        static EMPTY: OnceLock<ClientId> = OnceLock::new();
        ClientId::well_known(&EMPTY, "")
    }
}

impl Deref for ClientId {
    type Target = str;
    fn deref(&self) -> &str {
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
        static NAME: OnceLock<ClientId> = OnceLock::new();
        let (one, two) = (
            ClientId::well_known(&NAME, "$SYS"),
            ClientId::well_known(&NAME, "$SYS"),
        );
        assert_eq!(one.as_str(), "$SYS");
        assert!(Arc::ptr_eq(&one.0, &two.0), "one copy, cloned");
        assert!(Arc::ptr_eq(&ClientId::default().0, &ClientId::default().0));
    }
}
