//! A blocking Kafka client connection: one request at a time over a `TcpStream`,
//! encoded and decoded with the `kafka-protocol` crate. The command line's Kafka tools
//! (`shardmq topics|groups|produce|consume`) and `shardmq-bench --kafka-topic` use it;
//! it speaks to any Kafka broker.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Largest response accepted.
const RESPONSE_BYTES_MAX: usize = 256 << 20;

/// One connection to a Kafka broker.
pub struct KafkaClient {
    stream: TcpStream,
    next_id: i32,
    client_id: &'static str,
    out: BytesMut,
}

impl KafkaClient {
    /// Connects to `addr`; each request may take up to `timeout`. `client_id` is sent
    /// in every request header.
    pub fn connect(
        addr: SocketAddr,
        timeout: Duration,
        client_id: &'static str,
    ) -> Result<KafkaClient, String> {
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(KafkaClient {
            stream,
            next_id: 1,
            client_id,
            out: BytesMut::new(),
        })
    }

    /// Authenticates with SASL PLAIN as `username` (SaslHandshake and SaslAuthenticate,
    /// version 1): what a broker asks when it does not admit anonymous clients.
    pub fn authenticate_plain(&mut self, username: &str, password: &str) -> Result<(), String> {
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let answer: SaslHandshakeResponse = self.call(ApiKey::SaslHandshake, 1, &handshake)?;
        if answer.error_code != 0 {
            return Err(format!(
                "the broker does not take SASL PLAIN (error {})",
                answer.error_code
            ));
        }
        let token = format!("\0{username}\0{password}");
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
        let answer: SaslAuthenticateResponse = self.call(ApiKey::SaslAuthenticate, 1, &request)?;
        if answer.error_code != 0 {
            let why = answer.error_message.as_deref().unwrap_or("refused");
            return Err(format!("SASL PLAIN as {username:?}: {why}"));
        }
        Ok(())
    }

    /// Sends `request` as `api` at `version` and reads its response.
    pub fn call<Q: Encodable, R: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Q,
    ) -> Result<R, String> {
        let id = self.send(api, version, request)?;
        self.receive(api, version, id)
    }

    /// Sends `request` as `api` at `version` without waiting for its response; returns
    /// its correlation id. Responses come back in the order the requests were sent.
    pub fn send<Q: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &Q,
    ) -> Result<i32, String> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)));
        let out = &mut self.out;
        out.clear();
        out.put_i32(0);
        header
            .encode(out, api.request_header_version(version))
            .and_then(|()| request.encode(out, version))
            .map_err(|e| format!("encoding {api:?}: {e}"))?;
        let size = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        self.stream
            .write_all(out)
            .map_err(|e| format!("{api:?}: {e}"))?;
        Ok(id)
    }

    /// Reads the response to the request sent as `id` (the oldest one not yet read).
    pub fn receive<R: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        id: i32,
    ) -> Result<R, String> {
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| format!("{api:?}: the broker closed the connection ({e})"))?;
        let size =
            usize::try_from(i32::from_be_bytes(size)).map_err(|_| "a negative frame size")?;
        if size > RESPONSE_BYTES_MAX {
            return Err(format!("{api:?}: a {size}-byte response"));
        }
        let mut body = vec![0u8; size];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("{api:?}: {e}"))?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|e| format!("{api:?} response header: {e}"))?;
        if header.correlation_id != id {
            return Err(format!("{api:?}: an answer to another request"));
        }
        R::decode(&mut body, version).map_err(|e| format!("{api:?} response: {e}"))
    }

    /// Whether a response starts arriving within `limit`.
    pub fn readable_within(&self, limit: Duration) -> Result<bool, String> {
        let mut fd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait = libc::timespec {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_nsec: limit.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd and timespec for the duration of the call; no
        // signal mask change.
        let n = unsafe { libc::ppoll(&mut fd, 1, &wait, std::ptr::null()) };
        if n < 0 {
            return Err(format!("ppoll: {}", std::io::Error::last_os_error()));
        }
        Ok(n > 0)
    }
}

/// A Produce request (acks all) of `records` (one or more record batches) to one
/// partition.
pub fn produce_request(
    topic: &str,
    partition: i32,
    records: Bytes,
    timeout: Duration,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}
