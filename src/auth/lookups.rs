//! Session look-ups that arrive while others are in flight go to the database together, in
//! one statement (SPEC §14). Nothing is cached and nothing waits on a timer: a look-up that
//! finds a free turn runs at once, alone; one that finds every turn taken queues, and the
//! next free turn takes the whole queue in one `IN (…)` statement. Every look-up is answered
//! by a statement that started after it arrived, so a session revoked before a request came
//! in — on this instance or another — is refused, exactly as with one query per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::domain::SessionId;
use crate::store::{SessionUser, Store, StoreError};
use crate::time::Clock;

/// Statements in flight at once: with more, look-ups would run alone again instead of
/// sharing a round trip; with one, the database would sit idle while answers travel.
const TURNS: usize = 2;
/// Sessions asked for in one statement at most; the rest wait for the next turn.
const MAX_BATCH: usize = 256;

pub struct SessionLookups {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Turns taken: statements in flight, or handed to a waiter about to send one.
    running: usize,
    queue: Vec<Waiter>,
}

struct Waiter {
    id: SessionId,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Found(Option<Box<SessionUser>>),
    /// The shared statement failed: ask alone, to get (and report) this request's own error.
    Retry,
    /// Your turn: look up your own session and these waiters'.
    Lead(Turn, Vec<Waiter>),
}

/// A taken turn. Dropped — after its statement, or unused by a waiter that went away — it
/// hands the queue to the next waiter, or frees the turn.
struct Turn {
    inner: Arc<Inner>,
    armed: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.armed {
            self.inner.hand_off();
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hand_off(self: &Arc<Self>) {
        let mut state = self.lock();
        loop {
            if state.queue.is_empty() {
                state.running -= 1;
                return;
            }
            let take = state.queue.len().min(MAX_BATCH);
            let rest = state.queue.split_off(take);
            let mut batch = std::mem::replace(&mut state.queue, rest);
            let leader = batch.swap_remove(0);
            let turn = Turn {
                inner: Arc::clone(self),
                armed: true,
            };
            match leader.reply.send(Reply::Lead(turn, batch)) {
                Ok(()) => return,
                // That waiter went away: put the others back in front and try the next.
                Err(Reply::Lead(mut turn, batch)) => {
                    turn.armed = false;
                    state.queue.splice(0..0, batch);
                }
                Err(_) => {}
            }
        }
    }
}

impl Default for SessionLookups {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
            }),
        }
    }
}

impl SessionLookups {
    /// The session if it is active (not revoked, not expired, its user active).
    pub async fn session(
        &self,
        store: &dyn Store,
        clock: &Clock,
        id: &SessionId,
    ) -> Result<Option<SessionUser>, StoreError> {
        if !store.coalesces_lookups() {
            return store.session_by_id(id, clock.now()).await;
        }
        let waiting = {
            let mut state = self.inner.lock();
            if state.running < TURNS {
                state.running += 1;
                None
            } else {
                let (reply, answer) = oneshot::channel();
                state.queue.push(Waiter {
                    id: id.clone(),
                    reply,
                });
                Some(answer)
            }
        };
        let (_turn, others) = match waiting {
            None => (
                Turn {
                    inner: Arc::clone(&self.inner),
                    armed: true,
                },
                Vec::new(),
            ),
            Some(answer) => match answer.await {
                Ok(Reply::Found(found)) => return Ok(found.map(|b| *b)),
                Ok(Reply::Lead(turn, others)) => (turn, others),
                Ok(Reply::Retry) | Err(_) => return store.session_by_id(id, clock.now()).await,
            },
        };
        if others.is_empty() {
            return store.session_by_id(id, clock.now()).await;
        }
        let mut ids = Vec::with_capacity(others.len() + 1);
        ids.push(id.clone());
        ids.extend(others.iter().map(|w| w.id.clone()));
        // Many requests of one client carry the same session.
        ids.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        ids.dedup();
        match store.sessions_by_ids(&ids, clock.now()).await {
            Ok(found) => {
                let mut by_id: HashMap<SessionId, SessionUser> = found
                    .into_iter()
                    .map(|su| (su.session.id.clone(), su))
                    .collect();
                for waiter in others {
                    let _ = waiter
                        .reply
                        .send(Reply::Found(by_id.get(&waiter.id).cloned().map(Box::new)));
                }
                Ok(by_id.remove(id))
            }
            Err(e) => {
                for waiter in others {
                    let _ = waiter.reply.send(Reply::Retry);
                }
                Err(e)
            }
        }
    }
}
