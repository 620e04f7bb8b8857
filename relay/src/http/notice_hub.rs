//! The notice hub: hands notices written to the registry to every live stream and, through the
//! media plane, to the pages in a meeting ([`super::notices`] serves them over HTTP).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

use crate::control::Control;
use crate::control::model::Notice;
use crate::media::MediaPlane;

/// Notices read from the registry per look.
pub const BATCH: usize = 200;

/// Hands notices written to the registry to every live stream.
#[derive(Debug)]
pub struct NoticeHub {
    tx: broadcast::Sender<Arc<Notice>>,
    /// The highest notice id broadcast (or present at start-up).
    seen: AtomicU64,
    /// One catch-up at a time, so no notice goes out twice.
    delivering: std::sync::Mutex<()>,
}

impl NoticeHub {
    /// A hub that broadcasts notices written from now on.
    pub fn new(control: &Control) -> NoticeHub {
        let (tx, _) = broadcast::channel(256);
        // What was sent before this start is not broadcast: pages list it through
        // `GET /api/notices`. (A registry that cannot say starts from the first notice.)
        let last = control.registry().last_notice_id().unwrap_or(0);
        NoticeHub {
            tx,
            seen: AtomicU64::new(last),
            delivering: std::sync::Mutex::new(()),
        }
    }

    fn read_new(&self, control: &Control) -> Option<Vec<Notice>> {
        let after = self.seen.load(Ordering::Acquire);
        let new = match control.registry().notices_after(after, BATCH) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read notices");
                return None;
            }
        };
        if let Some(last) = new.last() {
            self.seen.store(last.id, Ordering::Release);
        }
        Some(new)
    }

    /// Delivers every notice written since the last call: to the pages' streams, and through
    /// the media plane to the pages in a meeting. Called when the registry's generation moved.
    pub fn catch_up(&self, control: &Control, media: Option<&MediaPlane>) {
        let _one = self.delivering.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(new) = self.read_new(control) {
            if new.is_empty() {
                return;
            }
            for n in new {
                if let Some(m) = media {
                    let msg = serde_json::json!({"type": "notice", "notice": &n}).to_string();
                    m.notice(&n.org, n.room.as_deref(), msg.into_bytes().into());
                }
                // No stream open is no error.
                let _ = self.tx.send(Arc::new(n));
            }
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.tx.subscribe()
    }
}
