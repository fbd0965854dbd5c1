//! `shardmq topics|groups|produce|consume`: a small Kafka client of a running broker's
//! `kafka_listen` (any Kafka broker works), for quick use without Kafka tools.
//!
//! Blocking, one request at a time over `std::net::TcpStream`; requests and responses
//! are encoded and decoded with the `kafka-protocol` crate, record batches with its
//! record encoder and decoder (uncompressed; a compressed batch is reported, not shown).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use clap::{Args, Subcommand};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeGroupsResponse, FetchRequest, FetchResponse, GroupId,
    ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use shardmq::broker::kafka::{murmur2, plain_record};
use shardmq::door::kafka::client::{produce_request, KafkaClient};

/// How long one request may take (a fetch waits at most half of it).
const TIMEOUT: Duration = Duration::from_secs(30);
/// Records per produced batch.
const BATCH_RECORDS: usize = 1000;

/// Where the broker is: `--bootstrap` or the config's `kafka_listen`.
#[derive(Debug, Args)]
pub struct Target {
    /// Kafka broker address (default: kafka_listen of the config).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// Authenticate with SASL PLAIN as this user (a broker with allow_anonymous =
    /// false asks it); with an API key, any name.
    #[arg(long, global = true, requires = "password")]
    username: Option<String>,
    /// The user's password, or an API key.
    #[arg(long, global = true, requires = "username")]
    password: Option<String>,
}

/// `shardmq topics` arguments.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: TopicsCommand,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Every topic with its partition count.
    List,
    /// A topic's partitions: leader, first and next offset.
    Describe {
        /// The topic.
        topic: String,
    },
    /// Creates a topic (kept by the broker across restarts).
    Create {
        /// The topic.
        topic: String,
        /// How many partitions.
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// Drop batches older than this many ms (-1: no limit; default: the broker's
        /// retention_ms).
        #[arg(long, value_name = "MS", allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Keep at most about this many bytes per partition (-1: no limit, the default).
        #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
    },
    /// Deletes a created topic and its records.
    Delete {
        /// The topic.
        topic: String,
    },
}

/// `shardmq groups` arguments.
#[derive(Debug, Args)]
pub struct GroupsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: GroupsCommand,
}

#[derive(Debug, Subcommand)]
enum GroupsCommand {
    /// Every consumer group with its state.
    List,
    /// A group's members and, per partition, its committed offset and lag.
    Describe {
        /// The group.
        group: String,
    },
}

/// `shardmq produce` arguments.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    target: Target,
    /// The topic.
    topic: String,
    /// Split each line into key and value at the first SEP (without it: no key).
    #[arg(long, short = 'K', value_name = "SEP")]
    key_separator: Option<String>,
    /// Produce to this partition (default: by key as Java clients hash it, murmur2;
    /// records without a key go round the partitions, one batch each).
    #[arg(long, short = 'p')]
    partition: Option<i32>,
}

/// `shardmq consume` arguments.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    target: Target,
    /// The topic.
    topic: String,
    /// Only this partition (default: every one).
    #[arg(long, short = 'p')]
    partition: Option<i32>,
    /// Where to start: `beginning`, `end` or an offset (each partition).
    #[arg(long, short = 'o', default_value = "beginning")]
    offset: String,
    /// Start where GROUP committed (else at --offset) and commit what was read on exit
    /// (as a consumer that assigns its partitions itself: no group membership).
    #[arg(long, short = 'g')]
    group: Option<String>,
    /// Stop after this many records.
    #[arg(long, short = 'c')]
    count: Option<u64>,
    /// Keep waiting for new records instead of exiting at the end of every partition.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print `partition offset key value` instead of the value alone.
    #[arg(long, short = 'v')]
    verbose: bool,
}

struct Client {
    wire: KafkaClient,
}

impl Client {
    fn connect(target: &Target, default: Option<SocketAddr>) -> Result<Client, String> {
        let addr = match (&target.bootstrap, default) {
            (Some(given), _) => given
                .to_socket_addrs()
                .map_err(|e| format!("{given}: {e}"))?
                .next()
                .ok_or_else(|| format!("{given}: no address"))?,
            (None, Some(addr)) => addr,
            (None, None) => {
                return Err("no broker: give --bootstrap HOST:PORT or set kafka_listen".into())
            }
        };
        let mut wire = KafkaClient::connect(addr, TIMEOUT, "shardmq-cli")?;
        if let (Some(user), Some(password)) = (&target.username, &target.password) {
            wire.authenticate_plain(user, password)?;
        }
        Ok(Client { wire })
    }

    /// Sends `request` as `api` at `version` and reads its response.
    fn call<Q: Encodable, R: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Q,
    ) -> Result<R, String> {
        self.wire.call(api, version, request)
    }

    fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse, String> {
        let request = MetadataRequest::default().with_topics(topics.map(|list| {
            list.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect()
        }));
        self.call(ApiKey::Metadata, 4, &request)
    }

    /// The partitions of `topic`, or why there are none.
    fn partitions(&mut self, topic: &str) -> Result<Vec<i32>, String> {
        let meta = self.metadata(Some(&[topic]))?;
        let found = meta
            .topics
            .first()
            .ok_or_else(|| format!("{topic}: no metadata"))?;
        check(found.error_code, topic)?;
        let mut list: Vec<i32> = found.partitions.iter().map(|p| p.partition_index).collect();
        list.sort_unstable();
        Ok(list)
    }

    /// Per partition, the offset a ListOffsets `timestamp` (-2 earliest, -1 latest) finds.
    fn offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>, String> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )]);
        let response: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 2, &request)?;
        let mut found = BTreeMap::new();
        for t in response.topics {
            for p in t.partitions {
                check(p.error_code, &format!("{topic}/{}", p.partition_index))?;
                found.insert(p.partition_index, p.offset);
            }
        }
        Ok(found)
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A Kafka error code as a message (0 is none).
fn check(code: i16, what: &str) -> Result<(), String> {
    if code == 0 {
        return Ok(());
    }
    let name = kafka_protocol::ResponseError::try_from_code(code)
        .map_or_else(|| format!("error {code}"), |e| format!("{e:?}"));
    Err(format!("{what}: {name}"))
}

/// `shardmq topics ...`.
pub fn topics(args: &TopicsArgs, default: Option<SocketAddr>) -> Result<(), String> {
    let mut client = Client::connect(&args.target, default)?;
    match &args.command {
        TopicsCommand::List => {
            let meta = client.metadata(None)?;
            let mut rows: Vec<(String, usize)> = meta
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| (n.to_string(), t.partitions.len())))
                .collect();
            rows.sort();
            println!("{:<40} PARTITIONS", "TOPIC");
            for (name, partitions) in rows {
                println!("{name:<40} {partitions}");
            }
        }
        TopicsCommand::Describe { topic } => {
            let partitions = client.partitions(topic)?;
            let first = client.offsets(topic, &partitions, -2)?;
            let next = client.offsets(topic, &partitions, -1)?;
            println!(
                "{:<10} {:<7} {:>15} {:>15} {:>12}",
                "PARTITION", "LEADER", "FIRST", "NEXT", "RECORDS"
            );
            for p in partitions {
                let (a, b) = (first[&p], next[&p]);
                println!("{p:<10} {:<7} {a:>15} {b:>15} {:>12}", 0, b - a);
            }
        }
        TopicsCommand::Create {
            topic,
            partitions,
            retention_ms,
            retention_bytes,
        } => {
            let configs = [
                ("retention.ms", retention_ms),
                ("retention.bytes", retention_bytes),
            ]
            .into_iter()
            .filter_map(|(key, value)| {
                value.map(|v| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_static_str(key))
                        .with_value(Some(StrBytes::from_string(v.to_string())))
                })
            })
            .collect();
            let request = CreateTopicsRequest::default()
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(topic))
                    .with_num_partitions(*partitions)
                    .with_replication_factor(-1)
                    .with_configs(configs)])
                .with_timeout_ms(TIMEOUT.as_millis() as i32);
            let response: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 5, &request)?;
            let result = response
                .topics
                .first()
                .ok_or_else(|| format!("{topic}: no answer"))?;
            explained(result.error_code, result.error_message.as_deref(), topic)?;
            println!("created {topic} with {} partitions", result.num_partitions);
        }
        TopicsCommand::Delete { topic } => {
            let request = DeleteTopicsRequest::default()
                .with_topic_names(vec![topic_name(topic)])
                .with_timeout_ms(TIMEOUT.as_millis() as i32);
            let response: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, 5, &request)?;
            let result = response
                .responses
                .first()
                .ok_or_else(|| format!("{topic}: no answer"))?;
            explained(result.error_code, result.error_message.as_deref(), topic)?;
            println!("deleted {topic}");
        }
    }
    Ok(())
}

/// [`check`], with the broker's message when it sent one.
fn explained(code: i16, message: Option<&str>, what: &str) -> Result<(), String> {
    check(code, what).map_err(|e| match message {
        Some(message) => format!("{e} ({message})"),
        None => e,
    })
}

/// `shardmq groups ...`.
pub fn groups(args: &GroupsArgs, default: Option<SocketAddr>) -> Result<(), String> {
    let mut client = Client::connect(&args.target, default)?;
    match &args.command {
        GroupsCommand::List => {
            let response: ListGroupsResponse =
                client.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())?;
            check(response.error_code, "ListGroups")?;
            println!("{:<40} STATE", "GROUP");
            for g in response.groups {
                println!("{:<40} {}", g.group_id.as_str(), g.group_state.as_str());
            }
        }
        GroupsCommand::Describe { group } => {
            let request = DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_string(group.clone()))]);
            let described: DescribeGroupsResponse =
                client.call(ApiKey::DescribeGroups, 3, &request)?;
            let info = described.groups.first().ok_or("no group in the answer")?;
            check(info.error_code, group)?;
            println!(
                "group {group}: {} ({} members)",
                info.group_state.as_str(),
                info.members.len()
            );
            for m in &info.members {
                println!(
                    "  member {} ({} at {})",
                    m.member_id.as_str(),
                    m.client_id.as_str(),
                    m.client_host.as_str()
                );
            }
            let request = OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                .with_topics(None);
            let fetched: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 5, &request)?;
            check(fetched.error_code, group)?;
            println!(
                "{:<30} {:<10} {:>15} {:>15} {:>12}",
                "TOPIC", "PARTITION", "COMMITTED", "NEXT", "LAG"
            );
            let mut topics = fetched.topics;
            topics.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
            for mut t in topics {
                t.partitions.sort_by_key(|p| p.partition_index);
                let topic = t.name.as_str().to_string();
                let partitions: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
                let next = client.offsets(&topic, &partitions, -1)?;
                for p in t.partitions {
                    let end = next.get(&p.partition_index).copied().unwrap_or(-1);
                    let lag = if p.committed_offset >= 0 {
                        end - p.committed_offset
                    } else {
                        end
                    };
                    println!(
                        "{topic:<30} {:<10} {:>15} {end:>15} {lag:>12}",
                        p.partition_index, p.committed_offset
                    );
                }
            }
        }
    }
    Ok(())
}

fn record(key: Option<Bytes>, value: Bytes) -> Record {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    plain_record(key, value, 0, now_ms)
}

/// `shardmq produce`: every line of standard input is one record, produced with
/// acks all; prints how many records went to which partition.
pub fn produce(args: &ProduceArgs, default: Option<SocketAddr>) -> Result<(), String> {
    let mut client = Client::connect(&args.target, default)?;
    let partitions = client.partitions(&args.topic)?;
    if let Some(p) = args.partition {
        if !partitions.contains(&p) {
            return Err(format!("{}: no partition {p}", args.topic));
        }
    }
    let mut pending: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut produced: BTreeMap<i32, (i64, u64)> = BTreeMap::new();
    let mut round = 0usize;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = lines
            .next()
            .transpose()
            .map_err(|e| format!("stdin: {e}"))?;
        let done = line.is_none();
        if let Some(line) = line {
            let (key, value) = match args
                .key_separator
                .as_deref()
                .and_then(|sep| line.split_once(sep))
            {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), Bytes::from(v.to_string())),
                None => (None, Bytes::from(line)),
            };
            let partition = match (args.partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => {
                    partitions[(murmur2(k) & 0x7fff_ffff) as usize % partitions.len()]
                }
                (None, None) => partitions[round % partitions.len()],
            };
            let batch = pending.entry(partition).or_default();
            // Offsets within the batch; the broker gives the batch its first one.
            let mut next = record(key, value);
            next.offset = batch.len() as i64;
            batch.push(next);
            if batch.len() < BATCH_RECORDS {
                continue;
            }
        }
        for (partition, records) in std::mem::take(&mut pending) {
            if records.is_empty() {
                continue;
            }
            let base = send(&mut client, &args.topic, partition, &records)?;
            let entry = produced.entry(partition).or_insert((base, 0));
            entry.1 += records.len() as u64;
            round += 1;
        }
        if done {
            break;
        }
    }
    for (partition, (first, count)) in produced {
        println!(
            "{}/{partition}: {count} records from offset {first}",
            args.topic
        );
    }
    Ok(())
}

fn send(
    client: &mut Client,
    topic: &str,
    partition: i32,
    records: &[Record],
) -> Result<i64, String> {
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, records.iter(), &options).map_err(|e| e.to_string())?;
    let request = produce_request(topic, partition, batch.freeze(), TIMEOUT);
    let response: ProduceResponse = client.call(ApiKey::Produce, 7, &request)?;
    let answer = response
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .ok_or("an empty Produce response")?;
    check(answer.error_code, &format!("{topic}/{partition}"))?;
    Ok(answer.base_offset)
}

/// `shardmq consume`: prints records from every partition (or one) until the end of
/// each (or, with --follow, until interrupted or --count).
pub fn consume(args: &ConsumeArgs, default: Option<SocketAddr>) -> Result<(), String> {
    let mut client = Client::connect(&args.target, default)?;
    let all = client.partitions(&args.topic)?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if all.contains(&p) => vec![p],
        Some(p) => return Err(format!("{}: no partition {p}", args.topic)),
        None => all,
    };
    let mut next: BTreeMap<i32, i64> = match args.offset.as_str() {
        "beginning" => client.offsets(&args.topic, &partitions, -2)?,
        "end" => client.offsets(&args.topic, &partitions, -1)?,
        n => {
            let at: i64 = n
                .parse()
                .map_err(|_| format!("--offset {n}: beginning, end or a number"))?;
            partitions.iter().map(|&p| (p, at)).collect()
        }
    };
    if let Some(group) = &args.group {
        for (p, committed) in committed(&mut client, group, &args.topic)? {
            if let Some(at) = next.get_mut(&p) {
                *at = committed;
            }
        }
    }
    let mut printed = 0u64;
    let out = std::io::stdout();
    let mut out = out.lock();
    'fetching: loop {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(if args.follow { 1000 } else { 100 })
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(&args.topic))
                .with_partitions(
                    next.iter()
                        .map(|(&p, &at)| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(at)
                                .with_partition_max_bytes(1 << 20)
                        })
                        .collect(),
                )]);
        let response: FetchResponse = client.call(ApiKey::Fetch, 10, &request)?;
        let mut at_end = true;
        for t in response.responses {
            for p in t.partitions {
                check(
                    p.error_code,
                    &format!("{}/{}", args.topic, p.partition_index),
                )?;
                let Some(mut records) = p.records else {
                    continue;
                };
                let from = next[&p.partition_index];
                while records.has_remaining() {
                    let set = RecordBatchDecoder::decode(&mut records)
                        .map_err(|e| format!("{}/{}: {e}", args.topic, p.partition_index))?;
                    for r in set.records.into_iter().filter(|r| r.offset >= from) {
                        let value = r.value.as_deref().unwrap_or_default();
                        let result = if args.verbose {
                            let key = r.key.as_deref().unwrap_or_default();
                            writeln!(
                                out,
                                "{} {} {} {}",
                                p.partition_index,
                                r.offset,
                                String::from_utf8_lossy(key),
                                String::from_utf8_lossy(value)
                            )
                        } else {
                            writeln!(out, "{}", String::from_utf8_lossy(value))
                        };
                        result.map_err(|e| format!("stdout: {e}"))?;
                        next.insert(p.partition_index, r.offset + 1);
                        printed += 1;
                        if args.count.is_some_and(|c| printed >= c) {
                            break 'fetching;
                        }
                    }
                }
                if next[&p.partition_index] < p.high_watermark {
                    at_end = false;
                }
            }
        }
        if at_end && !args.follow {
            break;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    if let Some(group) = &args.group {
        commit(&mut client, group, &args.topic, &next)?;
    }
    Ok(())
}

/// `group`'s committed offsets in `topic`.
fn committed(client: &mut Client, group: &str, topic: &str) -> Result<Vec<(i32, i64)>, String> {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(None);
    let fetched: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 5, &request)?;
    check(fetched.error_code, group)?;
    Ok(fetched
        .topics
        .into_iter()
        .filter(|t| t.name.as_str() == topic)
        .flat_map(|t| t.partitions)
        .filter(|p| p.committed_offset >= 0)
        .map(|p| (p.partition_index, p.committed_offset))
        .collect())
}

/// Commits `next` for `group` (no group membership: generation -1).
fn commit(
    client: &mut Client,
    group: &str,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) -> Result<(), String> {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                next.iter()
                    .map(|(&p, &offset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                    })
                    .collect(),
            )]);
    let response: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, 5, &request)?;
    for t in response.topics {
        for p in t.partitions {
            check(
                p.error_code,
                &format!("commit {group} {topic}/{}", p.partition_index),
            )?;
        }
    }
    Ok(())
}
