//! What the host really has free: memory (`MemAvailable`) and the disk where sandbox volumes
//! live. Admission checks these beside the guarantees it counts, so that a host running short
//! refuses new sessions with a reason instead of letting the OOM killer or a full disk choose.

use std::path::Path;

/// The host's free memory in MiB, as the kernel estimates what can be had without swapping
/// (`MemAvailable` in /proc/meminfo); `None` where the kernel does not say.
pub fn memory_available_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available_kb(&meminfo).map(|kb| kb / 1024)
}

fn parse_mem_available_kb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Free space for an unprivileged writer on the file system holding `path`, in MiB.
pub fn disk_available_mb(path: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    let bytes = stats
        .blocks_available()
        .saturating_mul(stats.fragment_size());
    Some(bytes / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let meminfo =
            "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(parse_mem_available_kb(meminfo), Some(20_480_000));
        assert_eq!(parse_mem_available_kb("MemTotal: 1 kB\n"), None);
        assert!(memory_available_mb().is_some_and(|mb| mb > 0));
        assert!(disk_available_mb(Path::new("/")).is_some());
    }
}
