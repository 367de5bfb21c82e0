//! Sessions: the session-start broadcast (`L`, `R`, `I`, `H`, then `S(W)`,
//! produced as room appears), closing a session with `S(F)`, and starting a
//! new one on a running warehouse.

use tally_wire::{
    system_code, HoldPlaced, InventoryLevel, LocationDirectory, SkuDirectory, SystemEvent,
};

use super::{EventSink, Warehouse};
use tally_client::replica::{Resolve, CARRIED_HOLD_BIT, HOLD_IN_USE};

/// Where a session-start broadcast stands: made by
/// [`Warehouse::begin_session_start`], advanced by
/// [`Warehouse::session_start_step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStart {
    phase: BroadcastPhase,
    /// Next index in the phase's table.
    next: usize,
    /// Events published so far.
    events: u64,
}

impl SessionStart {
    /// Events published so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether `S(W)`, the last event, is published.
    pub fn is_done(&self) -> bool {
        self.phase == BroadcastPhase::Done
    }

    /// On to `phase`, from the start of its table.
    fn enter(&mut self, phase: BroadcastPhase) {
        self.phase = phase;
        self.next = 0;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BroadcastPhase {
    Locations,
    Skus,
    Cells,
    Holds,
    Online,
    Done,
}

impl Warehouse {
    /// Closes the session for a rollover (after the appliance's `S(E)`):
    /// publishes `S(F)`, the authority's last event of the session, and
    /// decides nothing more (commands sequenced after `S(E)` are not
    /// decided in this session). Call it once every command before `S(E)`
    /// is decided (not deferring).
    pub fn close_session<S: EventSink>(&mut self, out: &mut S) {
        assert!(
            !self.deferring,
            "close_session with commands still deferred"
        );
        self.emit(
            SystemEvent::new(system_code::AUTHORITY_CLOSED),
            Resolve::Nothing,
            out,
        );
        self.pause_decisions();
    }

    /// Prepares for a new session's stream, which numbers from seq 1 again:
    /// forgets the stream position, the pending commands, the client-id
    /// history (order ids may be reused in a new session) and the previous
    /// session's own client_seqs. Cells, directories and open holds stay; the
    /// next [`Self::session_start_events`] announces them. Then call
    /// [`Self::begin_run`] with the new session's first client_seq.
    pub fn start_new_session(&mut self) {
        assert_eq!(self.in_flight(), 0, "a new session with events in flight");
        self.replica.reset_session_marks();
        self.replica.clear_pending();
        self.replica.clear_ids();
        self.deferring = false;
        self.deferred_cursor = 0;
        self.own_last_seen = 0;
        self.first_client_seq = 1;
        self.next_client_seq = 1;
    }

    /// Publishes the snapshot broadcast that opens a session: `L` for every
    /// location, `R` for every SKU, `I` for every known cell, `H` for each
    /// open hold, then `S(W)`, all at once into `out`, which must have room
    /// for all of them (a closure or a growable queue). A bounded sink — the
    /// warehouse application's, sized by the order-entry window — uses
    /// [`Self::begin_session_start`] and [`Self::session_start_step`]
    /// instead, which produce the same events lazily. Call it once per
    /// session, after catching up with what the session's stream already
    /// holds (an `S(W)` seen on it means an earlier run already broadcast:
    /// do not call it again), and after [`Self::begin_run`]. It changes
    /// neither the stream position nor the mode: commands that queued while
    /// catching up are still decided by [`Self::finish_catch_up`]. Returns
    /// the events published.
    pub fn session_start_events<S: EventSink>(&mut self, out: &mut S) -> usize {
        let mut broadcast = self.begin_session_start();
        while !self.session_start_step(&mut broadcast, out) {
            assert!(
                out.room() > 0,
                "session_start_events needs a sink with room for the whole broadcast; \
                 use session_start_step"
            );
        }
        broadcast.events as usize
    }

    /// Starts a session-start broadcast (see [`Self::session_start_events`])
    /// to be produced by [`Self::session_start_step`] as room appears. Open
    /// holds (carried over from an earlier session) are re-keyed here
    /// [`CARRIED_HOLD_BIT`] | 1, 2, … so their keys cannot meet a `V` of
    /// this session. Until the broadcast is done, decisions must stay
    /// deferred (they are after catch-up or a pause) so the state it walks
    /// does not change under it.
    pub fn begin_session_start(&mut self) -> SessionStart {
        // Re-key open holds in two passes (through a temporary namespace) so
        // a new key never meets an old carried key still in the table.
        const TEMPORARY: u64 = 1 << 62;
        for pass_bit in [TEMPORARY, 0] {
            let mut n = 0u64;
            for slot in 0..self.replica.hold_slots() as u32 {
                if self.replica.hold_at(slot as usize).flags & HOLD_IN_USE == 0 {
                    continue;
                }
                n += 1;
                self.replica
                    .rekey_hold(slot, CARRIED_HOLD_BIT | pass_bit | n);
            }
        }
        SessionStart {
            phase: BroadcastPhase::Locations,
            next: 0,
            events: 0,
        }
    }

    /// Publishes the next events of the broadcast `at`, as many as
    /// `out.room()` allows, in order (`L`…, `R`…, `I`…, `H`…, `S(W)`).
    /// Returns true once `S(W)` is published: the broadcast is complete and
    /// commands may be decided after it. Bounded work: at most `out.room()`
    /// events, plus a scan over cells that need no event.
    pub fn session_start_step<S: EventSink>(&mut self, at: &mut SessionStart, out: &mut S) -> bool {
        while out.room() > 0 {
            match at.phase {
                BroadcastPhase::Locations => self.broadcast_location(at, out),
                BroadcastPhase::Skus => self.broadcast_sku(at, out),
                BroadcastPhase::Cells => self.broadcast_cell(at, out),
                BroadcastPhase::Holds => self.broadcast_hold(at, out),
                BroadcastPhase::Online => {
                    self.emit(
                        SystemEvent::new(system_code::AUTHORITY_ONLINE),
                        Resolve::Nothing,
                        out,
                    );
                    at.events += 1;
                    at.phase = BroadcastPhase::Done;
                    return true;
                }
                BroadcastPhase::Done => return true,
            }
        }
        at.phase == BroadcastPhase::Done
    }

    /// `L` for location `at.next`; past the last, on to the SKUs.
    fn broadcast_location<S: EventSink>(&mut self, at: &mut SessionStart, out: &mut S) {
        let l = at.next;
        if l >= usize::from(self.replica.location_count()) {
            at.enter(BroadcastPhase::Skus);
            return;
        }
        let (id, name) = self.replica.location_entry(l as u16);
        let event = LocationDirectory::new(id, name);
        self.emit(event, Resolve::Nothing, out);
        at.next += 1;
        at.events += 1;
    }

    /// `R` for SKU `at.next`; past the last, on to the cells.
    fn broadcast_sku<S: EventSink>(&mut self, at: &mut SessionStart, out: &mut S) {
        let s = at.next;
        if s >= self.replica.sku_count() as usize {
            at.enter(BroadcastPhase::Cells);
            return;
        }
        let (id, symbol) = self.replica.sku_entry(s as u32);
        let event = SkuDirectory::new(id, symbol);
        self.emit(event, Resolve::Nothing, out);
        at.next += 1;
        at.events += 1;
    }

    /// `I` for cell slot `at.next` when it holds a known cell; past the
    /// last, on to the holds.
    fn broadcast_cell<S: EventSink>(&mut self, at: &mut SessionStart, out: &mut S) {
        let slot = at.next;
        if slot >= self.replica.cells().slot_end(self.replica.sku_count()) {
            at.enter(BroadcastPhase::Holds);
            return;
        }
        at.next += 1;
        let cell = self.replica.cell_state(slot);
        let (s, l) = self.replica.cells().key_of(slot);
        if cell.version == 0 || l >= self.replica.location_count() {
            return;
        }
        let event = InventoryLevel::new(
            self.replica.location_ids()[usize::from(l)],
            self.replica.sku_ids()[s as usize],
            cell.on_hand,
            cell.reserved,
        );
        self.emit(event, Resolve::Nothing, out);
        at.events += 1;
    }

    /// `H` for hold slot `at.next` when it is open; past the last, on to
    /// `S(W)`.
    fn broadcast_hold<S: EventSink>(&mut self, at: &mut SessionStart, out: &mut S) {
        let slot = at.next;
        if slot >= self.replica.hold_slots() {
            at.enter(BroadcastPhase::Online);
            return;
        }
        at.next += 1;
        let hold = self.replica.hold_at(slot);
        if hold.flags & HOLD_IN_USE == 0 {
            return;
        }
        let event = HoldPlaced::new(
            hold.cmd_seq,
            hold.location,
            hold.sku,
            hold.qty,
            hold.expires_at_ns,
        );
        self.emit(event, Resolve::Nothing, out);
        at.events += 1;
    }
}
