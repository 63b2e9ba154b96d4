//! In-process wake-ups along the pipeline: the listener tells the router that a message
//! was stored, the router tells the deliverer that notifications were written, so no
//! stage waits for its next poll. Polling stays, for work other nodes write.

use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone, Debug, Default)]
pub struct Wakers {
    /// A message was stored (event log committed).
    pub stored: Arc<Notify>,
    /// Messages were routed (outbox rows may be due).
    pub routed: Arc<Notify>,
}
