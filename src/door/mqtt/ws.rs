//! MQTT over WebSocket (`ws_listen`, and `wss_listen` over TLS), as the MQTT spec's
//! section 6 puts it: the `mqtt` subprotocol, binary frames only, and the frames' payloads
//! one byte stream of MQTT packets — a packet may span frames and a frame may hold several.
//!
//! The HTTP upgrade and the framing are async-tungstenite's, over the same futures-io
//! streams the TLS listener uses; after the upgrade the connection is one more
//! [`Socket`](super::socket::Socket) kind that reads and writes MQTT bytes, so the packet
//! loop is the one plain TCP runs.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt, Stream};
use futures_sink::Sink;

use super::Door;
use crate::metrics::Limit;

/// The subprotocols a client may ask for, best first: `mqtt` (MQTT 3.1.1 and 5.0) and
/// `mqttv3.1`, which many 3.1-era clients (and some current ones) still send.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// One WebSocket connection: the framed stream and what is left of the last binary
/// message the reader has not yet taken.
pub(super) struct WsConn<S> {
    ws: WebSocketStream<S>,
    unread: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// The stream underneath.
    pub(super) fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// The stream underneath.
    pub(super) fn get_mut(&mut self) -> &mut S {
        self.ws.get_mut()
    }

    /// Reads MQTT bytes: the rest of the last binary message, else the next one. Pings
    /// are answered and pongs skipped by the framing layer; a close frame (answered
    /// there too) or the end of the stream read as 0, like a TCP close. A text frame is
    /// an error: MQTT over WebSocket is binary only.
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.unread.is_empty() {
                let n = buf.len().min(self.unread.len());
                buf[..n].copy_from_slice(&self.unread.split_to(n));
                return Poll::Ready(Ok(n));
            }
            match std::task::ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.unread = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame on an MQTT WebSocket",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }

    /// Sends `chunk` as one binary frame (it moves into the frame without a copy).
    pub(super) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Option<BytesMut>,
    ) -> Poll<io::Result<()>> {
        if chunk.is_some() {
            std::task::ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            if let Some(bytes) = chunk.take() {
                Pin::new(&mut self.ws)
                    .start_send(Message::Binary(bytes.freeze()))
                    .map_err(io_error)?;
            }
        }
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    /// Starts or continues the closing handshake (a close frame to the client).
    pub(super) fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_error)
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

/// The framing limits: one message may be as large as the largest MQTT packet allowed
/// plus a read chunk's worth of following packets; larger ones end the connection
/// before they are buffered whole. The framing layer's read buffer, allocated up front
/// for every connection, is one read chunk rather than its default 128 KiB, so an idle
/// WebSocket client costs about what a TCP one does.
fn ws_config(door: &Door) -> WebSocketConfig {
    let chunk = super::conn::READ_CHUNK_BYTES;
    let max = (door.config.max_packet_bytes as usize).saturating_add(chunk);
    WebSocketConfig::default()
        .read_buffer_size(chunk)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Runs the HTTP upgrade on `stream`, within what is left of `connect_timeout_ms` since
/// `accepted_at`. A wrong path is answered 404, a request that is not a WebSocket
/// upgrade 426 (400 when it is not even that); `None` then, and on a stall or a
/// broken request.
// The callback's error type is the framing crate's HTTP response, large as it is.
#[allow(clippy::result_large_err)]
pub(super) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    door: &Rc<Door>,
    mut stream: S,
    peer: Option<SocketAddr>,
    accepted_at: Instant,
) -> Option<WsConn<S>> {
    let deadline = accepted_at + Duration::from_millis(door.config.connect_timeout_ms);
    let path = door.config.ws_path.as_str();
    let config = ws_config(door);
    let upgraded = crate::runtime::within(deadline, async {
        // On `&mut stream`, so a refused request can still be answered here.
        let handshake = async_tungstenite::accept_hdr_async_with_config(
            &mut stream,
            |request: &Request, response: Response| choose(path, request, response),
            Some(config),
        )
        .await;
        let refusal = match handshake {
            Ok(_) => return Ok(()),
            Err(WsError::Protocol(e)) => Some(refusal(&e)),
            Err(WsError::HttpFormat(_)) => Some(BAD_REQUEST),
            Err(_) => None,
        };
        if let Some(answer) = refusal {
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.flush().await;
        }
        Err(())
    })
    .await;
    match upgraded {
        Ok(Ok(())) => {}
        Ok(Err(())) => {
            log_failed(door, peer, "WebSocket upgrade refused");
            return None;
        }
        Err(_) => {
            door.probe.connect_timeouts_total.inc();
            door.probe.hit(Limit::ConnectTimeoutMs);
            log_failed(door, peer, "no WebSocket upgrade within connect_timeout_ms");
            return None;
        }
    }
    // The handshake refuses a request with bytes after it (a client waits for the
    // server's answer before its first frame), so nothing read is lost here.
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    Some(WsConn {
        ws,
        unread: Bytes::new(),
    })
}

const BAD_REQUEST: &str =
    "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const UPGRADE_REQUIRED: &str = "HTTP/1.1 426 Upgrade Required\r\nConnection: close\r\n\
     Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n";

/// The answer to a request the handshake refused: 426 when it is a plain HTTP request
/// (or another WebSocket version), telling the client to upgrade; 400 otherwise.
fn refusal(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::MissingConnectionUpgradeHeader
        | ProtocolError::MissingUpgradeWebSocketHeader
        | ProtocolError::MissingSecWebSocketVersionHeader => UPGRADE_REQUIRED,
        _ => BAD_REQUEST,
    }
}

/// Accepts an upgrade on `path` only, naming the subprotocol it speaks: the first of
/// [`SUBPROTOCOLS`] the client offers. A client that offers none is served without
/// one (browsers then accept the answer); one that offers only others is refused 400.
#[allow(clippy::result_large_err)]
fn choose(
    path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            "no MQTT WebSocket at this path\n",
        ));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if offered.is_empty() {
        return Ok(response);
    }
    match SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
    {
        Some(chosen) => {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(chosen),
            );
            Ok(response)
        }
        None => Err(error_response(
            StatusCode::BAD_REQUEST,
            "the subprotocol must be mqtt\n",
        )),
    }
}

fn error_response(status: StatusCode, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// One "WebSocket upgrade failed" line at info, within the shard's cap on refusal lines.
fn log_failed(door: &Door, peer: Option<SocketAddr>, reason: &str) {
    let Some(left_out) = door.connections.admit_refusal_line() else {
        return;
    };
    tracing::info!(target: super::CONNECTION_LOG, shard = door.id.index(),
        peer = %peer.map_or_else(|| "unknown".into(), |a| a.to_string()),
        reason,
        left_out,
        "WebSocket upgrade failed"
    );
}
