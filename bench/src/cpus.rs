//! Pinning processes to CPUs, for benches that keep the measured process off the load's CPUs.

use std::process::Command;

use anyhow::Context as _;

/// The CPUs online on this host.
fn online_cpus() -> anyhow::Result<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    let mut cpus = Vec::new();
    for range in text.trim().split(',') {
        match range.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => cpus.push(range.parse()?),
        }
    }
    Ok(cpus)
}

/// The online CPUs other than `measured`, after checking that every one of `measured` is
/// online (`what` names them in the error).
pub fn others(measured: &[usize], what: &str) -> anyhow::Result<Vec<usize>> {
    let online = online_cpus()?;
    anyhow::ensure!(
        measured.iter().all(|c| online.contains(c)),
        "{what} CPUs {measured:?} are not all online (online: {online:?})"
    );
    let others: Vec<usize> = online
        .into_iter()
        .filter(|c| !measured.contains(c))
        .collect();
    anyhow::ensure!(!others.is_empty(), "no CPU is left beside the {what} CPUs");
    Ok(others)
}

#[allow(unsafe_code)]
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `CPU_SET` writes one bit of `set`, which is a valid `cpu_set_t`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pins every thread of this process to `cpus` (threads started later inherit it).
#[allow(unsafe_code)]
pub fn pin_this_process(cpus: &[usize]) -> anyhow::Result<()> {
    let set = cpu_set(cpus);
    for task in std::fs::read_dir("/proc/self/task")? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        // SAFETY: `set` is a valid `cpu_set_t` of the size passed.
        if unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning the bench");
        }
    }
    Ok(())
}

/// Makes `command`'s process run on `cpus` only.
#[allow(unsafe_code)]
pub fn pin(command: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    let set = cpu_set(cpus);
    // SAFETY: between fork and exec the closure only makes one system call
    // (async-signal-safe) on a value copied in before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
