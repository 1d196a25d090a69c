//! The public listener's workers: one single-threaded pingora service per worker thread, each
//! accepting on a listening socket of its own.
//!
//! One service on a multi-threaded runtime has a single I/O driver: while one worker thread
//! waits in it, the other is parked and wakes only when handed a task, so a ready socket can
//! wait on a busy thread while a core sits idle (measured: 3–5 µs of idle CPU per request
//! with the machine saturated, docs/notes.md "Workers"). With one single-threaded runtime per
//! worker, each thread waits on its own sockets, as nginx's worker processes do, and a
//! connection, its host connections (the lane's pool is per worker) and its wake-ups stay on
//! one thread.
//!
//! The workers' sockets share the address with `SO_REUSEPORT`, so the kernel spreads new
//! connections over them by their addresses; one socket shared by all workers would hand a
//! burst of connections to whichever worker happened to be awake. pingora keys listening
//! sockets (and the ones it hands to a new process on an upgrade) by the address as written,
//! and gives a second service asking for the same text the first one's socket, so each worker
//! asks with a spelling of its own ([`listen_key`]).

use std::net::{SocketAddr, TcpListener};

use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};

/// The address text worker `worker` listens on: `addr` with the port written with `worker`
/// leading zeros, which names the same address and port but is a key of its own in pingora's
/// table of listening sockets.
pub fn listen_key(addr: SocketAddr, worker: usize) -> String {
    let ip = match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    format!("{ip}:{}{}", "0".repeat(worker), addr.port())
}

/// Listening sockets pingora hands to a new process on an upgrade, at most (the file
/// descriptors one message carries).
pub const UPGRADE_SOCKETS_MAX: usize = 32;

/// Bytes of the listening sockets' keys, joined by spaces, pingora hands over with them.
pub const UPGRADE_KEYS_BYTES_MAX: usize = 2048;

/// Checks that an upgrade can hand every listening socket to the new process: `workers`
/// sockets on `public` and on `tls` (when set), one on `private`.
pub fn check_upgrade_bounds(
    workers: usize,
    public: SocketAddr,
    tls: Option<SocketAddr>,
    private: SocketAddr,
) -> Result<(), String> {
    let keys: Vec<String> = std::iter::once(public)
        .chain(tls)
        .flat_map(|addr| (0..workers).map(move |worker| listen_key(addr, worker)))
        .chain(std::iter::once(private.to_string()))
        .collect();
    let key_bytes = keys.iter().map(|key| key.len() + 1).sum::<usize>();
    if keys.len() > UPGRADE_SOCKETS_MAX || key_bytes > UPGRADE_KEYS_BYTES_MAX {
        return Err(format!(
            "--threads {workers}: each worker listens on a socket of its own ({} with --tls-listen), and an \
             upgrade hands at most {UPGRADE_SOCKETS_MAX} sockets to the new process; use fewer threads",
            if tls.is_some() { "two" } else { "one" }
        ));
    }
    Ok(())
}

/// Bytes pingora reads ahead on a plain connection: none. The fast lane reads each request
/// header straight into a buffer of its own (`steady_relay::exchange::READ_BYTES`), and so
/// does pingora's HTTP session; a read-ahead buffer in between copied every request once more
/// and took 64 KiB (pingora's default) per connection, touched as connections arrive.
pub const PLAIN_READ_BUFFER_BYTES: usize = 0;

/// Bytes pingora reads ahead on a TLS connection: its default, since rustls reads a record
/// (up to 16 KiB) in small pieces.
pub const TLS_READ_BUFFER_BYTES: usize = pingora::listeners::DEFAULT_L4_READ_BUFFER_SIZE;

/// A worker's listening endpoint on `key` (from [`listen_key`]), with `read_buffer_bytes` of
/// read-ahead per connection.
pub fn listener(key: String, read_buffer_bytes: usize) -> ListenerConfig {
    ListenerConfig::tcp(key)
        .tcp_socket_options(socket_options())
        .l4_buffer(L4BufferSettings::default().read(read_buffer_bytes))
}

/// Socket options for a worker's listening socket.
fn socket_options() -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.so_reuseport = Some(true);
    options
}

/// Fails if another socket already listens on `addr`. With `SO_REUSEPORT` a second LB started
/// by the same user would otherwise share the port silently; a bind without it is refused
/// while any socket listens there.
pub fn ensure_free(addr: SocketAddr) -> Result<(), String> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("cannot listen on {addr}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use std::net::ToSocketAddrs;

    use super::*;

    #[test]
    fn every_worker_key_is_distinct_and_names_the_same_address() {
        for addr in ["127.0.0.1:8080", "[::1]:443", "0.0.0.0:80"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let keys: Vec<String> = (0..8).map(|worker| listen_key(addr, worker)).collect();
            assert_eq!(keys[0], addr.to_string());
            for (index, key) in keys.iter().enumerate() {
                assert!(!keys[..index].contains(key), "{key} repeats");
                let resolved: Vec<SocketAddr> = key.as_str().to_socket_addrs().unwrap().collect();
                assert_eq!(resolved, vec![addr], "{key}");
            }
        }
    }

    #[test]
    fn an_upgrade_must_be_able_to_hand_over_every_socket() {
        let (public, private): (SocketAddr, SocketAddr) =
            ("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:8081".parse().unwrap());
        let tls: SocketAddr = "[2001:db8::1]:8443".parse().unwrap();
        // The bounds the other binaries check against are the ones an upgrade imposes.
        use steady_proto::{LB_THREADS_MAX, LB_THREADS_MAX_WITH_TLS};
        check_upgrade_bounds(LB_THREADS_MAX, public, None, private).unwrap();
        check_upgrade_bounds(LB_THREADS_MAX + 1, public, None, private).unwrap_err();
        check_upgrade_bounds(LB_THREADS_MAX_WITH_TLS, public, Some(tls), private).unwrap();
        let refused = check_upgrade_bounds(LB_THREADS_MAX_WITH_TLS + 1, public, Some(tls), private).unwrap_err();
        assert!(refused.contains("--threads 16"), "{refused}");
    }

    #[test]
    fn a_listened_address_is_not_free() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let refused = ensure_free(addr).unwrap_err();
        assert!(refused.contains(&addr.to_string()), "{refused}");
        drop(taken);
        ensure_free(addr).unwrap();
    }
}
