//! MQTT over TLS (`mqtts_listen`): the server configuration the `tls_*` keys describe,
//! the handshake of one connection, and the identity a client certificate names.
//!
//! rustls runs over glommio's `TcpStream` through futures-io (`futures-rustls`). The
//! handshake happens before the connection's tasks start, under the connection's
//! `connect_timeout_ms` deadline; after it the stream is one more [`Socket`] kind and
//! the packet loop is the same as for plain TCP (`wss_listen` puts WebSocket on top
//! first, see `ws`).

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::rustls::crypto::ring;
use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::server::WebPkiClientVerifier;
use futures_rustls::rustls::{self, RootCertStore, ServerConfig};
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use glommio::net::TcpStream;

use super::Door;
use crate::config::{Config, ConfigError};
use crate::metrics::Limit;

/// The TLS settings every shard's TLS listener shares.
pub type ServerTls = Arc<ServerConfig>;

/// The server configuration for `mqtts_listen`, `wss_listen` and `metrics_tls`, or `None` when neither
/// is set. Errors name the key whose file is missing or wrong.
pub fn server_config(config: &Config) -> Result<Option<ServerTls>, ConfigError> {
    if config.mqtts_listen.is_none() && config.wss_listen.is_none() && !config.metrics_tls {
        return Ok(None);
    }
    let certs = read_certs("tls_cert_file", &config.tls_cert_file)?;
    let key = {
        let path = &config.tls_key_file;
        let pem = read_file("tls_key_file", path)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            ConfigError::new(
                "tls_key_file",
                format!("{}: no PEM private key: {e}", path.display()),
            )
        })?
    };
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError::new("mqtts_listen", e.to_string()))?;
    let builder = if config.tls_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in read_certs("tls_ca_file", &config.tls_ca_file)? {
            roots.add(cert).map_err(|e| {
                ConfigError::new(
                    "tls_ca_file",
                    format!("{}: {e}", config.tls_ca_file.display()),
                )
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if config.tls_require_certificate {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier
            .build()
            .map_err(|e| ConfigError::new("tls_ca_file", e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let server = builder.with_single_cert(certs, key).map_err(|e| {
        ConfigError::new(
            "tls_key_file",
            format!("does not fit tls_cert_file's certificate: {e}"),
        )
    })?;
    Ok(Some(Arc::new(server)))
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// Runs the TLS handshake of a connection accepted at `accepted_at`, within the
/// connection's `connect_timeout_ms`. `None` (the socket closed) if it failed, stalled,
/// or `use_identity_as_username` finds no name in the client's certificate. Beside
/// the stream: the user its certificate names, with `use_identity_as_username`.
pub(super) async fn handshake(
    door: &Rc<Door>,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    accepted_at: Instant,
) -> Option<(TlsStream<TcpStream>, Option<String>)> {
    // Looked up now: a failed handshake's log line names the peer, and by then the
    // socket is gone.
    let peer = stream.peer_addr().ok();
    let limit = Duration::from_millis(door.config.connect_timeout_ms);
    let accepted = glommio::timer::timeout(limit.saturating_sub(accepted_at.elapsed()), async {
        Ok(acceptor.accept(stream).await)
    })
    .await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            log_failed(door, peer, &e);
            return None;
        }
        Err(_) => {
            door.probe.connect_timeouts_total.inc();
            door.probe.hit(Limit::ConnectTimeoutMs);
            log_failed(door, peer, &"no handshake within connect_timeout_ms");
            return None;
        }
    };
    let identity = if door.config.use_identity_as_username {
        let named = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(identity);
        if named.is_none() {
            log_failed(door, peer, &"client certificate names no CN or SAN");
            return None;
        }
        named
    } else {
        None
    };
    Some((stream, identity))
}

/// The name a client certificate gives its holder: the subject's common name, else its
/// first DNS name or e-mail subject alternative name.
pub(super) fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .find(|cn| !cn.is_empty());
    if let Some(cn) = common_name {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) if !s.is_empty() => {
            Some((*s).to_string())
        }
        _ => None,
    })
}

/// One "TLS handshake failed" line at info, within the shard's cap on refusal lines: a
/// wrong CA, an expired certificate or plaintext on the TLS port is what an operator
/// looks for when a client "cannot connect".
fn log_failed(door: &Door, peer: Option<SocketAddr>, reason: &dyn std::fmt::Display) {
    let Some(left_out) = door.connections.admit_refusal_line() else {
        return;
    };
    tracing::info!(target: super::CONNECTION_LOG, shard = door.id.index(),
        peer = %peer.map_or_else(|| "unknown".into(), |a| a.to_string()),
        reason = %reason,
        left_out,
        "TLS handshake failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_is_the_common_name_else_the_first_dns_or_email_san() {
        let dns = || SanType::DnsName("device-7.example".try_into().unwrap());
        let ip = SanType::IpAddress([10, 0, 0, 1].into());
        let mail = SanType::Rfc822Name("ops@example.org".try_into().unwrap());
        assert_eq!(
            identity(&cert(Some("alice"), vec![dns()])).as_deref(),
            Some("alice")
        );
        assert_eq!(
            identity(&cert(None, vec![ip.clone(), dns()])).as_deref(),
            Some("device-7.example")
        );
        assert_eq!(
            identity(&cert(Some(""), vec![mail])).as_deref(),
            Some("ops@example.org")
        );
        assert_eq!(identity(&cert(None, vec![ip])), None);
    }

    #[test]
    fn a_missing_or_wrong_file_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM").unwrap();
        let config = Config {
            mqtts_listen: Some("127.0.0.1:0".parse().unwrap()),
            tls_cert_file: dir.path().join("missing.pem"),
            tls_key_file: garbage.clone(),
            ..Config::default()
        };
        assert_eq!(server_config(&config).unwrap_err().key, "tls_cert_file");
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert_file = dir.path().join("cert.pem");
        std::fs::write(&cert_file, params.self_signed(&key).unwrap().pem()).unwrap();
        let config = Config {
            tls_cert_file: cert_file.clone(),
            ..config
        };
        assert_eq!(server_config(&config).unwrap_err().key, "tls_key_file");
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let config = Config {
            tls_key_file: other_key,
            ..config
        };
        assert_eq!(server_config(&config).unwrap_err().key, "tls_key_file");
        let key_file = dir.path().join("cert.key");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let config = Config {
            tls_key_file: key_file,
            tls_ca_file: garbage,
            ..config
        };
        assert_eq!(server_config(&config).unwrap_err().key, "tls_ca_file");
        let config = Config {
            tls_ca_file: cert_file,
            ..config
        };
        assert!(server_config(&config).unwrap().is_some());
        let off = Config {
            mqtts_listen: None,
            ..config
        };
        assert!(server_config(&off).unwrap().is_none());
    }
}
