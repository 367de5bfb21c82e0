//! Idempotency keys of the store node's writes: a checkout that retries a
//! sale (its answer lost to a broken connection, a timeout) with the same
//! `Idempotency-Key` gets the first attempt's answer instead of selling
//! twice, as the HTTP service's `/v1` writes do.
//!
//! A key is taken when its command is sent: a retry while it awaits its
//! decision is answered 202 (nothing sent again), after it the stored
//! answer, the same status and body. A key used with another request is
//! refused (422). Refusals decided before sending (nothing sent) are not
//! kept, and neither is a command the session ended without deciding
//! (nothing was done: a retry sends it). Kept in memory only, at most
//! [`KEYS_MAX`] (the oldest decided ones make room); a restart of the node
//! forgets them.

use std::collections::{HashMap, VecDeque};

use super::super::{Answer, IdempotencyKey};
use super::Waiting;

/// Decided keys kept at most (keys awaiting a decision are bounded by the
/// till's in-flight window besides).
pub const KEYS_MAX: usize = 65_536;

/// What is known of a key.
enum State {
    /// Sent as `client_seq`; what its answer needs.
    Pending {
        client_seq: u32,
        sku: u32,
        waiting: Waiting,
    },
    Done(Answer),
}

struct Entry {
    request: String,
    state: State,
}

/// What a request with a key gets before anything is sent.
pub(super) enum Known {
    /// A new key: send it, then [`Keys::sent`].
    New,
    /// Answer this and send nothing.
    Answer(Answer),
    /// Still awaiting its decision: send nothing.
    Pending,
    /// The key was used with another request.
    Mismatch(String),
}

/// The key table. See the module documentation.
#[derive(Default)]
pub(super) struct Keys {
    entries: HashMap<String, Entry>,
    /// Keys in the order they were taken (eviction of decided ones).
    order: VecDeque<String>,
    /// Keys awaiting their decision, by client_seq.
    by_seq: HashMap<u32, String>,
}

impl Keys {
    pub(super) fn known(&self, key: &IdempotencyKey) -> Known {
        match self.entries.get(&key.key) {
            None => Known::New,
            Some(entry) if entry.request != key.request => Known::Mismatch(entry.request.clone()),
            Some(Entry {
                state: State::Done(answer),
                ..
            }) => Known::Answer(answer.clone()),
            Some(_) => Known::Pending,
        }
    }

    /// `key`'s command went out as `client_seq`.
    pub(super) fn sent(
        &mut self,
        key: &IdempotencyKey,
        client_seq: u32,
        sku: u32,
        waiting: Waiting,
    ) {
        self.make_room();
        self.by_seq.insert(client_seq, key.key.clone());
        self.order.push_back(key.key.clone());
        self.entries.insert(
            key.key.clone(),
            Entry {
                request: key.request.clone(),
                state: State::Pending {
                    client_seq,
                    sku,
                    waiting,
                },
            },
        );
    }

    /// The key awaiting `client_seq`'s decision, with what its answer
    /// needs (`sku`, `waiting`).
    pub(super) fn pending(&self, client_seq: u32) -> Option<(&str, u32, Waiting)> {
        let key = self.by_seq.get(&client_seq)?;
        match self.entries.get(key)?.state {
            State::Pending { sku, waiting, .. } => Some((key, sku, waiting)),
            State::Done(_) => None,
        }
    }

    /// `client_seq` was decided: its key keeps `answer` (or, `None`, is
    /// forgotten: nothing was done, a retry sends it again).
    pub(super) fn decided(&mut self, client_seq: u32, answer: Option<Answer>) {
        let Some(key) = self.by_seq.remove(&client_seq) else {
            return;
        };
        match answer {
            Some(answer) => {
                if let Some(entry) = self.entries.get_mut(&key) {
                    entry.state = State::Done(answer);
                }
            }
            None => {
                self.entries.remove(&key);
                self.order.retain(|k| *k != key);
            }
        }
    }

    /// Keys held (decided and pending).
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the oldest decided keys while the table is full.
    fn make_room(&mut self) {
        let mut looked = 0;
        while self.entries.len() >= KEYS_MAX && looked < self.order.len() {
            let Some(oldest) = self.order.pop_front() else {
                return;
            };
            match self.entries.get(&oldest).map(|entry| &entry.state) {
                Some(State::Pending { client_seq, .. }) if self.by_seq.contains_key(client_seq) => {
                    // Still awaited: keep it, look further.
                    self.order.push_back(oldest);
                    looked += 1;
                }
                _ => {
                    self.entries.remove(&oldest);
                }
            }
        }
    }
}
