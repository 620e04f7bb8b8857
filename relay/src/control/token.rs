//! Bearer tokens: what they claim and how their integrity is checked.
//!
//! A token is `v1.<claims>.<tag>`, both parts base64url without padding. `claims` is the JSON
//! encoding of [`Claims`]; `tag` is the BLAKE3 keyed hash (a MAC) of the `v1.<claims>` text under
//! the appliance's 32-byte signing key. Only the appliance mints and checks tokens, so a MAC is
//! enough and keeps the check to one hash.
//!
//! Sans-IO: time is a parameter, the key is a value. Integrity and time are checked here; whether
//! the subject may act now is the registry's and the policy's question.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

/// The longest token accepted; longer input is rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Slack allowed between this clock and the one that minted the token, unless configured
/// (`tokens.clock_skew`): the appliance mints and checks its own tokens, so only the clocks of
/// different nodes can differ, and expired means expired.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 1;

/// The rights a token may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Publish,
    Subscribe,
    Files,
    Record,
    Admin,
}

impl Grant {
    pub const ALL: [Grant; 5] = [
        Grant::Publish,
        Grant::Subscribe,
        Grant::Files,
        Grant::Record,
        Grant::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Publish => "publish",
            Grant::Subscribe => "subscribe",
            Grant::Files => "files",
            Grant::Record => "record",
            Grant::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Grant> {
        Grant::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Unique token id.
    pub jti: String,
    pub org: String,
    /// The user: the participant's identity.
    pub sub: String,
    pub device: String,
    /// Clearance requested for this token, 0..=3; the effective one is capped by the registry.
    pub clearance: u8,
    /// When set, the token is good for this room only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    pub grants: Vec<Grant>,
    /// Issued at, not before, expires: seconds since the Unix epoch.
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
}

impl Claims {
    pub fn has(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not of the `v1.<claims>.<tag>` shape, bad base64, bad JSON, or too long.
    #[error("token is malformed")]
    Malformed,
    /// The tag does not match: forged or altered.
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

impl TokenError {
    /// Stable code, used as metric label and audit reason.
    pub fn code(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Signature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
        }
    }
}

/// The appliance's token signing key.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

const PREFIX: &str = "v1.";

impl SigningKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SigningKey {
        SigningKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn tag(&self, signed: &str) -> blake3::Hash {
        blake3::keyed_hash(&self.0, signed.as_bytes())
    }

    pub fn sign(&self, claims: &Claims) -> String {
        // Serializing a plain struct of strings, integers and enums cannot fail.
        let json = serde_json::to_vec(claims).expect("claims serialize");
        let mut out = String::with_capacity(PREFIX.len() + json.len() * 4 / 3 + 48);
        out.push_str(PREFIX);
        B64.encode_string(&json, &mut out);
        let tag = self.tag(&out);
        out.push('.');
        B64.encode_string(tag.as_bytes(), &mut out);
        out
    }

    /// Checks shape, tag and time window; `now` is seconds since the Unix epoch, `skew` the
    /// seconds of slack allowed on either end of the window.
    pub fn verify(&self, token: &str, now: u64, skew: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let (signed, tag_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let claims_b64 = signed.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        if claims_b64.is_empty() || claims_b64.contains('.') {
            return Err(TokenError::Malformed);
        }
        let tag: [u8; 32] = B64
            .decode(tag_b64)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        // blake3::Hash equality is constant-time.
        if self.tag(signed) != blake3::Hash::from_bytes(tag) {
            return Err(TokenError::Signature);
        }
        let json = B64.decode(claims_b64).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now >= claims.exp.saturating_add(skew) {
            return Err(TokenError::Expired);
        }
        if now.saturating_add(skew) < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// A fresh random token id.
pub fn new_token_id() -> String {
    hex::encode(crate::random_bytes::<16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKEW: u64 = 5;

    fn claims(nbf: u64, exp: u64) -> Claims {
        Claims {
            jti: "t1".into(),
            org: "demo".into(),
            sub: "alice".into(),
            device: "d1".into(),
            clearance: 2,
            room: Some("standup".into()),
            grants: vec![Grant::Publish, Grant::Subscribe],
            iat: nbf,
            nbf,
            exp,
        }
    }

    #[test]
    fn round_trip() {
        let key = SigningKey::from_bytes([7; 32]);
        let c = claims(1000, 2000);
        let t = key.sign(&c);
        assert_eq!(key.verify(&t, 1500, SKEW), Ok(c));
    }

    #[test]
    fn time_window_with_skew() {
        let key = SigningKey::from_bytes([7; 32]);
        let t = key.sign(&claims(1000, 2000));
        assert_eq!(key.verify(&t, 2000 + SKEW, SKEW), Err(TokenError::Expired));
        assert!(key.verify(&t, 2000 + SKEW - 1, SKEW).is_ok());
        assert_eq!(
            key.verify(&t, 1000 - SKEW - 1, SKEW),
            Err(TokenError::NotYetValid)
        );
        assert!(key.verify(&t, 1000 - SKEW, SKEW).is_ok());
    }

    #[test]
    fn other_key_or_altered_claims_fail_signature() {
        let key = SigningKey::from_bytes([7; 32]);
        let t = key.sign(&claims(1000, 2000));
        let other = SigningKey::from_bytes([8; 32]);
        assert_eq!(other.verify(&t, 1500, SKEW), Err(TokenError::Signature));

        // Raise the clearance in the claims and keep the old tag.
        let (signed, tag) = t.rsplit_once('.').unwrap();
        let json = B64.decode(&signed[3..]).unwrap();
        let forged = String::from_utf8(json)
            .unwrap()
            .replace("\"clearance\":2", "\"clearance\":3");
        let forged = format!("v1.{}.{}", B64.encode(forged), tag);
        assert_eq!(key.verify(&forged, 1500, SKEW), Err(TokenError::Signature));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let key = SigningKey::from_bytes([7; 32]);
        let long = "v1.".to_string() + &"a".repeat(MAX_TOKEN_LEN);
        for t in [
            "",
            "v1.",
            "v1..",
            "v1.a.b",
            "v2.aaaa.bbbb",
            "v1.a.b.c",
            "Bearer x",
            "v1.%%%.%%%",
            &long,
        ] {
            assert_eq!(key.verify(t, 0, SKEW), Err(TokenError::Malformed), "{t:?}");
        }
        // A correctly tagged payload that is not claims JSON.
        let signed = format!("v1.{}", B64.encode(b"{\"x\":1}"));
        let tag = key.tag(&signed);
        let t = format!("{signed}.{}", B64.encode(tag.as_bytes()));
        assert_eq!(key.verify(&t, 0, SKEW), Err(TokenError::Malformed));
    }

    #[test]
    fn grants_parse() {
        for g in Grant::ALL {
            assert_eq!(Grant::parse(g.as_str()), Some(g));
        }
        assert_eq!(Grant::parse("root"), None);
    }
}
