//! The Kafka door, black-box: a real broker with `kafka_listen` and `kafka_topics`,
//! driven by kcat (librdkafka, Debian's `kcat`) and by hand-made frames for bad input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Broker, BrokerOptions};

/// How long anything that must happen may take.
const WAIT: Duration = Duration::from_secs(10);

/// Whether kcat is here; under CI its absence fails the test.
fn have_kcat() -> bool {
    common::tool_present(
        Command::new("kcat").arg("-V"),
        "kcat",
        "apt-get install kcat",
    )
}

/// Whether kafka-python (PyPI `kafka-python`, a pure-Python client) imports here;
/// under CI its absence fails the test.
fn have_kafka_python() -> bool {
    common::tool_present(
        Command::new("python3").args(["-c", "import kafka"]),
        "kafka-python",
        "pip install kafka-python",
    )
}

/// Whether both kcat and kafka-python are here (under CI their absence fails).
fn have_kafka_tools() -> bool {
    have_kcat() && have_kafka_python()
}

/// Runs the kafka-python script `PY` in `mode` against `addr`; its stdout.
fn python(addr: SocketAddr, mode: &str, rest: &[&str]) -> String {
    let out = Command::new("python3")
        .args(["-c", PY, mode, &addr.to_string()])
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "kafka-python {mode}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// kafka-python scripts: `MODE BROKER ...`.
/// - `group TOPIC N`: two consumers of group `pyg`, each polled by a thread of its own,
///   split TOPIC's partitions; the second leaves and the first takes them all; prints
///   the assignments and then `read N` once the first has read N records from the
///   beginning, and commits them.
/// - `commit TOPIC N`: one consumer of group `pyc` reads N records and commits
///   synchronously; prints `committed N`.
/// - `resume TOPIC`: group `pyc` reads what is left after its committed offsets (until
///   a second passes without a record); prints `first OFFSETS` (per partition, the
///   offset of its first record) and `rest N`.
/// - `idempotent TOPIC N`: an idempotent producer (acks all) sends N records.
/// - `create TOPIC PARTITIONS REPLICATION [KEY=VALUE ...]`: the admin client's
///   CreateTopics; prints `created` or the error's class name.
/// - `delete TOPIC`: the admin client's DeleteTopics; prints `deleted` or the error's
///   class name.
/// - `committed GROUP TOPIC PARTITIONS`: GROUP's committed offsets of TOPIC's first
///   PARTITIONS partitions (OffsetFetch); prints `PARTITION OFFSET` per commit found.
/// - `configs TOPIC`: the admin client's DescribeConfigs of TOPIC; prints
///   `NAME=VALUE SOURCE` per config.
const PY: &str = r#"
import sys, time
from kafka import KafkaConsumer, KafkaProducer

mode, broker = sys.argv[1], sys.argv[2]

def consumer(group, topic):
    c = KafkaConsumer(bootstrap_servers=broker, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, session_timeout_ms=6000,
                      heartbeat_interval_ms=500, consumer_timeout_ms=1000)
    c.subscribe([topic])
    # The topic's partitions, known before the first join, are in the first assignment.
    # Otherwise the consumer, leading its group, joins again once it learns them, and
    # kafka-python stops waiting for that join if a poll times out between the
    # assignment and the SyncGroup answer: the consumer never takes its partitions and
    # its session expires.
    c.partitions_for_topic(topic)
    return c

def parts(c):
    return sorted(tp.partition for tp in c.assignment())

def until(cond, what, limit=30):
    end = time.time() + limit
    while not cond():
        if time.time() > end:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.01)

if mode == "group":
    import threading
    topic, n = sys.argv[3], int(sys.argv[4])

    class Member(threading.Thread):
        # A consumer of group pyg polled without pause by a thread of its own, as an
        # application's poll loop does. kafka-python takes in a rebalance's outcome only
        # inside poll(): a join answered while no poll waits for it is thrown away and
        # sent again, and a leader's join starts a rebalance. Two consumers polled in
        # turn from one thread can so keep each other rebalancing: the leader's join
        # is answered while the other consumer is polled, and so on.
        def __init__(self):
            super().__init__(daemon=True)
            self.c = consumer("pyg", topic)
            self.parts, self.seen, self.todo, self.running = [], set(), [], True
            self.start()

        def run(self):
            while self.running:
                while self.todo:
                    self.todo.pop(0)()
                for records in self.c.poll(timeout_ms=100).values():
                    self.seen.update((r.partition, r.offset) for r in records)
                self.parts = parts(self.c)
            self.c.close()

        def call(self, f):
            # f(consumer) on the polling thread, between two polls.
            done = threading.Event()
            self.todo.append(lambda: (f(self.c), done.set()))
            if not done.wait(30):
                sys.exit("timed out waiting for a call to the consumer")

        def stop(self):
            self.running = False
            self.join(30)

    a = Member()
    until(lambda: len(a.parts) == 4, "a alone")
    b = Member()
    until(lambda: len(a.parts) + len(b.parts) == 4 and a.parts and b.parts, "the split")
    print("split", a.parts, b.parts)
    b.stop()
    until(lambda: len(a.parts) == 4, "a again")
    print("after", a.parts)
    a.call(lambda c: (c.seek_to_beginning(), a.seen.clear()))
    until(lambda: len(a.seen) >= n, "the records")
    a.call(lambda c: c.commit())
    print("read", len(a.seen))
    a.stop()
elif mode == "commit":
    topic, n = sys.argv[3], int(sys.argv[4])
    c = consumer("pyc", topic)
    got = 0
    def read():
        global got
        for records in c.poll(timeout_ms=200, max_records=n - got).values():
            got += len(records)
        return got >= n
    until(read, "the records")
    c.commit()
    print("committed", got)
    c.close()
elif mode == "resume":
    topic = sys.argv[3]
    c = consumer("pyc", topic)
    first, rest = {}, 0
    for r in c:
        first.setdefault(r.partition, r.offset)
        rest += 1
    print("first", sorted(first.items()))
    print("rest", rest)
    c.close()
elif mode == "configs":
    from kafka.admin import KafkaAdminClient, ConfigResource, ConfigResourceType
    admin = KafkaAdminClient(bootstrap_servers=broker)
    found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, sys.argv[3])],
                                   config_filter="all")
    for name, entry in sorted(found["topic"][sys.argv[3]].items()):
        print(name + "=" + str(entry["value"]) + " " + str(entry["config_source"]))
    admin.close()
elif mode in ("create", "delete"):
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        if mode == "create":
            configs = dict(kv.split("=", 1) for kv in sys.argv[6:])
            admin.create_topics([NewTopic(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                                          topic_configs=configs)])
        else:
            admin.delete_topics([sys.argv[3]])
        print(mode + "d")
    except Exception as e:
        print(type(e).__name__)
    admin.close()
elif mode == "committed":
    from kafka import TopicPartition
    c = KafkaConsumer(bootstrap_servers=broker, group_id=sys.argv[3], enable_auto_commit=False)
    for p in range(int(sys.argv[5])):
        offset = c.committed(TopicPartition(sys.argv[4], p))
        if offset is not None:
            print(p, offset)
    c.close()
elif mode == "idempotent":
    topic, n = sys.argv[3], int(sys.argv[4])
    p = KafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=True)
    sent = [p.send(topic, key=b"k%d" % (i % 7), value=b"idem-%d" % i) for i in range(n)]
    p.flush()
    for f in sent:
        f.get(timeout=10)
    p.close()
    print("sent", n)
"#;

/// A broker serving `telemetry` (4 partitions) and `audit` (1) over Kafka, in
/// `data_dir` (a fresh one when `None`).
fn kafka_broker(
    shards: usize,
    data_dir: Option<std::path::PathBuf>,
) -> (Broker, tempfile::TempDir) {
    kafka_broker_with(shards, data_dir, "", &[])
}

/// [`kafka_broker`] with more of the config file (`extra`, after the topics) and
/// settings (`SHARDMQ_*` names without the prefix) in the environment.
fn kafka_broker_with(
    shards: usize,
    data_dir: Option<std::path::PathBuf>,
    extra: &str,
    settings: &[(&str, &str)],
) -> (Broker, tempfile::TempDir) {
    let dir = common::temp_dir();
    let config = dir.path().join("shardmq.toml");
    let topics = "kafka_listen = \"127.0.0.1:0\"\n\
                  [[kafka_topics]]\nname = \"telemetry\"\npartitions = 4\n\
                  [[kafka_topics]]\nname = \"audit\"\npartitions = 1\n";
    std::fs::write(&config, format!("{topics}{extra}")).unwrap();
    let broker = Broker::start_with(BrokerOptions {
        shards,
        args: vec!["--config".into(), config.display().to_string()],
        env: common::settings_env(settings),
        data_dir,
    });
    (broker, dir)
}

/// Sends SIGKILL and waits until the broker is gone.
fn kill_9(broker: &mut Broker) {
    broker.signal(libc::SIGKILL);
    assert!(broker.wait_exit(WAIT).is_some(), "killed");
}

/// Runs kcat against `addr` with `args`, `stdin` as its input; asserts nothing.
fn kcat_raw(addr: SocketAddr, args: &[String], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(addr.to_string())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// [`kcat_raw`] that must succeed.
fn kcat(addr: SocketAddr, args: &[&str], stdin: Option<&str>) -> Output {
    let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = kcat_raw(addr, &owned, stdin);
    assert!(
        out.status.success(),
        "kcat {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Produces `key:value` lines with acks=all; fails on any delivery error.
fn produce(addr: SocketAddr, topic: &str, lines: &[String]) {
    let input = lines.join("\n") + "\n";
    let out = kcat(
        addr,
        &[
            "-P",
            "-t",
            topic,
            "-K:",
            "-X",
            "acks=all",
            "-X",
            "message.timeout.ms=10000",
        ],
        Some(&input),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Delivery failed"), "{stderr}");
}

/// Everything in `topic` from the beginning: `(partition, offset, key, value)`.
fn consume_all(addr: SocketAddr, topic: &str) -> Vec<(u32, i64, String, String)> {
    let out = kcat(
        addr,
        &[
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p %o %k %s\\n",
        ],
        None,
    );
    let mut records = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let mut next = || parts.next().expect("four fields").to_string();
            (
                next().parse().unwrap(),
                next().parse().unwrap(),
                next(),
                next(),
            )
        })
        .collect::<Vec<_>>();
    // kcat interleaves partitions as their fetches return: by partition and offset (a
    // sort, not a set: a record served twice must show).
    records.sort();
    records
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}-key-{i}:{prefix}-value-{i}"))
        .collect()
}

/// Per partition, its offsets are 0, 1, 2, … with no gap, in the order produced.
fn assert_dense(records: &[(u32, i64, String, String)]) {
    let mut by_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (p, o, _, _) in records {
        by_partition.entry(*p).or_default().push(*o);
    }
    for (p, offsets) in by_partition {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {p}");
    }
}

/// kcat lists the topics, produces keyed records with acks=all (spread over the
/// partitions by key, each partition owned by one of two shards) and reads every one
/// back once, in offset order with dense offsets; a consumer from an offset gets the
/// rest of its partition; an offset lookup by time finds the first batch at or after it.
#[test]
fn kcat_produces_and_consumes_across_partitions_and_shards() {
    if !have_kcat() {
        return;
    }
    let (broker, _dir) = kafka_broker(2, None);
    let addr = broker.kafka.expect("kafka_listen resolved");

    let listing = kcat(addr, &["-L", "-J"], None);
    let meta: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let topics: BTreeMap<String, usize> = meta["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().unwrap().to_string(),
                t["partitions"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        topics,
        BTreeMap::from([("audit".to_string(), 1), ("telemetry".to_string(), 4)])
    );

    let sent = lines("t", 400);
    produce(addr, "telemetry", &sent);
    let got = consume_all(addr, "telemetry");
    assert_eq!(got.len(), sent.len(), "every record, once");
    let pairs: BTreeSet<String> = got.iter().map(|(_, _, k, v)| format!("{k}:{v}")).collect();
    assert_eq!(pairs, sent.iter().cloned().collect::<BTreeSet<_>>());
    let partitions: BTreeSet<u32> = got.iter().map(|r| r.0).collect();
    assert_eq!(partitions.len(), 4, "keys spread over every partition");
    assert_dense(&got);
    // Fetches far smaller than the data (a few batches each) still read it all.
    let small = kcat(
        addr,
        &[
            "-C",
            "-t",
            "telemetry",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p %o\\n",
            "-X",
            "fetch.max.bytes=2000",
            "-X",
            "message.max.bytes=2000",
            "-X",
            "max.partition.fetch.bytes=1000",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8(small.stdout).unwrap().lines().count(),
        sent.len()
    );
    // Within a partition, records keep the order they were produced in.
    for p in 0..4 {
        let values: Vec<usize> = got
            .iter()
            .filter(|r| r.0 == p)
            .map(|r| r.3.rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: {values:?}"
        );
    }

    // From offset 5 of partition 0: the rest of it.
    let in_zero: Vec<&(u32, i64, String, String)> = got.iter().filter(|r| r.0 == 0).collect();
    let tail = kcat(
        addr,
        &[
            "-C",
            "-t",
            "telemetry",
            "-p",
            "0",
            "-o",
            "5",
            "-e",
            "-q",
            "-f",
            "%o %s\\n",
        ],
        None,
    );
    let tail: Vec<String> = String::from_utf8(tail.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let expected: Vec<String> = in_zero[5..]
        .iter()
        .map(|r| format!("{} {}", r.1, r.3))
        .collect();
    assert_eq!(tail, expected);

    // By time: before everything is offset 0; after everything there is none (-1).
    let query = |spec: &str| {
        let out = kcat(addr, &["-Q", "-t", spec], None);
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        query("audit:0:0").contains("offset -1"),
        "an empty partition"
    );
    assert!(query("telemetry:0:1").contains("offset 0"));
    let far_future = "telemetry:0:9999999999999";
    assert!(query(far_future).contains("offset -1"));
}

/// What the broker acknowledged (acks=all, fsync_policy always) is there after kill -9
/// and a restart, at the same offsets, and new records continue the offsets.
#[test]
fn acknowledged_records_survive_kill_9() {
    if !have_kcat() {
        return;
    }
    let data = common::temp_dir();
    let (mut broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    let addr = broker.kafka.unwrap();
    let first = lines("a", 300);
    produce(addr, "telemetry", &first);
    produce(addr, "audit", &lines("audit", 20));
    let before = consume_all(addr, "telemetry");
    assert_eq!(before.len(), 300);

    kill_9(&mut broker);
    let (broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    let addr = broker.kafka.unwrap();
    assert_eq!(
        consume_all(addr, "telemetry"),
        before,
        "the same records at the same offsets"
    );
    assert_eq!(consume_all(addr, "audit").len(), 20);

    produce(addr, "telemetry", &lines("b", 100));
    let after = consume_all(addr, "telemetry");
    assert_eq!(after.len(), 400);
    assert_dense(&after);
}

/// A hand-made Produce v3 request for `topic`/`partition` with `records`.
fn produce_v3(correlation_id: i32, topic: &str, partition: i32, records: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // Produce
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(b"test");
    body.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks all
    body.extend_from_slice(&5000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&(records.len() as i32).to_be_bytes());
    body.extend_from_slice(records);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// One record batch (magic 2) holding one record with `value`, CRC-32C right.
fn record_batch(value: &[u8]) -> Vec<u8> {
    record_batch_from(value, -1, -1, -1)
}

/// [`record_batch`] from an idempotent producer: its id, epoch and the sequence.
fn record_batch_from(value: &[u8], producer_id: i64, epoch: i16, sequence: i32) -> Vec<u8> {
    // Record: attributes, timestamp delta, offset delta, key -1, value, no headers; the
    // varints zigzag-encoded.
    let mut record = vec![0u8, 0, 0, 1];
    record.push((value.len() as u8) << 1);
    record.extend_from_slice(value);
    record.push(0);
    let mut records = vec![(record.len() as u8) << 1];
    records.extend_from_slice(&record);
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&sequence.to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&records);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Sends `frame` and reads one response frame: its bytes after the correlation id.
fn exchange(stream: &mut TcpStream, frame: &[u8]) -> Vec<u8> {
    stream.write_all(frame).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("a response");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).unwrap();
    body[4..].to_vec()
}

/// The error code and base offset of a one-partition Produce v3 response.
fn produce_answer(response: &[u8]) -> (i16, i64) {
    // topics count, name, partitions count, index, then error code and base offset.
    let name_len = i16::from_be_bytes([response[4], response[5]]) as usize;
    let at = 6 + name_len + 4 + 4;
    let code = i16::from_be_bytes([response[at], response[at + 1]]);
    let base = i64::from_be_bytes(response[at + 2..at + 10].try_into().unwrap());
    (code, base)
}

/// Whether the broker closed `stream` (a read returns end of stream or a reset).
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

/// Bad input: a batch with a bad CRC gets CORRUPT_MESSAGE and stores nothing, an
/// unknown partition UNKNOWN_TOPIC_OR_PARTITION, an idempotent producer's resend its
/// first offset and a gap in its sequence OUT_OF_ORDER_SEQUENCE_NUMBER; an unknown API
/// key, a frame over the size limit and a header that does not decode close that
/// connection only — the others, and kcat, go on.
#[test]
fn bad_input_gets_its_error_or_a_closed_connection_and_nothing_else() {
    if !have_kcat() {
        return;
    }
    let (broker, _dir) = kafka_broker(2, None);
    let addr = broker.kafka.unwrap();
    let mut good = TcpStream::connect(addr).unwrap();
    good.set_read_timeout(Some(WAIT)).unwrap();

    let batch = record_batch(b"kept");
    let (code, base) = produce_answer(&exchange(&mut good, &produce_v3(1, "audit", 0, &batch)));
    assert_eq!((code, base), (0, 0), "a good batch is stored at offset 0");
    let mut bad = batch.clone();
    let last = bad.len() - 2;
    bad[last] ^= 0xff;
    let (code, _) = produce_answer(&exchange(&mut good, &produce_v3(2, "audit", 0, &bad)));
    assert_eq!(code, 2, "CORRUPT_MESSAGE");
    let (code, _) = produce_answer(&exchange(&mut good, &produce_v3(3, "audit", 7, &batch)));
    assert_eq!(code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let (code, _) = produce_answer(&exchange(&mut good, &produce_v3(4, "nowhere", 0, &batch)));
    assert_eq!(code, 3, "UNKNOWN_TOPIC_OR_PARTITION");

    let mut unknown_key = TcpStream::connect(addr).unwrap();
    unknown_key
        .write_all(&[0, 0, 0, 8, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1])
        .unwrap();
    assert!(
        closed(&mut unknown_key),
        "an unknown API key closes the connection"
    );

    let mut oversized = TcpStream::connect(addr).unwrap();
    oversized.write_all(&i32::MAX.to_be_bytes()).unwrap();
    assert!(
        closed(&mut oversized),
        "a frame over the limit closes the connection"
    );

    let mut garbled = TcpStream::connect(addr).unwrap();
    // Produce v3 whose client id claims more bytes than the frame has.
    garbled
        .write_all(&[0, 0, 0, 10, 0, 0, 0, 3, 0, 0, 0, 9, 0x7f, 0])
        .unwrap();
    assert!(
        closed(&mut garbled),
        "a header that does not decode closes the connection"
    );

    // The first connection and the topic are untouched: one record, the good one.
    let (code, base) = produce_answer(&exchange(&mut good, &produce_v3(5, "audit", 0, &batch)));
    assert_eq!((code, base), (0, 1));

    // An idempotent producer's resend is answered with the first copy's offset and not
    // stored again; a gap in its sequence is OUT_OF_ORDER_SEQUENCE_NUMBER, an older
    // epoch INVALID_PRODUCER_EPOCH.
    let seq0 = record_batch_from(b"once", 77, 3, 0);
    let (code, base) = produce_answer(&exchange(&mut good, &produce_v3(6, "audit", 0, &seq0)));
    assert_eq!((code, base), (0, 2));
    let (code, base) = produce_answer(&exchange(&mut good, &produce_v3(7, "audit", 0, &seq0)));
    assert_eq!(
        (code, base),
        (0, 2),
        "the resend gets the first copy's offset"
    );
    let gap = record_batch_from(b"gap", 77, 3, 5);
    let (code, _) = produce_answer(&exchange(&mut good, &produce_v3(8, "audit", 0, &gap)));
    assert_eq!(code, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    let fenced = record_batch_from(b"fenced", 77, 2, 1);
    let (code, _) = produce_answer(&exchange(&mut good, &produce_v3(9, "audit", 0, &fenced)));
    assert_eq!(code, 47, "INVALID_PRODUCER_EPOCH");
    let seq1 = record_batch_from(b"twice", 77, 3, 1);
    let (code, base) = produce_answer(&exchange(&mut good, &produce_v3(10, "audit", 0, &seq1)));
    assert_eq!((code, base), (0, 3));

    let all = consume_all(addr, "audit");
    let values: Vec<&str> = all.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(values, ["kept", "kept", "once", "twice"]);
}

/// Partitions stay on the shards that own them: with Kafka data in the logs, a start
/// with another shard count is refused before anything moves, with the reason, and the
/// old count still serves every record.
#[test]
fn a_shard_count_change_is_refused_while_kafka_partitions_live_in_the_logs() {
    if !have_kcat() {
        return;
    }
    let data = common::temp_dir();
    let (mut broker, dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    produce(broker.kafka.unwrap(), "telemetry", &lines("kept", 50));
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(WAIT).is_some_and(|s| s.success()));

    let refused = Broker::try_start(BrokerOptions {
        shards: 1,
        args: vec![
            "--config".into(),
            dir.path().join("shardmq.toml").display().to_string(),
        ],
        data_dir: Some(data.path().to_path_buf()),
        ..BrokerOptions::default()
    });
    let Err((status, log)) = refused else {
        panic!("a start with another shard count must be refused");
    };
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("holds Kafka partitions"), "{log}");

    let (broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    assert_eq!(consume_all(broker.kafka.unwrap(), "telemetry").len(), 50);
}

/// A topic's retention drops its old batches: the partition's first offset moves up,
/// the log's segments that held only them are deleted, and a consumer from the
/// beginning starts at the first offset kept. A topic without retention keeps all.
#[test]
fn retention_by_age_drops_old_batches_and_their_segments() {
    if !have_kcat() {
        return;
    }
    let (broker, _dir) = kafka_broker_with(
        1,
        None,
        "[[kafka_topics]]\nname = \"short\"\npartitions = 1\nretention_ms = 1000\n",
        &[("SEGMENT_BYTES", "1048576"), ("RETENTION_BYTES", "1")],
    );
    let addr = broker.kafka.unwrap();
    let value = "v".repeat(1000);
    let bulk: Vec<String> = (0..3000).map(|i| format!("k{i}:{value}")).collect();
    produce(addr, "short", &bulk);
    produce(addr, "audit", &lines("kept-forever", 3));
    let earliest = || {
        let out = kcat(addr, &["-Q", "-t", "short:0:-2"], None);
        let text = String::from_utf8(out.stdout).unwrap();
        text.rsplit("offset ")
            .next()
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(earliest(), 0);
    let segments = broker.metric_sum("shardmq_wal_segments");
    assert!(segments >= 3.0, "3 MB in 1 MB segments: {segments}");
    // Past the age and a few retention rounds: the first offset moves up and the
    // segments below it go (the audit records sit in the newest segment).
    assert!(
        common::eventually(Duration::from_secs(20), || earliest() > 0
            && broker.metric_sum("shardmq_wal_segments") <= 2.0),
        "earliest {}, segments {}",
        earliest(),
        broker.metric_sum("shardmq_wal_segments")
    );
    let first = earliest();
    let left = consume_all(addr, "short");
    assert_eq!(
        left.first().map(|r| r.1),
        Some(first),
        "served from the first offset kept"
    );
    assert_eq!(
        left.last().map(|r| r.1),
        Some(2999),
        "the newest batch stays"
    );
    assert_eq!(consume_all(addr, "audit").len(), 3);
}

/// kcat's consumer group (the high-level consumer of librdkafka): the first run reads
/// everything and commits; a second run of the same group starts at the commits.
#[test]
fn kcat_group_consumers_resume_from_their_commits() {
    if !have_kcat() {
        return;
    }
    let (broker, _dir) = kafka_broker(2, None);
    let addr = broker.kafka.unwrap();
    produce(addr, "telemetry", &lines("g", 120));
    let group_read = || {
        let out = kcat(
            addr,
            &[
                "-G",
                "kcat-group",
                "telemetry",
                "-e",
                "-q",
                "-f",
                "%p %o\\n",
                "-X",
                "auto.offset.reset=earliest",
                "-X",
                "enable.auto.commit=true",
                "-X",
                "auto.commit.interval.ms=100",
            ],
            None,
        );
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert_eq!(group_read(), 120, "the first run reads everything");
    produce(addr, "telemetry", &lines("h", 30));
    assert_eq!(
        group_read(),
        30,
        "the second run only what came after the commits"
    );
}

/// kafka-python, a client independent of librdkafka: two consumers of one group split
/// the partitions, and when one leaves the other takes them all and reads everything;
/// an idempotent producer's records arrive once each with dense offsets.
#[test]
fn kafka_python_group_rebalances_when_a_member_leaves() {
    if !have_kafka_tools() {
        return;
    }
    // The group's joins, syncs and heartbeats refused in the log a failure shows.
    let (broker, _dir) = kafka_broker_with(
        2,
        None,
        "",
        &[(
            "LOG_LEVEL",
            "info,shardmq::shard=debug,shardmq::broker::kafka::groups=debug",
        )],
    );
    let addr = broker.kafka.unwrap();
    assert!(python(addr, "idempotent", &["telemetry", "200"]).contains("sent 200"));
    let all = consume_all(addr, "telemetry");
    assert_eq!(all.len(), 200, "each record once");
    assert_dense(&all);
    let out = python(addr, "group", &["telemetry", "200"]);
    let split = out.lines().find(|l| l.starts_with("split")).expect(&out);
    assert!(
        split.contains("[0, 1]") || split.contains("[0, 2]") || split.contains("[0, 3]"),
        "{out}"
    );
    assert!(out.contains("after [0, 1, 2, 3]"), "{out}");
    assert!(out.contains("read 200"), "{out}");
}

/// Offsets committed by a consumer group (kafka-python, synchronous commit) are there
/// after kill -9: the group resumes right after them.
#[test]
fn committed_offsets_survive_kill_9() {
    if !have_kafka_tools() {
        return;
    }
    let data = common::temp_dir();
    let (mut broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    let addr = broker.kafka.unwrap();
    produce(addr, "audit", &lines("c", 100));
    assert!(python(addr, "commit", &["audit", "60"]).contains("committed 60"));
    kill_9(&mut broker);
    let (broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    let out = python(broker.kafka.unwrap(), "resume", &["audit"]);
    assert!(out.contains("first [(0, 60)]"), "{out}");
    assert!(out.contains("rest 40"), "{out}");
}

/// `shardmq produce`, `consume`, `topics` and `groups` against a running broker: what
/// the CLI produces kcat reads back, what kcat produced the CLI prints, and a group the
/// CLI consumed with shows its commits at the end of each partition (lag 0).
#[test]
fn the_cli_produces_consumes_and_describes() {
    if !have_kcat() {
        return;
    }
    let (broker, _dir) = kafka_broker(2, None);
    let addr = broker.kafka.unwrap();
    let cli = |args: &[&str], input: Option<&str>| {
        let mut child = common::shardmq()
            .args(args)
            .args(["--bootstrap", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shardmq");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "shardmq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let sent = lines("cli", 30);
    let report = cli(
        &["produce", "telemetry", "-K", ":"],
        Some(&(sent.join("\n") + "\n")),
    );
    assert!(report.contains("records from offset 0"), "{report}");
    let by_kcat: BTreeSet<String> = consume_all(addr, "telemetry")
        .into_iter()
        .map(|(_, _, k, v)| format!("{k}:{v}"))
        .collect();
    assert_eq!(by_kcat, sent.iter().cloned().collect::<BTreeSet<_>>());

    produce(addr, "audit", &lines("from-kcat", 5));
    let printed = cli(&["consume", "audit", "-v"], None);
    let values: Vec<&str> = printed
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        values,
        (0..5)
            .map(|i| format!("from-kcat-value-{i}"))
            .collect::<Vec<_>>()
    );

    let described = cli(&["topics", "describe", "telemetry"], None);
    let records: i64 = described
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().last().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(records, 30, "{described}");
    assert!(cli(&["topics", "list"], None).contains("audit"));

    let made = cli(&["topics", "create", "cli-made", "-p", "3"], None);
    assert!(
        made.contains("created cli-made with 3 partitions"),
        "{made}"
    );
    produce(addr, "cli-made", &lines("made", 9));
    assert_eq!(consume_all(addr, "cli-made").len(), 9, "kcat uses it");
    cli(&["topics", "delete", "cli-made"], None);
    assert!(!cli(&["topics", "list"], None).contains("cli-made"));

    assert_eq!(
        cli(&["consume", "telemetry", "-g", "cli-group"], None)
            .lines()
            .count(),
        30
    );
    assert!(cli(&["groups", "list"], None).contains("cli-group"));
    let group = cli(&["groups", "describe", "cli-group"], None);
    let lags: Vec<&str> = group
        .lines()
        .filter(|l| l.starts_with("telemetry"))
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(lags, ["0", "0", "0", "0"], "{group}");
    assert_eq!(
        cli(&["consume", "telemetry", "-g", "cli-group"], None),
        "",
        "the group resumes after its commits"
    );
}

/// With `allow_anonymous = false` a Kafka client must authenticate with SASL PLAIN as
/// a configured user (or with an API key as the password); the topic ACL applies, a
/// Kafka topic name checked as an MQTT topic: a reader fetches but may not produce and
/// sees only its topics; no credentials or a wrong password get nothing. The CLI
/// authenticates the same way, and only a writer of a topic may create it.
#[test]
fn sasl_plain_authenticates_users_and_api_keys_and_the_acl_applies() {
    if !have_kcat() {
        return;
    }
    let extra = format!(
        "[[users]]\nusername = \"writer\"\npassword_hash = \"{}\"\n\
         [[users]]\nusername = \"reader\"\npassword_hash = \"{}\"\n\
         [[acl]]\nusername = \"writer\"\ntopic = \"#\"\naccess = \"readwrite\"\n\
         [[acl]]\nusername = \"reader\"\ntopic = \"telemetry\"\naccess = \"read\"\n",
        common::cheap_hash("w-secret"),
        common::cheap_hash("r-secret"),
    );
    let (broker, _dir) = kafka_broker_with(
        2,
        None,
        &extra,
        &[
            ("ALLOW_ANONYMOUS", "false"),
            ("API_KEYS", "the-api-key-of-the-test"),
            ("ACL_DEFAULT", "deny"),
        ],
    );
    let addr = broker.kafka.unwrap();
    // kcat with the credentials of `user` (none for "") and `args`.
    let run = |user: &str, password: &str, args: &[&str], input: Option<&str>| {
        let mut all: Vec<String> = Vec::new();
        if !user.is_empty() {
            for setting in [
                "security.protocol=SASL_PLAINTEXT".to_string(),
                "sasl.mechanisms=PLAIN".to_string(),
                format!("sasl.username={user}"),
                format!("sasl.password={password}"),
            ] {
                all.extend(["-X".to_string(), setting]);
            }
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let out = kcat_raw(addr, &all, input);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out, err)
    };
    let listing = ["-L", "-m", "5"];

    let (out, _) = run("", "", &listing, None);
    assert!(!out.status.success(), "no credentials: nothing served");
    let (out, err) = run("writer", "wrong", &listing, None);
    assert!(
        !out.status.success() && err.contains("uthentication"),
        "{err}"
    );
    let (out, err) = run("anyone", "the-api-key-of-the-test", &listing, None);
    assert!(out.status.success(), "an API key as the password: {err}");

    let input = lines("s", 10).join("\n");
    let (out, err) = run(
        "writer",
        "w-secret",
        &["-P", "-t", "telemetry", "-K:"],
        Some(&input),
    );
    assert!(out.status.success() && !err.contains("ailed"), "{err}");

    let consume = ["-C", "-t", "telemetry", "-o", "beginning", "-e", "-q"];
    let (out, err) = run("reader", "r-secret", &consume, None);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        10,
        "the reader reads"
    );

    let (out, _) = run("reader", "r-secret", &["-L", "-J"], None);
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = meta["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["telemetry"],
        "the reader sees only what it may read"
    );

    let refused = ["-P", "-t", "telemetry", "-X", "message.timeout.ms=5000"];
    let (_, err) = run("reader", "r-secret", &refused, Some("refused\n"));
    assert!(
        err.contains("uthorization"),
        "the reader may not produce: {err}"
    );
    let (out, _) = run("writer", "w-secret", &consume, None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        10,
        "nothing was added"
    );

    // The CLI authenticates the same way; creating a topic takes the right to produce.
    let cli = |credentials: &[&str], args: &[&str]| {
        let out = common::shardmq()
            .args(args)
            .args(["--bootstrap", &addr.to_string()])
            .args(credentials)
            .stdin(Stdio::null())
            .output()
            .expect("shardmq");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, _, _) = cli(&[], &["topics", "list"]);
    assert!(!ok, "no credentials: nothing served");
    let (ok, _, err) = cli(
        &["--username", "reader", "--password", "wrong"],
        &["topics", "list"],
    );
    assert!(!ok && err.contains("SASL PLAIN"), "{err}");
    let reader = ["--username", "reader", "--password", "r-secret"];
    let (ok, listed, err) = cli(&reader, &["topics", "list"]);
    assert!(ok, "{err}");
    assert!(
        listed.contains("telemetry") && !listed.contains("audit"),
        "{listed}"
    );
    let (ok, _, err) = cli(&reader, &["topics", "create", "by-reader"]);
    assert!(!ok && err.contains("TopicAuthorizationFailed"), "{err}");
    let writer = ["--username", "writer", "--password", "w-secret"];
    let (ok, made, err) = cli(&writer, &["topics", "create", "by-writer", "-p", "2"]);
    assert!(ok && made.contains("created by-writer"), "{err}");
}

/// A Kafka topic `sensors` shared with MQTT's `sensors/#`.
const SENSORS_MAPPED: &str =
    "[[kafka_topics]]\nname = \"sensors\"\npartitions = 3\nmqtt_filter = \"sensors/#\"\n";

/// Publishes `messages` (topic, payload) with QoS 1 over MQTT (rumqttc) and returns once
/// every one is acknowledged.
fn mqtt_publish_acked(addr: SocketAddr, messages: &[(String, String)]) {
    use rumqttc::{Event, Packet, QoS};
    let mut opts = rumqttc::MqttOptions::new("bridge-pub", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(32);
    let (client, mut connection) = rumqttc::Client::new(opts, 256);
    let to_send = messages.to_vec();
    std::thread::spawn(move || {
        for (topic, payload) in to_send {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .unwrap();
        }
    });
    let mut acked = 0;
    let deadline = std::time::Instant::now() + WAIT;
    for event in connection.iter() {
        assert!(
            std::time::Instant::now() < deadline,
            "PUBACKs: {acked} of {}",
            messages.len()
        );
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            acked += 1;
            if acked == messages.len() {
                return;
            }
        }
        event.expect("the MQTT connection");
    }
}

/// MQTT publishes a mapped filter matches become records of its Kafka topic (key: the
/// MQTT topic, value: the payload), placed by key, in publish order per key; others do
/// not. Every PUBACKed one is there after kill -9 (right after the last PUBACK), and the
/// bridge goes on after the restart.
#[test]
fn mqtt_publishes_reach_kafka_consumers_and_survive_kill_9() {
    if !have_kcat() {
        return;
    }
    let data = common::temp_dir();
    let extra = SENSORS_MAPPED;
    let (mut broker, _dir) = kafka_broker_with(2, Some(data.path().to_path_buf()), extra, &[]);
    let mut messages: Vec<(String, String)> = (0..90)
        .map(|i| (format!("sensors/{}/t", i % 3), format!("m{i:03}")))
        .collect();
    messages.push(("other/x".into(), "not bridged".into()));
    mqtt_publish_acked(broker.mqtt, &messages);
    kill_9(&mut broker);
    let (broker, _dir) = kafka_broker_with(2, Some(data.path().to_path_buf()), extra, &[]);
    let addr = broker.kafka.unwrap();
    mqtt_publish_acked(broker.mqtt, &[("sensors/0/t".into(), "after".into())]);
    let expected = messages.len(); // the 90 bridged, "after" instead of other/x
    let got = (0..100)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            consume_all(addr, "sensors")
        })
        .find(|got| got.iter().any(|r| r.3 == "after"))
        .expect("the publish after the restart is bridged");
    let mut by_key: BTreeMap<String, (BTreeSet<u32>, Vec<String>)> = BTreeMap::new();
    for (partition, _, key, value) in &got {
        let entry = by_key.entry(key.clone()).or_default();
        entry.0.insert(*partition);
        entry.1.push(value.clone());
    }
    assert_eq!(
        by_key.keys().collect::<Vec<_>>(),
        ["sensors/0/t", "sensors/1/t", "sensors/2/t"],
        "only the mapped topics, keyed by MQTT topic"
    );
    for (key, (partitions, values)) in &by_key {
        assert_eq!(partitions.len(), 1, "{key}: one partition per key");
        // At least once: a crash may repeat the last second's records, never lose or
        // reorder an acknowledged one.
        let mut firsts: Vec<&String> = Vec::new();
        for v in values {
            if !firsts.contains(&v) {
                firsts.push(v);
            }
        }
        let sent: Vec<String> = messages
            .iter()
            .filter(|(t, _)| t == key)
            .map(|(_, p)| p.clone())
            .chain((key == "sensors/0/t").then(|| "after".to_string()))
            .collect();
        assert_eq!(
            firsts,
            sent.iter().collect::<Vec<_>>(),
            "{key}: every one, in order"
        );
    }
    assert!(got.len() >= expected, "{} records", got.len());
}

/// An MQTT client (rumqttc) subscribed to `filter` at QoS 1; what arrives comes on the
/// channel as `(topic, payload)`. `persistent`: a session kept across disconnects.
fn mqtt_subscriber(
    addr: SocketAddr,
    id: &str,
    filter: &str,
    persistent: bool,
) -> (rumqttc::Client, std::sync::mpsc::Receiver<(String, String)>) {
    use rumqttc::{Event, Packet, QoS};
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(!persistent);
    let (client, mut connection) = rumqttc::Client::new(opts, 256);
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((p.topic.clone(), payload)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    ready_rx.recv_timeout(WAIT).expect("SUBACK");
    (client, rx)
}

/// Kafka records of a mapped topic reach MQTT subscribers on the topic their key
/// names (keys the filter does not match, and invalid topics, do not); what MQTT
/// published there reaches Kafka once and comes back to MQTT only once (no loop).
/// Records acknowledged to a Kafka producer reach a persistent MQTT session even when
/// the broker is killed right after.
#[test]
fn kafka_records_reach_mqtt_subscribers_once_and_survive_kill_9() {
    if !have_kcat() {
        return;
    }
    let data = common::temp_dir();
    let extra = SENSORS_MAPPED;
    let (mut broker, _dir) = kafka_broker_with(2, Some(data.path().to_path_buf()), extra, &[]);
    let addr = broker.kafka.unwrap();
    let (_live, rx) = mqtt_subscriber(broker.mqtt, "live-sub", "#", false);
    let (keeper, _) = mqtt_subscriber(broker.mqtt, "keeper", "sensors/#", true);
    keeper.disconnect().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    produce(
        addr,
        "sensors",
        &[
            "sensors/k1:v1".to_string(),
            "sensors/k2:v2".to_string(),
            "other/x:unmatched".to_string(),
            "sensors/+:invalid".to_string(),
        ],
    );
    mqtt_publish_acked(broker.mqtt, &[("sensors/m".into(), "from-mqtt".into())]);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while got.len() < 3 && std::time::Instant::now() < deadline {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(m);
        }
    }
    // Anything more (a loop, the unmatched keys) would come within this.
    while let Ok(m) = rx.recv_timeout(Duration::from_millis(1500)) {
        got.push(m);
    }
    got.sort();
    let expected = [
        ("sensors/k1", "v1"),
        ("sensors/k2", "v2"),
        ("sensors/m", "from-mqtt"),
    ]
    .map(|(t, p)| (t.to_string(), p.to_string()));
    assert_eq!(got, expected, "each once, nothing else");
    let in_kafka: Vec<String> = consume_all(addr, "sensors")
        .into_iter()
        .map(|r| r.3)
        .collect();
    assert_eq!(
        in_kafka.iter().filter(|v| *v == "from-mqtt").count(),
        1,
        "the MQTT publish is in Kafka once: {in_kafka:?}"
    );

    // Acknowledged to the producer, then kill -9 before the relay may have run.
    produce(addr, "sensors", &lines("sensors/late", 20));
    kill_9(&mut broker);
    let (broker, _dir) = kafka_broker_with(2, Some(data.path().to_path_buf()), extra, &[]);
    let (_keeper, rx) = mqtt_subscriber(broker.mqtt, "keeper", "sensors/#", true);
    let mut late = BTreeSet::new();
    let deadline = std::time::Instant::now() + WAIT;
    while late.len() < 20 && std::time::Instant::now() < deadline {
        if let Ok((topic, payload)) = rx.recv_timeout(Duration::from_millis(100)) {
            if topic.starts_with("sensors/late") {
                late.insert(payload);
            }
        }
    }
    assert_eq!(
        late.len(),
        20,
        "every acknowledged record reaches the session: {late:?}"
    );
}

/// DescribeConfigs (kafka-python's admin client): a topic's settings in Kafka's names,
/// its own retention as the topic's, the rest from the broker.
#[test]
fn describe_configs_shows_a_topics_settings() {
    if !have_kafka_tools() {
        return;
    }
    let (broker, _dir) = kafka_broker_with(
        1,
        None,
        "[[kafka_topics]]\nname = \"short\"\npartitions = 1\nretention_ms = 60000\n",
        &[],
    );
    let out = python(broker.kafka.unwrap(), "configs", &["short"]);
    for line in [
        "retention.ms=60000 DYNAMIC_TOPIC_CONFIG",
        "retention.bytes=-1 STATIC_BROKER_CONFIG",
        "max.message.bytes=1048576 STATIC_BROKER_CONFIG",
        "cleanup.policy=delete DEFAULT_CONFIG",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }
}

/// The partition counts kcat's metadata shows, asked `times` times over new
/// connections (each lands on one of the shards).
fn listed_topics(addr: SocketAddr, times: usize) -> Vec<BTreeMap<String, usize>> {
    (0..times)
        .map(|_| {
            let out = kcat(addr, &["-L", "-J"], None);
            let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            meta["topics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["topic"].as_str().unwrap().to_string(),
                        t["partitions"].as_array().unwrap().len(),
                    )
                })
                .collect()
        })
        .collect()
}

/// CreateTopics and DeleteTopics (kafka-python's admin client) on two shards: a
/// created topic is served by every shard at once, keeps its records and its settings
/// across kill -9; the refusals carry their codes; a deleted topic is gone from every
/// shard with its records and its group commits, and one created again under the same
/// name starts empty at offset 0, also after kill -9.
#[test]
fn topics_created_and_deleted_over_the_wire_survive_kill_9() {
    if !have_kafka_tools() {
        return;
    }
    let data = common::temp_dir();
    let (mut broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    let addr = broker.kafka.unwrap();
    let created = python(
        addr,
        "create",
        &["orders", "3", "1", "retention.ms=3600000"],
    );
    assert_eq!(created.trim(), "created");
    for (args, refusal) in [
        (&["orders", "3", "1"][..], "TopicAlreadyExistsError"),
        (&["telemetry", "1", "1"][..], "TopicAlreadyExistsError"),
        (&["copies", "1", "3"][..], "InvalidReplicationFactorError"),
        (
            &["odd", "1", "1", "segment.ms=5"][..],
            "InvalidConfigurationError",
        ),
        (&["bad name", "1", "1"][..], "InvalidTopicError"),
    ] {
        assert_eq!(python(addr, "create", args).trim(), refusal, "{args:?}");
    }
    assert_eq!(
        python(addr, "delete", &["telemetry"]).trim(),
        "PolicyViolationError",
        "a topic of the config file stays"
    );
    for seen in listed_topics(addr, 6) {
        assert_eq!(seen.get("orders"), Some(&3), "{seen:?}");
        assert!(!seen.contains_key("copies"), "{seen:?}");
    }
    produce(addr, "orders", &lines("first", 60));
    assert_eq!(
        python(addr, "commit", &["orders", "60"]).trim(),
        "committed 60"
    );
    let commits = python(addr, "committed", &["pyc", "orders", "3"]);
    assert_eq!(commits.lines().count(), 3, "{commits}");

    kill_9(&mut broker);
    let (mut broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    let addr = broker.kafka.unwrap();
    let kept = consume_all(addr, "orders");
    assert_eq!(kept.len(), 60, "{kept:?}");
    assert_dense(&kept);
    let configs = python(addr, "configs", &["orders"]);
    assert!(
        configs
            .lines()
            .any(|l| l == "retention.ms=3600000 DYNAMIC_TOPIC_CONFIG"),
        "{configs}"
    );

    assert_eq!(python(addr, "delete", &["orders"]).trim(), "deleted");
    assert_eq!(
        python(addr, "delete", &["orders"]).trim(),
        "UnknownTopicOrPartitionError"
    );
    for seen in listed_topics(addr, 6) {
        assert!(!seen.contains_key("orders"), "{seen:?}");
        assert_eq!(seen.get("telemetry"), Some(&4), "{seen:?}");
    }
    assert_eq!(
        python(addr, "committed", &["pyc", "orders", "3"]),
        "",
        "commits go with the topic"
    );
    assert_eq!(
        python(addr, "create", &["orders", "1", "1"]).trim(),
        "created"
    );
    produce(addr, "orders", &lines("second", 5));

    kill_9(&mut broker);
    let (broker, _dir) = kafka_broker(2, Some(data.path().to_path_buf()));
    let addr = broker.kafka.unwrap();
    for seen in listed_topics(addr, 4) {
        assert_eq!(seen.get("orders"), Some(&1), "{seen:?}");
    }
    let now = consume_all(addr, "orders");
    let values: Vec<&str> = now.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(
        values,
        (0..5)
            .map(|i| format!("second-value-{i}"))
            .collect::<Vec<_>>(),
        "only the new topic's records"
    );
    assert_dense(&now);
    assert_eq!(
        python(addr, "committed", &["pyc", "orders", "3"]),
        "",
        "the old commits stay gone after a restart"
    );
    let resumed = python(addr, "resume", &["orders"]);
    assert!(resumed.contains("first [(0, 0)]"), "{resumed}");
    assert!(
        resumed.contains("rest 5"),
        "the old commits went with the topic: {resumed}"
    );
}

/// A data dir whose only Kafka topics were created over the wire keeps its shard
/// count too: the start with another count is refused, the old one serves them.
#[test]
fn a_created_topic_also_keeps_the_shard_count() {
    if !have_kafka_tools() {
        return;
    }
    let data = common::temp_dir();
    let dir = common::temp_dir();
    let config = dir.path().join("shardmq.toml");
    std::fs::write(&config, "kafka_listen = \"127.0.0.1:0\"\n").unwrap();
    let options = |shards| BrokerOptions {
        shards,
        args: vec!["--config".into(), config.display().to_string()],
        data_dir: Some(data.path().to_path_buf()),
        ..BrokerOptions::default()
    };
    let mut broker = Broker::start_with(options(2));
    let addr = broker.kafka.unwrap();
    assert_eq!(
        python(addr, "create", &["made", "4", "1"]).trim(),
        "created"
    );
    produce(addr, "made", &lines("made", 40));
    broker.signal(libc::SIGTERM);
    assert!(broker.wait_exit(WAIT).is_some_and(|s| s.success()));

    let Err((status, log)) = Broker::try_start(options(1)) else {
        panic!("a start with another shard count must be refused");
    };
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("holds Kafka partitions"), "{log}");

    let broker = Broker::start_with(options(2));
    assert_eq!(consume_all(broker.kafka.unwrap(), "made").len(), 40);
}

/// A created topic outlives the segment its creation was logged in: retention drops
/// the topic's old batches and their segments, and after kill -9 the topic is still
/// there with what it kept.
#[test]
fn a_created_topic_outlives_the_segment_that_logged_it() {
    if !have_kafka_tools() {
        return;
    }
    let data = common::temp_dir();
    let settings = [("SEGMENT_BYTES", "1048576"), ("RETENTION_BYTES", "1")];
    let (mut broker, _dir) = kafka_broker_with(1, Some(data.path().to_path_buf()), "", &settings);
    let addr = broker.kafka.unwrap();
    let created = python(addr, "create", &["short", "1", "1", "retention.ms=1000"]);
    assert_eq!(created.trim(), "created");
    let value = "v".repeat(1000);
    let bulk: Vec<String> = (0..3000).map(|i| format!("k{i}:{value}")).collect();
    produce(addr, "short", &bulk);
    let earliest = |addr: SocketAddr| {
        let out = kcat(addr, &["-Q", "-t", "short:0:-2"], None);
        let text = String::from_utf8(out.stdout).unwrap();
        text.rsplit("offset ")
            .next()
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    assert!(
        common::eventually(Duration::from_secs(20), || earliest(addr) > 0
            && broker.metric_sum("shardmq_wal_segments") <= 2.0),
        "earliest {}, segments {}",
        earliest(addr),
        broker.metric_sum("shardmq_wal_segments")
    );
    let first = earliest(addr);

    kill_9(&mut broker);
    let (broker, _dir) = kafka_broker_with(1, Some(data.path().to_path_buf()), "", &settings);
    let addr = broker.kafka.unwrap();
    // At once: what retention dropped before the restart is not served again, even
    // where its segment is still there.
    let again = earliest(addr);
    assert!(
        again >= first,
        "earliest {again} after the restart, {first} before"
    );
    assert_eq!(listed_topics(addr, 1)[0].get("short"), Some(&1));
    let left = consume_all(addr, "short");
    assert!(
        left.first().is_some_and(|r| r.1 >= first),
        "{:?}",
        left.first()
    );
    assert_eq!(
        left.last().map(|r| r.1),
        Some(2999),
        "the newest batch stays"
    );
}

/// Produce requests sent back to back on one connection, without waiting for answers
/// (as librdkafka pipelines them): each is answered, in the order sent, with offsets
/// in that order, and the records read back in it.
#[test]
fn pipelined_produces_are_answered_in_order() {
    if !have_kcat() {
        return;
    }
    let (broker, _dir) = kafka_broker(1, None);
    let addr = broker.kafka.unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let frames: Vec<u8> = (0..20)
        .flat_map(|i| {
            produce_v3(
                100 + i,
                "audit",
                0,
                &record_batch(format!("p{i:02}").as_bytes()),
            )
        })
        .collect();
    stream.write_all(&frames).unwrap();
    for i in 0..20 {
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).expect("an answer");
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut body).unwrap();
        let correlation = i32::from_be_bytes(body[..4].try_into().unwrap());
        assert_eq!(correlation, 100 + i, "answered in the order sent");
        assert_eq!(produce_answer(&body[4..]), (0, i64::from(i)));
    }
    let values: Vec<String> = consume_all(addr, "audit")
        .into_iter()
        .map(|r| r.3)
        .collect();
    assert_eq!(
        values,
        (0..20).map(|i| format!("p{i:02}")).collect::<Vec<_>>()
    );
}
