//! Every socket of a user hears the same frames: one broadcast channel per signed-in user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Frames a user's sockets all receive, as JSON text. Sized so that a slow socket lags (and
/// is told to resubscribe) long before a run could be held up: sends never wait.
pub const HUB: usize = 8192;

/// One broadcast channel per signed-in user with at least one socket.
#[derive(Debug, Default)]
pub(crate) struct Hubs(Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>);

impl Hubs {
    pub fn sender(&self, user: &str) -> broadcast::Sender<Arc<str>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.receiver_count() > 0);
        m.entry(user.to_string())
            .or_insert_with(|| broadcast::channel(HUB).0)
            .clone()
    }

    /// Sends a frame (its JSON text) to every socket of `user`.
    pub fn publish(&self, user: &str, frame: String) {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(user) {
            let _ = s.send(Arc::from(frame));
        }
    }
}
