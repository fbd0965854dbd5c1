//! Who a Kafka connection is, and what it may do: SASL PLAIN against the same users and
//! API keys as MQTT, and the same topic ACL (a Kafka topic name is checked as an MQTT
//! topic: produce needs write, fetch and offset lookups need read).
//!
//! Before it authenticates, a connection may send only ApiVersions, SaslHandshake and
//! SaslAuthenticate (after a version 1 handshake; after version 0 the next frame is the
//! bare PLAIN token, answered with an empty frame, as older clients expect). With
//! `allow_anonymous` a connection that sends anything else is anonymous (as an MQTT
//! client without credentials); without it, such a request closes the connection, as a
//! Kafka broker requiring SASL does. A failed authentication is answered
//! SASL_AUTHENTICATION_FAILED and the connection closed.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::auth::acl::ClientAcl;
use crate::auth::{AuthDecision, Principal};
use crate::metrics::{AclAction, Limit};

use super::{KafkaDoor, KAFKA_LOG};

/// The one mechanism served.
const PLAIN: &str = "PLAIN";

/// A connection's identity and its ACL.
#[derive(Default)]
pub(super) struct ConnAuth {
    /// Who it authenticated as, once it has.
    principal: Option<Principal>,
    /// Its topic rules (`None`: everything allowed).
    acl: Option<ClientAcl>,
    /// It asked for PLAIN (SaslHandshake) and may now authenticate.
    handshaken: bool,
    /// The handshake was version 0: the next frame is the bare token.
    raw_token_next: bool,
}

/// What may happen to a request on a connection in its state.
pub(super) enum Gate {
    /// Serve it.
    Serve,
    /// Close the connection: it must authenticate first.
    Refuse,
}

impl ConnAuth {
    /// Whether a request other than ApiVersions and SASL may be served now; a connection
    /// that has not authenticated becomes anonymous here if that is allowed.
    pub(super) fn gate(&mut self, door: &KafkaDoor, client_id: &str) -> Gate {
        if self.principal.is_some() {
            return Gate::Serve;
        }
        match door.broker.auth().check(None, None) {
            AuthDecision::Allowed { principal } => {
                self.admit(door, principal, client_id);
                Gate::Serve
            }
            _ => Gate::Refuse,
        }
    }

    fn admit(&mut self, door: &KafkaDoor, principal: Principal, client_id: &str) {
        self.acl = door
            .broker
            .auth()
            .acl()
            .for_client(principal.identity(), client_id);
        self.principal = Some(principal);
    }

    /// Whether the connection may write to `topic`; a refusal is counted.
    pub(super) fn may_write(&mut self, door: &KafkaDoor, topic: &str) -> bool {
        let allowed = self.acl.as_mut().is_none_or(|acl| acl.may_publish(topic));
        if !allowed {
            door.broker.probe.acl_denied(AclAction::Publish, 1);
            tracing::debug!(target: KAFKA_LOG, topic, "acl: produce refused");
        }
        allowed
    }

    /// Whether the connection may read `topic`; a refusal is counted.
    pub(super) fn may_read(&mut self, door: &KafkaDoor, topic: &str) -> bool {
        let allowed = self.acl.as_mut().is_none_or(|acl| acl.may_receive(topic));
        if !allowed {
            door.broker.probe.acl_denied(AclAction::Subscribe, 1);
            tracing::debug!(target: KAFKA_LOG, topic, "acl: read refused");
        }
        allowed
    }

    /// Whether the next frame is a bare SASL token (after a version 0 handshake).
    pub(super) fn raw_token_next(&self) -> bool {
        self.raw_token_next
    }

    /// SaslHandshake (`v0`: version 0): PLAIN is the mechanism served.
    pub(super) fn handshake(&mut self, mechanism: &str, v0: bool) -> SaslHandshakeResponse {
        let response = SaslHandshakeResponse::default()
            .with_mechanisms(vec![StrBytes::from_static_str(PLAIN)]);
        if mechanism == PLAIN && self.principal.is_none() {
            self.handshaken = true;
            self.raw_token_next = v0;
            return response;
        }
        response.with_error_code(if mechanism == PLAIN {
            ResponseError::IllegalSaslState.code()
        } else {
            ResponseError::UnsupportedSaslMechanism.code()
        })
    }

    /// SaslAuthenticate with PLAIN's `authzid NUL username NUL password`: the answer and
    /// whether the connection stays open.
    pub(super) async fn authenticate(
        &mut self,
        door: &KafkaDoor,
        client_id: &str,
        token: &Bytes,
    ) -> (SaslAuthenticateResponse, bool) {
        let failed = |code: ResponseError, message: &'static str| {
            let response = SaslAuthenticateResponse::default()
                .with_error_code(code.code())
                .with_error_message(Some(StrBytes::from_static_str(message)));
            (response, false)
        };
        self.raw_token_next = false;
        if !self.handshaken || self.principal.is_some() {
            return failed(
                ResponseError::IllegalSaslState,
                "SaslHandshake with PLAIN comes first, once",
            );
        }
        let mut parts = token.split(|&b| b == 0);
        let (Some(_authzid), Some(username), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return failed(ResponseError::SaslAuthenticationFailed, "not a PLAIN token");
        };
        let Ok(username) = std::str::from_utf8(username) else {
            return failed(ResponseError::SaslAuthenticationFailed, "not a PLAIN token");
        };
        let username = (!username.is_empty()).then_some(username);
        let decision = match check(door, username, password).await {
            Some(decision) => decision,
            None => {
                return failed(
                    ResponseError::SaslAuthenticationFailed,
                    "the server is busy; try again",
                )
            }
        };
        match decision {
            // Credentials were given: anonymous (no password) is not what they asked for.
            AuthDecision::Allowed { principal } if principal != Principal::Anonymous => {
                tracing::debug!(target: KAFKA_LOG, client_id, ?principal, "SASL PLAIN authenticated");
                self.admit(door, principal, client_id);
                (SaslAuthenticateResponse::default(), true)
            }
            _ => {
                door.broker.probe.connections_refused_total.inc();
                tracing::info!(target: KAFKA_LOG, client_id, user = username.unwrap_or(""), "SASL PLAIN authentication failed");
                failed(
                    ResponseError::SaslAuthenticationFailed,
                    "bad username or password",
                )
            }
        }
    }
}

/// The credential check, the slow password hash on the hashing thread; `None` when its
/// queue is full.
async fn check(door: &KafkaDoor, username: Option<&str>, password: &[u8]) -> Option<AuthDecision> {
    let auth: Arc<_> = door.broker.auth();
    if !auth.needs_slow_hash(username) {
        return Some(auth.check(username, Some(password)));
    }
    let Ok(pending) = door.hashing.submit(&auth, username, Some(password)) else {
        door.broker.probe.hit(Limit::AuthHashQueueMax);
        return None;
    };
    Some(pending.decided().await)
}
