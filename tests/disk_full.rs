//! A full disk through the real broker: the WAL sits on a small ext4 file system
//! (a loop mount, so the test needs root, as CI has), publishes are refused with v5
//! reason 0x97 once no new segment fits, nothing refused is ever acknowledged, and
//! everything that was acknowledged is still delivered after a restart with room again.

mod common;

use std::path::Path;
use std::time::Duration;

use common::disk::SmallDisk;
use common::raw::{Conn, Connect, Publish};
use common::*;

fn broker(data: &Path) -> Broker {
    Broker::start_with(BrokerOptions {
        shards: 1,
        data_dir: Some(data.to_path_buf()),
        env: vec![("SHARDMQ_SEGMENT_BYTES".into(), "1048576".into())],
        ..BrokerOptions::default()
    })
}

#[test]
fn a_full_disk_refuses_publishes_with_0x97_and_loses_nothing_acknowledged() {
    let disk = SmallDisk::new(24);
    let data = disk.mount.join("data");
    std::fs::create_dir(&data).unwrap();
    // Leaves room for a handful of 1 MiB segments; removed later to make room again.
    let filler = disk.mount.join("filler");
    std::fs::write(&filler, vec![1u8; 14 << 20]).unwrap();
    let acked;
    {
        let mut b = broker(&data);
        let session = Connect::v5("full-sub").clean(false).session_expiry(3600);
        let (mut sub, _) = Conn::connect(b.mqtt, &session);
        sub.sub("full/#", 1);
        sub.disconnect(0);
        let mut publ = Conn::client(b.mqtt, true, "full-pub");
        let payload = vec![b'f'; 16 << 10];
        let mut ok = 0u32;
        let mut refused = None;
        for seq in 0..4000u32 {
            let mut body = seq.to_be_bytes().to_vec();
            body.extend_from_slice(&payload);
            match publ.publish(Publish::new("full/t", &body, 1)) {
                0 => ok += 1,
                code => {
                    refused = Some(code);
                    break;
                }
            }
        }
        assert_eq!(
            refused,
            Some(0x97),
            "refused as quota exceeded after {ok} acks"
        );
        assert!(ok > 0);
        // The broker keeps serving what needs no disk.
        let mut a = Conn::client(b.mqtt, true, "full-a");
        a.sub("nodisk/#", 0);
        publ.publish(Publish::new("nodisk/x", b"qos0", 0));
        assert_eq!(a.expect_publish().payload, b"qos0");
        assert!(
            eventually(Duration::from_secs(5), || b.log().contains("disk full")),
            "a clear log line: {}",
            b.log()
        );
        acked = ok;
        b.child.kill().unwrap();
        b.child.wait().unwrap();
    }
    std::fs::remove_file(&filler).unwrap();
    let b = broker(&data);
    let session = Connect::v5("full-sub").clean(false).session_expiry(3600);
    let (mut sub, ack) = Conn::connect(b.mqtt, &session);
    assert!(ack.session_present);
    for want in 0..acked {
        let p = sub
            .try_publish(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("only {want} of {acked} acknowledged messages came back"));
        let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
        assert_eq!(seq, want, "in order, none lost");
    }
}
