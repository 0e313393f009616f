//! What `/proc` tells about a process and the machine: CPU time, resident memory, UDP
//! buffer drops. Linux only, as the peers.

use std::time::Duration;

/// User + system CPU time a process has used so far.
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // `getconf CLK_TCK` is 100 on every Linux this runs on; no libc call needed.
    100.0
}

/// Resident set size now, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// Peak resident set size, in KiB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Datagrams dropped so far by the IPv4 UDP sockets bound to these local ports: which side
/// of a run lost them (the members' sockets or the gateway's), where `udp_buffer_drops`
/// only counts them.
pub fn udp_socket_drops(ports: &[u16]) -> u64 {
    udp_drops_of(
        &std::fs::read_to_string("/proc/net/udp").unwrap_or_default(),
        ports,
    )
}

/// From a `/proc/net/udp` table: the drop counters (last column) of the sockets whose
/// local address (second column, `ADDR:PORT` in hex) is on one of `ports`.
fn udp_drops_of(table: &str, ports: &[u16]) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            if !ports.contains(&port) {
                return None;
            }
            fields.last()?.parse::<u64>().ok()
        })
        .sum()
}

/// The machine's UDP receive + send buffer errors so far (datagrams dropped).
pub fn udp_buffer_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| matches!(*name, "RcvbufErrors" | "SndbufErrors"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// This process's CPU time so far.
pub fn own_cpu() -> Duration {
    cpu(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::udp_drops_of;

    #[test]
    fn socket_drops_are_read_per_local_port() {
        let table = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  120: 0100007F:8E05 00000000:0000 07 00000000:00715000 00:00000000 00000000     0        0 93541 2 0000000000000000 31410
  121: 0100007F:B922 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 93542 2 0000000000000000 0
  122: 0100007F:0FA1 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 93543 2 0000000000000000 7
";
        // 0x8E05 = 36357, 0xB922 = 47394, 0x0FA1 = 4001.
        assert_eq!(udp_drops_of(table, &[36357, 4001]), 31417);
        assert_eq!(udp_drops_of(table, &[47394]), 0);
        assert_eq!(udp_drops_of(table, &[9]), 0);
        assert_eq!(udp_drops_of("", &[36357]), 0);
    }
}
