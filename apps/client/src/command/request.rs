//! What a person or a file asks for ([`Spec`]: SKUs and locations by symbol,
//! name or id), and the command it becomes once resolved against a replica
//! ([`Request`]: ids only, one per wire command).

use std::fmt;

use serde::{Deserialize, Serialize};
use tally_config::gateway::Role;
use tally_wire::{
    delta_reason, directory_kind, Adjust, CancelOrder, ConfirmHold, DirectoryAdd, ModifyOrder,
    Order, Recount, ReleaseHold, Reserve, Transfer,
};

use crate::replica::Replica;

/// Why an adjustment changes stock (the `P` command's reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReason {
    /// Goods received (`A`): the delta must be positive.
    Restock,
    /// A customer return (`N`): the delta must be positive.
    Return,
    /// Loss, theft or damage (`A` with a negative delta).
    Shrink,
}

impl AdjustReason {
    /// The names [`AdjustReason::parse`] accepts.
    pub const NAMES: [&'static str; 3] = ["restock", "return", "shrink"];

    pub fn parse(text: &str) -> Option<AdjustReason> {
        match text {
            "restock" => Some(AdjustReason::Restock),
            "return" => Some(AdjustReason::Return),
            "shrink" => Some(AdjustReason::Shrink),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The wire reason and the signed delta for `qty` units.
    fn wire(self, qty: u32) -> (u8, i32) {
        let qty = i32::try_from(qty).unwrap_or(i32::MAX);
        match self {
            AdjustReason::Restock => (delta_reason::ADJUST, qty),
            AdjustReason::Return => (delta_reason::RETURN, qty),
            AdjustReason::Shrink => (delta_reason::ADJUST, -qty),
        }
    }
}

/// A SKU or location as given: a symbol / name, or a numeric id.
///
/// Resolution tries the directory's symbol (or name) first, so a SKU whose
/// symbol is all digits is found by its symbol; otherwise all digits are an
/// id, which must be in the directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ref(pub String);

impl From<&str> for Ref {
    fn from(text: &str) -> Self {
        Ref(text.to_string())
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest symbol or name accepted in a [`Ref`] (the directory's fields are
/// 16 bytes).
const REF_BYTES_MAX: usize = 16;

impl Ref {
    /// The SKU id this names in `replica`'s directory.
    pub fn sku(&self, replica: &Replica) -> Result<u32, ResolveError> {
        let text = self.checked()?;
        if let Some(sku) = replica.sku_by_symbol(text) {
            return Ok(sku);
        }
        match text.parse::<u32>() {
            Ok(sku) if replica.sku_slot(sku).is_some() => Ok(sku),
            _ => Err(ResolveError::UnknownSku(text.to_string())),
        }
    }

    /// The location id this names in `replica`'s directory; `0` and `any`
    /// (where `allow_any`) mean "any location".
    pub fn location(&self, replica: &Replica, allow_any: bool) -> Result<u16, ResolveError> {
        let text = self.checked()?;
        if allow_any && (text == "0" || text.eq_ignore_ascii_case("any")) {
            return Ok(0);
        }
        if let Some(location) = replica.location_by_name(text) {
            return Ok(location);
        }
        match text.parse::<u16>() {
            Ok(location) if location != 0 && replica.location_index(location).is_some() => {
                Ok(location)
            }
            _ => Err(ResolveError::UnknownLocation(text.to_string())),
        }
    }

    fn checked(&self) -> Result<&str, ResolveError> {
        let text = self.0.trim();
        if text.is_empty()
            || text.len() > REF_BYTES_MAX
            || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(ResolveError::BadName(printable(&self.0)));
        }
        Ok(text)
    }
}

/// `text`, cut to 40 characters with non-printable characters escaped (for
/// error messages about hostile input).
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(40)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// Why a [`Spec`] could not become a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    UnknownSku(String),
    UnknownLocation(String),
    /// Empty, longer than 16 bytes, or not printable ASCII.
    BadName(String),
    /// A quantity of 0 or over 2³¹−1, or an adjustment of 0.
    BadQuantity(u64),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::UnknownSku(sku) => write!(f, "unknown SKU {sku:?}"),
            ResolveError::UnknownLocation(location) => write!(f, "unknown location {location:?}"),
            ResolveError::BadName(name) => write!(
                f,
                "\"{name}\" is not a SKU or location: 1 to 16 printable ASCII characters (a \
                 new one: no spaces)"
            ),
            ResolveError::BadQuantity(qty) => {
                write!(f, "quantity {qty} is out of range (1 to 2147483647)")
            }
        }
    }
}

impl std::error::Error for ResolveError {}

/// A command as asked for, SKUs and locations by symbol, name or id. Ids
/// (`order_id`, `hold_id`, `transfer_id`) are the client's; each is unique
/// per user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Spec {
    /// `id` 0 (or absent in JSON): the tool assigns one.
    Order {
        #[serde(default)]
        id: u64,
        sku: Ref,
        qty: u64,
        location: Option<Ref>,
    },
    Modify {
        id: u64,
        qty: u64,
    },
    Cancel {
        id: u64,
    },
    Hold {
        #[serde(default)]
        id: u64,
        sku: Ref,
        qty: u64,
        location: Ref,
        #[serde(default = "default_ttl_ms")]
        ttl_ms: u32,
    },
    Confirm {
        id: u64,
    },
    Release {
        id: u64,
    },
    Transfer {
        #[serde(default)]
        id: u64,
        sku: Ref,
        qty: u64,
        from: Ref,
        to: Ref,
    },
    Recount {
        sku: Ref,
        location: Ref,
        on_hand: u64,
        #[serde(default)]
        expected_version: u64,
    },
    Adjust {
        sku: Ref,
        location: Ref,
        qty: u64,
        reason: AdjustReason,
    },
    /// A new SKU while trading (`N`, role ops): `id` 0 (or absent) lets
    /// the warehouse pick the lowest free id.
    AddSku {
        symbol: String,
        #[serde(default)]
        id: u32,
    },
    /// A new location while trading (`N`, role ops).
    AddLocation {
        name: String,
        #[serde(default)]
        id: u16,
    },
}

/// A hold's time to live when none is given: 15 minutes.
pub const DEFAULT_TTL_MS: u32 = 15 * 60 * 1000;

fn default_ttl_ms() -> u32 {
    DEFAULT_TTL_MS
}

/// The largest quantity a command carries (the warehouse refuses more).
pub const QTY_MAX: u64 = i32::MAX as u64;

fn qty(value: u64) -> Result<u32, ResolveError> {
    if value == 0 || value > QTY_MAX {
        return Err(ResolveError::BadQuantity(value));
    }
    Ok(value as u32)
}

impl Spec {
    /// The command, with ids from `replica`'s directories.
    pub fn resolve(&self, replica: &Replica) -> Result<Request, ResolveError> {
        Ok(match self {
            Spec::Order {
                id,
                sku,
                qty: q,
                location,
            } => Request::Order {
                order_id: *id,
                location: match location {
                    Some(location) => location.location(replica, true)?,
                    None => 0,
                },
                sku: sku.sku(replica)?,
                qty: qty(*q)?,
            },
            Spec::Modify { id, qty: q } => Request::Modify {
                order_id: *id,
                new_qty: qty(*q)?,
            },
            Spec::Cancel { id } => Request::Cancel { order_id: *id },
            Spec::Hold {
                id,
                sku,
                qty: q,
                location,
                ttl_ms,
            } => Request::Hold {
                hold_id: *id,
                location: location.location(replica, false)?,
                sku: sku.sku(replica)?,
                qty: qty(*q)?,
                ttl_ms: *ttl_ms,
            },
            Spec::Confirm { id } => Request::Confirm { hold_id: *id },
            Spec::Release { id } => Request::Release { hold_id: *id },
            Spec::Transfer {
                id,
                sku,
                qty: q,
                from,
                to,
            } => Request::Transfer {
                transfer_id: *id,
                from: from.location(replica, false)?,
                to: to.location(replica, false)?,
                sku: sku.sku(replica)?,
                qty: qty(*q)?,
            },
            Spec::Recount {
                sku,
                location,
                on_hand,
                expected_version,
            } => Request::Recount {
                location: location.location(replica, false)?,
                sku: sku.sku(replica)?,
                on_hand: u32::try_from(*on_hand)
                    .map_err(|_| ResolveError::BadQuantity(*on_hand))?,
                expected_version: *expected_version,
            },
            Spec::Adjust {
                sku,
                location,
                qty: q,
                reason,
            } => Request::Adjust {
                location: location.location(replica, false)?,
                sku: sku.sku(replica)?,
                qty: qty(*q)?,
                reason: *reason,
            },
            Spec::AddSku { .. } | Spec::AddLocation { .. } => self.directory_add()?,
        })
    }

    /// The `N` of [`Spec::AddSku`] or [`Spec::AddLocation`] (the name
    /// checked; whether it is new is the warehouse's decision).
    fn directory_add(&self) -> Result<Request, ResolveError> {
        let (kind, id, name) = match self {
            Spec::AddSku { symbol, id } => (directory_kind::SKU, *id, symbol),
            Spec::AddLocation { name, id } => (directory_kind::LOCATION, u32::from(*id), name),
            _ => unreachable!("not a directory add"),
        };
        Ok(Request::DirectoryAdd {
            kind,
            id,
            name: Name::new(name)?,
        })
    }

    /// The client id the command names or creates (`None` for recount and
    /// adjust, which have none).
    pub fn id_mut(&mut self) -> Option<&mut u64> {
        match self {
            Spec::Order { id, .. }
            | Spec::Modify { id, .. }
            | Spec::Cancel { id }
            | Spec::Hold { id, .. }
            | Spec::Confirm { id }
            | Spec::Release { id }
            | Spec::Transfer { id, .. } => Some(id),
            Spec::Recount { .. }
            | Spec::Adjust { .. }
            | Spec::AddSku { .. }
            | Spec::AddLocation { .. } => None,
        }
    }

    /// Whether the command creates its id (order, hold, transfer), so a
    /// tool may choose it.
    pub fn creates_id(&self) -> bool {
        matches!(
            self,
            Spec::Order { .. } | Spec::Hold { .. } | Spec::Transfer { .. }
        )
    }

    /// The wire type of the command this becomes.
    pub fn msg_type(&self) -> u8 {
        match self {
            Spec::Order { .. } => Order::TYPE,
            Spec::Modify { .. } => ModifyOrder::TYPE,
            Spec::Cancel { .. } => CancelOrder::TYPE,
            Spec::Hold { .. } => Reserve::TYPE,
            Spec::Confirm { .. } => ConfirmHold::TYPE,
            Spec::Release { .. } => ReleaseHold::TYPE,
            Spec::Transfer { .. } => Transfer::TYPE,
            Spec::Recount { .. } => Recount::TYPE,
            Spec::Adjust { .. } => Adjust::TYPE,
            Spec::AddSku { .. } | Spec::AddLocation { .. } => DirectoryAdd::TYPE,
        }
    }
}

/// A command with every SKU and location as an id: exactly one wire
/// command ([`Request::encode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Order {
        order_id: u64,
        location: u16,
        sku: u32,
        qty: u32,
    },
    Modify {
        order_id: u64,
        new_qty: u32,
    },
    Cancel {
        order_id: u64,
    },
    Hold {
        hold_id: u64,
        location: u16,
        sku: u32,
        qty: u32,
        ttl_ms: u32,
    },
    Confirm {
        hold_id: u64,
    },
    Release {
        hold_id: u64,
    },
    Transfer {
        transfer_id: u64,
        from: u16,
        to: u16,
        sku: u32,
        qty: u32,
    },
    Recount {
        location: u16,
        sku: u32,
        on_hand: u32,
        expected_version: u64,
    },
    Adjust {
        location: u16,
        sku: u32,
        qty: u32,
        reason: AdjustReason,
    },
    /// `N`: `kind` is [`directory_kind`]'s `R` (SKU) or `L` (location).
    DirectoryAdd {
        #[serde(serialize_with = "kind_name")]
        kind: u8,
        id: u32,
        name: Name,
    },
}

fn kind_name<S: serde::Serializer>(kind: &u8, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if *kind == directory_kind::SKU {
        "sku"
    } else {
        "location"
    })
}

/// A SKU symbol or location name as the directory holds it: 1 to 16
/// printable ASCII characters without spaces, right-padded with spaces.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name([u8; 16]);

impl Name {
    /// `text` as a directory name, or why it cannot be one.
    pub fn new(text: &str) -> Result<Name, ResolveError> {
        let fits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        match tally_wire::pad_ascii(text) {
            Ok(bytes) if fits => Ok(Name(bytes)),
            _ => Err(ResolveError::BadName(printable(text))),
        }
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0)
            .unwrap_or("")
            .trim_end_matches(' ')
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A command's wire bytes (header zero: the client stamps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoded {
    bytes: [u8; Reserve::SIZE],
    len: u8,
}

impl Encoded {
    fn of(message: &[u8]) -> Encoded {
        let mut bytes = [0u8; Reserve::SIZE];
        bytes[..message.len()].copy_from_slice(message);
        Encoded {
            bytes,
            len: message.len() as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Request {
    /// The stream message for this command.
    pub fn encode(&self) -> Encoded {
        match *self {
            Request::Order {
                order_id,
                location,
                sku,
                qty,
            } => Encoded::of(Order::new(order_id, location, sku, qty).as_bytes()),
            Request::Modify { order_id, new_qty } => {
                Encoded::of(ModifyOrder::new(order_id, new_qty).as_bytes())
            }
            Request::Cancel { order_id } => Encoded::of(CancelOrder::new(order_id).as_bytes()),
            Request::Hold {
                hold_id,
                location,
                sku,
                qty,
                ttl_ms,
            } => Encoded::of(Reserve::new(hold_id, location, sku, qty, ttl_ms).as_bytes()),
            Request::Confirm { hold_id } => Encoded::of(ConfirmHold::new(hold_id).as_bytes()),
            Request::Release { hold_id } => Encoded::of(ReleaseHold::new(hold_id).as_bytes()),
            Request::Transfer {
                transfer_id,
                from,
                to,
                sku,
                qty,
            } => Encoded::of(Transfer::new(transfer_id, from, to, sku, qty).as_bytes()),
            Request::Recount {
                location,
                sku,
                on_hand,
                expected_version,
            } => Encoded::of(Recount::new(location, sku, on_hand, expected_version).as_bytes()),
            Request::Adjust {
                location,
                sku,
                qty,
                reason,
            } => {
                let (reason, delta) = reason.wire(qty);
                Encoded::of(Adjust::new(location, sku, delta, reason).as_bytes())
            }
            Request::DirectoryAdd { kind, id, name } => {
                Encoded::of(DirectoryAdd::new(kind, id, *name.as_bytes()).as_bytes())
            }
        }
    }

    /// The wire type.
    pub fn msg_type(&self) -> u8 {
        self.encode().as_bytes()[0]
    }

    /// The command's name (`order`, `hold`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Order { .. } => "order",
            Request::Modify { .. } => "modify",
            Request::Cancel { .. } => "cancel",
            Request::Hold { .. } => "hold",
            Request::Confirm { .. } => "confirm",
            Request::Release { .. } => "release",
            Request::Transfer { .. } => "transfer",
            Request::Recount { .. } => "recount",
            Request::Adjust { .. } => "adjust",
            Request::DirectoryAdd { kind, .. } if *kind == directory_kind::SKU => "sku add",
            Request::DirectoryAdd { .. } => "location add",
        }
    }

    /// The (location, sku) cells the command is about, as far as it names
    /// them (an order at location 0 names only its SKU: location 0).
    pub fn cells(&self) -> [Option<(u16, u32)>; 2] {
        match *self {
            Request::Order { location, sku, .. } => [Some((location, sku)), None],
            Request::Hold { location, sku, .. }
            | Request::Recount { location, sku, .. }
            | Request::Adjust { location, sku, .. } => [Some((location, sku)), None],
            Request::Transfer { from, to, sku, .. } => [Some((from, sku)), Some((to, sku))],
            _ => [None, None],
        }
    }
}

/// Why `role` may not send a command of type `msg_type`, if it may not.
pub fn check_role(role: Role, msg_type: u8) -> Result<(), String> {
    if role.permits(msg_type) {
        return Ok(());
    }
    let needed = if Role::Pos.permits(msg_type) {
        "role pos or authority may"
    } else if Role::Ops.permits(msg_type) {
        "role ops or authority may"
    } else {
        "only role authority may"
    };
    Err(format!(
        "role {role} may not send {} commands ({needed})",
        crate::text::type_name(msg_type)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::ReplicaLimits;
    use tally_wire::{LocationDirectory, Message, SkuDirectory};

    fn replica() -> Replica {
        let mut replica = Replica::new(ReplicaLimits::small());
        let events: [&[u8]; 4] = [
            LocationDirectory::new(1, tally_wire::pad_ascii("STORE-A").unwrap()).as_bytes(),
            LocationDirectory::new(2, tally_wire::pad_ascii("7").unwrap()).as_bytes(),
            SkuDirectory::new(42, tally_wire::pad_ascii("MUG").unwrap()).as_bytes(),
            SkuDirectory::new(7, tally_wire::pad_ascii("1234").unwrap()).as_bytes(),
        ]
        .map(|b| b.to_vec().leak() as &[u8]);
        for (i, bytes) in events.iter().enumerate() {
            replica.apply(i as u64 + 1, &Message::parse(bytes).unwrap());
        }
        replica
    }

    #[test]
    fn refs_resolve_by_symbol_first_then_by_id() {
        let replica = replica();
        assert_eq!(Ref::from("MUG").sku(&replica), Ok(42));
        assert_eq!(Ref::from("42").sku(&replica), Ok(42));
        assert_eq!(Ref::from("1234").sku(&replica), Ok(7), "a numeric symbol");
        assert_eq!(Ref::from("7").sku(&replica), Ok(7));
        assert_eq!(
            Ref::from("NOPE").sku(&replica),
            Err(ResolveError::UnknownSku("NOPE".into()))
        );
        assert_eq!(
            Ref::from("99").sku(&replica),
            Err(ResolveError::UnknownSku("99".into()))
        );
        assert_eq!(Ref::from("STORE-A").location(&replica, false), Ok(1));
        assert_eq!(
            Ref::from("7").location(&replica, false),
            Ok(2),
            "a numeric name"
        );
        assert_eq!(Ref::from("1").location(&replica, false), Ok(1));
        assert_eq!(Ref::from("any").location(&replica, true), Ok(0));
        assert!(Ref::from("0").location(&replica, false).is_err());
        assert!(matches!(
            Ref::from("x".repeat(100).as_str()).sku(&replica),
            Err(ResolveError::BadName(_))
        ));
        assert!(matches!(
            Ref::from("M\u{7}G").sku(&replica),
            Err(ResolveError::BadName(_))
        ));
    }

    #[test]
    fn specs_become_the_wire_commands() {
        let replica = replica();
        let spec = Spec::Order {
            id: 9,
            sku: "MUG".into(),
            qty: 2,
            location: Some("STORE-A".into()),
        };
        let request = spec.resolve(&replica).unwrap();
        assert_eq!(
            request,
            Request::Order {
                order_id: 9,
                location: 1,
                sku: 42,
                qty: 2
            }
        );
        assert_eq!(
            request.encode().as_bytes(),
            Order::new(9, 1, 42, 2).as_bytes()
        );
        let shrink = Spec::Adjust {
            sku: "MUG".into(),
            location: "STORE-A".into(),
            qty: 3,
            reason: AdjustReason::Shrink,
        };
        let bytes = shrink.resolve(&replica).unwrap().encode();
        assert_eq!(bytes.as_bytes(), Adjust::new(1, 42, -3, b'A').as_bytes());
        let zero = Spec::Modify { id: 1, qty: 0 };
        assert_eq!(zero.resolve(&replica), Err(ResolveError::BadQuantity(0)));
        let huge = Spec::Modify {
            id: 1,
            qty: QTY_MAX + 1,
        };
        assert!(huge.resolve(&replica).is_err());
        assert_eq!(spec.msg_type(), b'O');
    }

    #[test]
    fn roles_are_checked_with_a_sentence() {
        assert!(check_role(Role::Pos, b'O').is_ok());
        let error = check_role(Role::Pos, b'T').unwrap_err();
        assert!(error.contains("role pos may not send transfer"), "{error}");
        assert!(check_role(Role::Ops, b'O')
            .unwrap_err()
            .contains("role pos"));
    }
}
