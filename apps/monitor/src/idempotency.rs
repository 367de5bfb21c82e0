//! Idempotency keys of `/v1` writes, kept across restarts.
//!
//! One append-only file of JSON lines under the state directory:
//! - an **intent** `{"t":"intent","origin","key","request","client_seq","location"}`
//!   is written and fsync'd *before* the command goes to the gateway: it
//!   maps the key onto the user's exactly-once numbering (the gateway never
//!   sequences one client_seq twice, and the command client never resends
//!   one it has sequenced);
//! - an **outcome** `{"t":"outcome","origin","key","status","body"}` is
//!   written and fsync'd *before* the answer goes out, so an answer a
//!   client has seen is the answer every retry gets, also after a restart.
//!
//! Both are group-committed: one fsync per round of the user's session
//! thread, whatever the number of requests in it. A torn last line (a crash
//! mid-write) is ignored at load. At most `keys_max` keys are held; a new
//! key beyond that is refused (503) until the file is rotated (start the
//! service with a fresh state directory at session rollover).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What is known about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    /// Method, path and body of the request that used the key first.
    pub(crate) request: String,
    /// The command's client_seq in the user's numbering (0: none sent).
    pub(crate) client_seq: u32,
    /// Where the result can be read (`Location` of a 202).
    pub(crate) location: String,
    /// The answer sent: status and body.
    pub(crate) outcome: Option<(u16, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Intent {
        origin: u16,
        key: String,
        request: String,
        client_seq: u32,
        location: String,
    },
    Outcome {
        origin: u16,
        key: String,
        status: u16,
        body: String,
    },
}

/// One record to append (see the module docs).
pub(crate) enum Append<'a> {
    Intent {
        origin: u16,
        key: &'a str,
        record: &'a KeyRecord,
    },
    Outcome {
        origin: u16,
        key: &'a str,
        status: u16,
        body: &'a str,
    },
}

/// The keys and their file.
#[derive(Debug)]
pub(crate) struct IdempotencyStore {
    file: File,
    path: PathBuf,
    keys: HashMap<(u16, String), KeyRecord>,
    keys_max: usize,
}

impl IdempotencyStore {
    /// Opens (or creates) `dir/idempotency.jsonl` and loads its keys.
    pub(crate) fn open(dir: &Path, keys_max: usize) -> io::Result<IdempotencyStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("idempotency.jsonl");
        let mut keys = HashMap::new();
        if path.exists() {
            drop_torn_tail(&path)?;
            for line in BufReader::new(File::open(&path)?).lines() {
                // A torn last line after a crash does not parse: skipped.
                let Ok(line) = serde_json::from_str::<Line>(&line?) else {
                    continue;
                };
                load(&mut keys, line);
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // The file's directory entry must survive a crash too.
        File::open(dir)?.sync_all()?;
        Ok(IdempotencyStore {
            file,
            path,
            keys,
            keys_max,
        })
    }

    pub(crate) fn get(&self, origin: u16, key: &str) -> Option<&KeyRecord> {
        self.keys.get(&(origin, key.to_string()))
    }

    /// Whether another key can be taken.
    pub(crate) fn has_room(&self) -> bool {
        self.keys.len() < self.keys_max
    }

    /// Appends `records` with one fsync, then applies them to the map.
    pub(crate) fn append(&mut self, records: &[Append<'_>]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        let mut lines = Vec::with_capacity(records.len());
        for record in records {
            let line = match record {
                Append::Intent {
                    origin,
                    key,
                    record,
                } => Line::Intent {
                    origin: *origin,
                    key: key.to_string(),
                    request: record.request.clone(),
                    client_seq: record.client_seq,
                    location: record.location.clone(),
                },
                Append::Outcome {
                    origin,
                    key,
                    status,
                    body,
                } => Line::Outcome {
                    origin: *origin,
                    key: key.to_string(),
                    status: *status,
                    body: body.to_string(),
                },
            };
            text.push_str(&serde_json::to_string(&line).map_err(io::Error::other)?);
            text.push('\n');
            lines.push(line);
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("fsync of {}: {error}", self.path.display()),
            )
        })?;
        for line in lines {
            load(&mut self.keys, line);
        }
        Ok(())
    }
}

/// Cuts a last line that a crash left without its newline, so the next
/// append starts on a line of its own.
fn drop_torn_tail(path: &Path) -> io::Result<()> {
    let bytes = std::fs::read(path)?;
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if end < bytes.len() {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(end as u64)?;
        file.sync_all()?;
    }
    Ok(())
}

fn load(keys: &mut HashMap<(u16, String), KeyRecord>, line: Line) {
    match line {
        Line::Intent {
            origin,
            key,
            request,
            client_seq,
            location,
        } => {
            keys.entry((origin, key)).or_insert(KeyRecord {
                request,
                client_seq,
                location,
                outcome: None,
            });
        }
        Line::Outcome {
            origin,
            key,
            status,
            body,
        } => {
            if let Some(record) = keys.get_mut(&(origin, key)) {
                record.outcome.get_or_insert((status, body));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let record = KeyRecord {
            request: "POST /v1/orders {}".into(),
            client_seq: 7,
            location: "/v1/orders/1-7".into(),
            outcome: None,
        };
        {
            let mut store = IdempotencyStore::open(dir.path(), 10).unwrap();
            store
                .append(&[Append::Intent {
                    origin: 1,
                    key: "k",
                    record: &record,
                }])
                .unwrap();
            store
                .append(&[Append::Outcome {
                    origin: 1,
                    key: "k",
                    status: 201,
                    body: "{\"a\":1}",
                }])
                .unwrap();
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("idempotency.jsonl"))
            .unwrap();
        file.write_all(b"{\"t\":\"intent\",\"ori").unwrap();
        let mut store = IdempotencyStore::open(dir.path(), 10).unwrap();
        store
            .append(&[Append::Intent {
                origin: 2,
                key: "k",
                record: &record,
            }])
            .unwrap();
        let store = IdempotencyStore::open(dir.path(), 10).unwrap();
        assert_eq!(store.get(2, "k").unwrap().client_seq, 7);
        let got = store.get(1, "k").unwrap();
        assert_eq!(got.client_seq, 7);
        assert_eq!(got.outcome, Some((201, "{\"a\":1}".to_string())));
        assert!(store.get(3, "k").is_none());
    }
}
