//! Subscribe and unsubscribe: the local tries, the replicated interest table, and
//! retained messages on subscribe.
//!
//! A shard tells its peers about a filter only when its first local subscriber to that
//! `(group, filter)` arrives or its last one leaves, and only the peers that route by
//! it: the owner of the one topic a plain filter without wildcards matches (none when
//! that is this shard, whose own subscribers are its trie's), every peer for a wildcard
//! filter or a shared group (a group's members are also looked up away from the owner).
//! The SUBACK for a filter new to this shard waits until those peers have applied the
//! change, so a publish made after the client saw its SUBACK is routed here whichever
//! shard it arrived on.
//!
//! A new subscription begins, per owner, at that owner's log end when the interest
//! change took effect there (`Session::subscribed_from`): after the `InterestAdd`s, the
//! shard asks every owner for its log end on the same links, and the SUBACK and the
//! `subscribe` record wait for the answers. Records at or past an answer are routed by
//! the new interest (delivered live); none below it was published after the SUBSCRIBE,
//! so catch-up reads and replays start exactly there. Nothing is added to the publish
//! path. Subscribing again to a held filter keeps where it began.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::{Broker, ShardMsg};
use crate::mqtt::{QoS, ReasonCode};
use crate::router::{owner_of, parse_filter, ShardId, ShardSet, TopicLimits};
use crate::session::{Delivery, SubOptions};

use super::persist::records::SessionRecord;
use super::persist::SUBSCRIBE_NOT_LOGGED;
use super::{GroupKey, InterestKey, MemberKey, Reply, SessionKey};

impl Broker {
    /// The limits a topic name or filter must keep (`topic_bytes_max`, `topic_levels_max`).
    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            topic_bytes_max: self.config.topic_bytes_max,
            topic_levels_max: self.config.topic_levels_max,
        }
    }

    /// Adds one subscription of session `key` to the local indexes; returns the id of a
    /// request to await when peers had to learn of a new filter.
    pub(crate) fn index_subscription(
        &self,
        key: SessionKey,
        full_filter: &str,
        opts: SubOptions,
    ) -> Option<u64> {
        let parsed = parse_filter(full_filter, &self.topic_limits()).ok()?;
        let group: Option<Arc<str>> = parsed.share_group.map(Arc::from);
        let filter: Arc<str> = Arc::from(parsed.filter);
        // Whether this is the shard's first subscriber to the (group, filter): a plain
        // filter's subscribers here are the trie node's, a group's members are counted.
        let first = match &group {
            None => {
                let mut trie = self.subs.trie.borrow_mut();
                trie.insert(&filter, key, opts).is_none() && trie.subscriber_count(&filter) == 1
            }
            Some(g) => {
                let member = MemberKey {
                    group: g.clone(),
                    session: key,
                };
                self.subs.shared.borrow_mut().insert(&filter, member, opts);
                let mut counts = self.subs.interest_counts.borrow_mut();
                let count = counts
                    .entry(InterestKey {
                        group: group.clone(),
                        filter: filter.clone(),
                    })
                    .or_insert(0);
                *count += 1;
                // The owner's table lists this shard's groups, its own included: a
                // group's member is picked among the shards of the route.
                if *count == 1 {
                    self.subs
                        .interest
                        .borrow_mut()
                        .add(&filter, Some(g), self.id);
                }
                *count == 1
            }
        };
        self.probe.subscriptions_current.add(1);
        if !first {
            return None;
        }
        let peers = self.interest_peers(&filter, group.is_some());
        if peers.is_empty() {
            return None;
        }
        let id = self.requests.open(peers.len());
        for peer in &peers {
            self.post(
                peer,
                ShardMsg::InterestAdd {
                    filter: filter.clone(),
                    group: group.clone(),
                    ack_id: Some(id),
                },
            );
        }
        Some(id)
    }

    /// The peers whose interest tables list this shard's subscribers to `filter` (see the
    /// module documentation): a plain filter without wildcards matches one topic, routed
    /// only by its owner, so only the owner needs it, and no peer when this shard owns
    /// it. The same set hears of the filter's first subscriber here and of its last.
    fn interest_peers(&self, filter: &str, shared: bool) -> ShardSet {
        let only =
            (!shared && !filter.contains(['+', '#'])).then(|| owner_of(filter, self.mesh.shards()));
        self.all_shards()
            .filter(|&p| p != self.id && only.is_none_or(|owner| owner == p))
            .collect()
    }

    /// Replaces the options of an indexed subscription.
    fn replace_options(&self, key: SessionKey, full_filter: &str, opts: SubOptions) {
        let Ok(parsed) = parse_filter(full_filter, &self.topic_limits()) else {
            return;
        };
        match parsed.share_group {
            None => {
                self.subs.trie.borrow_mut().insert(parsed.filter, key, opts);
            }
            Some(g) => {
                let member = MemberKey {
                    group: Arc::from(g),
                    session: key,
                };
                self.subs
                    .shared
                    .borrow_mut()
                    .insert(parsed.filter, member, opts);
            }
        }
    }

    /// Removes one subscription of session `key` from the local indexes.
    pub(crate) fn unindex_subscription(&self, key: SessionKey, full_filter: &str) {
        let Ok(parsed) = parse_filter(full_filter, &self.topic_limits()) else {
            return;
        };
        let group: Option<Arc<str>> = parsed.share_group.map(Arc::from);
        let filter: Arc<str> = Arc::from(parsed.filter);
        // `Some(last)`: removed, and whether it was this shard's last subscriber to the
        // (group, filter).
        let last = match &group {
            None => {
                let mut trie = self.subs.trie.borrow_mut();
                trie.remove(&filter, &key)
                    .map(|_| trie.subscriber_count(&filter) == 0)
            }
            Some(g) => {
                let member = MemberKey {
                    group: g.clone(),
                    session: key,
                };
                let removed = self.subs.shared.borrow_mut().remove(&filter, &member);
                removed.map(|_| {
                    let mut counts = self.subs.interest_counts.borrow_mut();
                    let k = InterestKey {
                        group: group.clone(),
                        filter: filter.clone(),
                    };
                    let count = counts.get_mut(&k).expect("indexed members are counted");
                    *count -= 1;
                    let last = *count == 0;
                    if last {
                        counts.remove(&k);
                        self.subs
                            .interest
                            .borrow_mut()
                            .remove(&filter, Some(g), self.id);
                    }
                    last
                })
            }
        };
        let Some(last) = last else {
            return;
        };
        self.probe.subscriptions_current.add(-1);
        if last {
            for peer in &self.interest_peers(&filter, group.is_some()) {
                self.post(
                    peer,
                    ShardMsg::InterestRemove {
                        filter: filter.clone(),
                        group: group.clone(),
                    },
                );
            }
            if let Some(group) = group {
                self.release_group(GroupKey { group, filter });
            }
        }
    }

    /// Subscribes session `key` to validated filters; returns once every peer knows (and,
    /// for a persistent session, once the subscriptions are durable at its home), so the
    /// caller can send SUBACK with what was added. `Err(reason)`: the home could not log
    /// them; they were removed again and the SUBACK refuses them with `reason`.
    pub async fn subscribe(
        self: &Rc<Self>,
        key: SessionKey,
        filters: Vec<(String, SubOptions)>,
    ) -> Result<Vec<(String, SubOptions, bool)>, ReasonCode> {
        let mut acks = Vec::new();
        let mut added = Vec::with_capacity(filters.len());
        let mut begun = Vec::new();
        for (filter, opts) in filters {
            let existed = {
                let mut sessions = self.sessions.slots.borrow_mut();
                let Some(slot) = sessions.get_mut(&key) else {
                    break;
                };
                let s = &mut slot.session;
                // A subscription replacing one to the same filter keeps where it began
                // (MQTT-3.8.4-3): the messages since are still owed to it, and catch-up
                // reads and replays skip records before it. A new one begins at every
                // owner's log end, asked below; until the answers come it holds the
                // last watermark each owner sent here, which is never past that end.
                if s.subscriptions.set_opts(filter.as_str(), opts) {
                    true
                } else {
                    let from = self.retention.heard_floors.borrow();
                    s.subscriptions.insert(filter.as_str(), opts, &from);
                    self.sessions.watch(key, s);
                    begun.push(filter.clone());
                    false
                }
            };
            if existed {
                // Same filter, new options: replace them in place; the interest table
                // does not change, so no peer needs to hear about it.
                self.replace_options(key, &filter, opts);
            } else if let Some(ack) = self.index_subscription(key, &filter, opts) {
                acks.push(ack);
            }
            added.push((filter, opts, !existed));
        }
        // Asked after the interest changes above, on the same links: see `ask_log_ends`.
        let ends = (!begun.is_empty()).then(|| self.ask_log_ends());
        for ack in acks {
            self.requests.replies(ack).await;
        }
        let ends = match ends {
            Some(asked) => Some(self.log_ends(asked).await),
            None => None,
        };
        let (logged_as, records) = {
            let mut sessions = self.sessions.slots.borrow_mut();
            let Some(slot) = sessions.get_mut(&key) else {
                return Ok(added);
            };
            let s = &mut slot.session;
            if let Some(ends) = ends {
                for filter in &begun {
                    s.subscriptions.set_from(filter.as_str(), &ends);
                }
            }
            let records: Vec<_> = added
                .iter()
                .filter_map(|(filter, opts, _)| {
                    let from = s.subscriptions.get(filter.as_str())?.from_all();
                    Some((filter.clone(), *opts, from))
                })
                .collect();
            (s.logged.then(|| s.client_id.clone()), records)
        };
        if let Some(client) = logged_as {
            if !self.log_subscriptions(client.as_str(), &records).await {
                let filters: Vec<String> = records.into_iter().map(|(f, ..)| f).collect();
                self.unsubscribe(key, &filters);
                return Err(SUBSCRIBE_NOT_LOGGED);
            }
        }
        Ok(added)
    }

    /// The offset this shard's next log record gets (0 without a log).
    pub(crate) fn log_end(&self) -> u64 {
        self.log.get().map_or(0, |d| d.wal.next_offset().0)
    }

    /// Asks every owner where its log ends, for subscriptions that begin now: this
    /// shard's own end at once, a peer's over the mesh. Called after the subscriptions'
    /// interest changes were posted: a peer handles its link in order, so it answers
    /// only once it routes by them, and every record it appends at or past its answer
    /// is matched against them and sent here live. Nothing below the answer is owed to
    /// the subscription (MQTT: it gets what is published after it), so catch-up reads
    /// and replays can start exactly there. Returns this shard's end and the request.
    fn ask_log_ends(&self) -> (u64, Option<u64>) {
        let local = self.log_end();
        let peers = self.mesh.shards() - 1;
        if peers == 0 {
            return (local, None);
        }
        let id = self.requests.open(peers);
        for peer in self.all_shards().filter(|&p| p != self.id) {
            self.post(peer, ShardMsg::LogEndQuery { id });
        }
        (local, Some(id))
    }

    /// The answers to [`Broker::ask_log_ends`], per owner shard.
    async fn log_ends(&self, (local, id): (u64, Option<u64>)) -> Vec<u64> {
        let mut ends = vec![0; self.mesh.shards()];
        ends[self.id.index()] = local;
        if let Some(id) = id {
            for reply in self.requests.replies(id).await {
                if let Reply::LogEnd { shard, end } = reply {
                    ends[shard.index()] = end;
                }
            }
        }
        ends
    }

    /// Sends the retained messages a new subscription asks for (retain handling 0, or 1
    /// for a subscription that did not exist; never for shared subscriptions).
    pub async fn send_retained(
        self: &Rc<Self>,
        key: SessionKey,
        filter: &str,
        opts: SubOptions,
        is_new: bool,
    ) {
        if opts.retain_handling == 2 || (opts.retain_handling == 1 && !is_new) {
            return;
        }
        let Ok(parsed) = parse_filter(filter, &self.topic_limits()) else {
            return;
        };
        if parsed.share_group.is_some() {
            return;
        }
        let plain = parsed.filter;
        let targets: Vec<ShardId> = if plain.contains(['+', '#']) {
            self.all_shards().collect()
        } else {
            vec![owner_of(plain, self.mesh.shards())]
        };
        let id = self.requests.open(targets.len());
        let filter_arc: Arc<str> = Arc::from(plain);
        for shard in targets {
            self.post(
                shard,
                ShardMsg::RetainedQuery {
                    filter: filter_arc.clone(),
                    id,
                },
            );
        }
        let mut messages = Vec::new();
        for reply in self.requests.replies(id).await {
            if let Reply::Retained(found) = reply {
                messages.extend(found);
            }
        }
        messages.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        let now = Instant::now();
        let mut sessions = self.sessions.slots.borrow_mut();
        let Some(slot) = sessions.get_mut(&key) else {
            return;
        };
        for msg in messages {
            let qos = opts.qos.min(msg.qos);
            // A replay never brings a retained copy back (it lies below where the
            // subscription began), so it does not hold the cursor; except a QoS 2 one to a
            // logged session: once sent, its exchange is completed under its packet id
            // after a restart too, and its `qos2_sent` entry lasts only while the cursor
            // is not past its message (see "Recovered exchanges keep their packet ids").
            let holds_cursor = qos == QoS::ExactlyOnce && slot.session.logged && msg.log.is_some();
            let delivery = Delivery {
                qos,
                retain: true,
                subscription_ids: opts.subscription_id.into_iter().collect(),
                share_group: None,
                holds_cursor,
                msg,
            };
            self.offer(slot, delivery, now);
        }
    }

    /// Unsubscribes; per filter, whether a subscription existed.
    pub fn unsubscribe(&self, key: SessionKey, filters: &[String]) -> Vec<ReasonCode> {
        filters
            .iter()
            .map(|filter| {
                let logged_as = {
                    let mut sessions = self.sessions.slots.borrow_mut();
                    sessions.get_mut(&key).and_then(|slot| {
                        let s = &mut slot.session;
                        s.subscriptions.remove(filter.as_str())?;
                        Some(s.logged.then(|| s.client_id.clone()))
                    })
                };
                if let Some(logged_as) = logged_as {
                    self.unindex_subscription(key, filter);
                    if let Some(client) = logged_as {
                        let record = SessionRecord::Unsubscribe {
                            filter: filter.clone(),
                        };
                        self.log_session(client.as_str(), &record, false);
                    }
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect()
    }
}
