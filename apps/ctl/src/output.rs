//! How tally-ctl prints: one line of text, or one JSON object a line
//! (`--json`). Errors go to stderr as text, and with `--json` also to
//! stdout as `{"error": …, "exit_status": …}`.

use serde_json::json;
use tally_client::command::{Decision, Request};

/// Prints `decision` (text: `filled seq=… on_hand=…` or `rejected: …`).
pub fn decision(decision: &Decision, json: bool, exit_status: u8) {
    if json {
        let mut value = serde_json::to_value(decision).expect("decisions serialize");
        value["exit_status"] = json!(exit_status);
        println!("{value}");
    } else {
        match decision.request {
            Request::Order { order_id, .. } => println!("{decision} order_id={order_id}"),
            Request::Hold { hold_id, .. } => println!("{decision} hold_id={hold_id}"),
            Request::Transfer { transfer_id, .. } => {
                println!("{decision} transfer_id={transfer_id}")
            }
            Request::DirectoryAdd { name, .. } => println!("{decision} name={name}"),
            _ => println!("{decision}"),
        }
    }
}

/// Prints an error (stderr; with `--json` also a JSON line on stdout).
pub fn error(text: &str, json: bool, exit_status: u8) {
    eprintln!("tally-ctl: {text}");
    if json {
        println!("{}", json!({ "error": text, "exit_status": exit_status }));
    }
}
