//! Spawning one named thread per loop, pinned to a configured core.
//!
//! A loop is pinned from its first instruction: [`spawn_loop`] briefly sets
//! the *calling* thread's affinity to the target core, spawns (the new thread
//! inherits that mask at `clone`), then puts the caller's mask back. Pinning
//! from inside the new thread would let the loop's closure start unpinned,
//! and a failure there would leave a thread with no `T` to return; this way a
//! core that cannot be used is reported before any thread exists.
//!
//! Start-up only: these functions allocate, read `/sys` and may log.

use std::io;
use std::mem;
use std::thread::JoinHandle;

/// Spawns a thread named `name` that runs one loop `f`, pinned to `core`
/// when `Some` (via `core_affinity`), unpinned (inheriting the caller's
/// affinity) when `None`.
///
/// Returns an error naming the core when it does not exist on this host or
/// the kernel refuses to pin to it (offline, outside this cgroup's cpuset),
/// and an error when `name` holds a NUL byte or the thread cannot be created.
/// The kernel shows at most the first 15 bytes of `name`; Rust (and panics)
/// show all of it.
pub fn spawn_loop<F, T>(name: &str, core: Option<usize>, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("loop name {name:?} contains a NUL byte"),
        ));
    }
    let builder = std::thread::Builder::new().name(name.to_owned());
    let Some(core) = core else {
        let handle = builder.spawn(f)?;
        tracing::info!(loop_name = name, "spawned loop, unpinned");
        return Ok(handle);
    };
    check_core_exists(name, core)?;

    let saved = AffinityMask::of_current_thread()?;
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        let os_error = io::Error::last_os_error();
        // The failed call changed nothing, but put the mask back regardless.
        let _ = saved.apply_to_current_thread();
        return Err(io::Error::new(
            os_error.kind(),
            format!("cannot pin loop {name:?} to core {core}: {os_error}"),
        ));
    }
    let spawned = builder.spawn(f);
    let restored = saved.apply_to_current_thread();
    let handle = spawned.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot spawn loop {name:?} on core {core}: {error}"),
        )
    })?;
    if let Err(error) = restored {
        // The loop runs, pinned; only the caller is left on `core`.
        tracing::warn!(
            loop_name = name,
            core,
            %error,
            "could not restore the spawning thread's CPU affinity"
        );
    }
    tracing::info!(loop_name = name, core, "spawned loop, pinned");
    Ok(handle)
}

/// The cores the calling thread may run on (its `sched_getaffinity` mask,
/// which reflects `taskset`, systemd's `CPUAffinity=` and the cgroup cpuset),
/// ascending. Empty if the mask cannot be read.
pub fn available_cores() -> Vec<usize> {
    let mut cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    cores.sort_unstable();
    cores
}

/// The cores the kernel has online (`/sys/devices/system/cpu/online`),
/// ascending; `None` if that file cannot be read or parsed.
pub fn online_cores() -> Option<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    parse_cpu_list(text.trim())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    for part in text.split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.parse().ok()?;
                let last: usize = last.parse().ok()?;
                if first > last {
                    return None;
                }
                cores.extend(first..=last);
            }
            None => cores.push(part.parse().ok()?),
        }
    }
    cores.sort_unstable();
    cores.dedup();
    Some(cores)
}

fn check_core_exists(name: &str, core: usize) -> io::Result<()> {
    let in_cpu_set = core < libc::CPU_SETSIZE as usize;
    let online = online_cores();
    let exists = in_cpu_set && online.as_ref().is_none_or(|cores| cores.contains(&core));
    if exists {
        return Ok(());
    }
    let known = match online {
        Some(cores) => format!("online cores: {}", format_cpu_list(&cores)),
        None => format!("at most {} cores are supported", libc::CPU_SETSIZE),
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cannot pin loop {name:?}: core {core} does not exist on this host ({known})"),
    ))
}

/// Formats ascending cores as a kernel CPU list (`0-3,8`).
fn format_cpu_list(cores: &[usize]) -> String {
    let mut out = String::new();
    let mut index = 0;
    while index < cores.len() {
        let first = cores[index];
        let mut last = first;
        while index + 1 < cores.len() && cores[index + 1] == last + 1 {
            index += 1;
            last = cores[index];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if first == last {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}-{last}"));
        }
        index += 1;
    }
    out
}

/// A saved `sched_getaffinity` mask.
struct AffinityMask(libc::cpu_set_t);

impl AffinityMask {
    fn of_current_thread() -> io::Result<Self> {
        // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; `set` is a live cpu_set_t of
        // the size passed.
        let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(AffinityMask(set))
    }

    fn apply_to_current_thread(&self) -> io::Result<()> {
        // SAFETY: pid 0 is the calling thread; `self.0` is a live cpu_set_t of
        // the size passed, read only.
        let rc = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[5]), "5");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn this_host_has_cores() {
        let available = available_cores();
        assert!(!available.is_empty());
        if let Some(online) = online_cores() {
            assert!(available.iter().all(|core| online.contains(core)));
        }
    }

    /// The cores in the calling thread's affinity mask, read with libc
    /// (independently of `core_affinity`).
    fn mask_of_current_thread() -> Vec<usize> {
        let mask = AffinityMask::of_current_thread().unwrap();
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `i` is below CPU_SETSIZE, the size of the set.
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &mask.0) })
            .collect()
    }

    #[test]
    fn spawn_loop_pins_to_each_available_core_from_the_first_instruction() {
        let before = mask_of_current_thread();
        for core in available_cores() {
            let handle = spawn_loop("test-pinned", Some(core), move || {
                (
                    mask_of_current_thread(),
                    std::thread::current().name().map(str::to_owned),
                )
            })
            .unwrap();
            let (mask, name) = handle.join().unwrap();
            assert_eq!(mask, vec![core]);
            assert_eq!(name.as_deref(), Some("test-pinned"));
        }
        assert_eq!(mask_of_current_thread(), before, "caller's mask restored");
    }

    #[test]
    fn spawn_loop_unpinned_keeps_the_callers_mask() {
        let before = mask_of_current_thread();
        let mask = spawn_loop("test-unpinned", None, mask_of_current_thread)
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(mask, before);
    }

    #[test]
    fn spawn_loop_rejects_a_core_that_does_not_exist() {
        let before = mask_of_current_thread();
        let mut missing = vec![usize::MAX, libc::CPU_SETSIZE as usize, 100_000];
        if let Some(online) = online_cores() {
            missing.push(online.last().unwrap() + 1);
        }
        for core in missing {
            let error = spawn_loop("test-missing", Some(core), || ()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            let message = error.to_string();
            assert!(message.contains(&format!("core {core}")), "{message}");
            assert!(message.contains("does not exist"), "{message}");
        }
        assert_eq!(mask_of_current_thread(), before);
    }

    #[test]
    fn spawn_loop_rejects_a_name_with_nul() {
        let error = spawn_loop("bad\0name", None, || ()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
