//! The processes working on one shared store (an SQLite data directory or a
//! PostgreSQL database): each registers itself, renews its row with its
//! heartbeat and removes it when it stops. A process that finds a peer of its
//! own machine (same host, same pid namespace) whose pid no longer runs ends
//! that peer's leases at once, so its runs and auto tasks are taken over now
//! rather than when their leases would have run out.

use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::engine::{iso, now_ms};
use crate::error::Result;
use crate::store::{ProcessRecord, Store};

/// What a process is, as listed in `get_system_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `myrmex serve` over stdio.
    Serve,
    /// `myrmex serve --http`.
    ServeHttp,
    /// `myrmex worker`.
    Worker,
    /// `myrmex run FILE`: executes its own run only.
    Run,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::ServeHttp => "serve-http",
            Role::Worker => "worker",
            Role::Run => "run",
        }
    }

    /// Does this process take over unclaimed work (other processes' runs and
    /// auto tasks)? `myrmex run` does not: it ends with its own run.
    pub fn adopts(self) -> bool {
        self != Role::Run
    }
}

/// One live process on the store.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ProcessView {
    /// Its name in leases.
    pub node: String,
    pub pid: i64,
    /// `serve`, `serve-http`, `worker` or `run`.
    pub kind: String,
    /// Host name and pid namespace.
    pub host: String,
    pub version: String,
    pub started_at: String,
    pub last_heartbeat: String,
    /// The process that answers.
    pub this_process: bool,
}

/// This process's membership of the store's processes.
pub struct Peers {
    store: Arc<dyn Store>,
    node: String,
    locality: String,
    started_at: i64,
    lease_ttl_ms: i64,
    kind: OnceLock<Role>,
}

/// Where a pid means one process: the host name and the pid namespace.
fn locality() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{host}/{ns}")
}

/// Does `pid` run (and is it not a zombie)? Unknown counts as running.
fn pid_runs(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // No such process; or no /proc, then ask the kernel.
        if std::path::Path::new("/proc/self/stat").exists() {
            return false;
        }
        return i32::try_from(pid).is_ok_and(|p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok_or_eperm()
        });
    };
    // The state follows the command name in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("R");
    !matches!(state, "Z" | "X")
}

trait OkOrEperm {
    fn is_ok_or_eperm(&self) -> bool;
}

impl OkOrEperm for nix::Result<()> {
    fn is_ok_or_eperm(&self) -> bool {
        matches!(self, Ok(()) | Err(nix::errno::Errno::EPERM))
    }
}

impl Peers {
    pub fn new(store: Arc<dyn Store>, node: String, lease_ttl_ms: u64) -> Self {
        Self {
            store,
            node,
            locality: locality(),
            started_at: now_ms(),
            lease_ttl_ms: lease_ttl_ms as i64,
            kind: OnceLock::new(),
        }
    }

    fn record(&self, now: i64) -> ProcessRecord {
        ProcessRecord {
            node: self.node.clone(),
            locality: self.locality.clone(),
            pid: std::process::id() as i64,
            kind: self
                .kind
                .get()
                .copied()
                .unwrap_or(Role::Serve)
                .as_str()
                .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.started_at,
            heartbeat_at: now,
        }
    }

    /// Register as `role` and reap peers that died on this machine.
    pub async fn join(&self, role: Role) -> Result<usize> {
        let _ = self.kind.set(role);
        self.store.put_process(&self.record(now_ms())).await?;
        self.reap().await
    }

    /// Renew this process's row; reap dead local peers and forget rows no
    /// heartbeat renewed for three lease times. Returns the peers reaped.
    pub async fn heartbeat(&self) -> Result<usize> {
        self.store.put_process(&self.record(now_ms())).await?;
        self.reap().await
    }

    async fn reap(&self) -> Result<usize> {
        let now = now_ms();
        let mut reaped = 0;
        for p in self.store.processes().await? {
            if p.node == self.node {
                continue;
            }
            if p.locality == self.locality && !pid_runs(p.pid) {
                tracing::info!(node = %p.node, pid = p.pid, "a process of this machine died; its work is taken over");
                self.store.drop_process(&p.node, false).await?;
                reaped += 1;
            } else if p.heartbeat_at < now - 3 * self.lease_ttl_ms {
                // Gone elsewhere: its leases have long run out; the row goes.
                self.store.drop_process(&p.node, true).await?;
            }
        }
        Ok(reaped)
    }

    /// This process stops cleanly: its row goes (its leases were given up).
    pub async fn leave(&self) {
        if let Err(e) = self.store.drop_process(&self.node, true).await {
            tracing::warn!(error = %e, "cannot remove this process from the store's process list; it expires");
        }
    }

    /// The live processes (heartbeat within three lease times), this one first.
    pub async fn live(&self) -> Result<Vec<ProcessView>> {
        let now = now_ms();
        let mut rows = self.store.processes().await?;
        if !self.store.shared() || !rows.iter().any(|p| p.node == self.node) {
            rows.push(self.record(now));
        }
        let mut out: Vec<ProcessView> = rows
            .into_iter()
            .filter(|p| p.heartbeat_at >= now - 3 * self.lease_ttl_ms)
            .map(|p| ProcessView {
                this_process: p.node == self.node,
                node: p.node,
                pid: p.pid,
                kind: p.kind,
                host: p.locality,
                version: p.version,
                started_at: iso(p.started_at),
                last_heartbeat: iso(p.heartbeat_at),
            })
            .collect();
        out.sort_by_key(|p| !p.this_process);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_that_run_and_pids_that_do_not() {
        assert!(pid_runs(std::process::id() as i64));
        // A child that exited and was reaped.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i64;
        c.wait().unwrap();
        assert!(!pid_runs(pid));
        // A zombie (exited, not yet reaped) does not run either.
        let c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i64;
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!pid_runs(pid));
        drop(c);
        assert!(locality().contains('/'));
    }
}
