//! CPU pinning of the measuring thread (DESIGN §6: big cores on big.LITTLE).
//!
//! Pinning the measuring thread is enough for the runtimes too: Linux threads
//! inherit their creator's affinity mask, so a runtime that builds its thread
//! pool after [`pin`] (tract builds its executor in `TractRuntime::load`) runs
//! that pool on the same CPUs.

use std::marker::PhantomData;
use std::mem;

use edgeloop_cli::cpus::format_cpu_list as cpu_list;

#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("no CPUs given to pin to")]
    Empty,
    #[error("{} not available to this agent (allowed: {})", describe_unavailable(.requested), cpu_list(.allowed))]
    Unavailable { requested: Vec<usize>, allowed: Vec<usize> },
    #[error("{call} failed: {source}")]
    Os { call: &'static str, source: std::io::Error },
}

fn describe_unavailable(cpus: &[usize]) -> String {
    match cpus {
        [cpu] => format!("cpu {cpu} is"),
        _ => format!("cpus {} are", cpu_list(cpus)),
    }
}

/// Highest CPU number a `cpu_set_t` can hold, plus one (1024 on Linux,
/// glibc and musl alike; edge devices have far fewer).
const SET_CAPACITY: usize = 8 * mem::size_of::<libc::cpu_set_t>();

fn empty_set() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    unsafe { mem::zeroed() }
}

fn get_mask() -> Result<libc::cpu_set_t, AffinityError> {
    let mut set = empty_set();
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0
    // is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(AffinityError::Os { call: "sched_getaffinity", source: std::io::Error::last_os_error() });
    }
    Ok(set)
}

fn set_mask(set: &libc::cpu_set_t) -> Result<(), AffinityError> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        return Err(AffinityError::Os { call: "sched_setaffinity", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

fn cpus_of(set: &libc::cpu_set_t) -> Vec<usize> {
    // SAFETY: every index is below the set's capacity.
    (0..SET_CAPACITY).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, set) }).collect()
}

/// The CPUs the current thread may run on, ascending.
pub fn current() -> Result<Vec<usize>, AffinityError> {
    get_mask().map(|set| cpus_of(&set))
}

/// Restores the thread's previous CPU mask when dropped. It must be dropped
/// on the thread that pinned, hence not `Send`.
#[must_use = "the pin is undone when the guard is dropped"]
#[derive(Debug)]
pub struct PinGuard {
    previous: libc::cpu_set_t,
    not_send: PhantomData<*const ()>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = set_mask(&self.previous) {
            log::warn!("could not restore the measuring thread's CPU mask: {e}");
        }
    }
}

/// Pins the current thread to `cpus` (logical CPU numbers) until the guard
/// is dropped. Every CPU must be one the thread may run on now, which is the
/// agent's own mask (from taskset, cgroup cpusets, …), so a request cannot
/// widen what the agent was given.
pub fn pin(cpus: &[usize]) -> Result<PinGuard, AffinityError> {
    if cpus.is_empty() {
        return Err(AffinityError::Empty);
    }
    let previous = get_mask()?;
    let allowed = cpus_of(&previous);
    let mut requested = cpus.to_vec();
    requested.sort_unstable();
    requested.dedup();
    let unavailable: Vec<usize> = requested.iter().copied().filter(|cpu| allowed.binary_search(cpu).is_err()).collect();
    if !unavailable.is_empty() {
        return Err(AffinityError::Unavailable { requested: unavailable, allowed });
    }
    let mut set = empty_set();
    for &cpu in &requested {
        // SAFETY: `cpu` is in `allowed`, hence below the set's capacity.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set_mask(&set)?;
    Ok(PinGuard { previous, not_send: PhantomData })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_narrows_and_the_guard_restores() {
        let before = current().unwrap();
        let cpu = *before.last().unwrap();
        let guard = pin(&[cpu]).unwrap();
        assert_eq!(current().unwrap(), vec![cpu]);
        drop(guard);
        assert_eq!(current().unwrap(), before);
    }

    #[test]
    fn threads_spawned_while_pinned_inherit_the_pin() {
        let cpu = current().unwrap()[0];
        let _guard = pin(&[cpu]).unwrap();
        let in_child = std::thread::spawn(current).join().unwrap().unwrap();
        assert_eq!(in_child, vec![cpu]);
    }

    #[test]
    fn unavailable_and_empty_requests_are_refused() {
        let allowed = current().unwrap();
        let missing = (0..).find(|cpu| !allowed.contains(cpu)).unwrap();
        let err = pin(&[allowed[0], missing]).unwrap_err();
        let expected = format!("cpu {missing} is not available to this agent (allowed: {})", cpu_list(&allowed));
        assert_eq!(err.to_string(), expected);
        assert!(matches!(pin(&[]), Err(AffinityError::Empty)));
        assert_eq!(current().unwrap(), allowed, "a refused request leaves the mask alone");
        let far = pin(&[SET_CAPACITY + 5]).unwrap_err();
        assert!(far.to_string().starts_with(&format!("cpu {} is not available", SET_CAPACITY + 5)), "{far}");
    }
}
