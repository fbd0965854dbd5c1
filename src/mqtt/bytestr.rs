//! `ByteStr`: an MQTT UTF-8 string that shares the packet's buffer.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// Immutable UTF-8 text backed by [`Bytes`], so topics and client ids sliced out of a
/// received packet are shared by reference instead of copied.
///
/// Invariant: the bytes are valid UTF-8. Every constructor upholds it; the codec also
/// rejects U+0000 when decoding, as MQTT requires, but values built locally may hold it.
#[derive(Clone, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// An empty string; allocates nothing.
    pub const fn new() -> Self {
        Self(Bytes::new())
    }

    /// Wraps a `'static` string without copying it.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Checks that `bytes` is UTF-8 and wraps it without copying.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or receives from `str`/`String`) valid UTF-8,
        // and the inner bytes are immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes (a cheap reference-counted clone is `clone()` on them).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the string has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for ByteStr {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl From<ByteStr> for Bytes {
    fn from(s: ByteStr) -> Bytes {
        s.0
    }
}

impl PartialEq for ByteStr {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ByteStr {}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Hash for ByteStr {
    // Hash as `str` does, so `Borrow<str>` look-ups in maps agree.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for ByteStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByteStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn equality_hash_and_order_follow_content() {
        let a = ByteStr::from("a/b");
        let b = ByteStr::from(String::from("a/b"));
        assert_eq!(a, b);
        let mut map = HashMap::new();
        map.insert(a.clone(), 1);
        assert_eq!(map.get("a/b"), Some(&1));
        let (a1, b1) = (ByteStr::from("a"), ByteStr::from("b"));
        assert!(a1 < b1);
        assert_eq!(format!("{a} {a:?}"), "a/b \"a/b\"");
    }

    #[test]
    fn from_utf8_rejects_invalid_bytes() {
        assert!(ByteStr::from_utf8(Bytes::from_static(&[0xC3, 0x28])).is_err());
        assert_eq!(ByteStr::from_utf8(Bytes::from_static(b"ok")).unwrap(), "ok");
    }
}
