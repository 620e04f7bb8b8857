//! What every route shares: the control plane, readiness, `/api/info`, the media sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::notice_hub::NoticeHub;
use super::sessions::MediaRoutes;
use crate::control::Control;

/// Which planes are up; `/readyz` answers 200 only when all are.
#[derive(Debug, Default)]
pub struct Readiness {
    planes: std::sync::Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
}

impl Readiness {
    /// Adds a plane, not ready yet; set the returned flag when it is.
    pub fn plane(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.planes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, flag.clone()));
        flag
    }

    /// The planes not ready yet.
    pub fn waiting(&self) -> Vec<&'static str> {
        let planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        planes
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// What `/api/info` tells clients.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub version: &'static str,
    /// The file plane's QUIC address, once it runs.
    pub quic: Option<String>,
    pub cert_sha256: String,
    pub media_workers: usize,
}

/// Shared state of every route.
#[derive(Debug)]
pub struct AppState {
    pub control: Arc<Control>,
    pub readiness: Readiness,
    pub info: Info,
    pub audit_path: std::path::PathBuf,
    /// The media plane, when it runs.
    pub media: Option<MediaRoutes>,
    /// Live notices for the pages' streams.
    pub notices: NoticeHub,
    /// Rooms' recordings, when the media and file planes run.
    pub recordings: Option<Arc<crate::recordings::Recordings>>,
    /// This node's part in a cluster, when `cluster.redis_url` is set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}
