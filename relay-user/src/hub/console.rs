//! The web console (`GET /`): one page rendered on the server from the
//! hub's own state and samples, refreshed by the browser every
//! [`REFRESH_SECS`]. No JavaScript and no external assets: the chart is
//! inline SVG, the style a few lines of CSS, all of it in the binary.

use std::fmt::Write as _;

use crate::core::history::Point;
use crate::hub::{HubStatus, ServiceStatus, SpokeStatus};

pub const REFRESH_SECS: u32 = 2;

/// Everything the page shows.
pub struct Console<'a> {
    pub hub: &'a HubStatus,
    /// `/healthz`: Ok(None) healthy, Ok(Some(why)) degraded, Err(why) down.
    pub health: Result<Option<String>, String>,
    pub spokes: &'a [SpokeStatus],
    /// Bytes/s relayed from and to each spoke (by name).
    pub rates: &'a dyn Fn(&str) -> (f64, f64),
    pub points: &'a [Point],
    /// Handshake initiations by result (label, count).
    pub handshakes: &'a [(&'static str, u64)],
    /// One line or a few about the policy.
    pub policy: &'a [String],
    pub services: &'a [ServiceStatus],
}

/// `s` with HTML's special characters escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn si(v: f64, unit: &str) -> String {
    const P: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = v;
    let mut i = 0;
    while v >= 1000.0 && i < P.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {}{unit}", P[i])
    }
}

fn ago(s: Option<f64>) -> String {
    match s {
        None => "never".into(),
        Some(s) if s < 120.0 => format!("{s:.0} s ago"),
        Some(s) if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        Some(s) => format!("{:.1} h ago", s / 3600.0),
    }
}

fn uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h) {
        (0, 0) => format!("{m} min {} s", secs % 60),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}\
table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left;border-bottom:1px solid #ddd}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.up{color:#0a7d22;font-weight:600}.stale{color:#b36b00;font-weight:600}.down{color:#c0182b;font-weight:600}\
.unknown{color:#777}dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:0}\
dt{color:#666}dd{margin:0;font-family:monospace}.muted{color:#777}";

/// The page.
pub fn page(c: &Console<'_>) -> String {
    let h = c.hub;
    let mut o = String::with_capacity(8192 + 400 * c.spokes.len());
    let (health_class, health) = match &c.health {
        Ok(None) => ("up", "healthy".to_owned()),
        Ok(Some(why)) => ("stale", format!("degraded: {why}")),
        Err(why) => ("down", format!("down: {why}")),
    };
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>relayhub {addr}</title><style>{STYLE}</style></head><body>\
         <h1>relayhub <span class=\"muted\">{addr}</span></h1>\
         <p id=\"health\" class=\"{health_class}\">{health}</p>",
        addr = esc(&h.address),
        health = esc(&health),
    );
    // Hub facts.
    let facts: [(&str, String); 10] = [
        ("version", h.version.clone()),
        ("public key", h.public_key.clone()),
        ("tunnel address", format!("{} (port {})", h.address, h.port)),
        (
            "underlay",
            [h.underlay_v4.clone(), h.underlay_v6.clone()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("interface", format!("{} (XDP {})", h.iface, h.xdp_mode)),
        ("hub WireGuard", h.wg_iface.clone()),
        ("uptime", uptime(h.uptime_secs)),
        (
            "health bounds",
            format!(
                "keepalive {} s: up within {} s, down after {} s",
                h.keepalive_secs, h.up_within_secs, h.down_after_secs
            ),
        ),
        (
            "store",
            format!(
                "{} ({})",
                h.store,
                if h.store_up {
                    "answering"
                } else {
                    "NOT answering"
                }
            ),
        ),
        (
            "replication",
            h.replication
                .as_ref()
                .map_or("off".to_owned(), |r| r.role.clone()),
        ),
    ];
    o.push_str("<section id=\"hub\"><dl>");
    for (k, v) in facts {
        let _ = write!(o, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
    }
    o.push_str("</dl></section>");
    chart(&mut o, c.points);
    spokes(&mut o, c);
    // Handshakes and policy side by side in reading order.
    o.push_str("<section id=\"handshakes\"><h2>Handshake initiations</h2><table><tr><th>result</th><th>count</th></tr>");
    for (r, n) in c.handshakes.iter().filter(|(_, n)| *n > 0) {
        let _ = write!(o, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", esc(r));
    }
    o.push_str("</table></section><section id=\"policy\"><h2>Policy</h2>");
    for line in c.policy {
        let _ = write!(o, "<p>{}</p>", esc(line));
    }
    o.push_str("</section>");
    if !c.services.is_empty() {
        o.push_str("<section id=\"services\"><h2>Published services</h2><table><tr><th>service</th><th>listen</th><th>backend</th><th>state</th><th>connections</th><th>active</th></tr>");
        for s in c.services {
            for b in &s.backends {
                let _ = write!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{st}\">{st}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    esc(&s.name),
                    esc(&s.listen),
                    esc(&b.backend),
                    b.connections,
                    b.active,
                    st = esc(&b.state),
                );
            }
        }
        o.push_str("</table></section>");
    }
    let _ = write!(
        o,
        "<p class=\"muted\">Refreshes every {REFRESH_SECS} s. JSON: \
         <a href=\"/v1/hub\">/v1/hub</a> <a href=\"/v1/spokes\">/v1/spokes</a> \
         <a href=\"/v1/history\">/v1/history</a> <a href=\"/v1/services\">/v1/services</a>; \
         <a href=\"/metrics\">/metrics</a>.</p></body></html>"
    );
    o
}

fn spokes(o: &mut String, c: &Console<'_>) {
    let count = |st: &str| c.spokes.iter().filter(|s| s.state == st).count();
    let _ = write!(
        o,
        "<section id=\"spokes\"><h2>Spokes: {} ({} up, {} stale, {} down)</h2>",
        c.spokes.len(),
        count("up"),
        count("stale"),
        count("down")
    );
    if c.spokes.is_empty() {
        o.push_str("<p class=\"muted\">No spokes registered: <code>relayhub spoke add NAME</code> or a join token.</p></section>");
        return;
    }
    o.push_str(
        "<table id=\"spoke-table\"><tr><th>spoke</th><th>state</th><th>address</th><th>family</th>\
         <th>endpoint</th><th>last frame</th><th>keepalive</th><th>missed</th>\
         <th>relayed in</th><th>relayed out</th><th>sessions</th><th>roams</th></tr>",
    );
    for s in c.spokes {
        let (rin, rout) = (c.rates)(&s.name);
        let family = match s.endpoint.as_deref() {
            Some(e) if e.starts_with('[') => "IPv6",
            Some(_) => "IPv4",
            None => "-",
        };
        let home = s
            .peer_hub
            .as_deref()
            .map(|h| format!(" <span class=\"muted\">(on {})</span>", esc(h)))
            .unwrap_or_default();
        let _ = write!(
            o,
            "<tr data-spoke=\"{name}\" data-state=\"{st}\"><td>{name}{home}</td><td class=\"state {st}\">{st}</td>\
             <td>{addr}</td><td>{family}</td><td>{ep}</td><td>{last}</td><td>{ka}</td>\
             <td class=\"n\">{missed}</td><td class=\"n\">{rin}</td><td class=\"n\">{rout}</td>\
             <td class=\"n\">{sessions}</td><td class=\"n\">{roams}</td></tr>",
            name = esc(&s.name),
            st = esc(&s.state),
            addr = esc(&s.address),
            ep = esc(s.endpoint.as_deref().unwrap_or("-")),
            last = ago(s.last_frame_secs_ago),
            ka = s
                .keepalive_interval_secs
                .map_or("-".to_owned(), |k| format!("{k:.1} s")),
            missed = s.missed_keepalives,
            rin = si(rin, "B/s"),
            rout = si(rout, "B/s"),
            sessions = s.sessions,
            roams = s.roams,
        );
    }
    o.push_str("</table></section>");
}

/// Relayed frames/s and drops/s over the window, as inline SVG.
fn chart(o: &mut String, points: &[Point]) {
    const W: f64 = 720.0;
    const H: f64 = 140.0;
    o.push_str("<section id=\"traffic\"><h2>Relay, last 5 minutes</h2>");
    if points.len() < 2 {
        o.push_str("<p class=\"muted\">Collecting samples…</p></section>");
        return;
    }
    let drops = |p: &Point| p.drops_per_sec.iter().map(|(_, v)| v).sum::<f64>();
    let top = points
        .iter()
        .map(|p| p.packets_per_sec.max(drops(p)))
        .fold(1.0, f64::max);
    let (t0, t1) = (points[0].at, points[points.len() - 1].at);
    let x = |t: f64| (t - t0) / (t1 - t0).max(1.0) * W;
    let y = |v: f64| H - v / top * (H - 10.0);
    let line = |f: &dyn Fn(&Point) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at), y(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let last = &points[points.len() - 1];
    let _ = write!(
        o,
        "<svg id=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"relayed frames and drops per second\" style=\"border:1px solid #ddd\">\
         <polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.5\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#c0182b\" stroke-width=\"1.5\" points=\"{}\"/>\
         <text x=\"4\" y=\"12\" font-size=\"11\" fill=\"#666\">{}</text></svg>\
         <p><span style=\"color:#1f5fbf\">■</span> relayed: {} ({}) \
         <span style=\"color:#c0182b\">■</span> dropped: {}</p>",
        line(&|p| p.packets_per_sec),
        line(&drops),
        esc(&si(top, "frames/s")),
        si(last.packets_per_sec, "frames/s"),
        si(last.bytes_per_sec * 8.0, "bit/s"),
        si(drops(last), "frames/s"),
    );
    if !last.drops_per_sec.is_empty() {
        o.push_str("<table id=\"drops\"><tr><th>drop reason</th><th>now</th><th>peak</th></tr>");
        for (i, (reason, now)) in last.drops_per_sec.iter().enumerate() {
            let peak = points
                .iter()
                .filter_map(|p| p.drops_per_sec.get(i).map(|d| d.1))
                .fold(0.0, f64::max);
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(reason),
                si(*now, "/s"),
                si(peak, "/s")
            );
        }
        o.push_str("</table>");
    }
    o.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> HubStatus {
        serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "public_key": "k<ey>", "address": "10.88.0.1", "port": 51820,
            "iface": "eth0", "xdp_mode": "native", "wg_iface": "relayhub0", "uptime_secs": 3725,
            "keepalive_secs": 25, "up_within_secs": 30, "down_after_secs": 80
        }))
        .unwrap()
    }

    fn spoke(name: &str, state: &str) -> SpokeStatus {
        serde_json::from_value(serde_json::json!({
            "name": name, "id": 1, "address": "10.88.0.2", "public_key": "x",
            "endpoint": "[2001:db8::2]:4500", "state": state, "last_handshake_unix": null,
            "last_frame_secs_ago": 3.2, "last_keepalive_secs_ago": null,
            "keepalive_interval_secs": 25.0, "missed_keepalives": 0, "keepalives_to_hub": 1,
            "keepalives_relayed": 0, "relayed_in_packets": 0, "relayed_in_bytes": 0,
            "relayed_out_packets": 0, "relayed_out_bytes": 0, "sessions": 2, "roams": 1
        }))
        .unwrap()
    }

    #[test]
    fn page_lists_spokes_with_state_and_escapes() {
        let h = hub();
        let spokes = [spoke("web<1>", "up"), spoke("db", "down")];
        let points = [
            Point {
                at: 2.0,
                packets_per_sec: 10.0,
                bytes_per_sec: 1000.0,
                drops_per_sec: vec![("no_route", 1.0)],
            },
            Point {
                at: 4.0,
                packets_per_sec: 1500.0,
                bytes_per_sec: 1.5e6,
                drops_per_sec: vec![("no_route", 3.0)],
            },
        ];
        let rates = |n: &str| {
            if n == "db" {
                (0.0, 0.0)
            } else {
                (2500.0, 10.0)
            }
        };
        let policy = ["no policy: every spoke may reach every other".to_owned()];
        let c = Console {
            hub: &h,
            health: Ok(None),
            spokes: &spokes,
            rates: &rates,
            points: &points,
            handshakes: &[("relayed", 4), ("no_match", 0)],
            policy: &policy,
            services: &[],
        };
        let p = page(&c);
        assert!(p.starts_with("<!doctype html>"));
        assert!(p.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(
            p.contains("data-spoke=\"web&lt;1&gt;\" data-state=\"up\""),
            "{p}"
        );
        assert!(p.contains("<td class=\"state down\">down</td>"));
        assert!(p.contains("k&lt;ey&gt;") && !p.contains("web<1>"));
        assert!(p.contains("Spokes: 2 (1 up, 0 stale, 1 down)"));
        assert!(p.contains("2.5 kB/s"));
        assert!(p.contains("1 h 2 min"));
        assert!(p.contains("<polyline") && p.contains("no_route"));
        assert!(p.contains("<td>relayed</td>") && !p.contains("no_match"));
        // Nothing from elsewhere.
        assert!(!p.contains("<script") && !p.contains("http://") && !p.contains("https://"));
        // Few samples yet: no chart, no panic.
        let c = Console { points: &[], ..c };
        assert!(page(&c).contains("Collecting samples"));
    }
}
