//! Stream messages as text and JSON, for people and tools: `tally-tap`'s
//! lines, the monitor's timelines. Not on any hot path.
//!
//! One line per message: `seq type origin/client_seq time field=value…`,
//! e.g. `1042 O 1/17 14:03:12.123456789 order_id=17 location=1 sku=42 qty=2`.

use std::fmt::Write as _;

use tally_wire::{trim_ascii, Message};

/// One field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// An unsigned number.
    Unsigned(u64),
    /// A signed number (deltas).
    Signed(i64),
    /// A one-letter code (reasons, outcomes).
    Code(u8),
    /// A space-padded ASCII text field.
    Text([u8; 16]),
}

/// The name of a message type.
pub fn type_name(msg_type: u8) -> &'static str {
    match msg_type {
        b'O' => "order",
        b'M' => "modify",
        b'X' => "cancel",
        b'V' => "reserve",
        b'C' => "confirm",
        b'K' => "release",
        b'T' => "transfer",
        b'Q' => "recount",
        b'P' => "adjust",
        b'R' => "sku",
        b'L' => "location",
        b'I' => "level",
        b'D' => "delta",
        b'H' => "hold",
        b'E' => "hold_end",
        b'J' => "reject",
        b'S' => "system",
        b'j' => "gateway_reject",
        _ => "unknown",
    }
}

/// Calls `field(name, value)` for each body field of `message`, in wire
/// order.
///
/// Longer than our 80 lines on purpose: a table, one arm per message type,
/// kept as one exhaustive match so that a new message type does not compile
/// until its fields are listed here.
pub fn for_each_field(message: &Message, mut field: impl FnMut(&'static str, Value)) {
    use Value::{Code, Signed, Text, Unsigned};
    match *message {
        Message::Order(m) => {
            field("order_id", Unsigned(m.order_id.get()));
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("qty", Unsigned(m.qty.get().into()));
        }
        Message::ModifyOrder(m) => {
            field("order_id", Unsigned(m.order_id.get()));
            field("new_qty", Unsigned(m.new_qty.get().into()));
        }
        Message::CancelOrder(m) => field("order_id", Unsigned(m.order_id.get())),
        Message::Reserve(m) => {
            field("hold_id", Unsigned(m.hold_id.get()));
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("qty", Unsigned(m.qty.get().into()));
            field("ttl_ms", Unsigned(m.ttl_ms.get().into()));
        }
        Message::ConfirmHold(m) => field("hold_id", Unsigned(m.hold_id.get())),
        Message::ReleaseHold(m) => field("hold_id", Unsigned(m.hold_id.get())),
        Message::Transfer(m) => {
            field("transfer_id", Unsigned(m.transfer_id.get()));
            field("from", Unsigned(m.from.get().into()));
            field("to", Unsigned(m.to.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("qty", Unsigned(m.qty.get().into()));
        }
        Message::Recount(m) => {
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("on_hand", Unsigned(m.on_hand.get().into()));
            field("expected_version", Unsigned(m.expected_version.get()));
        }
        Message::Adjust(m) => {
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("delta", Signed(m.delta.get().into()));
            field("reason", Code(m.reason));
        }
        Message::DirectoryAdd(m) => {
            field("kind", Code(m.kind));
            field("id", Unsigned(m.id.get().into()));
            field("name", Text(m.name));
        }
        Message::SkuDirectory(m) => {
            field("sku", Unsigned(m.sku.get().into()));
            field("symbol", Text(m.symbol));
        }
        Message::LocationDirectory(m) => {
            field("location", Unsigned(m.location.get().into()));
            field("name", Text(m.name));
        }
        Message::InventoryLevel(m) => {
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("on_hand", Unsigned(m.on_hand.get().into()));
            field("reserved", Unsigned(m.reserved.get().into()));
        }
        Message::OnHandDelta(m) => {
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("delta", Signed(m.delta.get().into()));
            field("reason", Code(m.reason));
            field("cmd_seq", Unsigned(m.cmd_seq.get()));
        }
        Message::HoldPlaced(m) => {
            field("cmd_seq", Unsigned(m.cmd_seq.get()));
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("qty", Unsigned(m.qty.get().into()));
            field("expires_at_ns", Unsigned(m.expires_at_ns.get()));
        }
        Message::HoldEnded(m) => {
            field("cmd_seq", Unsigned(m.cmd_seq.get()));
            field("location", Unsigned(m.location.get().into()));
            field("sku", Unsigned(m.sku.get().into()));
            field("qty", Unsigned(m.qty.get().into()));
            field("outcome", Code(m.outcome));
        }
        Message::CommandRejected(m) => {
            field("cmd_seq", Unsigned(m.cmd_seq.get()));
            field("reason", Code(m.reason));
        }
        Message::SystemEvent(m) => field("code", Code(m.code)),
        Message::GatewayReject(m) => field("reason", Code(m.reason)),
    }
}

/// `HH:MM:SS.nnnnnnnnn` (UTC) of a timestamp in ns since the Unix epoch.
pub fn clock_time(timestamp_ns: u64) -> String {
    let seconds = timestamp_ns / 1_000_000_000;
    let nanos = timestamp_ns % 1_000_000_000;
    let day_seconds = seconds % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{nanos:09}",
        day_seconds / 3600,
        (day_seconds / 60) % 60,
        day_seconds % 60
    )
}

/// The tap line of one message (no newline).
pub fn line(seq: u64, message: &Message) -> String {
    let header = message.header();
    let mut out = format!(
        "{seq} {} {}/{} {}",
        message.msg_type() as char,
        header.origin.get(),
        header.client_seq.get(),
        clock_time(header.timestamp_ns.get())
    );
    for_each_field(message, |name, value| {
        let _ = match value {
            Value::Unsigned(v) => write!(out, " {name}={v}"),
            Value::Signed(v) => write!(out, " {name}={v:+}"),
            Value::Code(c) => write!(out, " {name}={}", c as char),
            Value::Text(t) => write!(out, " {name}={}", String::from_utf8_lossy(trim_ascii(&t))),
        };
    });
    out
}

/// One message as a JSON object: seq, type, name, origin, client_seq,
/// timestamp_ns and every body field.
pub fn json(seq: u64, message: &Message) -> serde_json::Value {
    let header = message.header();
    let mut object = serde_json::Map::new();
    object.insert("seq".into(), seq.into());
    object.insert(
        "type".into(),
        (message.msg_type() as char).to_string().into(),
    );
    object.insert("name".into(), type_name(message.msg_type()).into());
    object.insert("origin".into(), header.origin.get().into());
    object.insert("client_seq".into(), header.client_seq.get().into());
    object.insert("timestamp_ns".into(), header.timestamp_ns.get().into());
    for_each_field(message, |name, value| {
        let value: serde_json::Value = match value {
            Value::Unsigned(v) => v.into(),
            Value::Signed(v) => v.into(),
            Value::Code(c) => (c as char).to_string().into(),
            Value::Text(t) => String::from_utf8_lossy(trim_ascii(&t)).into_owned().into(),
        };
        object.insert(name.into(), value);
    });
    serde_json::Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_wire::{OnHandDelta, Order, SkuDirectory};

    #[test]
    fn an_order_line_has_every_field() {
        let order = Order::new(17, 1, 42, 2)
            .with_origin(3)
            .with_client_seq(9)
            .with_timestamp_ns(3_600_000_000_123);
        let message = Message::parse(order.as_bytes()).unwrap();
        assert_eq!(
            line(1042, &message),
            "1042 O 3/9 01:00:00.000000123 order_id=17 location=1 sku=42 qty=2"
        );
        let json = json(1042, &message);
        assert_eq!(json["name"], "order");
        assert_eq!(json["qty"], 2);
        assert_eq!(json["origin"], 3);
    }

    #[test]
    fn deltas_are_signed_and_text_is_trimmed() {
        let delta = OnHandDelta::new(1, 42, -2, b'O', 1042);
        let message = Message::parse(delta.as_bytes()).unwrap();
        assert!(line(1043, &message).ends_with("delta=-2 reason=O cmd_seq=1042"));
        let sku = SkuDirectory::new(42, *b"TSHIRT-RED-M    ");
        let message = Message::parse(sku.as_bytes()).unwrap();
        assert!(line(1, &message).ends_with("sku=42 symbol=TSHIRT-RED-M"));
        assert_eq!(json(1, &message)["symbol"], "TSHIRT-RED-M");
    }
}
