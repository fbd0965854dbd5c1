//! `ClientId`: a client identifier as the broker keeps it for as long as the client's
//! session lives.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::OnceLock;

use triomphe::ThinArc;

use super::ByteStr;

/// A client identifier kept by a session, the client id index and a connection: one
/// shared copy of the text behind an 8-byte handle. A [`ByteStr`] is 32 bytes and its
/// first clone allocates the shared header beside the text; the id is kept in three
/// places per connection and never changes, so the smaller handle and the single
/// allocation are what an idle device saves. Atomically counted: a session moves between
/// shards. A thin pointer (the text's length sits in the allocation, beside the count)
/// rather than `Arc<str>`'s pointer and length: the client id index holds one per id on
/// each shard it knows the id on, in B-tree nodes whose size follows the key's.
#[derive(Clone)]
pub struct ClientId(ThinArc<(), u8>);

// Hash, equality and order are those of the text (implemented below on `as_str`), so
// `Borrow<str>` look-ups in maps agree.
const _: () = assert!(std::mem::size_of::<ClientId>() == 8);

impl ClientId {
    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: the bytes were copied from a `&str` (see `From<&str>`) and never change.
        unsafe { std::str::from_utf8_unchecked(&self.0.slice) }
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
        self.as_str()
    }
}

impl Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ClientId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ClientId {}

impl PartialOrd for ClientId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ClientId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for ClientId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        ClientId(ThinArc::from_header_and_slice((), s.as_bytes()))
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        ClientId::from(s.as_str())
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
        // The text's length is kept with it: empty, multi-byte and long ids come back whole.
        for text in ["", "é-ü-日本", &"x".repeat(300)] {
            let id = ClientId::from(text.to_string());
            assert_eq!((id.as_str(), id.len()), (text, text.len()));
            assert_eq!(id.clone(), id);
        }
        assert!(
            ClientId::from("ab") < ClientId::from("b"),
            "ordered as the text"
        );
        static NAME: OnceLock<ClientId> = OnceLock::new();
        let (one, two) = (
            ClientId::well_known(&NAME, "$SYS"),
            ClientId::well_known(&NAME, "$SYS"),
        );
        assert_eq!(one.as_str(), "$SYS");
        assert_eq!(one.0.as_ptr(), two.0.as_ptr(), "one copy, cloned");
        assert_eq!(
            ClientId::default().0.as_ptr(),
            ClientId::default().0.as_ptr()
        );
    }
}
