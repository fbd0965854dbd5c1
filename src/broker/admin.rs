//! The admin API's shard side: listings and actions over the data every shard holds.
//!
//! The metrics shard serves `/admin/...` (see `metrics::admin`) and asks the shards over
//! the mesh, one shard and one page at a time. A shard answers a page of clients,
//! sessions or subscriptions by walking its ordered client-id index from the cursor,
//! looking at no more than `SCAN_MAX` entries: a listing of 100,000 sessions costs each
//! shard bounded work per request, never a pass over every session nor a message per
//! session. Retained topics have no ordered index: a page of them is one pass over the
//! shard's retained index keeping the `limit` smallest topics past the cursor. Pages go
//! shard by shard in key order: the cursor is `(shard, last key)`, stable across
//! requests while the tables do not change.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::broker::{Broker, ShardMsg};
use crate::metrics::{AdminAction, AdminBackend, AdminList, AdminPage};
use crate::mqtt::{ByteStr, ClientId, QoS, ReasonCode};
use crate::router::{owner_of, ShardId};
use crate::session::Message;

use super::publish::MayWait;
use super::{Reply, SessionSlot};

/// A request of the metrics shard to one shard.
#[derive(Debug)]
pub enum AdminQuery {
    /// One page of a listing: items with keys past `after`, at most `limit`.
    Page {
        /// Which listing.
        list: AdminList,
        /// The last key of the previous page on this shard.
        after: Option<String>,
        /// Most items.
        limit: usize,
    },
    /// An action on what this shard holds.
    Act(AdminAction),
}

/// A shard's answer to an [`AdminQuery`].
#[derive(Debug)]
pub enum AdminAnswer {
    /// Items in key order.
    Page {
        /// The items.
        rows: Vec<Value>,
        /// Where this shard's next page starts (the last key looked at), if it has more.
        resume: Option<String>,
    },
    /// Whether the action found what it acts on here.
    Done(bool),
}

/// Separates client id and filter in a subscription's key (MQTT strings have no NUL).
const KEY_SEP: char = '\0';

/// Most index entries one page looks at (sessions, or sessions plus subscriptions).
const SCAN_MAX: usize = 10_000;

/// The cursor past `(client, filter)`, or past every subscription of `client`.
fn subscription_cursor((client, filter): (&str, Option<&str>)) -> String {
    match filter {
        Some(filter) => format!("{client}{KEY_SEP}{filter}"),
        None => client.to_string(),
    }
}

/// The `limit` smallest keys of those offered, and how many were offered.
struct Smallest<K, T> {
    limit: usize,
    heap: BinaryHeap<ByKey<K, T>>,
    offered: usize,
}

struct ByKey<K, T>(K, T);

impl<K: Ord, T> PartialEq for ByKey<K, T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<K: Ord, T> Eq for ByKey<K, T> {}
impl<K: Ord, T> PartialOrd for ByKey<K, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: Ord, T> Ord for ByKey<K, T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl<K: Ord, T> Smallest<K, T> {
    fn new(limit: usize) -> Self {
        Smallest {
            limit,
            heap: BinaryHeap::with_capacity(limit + 1),
            offered: 0,
        }
    }

    /// Counts an item past the cursor; whether one with `below(largest kept)` enters.
    fn admits(&mut self, below: impl FnOnce(&K) -> bool) -> bool {
        self.offered += 1;
        self.heap.len() < self.limit || self.heap.peek().is_some_and(|top| below(&top.0))
    }

    fn keep(&mut self, key: K, item: T) {
        self.heap.push(ByKey(key, item));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    /// The kept items in key order, and whether more were offered than kept.
    fn finish(self) -> (Vec<(K, T)>, bool) {
        let more = self.offered > self.heap.len();
        let rows = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|ByKey(k, t)| (k, t))
            .collect();
        (rows, more)
    }
}

impl Broker {
    /// Asks shard `to` (this one included) and waits for its answer.
    async fn ask_admin(&self, to: ShardId, query: AdminQuery) -> AdminAnswer {
        let mut query = Some(query);
        self.ask_admin_all(std::iter::once(to), move |_| {
            query.take().expect("asked once")
        })
        .await
        .pop()
        .unwrap_or(AdminAnswer::Done(false))
    }

    async fn ask_admin_all(
        &self,
        shards: impl ExactSizeIterator<Item = ShardId>,
        mut query: impl FnMut(ShardId) -> AdminQuery,
    ) -> Vec<AdminAnswer> {
        let id = self.requests.open(shards.len());
        for to in shards {
            self.post(
                to,
                ShardMsg::AdminQuery {
                    id,
                    query: query(to),
                },
            );
        }
        self.requests
            .replies(id)
            .await
            .into_iter()
            .filter_map(|r| match r {
                Reply::Admin(answer) => Some(answer),
                _ => None,
            })
            .collect()
    }

    /// Answers an admin query from shard `from`.
    pub(crate) async fn on_admin_query(self: &Rc<Self>, from: ShardId, id: u64, query: AdminQuery) {
        let answer = match query {
            AdminQuery::Page { list, after, limit } => {
                let (rows, resume) = self.admin_page(list, after.as_deref(), limit);
                AdminAnswer::Page { rows, resume }
            }
            AdminQuery::Act(action) => AdminAnswer::Done(self.admin_act(action).await),
        };
        self.post(from, ShardMsg::AdminReply { id, answer });
    }

    /// One page past `after`: at most `limit` items, after looking at no more than
    /// `SCAN_MAX` entries (so a page of connected clients among many offline sessions
    /// may come back short), and where the next page starts if this shard has more.
    /// Walks the ordered index from the cursor: no pass over every session.
    fn admin_page(
        &self,
        list: AdminList,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Value>, Option<String>) {
        if list == AdminList::Retained {
            return self.retained_page(after, limit);
        }
        let sessions = self.sessions.slots.borrow();
        let by_client = self.sessions.by_client.borrow();
        let slot_of = |client: &str| by_client.get(client).and_then(|k| sessions.get(&k));
        let full = |rows: &Vec<Value>, scanned: usize| rows.len() >= limit || scanned >= SCAN_MAX;
        let mut rows = Vec::new();
        let mut scanned = 0;
        if list != AdminList::Subscriptions {
            let mut last: Option<&ClientId> = None;
            for client in by_client.after(after) {
                if let Some(last) = last.filter(|_| full(&rows, scanned)) {
                    return (rows, Some(last.to_string()));
                }
                scanned += 1;
                last = Some(client);
                let Some(slot) = slot_of(client) else {
                    continue;
                };
                if list == AdminList::Sessions {
                    rows.push(self.session_row(slot));
                } else if slot.conn.is_some() {
                    rows.push(self.client_row(slot));
                }
            }
            return (rows, None);
        }
        // A subscription cursor is `client\0filter` (past that one) or `client` (past
        // every subscription of the client).
        let (after_client, after_filter) = match after.map(|a| a.split_once(KEY_SEP)) {
            Some(Some((c, f))) => (Some(c), Some(f)),
            Some(None) => (after, None),
            None => (None, None),
        };
        let within = after_client.filter(|_| after_filter.is_some());
        let clients = within
            .into_iter()
            .chain(by_client.after(after_client).map(|c| c.as_str()));
        let mut last: Option<(&str, Option<&str>)> = None;
        for client in clients {
            if let Some(last) = last.filter(|_| full(&rows, scanned)) {
                return (rows, Some(subscription_cursor(last)));
            }
            let Some(slot) = slot_of(client) else {
                continue;
            };
            let mut filters: Vec<_> = slot.session.subscriptions.iter().collect();
            filters.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let skip_to = after_filter.filter(|_| Some(client) == within);
            for (filter, sub) in filters {
                let options = &sub.opts;
                if skip_to.is_some_and(|f| filter <= f) {
                    continue;
                }
                if let Some(last) = last.filter(|_| full(&rows, scanned)) {
                    return (rows, Some(subscription_cursor(last)));
                }
                scanned += 1;
                last = Some((client, Some(filter)));
                let (group, plain) = split_share(filter);
                rows.push(json!({
                    "client_id": client,
                    "filter": plain,
                    "share_group": group,
                    "qos": options.qos as u8,
                    "no_local": options.no_local,
                    "retain_as_published": options.retain_as_published,
                    "shard": self.id,
                }));
            }
            scanned += 1;
            last = Some((client, None));
        }
        (rows, None)
    }

    /// A page of this shard's retained topics: one pass over its retained index, keeping
    /// the `limit` smallest topics past the cursor (the index has no order of its own).
    fn retained_page(&self, after: Option<&str>, limit: usize) -> (Vec<Value>, Option<String>) {
        let now = Instant::now();
        let mut page = Smallest::new(limit);
        self.retained.index.borrow().for_each(|topic, msg| {
            let past = after.is_none_or(|a| topic > a);
            if past && !msg.is_expired(now) && page.admits(|top: &String| topic < top.as_str()) {
                page.keep(topic.to_string(), Arc::clone(msg));
            }
        });
        let (found, more) = page.finish();
        let resume = found
            .last()
            .filter(|_| more)
            .map(|(topic, _)| topic.clone());
        let rows = found
            .into_iter()
            .map(|(topic, msg)| {
                json!({
                    "topic": topic,
                    "payload_bytes": msg.payload.len(),
                    "qos": msg.qos as u8,
                    "shard": self.id,
                })
            })
            .collect();
        (rows, resume)
    }

    fn client_row(&self, slot: &SessionSlot) -> Value {
        let conn = slot.conn.as_ref();
        let (user, keep_alive) =
            conn.map_or((None, 0), |c| (c.username.get(), c.keep_alive_secs.get()));
        json!({
            "client_id": slot.session.client_id.as_str(),
            "user": user.map(|u| &**u),
            "peer": conn.and_then(|c| c.peer()).map(|a| a.to_string()),
            "protocol": slot.session.protocol.version(),
            "shard": self.id,
            "keep_alive_secs": keep_alive,
            "inflight": slot.session.outbound.inflight(),
            "queued": slot.session.outbound.queued(),
        })
    }

    fn session_row(&self, slot: &SessionSlot) -> Value {
        let expiry = slot.session.expiry_secs;
        json!({
            "client_id": slot.session.client_id.as_str(),
            "connected": slot.conn.is_some(),
            "protocol": slot.session.protocol.version(),
            "shard": self.id,
            "expiry_secs": (expiry != crate::session::EXPIRY_NEVER).then_some(expiry),
            "subscriptions": slot.session.subscriptions.len(),
            "inflight": slot.session.outbound.inflight(),
            "queued": slot.session.outbound.queued(),
            "queued_bytes": slot.session.outbound.queued_bytes(),
        })
    }

    async fn admin_act(self: &Rc<Self>, action: AdminAction) -> bool {
        match action {
            AdminAction::Kick { client_id } => {
                let conn = self.admin_session(&client_id, |slot| slot.conn.clone());
                let Some(conn) = conn.flatten() else {
                    return false;
                };
                conn.close(ReasonCode::AdministrativeAction);
                true
            }
            AdminAction::DeleteSession { client_id } => {
                let found = self.admin_session(&client_id, |slot| match &slot.conn {
                    // Ends with its connection: the detach sees no expiry left.
                    Some(conn) => {
                        slot.session.expiry_secs = 0;
                        conn.close(ReasonCode::AdministrativeAction);
                        None
                    }
                    None => Some(()),
                });
                match found {
                    Some(Some(())) => {
                        let key = self.sessions.by_client.borrow().get(client_id.as_str());
                        if let Some(key) = key {
                            self.end_session(key);
                        }
                        true
                    }
                    Some(None) => true,
                    None => false,
                }
            }
            AdminAction::DeleteRetained { topic } => {
                let held = self
                    .retained
                    .index
                    .borrow()
                    .get(&topic)
                    .is_some_and(|m| !m.is_expired(Instant::now()));
                if !held {
                    return false;
                }
                // Cleared as a client clears it, an empty retained publish: logged, so a
                // restart does not bring it back, and seen by current subscribers.
                let Ok(topic) = ByteStr::from_utf8(bytes::Bytes::from(topic)) else {
                    return false;
                };
                let msg = Arc::new(Message {
                    topic,
                    payload: bytes::Bytes::new(),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: Default::default(),
                    publisher: ClientId::default(),
                    expires_at: None,
                    log: None,
                });
                self.accept_publish(msg, None, MayWait::No).await;
                true
            }
        }
    }

    /// Runs `f` on the session of `client_id` here, if there is one.
    fn admin_session<R>(
        &self,
        client_id: &str,
        f: impl FnOnce(&mut SessionSlot) -> R,
    ) -> Option<R> {
        let key = self.sessions.by_client.borrow().get(client_id)?;
        let mut sessions = self.sessions.slots.borrow_mut();
        sessions.get_mut(&key).map(f)
    }
}

/// `$share/<group>/<filter>` as `(Some(group), filter)`; a plain filter as `(None, it)`.
fn split_share(filter: &str) -> (Option<&str>, &str) {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or((None, filter), |(group, plain)| (Some(group), plain))
}

impl AdminBackend for Broker {
    fn list<'a>(
        &'a self,
        list: AdminList,
        from: Option<(usize, String)>,
        limit: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = AdminPage> + 'a>> {
        Box::pin(async move {
            let shards = self.mesh.shards();
            let (mut shard, mut after) = from.unwrap_or((0, String::new()));
            let mut items = Vec::new();
            while shard < shards {
                if items.len() >= limit {
                    // Full where a shard ended: the next page starts at the next shard.
                    return AdminPage {
                        items,
                        next: Some((shard, String::new())),
                    };
                }
                let query = AdminQuery::Page {
                    list,
                    after: (!after.is_empty()).then(|| std::mem::take(&mut after)),
                    limit: limit - items.len(),
                };
                let AdminAnswer::Page { rows, resume } =
                    self.ask_admin(ShardId::from_index(shard), query).await
                else {
                    break;
                };
                items.extend(rows);
                if let Some(resume) = resume {
                    // One bounded answer per request: the rest of this shard is the next page.
                    return AdminPage {
                        items,
                        next: Some((shard, resume)),
                    };
                }
                after.clear();
                shard += 1;
            }
            AdminPage { items, next: None }
        })
    }

    fn act<'a>(
        &'a self,
        action: AdminAction,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + 'a>> {
        Box::pin(async move {
            match action {
                AdminAction::DeleteRetained { ref topic } => {
                    let owner = owner_of(topic, self.mesh.shards());
                    matches!(
                        self.ask_admin(owner, AdminQuery::Act(action)).await,
                        AdminAnswer::Done(true)
                    )
                }
                // The session may be on any shard.
                action => self
                    .ask_admin_all(self.all_shards(), |_| AdminQuery::Act(action.clone()))
                    .await
                    .into_iter()
                    .any(|a| matches!(a, AdminAnswer::Done(true))),
            }
        })
    }
}
