//! Password hashing: argon2id off the async runtime, a bound on concurrent hashes, legacy bcrypt.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::NewPassword;
use crate::error::Error;

mod workers;

/// OWASP's argon2id baseline, as SPEC §3 asks: m=19456 KiB, t=2, p=1.
const MEMORY_KIB: u32 = 19_456;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Valid { needs_rehash: bool },
    Invalid,
}

/// Hashes and verifies passwords on threads of their own, one hash per thread at once. A
/// burst queues, but only as long as `HASH_QUEUE_MAX_WAIT_MS` allows: past that a request is
/// refused at once (503 `overloaded`) rather than kept waiting (SPEC §14).
#[derive(Clone)]
pub struct Passwords {
    /// One thread per hashing slot, at a lower priority than the rest ([`workers`]). Their
    /// job queue is the hashing queue: a thread that finishes a hash takes the next job
    /// itself, with no turn of the async runtime in between, and skips the job of a request
    /// whose client went away.
    workers: Arc<workers::Workers>,
    queue: Arc<Queue>,
    /// Strength checks (zxcvbn) run on tokio's blocking pool, bounded apart from hashing so
    /// that neither waits behind the other.
    strength_permits: Arc<Semaphore>,
    memory: Memory,
    /// Verified when the account does not exist, so that failure costs the same time.
    dummy_hash: Arc<str>,
}

/// Who is waiting for or holding a hashing slot, and how long a hash takes lately: enough to
/// tell a newcomer at once whether its wait would exceed the bound.
struct Queue {
    slots: usize,
    max_wait: Duration,
    /// Admitted requests: hashing, waiting for a slot, or between admission and hashing.
    admitted: AtomicUsize,
    /// Moving average of one hash, in microseconds.
    hash_micros: AtomicU64,
    /// Hashes finished since start: unchanged between two looks means hashing was idle.
    finished: AtomicU64,
    /// Requests refused since the last summary ([`Passwords::report_refusals`]).
    refused: AtomicU64,
    /// Admitted requests doing their database work before hashing (a sign-in's look-up and
    /// attempt record), a few at a time: a crowd of them would hold every pooled connection
    /// and starve the requests that need only one (`/me`).
    preparing: Arc<Semaphore>,
    /// Likewise for the database work after the hash (opening the session, recording the
    /// outcome): together at most half the pool, whatever a storm or a locked row does.
    finishing: Arc<Semaphore>,
}

/// Admitted requests at their database work at once, before and after the hash each (the
/// pools hold 8 and 16 connections).
const PREPARING_AT_ONCE: usize = 4;

/// A first guess at one hash (argon2id at m=19 MiB, t=2 takes about 18 ms here), until
/// real hashes are timed.
const INITIAL_HASH_ESTIMATE: Duration = Duration::from_millis(25);

impl Queue {
    /// The expected wait of a request with `ahead` admitted requests before it.
    fn expected_wait(&self, ahead: usize) -> Duration {
        if ahead < self.slots {
            return Duration::ZERO;
        }
        let rounds = u32::try_from((ahead - self.slots) / self.slots + 1).unwrap_or(u32::MAX);
        Duration::from_micros(self.hash_micros.load(Ordering::Relaxed)).saturating_mul(rounds)
    }

    fn record_hash(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.hash_micros.load(Ordering::Relaxed);
        // An average over about the last eight hashes; a lost update under a race only
        // drops one sample.
        self.hash_micros
            .store(old - old / 8 + took / 8, Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    fn publish_depth(&self, depth: usize) {
        metrics::gauge!("authflow_hash_queue_depth").set(depth as f64);
    }
}

/// A place in the hashing queue, held from admission until the hash is done; dropping it
/// leaves the queue.
pub struct Admission {
    queue: Arc<Queue>,
}

impl Admission {
    /// Waits for a turn at the database work that comes before the hash; the turn ends when
    /// the returned permit is dropped.
    pub async fn prepare(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        Ok(Arc::clone(&self.queue.preparing)
            .acquire_owned()
            .await
            .context("sign-in preparation closed")?)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let before = self.queue.admitted.fetch_sub(1, Ordering::AcqRel);
        self.queue.publish_depth(before.saturating_sub(1));
    }
}

fn current_params() -> Result<Params, Error> {
    Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| Error::from(anyhow::anyhow!("argon2 params: {e}")))
}

/// Argon2 work memory (19 MiB a hash), kept and reused while hashes keep coming: allocating
/// it afresh for every hash leaves the allocator holding hundreds of MiB once a few threads
/// have hashed. Released when hashing has been idle a while ([`Passwords::release_idle`]).
type Memory = Arc<Mutex<Vec<Vec<Block>>>>;

/// Blocks reserved per work area: more than glibc's largest dynamic mmap threshold (32 MiB),
/// so where glibc allocates (the library in another program; the binary uses jemalloc) each
/// area is always its own mapping and freeing it returns it to the system at once.
/// Only the 19 MiB a hash uses are ever touched, so only those count as resident.
const RESERVED_BLOCKS: usize = 33 * 1024;

fn with_memory<T>(memory: &Memory, work: impl FnOnce(&mut Vec<Block>) -> T) -> T {
    let mut blocks = memory
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .unwrap_or_default();
    let result = work(&mut blocks);
    memory
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(blocks);
    result
}

/// One argon2 computation into `out`, in `blocks` (grown to the size `params` need).
fn compute(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    blocks: &mut Vec<Block>,
) -> Result<(), argon2::Error> {
    let needed = params.block_count();
    if blocks.len() < needed {
        if blocks.capacity() < needed.max(RESERVED_BLOCKS) {
            blocks.reserve_exact(needed.max(RESERVED_BLOCKS) - blocks.len());
        }
        blocks.resize(needed, Block::default());
    }
    argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
}

fn hash_blocking(password: &str, blocks: &mut Vec<Block>) -> Result<String, Error> {
    let params = current_params()?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let phc = |e: password_hash::Error| Error::from(anyhow::anyhow!("argon2 hash: {e}"));
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).map_err(phc)?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        compute(
            &argon2,
            &params,
            password.as_bytes(),
            salt_bytes,
            out,
            blocks,
        )
        .map_err(password_hash::Error::from)
    })
    .map_err(phc)?;
    let hash = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(phc)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// A well-formed argon2id hash of nothing anyone knows: a random salt and random output.
/// Verifying against it costs a real hash; making it costs none, so start-up allocates no
/// hashing memory.
fn dummy_hash() -> Result<String, Error> {
    let phc = |e: password_hash::Error| Error::from(anyhow::anyhow!("argon2 dummy hash: {e}"));
    let params = current_params()?;
    let salt = SaltString::generate(&mut OsRng);
    let mut random = [0u8; Params::DEFAULT_OUTPUT_LEN];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut random);
    let hash = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(phc)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&random).map_err(phc)?),
    };
    Ok(hash.to_string())
}

fn is_legacy_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|p| stored.starts_with(p))
}

/// Recomputes with the PHC string's own algorithm, version, parameters and salt, and
/// compares in constant time (`Output`'s equality).
fn argon2_matches(password: &str, parsed: &PasswordHash<'_>, blocks: &mut Vec<Block>) -> bool {
    let mut check = || -> Option<bool> {
        let expected = parsed.hash?;
        let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
        let version = match parsed.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(parsed).ok()?;
        let mut salt_buf = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt_buf).ok()?;
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let mut out = vec![0u8; expected.len()];
        compute(
            &argon2,
            &params,
            password.as_bytes(),
            salt,
            &mut out,
            blocks,
        )
        .ok()?;
        Some(Output::new(&out).ok()? == expected)
    };
    check().unwrap_or(false)
}

fn verify_blocking(password: &str, stored: &str, blocks: &mut Vec<Block>) -> Verification {
    if is_legacy_bcrypt(stored) {
        return match bcrypt::verify(password, stored) {
            Ok(true) => Verification::Valid { needs_rehash: true },
            _ => Verification::Invalid,
        };
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verification::Invalid;
    };
    if !argon2_matches(password, &parsed, blocks) {
        return Verification::Invalid;
    }
    let current = parsed.algorithm == argon2::ARGON2ID_IDENT
        && Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == MEMORY_KIB && p.t_cost() == ITERATIONS && p.p_cost() == PARALLELISM
        });
    Verification::Valid {
        needs_rehash: !current,
    }
}

impl Passwords {
    /// `max_concurrent` hashes at once; a request that would wait longer than `max_wait`
    /// for one is refused.
    pub fn new(max_concurrent: usize, max_wait: Duration) -> Result<Self, Error> {
        let slots = max_concurrent.max(1);
        Ok(Self {
            workers: Arc::new(workers::Workers::start(slots)?),
            queue: Arc::new(Queue {
                slots,
                max_wait,
                admitted: AtomicUsize::new(0),
                hash_micros: AtomicU64::new(
                    u64::try_from(INITIAL_HASH_ESTIMATE.as_micros()).unwrap_or(u64::MAX),
                ),
                finished: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                preparing: Arc::new(Semaphore::new(PREPARING_AT_ONCE)),
                finishing: Arc::new(Semaphore::new(PREPARING_AT_ONCE)),
            }),
            strength_permits: Arc::new(Semaphore::new(slots)),
            memory: Memory::default(),
            dummy_hash: dummy_hash()?.into(),
        })
    }

    /// Takes a place in the hashing queue, or refuses at once when the wait would exceed
    /// `HASH_QUEUE_MAX_WAIT_MS`. Sign-in takes its place before it records the attempt, so a
    /// refused request leaves no trace that could count against the account.
    pub fn admit(&self) -> Result<Admission, Error> {
        let queue = &self.queue;
        let ahead = queue.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission {
            queue: Arc::clone(queue),
        };
        let wait = queue.expected_wait(ahead);
        if wait > queue.max_wait || (wait > Duration::ZERO && queue.max_wait.is_zero()) {
            drop(admission);
            metrics::counter!("authflow_hash_overloaded_total").increment(1);
            queue.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        queue.publish_depth(ahead + 1);
        Ok(admission)
    }

    async fn run<T: Send + 'static>(
        &self,
        admission: Admission,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let queued = Instant::now();
        let memory = Arc::clone(&self.memory);
        let queue = Arc::clone(&self.queue);
        let result = self
            .workers
            .run(move || {
                let started = Instant::now();
                metrics::histogram!("authflow_hash_queue_wait_seconds")
                    .record(started.duration_since(queued).as_secs_f64());
                let result = with_memory(&memory, work);
                queue.record_hash(started.elapsed());
                result
            })
            .await?;
        drop(admission);
        Ok(result)
    }

    /// Frees the kept argon2 memory if no hash ran since `last_seen` (what the previous call
    /// returned) and none is queued; returns the count to pass next time. Called every
    /// 10 s, it gives the memory of a burst back within 20 s of its end.
    pub fn release_idle(&self, last_seen: u64) -> u64 {
        let finished = self.queue.finished.load(Ordering::Relaxed);
        if finished == last_seen && self.queue.admitted.load(Ordering::Acquire) == 0 {
            let released =
                std::mem::take(&mut *self.memory.lock().unwrap_or_else(PoisonError::into_inner));
            if !released.is_empty() {
                tracing::debug!(areas = released.len(), "released idle hashing memory");
            }
        }
        finished
    }

    /// Logs, as one warning, how many requests were refused (503 `overloaded`) since the
    /// last call, if any, and returns that count. A storm refuses thousands a second: one
    /// line each would flood the log and cost the threads that answer everything else.
    pub fn report_refusals(&self) -> u64 {
        let refused = self.queue.refused.swap(0, Ordering::Relaxed);
        if refused > 0 {
            tracing::warn!(
                refused,
                "requests refused: every password-hashing slot was busy for longer than \
                 HASH_QUEUE_MAX_WAIT_MS"
            );
        }
        refused
    }

    /// Judges a new password (length and zxcvbn strength against the account's own words)
    /// on the blocking pool: `Ok(Err(message))` when it is too weak.
    pub async fn judge(
        &self,
        password: String,
        user_inputs: Vec<String>,
    ) -> Result<Result<NewPassword, String>, Error> {
        let _permit = self
            .strength_permits
            .acquire()
            .await
            .context("password strength pool closed")?;
        tokio::task::spawn_blocking(move || {
            let inputs: Vec<&str> = user_inputs.iter().map(String::as_str).collect();
            NewPassword::parse(&password, &inputs)
        })
        .await
        .context("password strength task failed")
        .map_err(Error::from)
    }

    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let admission = self.admit()?;
        self.run(admission, move |blocks| hash_blocking(&password, blocks))
            .await?
    }

    /// Verifies against `stored`, or against the dummy hash when there is no account, so
    /// that both take the same time; the latter is always `Invalid`.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verification, Error> {
        let admission = self.admit()?;
        self.verify_admitted(admission, password, stored).await
    }

    /// Waits for a turn at the database work that follows a verified hash (see
    /// [`Admission::prepare`] for the work before it); the turn ends when the permit drops.
    pub async fn finishing(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        Ok(Arc::clone(&self.queue.finishing)
            .acquire_owned()
            .await
            .context("sign-in completion closed")?)
    }

    /// [`Passwords::verify`] with a place in the queue taken beforehand ([`Passwords::admit`]).
    pub async fn verify_admitted(
        &self,
        admission: Admission,
        password: String,
        stored: Option<String>,
    ) -> Result<Verification, Error> {
        // An account without a password (created by social sign-in) is judged like an
        // unknown one: against the dummy hash, at the same cost, never valid.
        let (stored, real) = match stored {
            Some(s) if crate::store::password_is_usable(&s) => (s, true),
            _ => (self.dummy_hash.to_string(), false),
        };
        let verification = self
            .run(admission, move |blocks| {
                verify_blocking(&password, &stored, blocks)
            })
            .await?;
        Ok(if real {
            verification
        } else {
            Verification::Invalid
        })
    }
}

/// Prints the time of one argon2id hash at the production setting, on one core.
pub fn benchmark(rounds: u32) {
    let rounds = rounds.max(1);
    let alone = match time_hashes(rounds) {
        Some(per_hash) => per_hash,
        None => {
            println!("argon2id: hashing failed");
            return;
        }
    };
    // The ceiling is every core hashing at once: they share the memory bus and caches, so
    // it is less than one core's rate times the cores.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let start = std::time::Instant::now();
    let all = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| scope.spawn(move || time_hashes(rounds)))
            .collect();
        workers
            .into_iter()
            .all(|w| w.join().ok().flatten().is_some())
    });
    if !all {
        println!("argon2id: hashing failed");
        return;
    }
    let together = f64::from(rounds) * cores as f64 / start.elapsed().as_secs_f64();
    println!(
        "argon2id m={MEMORY_KIB} t={ITERATIONS} p={PARALLELISM}: {:.1} ms per hash, {:.1} hashes/s per core; {together:.1} hashes/s on {cores} cores at once",
        alone * 1000.0,
        1.0 / alone
    );
}

/// Seconds per hash over `rounds` hashes on this thread, or `None` if hashing failed.
fn time_hashes(rounds: u32) -> Option<f64> {
    let mut blocks = Vec::new();
    let start = std::time::Instant::now();
    for i in 0..rounds {
        hash_blocking(&format!("benchmark password {i}"), &mut blocks).ok()?;
    }
    Some(start.elapsed().as_secs_f64() / f64::from(rounds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher as _;

    #[tokio::test]
    async fn argon2id_hashes_verify_and_are_current() {
        let p = Passwords::new(2, Duration::from_secs(2)).unwrap();
        let hash = p.hash("correct horse".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(
            p.verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap(),
            Verification::Valid {
                needs_rehash: false
            }
        );
        assert_eq!(
            p.verify("wrong horse".into(), Some(hash)).await.unwrap(),
            Verification::Invalid
        );
    }

    #[tokio::test]
    async fn legacy_bcrypt_verifies_and_asks_for_a_rehash() {
        let p = Passwords::new(1, Duration::from_secs(2)).unwrap();
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let hash = bcrypt::hash("old secret", 4)
                .unwrap()
                .replacen("$2b$", prefix, 1);
            assert_eq!(
                p.verify("old secret".into(), Some(hash.clone()))
                    .await
                    .unwrap(),
                Verification::Valid { needs_rehash: true }
            );
            assert_eq!(
                p.verify("other".into(), Some(hash)).await.unwrap(),
                Verification::Invalid
            );
        }
    }

    #[tokio::test]
    async fn weaker_argon2_parameters_ask_for_a_rehash_and_no_account_never_verifies() {
        let p = Passwords::new(1, Duration::from_secs(2)).unwrap();
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert_eq!(
            p.verify("pw".into(), Some(weak)).await.unwrap(),
            Verification::Valid { needs_rehash: true }
        );
        assert_eq!(
            p.verify("pw".into(), None).await.unwrap(),
            Verification::Invalid
        );
        assert_eq!(
            p.verify("pw".into(), Some("not a hash".into()))
                .await
                .unwrap(),
            Verification::Invalid
        );
    }

    #[tokio::test]
    async fn hashing_memory_is_made_on_first_use_and_released_when_idle() {
        let p = Passwords::new(1, Duration::from_secs(2)).unwrap();
        let kept = |p: &Passwords| p.memory.lock().unwrap().len();
        assert_eq!(kept(&p), 0, "start-up allocates no hashing memory");
        p.hash("first".into()).await.unwrap();
        assert_eq!(kept(&p), 1);
        // A hash since the last look: kept.
        let seen = p.release_idle(0);
        assert_eq!(seen, 1);
        assert_eq!(kept(&p), 1);
        // Idle since: released.
        assert_eq!(p.release_idle(seen), 1);
        assert_eq!(kept(&p), 0);
        // And made again on demand.
        let hash = p.hash("second".into()).await.unwrap();
        assert!(matches!(
            p.verify("second".into(), Some(hash)).await.unwrap(),
            Verification::Valid { .. }
        ));
    }

    #[tokio::test]
    async fn refusals_are_summed_up_between_reports() {
        let p = Passwords::new(1, Duration::ZERO).unwrap();
        assert_eq!(p.report_refusals(), 0);
        let admitted = p.admit().unwrap();
        for _ in 0..3 {
            assert!(matches!(p.admit(), Err(Error::Overloaded { .. })));
        }
        assert_eq!(p.report_refusals(), 3);
        assert_eq!(p.report_refusals(), 0, "each refusal is reported once");
        drop(admitted);
        let again = p.admit().expect("the queue is empty again");
        drop(again);
        assert_eq!(p.report_refusals(), 0);
    }

    #[test]
    fn the_expected_wait_grows_with_the_queue() {
        let queue = Queue {
            slots: 2,
            max_wait: Duration::from_millis(100),
            admitted: AtomicUsize::new(0),
            hash_micros: AtomicU64::new(20_000),
            finished: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            preparing: Arc::new(Semaphore::new(1)),
            finishing: Arc::new(Semaphore::new(1)),
        };
        assert_eq!(queue.expected_wait(0), Duration::ZERO);
        assert_eq!(queue.expected_wait(1), Duration::ZERO);
        assert_eq!(queue.expected_wait(2), Duration::from_millis(20));
        assert_eq!(queue.expected_wait(3), Duration::from_millis(20));
        assert_eq!(queue.expected_wait(4), Duration::from_millis(40));
    }
}
