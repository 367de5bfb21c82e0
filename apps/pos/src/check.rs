//! The commands a till sends, and the checks against its replica that
//! keep it from sending one it can already see would fail.

use serde::Serialize;
use tally_wire::{
    reject_reason, CancelOrder, ConfirmHold, ModifyOrder, Order, ReleaseHold, Reserve,
};

use crate::core::{wall_clock_ns, Core};
use crate::CommandKind;

/// `check_*` result meaning "a command about this order/hold is in flight".
pub(crate) const BUSY: u8 = 0;

/// A command a till can be asked to send. Ids are the till's own: an order
/// or hold id is the client_seq of the `O` or `V` that opened it
/// ([`Pos::queue`](crate::Pos::queue) returns it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// `O`: `qty` of `sku` at `location` (0 = any location).
    Order { location: u16, sku: u32, qty: u32 },
    /// `M`: our open order's quantity becomes `new_qty`.
    Modify { order_id: u64, new_qty: u32 },
    /// `X`: cancel what remains of our open order.
    Cancel { order_id: u64 },
    /// `V`: hold `qty` of `sku` at `location` for `ttl_ms`.
    Reserve {
        location: u16,
        sku: u32,
        qty: u32,
        ttl_ms: u32,
    },
    /// `C`: our hold becomes a sale.
    Confirm { hold_id: u64 },
    /// `K`: release our hold.
    Release { hold_id: u64 },
}

/// A command ready to send.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Command {
    pub(crate) kind: CommandKind,
    pub(crate) id: u64,
    pub(crate) qty: u32,
    pub(crate) bytes: [u8; Reserve::SIZE],
    pub(crate) len: usize,
}

impl Command {
    fn new(kind: CommandKind, id: u64, qty: u32, message: &[u8]) -> Command {
        let mut bytes = [0u8; Reserve::SIZE];
        bytes[..message.len()].copy_from_slice(message);
        Command {
            kind,
            id,
            qty,
            bytes,
            len: message.len(),
        }
    }
}

impl Core {
    /// Checks `request` against the replica: the command to send, or
    /// `Err(reason)` it would be rejected with ([`BUSY`]: a command about
    /// the same order or hold awaits its outcome). `id` is the client_seq
    /// the command will get.
    pub(crate) fn check(&self, request: Request, id: u64) -> Result<Command, u8> {
        match request {
            Request::Order { location, sku, qty } => self.check_order(id, location, sku, qty),
            Request::Modify { order_id, new_qty } => self.check_modify(order_id, new_qty),
            Request::Cancel { order_id } => self.check_cancel(order_id),
            Request::Reserve {
                location,
                sku,
                qty,
                ttl_ms,
            } => self.check_reserve(id, location, sku, qty, ttl_ms),
            Request::Confirm { hold_id } => self.check_hold_end(CommandKind::Confirm, hold_id),
            Request::Release { hold_id } => self.check_hold_end(CommandKind::Release, hold_id),
        }
    }

    fn is_busy_order(&self, order_id: u64) -> bool {
        self.open_orders
            .iter()
            .any(|o| o.order_id == order_id && o.busy)
    }

    pub(crate) fn check_order(
        &self,
        id: u64,
        location: u16,
        sku: u32,
        qty: u32,
    ) -> Result<Command, u8> {
        if qty == 0 || qty > i32::MAX as u32 {
            return Err(reject_reason::INVALID_QUANTITY);
        }
        let replica = &self.replica;
        if replica.symbol(sku).is_none() {
            return Err(reject_reason::UNKNOWN_SKU);
        }
        let available = if location == 0 {
            replica
                .cells_of(sku)
                .map(|(_, cell)| cell.available)
                .max()
                .unwrap_or(0)
        } else {
            match replica.cell(location, sku) {
                Some(cell) => cell.available,
                None => return Err(reject_reason::UNKNOWN_LOCATION),
            }
        };
        if available < qty {
            return Err(reject_reason::INSUFFICIENT);
        }
        let message = Order::new(id, location, sku, qty);
        Ok(Command::new(
            CommandKind::Order,
            id,
            qty,
            message.as_bytes(),
        ))
    }

    pub(crate) fn check_modify(&self, order_id: u64, new_qty: u32) -> Result<Command, u8> {
        if new_qty == 0 || new_qty > i32::MAX as u32 {
            return Err(reject_reason::INVALID_QUANTITY);
        }
        if self.is_busy_order(order_id) {
            return Err(BUSY);
        }
        let Some(record) = self
            .replica
            .order(self.origin, order_id)
            .filter(|r| r.remaining > 0)
        else {
            return Err(reject_reason::NO_SUCH);
        };
        if new_qty > record.remaining {
            let more = new_qty - record.remaining;
            let available = self
                .replica
                .cell(record.location, record.sku)
                .map_or(0, |cell| cell.available);
            if available < more {
                return Err(reject_reason::INSUFFICIENT);
            }
        }
        let message = ModifyOrder::new(order_id, new_qty);
        Ok(Command::new(
            CommandKind::Modify,
            order_id,
            new_qty,
            message.as_bytes(),
        ))
    }

    pub(crate) fn check_cancel(&self, order_id: u64) -> Result<Command, u8> {
        if self.is_busy_order(order_id) {
            return Err(BUSY);
        }
        if self
            .replica
            .order(self.origin, order_id)
            .is_none_or(|r| r.remaining == 0)
        {
            return Err(reject_reason::NO_SUCH);
        }
        let message = CancelOrder::new(order_id);
        Ok(Command::new(
            CommandKind::Cancel,
            order_id,
            0,
            message.as_bytes(),
        ))
    }

    pub(crate) fn check_reserve(
        &self,
        id: u64,
        location: u16,
        sku: u32,
        qty: u32,
        ttl_ms: u32,
    ) -> Result<Command, u8> {
        if qty == 0 || qty > i32::MAX as u32 || ttl_ms == 0 {
            return Err(reject_reason::INVALID_QUANTITY);
        }
        if self.replica.symbol(sku).is_none() {
            return Err(reject_reason::UNKNOWN_SKU);
        }
        let Some(cell) = self.replica.cell(location, sku) else {
            return Err(reject_reason::UNKNOWN_LOCATION);
        };
        if cell.available < qty {
            return Err(reject_reason::INSUFFICIENT);
        }
        let message = Reserve::new(id, location, sku, qty, ttl_ms);
        Ok(Command::new(
            CommandKind::Reserve,
            id,
            qty,
            message.as_bytes(),
        ))
    }

    pub(crate) fn check_hold_end(&self, kind: CommandKind, hold_id: u64) -> Result<Command, u8> {
        if self
            .open_hold_index(hold_id)
            .is_some_and(|i| self.open_holds[i].busy)
        {
            return Err(BUSY);
        }
        match self.replica.hold_by_client(self.origin, hold_id) {
            Some(hold) if hold.expires_at_ns > wall_clock_ns() => {}
            _ => return Err(reject_reason::NO_SUCH),
        }
        let command = match kind {
            CommandKind::Confirm => {
                Command::new(kind, hold_id, 0, ConfirmHold::new(hold_id).as_bytes())
            }
            CommandKind::Release => {
                Command::new(kind, hold_id, 0, ReleaseHold::new(hold_id).as_bytes())
            }
            _ => unreachable!("only confirm and release end a hold"),
        };
        Ok(command)
    }
}
