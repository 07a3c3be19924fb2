//! `relayhub publish ...`: services on the hub's address, proxied to
//! spoke ports. Stored in the registry (a backend must be a registered
//! spoke, and a service name is a DNS name beside the spokes' names).

use anyhow::Context as _;

use crate::core::publish::{Listen, Proto, Service, Target, probe_hex};
use crate::hub::ServiceStatus;
use crate::provision::spoke::table;
use crate::store::Store;

/// `relayhub publish add NAME --listen PROTO/PORT --to SPOKE:PORT...`.
pub fn add(
    store: &Store,
    name: &str,
    listen: Listen,
    to: Vec<Target>,
    udp_probe: Option<Vec<u8>>,
    zone: &str,
) -> anyhow::Result<String> {
    let svc = Service {
        name: name.to_owned(),
        listen,
        backends: to,
        udp_probe,
    };
    store
        .registry()
        .update(&mut |r| r.publish(svc.clone()))
        .with_context(|| format!("cannot publish {name:?}"))?;
    let check = match (listen.proto, &svc.udp_probe) {
        (Proto::Tcp, _) => "a TCP connect every second".to_owned(),
        (Proto::Udp, Some(p)) => format!("probe {} answered every second", probe_hex(p)),
        (Proto::Udp, None) => "its spoke's WireGuard up (no --udp-probe)".to_owned(),
    };
    Ok(format!(
        "published {name}: {listen} on the hub's addresses and its tunnel address ({name}.{zone}), \
         to {}\n\
         the running hub listens within a second; a backend takes connections while healthy \
         ({check}), and sees the hub's tunnel address as the client\n",
        svc.backends
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// `relayhub publish remove NAME`.
pub fn remove(store: &Store, name: &str) -> anyhow::Result<String> {
    store
        .registry()
        .update(&mut |r| r.unpublish(name).map(|_| ()))?;
    Ok(format!(
        "withdrew {name}: the running hub stops listening within a second (open connections finish)\n"
    ))
}

/// `relayhub publish list`: the stored services, with each backend's
/// health and traffic when the hub's API answers.
pub fn list(store: &Store, api: &crate::cli::status::ApiClient) -> anyhow::Result<String> {
    let registry = store.registry().load()?;
    if registry.services().is_empty() {
        return Ok(
            "no published services; add one with `relayhub publish add NAME --listen tcp/PORT --to SPOKE:PORT`\n"
                .to_owned(),
        );
    }
    let live: Option<Vec<ServiceStatus>> = api
        .fetch("/v1/services")
        .ok()
        .and_then(|j| serde_json::from_str(&j).ok());
    let mut rows = Vec::new();
    for v in registry.services() {
        let st = live
            .as_ref()
            .and_then(|l| l.iter().find(|s| s.name == v.name));
        for (i, b) in v.backends.iter().enumerate() {
            let be = st.and_then(|s| s.backends.iter().find(|x| x.backend == b.to_string()));
            rows.push([
                if i == 0 {
                    v.name.clone()
                } else {
                    String::new()
                },
                if i == 0 {
                    v.listen.to_string()
                } else {
                    String::new()
                },
                b.to_string(),
                be.map_or("-".into(), |x| x.state.clone()),
                be.map_or("-".into(), |x| x.connections.to_string()),
                be.map_or("-".into(), |x| x.active.to_string()),
                be.map_or("-".into(), |x| format!("{}/{}", x.bytes_in, x.bytes_out)),
            ]);
        }
    }
    let mut out = table(
        [
            "SERVICE",
            "LISTEN",
            "BACKEND",
            "STATE",
            "CONNS",
            "ACTIVE",
            "BYTES IN/OUT",
        ],
        &rows,
    );
    match &live {
        None => out.push_str(&format!(
            "(no running hub answered at {}: states and traffic unknown)\n",
            api.addr
        )),
        Some(l) => {
            for s in l.iter().filter(|s| !s.listen_errors.is_empty()) {
                out.push_str(&format!(
                    "{}: cannot listen on {}\n",
                    s.name,
                    s.listen_errors.join(", ")
                ));
            }
        }
    }
    Ok(out)
}
