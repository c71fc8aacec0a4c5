//! Process lookups in `/proc`: the agents a parent started (whoever started them; a
//! supervisor knows its own, see `Supervisor::pids`), a process's age, whether
//! it is stopped.

use std::collections::BTreeMap;

/// Agent processes of `up_pid` by node name, from `/proc` (children whose command line is
/// `stator agent ... --name NODE ...`).
pub fn child_agent_pids(up_pid: u32) -> BTreeMap<String, u32> {
    let mut agents = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return agents;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(up_pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1).copied() != Some(b"agent".as_slice()) {
            continue;
        }
        if let Some(at) = args.iter().position(|a| *a == b"--name") {
            if let Some(name) = args.get(at + 1) {
                agents.insert(String::from_utf8_lossy(name).into_owned(), pid);
            }
        }
    }
    agents
}

/// Milliseconds since process `pid` started, from `/proc`.
pub fn process_age_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime, clock ticks after boot); 20th after the `(comm)` field.
    let start_ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime_s: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(((uptime_s - start_ticks as f64 / ticks_per_s).max(0.0) * 1000.0) as u64)
}

/// Whether `pid` is stopped (SIGSTOP), from `/proc/PID/stat`.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|c| c == "T"))
        })
        .unwrap_or(false)
}
