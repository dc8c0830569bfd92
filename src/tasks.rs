//! Background work the service starts off the request path (rehashing, session touches,
//! geolocation, the outbox worker, housekeeping), tracked so that shutdown drains it and
//! tests can wait for it instead of sleeping.

use std::future::Future;
use std::time::Duration;

use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` in the background, tracked.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(work);
    }

    /// Resolves once no background task is running (new ones may start later).
    pub async fn settled(&self) {
        while !self.tracker.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops taking new work and waits for what runs, at most `limit`; `false` on time-out.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }
}
