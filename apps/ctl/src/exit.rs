//! tally-ctl's exit statuses: 0 accepted, one status per kind of rejection,
//! and the statuses of things that are not decisions (errors, bad input, no
//! decision in time). The statuses every tool shares (1, 2, 20, 21, 22,
//! 130) are `tally_client::cli::exit`'s. README "Exit statuses" lists them.

use tally_client::command::{CommandError, Decision, RejectedBy, ResolveError};
use tally_client::credentials::CredentialsError;
use tally_client::tally_wire::reject_reason;

pub use tally_client::cli::exit::{
    BAD_INPUT, ERROR, INTERRUPTED, LOGIN_REFUSED, REFUSED as GATEWAY_REFUSED, UNREACHABLE,
};

/// The command was accepted (a batch: every line accepted).
pub const ACCEPTED: u8 = tally_client::cli::exit::OK;
/// No decision within `--timeout-ms`: the command was taken and may still be
/// decided (look with `tally-ctl order ID` or `watch`).
pub const NO_DECISION: u8 = 3;
/// A batch ran to its end and some of its lines were rejected.
pub const BATCH_REJECTIONS: u8 = 4;
/// Rejected: insufficient stock (`I`).
pub const INSUFFICIENT: u8 = 10;
/// Rejected: unknown SKU (`U`), also when tally-ctl cannot resolve it.
pub const UNKNOWN_SKU: u8 = 11;
/// Rejected: unknown location (`L`), also when tally-ctl cannot resolve it.
pub const UNKNOWN_LOCATION: u8 = 12;
/// Rejected: version conflict (`V`), the recount's expected version is stale.
pub const VERSION_CONFLICT: u8 = 13;
/// Rejected: duplicate id (`D`).
pub const DUPLICATE_ID: u8 = 14;
/// Rejected: no such order or hold (`N`).
pub const NO_SUCH: u8 = 15;
/// Rejected: zero or invalid quantity (`Z`).
pub const INVALID_QUANTITY: u8 = 16;

/// The status a decision exits with.
pub fn of_decision(decision: &Decision) -> u8 {
    let Some(rejection) = decision.rejection() else {
        return ACCEPTED;
    };
    if rejection.by == RejectedBy::Gateway {
        return GATEWAY_REFUSED;
    }
    match rejection.reason {
        reject_reason::INSUFFICIENT => INSUFFICIENT,
        reject_reason::UNKNOWN_SKU => UNKNOWN_SKU,
        reject_reason::UNKNOWN_LOCATION => UNKNOWN_LOCATION,
        reject_reason::VERSION_CONFLICT => VERSION_CONFLICT,
        reject_reason::DUPLICATE_ID => DUPLICATE_ID,
        reject_reason::NO_SUCH => NO_SUCH,
        reject_reason::INVALID_QUANTITY => INVALID_QUANTITY,
        _ => ERROR,
    }
}

/// The status an error exits with.
pub fn of_error(error: &CommandError) -> u8 {
    match error {
        CommandError::Resolve(ResolveError::UnknownSku(_)) => UNKNOWN_SKU,
        CommandError::Resolve(ResolveError::UnknownLocation(_)) => UNKNOWN_LOCATION,
        CommandError::Resolve(_) => BAD_INPUT,
        CommandError::Credentials(CredentialsError::UnknownUser(_)) => LOGIN_REFUSED,
        CommandError::Credentials(_) => BAD_INPUT,
        CommandError::LoginRefused { .. } => LOGIN_REFUSED,
        CommandError::NotPermitted(_) => GATEWAY_REFUSED,
        CommandError::Unreachable(_) => UNREACHABLE,
        CommandError::NoDecision { .. } => NO_DECISION,
        _ => ERROR,
    }
}
