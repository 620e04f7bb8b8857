//! The control plane: who may connect and what they may do.
//!
//! [`token`] checks integrity and time, [`registry`] holds the live truth, [`policy`] decides,
//! [`audit`] records every decision. [`Control`] joins them into the one check every plane uses:
//! it never lets a request through without asking the registry (for its rows, or for its
//! generation when the same token was found in good standing at that generation, see
//! [`standings`]), and every allow and deny it makes is audited and every deny counted.

pub mod admin;
pub mod audit;
pub mod model;
pub mod policy;
pub mod postgres;
pub mod registry;
pub mod sqlite;
mod standings;
pub mod token;
pub mod witness;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admin::AdminChange;
use audit::{AuditLog, Decision, Event};
use model::{Device, DeviceKind, Org, Room, User};
use policy::{Denial, Principal, RoomRole};
use registry::{Registry, RegistryError};
use serde::Deserialize;
use standings::Standings;
use token::{Claims, Grant, SigningKey};

use crate::metrics::Metrics;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a control-plane operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error(transparent)]
    Denied(Denial),
    #[error(transparent)]
    Registry(RegistryError),
}

impl From<Denial> for ControlError {
    fn from(d: Denial) -> Self {
        ControlError::Denied(d)
    }
}

impl From<RegistryError> for ControlError {
    fn from(e: RegistryError) -> Self {
        ControlError::Registry(e)
    }
}

/// A request to mint a token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    pub org: String,
    pub user: String,
    pub device: String,
    /// Defaults to the highest the registry allows: min(user, device).
    #[serde(default)]
    pub clearance: Option<u8>,
    #[serde(default)]
    pub room: Option<String>,
    /// Defaults to publish, subscribe and files.
    #[serde(default)]
    pub grants: Option<Vec<Grant>>,
    /// Defaults to `tokens.default_ttl`.
    #[serde(default, with = "opt_duration")]
    pub ttl: Option<Duration>,
    /// Unix seconds the token may not outlive, whatever its ttl: a token minted on the strength
    /// of another ends with it. Not part of the API.
    #[serde(skip)]
    pub not_after: Option<u64>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A token just minted, and its id (`jti`), by which it can be revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub token: String,
    pub id: String,
}

pub const DEFAULT_GRANTS: [Grant; 3] = [Grant::Publish, Grant::Subscribe, Grant::Files];

/// The control plane's state, shared by every plane.
#[derive(Debug)]
pub struct Control {
    registry: Mutex<Box<dyn Registry>>,
    standings: Mutex<Standings>,
    key: SigningKey,
    audit: AuditLog,
    metrics: Metrics,
    tokens: crate::config::Tokens,
    /// Seconds since the Unix epoch: [`unix_now`], or a test's clock.
    clock: Clock,
}

/// Where the control plane reads the time: seconds since the Unix epoch.
pub type Clock = fn() -> u64;

impl Control {
    pub fn new(
        registry: Box<dyn Registry>,
        key: SigningKey,
        audit: AuditLog,
        metrics: Metrics,
        tokens: crate::config::Tokens,
        clock: Clock,
    ) -> Control {
        Control {
            registry: Mutex::new(registry),
            standings: Mutex::default(),
            clock,
            key,
            audit,
            metrics,
            tokens,
        }
    }

    fn skew(&self) -> u64 {
        self.tokens.clock_skew.as_secs()
    }

    /// A value that moves whenever the registry has changed, through this process or another
    /// on the same database (`relay admin --data`). A read error moves it too: the caller then
    /// checks again rather than trusting a stale view.
    pub fn registry_version(&self) -> u64 {
        self.registry().generation().unwrap_or(u64::MAX)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry. Queries are indexed point lookups, so the lock is held for microseconds.
    pub fn registry(&self) -> MutexGuard<'_, Box<dyn Registry>> {
        // A panic while holding the lock cannot leave the connection half-changed: every write is
        // one statement or one transaction.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an allow.
    pub fn allow(&self, action: &'static str, p: &Principal, target: &str) {
        self.audit.record(
            Event::new(action, Decision::Allow)
                .who(&p.org, &p.user, &p.device)
                .target(target),
        );
    }

    /// Records and counts a deny.
    pub fn deny(&self, action: &'static str, p: Option<&Principal>, target: &str, denial: Denial) {
        self.metrics.auth_denied(denial);
        let mut e = Event::new(action, Decision::Deny)
            .reason(denial.reason())
            .target(target);
        if let Some(p) = p {
            e = e.who(&p.org, &p.user, &p.device);
        }
        self.audit.record(e);
    }

    /// Records an event of the caller's making.
    pub fn record(&self, event: Event) {
        self.audit.record(event);
    }

    /// The audit log, for its metrics.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The one token check: integrity, time, and the registry as it is now. Denials are audited
    /// under `action` and counted.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        action: &'static str,
        target: &str,
    ) -> Result<Principal, Denial> {
        self.authenticate_claims(bearer, action, target)
            .map(|(p, _)| p)
    }

    /// [`Control::authenticate`], also handing back the verified claims, for a plane that holds
    /// the bearer to them later (a live session).
    pub fn authenticate_claims(
        &self,
        bearer: Option<&str>,
        action: &'static str,
        target: &str,
    ) -> Result<(Principal, Claims), Denial> {
        let result = self.principal_of(bearer);
        if let Err(d) = result {
            self.deny(action, None, target, d);
        }
        result
    }

    fn principal_of(&self, bearer: Option<&str>) -> Result<(Principal, Claims), Denial> {
        let token = bearer.ok_or(Denial::TokenMissing)?;
        let claims = self
            .key
            .verify(token, (self.clock)(), self.skew())
            .map_err(Denial::Token)?;
        Ok((self.standing(&claims)?, claims))
    }

    /// The bearer of `claims` (already verified), against the registry as it is now: what
    /// [`Control::authenticate`] checks after the token's integrity and time. A live session is
    /// held to this while it lasts.
    pub fn standing(&self, claims: &Claims) -> Result<Principal, Denial> {
        // Read before the rows, so that a standing kept under it was found at it or later. An
        // unreadable generation keeps nothing and checks in full.
        let generation = self.registry().generation().ok();
        let standings = || self.standings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = generation
            && let Some(p) = standings().get(g, claims)
        {
            return Ok(p);
        }
        let p = self.standing_now(claims)?;
        if let Some(g) = generation {
            standings().put(g, claims, &p);
        }
        Ok(p)
    }

    /// [`Control::standing`] from the registry's rows.
    fn standing_now(&self, claims: &Claims) -> Result<Principal, Denial> {
        let (org, user, device) = self.lookup(&claims.org, &claims.sub, &claims.device);
        let p = policy::principal(claims, org.as_ref(), user.as_ref(), device.as_ref())?;
        // A database error reads as revoked: refused, never let through.
        let revoked = self
            .registry()
            .token_revoked(&p.org, &p.user, &claims.jti, claims.iat)
            .unwrap_or(true);
        if revoked {
            return Err(Denial::TokenRevoked);
        }
        Ok(p)
    }

    /// May the bearer of `claims` still take `role` in the room `name` of its organisation, by the
    /// registry as it is now? For sessions that outlive the request that opened them; the
    /// token's time is not checked again. Not audited: the caller audits what it does about it.
    pub fn recheck(&self, claims: &Claims, role: RoomRole, name: &str) -> Result<(), Denial> {
        let p = self.standing(claims)?;
        let room = self
            .registry()
            .room(&p.org, name)
            .ok()
            .flatten()
            .ok_or(Denial::RoomScope)?;
        policy::may_join(&p, role, &room)
    }

    fn lookup(
        &self,
        org: &str,
        user: &str,
        device: &str,
    ) -> (Option<Org>, Option<User>, Option<Device>) {
        let reg = self.registry();
        // A database error reads as "not registered": the request is refused, never let through.
        let org = reg.org(org).ok().flatten();
        let user = reg
            .user(org.as_ref().map_or("", |o| &o.name), user)
            .ok()
            .flatten();
        let device = reg
            .device(org.as_ref().map_or("", |o| &o.name), device)
            .ok()
            .flatten();
        (org, user, device)
    }

    /// May `p` take `role` in the room `name` of its organisation? Audited either way.
    /// `Ok(None)`: the room is not registered.
    pub fn join(
        &self,
        action: &'static str,
        p: &Principal,
        role: RoomRole,
        name: &str,
    ) -> Result<Option<Room>, Denial> {
        let room = self.registry().room(&p.org, name).ok().flatten();
        let target = format!("room:{name}");
        let Some(room) = room else {
            return Ok(None);
        };
        match policy::may_join(p, role, &room) {
            Ok(()) => {
                self.allow(action, p, &target);
                Ok(Some(room))
            }
            Err(d) => {
                self.deny(action, Some(p), &target, d);
                Err(d)
            }
        }
    }

    /// May `p` administer its organisation? Denials are audited.
    pub fn admin(
        &self,
        action: &'static str,
        p: &Principal,
        org: &str,
        target: &str,
    ) -> Result<(), Denial> {
        policy::may_admin(p, org).inspect_err(|d| self.deny(action, Some(p), target, *d))
    }

    /// Mints a token for `req`, if the registry allows what it asks and, when an admin asks over
    /// the API (`by`), if it lies within the admin's own clearance and room limit. Audited under
    /// `token.mint`, with the token's user beside the admin's when they differ.
    pub fn mint(&self, req: &MintRequest, by: Option<&Principal>) -> Result<Minted, ControlError> {
        let target = format!("token:{}/{}/{}", req.org, req.user, req.device);
        let result = self.mint_inner(req, by);
        let mut e = match &result {
            Ok(m) => Event::new("token.mint", Decision::Allow).token(&m.id),
            Err(ControlError::Denied(d)) => {
                self.metrics.auth_denied(*d);
                Event::new("token.mint", Decision::Deny).reason(d.reason())
            }
            Err(ControlError::Registry(_)) => {
                Event::new("token.mint", Decision::Deny).reason("invalid")
            }
        };
        e = match by {
            Some(p) => {
                let e = e.who(&p.org, &p.user, &p.device);
                if p.user == req.user {
                    e
                } else {
                    e.subject(&req.user)
                }
            }
            None => e.org(&req.org),
        };
        self.audit.record(e.target(&target));
        result
    }

    fn mint_inner(
        &self,
        req: &MintRequest,
        by: Option<&Principal>,
    ) -> Result<Minted, ControlError> {
        let ttl = req.ttl.unwrap_or(self.tokens.default_ttl);
        if ttl.is_zero() || ttl > self.tokens.max_ttl {
            return Err(RegistryError::Invalid(format!(
                "ttl must be between 1s and {}",
                humantime::format_duration(self.tokens.max_ttl)
            ))
            .into());
        }
        if let Some(c) = req.clearance
            && c > model::MAX_LEVEL
        {
            return Err(
                RegistryError::Invalid(format!("clearance must be 0 to 3, not {c}")).into(),
            );
        }
        // A room-limited admin mints for its own room when none is named.
        let room_name = req.room.clone().or_else(|| by.and_then(|p| p.room.clone()));
        let (org, user, device) = self.lookup(&req.org, &req.user, &req.device);
        let room = room_name
            .as_deref()
            .and_then(|r| self.registry().room(&req.org, r).ok().flatten());
        let mut highest = match (&user, &device) {
            (Some(u), Some(d)) => u.clearance.min(d.max_clearance),
            _ => 0,
        };
        if let Some(p) = by {
            highest = highest.min(p.clearance);
        }
        let now = (self.clock)();
        let mut grants = req
            .grants
            .clone()
            .unwrap_or_else(|| DEFAULT_GRANTS.to_vec());
        grants.sort_unstable();
        grants.dedup();
        let claims = Claims {
            jti: token::new_token_id(),
            org: req.org.clone(),
            sub: req.user.clone(),
            device: req.device.clone(),
            clearance: req.clearance.unwrap_or(highest),
            room: room_name,
            grants,
            iat: now,
            nbf: now,
            exp: (now + ttl.as_secs()).min(req.not_after.unwrap_or(u64::MAX)),
        };
        if claims.exp <= now {
            return Err(RegistryError::Invalid("the token would be expired already".into()).into());
        }
        if let Some(p) = by {
            policy::may_mint_as(p, &claims)?;
        }
        policy::may_mint(
            &claims,
            org.as_ref(),
            user.as_ref(),
            device.as_ref(),
            room.as_ref(),
        )?;
        Ok(Minted {
            token: self.key.sign(&claims),
            id: claims.jti,
        })
    }

    /// Applies an admin change to the registry and audits it. `by` is the admin's principal over
    /// the API, held to its own organisation, clearance and room limit; `None` on the appliance
    /// itself (`--data`), where the operator may do anything.
    pub fn apply(
        &self,
        change: &AdminChange,
        by: Option<&Principal>,
    ) -> Result<serde_json::Value, ControlError> {
        let action = change.action();
        let target = change.target();
        if let Some(p) = by {
            self.admin(action, p, &change.org, &target)?;
        }
        let result = {
            let reg = self.registry();
            let bounded = match by {
                Some(p) => change
                    .reach(reg.as_ref(), p.clearance)
                    .map_err(ControlError::from)
                    .and_then(|reach| Ok(policy::may_change(p, reach)?)),
                None => Ok(()),
            };
            let default_clearance = by.map_or(model::MAX_LEVEL, |p| p.clearance);
            bounded
                .and_then(|()| Ok(change.apply(reg.as_ref(), default_clearance, (self.clock)())?))
        };
        let mut e = match &result {
            Ok(_) => Event::new(action, Decision::Allow),
            Err(ControlError::Denied(d)) => {
                self.metrics.auth_denied(*d);
                Event::new(action, Decision::Deny).reason(d.reason())
            }
            Err(ControlError::Registry(_)) => Event::new(action, Decision::Deny).reason("invalid"),
        };
        e = match by {
            Some(p) => e.who(&p.org, &p.user, &p.device),
            None => e.org(&change.org),
        };
        self.audit.record(e.target(&target));
        result
    }
}

/// Parses a device kind.
pub fn parse_kind(s: &str) -> Result<DeviceKind, String> {
    DeviceKind::parse(s)
        .ok_or_else(|| format!("unknown device kind {s:?} (browser, terminal, recorder)"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::control::admin::Change;
    use crate::control::sqlite::SqliteRegistry;

    /// The time the test's control plane reads.
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);

    fn now() -> u64 {
        NOW.load(Ordering::Relaxed)
    }

    fn control(dir: &std::path::Path) -> Control {
        let db = dir.join("relay.db");
        let reg = SqliteRegistry::open_or_create(&db).unwrap();
        reg.add_org("acme", None).unwrap();
        reg.add_user("acme", "ann", 2).unwrap();
        reg.add_device("acme", "pc", DeviceKind::Browser, 3)
            .unwrap();
        let audit = AuditLog::open(&dir.join("audit.log"), &db).unwrap();
        Control::new(
            Box::new(reg),
            SigningKey::from_bytes([9; 32]),
            audit,
            Metrics::new(),
            crate::config::Tokens::default(),
            now,
        )
    }

    #[test]
    fn the_clock_and_the_registry_are_the_control_planes_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path());
        let req = MintRequest {
            org: "acme".into(),
            user: "ann".into(),
            device: "pc".into(),
            clearance: None,
            room: None,
            grants: None,
            ttl: Some(Duration::from_secs(10)),
            not_after: None,
        };
        let t = c.mint(&req, None).unwrap();
        let who = c.authenticate(Some(&t.token), "test", "t").unwrap();
        assert_eq!((who.user.as_str(), who.clearance), ("ann", 2));
        // On the clock it was given: still good within its ttl and the 1 s skew, not after.
        NOW.fetch_add(10, Ordering::Relaxed);
        assert!(c.authenticate(Some(&t.token), "test", "t").is_ok());
        NOW.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            c.authenticate(Some(&t.token), "test", "t"),
            Err(Denial::Token(token::TokenError::Expired))
        );
        // A token minted on the strength of another ends with it, whatever its ttl.
        let now = NOW.load(Ordering::Relaxed);
        let capped = MintRequest {
            not_after: Some(now + 3),
            ..req.clone()
        };
        let t = c.mint(&capped, None).unwrap();
        let claims = c
            .authenticate_claims(Some(&t.token), "test", "t")
            .unwrap()
            .1;
        assert_eq!(claims.exp, now + 3);
        let ended = MintRequest {
            not_after: Some(now),
            ..req.clone()
        };
        assert!(c.mint(&ended, None).is_err());
        // A change through the registry holds at the next check, and moves its generation.
        let t = c.mint(&req, None).unwrap();
        let before = c.registry_version();
        let revoke = AdminChange::new("acme", Change::RevokeToken { id: t.id.clone() });
        c.apply(&revoke, None).unwrap();
        assert_ne!(c.registry_version(), before);
        assert_eq!(
            c.authenticate(Some(&t.token), "test", "t"),
            Err(Denial::TokenRevoked)
        );
    }

    /// A standing found once is kept for the bearer's next requests, and every change to the
    /// registry still holds from the next request on: made by another process, through the
    /// registry's methods or by hand in SQL.
    #[test]
    fn a_kept_standing_yields_to_changes_made_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let c = control(dir.path());
        let mint = |device: &str| {
            let req = MintRequest {
                org: "acme".into(),
                user: "ann".into(),
                device: device.into(),
                clearance: None,
                room: None,
                grants: None,
                ttl: None,
                not_after: None,
            };
            c.mint(&req, None).unwrap()
        };
        let check = |t: &Minted| {
            c.authenticate(Some(&t.token), "test", "t")
                .map(|p| p.clearance)
        };
        let t = mint("pc");
        assert_eq!(check(&t), Ok(2));
        assert_eq!(check(&t), Ok(2));

        // Another process: by hand, on the database file.
        let other = rusqlite::Connection::open(dir.path().join("relay.db")).unwrap();
        other
            .execute(
                "UPDATE users SET clearance = 1 WHERE org = 'acme' AND name = 'ann'",
                [],
            )
            .unwrap();
        assert_eq!(check(&t), Ok(1));
        assert_eq!(check(&t), Ok(1));

        // Another process: through the registry.
        let other = SqliteRegistry::open_or_create(&dir.path().join("relay.db")).unwrap();
        other.revoke_token("acme", &t.id, now()).unwrap();
        assert_eq!(check(&t), Err(Denial::TokenRevoked));

        let t = mint("pc");
        assert_eq!(check(&t), Ok(1));
        other.revoke_device("acme", "pc").unwrap();
        assert_eq!(check(&t), Err(Denial::DeviceRevoked));

        other
            .add_device("acme", "tab", DeviceKind::Browser, 3)
            .unwrap();
        let t = mint("tab");
        assert_eq!(check(&t), Ok(1));
        other.remove_user("acme", "ann", now()).unwrap();
        assert_eq!(check(&t), Err(Denial::UserUnknown));
    }
}
