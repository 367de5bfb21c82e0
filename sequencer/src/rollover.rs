//! Which session the appliance runs, and which ended sessions' journals it
//! keeps: the file-system side of the daily rollover (README, "Daily
//! session rollover").
//!
//! The configured `[stream] session` is the first of a chain of sessions,
//! each the [`Session::successor`] of the one before (`D20261122`,
//! `D20261123`, …). At start the appliance runs the newest session of that
//! chain that has a journal in `journal.dir` (or the configured one when
//! none has); when that one has ended, the next. A rollover ends the
//! running session and starts its successor in the same process. Nothing
//! here reads a journal's contents: [`crate::journal`] decides whether a
//! session has ended.

use std::path::{Path, PathBuf};

use tally_wire::mold::Session;

use crate::journal::{checkpoint_path, journal_path};

/// Sessions of the chain starting at `root` that have a journal in `dir`,
/// with their positions, oldest first. A missing or unreadable directory
/// holds none.
pub fn chain_journals(dir: &Path, root: &Session) -> Vec<(u64, Session)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, Session)> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let stem = name.to_str()?.strip_suffix(".journal")?;
            let session = Session::from_str(stem).ok()?;
            Some((session.chain_position(root)?, session))
        })
        .collect();
    found.sort_by_key(|(position, _)| *position);
    found
}

/// The session to start: the newest of the chain with a journal, else
/// `root`. (If it has ended, the caller moves on to its successor.)
pub fn current_session(dir: &Path, root: &Session) -> Session {
    chain_journals(dir, root)
        .last()
        .map_or(*root, |(_, session)| *session)
}

/// Deletes the journal pairs of ended sessions of the chain beyond the
/// newest `keep` (0 keeps all), never `current`'s or a later one's. Returns
/// the files deleted. A file that cannot be deleted is logged and kept.
pub fn prune_ended(dir: &Path, root: &Session, current: &Session, keep: u32) -> Vec<PathBuf> {
    if keep == 0 {
        return Vec::new();
    }
    let Some(current_position) = current.chain_position(root) else {
        return Vec::new();
    };
    let ended: Vec<Session> = chain_journals(dir, root)
        .into_iter()
        .filter(|(position, _)| *position < current_position)
        .map(|(_, session)| session)
        .collect();
    let excess = ended.len().saturating_sub(keep as usize);
    let mut deleted = Vec::new();
    for session in &ended[..excess] {
        for path in [journal_path(dir, *session), checkpoint_path(dir, *session)] {
            match std::fs::remove_file(&path) {
                Ok(()) => deleted.push(path),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "could not delete an ended session's journal file")
                }
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> Session {
        Session::from_str(name).unwrap()
    }

    #[test]
    fn the_newest_journal_of_the_chain_is_current_and_pruning_keeps_the_newest_ended() {
        let dir = tempfile::tempdir().unwrap();
        let root = s("DAY1");
        assert_eq!(current_session(dir.path(), &root), root);
        for name in ["DAY1", "DAY2", "DAY3", "DAY4", "OTHER7", "DAY0"] {
            std::fs::write(dir.path().join(format!("{name}.journal")), b"x").unwrap();
            std::fs::write(dir.path().join(format!("{name}.checkpoint")), b"x").unwrap();
        }
        assert_eq!(current_session(dir.path(), &root), s("DAY4"));
        let deleted = prune_ended(dir.path(), &root, &s("DAY4"), 2);
        assert_eq!(deleted.len(), 2, "DAY1's pair: {deleted:?}");
        assert!(!dir.path().join("DAY1.journal").exists());
        for kept in ["DAY2", "DAY3", "DAY4", "OTHER7", "DAY0"] {
            assert!(
                dir.path().join(format!("{kept}.journal")).exists(),
                "{kept}"
            );
        }
        assert!(prune_ended(dir.path(), &root, &s("DAY4"), 0).is_empty());
    }
}
