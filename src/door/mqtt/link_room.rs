//! Taking turns at a backlogged mesh link.
//!
//! Before a PUBLISH is routed the reader waits while a mesh link of its shard is over
//! `mesh_link_bytes_max` (a peer, or this shard, is behind and the publish would pile up
//! in transit). The links drain on other threads, which cannot wake a task here, so the
//! waiters poll. Polling alone is a race that the busiest connection wins: a publisher
//! whose socket never runs dry is back at the link the instant it has room, and a
//! QoS 1 publisher on the same shard was seen starved for seconds. So the waiters queue:
//! while anyone waits, a publisher joins the back of the queue, and only the head passes
//! once the link has room. The head then holds the turn, and keeps passing until the
//! link is full again, when it joins the back like anyone else.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Duration;

use super::Door;
use crate::metrics::Limit;

use super::conn::Conn;

/// How often a waiting reader checks the links again.
const POLL: Duration = Duration::from_micros(200);

/// The connections of one shard waiting for mesh room, in arrival order.
#[derive(Default)]
pub struct LinkTurns {
    waiting: RefCell<VecDeque<u64>>,
    /// The connection that last passed from the head of the queue.
    turn: Cell<Option<u64>>,
}

/// A place in the queue, given up however the wait ends (a dropped task included).
struct Place<'a> {
    turns: &'a LinkTurns,
    token: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.turns.waiting.borrow_mut().retain(|&t| t != self.token);
    }
}

/// Waits until `conn` may route a PUBLISH across the mesh (see the module docs).
/// Only publishes wait: a subscriber's acks and pings go on, or its deliveries would
/// stall with the link. Mesh receivers never wait here, or two shards waiting on each
/// other's links would deadlock.
pub(super) async fn wait_for_mesh_room(door: &Door, conn: &Conn) {
    let bytes_max = door.config.mesh_link_bytes_max;
    let turns = &door.connections.turns;
    let nobody_waits = turns.waiting.borrow().is_empty();
    let holds_turn = turns.turn.get() == Some(conn.link.token);
    if (nobody_waits || holds_turn) && !door.broker.mesh.backlogged(bytes_max) {
        return;
    }
    door.probe.hit(Limit::MeshLinkBytesMax);
    turns.waiting.borrow_mut().push_back(conn.link.token);
    let _place = Place {
        turns,
        token: conn.link.token,
    };
    loop {
        glommio::timer::sleep(POLL).await;
        if conn.link.closing().is_some() {
            return;
        }
        let at_head = turns.waiting.borrow().front() == Some(&conn.link.token);
        if at_head && !door.broker.mesh.backlogged(bytes_max) {
            turns.turn.set(Some(conn.link.token));
            return;
        }
    }
}
