//! The till's state beside its consumer and client: the replica, the
//! commands awaiting their outcome, our open orders and holds, and how an
//! event on the stream or an ack resolves one of our commands.

use hdrhistogram::Histogram;
use tally_client::client::{ClientError, ClientEvent, OrderEntryClient};
use tally_client::consumer::monotonic_ns;
use tally_client::replica::{Applied, Replica};
use tally_wire::{hold_outcome, reject_reason, system_code, Message};

use crate::check::Command;
use crate::{CommandKind, Outcome, OutcomeReport, PosError, PosStats, Refused};

pub(crate) const SLOT_FREE: u8 = 0;
pub(crate) const SLOT_AWAITING: u8 = 1;

/// A command of ours awaiting its outcome.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub(crate) client_seq: u32,
    pub(crate) state: u8,
    pub(crate) kind: CommandKind,
    /// Order or hold id.
    pub(crate) id: u64,
    /// New quantity of a modify.
    pub(crate) qty: u32,
    pub(crate) sent_ns: u64,
}

impl Pending {
    pub(crate) const FREE: Pending = Pending {
        client_seq: 0,
        state: SLOT_FREE,
        kind: CommandKind::Order,
        id: 0,
        qty: 0,
        sent_ns: 0,
    };
}

/// An order of ours that filled and was not cancelled (as the till tracks
/// it: [`Pos::open_order_list`](crate::Pos::open_order_list)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOrder {
    pub order_id: u64,
    pub remaining: u32,
    /// A modify or cancel of it awaits its outcome.
    pub busy: bool,
}

/// A hold of ours that has not ended (as the till tracks it:
/// [`Pos::open_hold_list`](crate::Pos::open_hold_list)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenHold {
    pub hold_id: u64,
    /// Stream seq of its `V` (the key `E` names).
    pub cmd_seq: u64,
    /// A confirm or release of it awaits its outcome.
    pub busy: bool,
}

/// Everything but the consumer and the client, so their callbacks can
/// borrow it.
pub(crate) struct Core {
    pub(crate) origin: u16,
    pub(crate) replica: Replica,
    pub(crate) pending: Box<[Pending]>,
    pub(crate) mask: u32,
    pub(crate) in_flight_max: usize,
    pub(crate) in_flight: usize,
    /// client_seq of our first command in this run (0 = none sent yet).
    pub(crate) first_client_seq: u32,
    /// Oldest client_seq that may still await its outcome.
    pub(crate) oldest: u32,
    /// One past our newest command.
    pub(crate) next_client_seq: u32,
    pub(crate) open_orders: Vec<OpenOrder>,
    pub(crate) open_orders_max: usize,
    pub(crate) open_holds: Vec<OpenHold>,
    pub(crate) open_holds_max: usize,
    /// Moves whenever the directory may have changed (`R`, `L`, `S(W)`).
    pub(crate) directory_version: u64,
    pub(crate) stats: PosStats,
    pub(crate) histogram: Histogram<u64>,
    pub(crate) interval_histogram: Histogram<u64>,
    /// Stream seq of our first acked command, checked for our origin when
    /// the consumer delivers it.
    pub(crate) verify_seq: Option<u64>,
    pub(crate) origin_verified: bool,
    pub(crate) error: Option<PosError>,
}

/// Nanoseconds since the Unix epoch (the clock hold expiry is stamped in):
/// the runtime's one wall clock.
pub(crate) use tally_runtime::clock::wall_ns as wall_clock_ns;

impl Core {
    /// Whether another command may be sent now.
    pub(crate) fn has_room(&self, client: &OrderEntryClient) -> bool {
        if self.in_flight >= self.in_flight_max || !client.has_room() {
            return false;
        }
        let next = client.next_client_seq();
        self.first_client_seq == 0 || next.wrapping_sub(self.oldest) <= self.mask
    }

    pub(crate) fn skip(&mut self, reason: u8) {
        self.stats.skipped_would_fail += 1;
        self.stats.skipped.add(reason);
    }

    /// Queues `command` and records it as awaiting its outcome.
    pub(crate) fn send(
        &mut self,
        client: &mut OrderEntryClient,
        command: &Command,
        now_ns: u64,
    ) -> Result<u32, Refused> {
        let client_seq = match client.queue(&command.bytes[..command.len]) {
            Ok(client_seq) => client_seq,
            Err(ClientError::WindowFull) => {
                self.stats.full += 1;
                return Err(Refused::Full);
            }
            Err(ClientError::Disconnected) => return Err(Refused::NotReady),
            Err(_) => return Err(Refused::Closed),
        };
        if self.first_client_seq == 0 {
            self.first_client_seq = client_seq;
            self.oldest = client_seq;
        }
        self.next_client_seq = client_seq + 1;
        let slot = &mut self.pending[(client_seq & self.mask) as usize];
        assert_eq!(slot.state, SLOT_FREE, "has_room keeps slots from wrapping");
        *slot = Pending {
            client_seq,
            state: SLOT_AWAITING,
            kind: command.kind,
            id: command.id,
            qty: command.qty,
            sent_ns: now_ns,
        };
        self.in_flight += 1;
        self.stats.sent.add(command.kind);
        match command.kind {
            CommandKind::Modify | CommandKind::Cancel => {
                if let Some(order) = self.open_order_mut(command.id) {
                    order.busy = true;
                }
            }
            CommandKind::Confirm | CommandKind::Release => {
                if let Some(i) = self.open_hold_index(command.id) {
                    self.open_holds[i].busy = true;
                }
            }
            CommandKind::Order | CommandKind::Reserve => {}
        }
        Ok(client_seq)
    }

    // -------------------------------------------------------------------
    // The stream and the client.

    pub(crate) fn on_stream(
        &mut self,
        seq: u64,
        message: &Message,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) {
        let applied = self.replica.apply(seq, message);
        match *message {
            Message::HoldEnded(e) => {
                let cmd_seq = e.cmd_seq.get();
                if let Some(i) = self.open_holds.iter().position(|h| h.cmd_seq == cmd_seq) {
                    self.open_holds.swap_remove(i);
                    if e.outcome == hold_outcome::EXPIRED {
                        self.stats.holds_expired += 1;
                    }
                }
            }
            Message::GatewayReject(j) if j.header.origin.get() == self.origin => {
                let outcome = Outcome::GatewayRejected { reason: j.reason };
                self.resolve(j.header.client_seq.get(), seq, outcome, on_outcome);
            }
            Message::SkuDirectory(_) | Message::LocationDirectory(_) => {
                self.directory_version += 1;
            }
            Message::SystemEvent(s) if s.code == system_code::AUTHORITY_ONLINE => {
                self.directory_version += 1;
            }
            _ => {}
        }
        if let Applied::Event {
            answers: Some(cmd_seq),
        } = applied
        {
            let command = self.replica.command(cmd_seq).map(|c| *c.header());
            if let Some(header) = command {
                if header.origin.get() == self.origin {
                    if let Some(outcome) = outcome_of(message) {
                        self.resolve(header.client_seq.get(), cmd_seq, outcome, on_outcome);
                    }
                }
            }
        }
        if self.verify_seq == Some(seq) {
            self.verify_origin(message);
        }
    }

    /// Checks that our first acked command carries our origin.
    fn verify_origin(&mut self, message: &Message) {
        self.verify_seq = None;
        let origin = message.header().origin.get();
        if origin == self.origin {
            self.origin_verified = true;
        } else {
            self.error = Some(PosError::OriginMismatch {
                configured: self.origin,
                on_stream: origin,
            });
        }
    }

    pub(crate) fn on_client(
        &mut self,
        event: ClientEvent,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) {
        match event {
            ClientEvent::Ack(ack) => {
                self.stats.acks += 1;
                if let Some(reason) = ack.reject {
                    let outcome = Outcome::GatewayRejected { reason };
                    self.resolve(ack.client_seq, ack.stream_seq, outcome, on_outcome);
                } else if !self.origin_verified && self.verify_seq.is_none() {
                    if ack.stream_seq <= self.replica.last_seq() {
                        if let Some(command) = self.replica.command(ack.stream_seq) {
                            let header = *command.header();
                            let origin = header.origin.get();
                            if origin == self.origin {
                                self.origin_verified = true;
                            } else {
                                self.error = Some(PosError::OriginMismatch {
                                    configured: self.origin,
                                    on_stream: origin,
                                });
                            }
                        }
                    } else {
                        self.verify_seq = Some(ack.stream_seq);
                    }
                }
            }
            ClientEvent::AckUnavailable { .. } => self.stats.acks_unavailable += 1,
            // The end of the session (a rollover) is followed, not an
            // error: [`crate::Pos`] moves to the next one once the stream
            // has delivered the whole ended session.
            ClientEvent::Closed(ClientError::LoggedOut | ClientError::SessionEnded) => {}
            ClientEvent::Closed(error) => self.error = Some(PosError::Client(error)),
            ClientEvent::LoggedIn { .. } | ClientEvent::Disconnected => {}
        }
    }

    /// The session ended and its stream was delivered to its end: every
    /// command of ours still awaiting its outcome was not decided and never
    /// will be (it is reported [`Outcome::NotDecided`]); the replica, the
    /// numbering and our open orders and holds start afresh for the next
    /// session (its broadcast rebuilds the replica). Returns how many were
    /// not decided.
    pub(crate) fn end_session(&mut self, on_outcome: &mut impl FnMut(&OutcomeReport)) -> usize {
        let mut undecided = 0;
        let mut client_seq = self.oldest;
        while self.first_client_seq != 0 && client_seq != self.next_client_seq {
            let slot = self.pending[(client_seq & self.mask) as usize];
            if slot.state == SLOT_AWAITING && slot.client_seq == client_seq {
                self.resolve(client_seq, 0, Outcome::NotDecided, on_outcome);
                undecided += 1;
            }
            client_seq = client_seq.wrapping_add(1);
        }
        assert_eq!(self.in_flight, 0, "every pending command was reported");
        self.replica.clear();
        self.first_client_seq = 0;
        self.oldest = 0;
        self.next_client_seq = 0;
        self.verify_seq = None;
        self.origin_verified = false;
        self.open_orders.clear();
        self.open_holds.clear();
        self.directory_version += 1;
        undecided
    }

    /// Records the outcome of our command `client_seq` (once).
    fn resolve(
        &mut self,
        client_seq: u32,
        cmd_seq: u64,
        outcome: Outcome,
        on_outcome: &mut impl FnMut(&OutcomeReport),
    ) {
        let ours = self.first_client_seq != 0
            && client_seq >= self.first_client_seq
            && client_seq < self.next_client_seq;
        if !ours {
            // An earlier run of this till (same login), before a restart.
            return;
        }
        let slot = &mut self.pending[(client_seq & self.mask) as usize];
        if slot.state != SLOT_AWAITING || slot.client_seq != client_seq {
            // A `j` comes as an ack and on the stream: only the first counts.
            if !matches!(outcome, Outcome::GatewayRejected { .. }) {
                self.stats.duplicate_outcomes += 1;
            }
            return;
        }
        let pending = *slot;
        slot.state = SLOT_FREE;
        self.in_flight -= 1;
        while self.oldest != self.next_client_seq
            && self.pending[(self.oldest & self.mask) as usize].state == SLOT_FREE
        {
            self.oldest += 1;
        }
        let rtt_ns = monotonic_ns().saturating_sub(pending.sent_ns).max(1);
        self.histogram.saturating_record(rtt_ns);
        self.interval_histogram.saturating_record(rtt_ns);
        self.stats.outcomes += 1;
        self.apply_outcome(&pending, cmd_seq, outcome);
        on_outcome(&OutcomeReport {
            client_seq,
            cmd_seq,
            kind: pending.kind,
            id: pending.id,
            outcome,
            rtt_ns,
        });
    }

    /// Counts an outcome and updates our open orders and holds.
    fn apply_outcome(&mut self, pending: &Pending, cmd_seq: u64, outcome: Outcome) {
        let stats = &mut self.stats;
        match outcome {
            Outcome::Rejected { reason } => {
                stats.rejected += 1;
                stats.rejects.add(reason);
            }
            Outcome::GatewayRejected { reason } => {
                stats.gateway_rejected += 1;
                stats.gateway_rejects.add(reason);
            }
            Outcome::Filled { delta, .. } => stats.units_sold -= i64::from(delta),
            Outcome::HoldPlaced { .. } | Outcome::HoldReleased | Outcome::NotDecided => {}
        }
        let accepted = !matches!(
            outcome,
            Outcome::Rejected { .. } | Outcome::GatewayRejected { .. } | Outcome::NotDecided
        );
        let no_such = outcome
            == Outcome::Rejected {
                reason: reject_reason::NO_SUCH,
            };
        match pending.kind {
            CommandKind::Modify | CommandKind::Cancel => {
                self.order_changed(pending, accepted, no_such);
            }
            CommandKind::Confirm | CommandKind::Release => {
                self.hold_ended(pending, accepted, no_such);
            }
            CommandKind::Order => {
                if let Outcome::Filled { delta, .. } = outcome {
                    self.stats.filled += 1;
                    let order = OpenOrder {
                        order_id: pending.id,
                        remaining: delta.unsigned_abs(),
                        busy: false,
                    };
                    self.track_order(order);
                }
            }
            CommandKind::Reserve => {
                if let Outcome::HoldPlaced { .. } = outcome {
                    self.stats.holds_placed += 1;
                    if self.open_holds.len() < self.open_holds_max {
                        self.open_holds.push(OpenHold {
                            hold_id: pending.id,
                            cmd_seq,
                            busy: false,
                        });
                    } else {
                        self.stats.open_holds_untracked += 1;
                    }
                }
            }
        }
    }

    /// A modify or cancel of ours was decided.
    fn order_changed(&mut self, pending: &Pending, accepted: bool, no_such: bool) {
        let cancelled = pending.kind == CommandKind::Cancel && accepted;
        if accepted {
            if pending.kind == CommandKind::Cancel {
                self.stats.cancelled += 1;
            } else {
                self.stats.modified += 1;
            }
        }
        if let Some(i) = self
            .open_orders
            .iter()
            .position(|o| o.order_id == pending.id)
        {
            if cancelled || no_such {
                self.open_orders.swap_remove(i);
            } else {
                let order = &mut self.open_orders[i];
                order.busy = false;
                if accepted {
                    order.remaining = pending.qty;
                }
            }
        }
    }

    /// A confirm or release of ours was decided.
    fn hold_ended(&mut self, pending: &Pending, accepted: bool, no_such: bool) {
        if accepted {
            if pending.kind == CommandKind::Confirm {
                self.stats.holds_confirmed += 1;
            } else {
                self.stats.holds_released += 1;
            }
        }
        // Its `E` removed the hold; a rejected one is free again, unless it
        // is gone.
        if let Some(i) = self.open_hold_index(pending.id) {
            if no_such {
                self.open_holds.swap_remove(i);
            } else {
                self.open_holds[i].busy = false;
            }
        }
    }

    /// Tracks a filled order; a full table gives up its oldest idle entry.
    fn track_order(&mut self, order: OpenOrder) {
        if self.open_orders.len() < self.open_orders_max {
            self.open_orders.push(order);
            return;
        }
        self.stats.open_orders_untracked += 1;
        if let Some(i) = self.open_orders.iter().position(|o| !o.busy) {
            self.open_orders[i] = order;
        }
    }

    pub(crate) fn open_order_mut(&mut self, order_id: u64) -> Option<&mut OpenOrder> {
        self.open_orders.iter_mut().find(|o| o.order_id == order_id)
    }

    pub(crate) fn open_hold_index(&self, hold_id: u64) -> Option<usize> {
        self.open_holds.iter().position(|h| h.hold_id == hold_id)
    }
}

/// The outcome an event that answered a command stands for.
fn outcome_of(message: &Message) -> Option<Outcome> {
    match *message {
        Message::OnHandDelta(d) => Some(Outcome::Filled {
            location: d.location.get(),
            sku: d.sku.get(),
            delta: d.delta.get(),
        }),
        Message::HoldPlaced(h) => Some(Outcome::HoldPlaced {
            location: h.location.get(),
            sku: h.sku.get(),
            qty: h.qty.get(),
            expires_at_ns: h.expires_at_ns.get(),
        }),
        Message::HoldEnded(_) => Some(Outcome::HoldReleased),
        Message::CommandRejected(j) => Some(Outcome::Rejected { reason: j.reason }),
        _ => None,
    }
}
