//! Changes to the registry, each one value: what it does, how it is audited, how far it reaches.
//!
//! Every surface that changes the registry (`relay admin` on the data directory, `relay admin
//! --server` over HTTP, the HTTP admin routes) builds an [`AdminChange`] and hands it to
//! [`crate::control::Control::apply`], which checks it against the admin, applies it and audits
//! it. Nothing else writes users, devices, rooms, revocations or notices.

use serde::Serialize;
use serde_json::{Value, json};

use super::model::DeviceKind;
use super::policy::Reach;
use super::registry::{Registry, RegistryError, check_level};

/// One change to the registry of an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminChange {
    /// The organisation changed (for [`Change::AddOrg`], the one made).
    pub org: String,
    pub change: Change,
}

/// What an [`AdminChange`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    AddOrg {
        quota_bytes: Option<u64>,
    },
    AddUser {
        name: String,
        clearance: u8,
    },
    RemoveUser {
        name: String,
    },
    SetClearance {
        name: String,
        clearance: u8,
    },
    AddDevice {
        id: String,
        kind: DeviceKind,
        /// Defaults to the highest the one making the change may give: its own clearance.
        max_clearance: Option<u8>,
    },
    RevokeDevice {
        id: String,
    },
    AddRoom {
        name: String,
        classification: u8,
        secure_view: bool,
    },
    /// Revokes one token by its id (`jti`).
    RevokeToken {
        id: String,
    },
    /// An urgent notice to every open page of the organisation, or of one room.
    SendNotice {
        room: Option<String>,
        text: String,
        /// Who sends it, as the pages show it.
        from: String,
    },
}

impl Change {
    /// The audit log's action.
    pub fn action(&self) -> &'static str {
        match self {
            Change::AddOrg { .. } => "admin.org.add",
            Change::AddUser { .. } => "admin.user.add",
            Change::RemoveUser { .. } => "admin.user.remove",
            Change::SetClearance { .. } => "admin.user.set",
            Change::AddDevice { .. } => "admin.device.add",
            Change::RevokeDevice { .. } => "admin.device.revoke",
            Change::AddRoom { .. } => "admin.room.add",
            Change::RevokeToken { .. } => "admin.token.revoke",
            Change::SendNotice { .. } => "admin.notice.send",
        }
    }

    /// The audit log's target; `org` names a new organisation.
    pub fn target(&self, org: &str) -> String {
        match self {
            Change::AddOrg { .. } => format!("org:{org}"),
            Change::AddUser { name, .. }
            | Change::RemoveUser { name }
            | Change::SetClearance { name, .. } => format!("user:{name}"),
            Change::AddDevice { id, .. } | Change::RevokeDevice { id } => format!("device:{id}"),
            Change::AddRoom { name, .. } => format!("room:{name}"),
            Change::RevokeToken { id } => format!("token:{id}"),
            Change::SendNotice { room: Some(r), .. } => format!("room:{r}"),
            Change::SendNotice { room: None, .. } => format!("org:{org}"),
        }
    }
}

impl AdminChange {
    pub fn new(org: impl Into<String>, change: Change) -> AdminChange {
        AdminChange {
            org: org.into(),
            change,
        }
    }

    pub fn action(&self) -> &'static str {
        self.change.action()
    }

    pub fn target(&self) -> String {
        self.change.target(&self.org)
    }

    /// How far the change reaches, judged against the registry as it is: the highest level it
    /// grants, or that the user or device it acts on holds now. Every change here is
    /// organisation-wide, so only an admin with no room limit makes one.
    /// A level out of range is an invalid request before it is anyone's to judge.
    pub fn reach(&self, reg: &dyn Registry, admin_clearance: u8) -> Result<Reach, RegistryError> {
        let org = self.org.as_str();
        let asked = match &self.change {
            Change::AddUser { clearance, .. } | Change::SetClearance { clearance, .. } => {
                Some(("clearance", *clearance))
            }
            Change::AddDevice {
                max_clearance: Some(m),
                ..
            } => Some(("max clearance", *m)),
            Change::AddRoom { classification, .. } => Some(("classification", *classification)),
            _ => None,
        };
        if let Some((what, level)) = asked {
            check_level(what, level)?;
        }
        let level = match &self.change {
            // New organisations are made on the appliance itself; over the API this only ever
            // meets the admin's own, which exists.
            Change::AddOrg { .. } => 0,
            Change::AddUser { clearance, .. } => *clearance,
            Change::RemoveUser { name } => reg.user(org, name)?.map_or(0, |u| u.clearance),
            Change::SetClearance { name, clearance } => reg
                .user(org, name)?
                .map_or(*clearance, |u| u.clearance.max(*clearance)),
            Change::AddDevice { max_clearance, .. } => max_clearance.unwrap_or(admin_clearance),
            Change::RevokeDevice { id } => reg.device(org, id)?.map_or(0, |d| d.max_clearance),
            Change::AddRoom { classification, .. } => *classification,
            // A token id says nothing of the token's level; revoking one only takes rights away.
            Change::RevokeToken { .. } => 0,
            // A notice to a room speaks to those cleared for it.
            Change::SendNotice { room: Some(r), .. } => {
                reg.room(org, r)?.map_or(0, |r| r.classification)
            }
            Change::SendNotice { room: None, .. } => 0,
        };
        Ok(Reach {
            level,
            org_wide: true,
        })
    }

    /// Applies the change; `default_clearance` is what a new device's max clearance defaults to.
    /// Returns what the change made, as the API and the command line print it.
    pub fn apply(
        &self,
        reg: &dyn Registry,
        default_clearance: u8,
        now: u64,
    ) -> Result<Value, RegistryError> {
        let org = self.org.as_str();
        Ok(match &self.change {
            Change::AddOrg { quota_bytes } => json!(reg.add_org(org, *quota_bytes)?),
            Change::AddUser { name, clearance } => json!(reg.add_user(org, name, *clearance)?),
            Change::RemoveUser { name } => {
                let user = reg.remove_user(org, name, now)?;
                json!({"org": user.org, "name": user.name, "removed": true})
            }
            Change::SetClearance { name, clearance } => {
                json!(reg.set_clearance(org, name, *clearance)?)
            }
            Change::AddDevice {
                id,
                kind,
                max_clearance,
            } => {
                json!(reg.add_device(org, id, *kind, max_clearance.unwrap_or(default_clearance))?)
            }
            Change::RevokeDevice { id } => {
                reg.revoke_device(org, id)?;
                json!({"org": org, "id": id, "revoked": true})
            }
            Change::AddRoom {
                name,
                classification,
                secure_view,
            } => json!(reg.add_room(org, name, *classification, *secure_view)?),
            Change::RevokeToken { id } => {
                reg.revoke_token(org, id, now)?;
                json!({"org": org, "id": id, "revoked": true})
            }
            Change::SendNotice { room, text, from } => {
                json!(reg.add_notice(org, room.as_deref(), text, from, now)?)
            }
        })
    }
}
