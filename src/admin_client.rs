//! `shardmq admin ...`: a client of the admin API on the metrics listener.
//!
//! The HTTP client is a small blocking one over `std::net::TcpStream`: one request per
//! connection (`Connection: close`, as the server does), the body read by
//! `Content-Length`, chunked transfer coding, or to the end of the stream. A crate would
//! bring an async runtime or TLS stack the broker has no other use for.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `shardmq admin` arguments.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API base URL (default: http://<metrics_listen> of the config).
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Bearer token (default: admin_key of the config).
    #[arg(
        long,
        global = true,
        env = "SHARDMQ_ADMIN_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Items per request (the listing follows every page).
    #[arg(long, global = true, default_value_t = 500, value_name = "N")]
    page: usize,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Connected clients.
    Clients,
    /// Sessions, offline persistent ones included.
    Sessions,
    /// Every session's subscriptions.
    Subscriptions,
    /// Retained messages.
    Retained,
    /// Disconnect a client (MQTT 5: DISCONNECT 0x98, Administrative action).
    Kick {
        /// Client id.
        client_id: String,
    },
    /// End a session, connected or not.
    DeleteSession {
        /// Client id.
        client_id: String,
    },
    /// Clear a topic's retained message.
    DeleteRetained {
        /// Topic.
        topic: String,
    },
}

/// Runs the command against the broker; `Err` is the message for standard error.
pub fn run(
    args: &AdminArgs,
    metrics_listen: std::net::SocketAddr,
    config_key: &str,
) -> Result<(), String> {
    let base = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let mut addr = metrics_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let key = args.key.as_deref().unwrap_or(config_key);
    let list = |path: &str, columns: &[&str]| -> Result<(), String> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut target = format!("{path}?limit={}", args.page);
            if let Some(cursor) = &after {
                target.push_str(&format!("&after={}", encode(cursor)));
            }
            let page = request(&base, "GET", &target, key)?;
            if let Some(found) = page["items"].as_array() {
                items.extend(found.iter().cloned());
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        if args.json {
            println!("{}", Value::Array(items));
        } else {
            print!("{}", table(columns, &items));
        }
        Ok(())
    };
    let act = |path: &str, param: &str, value: &str, done: &str| -> Result<(), String> {
        let answer = request(
            &base,
            "DELETE",
            &format!("{path}?{param}={}", encode(value)),
            key,
        )?;
        if args.json {
            println!("{answer}");
        } else {
            println!("{done}");
        }
        Ok(())
    };
    match &args.command {
        AdminCommand::Clients => list(
            "/admin/clients",
            &[
                "client_id",
                "user",
                "peer",
                "protocol",
                "shard",
                "keep_alive_secs",
                "inflight",
                "queued",
            ],
        ),
        AdminCommand::Sessions => list(
            "/admin/sessions",
            &[
                "client_id",
                "connected",
                "protocol",
                "shard",
                "expiry_secs",
                "subscriptions",
                "inflight",
                "queued",
            ],
        ),
        AdminCommand::Subscriptions => list(
            "/admin/subscriptions",
            &["client_id", "filter", "share_group", "qos", "shard"],
        ),
        AdminCommand::Retained => list(
            "/admin/retained",
            &["topic", "payload_bytes", "qos", "shard"],
        ),
        AdminCommand::Kick { client_id } => act(
            "/admin/clients",
            "client_id",
            client_id,
            &format!("disconnected {client_id}"),
        ),
        AdminCommand::DeleteSession { client_id } => act(
            "/admin/sessions",
            "client_id",
            client_id,
            &format!("deleted the session of {client_id}"),
        ),
        AdminCommand::DeleteRetained { topic } => act(
            "/admin/retained",
            "topic",
            topic,
            &format!("cleared the retained message of {topic}"),
        ),
    }
}

/// Items as an aligned text table of `columns` (`-` for a null).
fn table(columns: &[&str], items: &[Value]) -> String {
    let cell = |item: &Value, column: &str| match &item[column] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(item, c)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = String>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut columns.iter().map(|c| c.to_uppercase()));
    for row in rows {
        line(&mut row.into_iter());
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// One request; the JSON answer of a 2xx, else the API's error message.
fn request(base: &str, method: &str, target: &str, key: &str) -> Result<Value, String> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {base}: only http:// is served"))?;
    let authority = authority.split('/').next().unwrap_or(authority);
    let mut stream = TcpStream::connect(authority)
        .map_err(|e| format!("cannot reach the admin API at {base}: {e}"))?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if !key.is_empty() {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("sending to {base}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading from {base}: {e}"))?;
    let (status, body) = parse_response(&raw)?;
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).trim().to_string()));
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string());
    Err(format!("{target}: HTTP {status}: {message}"))
}

/// The status and the (de-chunked) body of a complete HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the response ended in its head".into()),
        Err(e) => return Err(format!("not an HTTP response: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let rest = &raw[head_len..];
    let body = if header("transfer-encoding").is_some_and(|t| t.ends_with("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad Content-Length {length:?}"))?;
        rest.get(..length)
            .ok_or("the response ended before its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line without its end")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|e| e.to_string())?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest
            .get(..size)
            .ok_or("the response ended inside a chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("a chunk without its end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_length_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, b"abcde".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
    }

    #[test]
    fn tables_align_and_show_nulls() {
        let items = vec![
            serde_json::json!({"a": "x", "b": null}),
            serde_json::json!({"a": "long", "b": 3}),
        ];
        assert_eq!(table(&["a", "b"], &items), "A     B\nx     -\nlong  3\n");
    }
}
