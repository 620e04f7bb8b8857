//! Standings already checked: the principal each token's claims came to against the registry at
//! one generation. A bearer's next request at the same generation gets the same answer without
//! the registry's rows being read again: a file download asks once per chunk.
//!
//! The registry's generation moves in the transaction of every change a standing depends on
//! (organisation, user, device, revocation), whoever makes it ([`super::registry::Registry::generation`]).
//! So a revocation still holds from the next request on: that request reads the new generation
//! and misses. Only standings are kept, never a refusal, and the token's signature and time are
//! checked on every request before this is asked.

use std::collections::HashMap;

use super::policy::Principal;
use super::token::Claims;

/// Most standings kept; past it, the next one starts the memo afresh.
const KEPT: usize = 4096;

#[derive(Debug, Default)]
pub struct Standings {
    generation: u64,
    /// By token id, with the claims they were found for: a claim set other than the one kept
    /// misses.
    by_token: HashMap<String, (Claims, Principal)>,
}

impl Standings {
    /// The standing `claims` came to at `generation`, if that is the generation it was found at.
    pub fn get(&self, generation: u64, claims: &Claims) -> Option<Principal> {
        if generation != self.generation {
            return None;
        }
        self.by_token
            .get(&claims.jti)
            .filter(|(kept, _)| kept == claims)
            .map(|(_, p)| p.clone())
    }

    /// Keeps the standing `claims` came to, read from the registry at `generation` or later.
    /// `generation` must have been read before the registry's rows were.
    pub fn put(&mut self, generation: u64, claims: &Claims, p: &Principal) {
        if generation != self.generation || self.by_token.len() >= KEPT {
            self.by_token.clear();
            self.generation = generation;
        }
        self.by_token
            .insert(claims.jti.clone(), (claims.clone(), p.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::model::DeviceKind;
    use crate::control::token::Grant;

    fn claims(jti: &str, clearance: u8) -> Claims {
        Claims {
            jti: jti.into(),
            org: "acme".into(),
            sub: "ann".into(),
            device: "pc1".into(),
            clearance,
            room: None,
            grants: vec![Grant::Files],
            iat: 1,
            nbf: 1,
            exp: 100,
        }
    }

    fn principal(c: &Claims) -> Principal {
        Principal {
            org: c.org.clone(),
            user: c.sub.clone(),
            device: c.device.clone(),
            device_kind: DeviceKind::Browser,
            clearance: c.clearance,
            grants: c.grants.clone(),
            room: None,
            token_id: c.jti.clone(),
        }
    }

    #[test]
    fn kept_for_its_generation_and_its_claims_only() {
        let mut s = Standings::default();
        let a = claims("aa", 2);
        assert_eq!(s.get(0, &a), None);
        s.put(7, &a, &principal(&a));
        assert_eq!(s.get(7, &a), Some(principal(&a)));
        // Another generation: the registry changed since.
        assert_eq!(s.get(8, &a), None);
        assert_eq!(s.get(6, &a), None);
        // The same token id with other claims is not the same token.
        assert_eq!(s.get(7, &claims("aa", 3)), None);
        assert_eq!(s.get(7, &claims("bb", 2)), None);
        // A standing found at a new generation drops those of the old one.
        let b = claims("bb", 1);
        s.put(8, &b, &principal(&b));
        assert_eq!(s.get(8, &a), None);
        assert_eq!(s.get(8, &b), Some(principal(&b)));
    }

    #[test]
    fn bounded() {
        let mut s = Standings::default();
        for i in 0..KEPT + 10 {
            let c = claims(&format!("{i:x}"), 1);
            s.put(1, &c, &principal(&c));
            assert!(s.by_token.len() <= KEPT);
        }
        let last = claims(&format!("{:x}", KEPT + 9), 1);
        assert_eq!(s.get(1, &last), Some(principal(&last)));
    }
}
