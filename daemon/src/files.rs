//! A daemon's open files: the limit it runs under, and how many connections that limit covers.
//!
//! Every connection a daemon holds is a file descriptor, and a connection passed on holds a
//! second one for its upstream. A process out of descriptors can neither accept nor reach its
//! upstream, so every client fails, not only the newest: each daemon that takes connections
//! bounds them, and checks at start that its open files cover the bound ([`Budget`]).

/// Raises the process's soft limit on open files to its hard limit, as servers do at start,
/// and returns the limit in force. The soft limit a shell hands down (often 1,024) is far
/// below what a busy daemon's connections need; the hard limit is the operator's to set.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// Connections a daemon must be able to hold at least: below this the open files limit is a
/// mistake, not a choice.
pub const CONNECTIONS_MIN: usize = 16;

/// How many connections a daemon may keep open under its open files limit: each connection
/// counts twice (itself and the upstream connection it may hold), beside a fixed share (idle
/// upstream connections kept in pools, everything else the daemon opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Files the process may open.
    pub open_files_max: u64,
    /// Files kept aside from connections: pools of idle upstream connections and a reserve.
    pub fixed: u64,
    /// The flag that sets the bound, for messages.
    pub flag: &'static str,
    /// The bound when the flag is not given and the limit covers it.
    pub default_max: usize,
}

impl Budget {
    /// Open files `connections` connections need.
    pub fn files_needed(&self, connections: usize) -> u64 {
        2 * connections as u64 + self.fixed
    }

    /// The most connections the limit covers.
    pub fn connections_covered(&self) -> usize {
        usize::try_from(self.open_files_max.saturating_sub(self.fixed) / 2).unwrap_or(usize::MAX)
    }

    /// The bound to run with: `asked` if the limit covers it (an error otherwise), else the
    /// default or as many as the limit covers, whichever is less (with the reason, if less).
    pub fn connections_max(&self, asked: Option<usize>) -> Result<(usize, Option<String>), String> {
        const RAISE: &str = "ulimit -n, or LimitNOFILE= in a systemd unit";
        let (flag, limit, covered) = (self.flag, self.open_files_max, self.connections_covered());
        if covered < CONNECTIONS_MIN {
            return Err(format!(
                "the open files limit ({limit}) leaves room for {covered} connections; raise it ({RAISE}) to at \
                 least {}",
                self.files_needed(CONNECTIONS_MIN)
            ));
        }
        match asked {
            Some(asked) if asked > covered => Err(format!(
                "{flag} {asked} needs {} open files (each connection and its upstream connection, the idle \
                 upstream connections, a reserve), and this process may open {limit}; raise the limit ({RAISE}) \
                 or ask for at most {covered}",
                self.files_needed(asked)
            )),
            Some(asked) => Ok((asked, None)),
            None if covered < self.default_max => Ok((
                covered,
                Some(format!(
                    "the open files limit ({limit}) covers {covered} connections, fewer than {flag}'s default {}; \
                     raise it ({RAISE}) for more",
                    self.default_max
                )),
            )),
            None => Ok((self.default_max, None)),
        }
    }

    /// [`Self::connections_max`] for a daemon's start: `asked` as the flag gave it, the reason
    /// for a shrunk default logged as a warning; an error is the daemon's to report and exit on.
    pub fn settle(&self, asked: Option<u64>) -> Result<usize, String> {
        let asked = asked.map(|max| usize::try_from(max).unwrap_or(usize::MAX));
        let (max, reason) = self.connections_max(asked)?;
        if let Some(reason) = reason {
            tracing::warn!(connections_max = max, "{reason}");
        }
        Ok(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_open_files_limit() {
        let budget =
            |open_files_max| Budget { open_files_max, fixed: 4_608, flag: "--connections-max", default_max: 16_384 };
        let ample = budget(65_536);
        assert_eq!(ample.connections_max(None), Ok((16_384, None)));
        assert_eq!(ample.connections_max(Some(20_000)), Ok((20_000, None)));
        let refused = ample.connections_max(Some(40_000)).unwrap_err();
        assert!(refused.contains("--connections-max 40000 needs 84608 open files"), "{refused}");
        assert!(refused.contains("at most 30464"), "{refused}");

        let small = budget(20_000);
        let (max, why) = small.connections_max(None).unwrap();
        assert_eq!(max, 7_696);
        assert!(small.files_needed(max) <= small.open_files_max);
        assert!(why.expect("a shrunk default says why").contains("covers 7696"));

        let refused = budget(1_024).connections_max(None).unwrap_err();
        assert!(refused.contains("at least 4640"), "{refused}");
    }

    #[test]
    fn the_limit_in_force_is_the_hard_one() {
        let limit = raise_open_files_limit().expect("the open files limit");
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in raise_open_files_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!((limit, now.rlim_cur), (now.rlim_max, now.rlim_max));
    }
}
