//! The registry's records: organisations, users, devices and rooms, as every part of the
//! control plane sees them, whatever database holds them.

use serde::{Deserialize, Serialize};

/// Highest clearance or classification level.
pub const MAX_LEVEL: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Org {
    pub name: String,
    pub quota_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub org: String,
    pub name: String,
    pub clearance: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Browser,
    Terminal,
    Recorder,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Browser => "browser",
            DeviceKind::Terminal => "terminal",
            DeviceKind::Recorder => "recorder",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceKind> {
        [
            DeviceKind::Browser,
            DeviceKind::Terminal,
            DeviceKind::Recorder,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub org: String,
    pub id: String,
    pub kind: DeviceKind,
    pub max_clearance: u8,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Room {
    pub org: String,
    pub name: String,
    pub classification: u8,
    pub secure_view: bool,
}

/// An urgent notice to every open page of an organisation, or of one of its rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// Rises with every notice of the appliance, whatever the organisation.
    pub id: u64,
    pub org: String,
    /// The room it is for; `None`: the whole organisation.
    pub room: Option<String>,
    pub text: String,
    /// Who sent it: the admin's user name, or `operator` on the appliance itself.
    pub from: String,
    /// Seconds since the Unix epoch.
    pub sent_at: u64,
}

/// A file as a cluster's shared catalogue lists it: what a listing shows and the policy checks,
/// and the node that stores its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CataloguedFile {
    pub id: String,
    pub org: String,
    pub owner: String,
    pub name: String,
    pub room: Option<String>,
    pub size: u64,
    pub chunks: u32,
    pub classification: u8,
    pub view_only: bool,
    /// Unix seconds.
    pub created: u64,
    /// The node that stores it.
    pub node: String,
}

/// In a cluster, the node that stores a file, and how to reach its file plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNode {
    pub node: String,
    /// Its file plane's QUIC address (`HOST:PORT`).
    pub addr: String,
    /// Its certificate (DER), which the node that answers vouches for.
    pub cert: Vec<u8>,
}

/// Longest notice text, in bytes.
pub const MAX_NOTICE_BYTES: usize = 2000;

/// A name as an error message shows it: at most 64 characters, so a huge name given by a client
/// is not echoed back whole.
pub fn shown(name: &str) -> String {
    let clipped = clip(name, 64);
    if clipped.len() == name.len() {
        format!("{name:?}")
    } else {
        format!("{clipped:?}... ({} bytes)", name.len())
    }
}

/// At most the first `max` characters of `text`.
pub fn clip(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}
