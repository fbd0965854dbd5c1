//! The HTTP endpoint of the metrics shard: `GET /metrics`, `GET /health` and the admin
//! API under `/admin/` (see `admin`).
//!
//! One request per connection (`Connection: close`): scrapes are rare and small, and this
//! keeps the server free of per-connection state. Requests are parsed with `httparse`;
//! a request head over `REQUEST_BYTES_MAX` or slower than `REQUEST_TIMEOUT` is dropped.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::net::TcpListener;

use super::admin::{self, AdminAccess, AdminBackend, AdminRequest};
use super::export::{render, Probes};

const REQUEST_BYTES_MAX: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const HEADERS_MAX: usize = 32;

/// Answers whether every shard is alive; `Err` carries the reason for a 503.
pub type HealthCheck = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>>>>>;

/// What the admin API serves, and to whom.
#[derive(Clone)]
pub struct Admin {
    /// Gathers the data and performs the actions.
    pub backend: Rc<dyn AdminBackend>,
    /// Who may use it.
    pub access: Rc<AdminAccess>,
}

/// Serves until `stop` resolves; over TLS (`metrics_tls`) when `tls` gives an acceptor
/// (asked at each accept: a reload may swap the certificate).
pub async fn serve(
    listener: TcpListener,
    tls: impl Fn() -> Option<TlsAcceptor>,
    probes: Probes,
    health: HealthCheck,
    admin: Admin,
    stop: impl Future<Output = ()>,
) {
    let accept_loop = async {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let probes = probes.clone();
                    let health = Rc::clone(&health);
                    let admin = admin.clone();
                    let tls = tls();
                    glommio::spawn_local(async move {
                        // The TLS handshake counts against the request's time limit.
                        let served = glommio::timer::timeout(REQUEST_TIMEOUT, async {
                            // The admin API's localhost check needs the TCP peer.
                            let peer = stream.peer_addr().ok();
                            Ok(match tls {
                                None => handle(stream, peer, &probes, &health, &admin).await,
                                Some(tls) => match tls.accept(stream).await {
                                    Ok(stream) => {
                                        handle(stream, peer, &probes, &health, &admin).await
                                    }
                                    Err(e) => Err(e),
                                },
                            })
                        })
                        .await;
                        if let Ok(Err(e)) = served {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    })
                    .detach();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    futures_lite::future::or(accept_loop, stop).await;
}

async fn handle(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: Option<std::net::SocketAddr>,
    probes: &Probes,
    health: &HealthCheck,
    admin: &Admin,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; REQUEST_BYTES_MAX];
    let mut filled = 0;
    let (method, path, authorization) = loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let authorization = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .map(|h| h.value.to_vec());
                break (
                    request.method.unwrap_or("").to_string(),
                    request.path.unwrap_or("").to_string(),
                    authorization,
                );
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => continue,
            Ok(httparse::Status::Partial) => {
                return respond_with(
                    &mut stream,
                    431,
                    "text/plain",
                    "request head too large\n",
                    false,
                )
                .await;
            }
            Err(e) => {
                return respond_with(&mut stream, 400, "text/plain", &format!("{e}\n"), false)
                    .await;
            }
        }
    };
    let (path, query) = path.split_once('?').unwrap_or((&path, ""));
    if path.starts_with("/admin/") {
        let request = AdminRequest {
            method: &method,
            path,
            query,
            authorization: authorization.as_deref(),
            peer,
        };
        let (status, body) = admin::handle(&*admin.backend, &admin.access, &request).await;
        return respond_with(&mut stream, status, "application/json", &body, false).await;
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond_with(&mut stream, 405, "text/plain", "only GET and HEAD\n", false).await;
    }
    match path {
        "/metrics" => {
            let body = render(probes);
            respond_with(&mut stream, 200, METRICS_CONTENT_TYPE, &body, head_only).await
        }
        "/health" => match health().await {
            Ok(()) => respond_with(&mut stream, 200, "text/plain", "ok\n", head_only).await,
            Err(reason) => {
                respond_with(
                    &mut stream,
                    503,
                    "text/plain",
                    &format!("{reason}\n"),
                    head_only,
                )
                .await
            }
        },
        _ => {
            respond_with(
                &mut stream,
                404,
                "text/plain",
                "try /metrics or /health\n",
                head_only,
            )
            .await
        }
    }
}

/// OpenMetrics text, which Prometheus negotiates and parses natively.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn respond_with(
    stream: &mut (impl AsyncWrite + Unpin),
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.close().await
}
