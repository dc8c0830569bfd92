//! The threads that hash passwords: as many as there are hashing slots, each at a lower
//! scheduling priority (a higher nice value) than the rest of the service.
//!
//! A hash is batch work that takes the CPU for its whole 15–20 ms; everything else the
//! service does (answering `/me`, `/health`, a 503 `overloaded`) is short and waits for the
//! CPU at every turn. At the same priority, the kernel shares the cores evenly, so during a
//! sign-in storm every short request waits behind the hashes. At a higher nice value the
//! hashes take what the short work leaves: alone, they still get both cores (sign-in
//! throughput is unchanged), and in a storm the short requests go first (the benchmark's
//! storm on SQLite: `/me` p99 76–78 ms at the same priority, 30–32 ms with hashing at nice 10).
//! Tokio's blocking pool is not used for this: a thread whose priority was lowered cannot
//! raise it again without privileges, and that pool's threads run other work too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;

use crate::error::Error;

/// How much lower than the service's other threads hashing runs: at 10, a hashing thread
/// weighs about a tenth of a normal one when both want the CPU (Linux CFS weights).
const NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads. They end when this (the last sender of their queue) is dropped.
pub(super) struct Workers {
    jobs: mpsc::Sender<Job>,
}

impl Workers {
    pub(super) fn start(threads: usize) -> Result<Self, Error> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("authflow-hash-{n}"))
                .spawn(move || work(&queue))
                .context("starting a password hashing thread")?;
        }
        Ok(Self { jobs })
    }

    /// Runs `job` on a hashing thread, after the jobs queued before it, and waits for its
    /// result without blocking the runtime. A job whose caller stopped waiting (its client
    /// left) before a thread took it is skipped; until a thread reaches it, it stays queued
    /// with what it holds (the password), for as long as the admission bound lets a queue
    /// wait (`HASH_QUEUE_MAX_WAIT_MS`).
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                if done.is_closed() {
                    return;
                }
                // The caller may still go while the job runs; the result is then dropped.
                let _ = done.send(job());
            }))
            .ok()
            .context("the password hashing threads have stopped")?;
        Ok(result.await.context("a password hashing job failed")?)
    }
}

fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    loop {
        // The lock is held only while waiting for the next job, never while hashing.
        let job = match queue.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(mpsc::RecvError) => return,
        };
        // A panic ends that job (its caller gets an error), not the thread.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a password hashing job panicked");
        }
    }
}

/// On Linux the nice value belongs to the thread, so this lowers only the calling one.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), NICENESS) {
        tracing::debug!(error = %e, "hashing runs at the normal priority");
    }
}

/// Elsewhere the nice value belongs to the whole process, which must keep its own.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn jobs_run_on_threads_of_lower_priority() {
        let priority = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let outside = priority().unwrap();
        let workers = Workers::start(1).unwrap();
        let inside = workers.run(move || priority().unwrap()).await.unwrap();
        assert!(outside < NICENESS, "the test itself runs at nice {outside}");
        assert_eq!(inside, NICENESS);
        let name = workers
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("authflow-hash-0"));
    }

    /// A hash queued behind another is skipped when its caller stops waiting for it before a
    /// thread takes it (a client that went away costs no hash).
    #[tokio::test]
    async fn a_job_whose_caller_left_is_skipped() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let workers = Workers::start(1).unwrap();
        let (release, hold) = mpsc::channel::<()>();
        let busy = workers.run(move || hold.recv().is_ok());
        tokio::pin!(busy);
        // Polled once, so that it is handed to the thread first.
        let started = tokio::time::timeout(std::time::Duration::from_millis(20), &mut busy).await;
        assert!(started.is_err());
        let ran = Arc::new(AtomicBool::new(false));
        let abandoned = {
            let ran = Arc::clone(&ran);
            workers.run(move || ran.store(true, Ordering::SeqCst))
        };
        // Queued behind the busy job, then given up.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(50), abandoned).await;
        assert!(gave_up.is_err());
        release.send(()).unwrap();
        assert!(busy.await.unwrap());
        assert_eq!(workers.run(|| 7).await.unwrap(), 7);
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job ran");
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let workers = Workers::start(1).unwrap();
        let failed = workers.run(|| -> u8 { panic!("boom") }).await;
        assert!(failed.is_err());
        assert_eq!(workers.run(|| 7).await.unwrap(), 7);
    }
}
