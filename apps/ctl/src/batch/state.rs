//! The batch's state file: how its lines map onto the gateway's
//! exactly-once numbering.
//!
//! Written once, before the first command is sent, and once more when the
//! batch is complete. Line `i` (counting command lines from 0) is sent as
//! client_seq `base_client_seq + i`, so after a crash the gateway's Login
//! Accepted (the next client_seq it expects) says exactly how many lines
//! were sequenced: `next − base_client_seq`. Nothing else needs recording,
//! and nothing is written per line.
//!
//! Text, one `key=value` a line, written under a temporary name, synced,
//! renamed into place and the directory synced: a reader sees the old file
//! or the new one, never a mix.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use tally_runtime::file::replace_atomically;

const MAGIC: &str = "tally-ctl batch state 1";
/// A state file is a few hundred bytes; anything larger is not one.
const STATE_BYTES_MAX: u64 = 4096;

/// What a state file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// XXH64 of the batch file's bytes.
    pub file_xxh64: u64,
    /// Command lines in the file.
    pub lines: u64,
    /// The stream session the numbering belongs to.
    pub session: String,
    pub user: String,
    /// client_seq of the file's first command line.
    pub base_client_seq: u32,
    /// Ids assigned to orders, holds and transfers without one: `id_base +
    /// line number`.
    pub id_base: u64,
    /// Every line was sequenced and decided.
    pub complete: bool,
}

impl State {
    fn text(&self) -> String {
        format!(
            "{MAGIC}\nfile_xxh64={:016x}\nlines={}\nsession={}\nuser={}\nbase_client_seq={}\nid_base={}\ncomplete={}\n",
            self.file_xxh64, self.lines, self.session, self.user, self.base_client_seq, self.id_base, self.complete
        )
    }

    fn parse(text: &str) -> Result<State, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("does not start with {MAGIC:?}"));
        }
        let mut get = |key: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| format!("{key} is missing"))?;
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| format!("expected {key}=…, found {line:?}"))
        };
        let number = |key: &str, value: String| -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{key}={value:?} is not a number"))
        };
        let hash = get("file_xxh64")?;
        Ok(State {
            file_xxh64: u64::from_str_radix(&hash, 16)
                .map_err(|_| format!("file_xxh64={hash:?}"))?,
            lines: number("lines", get("lines")?)?,
            session: get("session")?,
            user: get("user")?,
            base_client_seq: u32::try_from(number("base_client_seq", get("base_client_seq")?)?)
                .map_err(|_| "base_client_seq too large".to_string())?,
            id_base: number("id_base", get("id_base")?)?,
            complete: get("complete")? == "true",
        })
    }

    /// The state in `path`, `None` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<State>, String> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("state file {}: {error}", path.display())),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, STATE_BYTES_MAX), &mut text)
            .map_err(|e| format!("state file {}: {e}", path.display()))?;
        State::parse(&text)
            .map(Some)
            .map_err(|e| format!("state file {} is damaged: {e}", path.display()))
    }

    /// Writes the state to `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        write_atomically(path, self.text().as_bytes())
            .map_err(|e| format!("writing the state file {}: {e}", path.display()))
    }
}

/// `bytes` into `path`, atomically and durably
/// ([`tally_runtime::file::replace_atomically`]).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_atomically(path, |file| file.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_survives_the_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch.state");
        assert_eq!(State::load(&path), Ok(None));
        let state = State {
            file_xxh64: 0xdead_beef,
            lines: 100_000,
            session: "DEMO".into(),
            user: "pos1".into(),
            base_client_seq: 7,
            id_base: 1_733_000_000_000_000,
            complete: false,
        };
        state.save(&path).unwrap();
        assert_eq!(State::load(&path), Ok(Some(state.clone())));
        assert!(!path.with_file_name("batch.state.tmp").exists());
        std::fs::write(&path, state.text().replace("lines=100000", "lines=many")).unwrap();
        let error = State::load(&path).unwrap_err();
        assert!(
            error.contains("damaged") && error.contains("lines"),
            "{error}"
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(State::load(&path)
            .unwrap_err()
            .contains("does not start with"));
    }
}
