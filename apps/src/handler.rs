//! The typed handler layer: seed 000's `InventoryDestination`.
//!
//! A stream consumer hands the application `(seq, Message)` strictly in
//! order; [`dispatch`] turns that into one call of a domain-named method of
//! [`InventoryHandler`] (`on_order`, `on_delta`, `on_hold`, …). Business code
//! implements only the methods it cares about (every method has an empty
//! default), and sees the stream only through the [`Envelope`]: the sequence
//! number, origin, client_seq and timestamp of the message. Gaps, re-requests,
//! replay and heartbeats stay in the consumer.
//!
//! ```
//! use tally_apps::handler::{dispatch, Envelope, InventoryHandler};
//! use tally_wire::{Message, OnHandDelta, delta_reason};
//!
//! #[derive(Default)]
//! struct Sales { units: i64 }
//!
//! impl InventoryHandler for Sales {
//!     fn on_delta(&mut self, _env: &Envelope, delta: &OnHandDelta) {
//!         if delta.reason == delta_reason::ORDER {
//!             self.units -= i64::from(delta.delta.get());
//!         }
//!     }
//! }
//!
//! let event = OnHandDelta::new(1, 1001, -3, delta_reason::ORDER, 41);
//! let mut sales = Sales::default();
//! dispatch(&mut sales, 42, &Message::parse(event.as_bytes()).unwrap());
//! assert_eq!(sales.units, 3);
//! ```
//!
//! Dispatch is a `match` on the already validated [`Message`]: no allocation,
//! no dynamic dispatch unless the caller asks for it (`&mut dyn
//! InventoryHandler` works too).

use tally_wire::{
    Adjust, CancelOrder, CommandRejected, ConfirmHold, GatewayReject, Header, HoldEnded,
    HoldPlaced, InventoryLevel, LocationDirectory, Message, ModifyOrder, OnHandDelta, Order,
    Recount, ReleaseHold, Reserve, SkuDirectory, SystemEvent, Transfer,
};

/// Where a message sits on the stream and who sent it: everything about a
/// message that is not its business content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Envelope {
    /// Stream sequence number of the message.
    pub seq: u64,
    /// Client id of the submitter (0 = the appliance), stamped by the gateway.
    pub origin: u16,
    /// The submitter's own message number.
    pub client_seq: u32,
    /// Nanoseconds since the Unix epoch, stamped by the sequencer.
    pub timestamp_ns: u64,
}

impl Envelope {
    /// The envelope of a message with `header` at stream position `seq`.
    #[inline]
    pub fn new(seq: u64, header: &Header) -> Self {
        Self {
            seq,
            origin: header.origin.get(),
            client_seq: header.client_seq.get(),
            timestamp_ns: header.timestamp_ns.get(),
        }
    }
}

/// One callback per stream message type. Every method has an empty default:
/// implement only what the application needs.
#[allow(unused_variables)]
pub trait InventoryHandler {
    // ---- Commands (from clients; the warehouse decides them) ----------

    /// `O` order.
    fn on_order(&mut self, env: &Envelope, m: &Order) {}
    /// `M` modify order quantity.
    fn on_modify(&mut self, env: &Envelope, m: &ModifyOrder) {}
    /// `X` cancel order.
    fn on_cancel(&mut self, env: &Envelope, m: &CancelOrder) {}
    /// `V` reserve (hold with a TTL).
    fn on_reserve(&mut self, env: &Envelope, m: &Reserve) {}
    /// `C` confirm hold.
    fn on_confirm(&mut self, env: &Envelope, m: &ConfirmHold) {}
    /// `K` release hold.
    fn on_release(&mut self, env: &Envelope, m: &ReleaseHold) {}
    /// `T` transfer between locations.
    fn on_transfer(&mut self, env: &Envelope, m: &Transfer) {}
    /// `Q` recount.
    fn on_recount(&mut self, env: &Envelope, m: &Recount) {}
    /// `P` adjust (restock, return, shrink).
    fn on_adjust(&mut self, env: &Envelope, m: &Adjust) {}

    // ---- Events (every replica applies them) --------------------------

    /// `R` SKU directory entry.
    fn on_sku_directory(&mut self, env: &Envelope, m: &SkuDirectory) {}
    /// `L` location directory entry.
    fn on_location_directory(&mut self, env: &Envelope, m: &LocationDirectory) {}
    /// `I` inventory level (absolute).
    fn on_level(&mut self, env: &Envelope, m: &InventoryLevel) {}
    /// `D` on-hand delta.
    fn on_delta(&mut self, env: &Envelope, m: &OnHandDelta) {}
    /// `H` hold placed.
    fn on_hold(&mut self, env: &Envelope, m: &HoldPlaced) {}
    /// `E` hold ended.
    fn on_hold_end(&mut self, env: &Envelope, m: &HoldEnded) {}
    /// `J` command rejected by the warehouse.
    fn on_reject(&mut self, env: &Envelope, m: &CommandRejected) {}
    /// `S` system event.
    fn on_system(&mut self, env: &Envelope, m: &SystemEvent) {}
    /// `j` gateway reject (the envelope's origin and client_seq are the
    /// rejected client's).
    fn on_gateway_reject(&mut self, env: &Envelope, m: &GatewayReject) {}
}

/// Calls the one method of `handler` that matches `message`, with the
/// message's envelope at stream position `seq`.
#[inline]
pub fn dispatch<H: InventoryHandler + ?Sized>(handler: &mut H, seq: u64, message: &Message) {
    let env = Envelope::new(seq, message.header());
    match *message {
        Message::Order(m) => handler.on_order(&env, m),
        Message::ModifyOrder(m) => handler.on_modify(&env, m),
        Message::CancelOrder(m) => handler.on_cancel(&env, m),
        Message::Reserve(m) => handler.on_reserve(&env, m),
        Message::ConfirmHold(m) => handler.on_confirm(&env, m),
        Message::ReleaseHold(m) => handler.on_release(&env, m),
        Message::Transfer(m) => handler.on_transfer(&env, m),
        Message::Recount(m) => handler.on_recount(&env, m),
        Message::Adjust(m) => handler.on_adjust(&env, m),
        Message::SkuDirectory(m) => handler.on_sku_directory(&env, m),
        Message::LocationDirectory(m) => handler.on_location_directory(&env, m),
        Message::InventoryLevel(m) => handler.on_level(&env, m),
        Message::OnHandDelta(m) => handler.on_delta(&env, m),
        Message::HoldPlaced(m) => handler.on_hold(&env, m),
        Message::HoldEnded(m) => handler.on_hold_end(&env, m),
        Message::CommandRejected(m) => handler.on_reject(&env, m),
        Message::SystemEvent(m) => handler.on_system(&env, m),
        Message::GatewayReject(m) => handler.on_gateway_reject(&env, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_wire::{hold_outcome, reject_reason, system_code};

    /// Records the name of each callback and the envelope it got.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, Envelope)>,
    }

    macro_rules! record {
        ($($method:ident: $ty:ty),* $(,)?) => {
            impl InventoryHandler for Recorder {
                $(fn $method(&mut self, env: &Envelope, _m: &$ty) {
                    self.calls.push((stringify!($method), *env));
                })*
            }
        };
    }

    record! {
        on_order: Order, on_modify: ModifyOrder, on_cancel: CancelOrder,
        on_reserve: Reserve, on_confirm: ConfirmHold, on_release: ReleaseHold,
        on_transfer: Transfer, on_recount: Recount, on_adjust: Adjust,
        on_sku_directory: SkuDirectory, on_location_directory: LocationDirectory,
        on_level: InventoryLevel, on_delta: OnHandDelta, on_hold: HoldPlaced,
        on_hold_end: HoldEnded, on_reject: CommandRejected, on_system: SystemEvent,
        on_gateway_reject: GatewayReject,
    }

    #[test]
    fn every_type_reaches_its_method_with_its_envelope() {
        let symbol = [b' '; 16];
        let all: Vec<(Vec<u8>, &str)> = vec![
            (Order::new(1, 2, 3, 4).as_bytes().to_vec(), "on_order"),
            (ModifyOrder::new(1, 2).as_bytes().to_vec(), "on_modify"),
            (CancelOrder::new(1).as_bytes().to_vec(), "on_cancel"),
            (
                Reserve::new(1, 2, 3, 4, 5).as_bytes().to_vec(),
                "on_reserve",
            ),
            (ConfirmHold::new(1).as_bytes().to_vec(), "on_confirm"),
            (ReleaseHold::new(1).as_bytes().to_vec(), "on_release"),
            (
                Transfer::new(1, 2, 3, 4, 5).as_bytes().to_vec(),
                "on_transfer",
            ),
            (Recount::new(1, 2, 3, 4).as_bytes().to_vec(), "on_recount"),
            (Adjust::new(1, 2, 3, b'A').as_bytes().to_vec(), "on_adjust"),
            (
                SkuDirectory::new(1, symbol).as_bytes().to_vec(),
                "on_sku_directory",
            ),
            (
                LocationDirectory::new(1, symbol).as_bytes().to_vec(),
                "on_location_directory",
            ),
            (
                InventoryLevel::new(1, 2, 3, 4).as_bytes().to_vec(),
                "on_level",
            ),
            (
                OnHandDelta::new(1, 2, -3, b'O', 4).as_bytes().to_vec(),
                "on_delta",
            ),
            (
                HoldPlaced::new(1, 2, 3, 4, 5).as_bytes().to_vec(),
                "on_hold",
            ),
            (
                HoldEnded::new(1, 2, 3, 4, hold_outcome::RELEASED)
                    .as_bytes()
                    .to_vec(),
                "on_hold_end",
            ),
            (
                CommandRejected::new(1, reject_reason::NO_SUCH)
                    .as_bytes()
                    .to_vec(),
                "on_reject",
            ),
            (
                SystemEvent::new(system_code::AUTHORITY_ONLINE)
                    .as_bytes()
                    .to_vec(),
                "on_system",
            ),
            (
                GatewayReject::new(reject_reason::WRONG_LENGTH)
                    .as_bytes()
                    .to_vec(),
                "on_gateway_reject",
            ),
        ];
        let mut recorder = Recorder::default();
        for (i, (bytes, _)) in all.iter().enumerate() {
            let mut bytes = bytes.clone();
            let header = tally_wire::header_mut(&mut bytes).unwrap();
            header.origin = (i as u16 + 1).into();
            header.client_seq = (i as u32 + 10).into();
            header.timestamp_ns = (i as u64 + 100).into();
            let message = Message::parse(&bytes).unwrap();
            dispatch(&mut recorder, i as u64 + 1000, &message);
        }
        assert_eq!(recorder.calls.len(), all.len());
        for (i, ((name, env), (_, expected))) in recorder.calls.iter().zip(&all).enumerate() {
            assert_eq!(name, expected);
            assert_eq!(
                *env,
                Envelope {
                    seq: i as u64 + 1000,
                    origin: i as u16 + 1,
                    client_seq: i as u32 + 10,
                    timestamp_ns: i as u64 + 100,
                }
            );
        }
    }

    #[test]
    fn works_through_a_trait_object() {
        struct Count(u32);
        impl InventoryHandler for Count {
            fn on_cancel(&mut self, _: &Envelope, _: &CancelOrder) {
                self.0 += 1;
            }
        }
        let mut count = Count(0);
        let handler: &mut dyn InventoryHandler = &mut count;
        let cancel = CancelOrder::new(9);
        dispatch(handler, 1, &Message::parse(cancel.as_bytes()).unwrap());
        let order = Order::new(9, 1, 1, 1);
        dispatch(handler, 2, &Message::parse(order.as_bytes()).unwrap());
        assert_eq!(count.0, 1);
    }
}
