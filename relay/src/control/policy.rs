//! The policy: may this bearer do this to that room or file, and if not, which rule says no.
//!
//! Pure functions over verified claims and the registry's records as they are now. Every plane
//! asks here; nothing else decides access. The registry is the live truth: a token names an
//! organisation, user and device, and each must be registered there at the moment of the request.
//! Effective clearance is the least of what the token asks for, what the user holds and what the
//! device may carry.

use super::model::{Device, DeviceKind, Org, Room, User};
use super::token::{Claims, Grant, TokenError};

/// A bearer whose token verified and whose user and device the registry knows now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub org: String,
    pub user: String,
    pub device: String,
    pub device_kind: DeviceKind,
    /// min(token, user, device).
    pub clearance: u8,
    pub grants: Vec<Grant>,
    /// The one room the token is good for, if it is limited to one.
    pub room: Option<String>,
    pub token_id: String,
}

impl Principal {
    pub fn has(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    #[error("no bearer token was presented")]
    TokenMissing,
    #[error(transparent)]
    Token(TokenError),
    #[error("the token's organisation is not registered")]
    OrgUnknown,
    #[error("the token's user is not registered in its organisation")]
    UserUnknown,
    #[error("the token's device is not registered to its organisation")]
    DeviceUnknown,
    #[error("the token's device has been revoked")]
    DeviceRevoked,
    #[error("effective clearance is below the classification")]
    Clearance,
    #[error("the token lacks the grant this needs")]
    Grant,
    /// The token is limited to another room.
    #[error("the token is limited to another room")]
    RoomScope,
    #[error("secure material may be viewed but not recorded")]
    SecureView,
    #[error("the quota would be exceeded")]
    Quota,
    #[error("this file type is not allowed")]
    FileType,
    /// The token was revoked by its id, or its user was removed after it was minted.
    #[error("the token has been revoked")]
    TokenRevoked,
    /// Only a file's owner, or an admin of its organisation, may remove it.
    #[error("only the file's owner or an admin of its organisation may remove it")]
    NotOwner,
}

impl Denial {
    /// Every denial, for metrics that publish a zero for each reason.
    pub const ALL: [Denial; 17] = [
        Denial::TokenMissing,
        Denial::TokenRevoked,
        Denial::Token(TokenError::Malformed),
        Denial::Token(TokenError::Signature),
        Denial::Token(TokenError::Expired),
        Denial::Token(TokenError::NotYetValid),
        Denial::OrgUnknown,
        Denial::UserUnknown,
        Denial::DeviceUnknown,
        Denial::DeviceRevoked,
        Denial::Clearance,
        Denial::Grant,
        Denial::RoomScope,
        Denial::SecureView,
        Denial::Quota,
        Denial::FileType,
        Denial::NotOwner,
    ];

    /// The fine-grained reason: metric label and audit field. A bounded set.
    pub fn reason(self) -> &'static str {
        match self {
            Denial::TokenMissing => "token_missing",
            Denial::TokenRevoked => "token_revoked",
            Denial::Token(e) => e.code(),
            Denial::OrgUnknown => "org_unknown",
            Denial::UserUnknown => "user_unknown",
            Denial::DeviceUnknown => "device_unknown",
            Denial::DeviceRevoked => "device_revoked",
            Denial::Clearance => "clearance",
            Denial::Grant => "grant",
            Denial::RoomScope => "room_scope",
            Denial::SecureView => "secure_view",
            Denial::Quota => "quota",
            Denial::FileType => "file_type",
            Denial::NotOwner => "not_owner",
        }
    }

    /// The rule's code as the API reports it.
    pub fn code(self) -> &'static str {
        match self {
            Denial::TokenMissing | Denial::Token(_) | Denial::TokenRevoked => "unauthorized",
            Denial::OrgUnknown
            | Denial::UserUnknown
            | Denial::DeviceUnknown
            | Denial::DeviceRevoked => "device",
            Denial::Clearance => "clearance",
            Denial::Grant | Denial::RoomScope | Denial::NotOwner => "grant",
            Denial::SecureView => "secure_view",
            Denial::Quota => "quota",
            Denial::FileType => "file_type",
        }
    }

    /// HTTP status: 401 when the bearer is not established, 403 when a rule refuses.
    pub fn status(self) -> u16 {
        match self {
            Denial::TokenMissing | Denial::Token(_) | Denial::TokenRevoked => 401,
            _ => 403,
        }
    }
}

/// Establishes the bearer against the registry as it is now.
pub fn principal(
    claims: &Claims,
    org: Option<&Org>,
    user: Option<&User>,
    device: Option<&Device>,
) -> Result<Principal, Denial> {
    let org = org.ok_or(Denial::OrgUnknown)?;
    let device = device
        .filter(|d| d.org == org.name && d.id == claims.device)
        .ok_or(Denial::DeviceUnknown)?;
    if device.revoked {
        return Err(Denial::DeviceRevoked);
    }
    let user = user
        .filter(|u| u.org == org.name && u.name == claims.sub)
        .ok_or(Denial::UserUnknown)?;
    Ok(Principal {
        org: org.name.clone(),
        user: user.name.clone(),
        device: device.id.clone(),
        device_kind: device.kind,
        clearance: claims
            .clearance
            .min(user.clearance)
            .min(device.max_clearance),
        grants: claims.grants.clone(),
        room: claims.room.clone(),
        token_id: claims.jti.clone(),
    })
}

/// What a participant wants to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomRole {
    Publish,
    Subscribe,
    /// Read the room's state (who is in it).
    Inspect,
    /// Start or stop the room's recording. Never in a `secure_view` room.
    Record,
}

/// May `p` take `role` in `room`?
pub fn may_join(p: &Principal, role: RoomRole, room: &Room) -> Result<(), Denial> {
    if room.org != p.org {
        // Rooms are looked up in the bearer's organisation; another organisation's room is
        // outside the token's scope.
        return Err(Denial::RoomScope);
    }
    if p.room.as_deref().is_some_and(|r| r != room.name) {
        return Err(Denial::RoomScope);
    }
    let needed = match role {
        RoomRole::Publish => Grant::Publish,
        RoomRole::Subscribe => Grant::Subscribe,
        RoomRole::Record => Grant::Record,
        RoomRole::Inspect => {
            if !(p.has(Grant::Subscribe) || p.has(Grant::Publish) || p.has(Grant::Admin)) {
                return Err(Denial::Grant);
            }
            Grant::Subscribe
        }
    };
    if role != RoomRole::Inspect && !p.has(needed) {
        return Err(Denial::Grant);
    }
    if p.clearance < room.classification {
        return Err(Denial::Clearance);
    }
    if room.secure_view
        && (role == RoomRole::Record
            || role == RoomRole::Subscribe
                && (p.has(Grant::Record) || p.device_kind == DeviceKind::Recorder))
    {
        return Err(Denial::SecureView);
    }
    Ok(())
}

/// The facts about a stored file that access depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts<'a> {
    pub org: &'a str,
    /// The user who put it (for `Put`, the bearer).
    pub owner: &'a str,
    /// The room it was put into, if any.
    pub room: Option<&'a str>,
    pub classification: u8,
    pub view_only: bool,
}

/// What a bearer wants to do with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Put,
    Get,
    Remove,
    /// See that it exists: in a listing, or as an "already have" answer to an upload.
    See,
}

/// May `p` do `action` to a file with `facts`? For `Put`, the facts are those the upload declares.
///
/// A room-limited token reaches only files put into its room. Removing is for the owner or an
/// admin of the organisation, and, like reading, never below the file's classification.
pub fn may_file(p: &Principal, action: FileAction, facts: FileFacts<'_>) -> Result<(), Denial> {
    if !p.has(Grant::Files) {
        return Err(Denial::Grant);
    }
    if facts.org != p.org {
        // Files of another organisation do not exist for this bearer.
        return Err(Denial::RoomScope);
    }
    if p.room.is_some() && p.room.as_deref() != facts.room {
        return Err(Denial::RoomScope);
    }
    if p.clearance < facts.classification {
        return Err(Denial::Clearance);
    }
    if action == FileAction::Get && facts.view_only && p.device_kind != DeviceKind::Terminal {
        return Err(Denial::SecureView);
    }
    if action == FileAction::Remove && facts.owner != p.user && !p.has(Grant::Admin) {
        return Err(Denial::NotOwner);
    }
    Ok(())
}

/// May `p` change the registry of `org`?
pub fn may_admin(p: &Principal, org: &str) -> Result<(), Denial> {
    if !p.has(Grant::Admin) {
        return Err(Denial::Grant);
    }
    if p.org != org {
        return Err(Denial::RoomScope);
    }
    Ok(())
}

/// How far an admin change reaches: the highest clearance or classification it grants or touches,
/// and whether it acts on the organisation as a whole rather than on one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub level: u8,
    pub org_wide: bool,
}

/// May the admin `p` make a change of `reach`? An admin acts only within its own effective
/// clearance, and a room-limited admin token changes nothing organisation-wide. (That `p` is an
/// admin of the organisation is [`may_admin`]'s question.)
pub fn may_change(p: &Principal, reach: Reach) -> Result<(), Denial> {
    if reach.org_wide && p.room.is_some() {
        return Err(Denial::RoomScope);
    }
    if reach.level > p.clearance {
        return Err(Denial::Clearance);
    }
    Ok(())
}

/// May the admin `p` mint a token with `claims`? Never above its own clearance, never beyond its
/// own room limit, and a token carrying `admin` only from an admin with no room limit.
pub fn may_mint_as(p: &Principal, claims: &Claims) -> Result<(), Denial> {
    if let Some(room) = &p.room {
        if claims.room.as_ref() != Some(room) {
            return Err(Denial::RoomScope);
        }
        if claims.has(Grant::Admin) {
            return Err(Denial::Grant);
        }
    }
    if claims.clearance > p.clearance {
        return Err(Denial::Clearance);
    }
    Ok(())
}

/// Would the registry allow a token with `claims`? `relay token` mints nothing it refuses.
pub fn may_mint(
    claims: &Claims,
    org: Option<&Org>,
    user: Option<&User>,
    device: Option<&Device>,
    room: Option<&Room>,
) -> Result<(), Denial> {
    let p = principal(claims, org, user, device)?;
    if p.clearance < claims.clearance {
        return Err(Denial::Clearance);
    }
    if let Some(name) = &claims.room {
        let room = room
            .filter(|r| &r.name == name && r.org == p.org)
            .ok_or(Denial::RoomScope)?;
        if p.clearance < room.classification {
            return Err(Denial::Clearance);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> Org {
        Org {
            name: "acme".into(),
            quota_bytes: None,
        }
    }
    fn user(clearance: u8) -> User {
        User {
            org: "acme".into(),
            name: "ann".into(),
            clearance,
        }
    }
    fn device(kind: DeviceKind, max: u8, revoked: bool) -> Device {
        Device {
            org: "acme".into(),
            id: "pc1".into(),
            kind,
            max_clearance: max,
            revoked,
        }
    }
    fn room(classification: u8, secure_view: bool) -> Room {
        Room {
            org: "acme".into(),
            name: "ops".into(),
            classification,
            secure_view,
        }
    }
    fn claims(clearance: u8, grants: &[Grant], room: Option<&str>) -> Claims {
        Claims {
            jti: "j".into(),
            org: "acme".into(),
            sub: "ann".into(),
            device: "pc1".into(),
            clearance,
            room: room.map(Into::into),
            grants: grants.to_vec(),
            iat: 0,
            nbf: 0,
            exp: 10,
        }
    }

    #[test]
    fn principal_rules() {
        use DeviceKind::*;
        let o = org();
        let other_org_device = Device {
            org: "other".into(),
            ..device(Browser, 3, false)
        };
        let other_user = User {
            name: "bob".into(),
            ..user(3)
        };
        let c = claims(3, &[Grant::Publish], None);
        #[rustfmt::skip]
        type Row<'a> = (Option<&'a Org>, Option<User>, Option<Device>, Result<u8, Denial>);
        let table: Vec<Row<'_>> = vec![
            (
                Some(&o),
                Some(user(3)),
                Some(device(Browser, 3, false)),
                Ok(3),
            ),
            (
                Some(&o),
                Some(user(1)),
                Some(device(Browser, 3, false)),
                Ok(1),
            ),
            (
                Some(&o),
                Some(user(3)),
                Some(device(Browser, 2, false)),
                Ok(2),
            ),
            (
                None,
                Some(user(3)),
                Some(device(Browser, 3, false)),
                Err(Denial::OrgUnknown),
            ),
            (Some(&o), Some(user(3)), None, Err(Denial::DeviceUnknown)),
            (
                Some(&o),
                Some(user(3)),
                Some(other_org_device),
                Err(Denial::DeviceUnknown),
            ),
            (
                Some(&o),
                Some(user(3)),
                Some(device(Browser, 3, true)),
                Err(Denial::DeviceRevoked),
            ),
            (
                Some(&o),
                None,
                Some(device(Browser, 3, false)),
                Err(Denial::UserUnknown),
            ),
            (
                Some(&o),
                Some(other_user),
                Some(device(Browser, 3, false)),
                Err(Denial::UserUnknown),
            ),
        ];
        for (i, (o, u, d, want)) in table.into_iter().enumerate() {
            let got = principal(&c, o, u.as_ref(), d.as_ref()).map(|p| p.clearance);
            assert_eq!(got, want, "row {i}");
        }
        // The token's own clearance caps too.
        let low = claims(0, &[], None);
        let p = principal(
            &low,
            Some(&o),
            Some(&user(3)),
            Some(&device(Browser, 3, false)),
        )
        .unwrap();
        assert_eq!(p.clearance, 0);
    }

    fn p(clearance: u8, kind: DeviceKind, grants: &[Grant], room: Option<&str>) -> Principal {
        principal(
            &claims(clearance, grants, room),
            Some(&org()),
            Some(&user(3)),
            Some(&device(kind, 3, false)),
        )
        .unwrap()
    }

    #[test]
    fn join_rules() {
        use DeviceKind::*;
        use Grant::*;
        use RoomRole::{Inspect, Publish as Pub, Record as Rec, Subscribe as Sub};
        #[rustfmt::skip]
        let table: Vec<(Principal, RoomRole, Room, Result<(), Denial>)> = vec![
            (p(1, Browser, &[Publish], None),            Pub,   room(1, false), Ok(())),
            (p(1, Browser, &[Subscribe], None),          Pub,   room(1, false), Err(Denial::Grant)),
            (p(1, Browser, &[Subscribe], None),          Sub, room(1, false), Ok(())),
            (p(1, Browser, &[Publish], None),            Sub, room(1, false), Err(Denial::Grant)),
            (p(1, Browser, &[Subscribe], None),          Sub, room(2, false), Err(Denial::Clearance)),
            (p(3, Browser, &[Publish], None),            Pub,   room(3, false), Ok(())),
            (p(0, Browser, &[Publish], None),            Pub,   room(1, false), Err(Denial::Clearance)),
            (p(2, Browser, &[Subscribe], Some("ops")),   Sub, room(2, false), Ok(())),
            (p(2, Browser, &[Subscribe], Some("hall")),  Sub, room(2, false), Err(Denial::RoomScope)),
            (p(2, Browser, &[Subscribe], None),          Sub, room(2, true),  Ok(())),
            (p(2, Browser, &[Subscribe, Record], None),  Sub, room(2, true),  Err(Denial::SecureView)),
            (p(2, Recorder, &[Subscribe], None),         Sub, room(2, true),  Err(Denial::SecureView)),
            (p(2, Recorder, &[Subscribe], None),         Sub, room(2, false), Ok(())),
            (p(2, Browser, &[Subscribe, Record], None),  Rec, room(2, false), Ok(())),
            (p(2, Browser, &[Subscribe], None),          Rec, room(2, false), Err(Denial::Grant)),
            (p(1, Browser, &[Record], None),             Rec, room(2, false), Err(Denial::Clearance)),
            (p(3, Browser, &[Record], None),             Rec, room(2, true),  Err(Denial::SecureView)),
            (p(3, Browser, &[Record], Some("other")),    Rec, room(2, false), Err(Denial::RoomScope)),
            (p(2, Recorder, &[Publish], None),           Pub,   room(2, true),  Ok(())),
            (p(2, Terminal, &[Subscribe, Record], None), Sub, room(2, false), Ok(())),
            (p(2, Browser, &[Subscribe], None),          Inspect,   room(2, true),  Ok(())),
            (p(2, Browser, &[Files], None),              Inspect,   room(2, false), Err(Denial::Grant)),
            (p(1, Browser, &[Admin], None),              Inspect,   room(2, false), Err(Denial::Clearance)),
        ];
        for (i, (who, role, r, want)) in table.into_iter().enumerate() {
            assert_eq!(may_join(&who, role, &r), want, "row {i}");
        }
        let foreign = Room {
            org: "other".into(),
            ..room(0, false)
        };
        assert_eq!(
            may_join(&p(3, Browser, &[Subscribe], None), Sub, &foreign),
            Err(Denial::RoomScope)
        );
    }

    #[test]
    fn file_rules() {
        use DeviceKind::*;
        use FileAction::*;
        use Grant::*;
        let f = |classification, view_only| FileFacts {
            org: "acme",
            owner: "ann",
            room: None,
            classification,
            view_only,
        };
        let in_room = |room| FileFacts {
            room: Some(room),
            ..f(0, false)
        };
        let bobs = |classification| FileFacts {
            owner: "bob",
            ..f(classification, false)
        };
        #[rustfmt::skip]
        let table: Vec<(Principal, FileAction, FileFacts<'_>, Result<(), Denial>)> = vec![
            (p(1, Browser, &[Files], None),   Put,    f(1, false), Ok(())),
            (p(1, Browser, &[Publish], None), Put,    f(0, false), Err(Denial::Grant)),
            (p(1, Browser, &[Files], None),   Put,    f(2, false), Err(Denial::Clearance)),
            (p(2, Browser, &[Files], None),   Get,    f(2, false), Ok(())),
            (p(1, Terminal, &[Files], None),  Get,    f(2, false), Err(Denial::Clearance)),
            (p(2, Browser, &[Files], None),   Get,    f(0, true),  Err(Denial::SecureView)),
            (p(2, Recorder, &[Files], None),  Get,    f(0, true),  Err(Denial::SecureView)),
            (p(2, Terminal, &[Files], None),  Get,    f(0, true),  Ok(())),
            (p(2, Browser, &[Files], None),   See,    f(0, true),  Ok(())),
            (p(1, Browser, &[Files], None),   See,    f(2, false), Err(Denial::Clearance)),
            // A room-limited token reaches the files of its room, and only those.
            (p(2, Browser, &[Files], Some("ops")),  Get, in_room("ops"),  Ok(())),
            (p(2, Browser, &[Files], Some("ops")),  Get, in_room("hall"), Err(Denial::RoomScope)),
            (p(2, Browser, &[Files], Some("ops")),  Get, f(0, false),     Err(Denial::RoomScope)),
            (p(2, Browser, &[Files], Some("ops")),  See, in_room("hall"), Err(Denial::RoomScope)),
            (p(2, Browser, &[Files], Some("ops")),  Put, f(0, false),     Err(Denial::RoomScope)),
            (p(2, Browser, &[Files], None),         Get, in_room("hall"), Ok(())),
            // Removing: the owner, or an admin, never below the classification.
            (p(2, Browser, &[Files], None),         Remove, f(0, true), Ok(())),
            (p(3, Terminal, &[Files], None),        Remove, bobs(0),    Err(Denial::NotOwner)),
            (p(3, Browser, &[Files, Admin], None),  Remove, bobs(2),    Ok(())),
            (p(1, Browser, &[Files, Admin], None),  Remove, bobs(2),    Err(Denial::Clearance)),
            (p(1, Browser, &[Files], None),         Remove, f(2, false), Err(Denial::Clearance)),
            (p(2, Browser, &[Admin], None),         Remove, bobs(0),    Err(Denial::Grant)),
            (p(2, Browser, &[Files, Admin], Some("ops")), Remove, bobs(0), Err(Denial::RoomScope)),
        ];
        for (i, (who, action, facts, want)) in table.into_iter().enumerate() {
            assert_eq!(may_file(&who, action, facts), want, "row {i}");
        }
        let foreign = FileFacts {
            org: "other",
            ..f(0, false)
        };
        assert_eq!(
            may_file(&p(3, Terminal, &[Files], None), Get, foreign),
            Err(Denial::RoomScope)
        );
    }

    #[test]
    fn admin_rules() {
        let admin = p(0, DeviceKind::Browser, &[Grant::Admin], None);
        assert_eq!(may_admin(&admin, "acme"), Ok(()));
        assert_eq!(may_admin(&admin, "other"), Err(Denial::RoomScope));
        let user = p(3, DeviceKind::Browser, &[Grant::Publish], None);
        assert_eq!(may_admin(&user, "acme"), Err(Denial::Grant));
    }

    #[test]
    fn an_admin_is_bounded_by_its_own_clearance_and_room() {
        let reach = |level, org_wide| Reach { level, org_wide };
        let low = p(1, DeviceKind::Browser, &[Grant::Admin], None);
        let roomed = p(3, DeviceKind::Browser, &[Grant::Admin], Some("ops"));
        #[rustfmt::skip]
        let table: Vec<(&Principal, Reach, Result<(), Denial>)> = vec![
            (&low,    reach(1, true),  Ok(())),
            (&low,    reach(0, true),  Ok(())),
            (&low,    reach(2, true),  Err(Denial::Clearance)),
            (&low,    reach(3, false), Err(Denial::Clearance)),
            (&roomed, reach(3, false), Ok(())),
            (&roomed, reach(0, true),  Err(Denial::RoomScope)),
        ];
        for (i, (who, r, want)) in table.into_iter().enumerate() {
            assert_eq!(may_change(who, r), want, "row {i}");
        }

        let mint = |clearance, grants: &[Grant], room: Option<&str>| Claims {
            sub: "bob".into(),
            ..claims(clearance, grants, room)
        };
        #[rustfmt::skip]
        let table: Vec<(&Principal, Claims, Result<(), Denial>)> = vec![
            (&low,    mint(1, &[Grant::Publish], None),        Ok(())),
            (&low,    mint(2, &[Grant::Publish], None),        Err(Denial::Clearance)),
            (&low,    mint(0, &[Grant::Admin], None),          Ok(())),
            (&roomed, mint(3, &[Grant::Publish], Some("ops")), Ok(())),
            (&roomed, mint(3, &[Grant::Publish], None),        Err(Denial::RoomScope)),
            (&roomed, mint(3, &[Grant::Publish], Some("hall")), Err(Denial::RoomScope)),
            (&roomed, mint(3, &[Grant::Admin], Some("ops")),   Err(Denial::Grant)),
        ];
        for (i, (who, c, want)) in table.into_iter().enumerate() {
            assert_eq!(may_mint_as(who, &c), want, "mint row {i}");
        }
    }

    #[test]
    fn mint_rules() {
        use DeviceKind::*;
        let o = org();
        let r = room(2, false);
        let d = device(Browser, 2, false);
        let ok =
            |c: &Claims, room: Option<&Room>| may_mint(c, Some(&o), Some(&user(3)), Some(&d), room);
        assert_eq!(ok(&claims(2, &[], None), None), Ok(()));
        assert_eq!(ok(&claims(3, &[], None), None), Err(Denial::Clearance));
        assert_eq!(ok(&claims(2, &[], Some("ops")), Some(&r)), Ok(()));
        assert_eq!(
            ok(&claims(2, &[], Some("ops")), None),
            Err(Denial::RoomScope)
        );
        assert_eq!(
            ok(&claims(1, &[], Some("ops")), Some(&r)),
            Err(Denial::Clearance)
        );
        assert_eq!(
            may_mint(
                &claims(1, &[], None),
                Some(&o),
                Some(&user(3)),
                Some(&device(Browser, 3, true)),
                None
            ),
            Err(Denial::DeviceRevoked)
        );
    }

    #[test]
    fn every_denial_has_a_distinct_reason_and_a_status() {
        let mut reasons: Vec<_> = Denial::ALL.iter().map(|d| d.reason()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), Denial::ALL.len());
        for d in Denial::ALL {
            assert!(matches!(d.status(), 401 | 403));
        }
    }
}
