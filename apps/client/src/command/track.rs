//! The commands sent and not yet decided, in a ring indexed by client_seq,
//! and the matching of stream events to them.
//!
//! A command is ours when its header on the stream carries our origin and a
//! client_seq this ring holds. Its decision is the event that answers it
//! (the replica resolves `D`, `H`, `J` by their `cmd_seq`, and `E(R)` / `I`
//! as the answer to the oldest pending command), or a gateway reject (`j`
//! ack, or `j` on the stream: the first one counts). A transfer is decided
//! at its second `D(T)`, so both cells are final.

use tally_wire::{delta_reason, Message};

use super::decision::{self, Decision, RejectedBy, Rejection, Verdict};
use super::request::Request;
use crate::replica::{Applied, Replica};

#[derive(Clone, Copy, Debug)]
enum SlotState {
    Free,
    /// Sent; no decision yet. `cmd_seq` 0 until the ack or the stream tells.
    Awaiting,
    /// A transfer whose first `D(T)` came; the second completes it.
    SecondLeg(Decision),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    client_seq: u32,
    cmd_seq: u64,
    state: SlotState,
    request: Request,
}

/// Commands in flight. See the module documentation.
pub(super) struct Tracker {
    slots: Box<[Slot]>,
    mask: u32,
    pub(super) origin: u16,
    pub(super) in_flight: usize,
}

impl Tracker {
    pub(super) fn new(capacity: usize, origin: u16) -> Tracker {
        let capacity = capacity.max(1).next_power_of_two();
        let free = Slot {
            client_seq: 0,
            cmd_seq: 0,
            state: SlotState::Free,
            request: Request::Cancel { order_id: 0 },
        };
        Tracker {
            slots: vec![free; capacity].into_boxed_slice(),
            mask: capacity as u32 - 1,
            origin,
            in_flight: 0,
        }
    }

    /// Whether `client_seq` has a free slot.
    pub(super) fn has_room(&self, client_seq: u32) -> bool {
        matches!(
            self.slots[(client_seq & self.mask) as usize].state,
            SlotState::Free
        )
    }

    pub(super) fn insert(&mut self, client_seq: u32, request: Request) {
        let slot = &mut self.slots[(client_seq & self.mask) as usize];
        assert!(
            matches!(slot.state, SlotState::Free),
            "slot of {client_seq} in use"
        );
        *slot = Slot {
            client_seq,
            cmd_seq: 0,
            state: SlotState::Awaiting,
            request,
        };
        self.in_flight += 1;
    }

    fn awaiting(&mut self, client_seq: u32) -> Option<&mut Slot> {
        let slot = &mut self.slots[(client_seq & self.mask) as usize];
        let live = slot.client_seq == client_seq && !matches!(slot.state, SlotState::Free);
        live.then_some(slot)
    }

    /// Whether the command `client_seq` is still undecided.
    pub(super) fn is_awaiting(&self, client_seq: u32) -> bool {
        let slot = &self.slots[(client_seq & self.mask) as usize];
        slot.client_seq == client_seq && !matches!(slot.state, SlotState::Free)
    }

    /// The command's stream number, once known (0 before).
    pub(super) fn cmd_seq(&self, client_seq: u32) -> u64 {
        let slot = &self.slots[(client_seq & self.mask) as usize];
        if slot.client_seq == client_seq {
            slot.cmd_seq
        } else {
            0
        }
    }

    fn finish(
        &mut self,
        client_seq: u32,
        decision: Decision,
        on_decision: &mut impl FnMut(Decision),
    ) {
        let slot = &mut self.slots[(client_seq & self.mask) as usize];
        slot.state = SlotState::Free;
        self.in_flight -= 1;
        on_decision(decision);
    }

    /// An ack: its stream number, or (a `j` ack) its decision.
    pub(super) fn on_ack(
        &mut self,
        ack: crate::client::Ack,
        on_decision: &mut impl FnMut(Decision),
    ) {
        let Some(slot) = self.awaiting(ack.client_seq) else {
            return;
        };
        slot.cmd_seq = ack.stream_seq;
        if let Some(reason) = ack.reject {
            let decision = gateway_rejection(slot, ack.stream_seq, reason);
            self.finish(ack.client_seq, decision, on_decision);
        }
    }

    /// One stream message: applied to `replica`, then matched.
    pub(super) fn on_stream(
        &mut self,
        replica: &mut Replica,
        seq: u64,
        message: &Message,
        on_decision: &mut impl FnMut(Decision),
    ) {
        let header = *message.header();
        let ours = header.origin.get() == self.origin;
        if ours && message.is_command() {
            if let Some(slot) = self.awaiting(header.client_seq.get()) {
                slot.cmd_seq = seq;
            }
        }
        let applied = replica.apply(seq, message);
        match *message {
            Message::GatewayReject(j) if ours => {
                let client_seq = header.client_seq.get();
                if let Some(slot) = self.awaiting(client_seq) {
                    let decision = gateway_rejection(slot, seq, j.reason);
                    self.finish(client_seq, decision, on_decision);
                }
                return;
            }
            Message::OnHandDelta(d)
                if d.reason == delta_reason::TRANSFER
                    && self.second_leg(replica, seq, d.cmd_seq.get(), on_decision) =>
            {
                return;
            }
            _ => {}
        }
        if let Applied::Event {
            answers: Some(cmd_seq),
        } = applied
        {
            self.on_answer(replica, seq, cmd_seq, message, on_decision);
        }
    }

    /// The event at `seq` answered the command at `cmd_seq`.
    fn on_answer(
        &mut self,
        replica: &Replica,
        seq: u64,
        cmd_seq: u64,
        event: &Message,
        on_decision: &mut impl FnMut(Decision),
    ) {
        let Some(header) = replica.command(cmd_seq).map(|c| *c.header()) else {
            return;
        };
        if header.origin.get() != self.origin {
            return;
        }
        let client_seq = header.client_seq.get();
        let Some(slot) = self.awaiting(client_seq) else {
            return;
        };
        slot.cmd_seq = cmd_seq;
        let request = slot.request;
        let verdict = match *event {
            Message::CommandRejected(j) => {
                Verdict::Rejected(decision::rejection_numbers(replica, &request, j.reason))
            }
            _ => match decision::effect_of(&request, event) {
                Some(effect) => Verdict::Accepted {
                    effect,
                    cells: decision::cells_after(replica, &request, event),
                },
                // An answer that does not fit the command (never from a
                // correct warehouse): report it as it is rather than hang.
                None => Verdict::Rejected(Rejection {
                    reason: b'?',
                    by: RejectedBy::Warehouse,
                    available: None,
                    current_version: None,
                }),
            },
        };
        let decision = Decision {
            client_seq,
            cmd_seq,
            seq,
            request,
            verdict,
        };
        if matches!(request, Request::Transfer { .. }) && decision.is_accepted() {
            slot.state = SlotState::SecondLeg(decision);
            return;
        }
        self.finish(client_seq, decision, on_decision);
    }

    /// A `D(T)`: the second leg of one of our transfers completes it. True
    /// when it did.
    fn second_leg(
        &mut self,
        replica: &Replica,
        seq: u64,
        cmd_seq: u64,
        on_decision: &mut impl FnMut(Decision),
    ) -> bool {
        let Some(header) = replica.command(cmd_seq).map(|c| *c.header()) else {
            return false;
        };
        if header.origin.get() != self.origin {
            return false;
        }
        let client_seq = header.client_seq.get();
        let Some(slot) = self.awaiting(client_seq) else {
            return false;
        };
        let SlotState::SecondLeg(mut decision) = slot.state else {
            return false;
        };
        decision.seq = seq;
        if let (Verdict::Accepted { cells, .. }, Request::Transfer { from, to, sku, .. }) =
            (&mut decision.verdict, slot.request)
        {
            *cells = [
                decision::CellAfter::of(replica, from, sku),
                decision::CellAfter::of(replica, to, sku),
            ];
        }
        self.finish(client_seq, decision, on_decision);
        true
    }
}

fn gateway_rejection(slot: &Slot, seq: u64, reason: u8) -> Decision {
    Decision {
        client_seq: slot.client_seq,
        cmd_seq: seq,
        seq,
        request: slot.request,
        verdict: Verdict::Rejected(Rejection {
            reason,
            by: RejectedBy::Gateway,
            available: None,
            current_version: None,
        }),
    }
}
