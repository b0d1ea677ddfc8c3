//! Loopback ports for the servers tests start (Envoy, the gateway, Redis, upstreams).
//!
//! A port found by binding port 0 comes from the kernel's ephemeral range, the same
//! range it draws from for the local end of every outgoing connection. Between the
//! moment such a port is released and the moment the server binds it, any test's
//! client connection may take it, and the server then fails with "address already in
//! use" (CI saw Envoy fail so). These ports are drawn below the ephemeral range
//! instead, where the kernel never allocates on its own, from a counter that starts at
//! a place of this process's choosing, so that tests running side by side in one
//! process never get the same port, and two processes rarely do.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The first port of the pool: above the registered services most machines run.
const POOL_START: u32 = 20000;

/// The kernel's ephemeral range (`ip_local_port_range`), or Linux's default.
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback port free now, outside the ephemeral range when there is room below it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let end = ephemeral_start().min(65536);
    if end <= POOL_START + 1000 {
        return kernel_port();
    }
    let size = end - POOL_START;
    // Where this process starts in the pool: spread by pid and time, so that two
    // test processes started together begin far apart.
    let seed = || {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        (std::process::id().wrapping_mul(2_654_435_761) ^ t) % size
    };
    let _ = NEXT.compare_exchange(u32::MAX, seed(), Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..size {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % size;
        let port = (POOL_START + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    kernel_port()
}

fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat_in_a_process() {
        let end = ephemeral_start();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was given twice");
        if end > POOL_START + 1000 {
            assert!(
                ports
                    .iter()
                    .all(|&p| (POOL_START..end).contains(&u32::from(p))),
                "{ports:?} not in {POOL_START}..{end}"
            );
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let held = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        let taken = held.local_addr().unwrap().port();
        // Bring the counter round to the held port: it must be passed over.
        for _ in 0..(ephemeral_start() - POOL_START) {
            assert_ne!(free_port(), taken);
        }
    }
}
