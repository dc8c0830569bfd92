//! Background work the service starts off the request path, tracked so that shutdown drains
//! it and tests can wait for it instead of sleeping: short tasks (rehashing, session and key
//! touches, location lookups, recovery emails queued after the answer) and the long-running
//! services (the outbox worker, housekeeping).

use std::future::Future;
use std::time::Duration;

use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Background {
    tasks: TaskTracker,
    services: TaskTracker,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs a short piece of work in the background, tracked.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// Runs a service loop until it stops itself (on the shutdown signal it is given).
    pub fn spawn_service<F>(&self, service: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.services.spawn(service);
    }

    /// Resolves once no short task is running (new ones may start later).
    pub async fn settled(&self) {
        while !self.tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the short tasks and the services (which must have been told to stop), at
    /// most `limit`; `false` on time-out.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.tasks.close();
        self.services.close();
        let both = async {
            self.tasks.wait().await;
            self.services.wait().await;
        };
        tokio::time::timeout(limit, both).await.is_ok()
    }
}
