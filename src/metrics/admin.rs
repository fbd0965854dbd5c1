//! The admin API on the metrics listener: `/admin/...`, JSON in and out.
//!
//! Off unless `admin_key` or `admin_localhost_only` is set (404 then, as for any unknown
//! path). With a key, every request carries `Authorization: Bearer <key>` (compared in
//! constant time; 401 otherwise); localhost-only refuses other peers (403).
//!
//! - `GET /admin/clients|sessions|subscriptions|retained?limit=N&after=CURSOR`:
//!   `{"items": [...], "next": CURSOR or null}`; the cursor is opaque, the order stable.
//! - `DELETE /admin/clients?client_id=ID`: disconnects the client (v5: DISCONNECT 0x98).
//! - `DELETE /admin/sessions?client_id=ID`: ends the session (its connection too).
//! - `DELETE /admin/retained?topic=T`: clears the retained message.
//!
//! The data lives on every shard; [`AdminBackend`] gathers it (see `broker::admin`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use serde_json::{json, Value};

/// Items per page unless the request says.
pub const PAGE_DEFAULT: usize = 100;
/// Most items per page.
pub const PAGE_MAX: usize = 1000;

/// Which listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminList {
    /// Connected clients.
    Clients,
    /// Sessions, offline ones included.
    Sessions,
    /// Subscriptions of every session.
    Subscriptions,
    /// Retained messages.
    Retained,
}

/// What an admin request changes.
#[derive(Debug, Clone)]
pub enum AdminAction {
    /// Disconnect the client.
    Kick {
        /// Its client id.
        client_id: String,
    },
    /// End the session (and its connection, if any).
    DeleteSession {
        /// Its client id.
        client_id: String,
    },
    /// Clear the retained message of a topic.
    DeleteRetained {
        /// The topic.
        topic: String,
    },
}

/// One page of a listing.
#[derive(Debug)]
pub struct AdminPage {
    /// The items, in the listing's order.
    pub items: Vec<Value>,
    /// Where the next page starts: `(shard, last key)`; `None` after the last page.
    pub next: Option<(usize, String)>,
}

/// What serves the admin API's data: the metrics shard, asking every shard.
pub trait AdminBackend {
    /// At most `limit` items after `from`.
    fn list<'a>(
        &'a self,
        list: AdminList,
        from: Option<(usize, String)>,
        limit: usize,
    ) -> Pin<Box<dyn Future<Output = AdminPage> + 'a>>;
    /// Performs `action`; whether it found what it acts on.
    fn act<'a>(&'a self, action: AdminAction) -> Pin<Box<dyn Future<Output = bool> + 'a>>;
}

/// Who may use the admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// Bearer token; empty = none required.
    pub key: String,
    /// Loopback peers only.
    pub localhost_only: bool,
}

impl AdminAccess {
    fn enabled(&self) -> bool {
        !self.key.is_empty() || self.localhost_only
    }
}

/// An admin request as the HTTP server parsed it.
pub struct AdminRequest<'a> {
    /// Method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// The query string (after `?`), if any.
    pub query: &'a str,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
    /// The peer.
    pub peer: Option<SocketAddr>,
}

/// `(status, body)`: the body is JSON.
pub type AdminResponse = (u16, String);

/// Answers one `/admin/...` request.
pub async fn handle(
    backend: &dyn AdminBackend,
    access: &AdminAccess,
    request: &AdminRequest<'_>,
) -> AdminResponse {
    if !access.enabled() {
        return error(
            404,
            "the admin API is off: set admin_key or admin_localhost_only",
        );
    }
    if access.localhost_only && !request.peer.is_some_and(|p| p.ip().is_loopback()) {
        return error(403, "the admin API serves loopback peers only");
    }
    if !access.key.is_empty() {
        let given = request
            .authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given, access.key.as_bytes()) {
            return error(401, "missing or wrong bearer token");
        }
    }
    let list = match request.path {
        "/admin/clients" => AdminList::Clients,
        "/admin/sessions" => AdminList::Sessions,
        "/admin/subscriptions" => AdminList::Subscriptions,
        "/admin/retained" => AdminList::Retained,
        _ => {
            return error(
                404,
                "try /admin/clients, /admin/sessions, /admin/subscriptions, /admin/retained",
            )
        }
    };
    let param = |name: &str| query_param(request.query, name);
    match request.method {
        "GET" => {
            let limit = match param("limit").map(|l| l.parse::<usize>()) {
                None => PAGE_DEFAULT,
                Some(Ok(l)) if (1..=PAGE_MAX).contains(&l) => l,
                Some(_) => return error(400, &format!("limit must be 1..={PAGE_MAX}")),
            };
            let from = match param("after") {
                None => None,
                Some(c) => match decode_cursor(&c) {
                    Some(from) => Some(from),
                    None => return error(400, "after: not a cursor this API gave"),
                },
            };
            let page = backend.list(list, from, limit).await;
            let body = json!({
                "items": page.items,
                "next": page.next.map(|(shard, key)| encode_cursor(shard, &key)),
            });
            (200, body.to_string())
        }
        "DELETE" => {
            let action = match (list, param("client_id"), param("topic")) {
                (AdminList::Clients, Some(client_id), _) => AdminAction::Kick { client_id },
                (AdminList::Sessions, Some(client_id), _) => {
                    AdminAction::DeleteSession { client_id }
                }
                (AdminList::Retained, _, Some(topic)) => AdminAction::DeleteRetained { topic },
                (AdminList::Retained, ..) => return error(400, "topic= is required"),
                (AdminList::Subscriptions, ..) => {
                    return error(405, "subscriptions cannot be deleted here")
                }
                _ => return error(400, "client_id= is required"),
            };
            if backend.act(action).await {
                (200, json!({"ok": true}).to_string())
            } else {
                error(404, "no such client, session or retained topic")
            }
        }
        _ => error(405, "GET lists, DELETE acts"),
    }
}

fn error(status: u16, message: &str) -> AdminResponse {
    (status, json!({ "error": message }).to_string())
}

/// Equal inputs of equal length take the same time whatever their bytes (only the
/// length may show), so a wrong key does not tell how much of it was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The percent-decoded value of `name` in a query string (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == name).then(|| percent_decode(v))?
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The cursor as hex of `<shard>:<key>`: opaque, URL-safe.
fn encode_cursor(shard: usize, key: &str) -> String {
    format!("{shard}:{key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_cursor(cursor: &str) -> Option<(usize, String)> {
    if cursor.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let text = String::from_utf8(bytes).ok()?;
    let (shard, key) = text.split_once(':')?;
    Some((shard.parse().ok()?, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let key = "client\0a/b c";
        assert_eq!(
            decode_cursor(&encode_cursor(3, key)),
            Some((3, key.to_string()))
        );
        assert_eq!(decode_cursor("zz"), None);
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("limit=5&topic=a%2Fb+c", "topic").as_deref(),
            Some("a/b c")
        );
        assert_eq!(query_param("limit=5", "topic"), None);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
