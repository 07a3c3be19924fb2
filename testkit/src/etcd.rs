//! A throwaway etcd (Debian's etcd-server) for the shared-store tests: one
//! member on loopback, its data in a directory of its own, stopped (and
//! the directory removed) on drop. It can be stopped and started again on
//! the same data and ports, to test a hub through a store outage.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::cmd::Proc;
use crate::netns::Netns;

/// How long a start may take before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Etcd {
    /// The member's name; every process and path carries it (leftover checks).
    pub name: String,
    pub client_port: u16,
    peer_port: u16,
    data: PathBuf,
    logdir: PathBuf,
    /// `ip netns exec` prefix, when it runs inside a namespace.
    ns: Option<String>,
    proc: Option<Proc>,
    starts: u32,
}

/// Fail with the package to install unless `etcd` is on PATH.
pub fn require_etcd() {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join("etcd").is_file());
    assert!(
        found,
        "etcd not found: install it with `apt-get install -y etcd-server` (or `cargo xtask setup`)"
    );
}

/// A port nobody listens on now (a race with other processes is possible
/// but harmless: etcd then fails to start and says so).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Start a member named `name` with its data and logs under `workdir`,
    /// on free loopback ports of this namespace.
    pub fn start(name: &str, workdir: &Path) -> anyhow::Result<Etcd> {
        Self::start_in(name, workdir, None)
    }

    /// [`Etcd::start`] inside `ns` (a fresh namespace: the standard ports
    /// 2379/2380 on its loopback).
    pub fn start_in(name: &str, workdir: &Path, ns: Option<&Netns>) -> anyhow::Result<Etcd> {
        require_etcd();
        let (client_port, peer_port) = match ns {
            Some(_) => (2379, 2380),
            None => (free_port()?, free_port()?),
        };
        let mut e = Etcd {
            name: name.to_owned(),
            client_port,
            peer_port,
            data: workdir.join(format!("{name}.etcd")),
            logdir: workdir.to_owned(),
            ns: ns.map(|n| n.name.clone()),
            proc: None,
            starts: 0,
        };
        e.start_again()?;
        Ok(e)
    }

    /// `etcd://127.0.0.1:PORT` (the `--store` value; default prefix).
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// Start (again, after [`Etcd::stop`]) on the same data and ports;
    /// returns when it serves clients.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.proc.is_none(), "etcd {} is running", self.name);
        let client = format!("http://127.0.0.1:{}", self.client_port);
        // In a namespace of its own, clients come over links to it: every
        // address of the namespace (nothing else is there).
        let listen = match self.ns {
            Some(_) => format!("http://0.0.0.0:{}", self.client_port),
            None => client.clone(),
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.data.to_str().context("utf-8 path")?.to_owned();
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.ns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.extend(
            [
                "etcd",
                "--name",
                &self.name,
                "--data-dir",
                &data,
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("{}={peer}", self.name),
            ]
            .map(String::from),
        );
        self.starts += 1;
        let mut proc = Proc::spawn(
            &format!("{}-{}", self.name, self.starts),
            &argv,
            &self.logdir,
            false,
        )?;
        proc.wait_output("ready to serve client requests", START_TIMEOUT)
            .with_context(|| format!("etcd {} did not start", self.name))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Freeze it (SIGSTOP): connections stay open and nothing answers, as
    /// in a network partition.
    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            crate::cmd::signal(p.pid(), libc::SIGSTOP);
        }
    }

    /// Undo [`Etcd::pause`].
    pub fn resume(&self) {
        if let Some(p) = &self.proc {
            crate::cmd::signal(p.pid(), libc::SIGCONT);
        }
    }

    /// Stop it (SIGTERM, then SIGKILL); the data stays for [`Etcd::start_again`].
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
