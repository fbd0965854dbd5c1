//! WAL retention through the real broker: whole segments past the limit go only once no
//! persistent session needs them, and retained messages outlive the segment they were
//! first written in (also across kill -9).

mod common;

use std::time::Duration;

use common::raw::{Conn, Connect, Publish};
use common::*;

fn broker(dir: &std::path::Path) -> Broker {
    Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(dir.to_path_buf()),
        env: vec![
            ("SHARDMQ_SEGMENT_BYTES".into(), "1048576".into()),
            // Everything but the active segment is over the limit.
            ("SHARDMQ_RETENTION_BYTES".into(), "1".into()),
        ],
        ..BrokerOptions::default()
    })
}

#[test]
fn segments_go_only_when_no_session_needs_them_and_retained_messages_stay() {
    let dir = temp_dir();
    let mut b = broker(dir.path());
    let session = Connect::v5("retention-sub")
        .clean(false)
        .session_expiry(3600);
    let (mut sub, _) = Conn::connect(b.mqtt, &session);
    sub.sub("ret/data", 1);
    sub.disconnect(0);
    let mut publ = Conn::client(b.mqtt, true, "retention-pub");
    publ.publish(Publish::new("ret/keep", b"retained", 1).retain(true));
    publ.publish(Publish::new("ret/data", b"for the offline session", 1));
    let bulk = vec![b'b'; 1024];
    for _ in 0..3000 {
        publ.publish(Publish::new("ret/bulk", &bulk, 1));
    }
    // Four floor rounds: the offline session's queued message holds the first segment.
    std::thread::sleep(Duration::from_millis(4500));
    let held = b.metric_sum("shardmq_wal_segments");
    assert!(held >= 3.0, "segments held by the session: {held}");

    let (mut sub, ack) = Conn::connect(b.mqtt, &session);
    assert!(ack.session_present);
    assert_eq!(sub.expect_publish().payload, b"for the offline session");
    assert!(
        eventually(Duration::from_secs(15), || b
            .metric_sum("shardmq_wal_segments")
            <= 2.0),
        "segments deleted once acknowledged: {}",
        b.metric_sum("shardmq_wal_segments")
    );
    sub.kill();
    b.child.kill().expect("SIGKILL");
    b.child.wait().unwrap();

    let b = broker(dir.path());
    let mut check = Conn::client(b.mqtt, true, "retention-check");
    check.sub("ret/keep", 1);
    let p = check.expect_publish();
    assert!(p.retain);
    assert_eq!(
        p.payload, b"retained",
        "written again before its segment went"
    );
}
